//! The OpenAPI 3.1 description of the public API, served at `/openapi.json` and committed as
//! `docs/openapi.json` (a test keeps the two equal).
//!
//! Built from the code, not written beside it: each handler carries its route, parameters,
//! body and success answers (`#[utoipa::path]`), `api::public_routes` registers handler and
//! description together (so a route cannot be served undocumented), and the schemas are the
//! `wire` types'. What no handler states on its own is added here, in one table: which error
//! statuses each operation can answer (all in the one error body, as `api::error` maps
//! them), the headers every answer carries, and who may call what with `--auth`.

use std::sync::OnceLock;

use utoipa::openapi::header::Header;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoParams, OpenApi as _, PartialSchema as _};

use crate::wire::{ErrorBody, ErrorCode, ErrorDetail};

/// `?consistency=`: how a read is served.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Only describes the query; handlers parse it strictly themselves.
pub struct ConsistencyQuery {
    /// `linearizable` (the default: the answer reflects every write acknowledged before the
    /// request) or `stale` (this node's local state, possibly behind; works without a quorum).
    #[param(pattern = "^(linearizable|stale)$")]
    consistency: Option<String>,
}

/// `GET /api/orders` filters and paging.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ListQueryParams {
    /// The page, from 1, counted from `after` when it is given. Each page before it is
    /// skipped match by match: walk deep listings by `after` instead. With a filter (`status`,
    /// `customer_id`), a page that would skip more than 10,000 matches is a 400
    /// `invalid_query`.
    #[param(minimum = 1, maximum = 4294967295_u64)]
    page: Option<u64>,
    /// Only orders with a higher id: a cursor, as cheap at any depth (pass the last page's
    /// `next_after`; 0, the default, starts at the beginning).
    #[param(minimum = 0, maximum = 9223372036854775807_u64)]
    after: Option<u64>,
    /// Orders per page: 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    per_page: Option<u64>,
    /// Only orders in this status (empty: any).
    #[param(pattern = "^(|pending|paid|shipped|delivered|cancelled)$")]
    status: Option<String>,
    /// Only this customer's orders (empty: any).
    #[param(max_length = 64)]
    customer_id: Option<String>,
}

/// The `{id}` of an order.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct OrderIdPath {
    /// A positive integer, in decimal digits only.
    #[param(minimum = 1)]
    id: u64,
}

/// The `{id}` of a node.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct NodeIdPath {
    /// The node's id (its `ordo serve --id`), in decimal digits only.
    id: u64,
}

/// `GET /api/orders/changes` parameters.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ChangesQuery {
    /// Send the changes after this revision (default: after the newest, i.e. from now on).
    /// To follow the orders without a gap: list them, then watch from the listing's revision.
    #[param(minimum = 0)]
    since: Option<u64>,
    /// Only changes to this customer's orders.
    customer_id: Option<String>,
    /// Only changes that leave an order in this status.
    #[param(pattern = "^(|pending|paid|shipped|delivered|cancelled)$")]
    status: Option<String>,
    /// Milliseconds (0 to 1000, default 0) to gather changes for once caught up: the changes
    /// applied within that time of the last chunk go out together. Fewer, larger writes cost
    /// the node and the consumer less CPU on a busy feed; each event may come up to this
    /// much later.
    #[param(minimum = 0, maximum = 1000)]
    batch_ms: Option<u64>,
}

/// `Last-Event-ID` on a change feed (EventSource sends it when it reconnects).
#[derive(IntoParams)]
#[into_params(parameter_in = Header, names("Last-Event-ID"))]
#[allow(dead_code)]
pub struct LastEventIdHeader(
    /// Resume after this revision (it wins over `since`).
    #[param(pattern = "^[0-9]{1,20}$")]
    Option<String>,
);

/// `Idempotency-Key` on writes.
#[derive(IntoParams)]
#[into_params(parameter_in = Header, names("Idempotency-Key"))]
#[allow(dead_code)]
pub struct IdempotencyKeyHeader(
    /// 1 to 128 printable ASCII characters, no spaces. A write retried with the same key and
    /// body is applied at most once (the first answer is repeated); the same key with another
    /// body is refused with 409 `idempotency_key_reused`.
    #[param(min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")]
    Option<String>,
);

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "ordo",
        description = "A replicated order store. Any node answers any request: writes are \
            forwarded to the Raft leader, reads are linearizable unless `consistency=stale`. \
            Every error is `{\"error\": {\"code\", \"message\", \"field\"?}}`; a client should \
            act on the HTTP status and `code`. Answers name the leader's address in \
            `x-ordo-leader`. See docs/api.md for examples.",
        license(name = "MIT OR Apache-2.0")
    ),
    components(schemas(ErrorBody, ErrorDetail, ErrorCode)),
    tags(
        (name = "orders", description = "Create, read, list and move orders"),
        (name = "cluster", description = "Status, membership, metrics, backups"),
        (name = "users", description = "Users and roles (nodes started with --auth)"),
        (name = "probes", description = "Liveness, readiness, version; never need a token"),
    )
)]
struct BaseDoc;

