//! Why the service could not do what was asked. It travels between nodes inside
//! `LeaderAnswer` (encoded by `codec`), so it is its own type: adding an HTTP error does not
//! change the node-to-node format. `api` maps it to HTTP in one place.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
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
    #[error("{0}")]
    Internal(String),
}
