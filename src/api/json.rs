//! The JSON shapes of the HTTP API and the strict body/query extraction behind them.
//!
//! Bodies must be `application/json`, at most `MAX_BODY_BYTES`, and match the shape exactly
//! (unknown fields are refused). Syntax errors are 400 `malformed_json`; wrong types, missing
//! or unknown fields are 422 naming the field (via `serde_path_to_error`).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::order::{LineItem, NewOrder, Order, OrderStatus, ValidationError};

pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A JSON body parsed strictly; see the module comment.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge(MAX_BODY_BYTES)
            } else {
                ApiError::BadRequest(format!("could not read the body: {rejection}"))
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses JSON, telling a syntax error (400) from a shape error naming its field (422).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(de).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::MalformedJson(inner.to_string());
        }
        let path = e.path().to_string();
        let field = if path == "." {
            "body".to_string()
        } else {
            path
        };
        ApiError::Validation(ValidationError::new(field, inner.to_string()))
    })?;
    Ok(value)
}

/// `POST /api/orders` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOrderBody {
    pub customer_id: String,
    pub items: Vec<LineItemJson>,
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LineItemJson {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_cents: u64,
}

impl From<CreateOrderBody> for NewOrder {
    fn from(b: CreateOrderBody) -> NewOrder {
        NewOrder {
            customer_id: b.customer_id,
            items: b
                .items
                .into_iter()
                .map(|i| LineItem {
                    sku: i.sku,
                    quantity: i.quantity,
                    unit_price_cents: i.unit_price_cents,
                })
                .collect(),
            note: b.note,
        }
    }
}

/// `PATCH /api/orders/{id}` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetStatusBody {
    pub status: String,
    #[serde(default)]
    pub expected_version: Option<u64>,
}

impl SetStatusBody {
    pub fn parsed_status(&self) -> Result<OrderStatus, ApiError> {
        OrderStatus::parse(&self.status).ok_or_else(|| {
            ApiError::Validation(ValidationError::new(
                "status",
                format!(
                    "unknown status {:?}: one of pending, paid, shipped, delivered, cancelled",
                    self.status
                ),
            ))
        })
    }
}

/// An order as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OrderJson {
    pub id: u64,
    pub customer_id: String,
    pub items: Vec<LineItemJson>,
    pub total_cents: u64,
    pub status: String,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl From<&Order> for OrderJson {
    fn from(o: &Order) -> OrderJson {
        OrderJson {
            id: o.id,
            customer_id: o.customer_id.clone(),
            items: o
                .items
                .iter()
                .map(|i| LineItemJson {
                    sku: i.sku.clone(),
                    quantity: i.quantity,
                    unit_price_cents: i.unit_price_cents,
                })
                .collect(),
            total_cents: o.total_cents,
            status: o.status.as_str().to_string(),
            version: o.version,
            created_at: rfc3339(o.created_at_ms),
            updated_at: rfc3339(o.updated_at_ms),
            note: o.note.clone(),
        }
    }
}

/// `GET /api/orders` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderListJson {
    pub orders: Vec<OrderJson>,
    pub page: u64,
    pub per_page: u64,
    pub total: u64,
}
