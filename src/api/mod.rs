//! The HTTP face of a node (axum): the JSON API for orders (`orders`) and the cluster
//! (`cluster`), the node-to-node routes under `/raft` (`raft_rpc`), strict JSON bodies
//! (`json`), the listener (`server`), and the one error→HTTP mapping (`error`). Writes and
//! linearizable reads are the `service`'s; handlers only call it.

pub mod cluster;
pub mod error;
pub mod json;
pub mod orders;
pub mod raft_rpc;
pub mod server;

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderValue;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::raft::network::{APPEND_PATH, SNAPSHOT_PATH, VOTE_PATH};
use crate::raft::{NodeId, Raft};
use crate::store::OrderReader;
pub use error::ApiError;

pub use crate::wire::LEADER_HEADER;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub id: NodeId,
    pub raft: Raft,
    pub reader: OrderReader,
    /// Writes and linearizable reads (`service`).
    pub service: crate::service::Service,
    /// Client for forwarding membership changes to the leader.
    pub http: reqwest::Client,
    /// How long a request may wait for a leader, a commit or a read index before 503/504.
    pub request_timeout: Duration,
    /// No campaigning while a snapshot from the leader is coming in (see `raft_rpc`).
    pub election_hold: std::sync::Arc<raft_rpc::ElectionHold>,
}

/// All routes of a node.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/orders", post(orders::create).get(orders::list))
        .route("/api/order/create", post(orders::create))
        .route(
            "/api/orders/{id}",
            get(orders::get).patch(orders::set_status),
        )
        .route("/cluster/status", get(cluster::status))
        .route("/cluster/digest", get(cluster::digest))
        .route("/cluster/learners", post(cluster::add_learner))
        .route("/cluster/members", post(cluster::change_members))
        .route("/health", get(cluster::health))
        .layer(DefaultBodyLimit::max(json::MAX_BODY_BYTES))
        // Only the public routes: node-to-node RPCs (heartbeats included) do not need it.
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            tell_leader,
        ));
    // Each node-to-node route with the body limit of its own largest legal request.
    let limited = |limit: usize, route: axum::routing::MethodRouter<AppState>| {
        route.layer(DefaultBodyLimit::max(limit))
    };
    let raft = Router::new()
        .route(
            APPEND_PATH,
            limited(raft_rpc::BODY_LIMIT_APPEND, post(raft_rpc::append)),
        )
        .route(
            VOTE_PATH,
            limited(raft_rpc::BODY_LIMIT_VOTE, post(raft_rpc::vote)),
        )
        .route(
            SNAPSHOT_PATH,
            limited(raft_rpc::BODY_LIMIT_SNAPSHOT, post(raft_rpc::snapshot)),
        )
        .route(
            crate::service::forward::WRITE_PATH,
            limited(raft_rpc::BODY_LIMIT_WRITE, post(raft_rpc::write)),
        )
        .route(
            crate::service::forward::READ_INDEX_PATH,
            limited(raft_rpc::BODY_LIMIT_VOTE, post(raft_rpc::read_index)),
        );
    api.merge(raft)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("method not allowed on this route".into())
        })
        .with_state(state)
}

/// Every API answer names the current leader's address (`x-ordo-leader`), so clients can send
/// their next write straight there.
async fn tell_leader(State(state): State<AppState>, mut resp: Response) -> Response {
    let leader_addr = {
        let m = state.raft.metrics();
        let m = m.borrow();
        m.current_leader.and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| n.addr.clone())
        })
    };
    if let Some(value) = leader_addr.and_then(|a| HeaderValue::from_str(&a).ok()) {
        resp.headers_mut().insert(LEADER_HEADER, value);
    }
    resp
}
