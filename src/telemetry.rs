//! The node's Prometheus metrics: every metric's name, kind and help text in one place, and
//! the process-wide recorder that `/metrics` renders. Each layer records through the
//! `metrics` facade with the names here (`metrics::counter!(telemetry::PROPOSALS)`), so no
//! handle has to be passed down; `service::observer` samples the gauges that come from
//! openraft's metrics and the store. The full list, with alerts, is in docs/operations.md.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

// HTTP (api): every request, by matched route, method and status.
pub const HTTP_REQUESTS: &str = "ordo_http_requests_total";
pub const HTTP_DURATION: &str = "ordo_http_request_duration_seconds";

// Raft (service::observer, store::log_store).
pub const RAFT_TERM: &str = "ordo_raft_term";
/// 1 for the state the node is in, 0 for the others (label `state`).
pub const RAFT_STATE: &str = "ordo_raft_state";
pub const RAFT_LEADER: &str = "ordo_raft_leader_id";
pub const RAFT_HAS_LEADER: &str = "ordo_raft_has_leader";
pub const RAFT_LAST_LOG_INDEX: &str = "ordo_raft_last_log_index";
pub const RAFT_COMMITTED_INDEX: &str = "ordo_raft_committed_index";
pub const RAFT_APPLIED_INDEX: &str = "ordo_raft_applied_index";
/// On the leader, entries each follower lacks (label `follower`).
pub const RAFT_REPLICATION_LAG: &str = "ordo_raft_replication_lag_entries";
/// On the leader: since a quorum last acknowledged it.
pub const RAFT_QUORUM_ACK_AGE: &str = "ordo_raft_quorum_ack_age_seconds";
pub const RAFT_LEADER_CHANGES: &str = "ordo_raft_leader_changes_total";
pub const RAFT_STORAGE_FAILED: &str = "ordo_raft_storage_failed";

// Writes and reads (service).
pub const PROPOSALS: &str = "ordo_proposals_total";
pub const PROPOSAL_BATCH: &str = "ordo_proposal_batch_commands";
pub const READ_INDEX_ROUNDS: &str = "ordo_read_index_rounds_total";
pub const READ_INDEX_WAITERS: &str = "ordo_read_index_round_waiters";

// Storage (store).
pub const FSYNC_DURATION: &str = "ordo_log_fsync_duration_seconds";
pub const GROUP_COMMIT: &str = "ordo_log_group_commit_appends";
/// Label `outcome`: `caught_up` (the applies came within the limit), `gave_up` (the wait
/// ran out) or `skipped` (no wait: one gave up a moment ago).
pub const APPLY_LAG_WAITS: &str = "ordo_log_apply_lag_waits_total";
pub const SNAPSHOT_BUILDS: &str = "ordo_snapshot_builds_total";
pub const SNAPSHOT_BUILD_DURATION: &str = "ordo_snapshot_build_duration_seconds";
pub const SNAPSHOT_INSTALLS: &str = "ordo_snapshot_installs_total";
pub const SNAPSHOT_INSTALL_DURATION: &str = "ordo_snapshot_install_duration_seconds";
pub const SNAPSHOT_BYTES: &str = "ordo_snapshot_bytes";
pub const DATA_DIR_BYTES: &str = "ordo_data_dir_bytes";
pub const ORDERS_STORED: &str = "ordo_orders_stored";
pub const IDEMPOTENCY_RECORDS: &str = "ordo_idempotency_records_stored";

/// Peers (rpc::network): 1 while a peer cannot be reached (label `peer`).
pub const PEER_UNREACHABLE: &str = "ordo_peer_unreachable";

/// The change feed (api::changes): streams open on this node.
pub const FEED_SUBSCRIBERS: &str = "ordo_feed_subscribers";

pub fn feed_subscribers(open: f64) {
    metrics::gauge!(FEED_SUBSCRIBERS).set(open);
}

