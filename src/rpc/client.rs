//! The one client for node-to-node calls: a `codec` body POSTed to a peer's `/raft/*` route,
//! over one pooled HTTP/1.1 client (keep-alive connections are reused across heartbeats and
//! forwarded writes alike). `network` sends Raft's RPCs with it; `call_leader` is how the
//! service forwards a write, a read-index request or a membership change to the leader.
//!
//! With TLS the client checks peers against the cluster CA and presents this node's own
//! certificate (peers accept node-to-node calls only from certificates of the cluster CA).
//! When the certificates are reloaded, the next call builds a new client with them.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use super::clock::CLOCK_HEADER;
use super::cluster_id::{ClusterId, CLUSTER_HEADER};
use super::{LeaderAnswer, PeerDirectory, RpcError, FROM_HEADER};
use crate::codec;
use crate::tls::NodeTls;

/// The most memory an answer may claim when decoded (answers are a few log ids, one order
/// outcome or a cluster status).
const ANSWER_CLAIM_LIMIT: usize = 4 * 1024 * 1024;

/// Why a call failed before an answer of the peer's own came back.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection: nothing was sent.
    #[error("peer unreachable: {0}")]
    Refused(reqwest::Error),
    /// Sent, but no whole answer came back (timeout, reset, cut-off body, bad bytes): the
    /// peer may have acted on it.
    #[error("no answer from the peer: {0}")]
    NoAnswer(String),
    /// The peer answered 413: the body passed its limit for this route.
    #[error("the peer refused the body as too large")]
    TooLarge,
    /// The peer answered with another non-success status (a request it could not decode).
    #[error("the peer answered HTTP {0}")]
    Status(u16),
}

/// A peer's answer, decoded, and the peer's wall clock when it answered (append routes send
/// it, see `clock`).
pub struct Answered<T> {
    pub value: T,
    pub peer_clock_ms: Option<i64>,
    /// On a vote answer: the peer's membership (this log index) does not hold this node.
    pub not_a_member: Option<u64>,
}

/// Pooled client for every node-to-node call; cheap to clone.
#[derive(Clone)]
pub struct RpcClient {
    /// The client, and the TLS generation it was built for (0 without TLS).
    http: Arc<RwLock<(u64, reqwest::Client)>>,
    tls: Option<Arc<NodeTls>>,
    /// Says who is calling (`FROM_HEADER`) on every call.
    directory: Arc<PeerDirectory>,
    /// The cluster this node belongs to (`CLUSTER_HEADER`), once it knows.
    cluster: Arc<ClusterId>,
}

fn build_http(tls: Option<&NodeTls>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        // Below the peers' read timeout (10 s), which closes idle keep-alive connections:
        // never reuse one the peer is about to close.
        .pool_idle_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        builder = builder.use_preconfigured_tls((*tls.peer_client_config()).clone());
    }
    builder
        .build()
        .expect("an HTTP client with plain settings builds")
}

impl RpcClient {
    /// Plain HTTP, or HTTPS with this node's certificate when `tls` is given.
    pub fn new(
        tls: Option<Arc<NodeTls>>,
        directory: Arc<PeerDirectory>,
        cluster: Arc<ClusterId>,
    ) -> RpcClient {
        let generation = tls.as_ref().map_or(0, |t| t.generation());
        let http = build_http(tls.as_deref());
        RpcClient {
            http: Arc::new(RwLock::new((generation, http))),
            tls,
            directory,
            cluster,
        }
    }

    /// The id of the cluster this node belongs to, once it knows it.
    pub fn cluster_id(&self) -> Option<String> {
        self.cluster.get()
    }

