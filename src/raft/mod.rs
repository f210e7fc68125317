//! The openraft type configuration ordo runs with: what a log entry carries (a batch of order
//! commands), what applying one returns, and short names for the openraft types the store,
//! the protocol (`rpc`) and the service share.

use crate::order::{CommandBatch, CommandOutcome};

/// A node's id in the cluster.
pub type NodeId = u64;

/// What applying one log entry returns: one outcome per command of its batch (none for
/// blank and membership entries).
pub type ApplyResult = Vec<CommandOutcome>;

openraft::declare_raft_types!(
    /// ordo's openraft type configuration.
    pub TypeConfig:
        D = CommandBatch,
        R = ApplyResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type Snapshot = openraft::storage::Snapshot<TypeConfig>;
