//! The fault-injection run in secure mode: every node and client over TLS, with users
//! (--auth; the workload runs as an admin). The leader killed and paused in turn, hostile
//! bytes at the node-to-node routes from a client without a cluster certificate, and the
//! same checks as the plain run (a linearizable history, no lost or duplicated acknowledged
//! write, identical state on every node).

use std::path::PathBuf;
use std::time::Duration;

use ordo_testkit::{self as torture, Fault, TortureConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture_run_over_tls_is_linearizable_and_loses_nothing() {
    let seed = torture::seed_from_env(20261126);
    let mut config = TortureConfig::new(
        PathBuf::from(env!("CARGO_BIN_EXE_ordo")),
        seed,
        Duration::from_secs(45),
    );
    config.faults = vec![Fault::KillLeader, Fault::PauseLeader, Fault::HostileBytes];
    config.cycle_faults = true;
    config.use_netns = false;
    config.tls = true; // and --auth
    let report = torture::run(config).await.expect("torture run");
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert!(report.fault_count(Fault::KillLeader) >= 2, "{report}");
    assert!(report.fault_count(Fault::HostileBytes) >= 1, "{report}");
    assert!(
        report.total_ops >= 1000,
        "a thousand operations expected: {report}"
    );
}
