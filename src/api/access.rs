//! What every request leaves behind: a request id, an access log line, the HTTP metrics and
//! the `x-ordo-version` header.
//!
//! The id is the caller's `X-Request-Id` when it gives a sane one (1 to 128 visible ASCII
//! characters), else a fresh one; it is returned in the answer, set on a tracing span around
//! the request (with the access log on, the node's own lines for the request carry it too)
//! and carried on the calls this node makes to the leader for the request alone
//! (`rpc::REQUEST_ID`), where the leader logs it again; a call that forwards several writes
//! at once (`service::forward`) carries none, and the leader logs it under an id of its own.
//! The access log is target `ordo::access` at INFO, off unless `RUST_LOG` asks for it
//! (`RUST_LOG=info,ordo::access=info`); Raft's own traffic (appends, heartbeats, votes,
//! snapshots) is counted but never logged.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::rpc::{APPEND_PATH, REQUEST_ID, REQUEST_ID_HEADER, SNAPSHOT_PATH, VOTE_PATH};
use crate::telemetry;
use crate::wire::VERSION_HEADER;

const MAX_REQUEST_ID_LEN: usize = 128;

/// The caller's request id if it is one we can log and send on.
fn given_id(req: &Request) -> Option<String> {
    let value = req.headers().get(REQUEST_ID_HEADER)?.to_str().ok()?;
    let sane = !value.is_empty()
        && value.len() <= MAX_REQUEST_ID_LEN
        && value.bytes().all(|b| b.is_ascii_graphic());
    sane.then(|| value.to_string())
}

fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The middleware (a layer over every route, fallbacks included).
pub async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = given_id(&req).unwrap_or_else(new_id);
    // A cheap clone (an `Arc<str>`), kept past the request's move into the handler.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route: &str = matched.as_ref().map_or("unmatched", |p| p.as_str());
    let method = method_label(req.method());
    let raft_traffic = [APPEND_PATH, VOTE_PATH, SNAPSHOT_PATH].contains(&route);
    // The access log costs a span and a line per request: only when enabled.
    let logged = !raft_traffic && tracing::enabled!(target: "ordo::access", tracing::Level::INFO);
    let (span, path) = if logged {
        let span = tracing::info_span!(target: "ordo::access", "request", request_id = %id);
        (span, req.uri().path().to_string())
    } else {
        (tracing::Span::none(), String::new())
    };
    let mut resp = REQUEST_ID
        .scope(id.clone(), next.run(req))
        .instrument(span.clone())
        .await;
    let elapsed = started.elapsed();
    let code = resp.status().as_u16();
    if let Ok(value) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    resp.headers_mut()
        .insert(VERSION_HEADER, HeaderValue::from_static(crate::VERSION));
    if logged {
        tracing::info!(
            target: "ordo::access",
            parent: &span,
            method,
            path,
            status = code,
            ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    }
    record(route, method, code, elapsed.as_secs_f64());
    resp
}

/// The method as a label: a small set whatever the requests claim.
fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PATCH" => "PATCH",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

type RouteHandles = HashMap<(&'static str, u16), (metrics::Counter, metrics::Histogram)>;

thread_local! {
    /// The metric handles of each (route, method, status) seen on this thread: a registry
    /// lookup builds a key and hashes its labels, which measured a few percent of a cheap
    /// request. Routes are the router's (or "unmatched") and statuses are HTTP's, so this
    /// stays small.
    static HANDLES: RefCell<HashMap<String, RouteHandles>> = RefCell::new(HashMap::new());
}

fn record(route: &str, method: &'static str, code: u16, seconds: f64) {
    HANDLES.with(|handles| {
        let mut handles = handles.borrow_mut();
        if !handles.contains_key(route) {
            handles.insert(route.to_string(), HashMap::new());
        }
        let by_route = handles.get_mut(route).expect("inserted above");
        let (counter, histogram) = by_route.entry((method, code)).or_insert_with(|| {
            (
                metrics::counter!(telemetry::HTTP_REQUESTS,
                    "route" => route.to_string(), "method" => method, "status" => code.to_string()),
                metrics::histogram!(telemetry::HTTP_DURATION,
                    "route" => route.to_string(), "method" => method),
            )
        });
        counter.increment(1);
        histogram.record(seconds);
    });
}
