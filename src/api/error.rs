//! The one mapping from what can go wrong to an HTTP answer: `ApiError` → status, a snake_case
//! code and a human message, as `{"error": {"code", "message"}}`. Handlers return `ApiError`
//! and never build error responses themselves.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::order::{Rejection, ValidationError};
use crate::service::ServiceError;
use crate::store::StoreError;
use crate::wire::ErrorCode;

/// Everything a request can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ApiError {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid order id {0:?}: ids are positive integers")]
    InvalidId(String),
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("invalid Idempotency-Key: {0}")]
    InvalidIdempotencyKey(String),
    #[error("request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("{0}")]
    Validation(ValidationError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// No credentials, or ones no user has (401, with `WWW-Authenticate`).
    #[error("{0}")]
    Unauthorized(String),
    /// A known user without the permission the route needs.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Rejected(Rejection),
    #[error("no leader is known; retry later")]
    NoLeader,
    #[error("the cluster has no quorum; retry later")]
    NoQuorum,
    /// A write was sent or proposed and its fate is unknown (504 `timeout`, with the advice
    /// that makes a retry safe).
    #[error(
        "{0}; the write may or may not have been applied, retry with the same Idempotency-Key"
    )]
    OutcomeUnknown(String),
    /// Anything else that ran out of time (a membership change, a learner catching up, a
    /// node-to-node call): 504 `timeout`, without write advice.
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The node's storage failed (503 `storage_failed`): send the request to another node.
    #[error("storage failed on this node: {0}")]
    StorageFailed(String),
    /// A change feed asked from a revision older than the node's change log (410).
    #[error(
        "changes after revision {since} are no longer held (the oldest is {oldest}): list the \
         orders again and watch from the revision the listing gives"
    )]
    RevisionGone { since: u64, oldest: u64 },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            MalformedJson(_)
            | BadRequest(_)
            | InvalidId(_)
            | InvalidQuery(_)
            | InvalidIdempotencyKey(_) => StatusCode::BAD_REQUEST,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            NotFound(_) => StatusCode::NOT_FOUND,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Forbidden(_) => StatusCode::FORBIDDEN,
            Rejected(
                Rejection::NotFound(_) | Rejection::NoSuchUser(_) | Rejection::NoSuchRole(_),
            ) => StatusCode::NOT_FOUND,
            Rejected(Rejection::Invalid(_)) => StatusCode::UNPROCESSABLE_ENTITY,
            Rejected(_) => StatusCode::CONFLICT,
            NoLeader | NoQuorum | Unavailable(_) | StorageFailed(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            OutcomeUnknown(_) | Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            RevisionGone { .. } => StatusCode::GONE,
        }
    }

    pub fn code(&self) -> ErrorCode {
        use ApiError::*;
        match self {
            MalformedJson(_) => ErrorCode::MalformedJson,
            BadRequest(_) => ErrorCode::BadRequest,
            InvalidId(_) => ErrorCode::InvalidId,
            InvalidQuery(_) => ErrorCode::InvalidQuery,
            InvalidIdempotencyKey(_) => ErrorCode::InvalidIdempotencyKey,
            UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            BodyTooLarge(_) => ErrorCode::BodyTooLarge,
            Validation(_) | Rejected(Rejection::Invalid(_)) => ErrorCode::ValidationFailed,
            NotFound(_)
            | Rejected(
                Rejection::NotFound(_) | Rejection::NoSuchUser(_) | Rejection::NoSuchRole(_),
            ) => ErrorCode::NotFound,
            MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            Unauthorized(_) => ErrorCode::Unauthorized,
            Forbidden(_) => ErrorCode::Forbidden,
            Rejected(Rejection::UserExists(_)) => ErrorCode::UserExists,
            Rejected(Rejection::InvalidTransition { .. }) => ErrorCode::InvalidTransition,
            Rejected(Rejection::VersionConflict { .. }) => ErrorCode::VersionConflict,
            Rejected(Rejection::IdempotencyKeyReused) => ErrorCode::IdempotencyKeyReused,
            NoLeader => ErrorCode::NoLeader,
            NoQuorum => ErrorCode::NoQuorum,
            Unavailable(_) => ErrorCode::Unavailable,
            OutcomeUnknown(_) | Timeout(_) => ErrorCode::Timeout,
            Internal(_) => ErrorCode::Internal,
            StorageFailed(_) => ErrorCode::StorageFailed,
            RevisionGone { .. } => ErrorCode::RevisionGone,
        }
    }

    /// The field a validation error names, if any.
    fn field(&self) -> Option<&str> {
        match self {
            ApiError::Validation(v) | ApiError::Rejected(Rejection::Invalid(v)) => Some(&v.field),
            _ => None,
        }
    }
}

/// The service's errors, as HTTP.
impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::NoLeader => ApiError::NoLeader,
            ServiceError::NoQuorum => ApiError::NoQuorum,
            ServiceError::Unavailable(m) => ApiError::Unavailable(m),
            ServiceError::OutcomeUnknown(m) => ApiError::OutcomeUnknown(m),
            ServiceError::Timeout(m) => ApiError::Timeout(m),
            ServiceError::Invalid(v) => ApiError::Validation(v),
            ServiceError::Internal(m) => ApiError::Internal(m),
            ServiceError::StorageFailed(m) => ApiError::StorageFailed(m),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(code = self.code().as_str(), error = %self, "request failed");
        }
        let body = crate::wire::ErrorBody {
            error: crate::wire::ErrorDetail {
                code: self.code().as_str().to_string(),
                message: self.to_string(),
                field: self.field().map(String::from),
                oldest_revision: match self {
                    ApiError::RevisionGone { oldest, .. } => Some(oldest),
                    _ => None,
                },
            },
        };
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body is left unread, so this connection cannot carry another
            // request: say so, or a keep-alive client reuses it and its next request fails.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ordo\""),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both are 504 `timeout` on the wire; only a write whose fate is unknown carries the
    /// advice to retry it with its key.
    #[test]
    fn only_an_unknown_write_outcome_carries_write_advice() {
        let unknown = ApiError::OutcomeUnknown("write was not committed in time".into());
        let other = ApiError::Timeout("the learner did not catch up in time".into());
        for e in [&unknown, &other] {
            assert_eq!(
                (e.status(), e.code()),
                (StatusCode::GATEWAY_TIMEOUT, ErrorCode::Timeout)
            );
        }
        assert!(unknown.to_string().contains("Idempotency-Key"));
        assert!(!other.to_string().contains("Idempotency-Key"));
    }
}
