//! `ordo defrag`: rewrites a stopped node's store into fresh files that hold only its live data
//! (`store::defrag`). Run it on one node at a time, the others serving meanwhile.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use super::ConnArgs;

#[derive(Debug, Args)]
pub struct DefragArgs {
    /// The stopped node's data directory (what it was started with as `--data-dir`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
}

pub fn run(conn: &ConnArgs, args: DefragArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    let config = crate::store::StoreConfig::new(&args.data_dir);
    let report = crate::store::defrag(&config)
        .with_context(|| format!("defragmenting {}", args.data_dir.display()))?;
    if conn.json {
        super::print_json(&serde_json::json!({
            "bytes_before": report.bytes_before,
            "bytes_after": report.bytes_after,
            "keys": report.keys,
            "trees": report.trees,
            "ms": started.elapsed().as_millis() as u64,
        }));
    } else {
        let mb = |b: u64| b as f64 / 1e6;
        println!(
            "defragmented {}: sled's files {:.1} MB -> {:.1} MB ({} keys in {} trees) in {:.1} s",
            args.data_dir.display(),
            mb(report.bytes_before),
            mb(report.bytes_after),
            report.keys,
            report.trees,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(0)
}
