//! Keeps the state machine's clock near the cluster's time while writes are few. That clock
//! moves only with stamped commands, by at most `MAX_CLOCK_STEP_MS` per stamp (`order::apply`),
//! so after an idle hour or a weekend it lags real time; an idempotency record made then
//! expires by that clock, and once writes have caught the clock up, it has lived 24 h minus
//! the lag in real time: a retry after that makes a second order. So the leader proposes a
//! tick whenever the clock lags the time it would stamp by more than `MAX_LAG_MS`, and again
//! until it has caught up (each tick moves it by one step at most). The proposer does the
//! catching up (`proposer::catch_up_clock`: one log entry of ticks a step apart) before it
//! proposes any batch, so the first write after a stop of the whole cluster does not come
//! before it; this task proposes a tick while writes are few, every `CHECK_EVERY`, and the
//! proposer catches up before proposing that one too.
//!
//! A tick is a set-status of order 0 without an idempotency key: every build refuses it as
//! not found and changes nothing but the clock (and the expiry sweep every command makes).
//! No new kind of command, so nodes of older builds in a rolling upgrade apply it alike.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::proposer::{cluster_time_now_ms, Proposer};
use crate::order::{OrderCommand, OrderOp, OrderStatus, MAX_CLOCK_STEP_MS};
use crate::raft::Raft;
use crate::rpc::clock::PeerClocks;
use crate::rpc::WriteRequest;

/// The state machine's clock (`None` before the first command), as the store has it.
pub type StateClock = Arc<dyn Fn() -> Option<i64> + Send + Sync>;

/// How far the state machine's clock may lag before a tick is proposed: idempotency records
/// live at least 24 h minus this, and an idle cluster writes one tick per this.
pub const MAX_LAG_MS: i64 = 60_000;
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Ticks per catch-up at most (one log entry): 1008 steps of 10 min are a week of lag.
pub const MAX_TICKS: usize = 1008;

/// What a tick does: a set-status of order 0, which no order has.
fn tick_op() -> OrderOp {
    OrderOp::SetStatus {
        id: 0,
        status: OrderStatus::Pending,
        expected_version: None,
    }
}

/// A tick as a write to propose (the proposer stamps it).
pub fn tick() -> WriteRequest {
    WriteRequest {
        op: tick_op(),
        idempotency_key: None,
    }
}

/// A tick stamped at `stamped_at_ms`, as the log carries it.
pub fn tick_at(stamped_at_ms: i64) -> OrderCommand {
    OrderCommand {
        op: tick_op(),
        idempotency_key: None,
        stamped_at_ms,
    }
}

/// The ticks that move a state machine clock at `from` to `to` in one log entry: stamps a
/// step (`MAX_CLOCK_STEP_MS`) apart, each moving the clock by exactly that (so none is cut
/// and logged), the last one `to`; at most `MAX_TICKS` (a week), which then end short of it.
pub fn ticks(from: i64, to: i64) -> Vec<OrderCommand> {
    let mut stamps = Vec::new();
    let mut at = from;
    while at < to && stamps.len() < MAX_TICKS {
        at = at.saturating_add(MAX_CLOCK_STEP_MS).min(to);
        stamps.push(at);
    }
    stamps.into_iter().map(tick_at).collect()
}

/// Whether a state machine clock at `clock` lags the time a leader would stamp now, `stamp`,
/// enough for a tick. A clock never set has nothing to age.
pub fn lags(clock: Option<i64>, stamp: i64) -> bool {
    clock.is_some_and(|c| stamp.saturating_sub(c) > MAX_LAG_MS)
}

pub(super) fn spawn(
    raft: Raft,
    clocks: Arc<PeerClocks>,
    proposer: Proposer,
    state_clock: StateClock,
    request_timeout: Duration,
) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(CHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let (leading, stopped) = {
                let m = raft.metrics();
                let m = m.borrow();
                (
                    m.current_leader == Some(m.id),
                    m.state == openraft::ServerState::Shutdown,
                )
            };
            if stopped {
                return;
            }
            if !leading {
                continue;
            }
            let Some(stamp) = cluster_time_now_ms(&raft, &clocks) else {
                continue;
            };
            if lags(state_clock(), stamp) {
                // The proposer catches the clock up before it proposes anything, this tick
                // included; an answer other than done is tried again at the next check.
                let _ = proposer
                    .propose(tick(), Instant::now() + request_timeout)
                    .await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::memory_state::MemoryState;
    use crate::order::{apply_command, OrderCommand, OrderState};

    /// One entry of ticks moves the clock to the stamp in steps none of which is cut, and a
    /// lag over a week is caught up as far as a week.
    #[test]
    fn ticks_catch_the_clock_up_in_uncut_steps() {
        const DAY: i64 = 86_400_000;
        let from = 1_000_000_000;
        for (lag, expected_ticks, reached) in [
            (2 * DAY + 1, 289, from + 2 * DAY + 1),
            (61_000, 1, from + 61_000),
            (
                10 * DAY,
                MAX_TICKS,
                from + MAX_TICKS as i64 * MAX_CLOCK_STEP_MS,
            ),
        ] {
            let mut state = MemoryState::default();
            state.set_clock(from, from).unwrap();
            let ticks = ticks(from, from + lag);
            assert_eq!(ticks.len(), expected_ticks, "lag {lag}");
            for t in &ticks {
                let applied = apply_command(&mut state, t, [0; 32]).unwrap();
                assert!(!applied.clock_clamped, "a tick was cut: {t:?}");
            }
            assert_eq!(state.clock().unwrap(), Some(reached), "lag {lag}");
        }
        assert!(ticks(5, 5).is_empty());
    }

    #[test]
    fn only_a_clock_that_lags_by_more_than_the_bound_asks_for_a_tick() {
        assert!(!lags(None, 1_000_000));
        assert!(!lags(Some(1_000_000), 1_000_000 + MAX_LAG_MS));
        assert!(lags(Some(1_000_000), 1_000_001 + MAX_LAG_MS));
        assert!(!lags(Some(2_000_000), 1_000_000), "a clock ahead");
    }

    /// A tick changes nothing but the clock, which it moves by one step at most, the same
    /// way in every build (it is an ordinary command that is refused).
    #[test]
    fn a_tick_moves_the_clock_and_nothing_else() {
        let mut state = MemoryState::default();
        let create = OrderCommand {
            op: OrderOp::Create(crate::order::NewOrder {
                customer_id: "c".into(),
                items: vec![crate::order::LineItem {
                    sku: "s".into(),
                    quantity: 1,
                    unit_price_cents: 1,
                }],
                note: None,
            }),
            idempotency_key: Some("k".into()),
            stamped_at_ms: 1_000_000,
        };
        apply_command(&mut state, &create, [1; 32]).unwrap();
        let before = state.clone();
        let day_later = tick_at(1_000_000 + 86_400_000);
        let applied = apply_command(&mut state, &day_later, [2; 32]).unwrap();
        assert!(
            applied.outcome.result.is_err(),
            "refused: order 0 does not exist"
        );
        assert_eq!(
            state.clock().unwrap(),
            Some(1_000_000 + crate::order::MAX_CLOCK_STEP_MS)
        );
        assert_eq!(
            (state.orders, state.records, state.revision),
            (before.orders, before.records, before.revision)
        );
    }
}
