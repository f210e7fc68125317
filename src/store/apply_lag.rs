//! Back-pressure from the state machine to the log: an append waits, briefly, while the
//! applies lag far behind the commit.
//!
//! openraft 0.9's core reads each newly committed range whole and queues it, decoded, on the
//! state-machine worker's unbounded channel (`RaftCore::apply_to_state_machine`). A follower
//! catching up appends and commits faster than it applies, so decoded entries pile up: a
//! follower that missed a million orders peaked at 293-319 MB (in a heaptrack of such a
//! catch-up, about 80 MB of a 172 MB heap were queued entries; docs/performance.md). Holding
//! each append until the applies are within `LAG_LIMIT` entries of the commit keeps that queue
//! to about `LAG_LIMIT` plus one append's entries.
//!
//! The wait is bounded (`StoreConfig::apply_lag_wait`, 100 ms with the default timings):
//! openraft's core awaits `append`, and a core held for an election timeout would start a
//! campaign when it wakes. So the limit is soft: applies that stall for longer let appends go
//! on, and `ordo_log_apply_lag_waits_total{outcome="gave_up"}` counts them. The bound holds
//! for the core, not only for one append: a leader's core can run many appends back to back
//! (its queued client writes), and waits of 100 ms each would hold it, heartbeats and all,
//! for their sum. So on a leader, after a wait gives up, appends go without waiting
//! (`skipped`) for as long again, and the core is held for at most half the time of a stall.
//! A follower's appends come one AppendEntries at a time, paced by the leader: there every
//! append waits, which is what keeps a catching-up follower's queue short. The leader is
//! paced by its AppendEntries deadline (one heartbeat; half the wait with the defaults): an
//! answer held past it times out and halves that peer's append budget (`rpc::network`), so
//! batches shrink until the follower's applies make room for one in time. A wait capped below
//! one heartbeat (an election timeout under three heartbeats) does not pace the leader.
//!
//! No deadlock: openraft saves the commit index and hands the range up to it to the state
//! machine in one step (`Command::Commit`), so whatever a later append waits for is already on
//! its way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::telemetry;

/// Committed but unapplied entries above which an append waits. One append is at most 256
/// entries (`max_payload_entries`), so the queue holds about two appends' worth.
const LAG_LIMIT: u64 = 256;

/// How far the state machine trails the commit, as the log store and the state machine see it.
pub(super) struct ApplyLag {
    /// One past the last committed index (0: nothing committed).
    committed_end: AtomicU64,
    /// One past the last applied index (0: nothing applied).
    applied_end: AtomicU64,
    applied_moved: tokio::sync::Notify,
    max_wait: Duration,
    /// After a wait that gave up: appends go without waiting until then (on a leader).
    free_until: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Whether this node leads (the node's wiring follows openraft's metrics).
    leading: std::sync::atomic::AtomicBool,
}

/// What a wait for applies came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LagWait {
    /// The applies were within the limit (at once or after a while).
    WithinLimit,
    /// Still behind after the longest wait; the append goes ahead anyway.
    GaveUp,
    /// Still behind, but a wait gave up a moment ago: the append goes without waiting.
    Skipped,
}

impl ApplyLag {
    pub(super) fn new(max_wait: Duration) -> ApplyLag {
        ApplyLag {
            committed_end: AtomicU64::new(0),
            applied_end: AtomicU64::new(0),
            applied_moved: tokio::sync::Notify::new(),
            max_wait,
            free_until: std::sync::Mutex::new(None),
            leading: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(super) fn set_committed(&self, index: Option<u64>) {
        self.committed_end
            .store(index.map_or(0, |i| i + 1), Ordering::Release);
    }

    pub(super) fn set_applied(&self, index: Option<u64>) {
        self.applied_end
            .store(index.map_or(0, |i| i + 1), Ordering::Release);
        self.applied_moved.notify_waiters();
    }

    /// Committed entries not applied yet.
    pub(super) fn lag(&self) -> u64 {
        self.committed_end
            .load(Ordering::Acquire)
            .saturating_sub(self.applied_end.load(Ordering::Acquire))
    }

    pub(super) fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Release);
    }

    /// Waits until the applies are within `LAG_LIMIT` of the commit, or `max_wait` has passed;
    /// on a leader, not at all for `max_wait` after a wait that gave up.
    pub(super) async fn wait_for_applies(&self) -> LagWait {
        if self.lag() <= LAG_LIMIT {
            return LagWait::WithinLimit;
        }
        let free_until = || self.free_until.lock().unwrap_or_else(|p| p.into_inner());
        let leading = self.leading.load(Ordering::Acquire);
        let outcome = if leading && free_until().is_some_and(|t| tokio::time::Instant::now() < t) {
            LagWait::Skipped
        } else {
            let outcome = self.wait_over_limit().await;
            if outcome == LagWait::GaveUp {
                *free_until() = Some(tokio::time::Instant::now() + self.max_wait);
            }
            outcome
        };
        let label = match outcome {
            LagWait::WithinLimit => "caught_up",
            LagWait::GaveUp => "gave_up",
            LagWait::Skipped => "skipped",
        };
        metrics::counter!(telemetry::APPLY_LAG_WAITS, "outcome" => label).increment(1);
        outcome
    }

