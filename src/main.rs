//! The `ordo` binary: parse the command line, set up logging to stderr, run.
//!
//! Logs are plain text, coloured only when stderr is a terminal (a log file gets no escape
//! codes); `--log-format json` (or `ORDO_LOG_FORMAT=json`) makes them one JSON object per
//! line. `RUST_LOG` filters (default `ordo::DEFAULT_LOG_FILTER`).

use clap::Parser;

// sled copies tree nodes on every write and openraft/hyper allocate per request: under glibc's
// malloc a third of a loaded node's CPU went to malloc/free and heap consolidation (perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    use std::io::IsTerminal;
    // No transparent huge pages for this process: mimalloc asks for them on its arenas, and
    // a 2 MiB page stays resident for a few live bytes. Measured at 300k orders: peak RSS
    // 183-187 MB with them, 143-146 MB without, the same write rate (docs/performance.md).
    // The flag covers every mapping, sled's too, from here on.
    #[cfg(target_os = "linux")]
    // SAFETY: a process-wide flag, no memory is touched.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    // Parsed first: the log format is a flag (`--log-format`, or ORDO_LOG_FORMAT).
    let cli = ordo::cli::Cli::parse();
    if !matches!(cli.command, ordo::cli::Command::Serve(_)) {
        // A client command whose reader went away (`ordo order list | head`) ends quietly,
        // as Unix tools do, instead of panicking in println!. Not for `serve`: a node must
        // see a peer's closed socket as an error on that socket, not die of it.
        // SAFETY: resets one signal's disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| ordo::DEFAULT_LOG_FILTER.into());
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match cli.log_format {
        ordo::cli::LogFormat::Json => logs.json().init(),
        ordo::cli::LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    match ordo::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
