//! Watches this node from inside: openraft's metrics update the Raft gauges (`telemetry`)
//! and, when the leader or the membership changed, ordo writes one line of its own for it;
//! every few seconds the store's size and counts are sampled into gauges.
//!
//! openraft's metrics change on every append and apply (thousands of times a second under
//! load), so changes are taken at most every `OBSERVE_EVERY`: the latest state is what is
//! read, so nothing lasting is missed, and a leader that flips back within that time is
//! seen as no change.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use openraft::ServerState;

use crate::raft::{NodeId, Raft};
use crate::store::{self, OrderReader};
use crate::telemetry;

/// At most this often the Raft gauges are set and leader/membership changes looked for.
const OBSERVE_EVERY: Duration = Duration::from_millis(200);

/// How often the store is sampled (a directory walk and an index scan).
const SAMPLE_STORE_EVERY: Duration = Duration::from_secs(10);

const STATES: [(ServerState, &str); 5] = [
    (ServerState::Leader, "leader"),
    (ServerState::Follower, "follower"),
    (ServerState::Candidate, "candidate"),
    (ServerState::Learner, "learner"),
    (ServerState::Shutdown, "shutdown"),
];

/// Starts both watchers on the current runtime; they end with the Raft core.
pub fn spawn(raft: Raft, reader: OrderReader, data_dir: PathBuf) {
    tokio::spawn(watch_raft(raft.clone()));
    tokio::spawn(sample_store(raft, reader, data_dir));
}

async fn watch_raft(raft: Raft) {
    let mut rx = raft.metrics();
    let mut last_leader: Option<Option<NodeId>> = None;
    let mut last_voters: Option<(BTreeSet<NodeId>, BTreeSet<NodeId>)> = None;
    let mut followers_seen: BTreeSet<NodeId> = BTreeSet::new();
    loop {
        {
            let m = rx.borrow_and_update();
            metrics::gauge!(telemetry::RAFT_TERM).set(m.current_term as f64);
            for (state, name) in STATES {
                let on = if m.state == state { 1.0 } else { 0.0 };
                metrics::gauge!(telemetry::RAFT_STATE, "state" => name).set(on);
            }
            metrics::gauge!(telemetry::RAFT_LEADER).set(m.current_leader.unwrap_or(0) as f64);
            metrics::gauge!(telemetry::RAFT_HAS_LEADER).set(if m.current_leader.is_some() {
                1.0
            } else {
                0.0
            });
            let last = m.last_log_index.unwrap_or(0);
            metrics::gauge!(telemetry::RAFT_LAST_LOG_INDEX).set(last as f64);
            metrics::gauge!(telemetry::RAFT_APPLIED_INDEX)
                .set(m.last_applied.map_or(0, |l| l.index) as f64);
            metrics::gauge!(telemetry::RAFT_QUORUM_ACK_AGE)
                .set(m.millis_since_quorum_ack.unwrap_or(0) as f64 / 1000.0);
            let failed = super::storage_failure_in(&m.running_state).is_some();
            metrics::gauge!(telemetry::RAFT_STORAGE_FAILED).set(if failed { 1.0 } else { 0.0 });
            // Lag per follower, on the leader; 0 elsewhere, so `max by (follower)` over the
            // cluster is the leader's figure.
            let replication = m.replication.clone().unwrap_or_default();
            for (&follower, matched) in &replication {
                if follower == m.id {
                    continue;
                }
                followers_seen.insert(follower);
                let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
                metrics::gauge!(telemetry::RAFT_REPLICATION_LAG, "follower" => follower.to_string())
                    .set(lag as f64);
            }
            for follower in &followers_seen {
                if !replication.contains_key(follower) {
                    metrics::gauge!(telemetry::RAFT_REPLICATION_LAG, "follower" => follower.to_string())
                        .set(0.0);
                }
            }

            if last_leader != Some(m.current_leader) {
                if last_leader.is_some() {
                    metrics::counter!(telemetry::RAFT_LEADER_CHANGES).increment(1);
                }
                match m.current_leader {
                    Some(l) if l == m.id => {
                        tracing::info!(term = m.current_term, "this node is the leader now")
                    }
                    Some(l) => tracing::info!(leader = l, term = m.current_term, "leader changed"),
                    None if last_leader.is_some() => {
                        tracing::info!(term = m.current_term, "no leader known")
                    }
                    None => {}
                }
                last_leader = Some(m.current_leader);
            }
            let membership = m.membership_config.membership();
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
            let now = (voters, learners);
            if last_voters.as_ref() != Some(&now) {
                if last_voters.is_some() {
                    tracing::info!(
                        voters = ?now.0,
                        learners = ?now.1,
                        log_id = ?m.membership_config.log_id(),
                        "membership changed"
                    );
                }
                last_voters = Some(now);
            }
        }
        tokio::time::sleep(OBSERVE_EVERY).await;
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// The idempotency count is a scan of its index (~0.3 s per million records): it runs again
/// only after this many times its own duration, so it costs at most ~2 % of a core.
const SCAN_COST_FACTOR: u32 = 50;

async fn sample_store(raft: Raft, reader: OrderReader, data_dir: PathBuf) {
    let mut server_rx = raft.server_metrics();
    let mut next_scan = tokio::time::Instant::now();
    loop {
        let (reader, dir) = (reader.clone(), data_dir.clone());
        let scan = tokio::time::Instant::now() >= next_scan;
        let sampled = tokio::task::spawn_blocking(move || {
            let bytes = store::disk_usage_bytes(&dir);
            let orders = reader.order_count();
            let started = std::time::Instant::now();
            let keys = scan.then(|| reader.idempotency_record_count());
            (bytes, orders, keys, started.elapsed())
        })
        .await;
        if let Ok((bytes, orders, keys, took)) = sampled {
            metrics::gauge!(telemetry::DATA_DIR_BYTES).set(bytes as f64);
            if let Ok(n) = orders {
                metrics::gauge!(telemetry::ORDERS_STORED).set(n as f64);
            }
            if let Some(Ok(n)) = keys {
                metrics::gauge!(telemetry::IDEMPOTENCY_RECORDS).set(n as f64);
            }
            if scan {
                next_scan = tokio::time::Instant::now() + took * SCAN_COST_FACTOR;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_STORE_EVERY) => {}
            // Ends with the Raft core, when its metrics channels close. The server metrics
            // (vote, role, leader, membership) change rarely; the full metrics change
            // several times per write, and waking on each cost a thread wake-up.
            _ = async { while server_rx.changed().await.is_ok() {} } => return,
        }
    }
}
