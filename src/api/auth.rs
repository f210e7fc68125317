//! Who is calling, and may they: with `--auth`, every public route but the probes (`/health`,
//! `/livez`, `/readyz`) and `/version` needs `Authorization: Bearer TOKEN` of a user whose
//! role grants the route's permission.
//!
//! The check is linearizable like reads are: the node first waits until it has applied
//! everything committed before the request arrived (the service's read barrier), then looks
//! the token up in its own copy of the users. So once a revocation is acknowledged, no node
//! accepts the token, leader or follower. The one exception is a read that asks for
//! `consistency=stale`: it is checked against the node's local copy as it is, exactly as stale
//! as the data it reads (it must work without a quorum). A write's check runs once its whole
//! body has arrived, right before it is proposed, so a client cannot hold a checked request
//! back (a trickled body) and use the token after its revocation; a write checked before the
//! revocation was acknowledged may still commit within its request timeout, as any write
//! concurrent with the revocation. A forwarded write is checked on the node it reached; the
//! leader trusts its peers (mutual TLS; without TLS the node-to-node routes are open, and
//! auth protects nothing from whoever can reach them: see docs/security.md).
//!
//! Missing or malformed credentials and unknown tokens are 401 with `WWW-Authenticate`; a
//! user whose role lacks the permission gets 403. Tokens never reach the logs.

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;
use crate::order::{same_hash, token_hash, Permission, Role, User};
use crate::store::{OrderReader, StoreError};

/// A node's authentication settings (`--auth`).
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// SHA-256 of the bootstrap token (`--bootstrap-token-file`): an admin credential that
    /// works only while no user exists, to create the first one.
    pub bootstrap_hash: Option<[u8; 32]>,
}

/// Who made a request (a request extension, for the audit log).
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: String,
    /// The check waited for the read barrier (after the request arrived): a read served
    /// after it is linearizable without a second round.
    pub barrier_passed: bool,
    /// How a request that lasts (a change-feed stream) looks its caller up again.
    pub access: AccessCheck,
}

/// A caller's token and the permission its route needs, to be checked again against the
/// node's local copy of the users whenever they change: a change-feed stream outlives its
/// first check, and must end when its token is revoked or its role loses the permission.
#[derive(Clone)]
pub struct AccessCheck {
    reader: OrderReader,
    bootstrap: Option<[u8; 32]>,
    hash: [u8; 32],
    permission: Permission,
    /// The users' generation, subscribed before the first lookup.
    users: tokio::sync::watch::Receiver<u64>,
    /// The generation the last lookup saw (read before it).
    looked_at: u64,
}

/// What a second look at a caller found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Allowed,
    /// No user has the token any more (401 on a new request).
    UnknownToken,
    /// The user's role no longer grants the permission (403 on a new request).
    Forbidden,
}

/// Second looks at callers running at once, per process (a node).
static LOOKS_AGAIN: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

impl std::fmt::Debug for AccessCheck {
    // Not the token's hash: nothing derived from a token reaches the logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessCheck({})", self.permission.as_str())
    }
}

impl AccessCheck {
    /// Whether the token still names a user whose role grants the permission, in this
    /// node's local copy of the users (as stale as the node: no barrier, so that a stream
    /// does not cost its cluster a round per look). Looks only if the users changed since
    /// the last look; no store read otherwise.
    pub async fn look_again(&mut self) -> Result<Access, ApiError> {
        // By value, not `has_changed`: `users_changed` has marked the change seen.
        let generation = *self.users.borrow_and_update();
        if generation == self.looked_at {
            return Ok(Access::Allowed);
        }
        self.looked_at = generation;
        // Every stream looks at once after a change to the users: a few at a time, so that a
        // node's thousand streams do not take the whole blocking pool. The turn is held by the
        // blocking read itself: a stream dropped while its read waits (on a snapshot install)
        // must not hand the turn to another one.
        let turn = LOOKS_AGAIN.acquire().await;
        let (reader, bootstrap, hash, permission) = (
            self.reader.clone(),
            self.bootstrap,
            self.hash,
            self.permission,
        );
        let found = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            find_user(&reader, bootstrap, &hash, permission)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
        Ok(match found {
            None => Access::UnknownToken,
            Some((_, false)) => Access::Forbidden,
            Some((_, true)) => Access::Allowed,
        })
    }

