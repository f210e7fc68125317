//! When this node builds a snapshot: at points of the applied log that grow apart with the
//! store, in turn with the other nodes.
//!
//! openraft 0.9's own policy (`LogsSinceLast(n)`) asks for a snapshot every n entries, whatever
//! the store's size. A snapshot dumps the whole store, so at a fixed interval the dumping work
//! per write grows with the store, and the total with its square: at ten million orders each
//! dump took five minutes beside the writes, and the next followed soon after
//! (docs/performance.md). Here the points are `every_logs` entries apart while that is more than
//! `growth_percent` % of the entries the point before covers, and that share apart after: small
//! stores snapshot every `every_logs` entries as before; past `100 / growth_percent` intervals
//! the intervals grow geometrically, so the total dumping work stays proportional to
//! the store, and the log kept between two snapshots stays about that share of it (plus what is
//! written while one is built). 0 % is the fixed interval. openraft runs with
//! `SnapshotPolicy::Never`, and this task asks for each snapshot (`trigger().snapshot()`;
//! openraft ignores the call while it builds one).
//!
//! It asks at most once per snapshot it has seen: openraft publishes its metrics a moment
//! after a build ends, and a second ask in that moment would start a whole second dump.
//!
//! The nodes take turns. Every node follows the same rule, so without more they would all dump
//! at the same moment, and a cluster whose every node is busy dumping has no node left to
//! answer quickly: on one machine the three dumps stalled the disk for seconds, and on three
//! machines the leader and both followers would be slow at once. So the rule's points are fixed
//! (those it gives from an empty store: 100k, 200k, 300k, 450k, ... entries), and the node that
//! is k-th of n in the membership (by id, from 0; learners too) dumps k/n of the way into each
//! interval. Turns are spaced in entries, so a dump longer than its share of an interval still
//! overlaps the next node's; a membership change shifts them (at most an early dump). With the
//! defaults and three nodes, past a million entries one node dumps every ~170k entries or more,
//! each in turn, where all three dumped every 500k entries at once. The points do not
//! depend on when a node last dumped, so the turns survive restarts; a node whose last snapshot
//! was not one of its own points (it installed the leader's) waits for its next point that is
//! at least half an interval on.

use std::time::Duration;

use openraft::LogIdOptionExt;

use crate::raft::Raft;

/// At most this often the rule is checked (openraft's metrics change with every write and
/// every tick of its core).
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// The rule (`ordo serve --snapshot-every-logs`, `--snapshot-growth-percent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSchedule {
    /// At least this many entries between two points.
    pub every_logs: u64,
    /// And at least this share, in percent, of the entries the point before covers.
    pub growth_percent: u64,
}

/// Which share of each interval a node waits before its dump: the `index`-th (from 0) of `of`
/// nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    pub index: u64,
    pub of: u64,
}

impl Turn {
    /// A node alone (or not in the membership it knows): the rule's own points.
    pub const FIRST: Turn = Turn { index: 0, of: 1 };

    /// `id`'s place among the ids of all the nodes of the membership, voters and learners.
    pub fn of_node(id: u64, mut node_ids: Vec<u64>) -> Turn {
        node_ids.sort_unstable();
        node_ids.dedup();
        match node_ids.iter().position(|&n| n == id) {
            Some(index) => Turn {
                index: index as u64,
                of: node_ids.len() as u64,
            },
            None => Turn::FIRST,
        }
    }
}

impl SnapshotSchedule {
    /// The interval after a point (or a snapshot) that covers the first `covered` entries.
    pub fn interval_after(&self, covered: u64) -> u64 {
        let grown = u128::from(covered) * u128::from(self.growth_percent) / 100;
        // At least one entry: with none, a snapshot would be due again at once, a whole dump
        // every check for nothing new.
        self.every_logs
            .max(1)
            .max(u64::try_from(grown).unwrap_or(u64::MAX))
    }

    /// The applied next index at which this node's next snapshot is due, its last snapshot
    /// covering the first `covered` entries (both openraft's `next_index()`, which its
    /// `LogsSinceLast` counts by too): the first of its turn's points at least half an
    /// interval (and one entry) after `covered`.
    pub fn next_due(&self, covered: u64, turn: Turn) -> u64 {
        let every = self.every_logs.max(1);
        let not_before = covered.saturating_add((self.interval_after(covered) / 2).max(1));
        // The rule's points from an empty store: multiples of `every` while the floor decides
        // the interval (while `point * growth / 100 <= every`), then each the last plus its
        // share. Jump to the last multiple at or before `not_before`; the points skipped all
        // end their interval before it.
        let fixed_points = match self.growth_percent {
            0 => u64::MAX,
            growth => 100 / growth,
        };
        let mut point = (not_before / every).min(fixed_points).saturating_mul(every);
        // Past the floor each step multiplies the point by at least 1.01, so this ends
        // within a few thousand steps even at u64::MAX.
        loop {
            let interval = self.interval_after(point);
            let shift = u128::from(interval) * u128::from(turn.index) / u128::from(turn.of.max(1));
            let turn_point = point.saturating_add(u64::try_from(shift).unwrap_or(u64::MAX));
            if turn_point >= not_before || point == u64::MAX {
                return turn_point;
            }
            point = point.saturating_add(interval);
        }
    }

