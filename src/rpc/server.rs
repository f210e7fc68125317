//! The receiving side of node-to-node traffic, `codec` bodies in and out: Raft's own RPCs
//! (append, vote, snapshot chunks), handed to openraft, and the leader calls (a forwarded
//! write, a read-index request, a membership change), handed to whatever implements
//! `LeaderCalls` (the service; this layer sits below it and only knows the trait).
//!
//! Each route bounds its body twice: by size (`BODY_LIMIT_*`, 413 past it) and by what the
//! decoded value's strings may claim in memory (`decode_bounded`). Sequences are not counted
//! (see `decode_bounded`): a body of many tiny elements, such as an append of millions of
//! empty entries, decodes to tens of times its size (~0.4 GB for 16 MiB). These routes serve
//! only peers (with TLS, the cluster CA's certificates), so that is left as it is. A body
//! that does not decode is a 400. Both are the API's one JSON error shape (`wire::ErrorBody`), so a confused client
//! that hits these routes learns what happened.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::clock::{wall_clock_ms, CLOCK_HEADER};
use super::cluster_id::{Admission, ClusterId, CLUSTER_HEADER};
use super::election_hold::ElectionHold;
use super::*;
use crate::codec;
use crate::order::CommandOutcome;
use crate::raft::{LogId, Raft, TypeConfig};
use crate::tls::ConnectionSecurity;
use crate::wire::{ErrorBody, ErrorCode, ErrorDetail};

/// What a node does with the leader calls it receives. None forwards again: a node that does
/// not lead answers `NotLeader` (or fails), and the caller looks for the leader itself.
pub trait LeaderCalls: Clone + Send + Sync + 'static {
    fn write(&self, req: WriteRequest)
        -> impl Future<Output = LeaderAnswer<CommandOutcome>> + Send;
    /// The index a linearizable read must see, confirmed with a quorum.
    fn read_index(&self) -> impl Future<Output = LeaderAnswer<Option<LogId>>> + Send;
    /// Answers the log id of the membership entry the change made.
    fn change_membership(
        &self,
        change: MembershipChange,
    ) -> impl Future<Output = LeaderAnswer<Option<LogId>>> + Send;
}

#[derive(Clone)]
struct RpcState<L> {
    raft: Raft,
    hold: Arc<ElectionHold>,
    leader: L,
}

/// Decoded values may claim a few times their wire size (fixed-width integers are encoded
/// as varints; containers claim their element size).
const CLAIM_PER_BODY_BYTE: usize = 4;

/// Every `/raft/*` route, each with the body limit of its own largest legal request. Callers'
/// client addresses (`FROM_HEADER`) go into `directory`.
pub fn router<L: LeaderCalls>(
    raft: Raft,
    hold: Arc<ElectionHold>,
    leader: L,
    directory: Arc<PeerDirectory>,
    cluster: Arc<ClusterId>,
) -> Router {
    fn limited<L: LeaderCalls>(
        limit: usize,
        route: MethodRouter<RpcState<L>>,
    ) -> MethodRouter<RpcState<L>> {
        route.layer(DefaultBodyLimit::max(limit))
    }
    Router::new()
        .route(APPEND_PATH, limited(BODY_LIMIT_APPEND, post(append::<L>)))
        .route(VOTE_PATH, limited(BODY_LIMIT_SMALL, post(vote::<L>)))
        .route(
            SNAPSHOT_PATH,
            limited(BODY_LIMIT_SNAPSHOT, post(snapshot::<L>)),
        )
        .route(WRITE_PATH, limited(BODY_LIMIT_WRITE, post(write::<L>)))
        .route(
            WRITE_BATCH_PATH,
            limited(BODY_LIMIT_WRITE_BATCH, post(write_batch::<L>)),
        )
        .route(
            READ_INDEX_PATH,
            limited(BODY_LIMIT_SMALL, post(read_index::<L>)),
        )
        .route(
            MEMBERSHIP_PATH,
            limited(BODY_LIMIT_SMALL, post(membership::<L>)),
        )
        .route_layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let directory = directory.clone();
                async move {
                    if let Some(from) = req.headers().get(FROM_HEADER) {
                        if let Ok(from) = from.to_str() {
                            directory.heard(from);
                        }
                    }
                    next.run(req).await
                }
            },
        ))
        .route_layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let cluster = cluster.clone();
                async move { same_cluster(&cluster, req, next).await }
            },
        ))
        .route_layer(axum::middleware::from_fn(peers_only))
        .with_state(RpcState { raft, hold, leader })
}

