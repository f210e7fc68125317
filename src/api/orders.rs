//! The order routes: create, get, list, change status. Writes go through the service; reads are
//! linearizable unless `?consistency=stale` asks for the local state as it is.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::auth::Caller;
use super::error::ApiError;
use super::json::{JsonBody, PathSegment};
use super::openapi::{ConsistencyQuery, IdempotencyKeyHeader, ListQueryParams, OrderIdPath};
use super::AppState;
use crate::order::{
    validate_idempotency_key, NewOrder, OrderOp, OrderStatus, MAX_CUSTOMER_ID_CHARS,
};
use crate::rpc::WriteRequest;
use crate::store::{OrderFilter, PageStart};
use crate::wire::{CreateOrderBody, OrderJson, OrderListJson, SetStatusBody};

pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
const DEFAULT_PER_PAGE: u64 = 20;
const MAX_PER_PAGE: u64 = 100;

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    // Two keys would leave the client unsure which one a retry must repeat.
    if values.next().is_some() {
        return Err(ApiError::InvalidIdempotencyKey(
            "give one Idempotency-Key header, not several".into(),
        ));
    }
    let key = value
        .to_str()
        .map_err(|_| ApiError::InvalidIdempotencyKey("not printable ASCII".into()))?;
    validate_idempotency_key(key).map_err(|e| ApiError::InvalidIdempotencyKey(e.message))?;
    Ok(Some(key.to_string()))
}

fn parse_id(raw: &str) -> Result<u64, ApiError> {
    super::json::decimal_u64(raw)
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::InvalidId(raw.to_string()))
}

/// Query parameters, parsed strictly: unknown names and repeated names are refused.
pub(super) fn parse_query(
    raw: Option<String>,
    allowed: &[&str],
) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::InvalidQuery(e.to_string()))?;
    for (i, (name, _)) in pairs.iter().enumerate() {
        if !allowed.contains(&name.as_str()) {
            return Err(ApiError::InvalidQuery(format!(
                "unknown parameter {name:?}; allowed: {}",
                allowed.join(", ")
            )));
        }
        if pairs[..i].iter().any(|(n, _)| n == name) {
            return Err(ApiError::InvalidQuery(format!(
                "parameter {name:?} given twice"
            )));
        }
    }
    Ok(pairs)
}

pub(super) fn query_value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Makes the local state machine safe to read, as the `consistency` parameter asks: for a
/// linearizable read, one barrier after the request arrived (the auth check's, if it made one).
async fn read_barrier(
    state: &AppState,
    pairs: &[(String, String)],
    caller: Option<Extension<Caller>>,
) -> Result<(), ApiError> {
    let passed = caller.is_some_and(|c| c.barrier_passed);
    match query_value(pairs, "consistency") {
        None | Some("linearizable") if passed => Ok(()),
        None | Some("linearizable") => state
            .service
            .linearizable_barrier()
            .await
            .map_err(ApiError::from),
        Some("stale") => Ok(()),
        Some(other) => Err(ApiError::InvalidQuery(format!(
            "consistency must be linearizable or stale, got {other:?}"
        ))),
    }
}

fn order_created(order: OrderJson, replayed: bool) -> Response {
    let status = if replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let location = format!("/api/orders/{}", order.id);
    (status, [(header::LOCATION, location)], Json(order)).into_response()
}

/// Create an order. With an `Idempotency-Key` seen before (same body), the first create's
/// order is answered again with 200 instead of 201: a retry never makes a second order.
#[utoipa::path(
    post, path = "/api/orders", tag = "orders", operation_id = "create_order",
    params(IdempotencyKeyHeader),
    request_body = CreateOrderBody,
    responses(
        (status = 201, description = "Created", body = OrderJson,
         headers(("Location" = String, description = "/api/orders/{id}"))),
        (status = 200, description = "This Idempotency-Key created an order before: that order",
         body = OrderJson, headers(("Location" = String, description = "/api/orders/{id}"))),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateOrderBody>,
) -> Result<Response, ApiError> {
    let idempotency_key = idempotency_key(&headers)?;
    let new: NewOrder = body.into();
    let outcome = state
        .service
        .submit_write(WriteRequest {
            op: OrderOp::Create(new),
            idempotency_key,
        })
        .await?;
    let (replayed, revision) = (outcome.replayed, outcome.revision);
    let order = outcome.order().map_err(ApiError::Rejected)?;
    Ok(order_created(
        OrderJson::with_revision(&order, revision),
        replayed,
    ))
}

/// One order, linearizable unless `consistency=stale`.
#[utoipa::path(
    get, path = "/api/orders/{id}", tag = "orders", operation_id = "get_order",
    params(OrderIdPath, ConsistencyQuery),
    responses((status = 200, description = "The order", body = OrderJson))
)]
pub async fn get(
    State(state): State<AppState>,
    PathSegment(raw_id): PathSegment,
    RawQuery(query): RawQuery,
    caller: Option<Extension<Caller>>,
) -> Result<Json<OrderJson>, ApiError> {
    let id = parse_id(&raw_id)?;
    let pairs = parse_query(query, &["consistency"])?;
    read_barrier(&state, &pairs, caller).await?;
    // The read lock is held only while a snapshot loads; then wait for it off the runtime.
    let found = match state.reader.try_get(id) {
        Some(found) => found?,
        None => {
            let reader = state.reader.clone();
            tokio::task::spawn_blocking(move || reader.get(id))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))??
        }
    };
    match found {
        Some((order, revision)) => Ok(Json(OrderJson::with_revision(&order, revision))),
        None => Err(ApiError::NotFound(format!("order {id} not found"))),
    }
}