    /// The client for this call: rebuilt once after the certificates were reloaded.
    fn http(&self) -> reqwest::Client {
        let generation = self.tls.as_ref().map_or(0, |t| t.generation());
        {
            let current = self.http.read().unwrap_or_else(|p| p.into_inner());
            if current.0 == generation {
                return current.1.clone();
            }
        }
        let mut current = self.http.write().unwrap_or_else(|p| p.into_inner());
        if current.0 != generation {
            *current = (generation, build_http(self.tls.as_deref()));
        }
        current.1.clone()
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// POSTs `body` (already encoded) to `path` on the node at `addr` and decodes its answer.
    pub async fn post<T: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Answered<T>, CallError> {
        self.post_bounded::<T, ANSWER_CLAIM_LIMIT>(addr, path, body, timeout)
            .await
    }

    /// `post`, decoding an answer that may claim up to `CLAIM` bytes (see `ANSWER_CLAIM_LIMIT`).
    pub async fn post_bounded<T: DeserializeOwned, const CLAIM: usize>(
        &self,
        addr: &str,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Answered<T>, CallError> {
        let mut request = self
            .http()
            .post(format!("{}://{addr}{path}", self.scheme()))
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(FROM_HEADER, self.directory.header());
        if let Some(id) = self.cluster.get() {
            request = request.header(CLUSTER_HEADER, id);
        }
        // A forwarded request carries the id of the client request it serves (`api` sets it).
        if let Ok(id) = super::REQUEST_ID.try_with(Clone::clone) {
            request = request.header(super::REQUEST_ID_HEADER, id);
        }
        let mut resp = request.body(body).send().await.map_err(|e| {
            if e.is_connect() {
                CallError::Refused(e)
            } else {
                CallError::NoAnswer(e.to_string())
            }
        })?;
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
        let peer_clock_ms = header(CLOCK_HEADER).and_then(|v| v.parse::<i64>().ok());
        let not_a_member =
            header(super::removal::NOT_A_MEMBER_HEADER).and_then(|v| v.parse::<u64>().ok());
        match resp.status() {
            s if s.is_success() => {}
            reqwest::StatusCode::PAYLOAD_TOO_LARGE => return Err(CallError::TooLarge),
            s => return Err(CallError::Status(s.as_u16())),
        }
        let bytes = read_capped(&mut resp, CLAIM).await?;
        let value = codec::decode_bounded::<T, CLAIM>(&bytes)
            .map_err(|e| CallError::NoAnswer(format!("undecodable answer: {e}")))?;
        Ok(Answered {
            value,
            peer_clock_ms,
            not_a_member,
        })
    }

    /// A leader call: sends `req` to the leader at `addr` and returns its answer. A refused
    /// connection means the leader is gone and nothing was sent (`NotLeader`: the caller looks
    /// for the new one). Any later failure leaves the outcome unknown: a timeout, never a
    /// silent retry.
    pub async fn call_leader<Req: Serialize, T: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        req: &Req,
        deadline: Instant,
    ) -> LeaderAnswer<T> {
        let answer = self
            .try_call_leader::<Req, T, ANSWER_CLAIM_LIMIT>(addr, path, req, deadline)
            .await;
        leader_answer_of(addr, answer)
    }

    /// `call_leader`, with a failed call's `CallError` as it was (for a caller that treats
    /// one of them apart), and an answer that may claim up to `CLAIM` bytes.
    pub async fn try_call_leader<Req: Serialize, T: DeserializeOwned, const CLAIM: usize>(
        &self,
        addr: &str,
        path: &str,
        req: &Req,
        deadline: Instant,
    ) -> Result<LeaderAnswer<T>, CallError> {
        let body = match codec::encode(req) {
            Ok(b) => b,
            Err(e) => return Ok(LeaderAnswer::Failed(RpcError::Internal(e.to_string()))),
        };
        // A little past the deadline: the leader answers its own timeout by then.
        let timeout =
            deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(500);
        self.post_bounded::<LeaderAnswer<T>, CLAIM>(addr, path, body, timeout)
            .await
            .map(|answered| answered.value)
    }
}

/// The answer's body, read up to `cap` bytes: whatever answers at a peer's address may claim
/// or stream gigabytes. (An answer's encoding is never longer than the memory it may claim
/// decoded, so `CLAIM` bounds it too.)
async fn read_capped(resp: &mut reqwest::Response, cap: usize) -> Result<Vec<u8>, CallError> {
    let too_long = |n| CallError::NoAnswer(format!("an answer of {n} bytes or more, over {cap}"));
    if let Some(n) = resp.content_length().filter(|&n| n > cap as u64) {
        return Err(too_long(n as usize));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| CallError::NoAnswer(e.to_string()))?
    {
        if bytes.len() + chunk.len() > cap {
            return Err(too_long(bytes.len() + chunk.len()));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// A leader call's answer, or what its failure means for the caller (see `call_leader`).
pub fn leader_answer_of<T>(
    addr: &str,
    result: Result<LeaderAnswer<T>, CallError>,
) -> LeaderAnswer<T> {
    match result {
        Ok(answer) => answer,
        Err(CallError::Refused(_)) => LeaderAnswer::NotLeader(None),
        Err(e @ CallError::NoAnswer(_)) => LeaderAnswer::Failed(RpcError::Timeout(format!(
            "forwarding to the leader at {addr}: {e}"
        ))),
        // A 5xx may come after the leader acted (a failure to encode its answer): unknown.
        Err(e @ CallError::Status(500..)) => LeaderAnswer::Failed(RpcError::Timeout(format!(
            "forwarding to the leader at {addr}: {e}"
        ))),
        Err(e @ (CallError::TooLarge | CallError::Status(_))) => LeaderAnswer::Failed(
            RpcError::Unavailable(format!("the leader at {addr} refused the request: {e}")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on loopback that answers each request with `head`, then `body_bytes` zeros.
    async fn answering(head: &'static str, body_bytes: usize) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = conn.read(&mut request).await;
                    conn.write_all(head.as_bytes()).await?;
                    let zeros = vec![0u8; 64 * 1024];
                    let mut sent = 0;
                    while sent < body_bytes {
                        let n = zeros.len().min(body_bytes - sent);
                        conn.write_all(&zeros[..n]).await?;
                        sent += n;
                    }
                    std::io::Result::Ok(())
                });
            }
        });
        addr
    }

    fn client() -> RpcClient {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Arc::new(ClusterId::load(dir.path()).unwrap());
        let directory = Arc::new(PeerDirectory::new(1, "127.0.0.1:1".into()));
        RpcClient::new(None, directory, cluster)
    }

    /// Whatever answers at a peer's address cannot make this node read more than the
    /// answer's limit, whether it says how long its answer is or streams it.
    #[tokio::test]
    async fn an_answer_past_its_limit_is_not_read_whole() {
        let client = client();
        let timeout = Duration::from_secs(30);
        let said = answering("HTTP/1.1 200 OK\r\ncontent-length: 8589934592\r\n\r\n", 0).await;
        let streamed = answering(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\nconnection: close\r\n\r\n",
            ANSWER_CLAIM_LIMIT + 1024 * 1024,
        )
        .await;
        for addr in [said, streamed] {
            let answer = client
                .post::<u64>(&addr, "/raft/vote", vec![], timeout)
                .await;
            match answer {
                Err(CallError::NoAnswer(e)) => assert!(e.contains("over"), "{e}"),
                other => panic!("{addr}: {:?}", other.map(|a| a.value)),
            }
        }
    }

    /// A 5xx from the leader may come after it acted: the outcome is unknown, not "refused".
    #[test]
    fn a_leader_s_5xx_is_an_unknown_outcome_and_a_4xx_a_refusal() {
        let unknown = leader_answer_of::<()>("l", Err(CallError::Status(500)));
        assert!(matches!(
            unknown,
            LeaderAnswer::Failed(RpcError::Timeout(_))
        ));
        let refused = leader_answer_of::<()>("l", Err(CallError::Status(409)));
        assert!(matches!(
            refused,
            LeaderAnswer::Failed(RpcError::Unavailable(_))
        ));
    }
}
