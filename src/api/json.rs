//! Strict extraction of JSON bodies (the shapes themselves are in `wire`) and of path
//! segments.
//!
//! Bodies must be `application/json`, at most `MAX_BODY_BYTES`, and match the shape exactly
//! (unknown fields are refused). Syntax errors are 400 `malformed_json`; wrong types, missing
//! or unknown fields are 422 naming the field (via `serde_path_to_error`).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::order::ValidationError;

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

/// A non-negative integer in decimal digits only (`parse` alone would take a leading `+`):
/// ids in paths, revisions in queries and headers.
pub(super) fn decimal_u64(raw: &str) -> Option<u64> {
    if raw.bytes().all(|b| b.is_ascii_digit()) {
        raw.parse().ok()
    } else {
        None
    }
}

/// The one `{id}` or `{name}` segment of a route's path, as text. axum's own `Path` answers
/// a segment that is not UTF-8 once percent-decoded (`%FF`) in plain text; this answers the
/// JSON 400 every other bad request gets.
pub struct PathSegment(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathSegment {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(segment)) => Ok(PathSegment(segment)),
            Err(e) => Err(ApiError::BadRequest(format!(
                "invalid path: {}",
                e.body_text()
            ))),
        }
    }
}
