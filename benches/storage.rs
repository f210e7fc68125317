//! The storage benchmark (`cargo bench --bench storage -- --orders 20000`): appends/s of the Raft log with the fsync on (one entry per append,
//! and batches of 64), apply throughput of the state machine, and on-disk bytes per order.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload};

use ordo::order::{CommandBatch, LineItem, NewOrder, OrderCommand, OrderOp};
use ordo::raft::{Entry, LogId};
use ordo::store::{self, Durability, StoreConfig};

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
}

fn sample_entry(index: u64) -> Entry {
    let cmd = OrderCommand {
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
    };
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(CommandBatch::one(cmd)),
    }
}

fn main() -> anyhow::Result<()> {
    run(BenchStorageArgs::parse())
}

fn run(args: BenchStorageArgs) -> anyhow::Result<()> {
    let temp = match &args.dir {
        Some(d) => tempfile::TempDir::new_in(d),
        None => tempfile::TempDir::new_in(std::env::current_dir()?),
    }
    .context("creating the bench directory")?;
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
