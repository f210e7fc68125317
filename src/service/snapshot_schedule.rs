//! When this node builds a snapshot: once enough of the log has been applied since the last
//! one, by a rule that lets the interval grow with the store.
//!
//! openraft 0.9's own policy (`LogsSinceLast(n)`) asks for a snapshot every n entries, whatever
//! the store's size. A snapshot dumps the whole store, so at a fixed interval the dumping work
//! per write grows with the store, and the total with its square: at ten million orders each
//! dump took five minutes beside the writes, and the next followed soon after
//! (docs/performance.md). Here a snapshot is due once at least `every_logs` entries *and* at
//! least `growth_percent` % of the entries the last snapshot covers have been applied since
//! it. Small stores snapshot every `every_logs` entries as before; past `100 / growth_percent`
//! intervals the intervals grow geometrically, so the total dumping work stays proportional to
//! the store, and the log kept between two snapshots stays about that share of it (plus what is
//! written while one is built). 0 % is the fixed interval. openraft runs with
//! `SnapshotPolicy::Never`, and this task asks for each snapshot (`trigger().snapshot()`;
//! openraft ignores the call while it builds one).
//!
//! It asks at most once per snapshot it has seen: openraft publishes its metrics a moment
//! after a build ends, and a second ask in that moment would start a whole second dump.

use std::time::Duration;

use openraft::LogIdOptionExt;

use crate::raft::Raft;

/// At most this often the rule is checked (openraft's metrics change with every write and
/// every tick of its core).
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// The rule (`ordo serve --snapshot-every-logs`, `--snapshot-growth-percent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSchedule {
    /// At least this many entries between two snapshots.
    pub every_logs: u64,
    /// And at least this share, in percent, of the entries the last snapshot covers.
    pub growth_percent: u64,
}

impl SnapshotSchedule {
    /// Entries to apply after a snapshot that covers the first `covered` entries before the
    /// next one is due.
    pub fn interval_after(&self, covered: u64) -> u64 {
        let grown = u128::from(covered) * u128::from(self.growth_percent) / 100;
        // At least one entry: with none, a snapshot would be due again at once, a whole dump
        // every check for nothing new.
        self.every_logs
            .max(1)
            .max(u64::try_from(grown).unwrap_or(u64::MAX))
    }

    /// Whether a snapshot is due with the log applied up to next index `applied` and the last
    /// snapshot covering the first `covered` entries (both openraft's `next_index()`, which its
    /// `LogsSinceLast` counts by too).
    pub fn due(&self, applied: u64, covered: u64) -> bool {
        applied >= covered.saturating_add(self.interval_after(covered))
    }

    /// Follows this node's applied index and asks for a snapshot whenever one is due, until
    /// the Raft core stops.
    pub fn spawn(self, raft: Raft) {
        tokio::spawn(async move {
            let mut metrics = raft.metrics();
            // The snapshot (by its next index) after which a snapshot was last asked for.
            let mut asked_after: Option<u64> = None;
            loop {
                let (applied, covered) = {
                    let m = metrics.borrow_and_update();
                    (m.last_applied.next_index(), m.snapshot.next_index())
                };
                let due = self.due(applied, covered);
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
        assert!(!every.due(0, 0));
        assert!(!every.due(99, 0));
        assert!(every.due(100, 0));
        assert!(!every.due(1_000_099, 1_000_000));
        assert!(every.due(1_000_100, 1_000_000));
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
        assert!(!grows.due(1_499_999, 1_000_000));
        assert!(grows.due(1_500_000, 1_000_000));
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
        assert!(!zero.due(0, 0));
        assert!(!zero.due(8, 8));
        assert!(zero.due(9, 8));
    }

    #[test]
    fn no_overflow_at_the_ends() {
        let huge = rule(u64::MAX, 1000);
        assert_eq!(huge.interval_after(u64::MAX), u64::MAX);
        assert!(!huge.due(1 << 62, 6));
    }
}