fn parse_positive(
    pairs: &[(String, String)],
    name: &str,
    default: u64,
    max: u64,
) -> Result<u64, ApiError> {
    Ok(parse_within(pairs, name, 1, max)?.unwrap_or(default))
}

/// A query parameter that must be an integer from `min` to `max`, if given.
fn parse_within(
    pairs: &[(String, String)],
    name: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, ApiError> {
    match query_value(pairs, name) {
        None => Ok(None),
        Some(raw) => match raw.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::InvalidQuery(format!(
                "{name} must be an integer from {min} to {max}, got {raw:?}"
            ))),
        },
    }
}

/// The most matches a numbered page of a filtered listing skips. Each one is an index entry
/// read while the state machine's install lock is held for reading: without a bound, one
/// request for page 4294967295 walked the whole index (and held a snapshot install back for
/// as long). A cursor (`after`) reaches any depth at the cost of one page.
pub const MAX_FILTERED_SKIP: u64 = 10_000;

/// Orders by id, a page at a time, optionally filtered by status and customer. A page starts
/// after an order id (`after`, a cursor: pass the last answer's `next_after`) and/or at a page
/// number (`page`, counted from the cursor).
#[utoipa::path(
    get, path = "/api/orders", tag = "orders", operation_id = "list_orders",
    params(ListQueryParams, ConsistencyQuery),
    responses((status = 200, description = "A page of orders", body = OrderListJson))
)]
pub async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    caller: Option<Extension<Caller>>,
) -> Result<Json<OrderListJson>, ApiError> {
    let pairs = parse_query(
        query,
        &[
            "page",
            "after",
            "per_page",
            "status",
            "customer_id",
            "consistency",
        ],
    )?;
    let start = PageStart {
        // Ids are int64 in the spec (as JSON numbers go); none is ever that high.
        after: parse_within(&pairs, "after", 0, i64::MAX as u64)?.unwrap_or(0),
        page: parse_positive(&pairs, "page", 1, u32::MAX as u64)?,
    };
    let per_page = parse_positive(&pairs, "per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE)?;
    let status = match query_value(&pairs, "status") {
        None | Some("") => None,
        Some(s) => Some(
            OrderStatus::parse(s)
                .ok_or_else(|| ApiError::InvalidQuery(format!("unknown status {s:?}")))?,
        ),
    };
    let customer_id = query_value(&pairs, "customer_id")
        .filter(|c| !c.is_empty())
        .map(String::from);
    if let Some(c) = &customer_id {
        let chars = c.chars().count();
        if chars > MAX_CUSTOMER_ID_CHARS {
            return Err(ApiError::InvalidQuery(format!(
                "customer_id is at most {MAX_CUSTOMER_ID_CHARS} characters, got {chars}"
            )));
        }
    }
    let skipped = (start.page - 1).saturating_mul(per_page);
    if (status.is_some() || customer_id.is_some()) && skipped > MAX_FILTERED_SKIP {
        return Err(ApiError::InvalidQuery(format!(
            "page {} of a filtered listing would skip {skipped} matches, and a page skips at \
             most {MAX_FILTERED_SKIP}: walk deep listings by cursor (after=the last page's \
             next_after)",
            start.page
        )));
    }
    read_barrier(&state, &pairs, caller).await?;
    // A listing reads up to a page of orders, and a numbered filtered page walks the index
    // keys before it: off the runtime threads that carry Raft traffic.
    let reader = state.reader.clone();
    let filter = OrderFilter {
        status,
        customer_id,
    };
    let found = tokio::task::spawn_blocking(move || reader.list(&filter, start, per_page))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(Json(OrderListJson {
        orders: found
            .orders
            .iter()
            .zip(&found.revisions)
            .map(|(o, r)| OrderJson::with_revision(o, *r))
            .collect(),
        page: start.page,
        per_page,
        total: found.total,
        revision: Some(found.revision),
        next_after: found.next_after,
    }))
}

/// Move an order to a new status (optionally only at an expected version).
#[utoipa::path(
    patch, path = "/api/orders/{id}", tag = "orders", operation_id = "set_order_status",
    params(OrderIdPath, IdempotencyKeyHeader),
    request_body = SetStatusBody,
    responses((status = 200, description = "The order after the change", body = OrderJson))
)]
pub async fn set_status(
    State(state): State<AppState>,
    PathSegment(raw_id): PathSegment,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SetStatusBody>,
) -> Result<Json<OrderJson>, ApiError> {
    let id = parse_id(&raw_id)?;
    let idempotency_key = idempotency_key(&headers)?;
    let status = body.parsed_status().map_err(ApiError::Validation)?;
    let op = OrderOp::SetStatus {
        id,
        status,
        expected_version: body.expected_version,
    };
    let outcome = state
        .service
        .submit_write(WriteRequest {
            op,
            idempotency_key,
        })
        .await?;
    let revision = outcome.revision;
    let order = outcome.order().map_err(ApiError::Rejected)?;
    Ok(Json(OrderJson::with_revision(&order, revision)))
}