    /// A check of the token with this hash for `permission`, as the middleware would make.
    #[cfg(test)]
    pub(crate) fn for_tests(reader: OrderReader, hash: [u8; 32], permission: Permission) -> Self {
        let users = reader.watch_users();
        let looked_at = *users.borrow();
        AccessCheck {
            reader,
            bootstrap: None,
            hash,
            permission,
            looked_at,
            users,
        }
    }

    /// Returns once the users or roles changed since the last look (never, if the store is
    /// closing).
    pub async fn users_changed(&mut self) {
        if self.users.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The user whose token has this hash (or the bootstrap admin while no user exists), and
/// whether its role grants `permission` (a custom role is looked up).
fn find_user(
    reader: &OrderReader,
    bootstrap: Option<[u8; 32]>,
    hash: &[u8; 32],
    permission: Permission,
) -> Result<Option<(User, bool)>, StoreError> {
    let user = match reader.user_by_token(hash)? {
        Some(user) if same_hash(&user.token_hash, hash) => Some(user),
        Some(_) => None,
        None if !reader.users_begun()? && bootstrap.is_some_and(|b| same_hash(&b, hash)) => {
            Some(User {
                name: "(bootstrap)".into(),
                role: Role::Admin.as_str().into(),
                token_hash: *hash,
            })
        }
        None => None,
    };
    let Some(user) = user else {
        return Ok(None);
    };
    let allowed = match Role::parse(&user.role) {
        Some(builtin) => builtin.allows(permission),
        None => reader
            .role(&user.role)?
            .is_some_and(|custom| custom.allows(permission)),
    };
    Ok(Some((user, allowed)))
}

/// The longest token accepted (ordo's are 69 characters).
const MAX_TOKEN_LEN: usize = 512;

/// The permission a public route needs; `None` for the probes and `/version`. Only matched
/// routes get here (the check is a route layer); a route not listed needs `ClusterAdmin`, so
/// one added without a line here is closed, not open.
fn permission_for(method: &Method, path: &str) -> Option<Permission> {
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    if under("/api/orders") || path == "/api/order/create" {
        return Some(if is_read(method) && path != "/api/order/create" {
            Permission::OrdersRead
        } else {
            Permission::OrdersWrite
        });
    }
    match path {
        "/health" | "/livez" | "/readyz" | "/version" | "/openapi.json" => None,
        "/cluster/status" | "/cluster/digest" | "/metrics" => Some(Permission::ClusterRead),
        _ if under("/auth/users") || under("/auth/roles") => Some(Permission::UsersAdmin),
        _ => Some(Permission::ClusterAdmin),
    }
}

/// The token of the one `Authorization: Bearer` header, or why there is none.
fn bearer_token(req: &Request) -> Result<String, ApiError> {
    let unauthorized = |why: &str| ApiError::Unauthorized(why.to_string());
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let value = values
        .next()
        .ok_or_else(|| unauthorized("this node requires Authorization: Bearer TOKEN"))?;
    if values.next().is_some() {
        return Err(unauthorized("give one Authorization header, not several"));
    }
    let value = value
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not printable ASCII"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer TOKEN`"))?;
    let token = token.trim();
    let well_formed = scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b));
    if !well_formed {
        return Err(unauthorized(
            "the Authorization header must be `Bearer TOKEN` with a token ordo issued",
        ));
    }
    Ok(token.to_string())
}

/// A request checked against the local copy of the users, without a barrier: a read of
/// orders that asks for the local state as it is, and the node's own view of itself
/// (`/cluster/status`, `/cluster/digest`, `/metrics`), which must answer exactly when the
/// cluster has no leader or quorum (to alert on it, or to recover from it).
fn is_stale_read(req: &Request) -> bool {
    let path = req.uri().path();
    is_read(req.method())
        && (matches!(path, "/cluster/status" | "/cluster/digest" | "/metrics")
            || path.starts_with("/api/orders") && asks_for_stale(req.uri().query()))
}

/// GET, or HEAD, which axum serves with the GET handler.
fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Whether a query asks for `consistency=stale`, decoded as the handlers decode it (so
/// `consistency=%73tale` is stale too). Given twice, or undecodable, the handler refuses the
/// query with 400 whatever this says.
fn asks_for_stale(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q).is_ok_and(|pairs| {
            pairs
                .iter()
                .any(|(k, v)| k == "consistency" && v == "stale")
        })
    })
}

