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
use std::sync::Arc;

use serde::Serialize;
use tokio::time::Instant;

use super::error::ApiError;
use super::AppState;
use crate::codec;
use crate::service::forward::{write_as_leader, WriteRequest};

fn encoded<T: Serialize>(value: &T) -> Response {
    match codec::encode(value) {
        Ok(bytes) => (StatusCode::OK, bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Largest append body: a batch of entries. Senders cut batches at `--max-append-kib` (at most
/// 8 MiB) and proposers keep an entry near 256 KB, so twice the largest budget is room enough.
pub const BODY_LIMIT_APPEND: usize = 16 * 1024 * 1024;
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
    type Req = openraft::raft::InstallSnapshotRequest<crate::raft::TypeConfig>;
    match decoded::<Req, { BODY_LIMIT_SNAPSHOT * CLAIM_PER_BODY_BYTE }>(body, BODY_LIMIT_SNAPSHOT) {
        Ok(req) => {
            let _hold = state.election_hold.enter(&req.vote);
            encoded(&state.raft.install_snapshot(req).await)
        }
        Err(e) => e.into_response(),
    }
}

/// Keeps this node from campaigning while it receives or installs a snapshot from its leader.
///
/// openraft 0.9's follower hears nothing from the leader while it installs the last chunk
/// (seconds for a big store), so its election timer fires and its campaign deposes a healthy
/// leader, whose transfer then starts over. A node being sent a snapshot by the leader it
/// follows knows that leader is alive; it may campaign again `grace` after the last chunk is
/// done, by which time the leader's next append has reset its timer. Only chunks carrying the
/// committed vote of the leader this node follows hold elections: a stale or stray request
/// does not.
pub struct ElectionHold {
    raft: crate::raft::Raft,
    grace: std::time::Duration,
    /// (chunks being handled, generation): under one lock with the `elect` switch, so a
    /// re-enable timer can never switch elections back on during a newer hold.
    state: std::sync::Mutex<(usize, u64)>,
}

impl ElectionHold {
    pub fn new(raft: crate::raft::Raft, grace: std::time::Duration) -> Arc<ElectionHold> {
        Arc::new(ElectionHold {
            raft,
            grace,
            state: std::sync::Mutex::new((0, 0)),
        })
    }

    /// A hold for as long as the guard lives, if `vote` is the leader's this node follows.
    fn enter(self: &Arc<Self>, vote: &crate::raft::Vote) -> Option<HoldGuard> {
        let from_our_leader = {
            let m = self.raft.metrics();
            let m = m.borrow();
            vote.is_committed()
                && *vote >= m.vote
                && m.current_leader == Some(vote.leader_id().node_id)
        };
        if !from_our_leader {
            return None;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.0 == 0 {
            tracing::debug!("receiving a snapshot: elections held");
        }
        state.0 += 1;
        state.1 += 1;
        self.raft.runtime_config().elect(false);
        Some(HoldGuard(self.clone()))
    }
}

struct HoldGuard(Arc<ElectionHold>);

impl Drop for HoldGuard {
    fn drop(&mut self) {
        let hold = self.0.clone();
        let generation = {
            let mut state = hold.state.lock().unwrap_or_else(|p| p.into_inner());
            state.0 -= 1;
            if state.0 > 0 {
                return;
            }
            state.1
        };
        tokio::spawn(async move {
            tokio::time::sleep(hold.grace).await;
            let state = hold.state.lock().unwrap_or_else(|p| p.into_inner());
            if *state == (0, generation) {
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
            let deadline = Instant::now() + state.request_timeout;
            encoded(&write_as_leader(&state.service, req, deadline).await)
        }
        Err(e) => e.into_response(),
    }
}

pub async fn read_index(State(state): State<AppState>) -> Response {
    let deadline = Instant::now() + state.request_timeout;
    encoded(&state.service.leader_reads.read_index(deadline).await)
}