    /// Whether a snapshot is due with the log applied up to next index `applied` (see
    /// [`Self::next_due`]).
    pub fn due(&self, applied: u64, covered: u64, turn: Turn) -> bool {
        applied >= self.next_due(covered, turn)
    }

    /// Follows this node's applied index and asks for a snapshot whenever one is due, until
    /// the Raft core stops.
    pub fn spawn(self, raft: Raft) {
        tokio::spawn(async move {
            let mut metrics = raft.metrics();
            // The snapshot (by its next index) after which a snapshot was last asked for.
            let mut asked_after: Option<u64> = None;
            loop {
                let (applied, covered, turn) = {
                    let m = metrics.borrow_and_update();
                    let ids = m.membership_config.membership().nodes().map(|(id, _)| *id);
                    (
                        m.last_applied.next_index(),
                        m.snapshot.next_index(),
                        Turn::of_node(m.id, ids.collect()),
                    )
                };
                let due = self.due(applied, covered, turn);
                // Asked already since this snapshot: the build that started (or the one
                // already running, if openraft ignored the ask) ends with a new snapshot.
                if due && asked_after != Some(covered) {
                    if raft.trigger().snapshot().await.is_err() {
                        return;
                    }
                    asked_after = Some(covered);
                }
                tokio::time::sleep(CHECK_EVERY).await;
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(every_logs: u64, growth_percent: u64) -> SnapshotSchedule {
        SnapshotSchedule {
            every_logs,
            growth_percent,
        }
    }

    // Indices below are next indices: `Some(log id at 98).next_index()` is 99, `None`'s is 0.

    #[test]
    fn a_fixed_interval_at_zero_percent_as_openraft_counts_it() {
        let every = rule(100, 0);
        // openraft's LogsSinceLast(100): due once the applied next index reaches the
        // snapshot's next index + 100.
        assert!(!every.due(0, 0, Turn::FIRST));
        assert!(!every.due(99, 0, Turn::FIRST));
        assert!(every.due(100, 0, Turn::FIRST));
        assert!(!every.due(1_000_099, 1_000_000, Turn::FIRST));
        assert!(every.due(1_000_100, 1_000_000, Turn::FIRST));
    }

    #[test]
    fn the_interval_grows_with_the_store_past_the_floor() {
        let grows = rule(100_000, 50);
        // Small stores: the floor.
        assert_eq!(grows.interval_after(0), 100_000);
        assert_eq!(grows.interval_after(200_000), 100_000);
        // Then half of what the last snapshot covers.
        assert_eq!(grows.interval_after(300_000), 150_000);
        assert_eq!(grows.interval_after(1_000_000), 500_000);
        assert!(!grows.due(1_518_749, 1_012_500, Turn::FIRST));
        assert!(grows.due(1_518_750, 1_012_500, Turn::FIRST));
        // The snapshots a growing store gets: 100k, 200k, 300k, 450k, 675k, 1.01M entries
        // (six where a fixed interval makes ten by a million).
        let mut covered = 0;
        let mut taken = vec![];
        while covered < 1_000_000 {
            covered += grows.interval_after(covered);
            taken.push(covered);
        }
        assert_eq!(
            taken,
            [100_000, 200_000, 300_000, 450_000, 675_000, 1_012_500]
        );
    }

    #[test]
    fn never_due_again_with_nothing_new_even_at_zero_entries() {
        let zero = rule(0, 0);
        assert!(!zero.due(0, 0, Turn::FIRST));
        assert!(!zero.due(8, 8, Turn::FIRST));
        assert!(zero.due(9, 8, Turn::FIRST));
    }

    #[test]
    fn no_overflow_at_the_ends() {
        let huge = rule(u64::MAX, 1000);
        assert_eq!(huge.interval_after(u64::MAX), u64::MAX);
        assert!(!huge.due(1 << 62, 6, Turn::FIRST));
        let last = Turn { index: 2, of: 3 };
        assert_eq!(huge.next_due(u64::MAX - 5, last), u64::MAX);
        assert_eq!(rule(1, 1).next_due(u64::MAX - 5, last), u64::MAX);
        assert_eq!(rule(0, 0).next_due(u64::MAX, Turn::FIRST), u64::MAX);
    }

    /// The dumps of each of `of` nodes from an empty store up to `until` entries, each node
    /// dumping as soon as it is due.
    fn dumps(schedule: SnapshotSchedule, of: u64, until: u64) -> Vec<Vec<u64>> {
        (0..of)
            .map(|index| {
                let turn = Turn { index, of };
                let mut covered = 0;
                let mut taken = vec![];
                loop {
                    covered = schedule.next_due(covered, turn);
                    if covered > until {
                        return taken;
                    }
                    taken.push(covered);
                }
            })
            .collect()
    }

    #[test]
    fn three_nodes_take_turns_a_third_of_an_interval_apart() {
        let defaults = rule(100_000, 50);
        let nodes = dumps(defaults, 3, 2_000_000);
        // The first node keeps the rule's own points; the others wait a third and two thirds
        // of each interval (the third one's first turn, two thirds into the first interval,
        // is half an interval past an empty store, so it takes it).
        assert_eq!(
            nodes[0],
            [100_000, 200_000, 300_000, 450_000, 675_000, 1_012_500, 1_518_750]
        );
        assert_eq!(
            nodes[1],
            [133_333, 233_333, 350_000, 525_000, 787_500, 1_181_250, 1_771_875]
        );
        assert_eq!(
            nodes[2],
            [66_666, 166_666, 266_666, 400_000, 600_000, 900_000, 1_350_000]
        );
        // Merged, the dumps come node by node in turn, never two at once.
        let mut all: Vec<(u64, usize)> = nodes
            .iter()
            .enumerate()
            .flat_map(|(node, taken)| taken.iter().map(move |&at| (at, node)))
            .collect();
        all.sort_unstable();
        for pair in all.windows(2) {
            assert_eq!(pair[1].1, (pair[0].1 + 1) % 3, "{all:?}");
        }
    }

    #[test]
    fn a_fixed_interval_is_shared_out_too() {
        let nodes = dumps(rule(300, 0), 3, 1_000);
        assert_eq!(
            nodes,
            [
                vec![300, 600, 900],
                vec![400, 700, 1000],
                vec![200, 500, 800]
            ]
        );
    }

    #[test]
    fn a_node_that_installed_another_nodes_snapshot_waits_for_its_own_turn() {
        let defaults = rule(100_000, 50);
        let second = Turn { index: 1, of: 3 };
        // Its own points are 525,000, 787,500 and 1,181,250 (above).
        assert_eq!(defaults.next_due(787_500, second), 1_181_250);
        // Another node's snapshot covering 900,000: its next own point.
        assert_eq!(defaults.next_due(900_000, second), 1_181_250);
        // One covering 500,000: 525,000 is too close (less than half of the 250,000-entry
        // interval after it), 787,500 is not.
        assert_eq!(defaults.next_due(500_000, second), 787_500);
        // Never sooner than half an interval after what it has.
        for covered in (0..3_000_000).step_by(7_919) {
            let next = defaults.next_due(covered, second);
            assert!(
                next >= covered + defaults.interval_after(covered) / 2,
                "{covered}"
            );
            assert!(
                next <= covered + 2 * defaults.interval_after(covered),
                "{covered}"
            );
        }
    }

    #[test]
    fn the_jump_to_the_nearby_point_matches_walking_from_zero() {
        // Walking the rule's points one by one from 0, as a reference.
        fn walked(schedule: SnapshotSchedule, covered: u64, turn: Turn) -> u64 {
            let not_before = covered + (schedule.interval_after(covered) / 2).max(1);
            let mut point = 0u64;
            loop {
                let interval = schedule.interval_after(point);
                let turn_point = point + interval * turn.index / turn.of;
                if turn_point >= not_before {
                    return turn_point;
                }
                point += interval;
            }
        }
        for (every, growth) in [(1, 0), (7, 0), (10, 3), (100, 50), (1_000, 33), (3, 250)] {
            let schedule = rule(every, growth);
            for of in 1..=5 {
                for index in 0..of {
                    let turn = Turn { index, of };
                    for covered in (0..50_000).step_by(211) {
                        assert_eq!(
                            schedule.next_due(covered, turn),
                            walked(schedule, covered, turn),
                            "every {every}, growth {growth}, {turn:?}, covered {covered}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_node_s_turn_is_its_place_among_the_member_ids() {
        assert_eq!(Turn::of_node(7, vec![9, 3, 7]), Turn { index: 1, of: 3 });
        assert_eq!(Turn::of_node(3, vec![9, 3, 7, 3]), Turn { index: 0, of: 3 });
        assert_eq!(Turn::of_node(4, vec![9, 3, 7]), Turn::FIRST);
        assert_eq!(Turn::of_node(1, vec![]), Turn::FIRST);
    }
}
