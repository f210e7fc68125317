//! The HTTP face of a node (axum): the JSON API for orders (`orders`), the cluster
//! (`cluster`) and users and roles (`users`), who may call what (`auth`, with `--auth`),
//! strict JSON bodies (`json`), the listener (`server`, TLS included), and the one error→HTTP
//! mapping (`error`). Handlers parse and check the request, call the `service`, and shape its
//! answer; the node-to-node routes are `rpc`'s and are merged in here, beside the public ones
//! (or served on their own port).

pub mod access;
pub mod auth;
pub mod changes;
pub mod cluster;
pub mod error;
mod event_ring;
pub mod json;
pub mod openapi;
pub mod orders;
pub mod server;
pub mod users;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderValue;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::service::Service;
use crate::store::OrderReader;
pub use error::ApiError;

pub use crate::wire::{LEADER_HEADER, VERSION_HEADER};

/// What every handler can reach: one `Arc` to clone (axum clones the state per extractor).
#[derive(Clone)]
pub struct AppState(std::sync::Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> AppState {
        AppState(std::sync::Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// What an `AppState` holds.
pub struct AppParts {
    /// Writes, linearizable reads, membership and the cluster's status.
    pub service: Service,
    /// The local state machine, read after the service's barrier (or stale on request).
    pub reader: OrderReader,
    /// With `--auth`: who may call which route (`auth`).
    pub auth: Option<std::sync::Arc<auth::AuthSettings>>,
    /// This node's snapshot files, which a backup streams.
    pub snapshots: crate::store::SnapshotFiles,
    /// The change feed's settings and subscribers.
    pub feed: std::sync::Arc<changes::ChangeFeed>,
    /// Slots for backups streaming at once (`cluster::MAX_BACKUP_STREAMS`).
    pub backups: std::sync::Arc<tokio::sync::Semaphore>,
}

/// The documented routes: each handler with its OpenAPI description (`openapi`).
fn public_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(orders::create, orders::list))
        .routes(routes!(changes::changes))
        .routes(routes!(orders::get, orders::set_status))
        .routes(routes!(cluster::status))
        .routes(routes!(cluster::digest))
        .routes(routes!(cluster::add_learner))
        .routes(routes!(cluster::remove_learner))
        .routes(routes!(cluster::change_members))
        .routes(routes!(cluster::backup))
        .routes(routes!(users::create, users::list))
        .routes(routes!(users::revoke))
        .routes(routes!(users::create_role, users::list_roles))
        .routes(routes!(users::delete_role))
        .routes(routes!(cluster::health))
        .routes(routes!(cluster::live))
        .routes(routes!(cluster::ready))
        .routes(routes!(cluster::version))
        .routes(routes!(cluster::metrics))
}

/// `/openapi.json`: the spec of this node's API.
async fn openapi_json() -> Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi::spec_json(),
    )
        .into_response()
}

/// The public API, with `peer_routes` (the `rpc` router) beside it when both share a port.
pub fn router(state: AppState, peer_routes: Option<Router>) -> Router {
    let (documented, _) = public_routes().split_for_parts();
    let api = documented
        // The first name of the create route, kept for old clients; not in the spec.
        .route("/api/order/create", post(orders::create))
        .route("/openapi.json", get(openapi_json))
        .layer(DefaultBodyLimit::max(json::MAX_BODY_BYTES))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        // Only the public routes: node-to-node RPCs (heartbeats included) do not need it.
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            tell_leader,
        ))
        .with_state(state);
    with_fallbacks(match peer_routes {
        Some(peer_routes) => api.merge(peer_routes),
        None => api,
    })
}

/// The node-to-node routes alone, for a peer port.
pub fn peer_only(peer_routes: Router) -> Router {
    with_fallbacks(peer_routes)
}

/// Unknown routes and methods answer the JSON 404 / 405; every request, those included, gets
/// a request id, a metric and (if enabled) an access log line (`access`).
fn with_fallbacks(routes: Router) -> Router {
    routes
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("method not allowed on this route".into())
        })
        .layer(axum::middleware::from_fn(access::observe))
}

/// Every API answer names the current leader's address (`x-ordo-leader`), so clients can send
/// their next write straight there.
async fn tell_leader(State(state): State<AppState>, mut resp: Response) -> Response {
    let leader_addr = state.service.leader_addr();
    if let Some(value) = leader_addr.and_then(|a| HeaderValue::from_str(&a).ok()) {
        resp.headers_mut().insert(LEADER_HEADER, value);
    }
    resp
}
