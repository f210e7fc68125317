//! The commands the Raft log carries and what applying one yields.
//!
//! A command is everything a replica needs to apply it deterministically: the operation, the
//! optional idempotency key and the time the leader stamped when it proposed it. Applying is a
//! pure function of (state, command), so the decision logic lives here, free of I/O; the store
//! only reads and writes what these functions decide.

use serde::{Deserialize, Serialize};

use super::model::{NewOrder, Order, OrderStatus};
use super::users::AdminOp;
use super::validate::{validate_new_order, ValidationError};

/// The operation of a command, without the leader's stamp. Its encoding is the request
/// fingerprint an idempotency key is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderOp {
    Create(NewOrder),
    SetStatus {
        id: u64,
        status: OrderStatus,
        expected_version: Option<u64>,
    },
    /// A change to the users (last: the variants above keep their encoding).
    Admin(AdminOp),
}

impl OrderOp {
    /// The checks an operation must pass before it is proposed (a 422 naming the field).
    /// Applying checks a create again (`create_order`), so a bad order is never stored.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            OrderOp::Create(new) => validate_new_order(new).map(|_| ()),
            OrderOp::SetStatus {
                id,
                expected_version,
                ..
            } => {
                if *id == 0 {
                    return Err(ValidationError::new("id", "order ids start at 1"));
                }
                if *expected_version == Some(0) {
                    return Err(ValidationError::new(
                        "expected_version",
                        "versions start at 1",
                    ));
                }
                Ok(())
            }
            OrderOp::Admin(op) => op.validate(),
        }
    }

    /// An upper estimate of the operation's encoded size in bytes, without encoding it: what
    /// the proposer weighs batches by.
    pub fn approx_encoded_len(&self) -> usize {
        match self {
            OrderOp::Create(new) => {
                // Per item: the sku with its length, a varint quantity and price.
                let items: usize = new.items.iter().map(|i| i.sku.len() + 16).sum();
                16 + new.customer_id.len() + new.note.as_ref().map_or(0, String::len) + items
            }
            OrderOp::SetStatus { .. } => 32,
            OrderOp::Admin(_) => 128,
        }
    }
}

/// One entry of the Raft log: an operation stamped by the proposing leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCommand {
    pub op: OrderOp,
    pub idempotency_key: Option<String>,
    /// Leader wall-clock time in ms since the epoch when the command was proposed.
    pub stamped_at_ms: i64,
}

/// The payload of one Raft log entry: order commands the leader proposed together, so that
/// they share one fsync and one replication round. Applied in order, exactly as if each were
/// an entry of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandBatch {
    pub commands: Vec<OrderCommand>,
}

impl CommandBatch {
    pub fn one(command: OrderCommand) -> CommandBatch {
        CommandBatch {
            commands: vec![command],
        }
    }
}

/// Why an applied command changed nothing. Deterministic: every replica rejects alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("order {0} not found")]
    NotFound(u64),
    #[error("cannot move an order from {from} to {to}")]
    InvalidTransition { from: OrderStatus, to: OrderStatus },
    #[error("expected version {expected}, but the order is at version {actual}")]
    VersionConflict { expected: u64, actual: u64 },
    #[error("idempotency key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("invalid input: {0}")]
    Invalid(ValidationError),
    // Appended: the variants above keep their encoding in stored idempotency records.
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("no user {0:?}")]
    NoSuchUser(String),
    #[error("no role {0:?}")]
    NoSuchRole(String),
}

/// What an applied command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// The order as the create or status change left it.
    Order(Order),
    UserAdded {
        name: String,
        role: String,
    },
    UserRevoked {
        name: String,
    },
    RolePut {
        name: String,
    },
    RoleDeleted {
        name: String,
    },
}

/// The result of one applied command as the state machine reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutcome {
    pub result: Result<Effect, Rejection>,
    /// True when an idempotency key matched an earlier identical request and its first result
    /// was returned without applying again.
    pub replayed: bool,
    /// The revision of the change the command made, or for a replay the one the first request
    /// made: where a watch that must see this change and everything after starts (`since` one
    /// less). `None` when no order changed (a rejection, a user or role change), and for a
    /// replay of a record stored before layout 6.
    pub revision: Option<u64>,
}

impl CommandOutcome {
    /// The order a create or status change produced, or why it was rejected.
    pub fn order(self) -> Result<Order, Rejection> {
        match self.result? {
            Effect::Order(order) => Ok(order),
            other => Err(Rejection::Invalid(ValidationError::new(
                "op",
                format!("an order operation applied as {other:?}"),
            ))),
        }
    }
}

/// Builds the order a create produces, or says why it cannot.
pub fn create_order(id: u64, new: &NewOrder, now_ms: i64) -> Result<Order, Rejection> {
    let total_cents = validate_new_order(new).map_err(Rejection::Invalid)?;
    Ok(Order {
        id,
        customer_id: new.customer_id.clone(),
        items: new.items.clone(),
        total_cents,
        note: new.note.clone(),
        status: OrderStatus::Pending,
        version: 1,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
    })
}

/// Moves an order to `next`, checking the optional expected version first, then the transition.
pub fn transition(
    order: &Order,
    next: OrderStatus,
    expected_version: Option<u64>,
    now_ms: i64,
) -> Result<Order, Rejection> {
    if let Some(expected) = expected_version {
        if expected != order.version {
            return Err(Rejection::VersionConflict {
                expected,
                actual: order.version,
            });
        }
    }
    if !order.status.can_move_to(next) {
        return Err(Rejection::InvalidTransition {
            from: order.status,
            to: next,
        });
    }
    Ok(Order {
        status: next,
        version: order.version + 1,
        updated_at_ms: now_ms,
        ..order.clone()
    })
}