/// Serves only calls from this node's own cluster (see `cluster_id`): another cluster's id
/// is a `409 wrong_cluster`.
async fn same_cluster(
    cluster: &ClusterId,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let theirs = req
        .headers()
        .get(CLUSTER_HEADER)
        .map(|v| v.to_str().unwrap_or("(not text)").to_string());
    let served = match cluster.admission(theirs.as_deref()) {
        Admission::Serve => Ok(Some(next.run(req).await)),
        Admission::Refuse => Ok(None),
        Admission::Learn(id) => {
            let serve = next.run(req);
            cluster
                .first_call(&id, serve, |r: &Response| r.status().is_success())
                .await
        }
    };
    match served {
        Ok(Some(answer)) => answer,
        Ok(None) => Refusal {
            status: StatusCode::CONFLICT,
            code: ErrorCode::WrongCluster,
            message: format!(
                "this node belongs to cluster {}, not {}: a node of another cluster (or one \
                 whose data directory was wiped and that formed a cluster of its own) called",
                cluster.get().as_deref().unwrap_or("(none yet)"),
                theirs.unwrap_or_default()
            ),
        }
        .into_response(),
        Err(e) => Refusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: ErrorCode::Internal,
            message: format!("storing the cluster id: {e}"),
        }
        .into_response(),
    }
}

/// Over TLS, only connections that presented a certificate of the cluster CA (peers) may use
/// these routes: a client that can reach the port cannot post into the Raft log. (Without
/// TLS the node serves on loopback, or was told `--insecure`.)
async fn peers_only(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let security = req
        .extensions()
        .get::<ConnectionSecurity>()
        .copied()
        .unwrap_or_default();
    if security.tls && !security.peer_certificate {
        return Refusal {
            status: StatusCode::FORBIDDEN,
            code: ErrorCode::Forbidden,
            message: "node-to-node routes accept only this cluster's nodes (a client \
                      certificate signed by the cluster CA)"
                .into(),
        }
        .into_response();
    }
    next.run(req).await
}

/// A request this protocol cannot take: answered as the API's JSON error.
struct Refusal {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_string(),
                message: self.message,
                field: None,
                oldest_revision: None,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body is left unread: this connection cannot carry another
            // request.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

fn encoded<T: Serialize>(value: &T) -> Response {
    match codec::encode(value) {
        Ok(bytes) => (StatusCode::OK, bytes).into_response(),
        Err(e) => Refusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: ErrorCode::Internal,
            message: format!("encoding the answer: {e}"),
        }
        .into_response(),
    }
}

/// The body as a value of `T`, or the error to answer: 413 past the route's body limit, 400
/// for anything undecodable.
fn decoded<T: DeserializeOwned, const CLAIM_LIMIT: usize>(
    body: Result<Bytes, BytesRejection>,
    body_limit: usize,
) -> Result<T, Refusal> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Refusal {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: ErrorCode::BodyTooLarge,
                message: format!("request body is larger than {body_limit} bytes"),
            }
        } else {
            Refusal {
                status: StatusCode::BAD_REQUEST,
                code: ErrorCode::BadRequest,
                message: rejection.body_text(),
            }
        }
    })?;
    codec::decode_bounded::<T, CLAIM_LIMIT>(&body).map_err(|e| Refusal {
        status: StatusCode::BAD_REQUEST,
        code: ErrorCode::BadRequest,
        message: format!("undecodable RPC body: {e}"),
    })
}

async fn append<L: LeaderCalls>(
    State(state): State<RpcState<L>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match decoded::<_, { BODY_LIMIT_APPEND * CLAIM_PER_BODY_BYTE }>(body, BODY_LIMIT_APPEND) {
        Ok(req) => {
            let mut resp = encoded(&state.raft.append_entries(req).await);
            // The leader measures this node's clock on every append (see `clock`).
            if let Ok(v) = HeaderValue::from_str(&wall_clock_ms().to_string()) {
                resp.headers_mut().insert(CLOCK_HEADER, v);
            }
            resp
        }
        Err(refusal) => refusal.into_response(),
    }
}