/// Histogram buckets: latencies in seconds (100 µs to 30 s), counts (1 to 4096).
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// How often histograms are folded (bounding their memory between scrapes).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use (several in-process nodes, as tests run
/// them, share it, gauges included). Starts the upkeep thread (one per process, for its
/// life) the first time.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .expect("the bucket list is not empty");
            for counted in [PROPOSAL_BATCH, GROUP_COMMIT, READ_INDEX_WAITERS] {
                builder = builder
                    .set_buckets_for_metric(Matcher::Full(counted.into()), COUNT_BUCKETS)
                    .expect("the bucket list is not empty");
            }
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed: /metrics stays empty");
            }
            describe();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("ordo-metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                })
                .expect("start the metrics upkeep thread");
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route, method and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency, by route and method."
    );
    describe_gauge!(RAFT_TERM, "The node's current Raft term.");
    describe_gauge!(
        RAFT_STATE,
        "1 for the node's Raft state (label state), 0 for the others."
    );
    describe_gauge!(RAFT_LEADER, "The leader's node id (0: none known).");
    describe_gauge!(RAFT_HAS_LEADER, "1 when the node knows a leader.");
    describe_gauge!(
        RAFT_LAST_LOG_INDEX,
        "Index of the last entry in the node's log."
    );
    describe_gauge!(
        RAFT_COMMITTED_INDEX,
        "Highest log index the node knows to be committed."
    );
    describe_gauge!(
        RAFT_APPLIED_INDEX,
        "Highest log index applied to the state machine."
    );
    describe_gauge!(
        RAFT_REPLICATION_LAG,
        "On the leader: log entries a follower lacks."
    );
    describe_gauge!(
        RAFT_QUORUM_ACK_AGE,
        Unit::Seconds,
        "On the leader: since a quorum last acknowledged it."
    );
    describe_counter!(RAFT_LEADER_CHANGES, "Times the node saw the leader change.");
    describe_gauge!(
        RAFT_STORAGE_FAILED,
        "1 once the node's storage has failed (it then exits)."
    );
    describe_counter!(PROPOSALS, "Log entries the leader proposed for writes.");
    describe_histogram!(PROPOSAL_BATCH, "Write commands per proposed log entry.");
    describe_counter!(
        READ_INDEX_ROUNDS,
        "Read-index rounds (one quorum check each)."
    );
    describe_histogram!(
        READ_INDEX_WAITERS,
        "Linearizable reads served per read-index round."
    );
    describe_histogram!(FSYNC_DURATION, Unit::Seconds, "Duration of one log fsync.");
    describe_histogram!(GROUP_COMMIT, "Log appends acknowledged by one fsync.");
    describe_counter!(
        APPLY_LAG_WAITS,
        "Log appends that waited for the state machine to come within 256 entries of the commit."
    );
    describe_counter!(SNAPSHOT_BUILDS, "Snapshots built.");
    describe_histogram!(
        SNAPSHOT_BUILD_DURATION,
        Unit::Seconds,
        "Time to build a snapshot."
    );
    describe_counter!(SNAPSHOT_INSTALLS, "Snapshots installed from the leader.");
    describe_histogram!(
        SNAPSHOT_INSTALL_DURATION,
        Unit::Seconds,
        "Time to install a snapshot."
    );
    describe_gauge!(
        SNAPSHOT_BYTES,
        Unit::Bytes,
        "Size of the current snapshot file."
    );
    describe_gauge!(
        DATA_DIR_BYTES,
        Unit::Bytes,
        "Bytes on disk under the data directory."
    );
    describe_gauge!(ORDERS_STORED, "Orders in the state machine.");
    describe_gauge!(
        IDEMPOTENCY_RECORDS,
        "Idempotency records kept (until they expire)."
    );
    describe_gauge!(
        PEER_UNREACHABLE,
        "1 while the peer (label peer) cannot be reached."
    );
}
