//! The order domain: what an order is, which inputs are valid, which status moves are legal,
//! and the commands the Raft log carries. Pure data and decisions, no I/O, so every replica
//! that applies the same commands reaches the same state, and the rules can be tested alone.

mod apply;
mod command;
mod model;
mod users;
mod validate;

pub use apply::{
    advance_clock, apply_command, Applied, IdempotencyRecord, OrderState, EXPIRE_PER_COMMAND,
    IDEMPOTENCY_TTL_MS, MAX_CLOCK_STEP_MS,
};
pub use command::{
    create_order, transition, CommandBatch, CommandOutcome, Effect, OrderCommand, OrderOp,
    Rejection,
};
pub use model::{Change, ChangeRecord, LineItem, NewOrder, Order, OrderStatus};
pub use users::{
    same_hash, token_hash, validate_role_name, validate_user_name, AdminOp, CustomRole, Permission,
    Role, User, MAX_USER_NAME,
};
pub use validate::{validate_idempotency_key, validate_new_order, ValidationError};
pub use validate::{
    MAX_CUSTOMER_ID_CHARS, MAX_ITEMS, MAX_NOTE_CHARS, MAX_QUANTITY, MAX_SKU_CHARS,
    MAX_UNIT_PRICE_CENTS,
};

#[cfg(test)]
pub(crate) mod memory_state;
#[cfg(test)]
mod tests;
