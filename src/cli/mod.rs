//! The `ordo` command line: `serve` runs a node, `order` / `cluster` talk to a running
//! cluster through `client`, `bench-storage` measures the store. Parsing only; the work is
//! done by the modules it calls.

mod serve;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ordo",
    version,
    about = "A replicated order store (Raft + sled + HTTP JSON)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    Serve(serve::ServeArgs),
    /// Measure log appends/s (fsync on) and on-disk bytes per order of the sled store.
    BenchStorage(crate::bench::storage::BenchStorageArgs),
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::BenchStorage(args) => crate::bench::storage::run(args).map(|_| 0),
    }
}
