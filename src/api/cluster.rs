//! Cluster routes: health, status from openraft's metrics, a state digest for comparing
//! replicas, and membership changes (add a learner, set the voters). Membership changes must
//! run on the leader; any other node forwards the same JSON request there.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::error::ApiError;
use super::json::JsonBody;
use super::AppState;
use crate::order::ValidationError;
use crate::raft::NodeId;
use crate::wire::{AddLearnerBody, ClusterStatus, MembersBody};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState};

const FORWARDED_HEADER: &str = "x-ordo-forwarded";
/// Adding a learner waits until it has caught up; bounded.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

pub async fn status(State(state): State<AppState>) -> Json<ClusterStatus> {
    let m = state.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let mut members = BTreeMap::new();
    let mut learners = BTreeMap::new();
    for (id, node) in membership.nodes() {
        let target = if voters.contains(id) {
            &mut members
        } else {
            &mut learners
        };
        target.insert(id.to_string(), node.addr.clone());
    }
    let role = match m.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    Json(ClusterStatus {
        node_id: state.id,
        state: role.to_string(),
        leader_id: m.current_leader,
        term: m.current_term,
        last_log_index: m.last_log_index,
        last_applied: m.last_applied.map(|l| l.index),
        members,
        learners,
    })
}

/// A digest of this node's state machine and how far it has applied: equal digests at equal
/// applied indexes mean the replicas agree.
pub async fn digest(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let applied = state.raft.metrics().borrow().last_applied.map(|l| l.index);
    let reader = state.reader.clone();
    let digest = tokio::task::spawn_blocking(move || reader.state_digest())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(Json(
        serde_json::json!({"node_id": state.id, "last_applied": applied, "digest": digest}),
    ))
}

/// Runs a membership change here if this node leads, else forwards the request to the leader.
async fn on_leader<B: serde::Serialize>(
    state: &AppState,
    headers: &HeaderMap,
    path: &str,
    body: &B,
    change: impl std::future::Future<Output = Result<Response, ApiError>>,
) -> Result<Response, ApiError> {
    let m = state.raft.metrics().borrow().clone();
    if m.current_leader == Some(state.id) {
        return change.await;
    }
    let leader = m.current_leader.ok_or(ApiError::NoLeader)?;
    if headers.contains_key(FORWARDED_HEADER) {
        return Err(ApiError::NoLeader);
    }
    let addr = m
        .membership_config
        .membership()
        .get_node(&leader)
        .ok_or(ApiError::NoLeader)?
        .addr
        .clone();
    let resp = state
        .http
        .post(format!("http://{addr}{path}"))
        .header(FORWARDED_HEADER, state.id.to_string())
        .timeout(MEMBERSHIP_TIMEOUT + Duration::from_secs(5))
        .json(body)
        .send()
        .await
        .map_err(|e| {
            // Nothing reached the leader only when the connection was refused; past that the
            // change may have been made, so the answer is "unknown", not "unavailable".
            if e.is_connect() {
                ApiError::Unavailable(format!("forwarding to leader {leader} failed: {e}"))
            } else {
                ApiError::Timeout(format!(
                    "no answer from leader {leader} ({e}); the change may have been made: \
                     check /cluster/status"
                ))
            }
        })?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let bytes = resp.bytes().await.map_err(|e| {
        ApiError::Timeout(format!(
            "the answer from leader {leader} was cut off ({e}); the change may have been \
                 made: check /cluster/status"
        ))
    })?;
    Ok((
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response())
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> ApiError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ApiError::NoLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ApiError::Validation(ValidationError::new("members", e.to_string()))
        }
        RaftError::Fatal(e) => ApiError::Unavailable(e.to_string()),
    }
}

pub async fn add_learner(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<AddLearnerBody>,
) -> Result<Response, ApiError> {
    if body.addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(ApiError::Validation(ValidationError::new(
            "addr",
            "must be HOST:PORT with an IP address",
        )));
    }
    let change = async {
        let fut = state.raft.add_learner(
            body.id,
            BasicNode {
                addr: body.addr.clone(),
            },
            true,
        );
        tokio::time::timeout(MEMBERSHIP_TIMEOUT, fut)
            .await
            .map_err(|_| ApiError::Timeout("the learner did not catch up in time".into()))?
            .map_err(membership_error)?;
        Ok(status(State(state.clone())).await.into_response())
    };
    on_leader(&state, &headers, "/cluster/learners", &body, change).await
}

pub async fn change_members(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<MembersBody>,
) -> Result<Response, ApiError> {
    if body.members.is_empty() {
        return Err(ApiError::Validation(ValidationError::new(
            "members",
            "must name at least one voter",
        )));
    }
    let change = async {
        let ids: BTreeSet<NodeId> = body.members.iter().copied().collect();
        tokio::time::timeout(MEMBERSHIP_TIMEOUT, state.raft.change_membership(ids, false))
            .await
            .map_err(|_| ApiError::Timeout("membership change did not commit in time".into()))?
            .map_err(membership_error)?;
        Ok(status(State(state.clone())).await.into_response())
    };
    on_leader(&state, &headers, "/cluster/members", &body, change).await
}
