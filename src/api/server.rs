//! The HTTP listener: an accept loop over hyper with the limits a public port needs, and a
//! shutdown that cannot be held up by a slow client.
//!
//! `axum::serve` has no read timeouts and no connection cap, so one client that stalls halfway
//! through an upload kept a connection (and, on shutdown, the whole process) waiting for as
//! long as it liked. Here every connection must send its request head within
//! `header_read_timeout` and its whole body within `body_read_timeout` of the head (a total
//! deadline: a trickle of bytes does not extend it); a connection whose client takes none of
//! the answer's bytes for `write_stall_timeout` is closed (a client that stops reading an
//! answer, a backup or a change feed, held its connection, its buffers and, for the feed, a
//! subscriber slot for ever); at most `max_connections` are served at once (more are closed
//! at accept, so clients fail fast and try another node); and shutdown waits at most
//! `shutdown_grace` for requests in flight, then drops the rest.
//!
//! With TLS, each connection's handshake runs in its own task within the header read timeout
//! (a client that never finishes it holds one connection slot, not the accept loop), and every
//! request carries a `ConnectionSecurity` saying whether its connection is TLS and whether
//! the other side presented a certificate of the cluster CA (a peer). A connection opened
//! before the certificates were last reloaded (`NodeTls::reload`) closes after its next
//! answer, and that request no longer counts as a peer's if the certificate it presented
//! fails the new files (the node-to-node routes refuse it, 403): a revoked peer cannot keep
//! using a keep-alive connection it opened before.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::tls::{ConnectionSecurity, NodeTls};

/// Limits of the HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    pub write_stall_timeout: Duration,
}

/// `ordo serve`'s defaults: `--read-timeout-ms`, `--max-connections`, `--shutdown-grace-ms`,
/// `--write-stall-timeout-ms`.
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_WRITE_STALL_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 5_000;

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_millis(DEFAULT_READ_TIMEOUT_MS),
            body_read_timeout: Duration::from_millis(DEFAULT_READ_TIMEOUT_MS),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shutdown_grace: Duration::from_millis(DEFAULT_SHUTDOWN_GRACE_MS),
            write_stall_timeout: Duration::from_millis(DEFAULT_WRITE_STALL_TIMEOUT_MS),
        }
    }
}

/// Serves `router` on `listener` (over TLS if `tls` is given) until `shutdown` completes,
/// then lets requests in flight finish for at most `limits.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    tls: Option<Arc<NodeTls>>,
    shutdown: impl Future<Output = ()>,
) {
    let body_timeout = limits.body_read_timeout;
    let router = router.layer(axum::middleware::map_request(
        move |req: axum::extract::Request| async move {
            req.map(|body| Body::new(DeadlineBody::new(body, body_timeout)))
        },
    ));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = limits.max_connections, "connection cap reached; closing a new connection");
            continue;
        };
        // Small request/response pairs (Raft RPCs, forwarded writes): never let Nagle hold
        // one back.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY on an accepted connection");
        }
        let router = router.clone();
        let http = http.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let handshake_timeout = limits.header_read_timeout;
        let stall = limits.write_stall_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let Some(tls) = tls else {
                let security = ConnectionSecurity::default();
                let tcp = StallBoundedIo::new(tcp, stall);
                let conn =
                    http.serve_connection(TokioIo::new(tcp), service(router, security, None));
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            };
            // The generation first: a reload between the two reads leaves the connection
            // marked older than its configuration (closed after one answer), never newer.
            let generation = tls.generation();
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let presented: Vec<_> = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default();
            let security = ConnectionSecurity {
                tls: true,
                peer_certificate: !presented.is_empty(),
            };
            let accepted = Arc::new(AcceptedUnder {
                peer,
                tls,
                generation,
                presented,
            });
            let stream = StallBoundedIo::new(stream, stall);
            let conn = http.serve_connection(
                TokioIo::new(stream),
                service(router, security, Some(accepted)),
            );
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(
        open = graceful.count(),
        grace = ?limits.shutdown_grace,
        "HTTP: no new connections; waiting for requests in flight"
    );
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP: requests still in flight after the grace period; dropping them");
    }
}

/// What a TLS connection was accepted under: the node's TLS, the generation of its files at
/// the handshake, and the certificate chain the other side presented (empty for a client).
struct AcceptedUnder {
    peer: std::net::SocketAddr,
    tls: Arc<NodeTls>,
    generation: u64,
    presented: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl AcceptedUnder {
    /// The files were reloaded since the handshake.
    fn outdated(&self) -> bool {
        self.tls.generation() != self.generation
    }
}

/// The router as a hyper service for one connection, each request marked with the
/// connection's `security`. A TLS connection accepted before the last reload is closed
/// after its answer, and no longer counts as a peer's if the certificate it presented fails
/// the new files.
fn service(
    router: Router,
    security: ConnectionSecurity,
    accepted: Option<Arc<AcceptedUnder>>,
) -> TowerToHyperService<
    impl tower::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future = impl Send,
        > + Clone,
> {
    TowerToHyperService::new(tower::service_fn(
        move |req: hyper::Request<hyper::body::Incoming>| {
            let router = router.clone();
            let accepted = accepted.clone();
            async move {
                let mut req = req.map(Body::new);
                let outdated = accepted.as_ref().filter(|a| a.outdated());
                let mut security = security;
                if let Some(a) = outdated.filter(|_| security.peer_certificate) {
                    if !a.tls.still_trusts(&a.presented) {
                        // No longer a peer: the node-to-node routes refuse it (403, logged
                        // and counted like any request); it is a client like any other.
                        tracing::warn!(
                            peer = %a.peer,
                            "a connection opened before the certificates were reloaded \
                             presented a certificate they no longer accept (revoked, or \
                             its CA replaced): it is no longer served as a peer's"
                        );
                        security.peer_certificate = false;
                    }
                }
                req.extensions_mut().insert(security);
                let mut resp = router.oneshot(req).await?;
                if outdated.is_some() {
                    resp.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        axum::http::HeaderValue::from_static("close"),
                    );
                }
                Ok(resp)
            }
        },
    ))
}

/// A connection whose writes fail once none has made progress for `stall`: hyper then drops
/// the connection. Every byte taken by the other side restarts the clock.
struct StallBoundedIo<T> {
    inner: T,
    stall: Duration,
    /// Armed while a write waits for the other side.
    waiting: Option<Pin<Box<Sleep>>>,
}

impl<T> StallBoundedIo<T> {
    fn new(inner: T, stall: Duration) -> StallBoundedIo<T> {
        StallBoundedIo {
            inner,
            stall,
            waiting: None,
        }
    }

    /// After a write attempt: progress disarms the clock; waiting arms it, and fails the write
    /// once it has run out.
    fn bounded<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        match polled {
            Poll::Pending => {
                let stall = self.stall;
                let timer = self
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client took no bytes of the answer in time",
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.waiting = None;
                ready
            }
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for StallBoundedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for StallBoundedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.bounded(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.bounded(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.bounded(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request body that fails once its deadline passes, however the bytes trickle in (tower-
/// http's body timeout restarts with every frame).
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
}

impl DeadlineBody {
    fn new(inner: Body, within: Duration) -> DeadlineBody {
        DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(Instant::now() + within)),
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        // The body first: one that has fully arrived is never failed by the deadline.
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending if self.deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the request body was not received in time",
                )))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
