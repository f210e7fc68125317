//! The `ordo` binary: set up logging to stderr, parse the command line, run.
//!
//! Logs are plain text, coloured only when stderr is a terminal (a log file gets no escape
//! codes); `ORDO_LOG_FORMAT=json` makes them one JSON object per line. `RUST_LOG` filters
//! (default `ordo::DEFAULT_LOG_FILTER`).

use clap::Parser;

// sled copies tree nodes on every write and openraft/hyper allocate per request: under glibc's
// malloc a third of a loaded node's CPU went to malloc/free and heap consolidation (perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| ordo::DEFAULT_LOG_FILTER.into());
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match std::env::var("ORDO_LOG_FORMAT").as_deref() {
        Ok("json") => logs.json().init(),
        _ => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    let cli = ordo::cli::Cli::parse();
    match ordo::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
