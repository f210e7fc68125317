//! The fault-injection run at real sizes (its own test binary, so it does not share the two
//! cores with the short run): five voters, the largest legal orders, snapshot installs of
//! megabytes, a follower paused under load, the leader SIGTERMed with a stalled client,
//! hostile bytes at every node-to-node route, and one node whose clock is a day ahead.

use std::path::PathBuf;
use std::time::Duration;

use ordo_testkit::{self as torture, Fault, TortureConfig};

/// The conditions small workloads never create: five voters, the largest legal orders from
/// many clients, frequent snapshots of a store of big orders (so a node that fell behind
/// installs megabytes), a follower paused under that load, the leader SIGTERMed while a
/// client's upload is stalled, undecodable bytes at every node-to-node route of every node,
/// and one node whose wall clock runs a day ahead (libfaketime; skipped with a note where it
/// is not installed). Same verdict as the short run, and every node comes back and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture_at_real_sizes_with_hostile_input_and_a_skewed_clock() {
    let seed = torture::seed_from_env(20261125);
    let mut config = TortureConfig::new(
        PathBuf::from(env!("CARGO_BIN_EXE_ordo")),
        seed,
        Duration::from_secs(90),
    );
    config.nodes = 5;
    config.clients = 24;
    config.large_orders = true;
    config.use_netns = false;
    config.faults = vec![
        Fault::PauseFollower,
        Fault::SigtermLeaderStalled,
        Fault::HostileBytes,
        Fault::KillLeader,
    ];
    config.cycle_faults = true;
    config.hold = Duration::from_secs(4);
    config.snapshot_every_logs = Some(100);
    if std::path::Path::new(torture::LIBFAKETIME).exists() {
        config.skewed_clock = Some("+1d".into());
    } else {
        eprintln!("NOTE: {} missing: no skewed clock", torture::LIBFAKETIME);
    }
    let report = torture::run(config).await.expect("torture run");
    println!("{report}");
    assert!(report.passed(), "{report}");
    for f in [
        Fault::PauseFollower,
        Fault::SigtermLeaderStalled,
        Fault::HostileBytes,
        Fault::KillLeader,
    ] {
        assert!(report.fault_count(f) >= 1, "{f:?}: {report}");
    }
    assert!(report.catch_ups >= 2, "{report}");
    if !report.leaders_seen.contains(&1) {
        eprintln!("NOTE: the node with the skewed clock never led in this run");
    }
    assert!(report.acked_creates >= 200, "{report}");
}
