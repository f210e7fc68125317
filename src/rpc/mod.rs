//! The node-to-node protocol, in one place: the routes under `/raft`, what each carries
//! (`codec` bodies both ways) and what a leader answers, the one client every node-to-node
//! call goes through (`client`), the Raft network on top of it (`network`), the receiving
//! router (`server`, with `election_hold`), and the cluster clock measured over it (`clock`).
//!
//! Two kinds of calls share it: openraft's own (append, vote, snapshot chunks) and ordo's
//! leader calls (a forwarded write, a read-index request, a membership change), which a node
//! sends to the leader when it cannot serve a request itself. A leader call answers a
//! `LeaderAnswer` whose error is `RpcError`, this protocol's own type: the service's and the
//! HTTP API's errors can grow without changing what travels between nodes. Everything that
//! arrives here is decoded with a size bound and validated again before it is acted on: a
//! peer's bytes are as untrusted as a client's.

pub mod client;
pub mod clock;
pub mod election_hold;
pub mod network;
pub mod server;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::order::{validate_idempotency_key, OrderOp, ValidationError};
use crate::raft::NodeId;

/// The route of each call on the receiving node.
pub const APPEND_PATH: &str = "/raft/append";
pub const VOTE_PATH: &str = "/raft/vote";
pub const SNAPSHOT_PATH: &str = "/raft/snapshot";
pub const WRITE_PATH: &str = "/raft/write";
pub const READ_INDEX_PATH: &str = "/raft/read-index";
pub const MEMBERSHIP_PATH: &str = "/raft/membership";
/// Every route above.
pub const ROUTES: [&str; 6] = [
    APPEND_PATH,
    VOTE_PATH,
    SNAPSHOT_PATH,
    WRITE_PATH,
    READ_INDEX_PATH,
    MEMBERSHIP_PATH,
];

/// Largest append body: a batch of entries. Senders cut batches at `--max-append-kib` (at most
/// 8 MiB) and proposers keep an entry near 256 KB, so twice the largest budget is room enough.
pub const BODY_LIMIT_APPEND: usize = 16 * 1024 * 1024;
/// Largest snapshot chunk (openraft's chunk size plus the meta).
pub const BODY_LIMIT_SNAPSHOT: usize = 16 * 1024 * 1024;
/// Largest forwarded write: one order operation (~40 KB at the legal maximum).
pub const BODY_LIMIT_WRITE: usize = 1024 * 1024;
/// Largest vote, read-index or membership request (a few log ids, ids or one address).
pub const BODY_LIMIT_SMALL: usize = 64 * 1024;

/// A write as a follower forwards it: not yet stamped, the leader stamps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRequest {
    pub op: OrderOp,
    pub idempotency_key: Option<String>,
}

impl WriteRequest {
    pub fn approx_encoded_len(&self) -> usize {
        self.op.approx_encoded_len() + self.idempotency_key.as_ref().map_or(0, String::len)
    }

    /// The checks a client's request passed on the node it reached, made again: every node
    /// that proposes a write checks it itself.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.op.validate()?;
        if let Some(key) = &self.idempotency_key {
            validate_idempotency_key(key)?;
        }
        Ok(())
    }
}

/// A membership change as a node forwards it to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add (or update) a non-voting member and wait until it has caught up.
    AddLearner { id: NodeId, addr: String },
    /// Make exactly these nodes the voters.
    SetVoters(BTreeSet<NodeId>),
}

impl MembershipChange {
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            MembershipChange::AddLearner { addr, .. } => {
                if addr.parse::<std::net::SocketAddr>().is_err() {
                    return Err(ValidationError::new(
                        "addr",
                        "must be HOST:PORT with an IP address",
                    ));
                }
            }
            MembershipChange::SetVoters(ids) => {
                if ids.is_empty() {
                    return Err(ValidationError::new(
                        "members",
                        "must name at least one voter",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What a leader call answers. `E` is `RpcError` on the wire; the service uses the same shape
/// with its own error inside one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaderAnswer<T, E = RpcError> {
    Done(T),
    /// This node is not the leader (any more); here is who it thinks is.
    NotLeader(Option<NodeId>),
    /// This node lost the lead after proposing the write, which carries an idempotency key:
    /// it may still be committed, and a retry with the key is safe.
    Deposed(Option<NodeId>),
    Failed(E),
}

impl<T, E> LeaderAnswer<T, E> {
    pub fn map_err<F>(self, f: impl FnOnce(E) -> F) -> LeaderAnswer<T, F> {
        match self {
            LeaderAnswer::Done(t) => LeaderAnswer::Done(t),
            LeaderAnswer::NotLeader(l) => LeaderAnswer::NotLeader(l),
            LeaderAnswer::Deposed(l) => LeaderAnswer::Deposed(l),
            LeaderAnswer::Failed(e) => LeaderAnswer::Failed(f(e)),
        }
    }
}

/// Why a leader call failed, as it travels between nodes. Part of the protocol: change it
/// only together with the codec's format version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RpcError {
    #[error("no leader is known")]
    NoLeader,
    #[error("the leader has no quorum")]
    NoQuorum,
    #[error("{0}")]
    Unavailable(String),
    /// A write was proposed and its fate is unknown.
    #[error("{0}")]
    OutcomeUnknown(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Internal(String),
    /// The request failed the receiving node's own validation. (Last: the variants above
    /// encode as the error that travelled before this type existed.)
    #[error("{0}")]
    Invalid(ValidationError),
}
