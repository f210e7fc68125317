//! A linearizability checker for order histories (Wing & Gong's search with memoisation, as
//! Porcupine and Knossos do it), run per order: orders are independent objects, so a history
//! is linearizable when each order's sub-history is.
//!
//! The model of one order is `None` (not created) or `(status, version)`. An operation that
//! returned must take effect at one instant between its invocation and its completion; an
//! operation with an unknown outcome may take effect at any instant after its invocation, or
//! never; a failed one never did and is left out.

use std::collections::{BTreeMap, HashSet};

use super::history::{Op, OpKind, Outcome};
use ordo::order::OrderStatus;

type State = Option<(OrderStatus, u64)>;

/// Work limit for one order's search; past it the verdict is "not verified".
const SEARCH_BUDGET: u64 = 2_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order of the operations explains what the clients saw.
    Violation {
        object: String,
        ops: Vec<Op>,
    },
    /// The search ran out of budget on this object.
    Unverified {
        object: String,
    },
}

/// The model's own table of legal status moves, written out here rather than taken from
/// `OrderStatus::can_move_to`: a checker that reused the server's table would agree with a
/// bug in it. (The API documents these moves: pending -> paid | cancelled, paid -> shipped |
/// cancelled, shipped -> delivered.)
fn legal_move(from: OrderStatus, to: OrderStatus) -> bool {
    use OrderStatus::*;
    const MOVES: [(OrderStatus, OrderStatus); 5] = [
        (Pending, Paid),
        (Pending, Cancelled),
        (Paid, Shipped),
        (Paid, Cancelled),
        (Shipped, Delivered),
    ];
    MOVES.contains(&(from, to))
}

/// The state after `op` takes effect in `state`, if what the op returned is possible there.
fn step(state: State, op: &Op) -> Option<State> {
    use Outcome::*;
    match (&op.kind, &op.outcome) {
        (OpKind::Create, Created | Unknown) => Some(state.or(Some((OrderStatus::Pending, 1)))),
        (OpKind::Read, State { status, version }) => {
            (state == Some((*status, *version))).then_some(state)
        }
        (OpKind::Read | OpKind::SetStatus { .. }, NotFound) => state.is_none().then_some(state),
        (
            OpKind::SetStatus {
                to,
                expected_version,
            },
            outcome,
        ) => {
            let (current, version) = state?;
            let version_ok = expected_version.is_none_or(|e| e == version);
            let legal = version_ok && legal_move(current, *to);
            let moved = Some((*to, version + 1));
            match outcome {
                State { status, version: v } => {
                    (legal && *status == *to && *v == version + 1).then_some(moved)
                }
                VersionConflict => (!version_ok).then_some(state),
                InvalidTransition => (version_ok && !legal_move(current, *to)).then_some(state),
                Unknown => Some(if legal { moved } else { state }),
                _ => None,
            }
        }
        _ => None,
    }
}

struct Search<'a> {
    ops: &'a [Op],
    seen: HashSet<(Vec<u64>, State)>,
    budget: u64,
}

impl Search<'_> {
    /// Can the ops not yet in `done` be linearized starting from `state`?
    fn run(&mut self, done: &mut Vec<u64>, state: State) -> Option<bool> {
        let is_done = |d: &Vec<u64>, i: usize| d[i / 64] & (1 << (i % 64)) != 0;
        // The earliest completion among definite ops still pending: nothing invoked after it
        // may go before it.
        let mut horizon = u64::MAX;
        let mut definite_left = false;
        for (i, op) in self.ops.iter().enumerate() {
            if !is_done(done, i) && !op.is_unknown() {
                definite_left = true;
                horizon = horizon.min(op.completed_us);
            }
        }
        if !definite_left {
            return Some(true);
        }
        if !self.seen.insert((done.clone(), state)) {
            return Some(false);
        }
        for i in 0..self.ops.len() {
            if is_done(done, i) || self.ops[i].invoked_us > horizon {
                continue;
            }
            self.budget = self.budget.checked_sub(1)?;
            if let Some(next) = step(state, &self.ops[i]) {
                done[i / 64] |= 1 << (i % 64);
                let ok = self.run(done, next)?;
                done[i / 64] &= !(1 << (i % 64));
                if ok {
                    return Some(true);
                }
            }
        }
        Some(false)
    }
}

/// Checks one order's operations.
pub fn check_object(ops: &[Op]) -> Option<bool> {
    let mut ops: Vec<Op> = ops
        .iter()
        .filter(|o| o.outcome != Outcome::Failed && !(o.kind == OpKind::Read && o.is_unknown()))
        .cloned()
        .collect();
    ops.sort_by_key(|o| o.invoked_us);
    let mut search = Search {
        ops: &ops,
        seen: HashSet::new(),
        budget: SEARCH_BUDGET,
    };
    let mut done = vec![0u64; ops.len().div_ceil(64).max(1)];
    search.run(&mut done, None)
}

