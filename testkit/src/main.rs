//! `ordo-torture`: a fault-injection run against a fresh local cluster of `ordo serve`
//! processes, with its summary and the linearizability checker's verdict. Exit 0 on PASS, 1 on
//! FAIL.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;

use ordo_testkit::{self as torture, Fault, TortureConfig};

#[derive(Debug, Parser)]
#[command(
    name = "ordo-torture",
    version,
    about = "Fault injection against a fresh local ordo cluster, checked for linearizability"
)]
pub struct TortureArgs {
    /// Seed of the fault schedule and the clients' choices (default: random, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, default_value_t = 60)]
    pub duration_secs: u64,
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Comma-separated: kill-leader, kill, pause-leader, pause, partition-leader, split,
    /// bridge, pause-follower, sigterm-leader-stalled, hostile-bytes.
    #[arg(
        long,
        default_value = "kill-leader,kill,pause-leader,pause,partition-leader,split,bridge,pause-follower,sigterm-leader-stalled,hostile-bytes"
    )]
    pub faults: String,
    /// Take the faults in turn instead of at random.
    #[arg(long)]
    pub cycle: bool,
    /// Run nodes on loopback without network namespaces (partitions are skipped).
    #[arg(long)]
    pub no_netns: bool,
    /// The ordo binary the nodes run (default: `ordo` beside this program).
    #[arg(long)]
    pub bin: Option<std::path::PathBuf>,
    /// Nodes snapshot after this many applied entries (default: `ordo serve`'s); small values
    /// put snapshot builds and installs under the faults too.
    #[arg(long)]
    pub snapshot_every_logs: Option<u64>,
    /// Voters in the cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Creates carry the largest legal orders (100 items, long SKUs, a full note).
    #[arg(long)]
    pub large_orders: bool,
    /// Run node 1, which usually leads first, with its wall clock moved (libfaketime: `+1d`).
    #[arg(long, value_name = "OFFSET")]
    pub skewed_clock: Option<String>,
    /// Every node, and the clients, over TLS with development certificates.
    #[arg(long)]
    pub tls: bool,
    /// How long a fault lasts, ms.
    #[arg(long, default_value_t = 2000)]
    pub hold_ms: u64,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let code = match run(TortureArgs::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

fn run(args: TortureArgs) -> anyhow::Result<i32> {
    let mut faults = Vec::new();
    for name in args
        .faults
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match Fault::parse(name) {
            Some(f) => faults.push(f),
            None => bail!("unknown fault {name:?}"),
        }
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let bin = match args.bin {
        Some(b) => b,
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("ordo"),
    };
    let mut config = TortureConfig::new(bin, seed, Duration::from_secs(args.duration_secs));
    config.clients = args.clients.max(1);
    config.faults = faults;
    config.cycle_faults = args.cycle;
    config.use_netns = !args.no_netns;
    config.snapshot_every_logs = args.snapshot_every_logs;
    config.nodes = args.nodes.clamp(1, 9);
    config.large_orders = args.large_orders;
    config.skewed_clock = args.skewed_clock;
    config.tls = args.tls;
    config.hold = Duration::from_millis(args.hold_ms);
    println!(
        "torture: seed {seed}, {}s, {} clients, faults {}",
        args.duration_secs, config.clients, args.faults
    );
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt
        .block_on(torture::run(config))
        .map_err(anyhow::Error::msg)?;
    println!("{report}");
    Ok(if report.passed() { 0 } else { 1 })
}
