//! The storage benchmark (`cargo bench --bench storage -- --orders 20000`): appends/s of the Raft log with the fsync on (one entry per append,
//! and batches of 64), apply throughput of the state machine, and on-disk bytes per order.
//!
//! `--snapshot-memory` instead measures a node's memory around its first snapshot, the peak of
//! a million-order cluster: it appends and applies `--orders` orders (ten per log entry, as a
//! loaded leader batches them), then builds a snapshot and purges the log as openraft does,
//! printing RSS and the peak of each phase (Linux; the allocator and huge-page setting are
//! the server's).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload};

use ordo::order::{CommandBatch, LineItem, NewOrder, OrderCommand, OrderOp};
use ordo::raft::{Entry, LogId};
use ordo::store::{self, Durability, StoreConfig};

// The server's allocator, so that memory figures are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "storage",
    about = "Appends/s with fsync, apply throughput and bytes per order of the sled store"
)]
pub struct BenchStorageArgs {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,
    /// Single-entry appends to time.
    #[arg(long, default_value_t = 2000)]
    pub single: u64,
    /// Batches of 64 entries to time.
    #[arg(long, default_value_t = 300)]
    pub batches: u64,
    /// Orders to apply when measuring bytes per order.
    #[arg(long, default_value_t = 20_000)]
    pub orders: u64,
    /// Directory to put the store in (default: a temp dir on the same disk as the work dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Measure the explicitly unsafe mode instead (appends not fsynced).
    #[arg(long)]
    pub unsafe_no_fsync: bool,
    /// sled's page cache in MiB (the server's `--cache-mib`).
    #[arg(long, default_value_t = store::DEFAULT_CACHE_CAPACITY_BYTES >> 20)]
    pub cache_mib: u64,
    /// Measure memory around a snapshot build and log purge of `--orders` orders instead.
    #[arg(long)]
    pub snapshot_memory: bool,
    /// With `--snapshot-memory`: writes applied while the snapshot is built, as on a node
    /// under load (orders, ten per entry).
    #[arg(long, default_value_t = 0)]
    pub writes_during_dump: u64,
}

/// Orders per log entry in `--snapshot-memory`.
const ORDERS_PER_ENTRY: u64 = 10;

fn sample_entry(index: u64) -> Entry {
    entry_of(index, vec![sample_command(index)])
}

fn entry_of(index: u64, commands: Vec<OrderCommand>) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(CommandBatch { commands }),
    }
}

fn sample_command(index: u64) -> OrderCommand {
    OrderCommand {
        op: OrderOp::Create(NewOrder {
            customer_id: format!("customer-{}", index % 1000),
            items: vec![
                LineItem {
                    sku: "SKU-12345".into(),
                    quantity: 2,
                    unit_price_cents: 1999,
                },
                LineItem {
                    sku: "SKU-67890".into(),
                    quantity: 1,
                    unit_price_cents: 4500,
                },
            ],
            note: None,
        }),
        idempotency_key: None,
        stamped_at_ms: 1_700_000_000_000 + index as i64,
    }
}

/// Entry `index` of the `--snapshot-memory` log: orders `(index-1)*10+1 ..= index*10`.
fn batch_entry(index: u64) -> Entry {
    let first = (index - 1) * ORDERS_PER_ENTRY + 1;
    entry_of(
        index,
        (first..first + ORDERS_PER_ENTRY)
            .map(sample_command)
            .collect(),
    )
}

/// This process's resident and peak resident memory in MB (Linux; zeros elsewhere).
fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Starts a new peak for `rss_mb` (Linux: writing 5 to clear_refs resets VmHWM).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn report(phase: &str, started: Instant) {
    let (now, peak) = rss_mb();
    println!(
        "{phase:<24} {:>6.1} s   RSS {now:>6.1} MB   peak {peak:>6.1} MB",
        started.elapsed().as_secs_f64()
    );
    reset_peak();
}

fn main() -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    // SAFETY: a process-wide flag, as the server sets it (src/main.rs).
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let args = BenchStorageArgs::parse();
    if args.snapshot_memory {
        return snapshot_memory(args);
    }
    run(args)
}

/// Appends `entries` of the `--snapshot-memory` log and applies them, as a node does.
async fn append_and_apply(
    log: &mut store::LogStore,
    sm: &mut store::StateMachineStore,
    entries: std::ops::Range<u64>,
) -> anyhow::Result<()> {
    let batch: Vec<Entry> = entries.map(batch_entry).collect();
    log.blocking_append(batch.clone()).await?;
    sm.apply(batch).await?;
    Ok(())
}

fn bench_dir(args: &BenchStorageArgs) -> anyhow::Result<tempfile::TempDir> {
    match &args.dir {
        Some(d) => tempfile::TempDir::new_in(d),
        None => tempfile::TempDir::new_in(std::env::current_dir()?),
    }
    .context("creating the bench directory")
}

