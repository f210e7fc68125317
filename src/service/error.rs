//! Why the service could not do what was asked, and how that crosses the node-to-node
//! protocol: a leader's `ServiceError` travels as an `rpc::RpcError` and becomes a
//! `ServiceError` again on the node that forwarded the request. `api` maps it to HTTP in one
//! place.

use crate::order::ValidationError;
use crate::rpc::{LeaderAnswer, RpcError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("no leader is known; retry later")]
    NoLeader,
    #[error("the cluster has no quorum; retry later")]
    NoQuorum,
    #[error("{0}")]
    Unavailable(String),
    /// A write was sent or proposed and its fate is unknown.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// Anything else that ran out of time.
    #[error("{0}")]
    Timeout(String),
    /// The request breaks a rule (a field, a membership change openraft refuses).
    #[error("{0}")]
    Invalid(ValidationError),
    #[error("{0}")]
    Internal(String),
    /// This node's (or the leader's) log or state store failed: disk full, an I/O error.
    /// Its Raft core has stopped; the node exits so that a supervisor restarts it.
    #[error("{0}")]
    StorageFailed(String),
}

/// What a leader answers inside this node (`proposer`, `read_index`): the protocol's answer
/// shape with the service's error.
pub type Answer<T> = LeaderAnswer<T, ServiceError>;

impl From<RpcError> for ServiceError {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::NoLeader => ServiceError::NoLeader,
            RpcError::NoQuorum => ServiceError::NoQuorum,
            RpcError::Unavailable(m) => ServiceError::Unavailable(m),
            RpcError::OutcomeUnknown(m) => ServiceError::OutcomeUnknown(m),
            RpcError::Timeout(m) => ServiceError::Timeout(m),
            RpcError::Invalid(v) => ServiceError::Invalid(v),
            RpcError::Internal(m) => ServiceError::Internal(m),
            RpcError::StorageFailed(m) => ServiceError::StorageFailed(m),
        }
    }
}

impl From<ServiceError> for RpcError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::NoLeader => RpcError::NoLeader,
            ServiceError::NoQuorum => RpcError::NoQuorum,
            ServiceError::Unavailable(m) => RpcError::Unavailable(m),
            ServiceError::OutcomeUnknown(m) => RpcError::OutcomeUnknown(m),
            ServiceError::Timeout(m) => RpcError::Timeout(m),
            ServiceError::Invalid(v) => RpcError::Invalid(v),
            ServiceError::Internal(m) => RpcError::Internal(m),
            ServiceError::StorageFailed(m) => RpcError::StorageFailed(m),
        }
    }
}