    async fn wait_over_limit(&self) -> LagWait {
        let deadline = tokio::time::Instant::now() + self.max_wait;
        loop {
            // Made before the check, so an apply between the check and the wait still wakes it.
            let moved = self.applied_moved.notified();
            if self.lag() <= LAG_LIMIT {
                return LagWait::WithinLimit;
            }
            if tokio::time::timeout_at(deadline, moved).await.is_err() {
                return if self.lag() <= LAG_LIMIT {
                    LagWait::WithinLimit
                } else {
                    LagWait::GaveUp
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
        f.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    }

    #[tokio::test]
    async fn an_append_goes_at_once_while_applies_keep_up() {
        let lag = ApplyLag::new(Duration::from_secs(600));
        assert_eq!(lag.wait_for_applies().await, LagWait::WithinLimit);
        lag.set_committed(Some(LAG_LIMIT - 1));
        assert_eq!(lag.wait_for_applies().await, LagWait::WithinLimit);
        lag.set_committed(Some(10_000));
        lag.set_applied(Some(10_000 - LAG_LIMIT));
        assert_eq!(lag.wait_for_applies().await, LagWait::WithinLimit);
    }

    /// Far behind, the wait lasts until an apply brings the lag within the limit, and not
    /// longer: applies that leave it over the limit keep it waiting.
    #[tokio::test]
    async fn an_append_waits_until_the_applies_are_within_the_limit() {
        let lag = ApplyLag::new(Duration::from_secs(600));
        lag.set_committed(Some(10_000));
        lag.set_applied(Some(100));
        let wait = lag.wait_for_applies();
        tokio::pin!(wait);
        assert!(poll_once(wait.as_mut()).is_pending());
        lag.set_applied(Some(10_000 - LAG_LIMIT - 1));
        assert!(poll_once(wait.as_mut()).is_pending());
        lag.set_applied(Some(10_000 - LAG_LIMIT));
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(60), wait)
                .await
                .expect("the wait ends once the applies are within the limit"),
            LagWait::WithinLimit
        );
    }

    /// With the applies stalled, an append still goes after the longest wait.
    #[tokio::test(start_paused = true)]
    async fn the_wait_is_bounded() {
        let lag = ApplyLag::new(Duration::from_millis(100));
        lag.set_committed(Some(10_000));
        let started = tokio::time::Instant::now();
        assert_eq!(lag.wait_for_applies().await, LagWait::GaveUp);
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    /// Appends a leader's core runs back to back during a stall do not wait 100 ms each
    /// (five would hold its heartbeats for half a second): after a wait gives up, they go at
    /// once for as long again, and then one waits again. A follower's appends, paced by the
    /// leader, each wait: that keeps a catching-up follower's queue short.
    #[tokio::test(start_paused = true)]
    async fn a_stall_holds_the_core_for_at_most_half_its_time() {
        let max = Duration::from_millis(100);
        let lag = ApplyLag::new(max);
        lag.set_committed(Some(10_000));
        let started = tokio::time::Instant::now();
        for _ in 0..3 {
            assert_eq!(lag.wait_for_applies().await, LagWait::GaveUp);
        }
        assert_eq!(
            started.elapsed(),
            3 * max,
            "a follower's appends each waited"
        );

        let lag = ApplyLag::new(max);
        lag.set_leading(true);
        lag.set_committed(Some(10_000));
        let started = tokio::time::Instant::now();
        let mut outcomes = Vec::new();
        for _ in 0..5 {
            outcomes.push(lag.wait_for_applies().await);
        }
        assert_eq!(outcomes[0], LagWait::GaveUp);
        assert!(outcomes[1..].iter().all(|o| *o == LagWait::Skipped));
        assert_eq!(started.elapsed(), max, "only the first append waited");

        tokio::time::advance(max).await;
        assert_eq!(lag.wait_for_applies().await, LagWait::GaveUp);
        assert_eq!(started.elapsed(), 3 * max);
        // Once the applies are within the limit, appends go at once as ever.
        lag.set_applied(Some(10_000 - LAG_LIMIT));
        assert_eq!(lag.wait_for_applies().await, LagWait::WithinLimit);
    }
}
