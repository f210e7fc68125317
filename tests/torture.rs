//! The short fault-injection run of `cargo test`: about a minute of concurrent creates, status
//! changes and linearizable reads while the leader is killed, paused and cut off in turn.
//! Passes only with a linearizable history, no lost acknowledged create, no duplicate and
//! identical state on every node. Partitions need network namespaces (root, iproute2); where
//! they cannot be made, the partition part is skipped with a message and the rest runs.

use std::path::PathBuf;
use std::time::Duration;

use ordo_testkit::{self as torture, Fault, TortureConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_torture_run_is_linearizable_and_loses_nothing() {
    let seed = torture::seed_from_env(20261124);
    let mut config = TortureConfig::new(
        PathBuf::from(env!("CARGO_BIN_EXE_ordo")),
        seed,
        Duration::from_secs(60),
    );
    config.faults = vec![
        Fault::KillLeader,
        Fault::PauseLeader,
        Fault::PartitionLeader,
    ];
    config.cycle_faults = true;
    // Snapshots every few hundred entries: builds run while writes go on, and a node that was
    // cut off catches up from a snapshot, both under the faults.
    config.snapshot_every_logs = Some(300);
    let report = torture::run(config).await.expect("torture run");
    println!("{report}");
    if let Some(why) = &report.skipped_network {
        eprintln!("NOTE: partition faults skipped: {why}");
    }
    assert!(report.passed(), "{report}");
    assert!(report.fault_count(Fault::KillLeader) >= 3, "{report}");
    assert!(report.fault_count(Fault::PauseLeader) >= 2, "{report}");
    if report.skipped_network.is_none() {
        assert!(report.fault_count(Fault::PartitionLeader) >= 2, "{report}");
    }
    assert!(
        report.total_ops >= 2000,
        "thousands of operations expected: {report}"
    );
    assert!(report.failovers >= 3, "{report}");
}
