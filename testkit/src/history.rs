//! The history of a torture run: every client operation with its invocation and completion
//! time and its outcome — ok (with what the server said), failed (certainly had no effect),
//! or unknown (may or may not have taken effect).

use std::sync::Mutex;

use serde::Serialize;

use ordo::order::OrderStatus;

/// What a client asked, on one order object. Orders are identified by the tag the create
/// carried (as note and idempotency key), since a create's id is only known once acked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum OpKind {
    Create,
    SetStatus {
        to: OrderStatus,
        expected_version: Option<u64>,
    },
    Read,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// Created, or replayed: the order exists.
    Created,
    /// The order now has this status and version (set-status ok, or a read).
    State { status: OrderStatus, version: u64 },
    /// A read or set-status found no such order.
    NotFound,
    /// set-status refused: the transition is not legal from the current status.
    InvalidTransition,
    /// set-status refused: the current version is not the expected one.
    VersionConflict,
    /// Certainly no effect (e.g. 503 before proposing, or a read that did not answer).
    Failed,
    /// May or may not have taken effect (504, lost connection, client timeout).
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Op {
    pub client: usize,
    pub object: String,
    pub kind: OpKind,
    /// Microseconds since the run started.
    pub invoked_us: u64,
    pub completed_us: u64,
    pub outcome: Outcome,
}

impl Op {
    pub fn is_unknown(&self) -> bool {
        self.outcome == Outcome::Unknown
    }
}

/// Collects operations from concurrent clients.
#[derive(Default)]
pub struct History {
    ops: Mutex<Vec<Op>>,
}

impl History {
    pub fn record(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }

    pub fn into_ops(self) -> Vec<Op> {
        self.ops.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}