async fn authenticate(
    state: &AppState,
    settings: &AuthSettings,
    token: Result<String, ApiError>,
    stale_read: bool,
    permission: Permission,
) -> Result<Caller, ApiError> {
    let token = token?;
    if !stale_read {
        state.service.linearizable_barrier().await?;
    }
    // Subscribed before the lookup: a change after it is then seen by `look_again`.
    let users = state.reader.watch_users();
    let looked_at = *users.borrow();
    let access = AccessCheck {
        reader: state.reader.clone(),
        bootstrap: settings.bootstrap_hash,
        hash: token_hash(&token),
        permission,
        looked_at,
        users,
    };
    let found = {
        let access = access.clone();
        tokio::task::spawn_blocking(move || {
            find_user(&access.reader, access.bootstrap, &access.hash, permission)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??
    };
    let Some((user, allowed)) = found else {
        return Err(ApiError::Unauthorized("unknown or revoked token".into()));
    };
    let caller = Caller {
        name: user.name,
        role: user.role,
        barrier_passed: !stale_read,
        access,
    };
    if !allowed {
        return Err(ApiError::Forbidden(format!(
            "user {:?} (role {}) lacks the permission {}",
            caller.name,
            caller.role,
            permission.as_str()
        )));
    }
    Ok(caller)
}

/// The middleware: passes the request on with its `Caller`, or answers 401/403 (or 503 when
/// the check cannot be made linearizable for want of a quorum).
pub async fn require(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(settings) = state.auth.clone() else {
        return next.run(req).await;
    };
    let Some(permission) = permission_for(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    // Read off the request before waiting: a request (its body) is not shared between threads.
    let (token, stale_read) = (bearer_token(&req), is_stale_read(&req));
    // No usable credentials: refused before the body is read, so that an anonymous caller
    // cannot make the node buffer a body (or hold a connection for its deadline) first.
    if let Err(e) = &token {
        return e.clone().into_response();
    }
    // A write is checked once its body is here (see the module comment).
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let (parts, body) = req.into_parts();
        let limit = super::json::MAX_BODY_BYTES;
        let bytes = match axum::body::to_bytes(body, limit).await {
            Ok(bytes) => bytes,
            Err(e) => {
                // axum reports the limit as http-body-util's LengthLimitError, by its text.
                let mut cause: Option<&dyn std::error::Error> = Some(&e);
                let mut too_large = false;
                while let Some(c) = cause {
                    too_large |= c.to_string().contains("length limit exceeded");
                    cause = c.source();
                }
                return if too_large {
                    ApiError::BodyTooLarge(limit).into_response()
                } else {
                    ApiError::BadRequest(format!("reading the request body: {e}")).into_response()
                };
            }
        };
        req = Request::from_parts(parts, axum::body::Body::from(bytes));
    }
    match authenticate(&state, &settings, token, stale_read, permission).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_public_route_needs_its_permission() {
        use Permission::*;
        let cases = [
            (Method::GET, "/api/orders", Some(OrdersRead)),
            (Method::GET, "/api/orders/7", Some(OrdersRead)),
            (Method::POST, "/api/orders", Some(OrdersWrite)),
            (Method::POST, "/api/order/create", Some(OrdersWrite)),
            (Method::PATCH, "/api/orders/7", Some(OrdersWrite)),
            (Method::GET, "/cluster/status", Some(ClusterRead)),
            (Method::GET, "/cluster/digest", Some(ClusterRead)),
            (Method::POST, "/cluster/learners", Some(ClusterAdmin)),
            (Method::POST, "/cluster/members", Some(ClusterAdmin)),
            (Method::GET, "/auth/users", Some(UsersAdmin)),
            (Method::POST, "/auth/users", Some(UsersAdmin)),
            (Method::DELETE, "/auth/users/bob", Some(UsersAdmin)),
            (Method::GET, "/health", None),
            (Method::GET, "/livez", None),
            (Method::GET, "/readyz", None),
            (Method::GET, "/version", None),
            (Method::GET, "/metrics", Some(ClusterRead)),
            (Method::GET, "/cluster/backup", Some(ClusterAdmin)),
            (Method::GET, "/some/new/route", Some(ClusterAdmin)),
        ];
        for (method, path, expected) in cases {
            assert_eq!(permission_for(&method, path), expected, "{method} {path}");
        }
    }
}
