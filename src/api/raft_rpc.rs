//! The receiving side of node-to-node traffic, `codec` bodies in and out: Raft's own RPCs
//! (append, vote, snapshot chunks) and ordo's internal leader routes (forwarded writes and
//! read-index requests, see `forward`).
//!
//! Each route bounds its body twice: by size (`BODY_LIMIT_*`, 413 past it) and by what the
//! decoded value may claim in memory (`decode_bounded`), so no byte sequence can make a node
//! allocate more than a few times its largest legal request.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::time::Instant;

use super::error::ApiError;
use super::forward::{write_as_leader, WriteRequest};
use super::AppState;
use crate::codec;

fn encoded<T: Serialize>(value: &T) -> Response {
    match codec::encode(value) {
        Ok(bytes) => (StatusCode::OK, bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Largest append body: a batch of entries (the sender keeps batches near `MAX_APPEND_BYTES`,
/// but one entry is never split, and an entry may hold up to 256 of the largest orders).
pub const BODY_LIMIT_APPEND: usize = 64 * 1024 * 1024;
/// Largest snapshot chunk (openraft's chunk size plus the meta).
pub const BODY_LIMIT_SNAPSHOT: usize = 16 * 1024 * 1024;
/// Largest forwarded write: one order operation (~40 KB at the legal maximum).
pub const BODY_LIMIT_WRITE: usize = 1024 * 1024;
/// Largest vote request (a few log ids).
pub const BODY_LIMIT_VOTE: usize = 64 * 1024;

/// Decoded values may claim a few times their wire size (fixed-width integers are encoded
/// as varints; containers claim their element size).
const CLAIM_PER_BODY_BYTE: usize = 4;

/// The body as a value of `T`, or the JSON error to answer: 413 past the route's body limit,
/// 400 for anything undecodable.
fn decoded<T: serde::de::DeserializeOwned, const CLAIM_LIMIT: usize>(
    body: Result<Bytes, BytesRejection>,
    body_limit: usize,
) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge(body_limit)
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    })?;
    codec::decode_bounded::<T, CLAIM_LIMIT>(&body)
        .map_err(|e| ApiError::BadRequest(format!("undecodable RPC body: {e}")))
}

pub async fn append(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match decoded::<_, { BODY_LIMIT_APPEND * CLAIM_PER_BODY_BYTE }>(body, BODY_LIMIT_APPEND) {
        Ok(req) => {
            let mut resp = encoded(&state.raft.append_entries(req).await);
            // The leader measures this node's clock on every append (see `raft::clock`).
            let now = crate::raft::clock::wall_clock_ms().to_string();
            if let Ok(v) = axum::http::HeaderValue::from_str(&now) {
                resp.headers_mut()
                    .insert(crate::raft::clock::CLOCK_HEADER, v);
            }
            resp
        }
        Err(e) => e.into_response(),
    }
}

pub async fn vote(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    match decoded::<_, { BODY_LIMIT_VOTE * CLAIM_PER_BODY_BYTE }>(body, BODY_LIMIT_VOTE) {
        Ok(req) => encoded(&state.raft.vote(req).await),
        Err(e) => e.into_response(),
    }
}

pub async fn snapshot(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match decoded::<_, { BODY_LIMIT_SNAPSHOT * CLAIM_PER_BODY_BYTE }>(body, BODY_LIMIT_SNAPSHOT) {
        Ok(req) => {
            let _hold = state.election_hold.enter();
            encoded(&state.raft.install_snapshot(req).await)
        }
        Err(e) => e.into_response(),
    }
}

/// Keeps this node from campaigning while it receives or installs a snapshot from a leader.
///
/// openraft 0.9's follower hears nothing from the leader while it installs the last chunk
/// (seconds for a big store), so its election timer fires and its campaign deposes a healthy
/// leader, whose transfer then starts over. A node being sent a snapshot knows a leader is
/// alive; it may campaign again `grace` after the last chunk is done, by which time the
/// leader's next append has reset its timer.
pub struct ElectionHold {
    raft: crate::raft::Raft,
    grace: std::time::Duration,
    active: AtomicUsize,
    /// Bumped on every `enter`, so a re-enable timer of an older hold does nothing.
    generation: AtomicU64,
}

impl ElectionHold {
    pub fn new(raft: crate::raft::Raft, grace: std::time::Duration) -> Arc<ElectionHold> {
        Arc::new(ElectionHold {
            raft,
            grace,
            active: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
        })
    }

    fn enter(self: &Arc<Self>) -> HoldGuard {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if self.active.fetch_add(1, Ordering::SeqCst) == 0 {
            tracing::debug!("receiving a snapshot: elections held");
        }
        self.raft.runtime_config().elect(false);
        HoldGuard(self.clone())
    }
}

struct HoldGuard(Arc<ElectionHold>);

impl Drop for HoldGuard {
    fn drop(&mut self) {
        let hold = self.0.clone();
        if hold.active.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        let generation = hold.generation.load(Ordering::SeqCst);
        tokio::spawn(async move {
            tokio::time::sleep(hold.grace).await;
            if hold.active.load(Ordering::SeqCst) == 0
                && hold.generation.load(Ordering::SeqCst) == generation
            {
                hold.raft.runtime_config().elect(true);
                tracing::debug!("snapshot done: elections allowed again");
            }
        });
    }
}

pub async fn write(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    match decoded::<WriteRequest, { BODY_LIMIT_WRITE * CLAIM_PER_BODY_BYTE }>(
        body,
        BODY_LIMIT_WRITE,
    ) {
        Ok(req) => {
            encoded(&write_as_leader(&state, req, Instant::now() + state.request_timeout).await)
        }
        Err(e) => e.into_response(),
    }
}

pub async fn read_index(State(state): State<AppState>) -> Response {
    let deadline = Instant::now() + state.request_timeout;
    encoded(&state.leader_reads.read_index(deadline).await)
}
