//! The cluster's time: what a leader stamps into the commands it proposes.
//!
//! A leader's own wall clock may be wrong by hours (a VM resumed without NTP, a bad host). Its
//! stamps decide when idempotency records expire, so one leader a day ahead would expire every
//! record at once, and retried writes would apply twice. Every append a follower answers carries
//! the follower's wall clock (`CLOCK_HEADER`); the leader keeps an offset per peer, and stamps
//! with the median clock of a quorum of voters (itself included). One wrong clock, the
//! leader's or a follower's, then cannot move the cluster's time forwards; a leader far off
//! the others says so in its log. With an even number of fresh readings (two of three voters,
//! one down) the lower of the two middle clocks counts: one clock behind then holds the stamps
//! back (orders dated late; the state machine's clock never goes back), which is the harmless
//! direction, since a clock ahead is what expires idempotency records early.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::NodeId;

/// Response header of the append route: the answering node's wall clock, ms since the epoch.
pub const CLOCK_HEADER: &str = "x-ordo-clock-ms";

/// Offsets older than this are not used (the peer may be gone or its clock may have moved).
const FRESH_FOR: Duration = Duration::from_secs(10);
/// A round trip longer than this says too little about the peer's clock to use.
const MAX_USEFUL_RTT_MS: i64 = 500;

/// Wall clock now, ms since the epoch.
pub fn wall_clock_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The last measured clock offset of each peer (peer clock minus ours), in ms.
#[derive(Debug, Default)]
pub struct PeerClocks {
    offsets: Mutex<HashMap<NodeId, (i64, Instant)>>,
}

impl PeerClocks {
    /// Records a peer's clock reading `peer_ms`, taken between our `sent_ms` and `received_ms`.
    pub fn observe(&self, peer: NodeId, sent_ms: i64, received_ms: i64, peer_ms: i64) {
        let rtt = received_ms - sent_ms;
        if !(0..=MAX_USEFUL_RTT_MS).contains(&rtt) {
            return;
        }
        let offset = peer_ms - (sent_ms + rtt / 2);
        let mut offsets = self.offsets.lock().unwrap_or_else(|p| p.into_inner());
        offsets.insert(peer, (offset, Instant::now()));
    }

    /// The offset to add to our clock to get the median clock of `voters` (`me` counts with
    /// offset 0), if fresh readings of a quorum of them are known.
    pub fn median_offset_ms(&self, me: NodeId, voters: &[NodeId]) -> Option<i64> {
        let offsets = self.offsets.lock().unwrap_or_else(|p| p.into_inner());
        let mut known: Vec<i64> = voters
            .iter()
            .filter_map(|v| {
                if *v == me {
                    return Some(0);
                }
                offsets
                    .get(v)
                    .filter(|(_, at)| at.elapsed() <= FRESH_FOR)
                    .map(|(o, _)| *o)
            })
            .collect();
        if known.len() < voters.len() / 2 + 1 {
            return None;
        }
        known.sort_unstable();
        // The lower median: with an even count, the earlier of the two middle clocks.
        Some(known[(known.len() - 1) / 2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3600 * 1000;

    #[tokio::test]
    async fn one_wrong_clock_does_not_move_the_median() {
        let clocks = PeerClocks::default();
        let t = 1_700_000_000_000;
        // This node (1) runs a day ahead: both peers read a day behind it.
        clocks.observe(2, t, t + 2, t + 1 - DAY);
        clocks.observe(3, t, t + 4, t + 2 - DAY);
        let offset = clocks.median_offset_ms(1, &[1, 2, 3]).unwrap();
        assert!((offset + DAY).abs() < 10, "offset {offset}");

        // Here only peer 3 is a day ahead: the median stays on ours.
        let clocks = PeerClocks::default();
        clocks.observe(2, t, t + 2, t + 1);
        clocks.observe(3, t, t + 2, t + 1 + DAY);
        assert_eq!(clocks.median_offset_ms(1, &[1, 2, 3]), Some(0));
    }

    #[tokio::test]
    async fn no_median_without_a_quorum_of_readings_or_from_slow_round_trips() {
        let clocks = PeerClocks::default();
        let t = 1_700_000_000_000;
        assert_eq!(clocks.median_offset_ms(1, &[1, 2, 3, 4, 5]), None);
        clocks.observe(2, t, t + 1, t - DAY);
        assert_eq!(clocks.median_offset_ms(1, &[1, 2, 3, 4, 5]), None);
        clocks.observe(3, t, t + 5_000, t - DAY); // a 5 s round trip: ignored
        assert_eq!(clocks.median_offset_ms(1, &[1, 2, 3, 4, 5]), None);
        clocks.observe(3, t, t + 1, t - DAY);
        assert!(clocks.median_offset_ms(1, &[1, 2, 3, 4, 5]).unwrap() < -DAY / 2);
    }
}
