//! Applying one command to the order state: every decision a replica makes, with no I/O.
//!
//! The state lives behind `OrderState`, which the store implements over sled and the tests
//! over maps; this file decides, the state only reads and writes what it is told. Three
//! decisions beyond the order rules of `command`:
//! - **Time.** The state machine keeps its own clock, moved by the leaders' stamps: never
//!   backwards, at most `MAX_CLOCK_STEP_MS` forwards per distinct stamp, so a leader whose
//!   clock is a day ahead cannot expire every idempotency record with one write. It moves
//!   once per stamp value (a batch of commands shares one stamp), so how commands are grouped
//!   into log entries never changes the state.
//! - **Idempotency.** A command with a key leaves a record (the request's fingerprint and its
//!   result) for `IDEMPOTENCY_TTL_MS` of that clock. The same key with the same request
//!   replays the first result without applying again; with another request it is refused.
//! - **Expiry.** Each command drops at most `EXPIRE_PER_COMMAND` expired records: bounded
//!   work per command, and still faster than records are made (one per command at most).
//!   A record is also judged by its own expiry when it is looked up, so how far cleanup has
//!   got never changes an outcome.
//! - **Revisions.** Every create and status change applied gets the next revision and leaves a
//!   `Change` record (the change feed); a replayed or rejected command leaves none.

use serde::{Deserialize, Serialize};

use super::command::{
    create_order, transition, CommandOutcome, Effect, OrderCommand, OrderOp, Rejection,
};
use super::model::{ChangeRecord, Order};
use super::users::{AdminOp, CustomRole, Role, User};
use super::validate::ValidationError;

/// How long an idempotency key is remembered, in the state machine's clock.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 60 * 60 * 1000;
/// The most one stamp may move the state machine's clock forwards (a leader's clock far ahead
/// cannot expire every record at once). After a long idle time the clock would catch up step
/// by step, and records made meanwhile would expire early in real time: the leader proposes
/// ticks to keep it close (`service::clock_keeper`).
pub const MAX_CLOCK_STEP_MS: i64 = 10 * 60 * 1000;
/// At most this many expired idempotency records are dropped per command.
pub const EXPIRE_PER_COMMAND: usize = 8;

/// What is remembered of a request made with an idempotency key. Stored: its encoding is part
/// of the state every replica must agree on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// A hash of the request's operation: the same key with another request is refused.
    pub fingerprint: [u8; 32],
    pub result: Result<Order, Rejection>,
    pub expires_at_ms: i64,
    /// The revision of the change the request made (`None` for a rejection). Appended in the
    /// store's layout 6: the store reads a record stored before as one with `None` here.
    pub revision: Option<u64>,
}

/// The state a command is applied to. Reads see the writes of earlier commands.
pub trait OrderState {
    type Error;

    /// The state machine's clock; `None` before the first command.
    fn clock(&self) -> Result<Option<i64>, Self::Error>;
    /// The stamp that last moved the clock (`None` also in stores older than this record).
    fn last_stamp(&self) -> Result<Option<i64>, Self::Error>;
    fn set_clock(&mut self, clock: i64, last_stamp: i64) -> Result<(), Self::Error>;

    /// The id the next created order gets (1 in an empty state).
    fn next_id(&self) -> Result<u64, Self::Error>;
    fn set_next_id(&mut self, next: u64) -> Result<(), Self::Error>;

    fn order(&self, id: u64) -> Result<Option<Order>, Self::Error>;
    /// Stores `order`, which replaces `previous` (`None` for a new order), as last changed at
    /// `revision`; indexes follow.
    fn put_order(
        &mut self,
        order: &Order,
        previous: Option<&Order>,
        revision: u64,
    ) -> Result<(), Self::Error>;

    /// The revision of the last applied change (0 before any).
    fn revision(&self) -> Result<u64, Self::Error>;
    /// Records `change`, whose revision is the next one, as the last applied change.
    fn put_change(&mut self, change: &ChangeRecord) -> Result<(), Self::Error>;

    fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, Self::Error>;
    fn put_idempotency(&mut self, key: &str, record: &IdempotencyRecord)
        -> Result<(), Self::Error>;
    fn remove_idempotency(
        &mut self,
        key: &str,
        record: &IdempotencyRecord,
    ) -> Result<(), Self::Error>;
    /// Removes up to `max` records whose expiry is at or before `now`, earliest first.
    fn expire_idempotency(&mut self, now: i64, max: usize) -> Result<(), Self::Error>;

    fn user(&self, name: &str) -> Result<Option<User>, Self::Error>;
    /// The name of the user whose token hashes to `hash`.
    fn token_owner(&self, hash: &[u8; 32]) -> Result<Option<String>, Self::Error>;
    fn role(&self, name: &str) -> Result<Option<CustomRole>, Self::Error>;
    /// Creates or replaces a custom role.
    fn put_role(&mut self, role: &CustomRole) -> Result<(), Self::Error>;
    fn remove_role(&mut self, name: &str) -> Result<(), Self::Error>;
    /// Stores a new user, findable by name and by token hash, and records for good that users
    /// exist (the bootstrap token never works again, even once all are revoked).
    fn put_user(&mut self, user: &User) -> Result<(), Self::Error>;
    fn remove_user(&mut self, user: &User) -> Result<(), Self::Error>;
}

/// The state machine's clock after a command stamped `stamp`: never backwards, and never more
/// than `MAX_CLOCK_STEP_MS` forwards at once. Returns whether the stamp was cut short.
pub fn advance_clock(clock: Option<i64>, stamp: i64) -> (i64, bool) {
    match clock {
        None => (stamp, false),
        Some(c) if stamp <= c => (c, false),
        Some(c) if stamp - c <= MAX_CLOCK_STEP_MS => (stamp, false),
        Some(c) => (c + MAX_CLOCK_STEP_MS, true),
    }
}

