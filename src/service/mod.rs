//! What a node does, without HTTP: commit a write through Raft from any node (`forward`,
//! batched into log entries by `proposer`), make a read linearizable (`read_index` rounds,
//! shared by concurrent reads), and the errors of both (`error`). `api` calls it from its
//! handlers and maps `ServiceError` to HTTP; `node` starts it.

pub mod error;
pub mod forward;
pub mod proposer;
pub mod read_index;

use std::time::Duration;

use crate::raft::{NodeId, Raft};
pub use error::ServiceError;

/// A node's service: the handles every write and linearizable read goes through.
#[derive(Clone)]
pub struct Service {
    pub id: NodeId,
    pub raft: Raft,
    /// Batches this node's writes into log entries while it leads.
    pub proposer: proposer::Proposer,
    /// Read-index rounds while this node leads: its own reads and the followers' requests.
    pub leader_reads: read_index::ReadIndexBatcher,
    /// Read-index rounds while this node follows: one request to the leader per round.
    pub forwarded_reads: read_index::ReadIndexBatcher,
    /// Client for forwarding to the leader (pooled keep-alive connections).
    pub http: reqwest::Client,
    /// How long a request may wait for a leader, a commit or a read index.
    pub request_timeout: Duration,
    /// A leader that has not heard from a quorum for this long refuses writes.
    pub quorum_stale_after: Duration,
}
