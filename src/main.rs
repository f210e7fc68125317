//! The `ordo` binary: parse the command line, set up logging to stderr, run.

use clap::Parser;

// sled copies tree nodes on every write and openraft/hyper allocate per request: under glibc's
// malloc a third of a loaded node's CPU went to malloc/free and heap consolidation (perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .init();
    let cli = ordo::cli::Cli::parse();
    match ordo::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
