//! The receiving side of node-to-node traffic, `codec` bodies in and out: Raft's own RPCs
//! (append, vote, snapshot chunks) and ordo's internal leader routes (forwarded writes and
//! read-index requests, see `forward`).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
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

fn decoded<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    codec::decode(body).map_err(|e| ApiError::BadRequest(format!("undecodable RPC body: {e}")))
}

pub async fn append(State(state): State<AppState>, body: Bytes) -> Response {
    match decoded(&body) {
        Ok(req) => encoded(&state.raft.append_entries(req).await),
        Err(e) => e.into_response(),
    }
}

pub async fn vote(State(state): State<AppState>, body: Bytes) -> Response {
    match decoded(&body) {
        Ok(req) => encoded(&state.raft.vote(req).await),
        Err(e) => e.into_response(),
    }
}

pub async fn snapshot(State(state): State<AppState>, body: Bytes) -> Response {
    match decoded(&body) {
        Ok(req) => encoded(&state.raft.install_snapshot(req).await),
        Err(e) => e.into_response(),
    }
}

pub async fn write(State(state): State<AppState>, body: Bytes) -> Response {
    match decoded::<WriteRequest>(&body) {
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