/// The spec as JSON (built once).
pub fn spec_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut json = spec()
            .to_pretty_json()
            .expect("the OpenAPI document serializes");
        json.push('\n');
        json
    })
}

/// The whole spec: the routes' own descriptions, completed.
pub fn spec() -> OpenApi {
    let mut spec = BaseDoc::openapi().merge_from(super::public_routes().into_openapi());
    spec.info.version = env!("CARGO_PKG_VERSION").to_string();
    let components = spec.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "A user's token (`ordo user add`), needed on nodes started with --auth",
                ))
                .build(),
        ),
    );
    for (path, item) in spec.paths.paths.iter_mut() {
        let ops = [
            ("GET", &mut item.get),
            ("POST", &mut item.post),
            ("PATCH", &mut item.patch),
            ("DELETE", &mut item.delete),
        ];
        for (method, op) in ops {
            if let Some(op) = op {
                complete(path, method, op);
            }
        }
    }
    spec
}

/// The error statuses an operation's own handler can answer besides its successes, by
/// operation id (`complete` adds what the auth check can answer).
fn error_statuses(operation_id: &str) -> &'static [u16] {
    // A JSON body can be malformed (400), too large (413), not JSON (415) or break a limit
    // (422); a path segment can be undecodable (400); a write can find no leader or quorum
    // (503) or time out (504).
    match operation_id {
        "create_order" => &[400, 409, 413, 415, 422, 500, 503, 504],
        "set_order_status" => &[400, 404, 409, 413, 415, 422, 500, 503, 504],
        "get_order" => &[400, 404, 500, 503, 504],
        // 503: the node's subscriber limit (and, with --auth, no quorum for the check).
        "watch_orders" => &[400, 500, 503],
        "list_orders" => &[400, 500, 503, 504],
        "add_learner" | "change_members" => &[400, 413, 415, 422, 500, 503, 504],
        "remove_learner" => &[400, 422, 500, 503, 504],
        "create_user" => &[400, 409, 413, 415, 422, 500, 503, 504],
        "create_role" => &[400, 413, 415, 422, 500, 503, 504],
        // 422: a name that breaks the naming rule; deleting a built-in role.
        "delete_role" | "revoke_user" => &[400, 404, 422, 500, 503, 504],
        "list_users" | "list_roles" => &[500, 503, 504],
        "backup" => &[500, 503, 504],
        "cluster_digest" => &[500],
        _ => &[],
    }
}

/// Operations anyone may call, also on nodes with --auth.
fn is_open(path: &str) -> bool {
    matches!(
        path,
        "/livez" | "/health" | "/readyz" | "/version" | "/openapi.json"
    )
}

fn complete(path: &str, method: &str, op: &mut Operation) {
    let id = op.operation_id.clone().unwrap_or_default();
    let mut statuses = error_statuses(&id).to_vec();
    if !is_open(path) {
        // With --auth: no or a wrong token (401), a role without the permission (403), the
        // users' store unreadable (500); and for a change, the check reads the body first
        // (its own 400 and 413).
        statuses.extend([401, 403, 500]);
        if method != "GET" {
            statuses.extend([400, 413]);
        }
        // Optional: nodes without --auth take requests without a token.
        op.security = Some(vec![
            SecurityRequirement::default(),
            SecurityRequirement::new("bearer", Vec::<String>::new()),
        ]);
    }
    for status in statuses {
        op.responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::T(error_response(status)));
    }
    for response in op.responses.responses.values_mut() {
        if let RefOr::T(response) = response {
            add_common_headers(response);
        }
    }
    op.parameters
        .get_or_insert_with(Vec::new)
        .push(request_id_parameter());
}