/// Memory around a node's snapshot: see the file's header.
fn snapshot_memory(args: BenchStorageArgs) -> anyhow::Result<()> {
    use openraft::storage::{RaftLogStorage, RaftSnapshotBuilder};
    let temp = bench_dir(&args)?;
    let mut config = StoreConfig::new(temp.path());
    config.cache_capacity_bytes = args.cache_mib << 20;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (mut log, mut sm) = store::open(&config)?;
        println!(
            "ordo snapshot memory bench: {} orders, {} per entry, cache {} MiB, dir {}",
            args.orders,
            ORDERS_PER_ENTRY,
            config.cache_capacity_bytes >> 20,
            temp.path().display()
        );
        let started = Instant::now();
        reset_peak();
        let entries = args.orders.div_ceil(ORDERS_PER_ENTRY);
        let mut next = 1;
        while next <= entries {
            let to = (next + 64).min(entries + 1);
            append_and_apply(&mut log, &mut sm, next..to).await?;
            next = to;
        }
        report("appended and applied", started);

        let mut builder = sm.get_snapshot_builder().await;
        let build = tokio::spawn(async move { builder.build_snapshot().await });
        // Writes beside the dump, as openraft's state-machine worker goes on applying.
        let extra = args.writes_during_dump.div_ceil(ORDERS_PER_ENTRY);
        let end = next + extra;
        while next < end {
            let to = (next + 16).min(end);
            append_and_apply(&mut log, &mut sm, next..to).await?;
            next = to;
        }
        if extra > 0 {
            println!(
                "  ({extra} entries applied beside the dump, done at {:.1} s)",
                started.elapsed().as_secs_f64()
            );
        }
        let snapshot = build.await??;
        report("snapshot built", started);

        // openraft purges up to the snapshot, keeping the newest 1000 entries.
        let upto = snapshot
            .meta
            .last_log_id
            .expect("the snapshot covers entries")
            .index;
        let keep_from = upto.saturating_sub(1000);
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), keep_from))
            .await?;
        report("log purged", started);
        // Closing the store waits for the purged entries' removal, on the purger's thread.
        drop((log, sm));
        report("closed (removal done)", started);
        let mb = |sub: &str| store::disk_usage_bytes(&temp.path().join(sub)) as f64 / 1e6;
        println!(
            "on disk after closing: sled {:.0} MB (state machine and the newest 1000 entries), \
             snapshot {:.0} MB",
            mb("sled"),
            mb("snapshots")
        );
        Ok::<_, anyhow::Error>(())
    })
}

fn run(args: BenchStorageArgs) -> anyhow::Result<()> {
    let temp = bench_dir(&args)?;
    let mut config = StoreConfig::new(temp.path());
    if args.unsafe_no_fsync {
        config.durability = Durability::UnsafeNoFsync;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (mut log, mut sm) = store::open(&config)?;
        let mode = if args.unsafe_no_fsync { "UNSAFE no-fsync" } else { "fsync on" };
        println!("ordo storage bench ({mode}), dir {}", temp.path().display());

        let mut index = 1;
        let start = Instant::now();
        for _ in 0..args.single {
            log.blocking_append([sample_entry(index)]).await?;
            index += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        println!("single-entry appends: {:>10.0} appends/s ({} in {:.2}s)", args.single as f64 / secs, args.single, secs);

        let start = Instant::now();
        for _ in 0..args.batches {
            let batch: Vec<Entry> = (index..index + 64).map(sample_entry).collect();
            index += 64;
            log.blocking_append(batch).await?;
        }
        let secs = start.elapsed().as_secs_f64();
        let n = args.batches * 64;
        println!(
            "batch-64 appends:     {:>10.0} entries/s, {:.0} batches/s ({} entries in {:.2}s)",
            n as f64 / secs,
            args.batches as f64 / secs,
            n,
            secs
        );
        drop(log);

        let before = store::disk_usage_bytes(temp.path());
        let start = Instant::now();
        let mut applied = 0;
        while applied < args.orders {
            let k = (args.orders - applied).min(256);
            let batch: Vec<Entry> = (applied + 1..=applied + k).map(sample_entry).collect();
            sm.apply(batch).await?;
            applied += k;
        }
        let secs = start.elapsed().as_secs_f64();
        println!("state machine apply:  {:>10.0} orders/s ({} orders)", args.orders as f64 / secs, args.orders);
        drop(sm);
        // Reopen so sled has written out what it holds; then measure the files.
        let (_log, _sm) = store::open(&config)?;
        let after = store::disk_usage_bytes(temp.path());
        println!(
            "on-disk: {} bytes total, ~{:.0} bytes per stored order (state machine growth / orders)",
            after,
            after.saturating_sub(before) as f64 / args.orders as f64
        );
        Ok::<_, anyhow::Error>(())
    })
}
