//! Watches this node from inside: every change of openraft's metrics updates the Raft gauges
//! (`telemetry`) and, when the leader or the membership changed, writes one line of ordo's
//! own for it; every few seconds the store's size and counts are sampled into gauges.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use openraft::error::Fatal;
use openraft::ServerState;

use crate::raft::{NodeId, Raft};
use crate::store::{self, OrderReader};
use crate::telemetry;

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
            let failed = matches!(
                m.running_state,
                Err(Fatal::StorageError(_)) | Err(Fatal::Panicked)
            );
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
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn sample_store(raft: Raft, reader: OrderReader, data_dir: PathBuf) {
    let mut metrics_rx = raft.metrics();
    loop {
        let (reader, dir) = (reader.clone(), data_dir.clone());
        let sampled = tokio::task::spawn_blocking(move || {
            (
                store::disk_usage_bytes(&dir),
                reader.order_count(),
                reader.idempotency_record_count(),
            )
        })
        .await;
        if let Ok((bytes, orders, keys)) = sampled {
            metrics::gauge!(telemetry::DATA_DIR_BYTES).set(bytes as f64);
            if let Ok(n) = orders {
                metrics::gauge!(telemetry::ORDERS_STORED).set(n as f64);
            }
            if let Ok(n) = keys {
                metrics::gauge!(telemetry::IDEMPOTENCY_RECORDS).set(n as f64);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_STORE_EVERY) => {}
            // Ends with the Raft core (its metrics channel closes).
            closed = async { while metrics_rx.changed().await.is_ok() {} } => {
                let () = closed;
                return;
            }
        }
    }
}