/// Checks a whole history, order by order.
pub fn check(ops: &[Op]) -> Verdict {
    let mut by_object: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for op in ops {
        by_object
            .entry(op.object.as_str())
            .or_default()
            .push(op.clone());
    }
    for (object, mut ops) in by_object {
        match check_object(&ops) {
            Some(true) => {}
            Some(false) => {
                ops.sort_by_key(|o| o.invoked_us);
                return Verdict::Violation {
                    object: object.to_string(),
                    ops,
                };
            }
            None => {
                return Verdict::Unverified {
                    object: object.to_string(),
                }
            }
        }
    }
    Verdict::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus::*;

    fn op(kind: OpKind, invoked_us: u64, completed_us: u64, outcome: Outcome) -> Op {
        Op {
            client: 0,
            object: "o".into(),
            kind,
            invoked_us,
            completed_us,
            outcome,
        }
    }
    fn set(to: OrderStatus) -> OpKind {
        OpKind::SetStatus {
            to,
            expected_version: None,
        }
    }
    fn state(status: OrderStatus, version: u64) -> Outcome {
        Outcome::State { status, version }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            op(OpKind::Create, 0, 10, Outcome::Created),
            op(OpKind::Read, 11, 12, state(Pending, 1)),
            op(set(Paid), 13, 20, state(Paid, 2)),
            op(set(Paid), 21, 22, Outcome::InvalidTransition),
            op(
                OpKind::SetStatus {
                    to: Shipped,
                    expected_version: Some(1),
                },
                23,
                24,
                Outcome::VersionConflict,
            ),
            op(OpKind::Read, 25, 30, state(Paid, 2)),
        ];
        assert_eq!(check(&h), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_caught() {
        let h = vec![
            op(OpKind::Create, 0, 10, Outcome::Created),
            op(set(Paid), 11, 20, state(Paid, 2)),
            // Invoked after the write was acknowledged, yet sees the old state.
            op(OpKind::Read, 21, 25, state(Pending, 1)),
        ];
        assert!(matches!(check(&h), Verdict::Violation { .. }));
    }

    #[test]
    fn lost_write_is_caught() {
        let h = vec![
            op(OpKind::Create, 0, 10, Outcome::Created),
            op(OpKind::Read, 100, 110, Outcome::NotFound),
        ];
        assert!(matches!(check(&h), Verdict::Violation { .. }));
        let h = vec![
            op(OpKind::Create, 0, 10, Outcome::Created),
            op(set(Paid), 11, 20, state(Paid, 2)),
            op(OpKind::Read, 30, 40, state(Pending, 1)),
        ];
        assert!(matches!(check(&h), Verdict::Violation { .. }));
    }

    #[test]
    fn a_write_applied_twice_is_caught() {
        let h = vec![
            op(OpKind::Create, 0, 10, Outcome::Created),
            op(set(Paid), 11, 20, state(Paid, 2)),
            op(OpKind::Read, 30, 40, state(Paid, 3)),
        ];
        assert!(matches!(check(&h), Verdict::Violation { .. }));
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        let h = vec![
            op(OpKind::Create, 0, 10, Outcome::Created),
            op(set(Paid), 20, 50, state(Paid, 2)),
            op(OpKind::Read, 25, 30, state(Pending, 1)), // before the write took effect
            op(OpKind::Read, 26, 45, state(Paid, 2)),    // after
        ];
        assert_eq!(check(&h), Verdict::Linearizable);
        // But two reads that do not overlap cannot see time run backwards.
        let h = vec![
            op(OpKind::Create, 0, 10, Outcome::Created),
            op(set(Paid), 20, 50, state(Paid, 2)),
            op(OpKind::Read, 25, 30, state(Paid, 2)),
            op(OpKind::Read, 31, 40, state(Pending, 1)),
        ];
        assert!(matches!(check(&h), Verdict::Violation { .. }));
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_have_happened() {
        let applied = vec![
            op(OpKind::Create, 0, 10, Outcome::Created),
            op(set(Paid), 11, 20, Outcome::Unknown),
            op(OpKind::Read, 100, 110, state(Paid, 2)),
        ];
        assert_eq!(check(&applied), Verdict::Linearizable);
        let not_applied = vec![
            op(OpKind::Create, 0, 10, Outcome::Created),
            op(set(Paid), 11, 20, Outcome::Unknown),
            op(OpKind::Read, 100, 110, state(Pending, 1)),
        ];
        assert_eq!(check(&not_applied), Verdict::Linearizable);
        let never_created = vec![
            op(OpKind::Create, 0, 10, Outcome::Unknown),
            op(OpKind::Read, 100, 110, Outcome::NotFound),
        ];
        assert_eq!(check(&never_created), Verdict::Linearizable);
        // A failed (503) write must not have happened.
        let failed_but_visible = vec![
            op(OpKind::Create, 0, 10, Outcome::Created),
            op(set(Paid), 11, 20, Outcome::Failed),
            op(OpKind::Read, 100, 110, state(Paid, 2)),
        ];
        assert!(matches!(
            check(&failed_but_visible),
            Verdict::Violation { .. }
        ));
    }

    #[test]
    fn orders_are_checked_independently() {
        let mut h = vec![
            op(OpKind::Create, 0, 10, Outcome::Created),
            op(OpKind::Read, 11, 12, state(Pending, 1)),
        ];
        let mut other = op(OpKind::Create, 0, 10, Outcome::Created);
        other.object = "p".into();
        h.push(other);
        let mut bad = op(OpKind::Read, 20, 30, Outcome::NotFound);
        bad.object = "p".into();
        h.push(bad);
        match check(&h) {
            Verdict::Violation { object, .. } => assert_eq!(object, "p"),
            v => panic!("{v:?}"),
        }
    }
}