fn error_response(status: u16) -> Response {
    let (description, codes): (&str, &[ErrorCode]) = match status {
        400 => (
            "The request is malformed",
            &[
                ErrorCode::MalformedJson,
                ErrorCode::BadRequest,
                ErrorCode::InvalidId,
                ErrorCode::InvalidQuery,
                ErrorCode::InvalidIdempotencyKey,
            ],
        ),
        401 => (
            "No token, or one no user has (nodes with --auth)",
            &[ErrorCode::Unauthorized],
        ),
        403 => (
            "The user's role lacks the permission this route needs",
            &[ErrorCode::Forbidden],
        ),
        404 => ("No such order, user or role", &[ErrorCode::NotFound]),
        409 => (
            "The change conflicts with the current state",
            &[
                ErrorCode::InvalidTransition,
                ErrorCode::VersionConflict,
                ErrorCode::IdempotencyKeyReused,
                ErrorCode::UserExists,
            ],
        ),
        413 => ("The body is larger than 1 MiB", &[ErrorCode::BodyTooLarge]),
        415 => (
            "The body is not sent as application/json",
            &[ErrorCode::UnsupportedMediaType],
        ),
        422 => (
            "A value breaks a limit; `field` names it",
            &[ErrorCode::ValidationFailed],
        ),
        500 => ("A bug or an unreadable store", &[ErrorCode::Internal]),
        503 => (
            "Not now (no leader, no quorum, this node's storage failed, or it is overloaded): \
             retry after Retry-After seconds, or on another node; a write was not applied",
            &[
                ErrorCode::NoLeader,
                ErrorCode::NoQuorum,
                ErrorCode::Unavailable,
                ErrorCode::StorageFailed,
            ],
        ),
        504 => (
            "Timed out. For a write the outcome is unknown: retry it with the same \
             Idempotency-Key",
            &[ErrorCode::Timeout],
        ),
        _ => ("Error", &[]),
    };
    let codes: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
    let mut response = ResponseBuilder::new()
        .description(format!("{description} (code: {})", codes.join(", ")))
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        );
    if status == 503 {
        response = response.header(
            "Retry-After",
            header::<u32>("Seconds to wait before retrying"),
        );
    }
    if status == 401 {
        response = response.header(
            "WWW-Authenticate",
            header::<String>("`Bearer realm=\"ordo\"`"),
        );
    }
    response.build()
}

fn header<T: utoipa::PartialSchema>(description: &str) -> Header {
    let mut header = Header::new(T::schema());
    header.description = Some(description.to_string());
    header
}

fn add_common_headers(response: &mut Response) {
    let headers = &mut response.headers;
    headers.insert(
        crate::wire::VERSION_HEADER.into(),
        header::<String>("The answering node's version and commit"),
    );
    headers.insert(
        "x-request-id".into(),
        header::<String>("The request's id: the caller's X-Request-Id if sane, else a new one"),
    );
    headers.insert(
        crate::wire::LEADER_HEADER.into(),
        header::<String>("HOST:PORT of the current leader, when one is known"),
    );
}

fn request_id_parameter() -> Parameter {
    ParameterBuilder::new()
        .name("X-Request-Id")
        .parameter_in(ParameterIn::Header)
        .required(utoipa::openapi::Required::False)
        .description(Some(
            "An id to follow this request through the nodes' logs (1 to 128 visible ASCII \
             characters; another value is replaced by a new id)",
        ))
        .schema(Some(String::schema()))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_spec_is_the_generated_one() {
        let committed = include_str!("../../docs/openapi.json");
        assert!(
            committed == spec_json(),
            "docs/openapi.json is stale: regenerate it with `cargo run -- openapi > docs/openapi.json`"
        );
    }

    #[test]
    fn every_operation_documents_its_errors_and_an_id() {
        let spec = spec();
        for (path, item) in &spec.paths.paths {
            for op in [&item.get, &item.post, &item.patch, &item.delete]
                .into_iter()
                .flatten()
            {
                let id = op.operation_id.as_deref().unwrap_or_default();
                assert!(!id.is_empty(), "{path}: no operation id");
                let statuses: Vec<&String> = op.responses.responses.keys().collect();
                if !is_open(path) {
                    assert!(
                        statuses.iter().any(|s| *s == "401"),
                        "{path} {id}: 401 missing"
                    );
                }
                if op.request_body.is_some() {
                    for s in ["400", "413", "415", "422"] {
                        assert!(statuses.iter().any(|x| *x == s), "{path} {id}: {s} missing");
                    }
                }
            }
        }
    }
}