async fn vote<L: LeaderCalls>(
    State(state): State<RpcState<L>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    type Req = openraft::raft::VoteRequest<crate::raft::NodeId>;
    match decoded::<Req, { BODY_LIMIT_SMALL * CLAIM_PER_BODY_BYTE }>(body, BODY_LIMIT_SMALL) {
        Ok(req) => {
            let candidate = req.vote.leader_id().voted_for();
            let mut resp = encoded(&state.raft.vote(req).await);
            // A candidate outside this node's membership may not know it was removed.
            let notice = candidate.and_then(|c| super::removal::vote_answer_notice(&state.raft, c));
            if let Some(index) = notice {
                resp.headers_mut().insert(
                    super::removal::NOT_A_MEMBER_HEADER,
                    HeaderValue::from(index),
                );
            }
            resp
        }
        Err(refusal) => refusal.into_response(),
    }
}

async fn snapshot<L: LeaderCalls>(
    State(state): State<RpcState<L>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    type Req = openraft::raft::InstallSnapshotRequest<TypeConfig>;
    match decoded::<Req, { BODY_LIMIT_SNAPSHOT * CLAIM_PER_BODY_BYTE }>(body, BODY_LIMIT_SNAPSHOT) {
        Ok(req) => {
            let _hold = state.hold.enter(&req.vote);
            encoded(&state.raft.install_snapshot(req).await)
        }
        Err(refusal) => refusal.into_response(),
    }
}

async fn write<L: LeaderCalls>(
    State(state): State<RpcState<L>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match decoded::<WriteRequest, { BODY_LIMIT_WRITE * CLAIM_PER_BODY_BYTE }>(
        body,
        BODY_LIMIT_WRITE,
    ) {
        Ok(req) => match req.validate() {
            Ok(()) => encoded(&state.leader.write(req).await),
            Err(e) => encoded(&LeaderAnswer::<CommandOutcome>::Failed(RpcError::Invalid(
                e,
            ))),
        },
        Err(refusal) => refusal.into_response(),
    }
}

/// Each write of the batch proposed as if it had come alone (they share log entries on the
/// way), each answered in its place.
async fn write_batch<L: LeaderCalls>(
    State(state): State<RpcState<L>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let reqs = match decoded::<Vec<WriteRequest>, { BODY_LIMIT_WRITE_BATCH * CLAIM_PER_BODY_BYTE }>(
        body,
        BODY_LIMIT_WRITE_BATCH,
    ) {
        Ok(reqs) => reqs,
        Err(refusal) => return refusal.into_response(),
    };
    if reqs.len() > MAX_FORWARD_BATCH {
        return Refusal {
            status: StatusCode::BAD_REQUEST,
            code: ErrorCode::BadRequest,
            message: format!(
                "a forwarded batch holds at most {MAX_FORWARD_BATCH} writes, not {}",
                reqs.len()
            ),
        }
        .into_response();
    }
    let answers = reqs.into_iter().map(|req| {
        let leader = state.leader.clone();
        async move {
            match req.validate() {
                Ok(()) => leader.write(req).await,
                Err(e) => LeaderAnswer::Failed(RpcError::Invalid(e)),
            }
        }
    });
    let answers = futures_util::future::join_all(answers).await;
    encoded(&LeaderAnswer::<_, RpcError>::Done(answers))
}

async fn read_index<L: LeaderCalls>(
    State(state): State<RpcState<L>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match decoded::<(), { BODY_LIMIT_SMALL * CLAIM_PER_BODY_BYTE }>(body, BODY_LIMIT_SMALL) {
        Ok(()) => encoded(&state.leader.read_index().await),
        Err(refusal) => refusal.into_response(),
    }
}

async fn membership<L: LeaderCalls>(
    State(state): State<RpcState<L>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match decoded::<MembershipChange, { BODY_LIMIT_SMALL * CLAIM_PER_BODY_BYTE }>(
        body,
        BODY_LIMIT_SMALL,
    ) {
        Ok(change) => match change.validate() {
            Ok(()) => encoded(&state.leader.change_membership(change).await),
            Err(e) => encoded(&LeaderAnswer::<Option<LogId>>::Failed(RpcError::Invalid(e))),
        },
        Err(refusal) => refusal.into_response(),
    }
}
