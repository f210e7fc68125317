//! What every request leaves behind: a request id, an access log line, the HTTP metrics and
//! the `x-ordo-version` header.
//!
//! The id is the caller's `X-Request-Id` when it gives a sane one (1 to 128 visible ASCII
//! characters), else a fresh one; it is returned in the answer, set on a tracing span around
//! the request (with the access log on, the node's own lines for the request carry it too)
//! and carried on the calls this node makes to the leader for the request
//! (`rpc::REQUEST_ID`), where the leader logs it again. The access log is target `ordo::access` at INFO, off unless `RUST_LOG` asks for it
//! (`RUST_LOG=info,ordo::access=info`); Raft's own traffic (appends, heartbeats, votes,
//! snapshots) is counted but never logged.

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
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().clone();
    let raft_traffic = [APPEND_PATH, VOTE_PATH, SNAPSHOT_PATH].contains(&route.as_str());
    let span = if raft_traffic {
        tracing::Span::none()
    } else {
        tracing::info_span!(target: "ordo::access", "request", request_id = %id)
    };
    let path = req.uri().path().to_string();
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
    if !raft_traffic {
        tracing::info!(
            target: "ordo::access",
            parent: &span,
            %method,
            path,
            status = code,
            ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    }
    // Labels stay a small set whatever the requests claim: unknown routes are "unmatched",
    // unknown methods "other". Static strings where they can be: no allocation per request.
    let method: &'static str = match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PATCH" => "PATCH",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let status = code.to_string();
    metrics::counter!(telemetry::HTTP_REQUESTS,
        "route" => route.clone(), "method" => method, "status" => status)
    .increment(1);
    metrics::histogram!(telemetry::HTTP_DURATION, "route" => route, "method" => method)
        .record(elapsed.as_secs_f64());
    resp
}