/// What applying one command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub outcome: CommandOutcome,
    /// The command's stamp was further ahead than one clock step (worth a warning).
    pub clock_clamped: bool,
}

/// Applies `cmd` to `state`. `fingerprint` identifies the request for idempotency: equal for
/// equal operations, different otherwise (the store hashes the operation's encoding).
pub fn apply_command<S: OrderState>(
    state: &mut S,
    cmd: &OrderCommand,
    fingerprint: [u8; 32],
) -> Result<Applied, S::Error> {
    let stamp = cmd.stamped_at_ms;
    let mut clock_clamped = false;
    let clock = state.clock()?;
    let now = if state.last_stamp()? == Some(stamp) {
        clock.unwrap_or(stamp)
    } else {
        let (now, cut) = advance_clock(clock, stamp);
        clock_clamped = cut;
        state.set_clock(now, stamp)?;
        now
    };
    state.expire_idempotency(now, EXPIRE_PER_COMMAND)?;
    let applied = |result, replayed, revision| Applied {
        outcome: CommandOutcome {
            result,
            replayed,
            revision,
        },
        clock_clamped,
    };

    // Changes to the users carry no idempotency key (validation refuses one).
    if let OrderOp::Admin(op) = &cmd.op {
        return Ok(applied(apply_admin(state, op)?, false, None));
    }

    if let Some(key) = &cmd.idempotency_key {
        if let Some(record) = state.idempotency(key)? {
            if record.expires_at_ms > now {
                return Ok(if record.fingerprint == fingerprint {
                    applied(record.result.map(Effect::Order), true, record.revision)
                } else {
                    applied(Err(Rejection::IdempotencyKeyReused), false, None)
                });
            }
            state.remove_idempotency(key, &record)?;
        }
    }

    // An order's own times are the leader's stamp (the cluster's median clock), not the
    // bounded clock above: after an idle night that clock lags real time.
    let mut revision = None;
    let result = match &cmd.op {
        OrderOp::Create(new) => {
            let id = state.next_id()?;
            let created = create_order(id, new, stamp);
            if let Ok(order) = &created {
                state.set_next_id(id + 1)?;
                revision = Some(store_change(state, order, None)?);
            }
            created
        }
        OrderOp::SetStatus {
            id,
            status,
            expected_version,
        } => match state.order(*id)? {
            None => Err(Rejection::NotFound(*id)),
            Some(order) => {
                // Never before its last change, whichever leader's stamp this is.
                let at = stamp.max(order.updated_at_ms);
                let moved = transition(&order, *status, *expected_version, at);
                if let Ok(updated) = &moved {
                    revision = Some(store_change(state, updated, Some(&order))?);
                }
                moved
            }
        },
        OrderOp::Admin(_) => unreachable!("applied above"),
    };

    if let Some(key) = &cmd.idempotency_key {
        let record = IdempotencyRecord {
            fingerprint,
            result: result.clone(),
            expires_at_ms: now.saturating_add(IDEMPOTENCY_TTL_MS),
            revision,
        };
        state.put_idempotency(key, &record)?;
    }
    Ok(applied(result.map(Effect::Order), false, revision))
}

/// Stores `order`, which replaces `previous` (`None` for a new order), as the next revision's
/// change; returns that revision.
fn store_change<S: OrderState>(
    state: &mut S,
    order: &Order,
    previous: Option<&Order>,
) -> Result<u64, S::Error> {
    let revision = state.revision()? + 1;
    state.put_order(order, previous, revision)?;
    state.put_change(&ChangeRecord::of(
        revision,
        order,
        previous.map(|p| p.status),
    ))?;
    Ok(revision)
}

fn apply_admin<S: OrderState>(
    state: &mut S,
    op: &AdminOp,
) -> Result<Result<Effect, Rejection>, S::Error> {
    Ok(match op {
        AdminOp::AddUser(user) => {
            if let Err(e) = op.validate() {
                Err(Rejection::Invalid(e))
            } else if state.user(&user.name)?.is_some() {
                Err(Rejection::UserExists(user.name.clone()))
            } else if state.token_owner(&user.token_hash)?.is_some() {
                // Tokens are random, so only a forged or replayed command gets here.
                Err(Rejection::Invalid(ValidationError::new(
                    "token",
                    "another user has this token",
                )))
            } else if Role::parse(&user.role).is_none() && state.role(&user.role)?.is_none() {
                Err(Rejection::NoSuchRole(user.role.clone()))
            } else {
                state.put_user(user)?;
                Ok(Effect::UserAdded {
                    name: user.name.clone(),
                    role: user.role.clone(),
                })
            }
        }
        AdminOp::PutRole(role) => match op.validate() {
            Err(e) => Err(Rejection::Invalid(e)),
            Ok(()) => {
                state.put_role(role)?;
                Ok(Effect::RolePut {
                    name: role.name.clone(),
                })
            }
        },
        AdminOp::DeleteRole { name } => match state.role(name)? {
            None => Err(Rejection::NoSuchRole(name.clone())),
            Some(_) => {
                state.remove_role(name)?;
                Ok(Effect::RoleDeleted { name: name.clone() })
            }
        },
        AdminOp::RevokeUser { name } => match state.user(name)? {
            None => Err(Rejection::NoSuchUser(name.clone())),
            Some(user) => {
                state.remove_user(&user)?;
                Ok(Effect::UserRevoked { name: name.clone() })
            }
        },
    })
}
