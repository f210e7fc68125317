//! Storage tests: openraft's conformance suite against the sled store, reopen after drop and
//! after SIGKILL, snapshot transfer with real orders, idempotency, and determinism of apply.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader, RaftSnapshotBuilder};
use ordo::order::{
    Change, ChangeRecord, CommandBatch, IdempotencyRecord, LineItem, NewOrder, Order, OrderCommand,
    OrderOp, OrderStatus, Rejection,
};
use ordo::raft::{Entry, LogId, StorageError, TypeConfig, Vote};
use ordo::store::{self, LogStore, OrderFilter, PageStart, StateMachineStore, StoreConfig};
use proptest::prelude::*;
use tempfile::TempDir;

struct SledBuilder {
    compress: bool,
}

const PLAIN: SledBuilder = SledBuilder { compress: false };

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = TempDir::new().expect("temp dir");
        let (log, sm) = store::open(&store_config(dir.path(), self.compress)).expect("open store");
        Ok((dir, log, sm))
    }
}

/// The default store config in `dir`, compressed on disk or not (`--compress-store`).
fn store_config(dir: &std::path::Path, compress: bool) -> StoreConfig {
    StoreConfig {
        compress,
        ..StoreConfig::new(dir)
    }
}

#[test]
fn openraft_conformance_suite() {
    Suite::test_all(PLAIN).expect("openraft storage suite");
}

#[test]
fn openraft_conformance_suite_on_a_compressed_store() {
    Suite::test_all(SledBuilder { compress: true }).expect("openraft storage suite");
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn create(customer: &str, key: Option<&str>, at: i64) -> OrderCommand {
    OrderCommand {
        op: OrderOp::Create(NewOrder {
            customer_id: customer.into(),
            items: vec![LineItem {
                sku: "sku-1".into(),
                quantity: 2,
                unit_price_cents: 250,
            }],
            note: None,
        }),
        idempotency_key: key.map(String::from),
        stamped_at_ms: at,
    }
}

/// `len` characters that look random (and so compress poorly), the same for the same `seed`.
fn scrambled_text(seed: u64, len: usize) -> String {
    use rand::{distributions::Alphanumeric, rngs::StdRng, Rng, SeedableRng};
    StdRng::seed_from_u64(seed)
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn set_status(
    id: u64,
    status: OrderStatus,
    expected: Option<u64>,
    key: Option<&str>,
    at: i64,
) -> OrderCommand {
    OrderCommand {
        op: OrderOp::SetStatus {
            id,
            status,
            expected_version: expected,
        },
        idempotency_key: key.map(String::from),
        stamped_at_ms: at,
    }
}

fn entry(index: u64, cmd: OrderCommand) -> Entry {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(CommandBatch::one(cmd)),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn reopen_after_drop_keeps_log_vote_and_orders() {
    let dir = TempDir::new().unwrap();
    rt().block_on(async {
        let (mut log, mut sm) = store::open(&StoreConfig::new(dir.path())).unwrap();
        let entries: Vec<Entry> = (1..=20)
            .map(|i| entry(i, create(&format!("c{}", i % 3), None, i as i64)))
            .collect();
        log.blocking_append(entries.clone()).await.unwrap();
        log.save_vote(&Vote::new(3, 2)).await.unwrap();
        sm.apply(entries).await.unwrap();
        drop((log, sm));

        let (mut log, mut sm) = store::open(&StoreConfig::new(dir.path())).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 20)));
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
        assert_eq!(log.try_get_log_entries(5..8).await.unwrap().len(), 3);
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 20)));
        let reader = sm.reader();
        let page = reader
            .list(&OrderFilter::default(), PageStart::number(2), 8)
            .unwrap();
        assert_eq!(page.total, 20);
        assert_eq!(
            page.orders.iter().map(|o| o.id).collect::<Vec<_>>(),
            (9..=16).collect::<Vec<_>>()
        );
        let c1 = reader
            .list(
                &OrderFilter {
                    customer_id: Some("c1".into()),
                    status: None,
                },
                PageStart::number(1),
                100,
            )
            .unwrap();
        assert_eq!(c1.total, 7);
        assert!(c1.orders.iter().all(|o| o.customer_id == "c1"));
    });
}

/// The child half of `sigkill_between_appends_loses_nothing_acknowledged`: appends one entry
/// at a time and prints each index once the append is acknowledged (flushed).
#[test]
#[ignore = "run as a child process by sigkill_between_appends_loses_nothing_acknowledged"]
fn crash_child_appender() {
    let Ok(dir) = std::env::var("ORDO_CRASH_DIR") else {
        return;
    };
    rt().block_on(async {
        let (mut log, _sm) = store::open(&StoreConfig::new(&dir)).unwrap();
        for i in 1..=100_000u64 {
            log.blocking_append([entry(i, create("crash", None, i as i64))])
                .await
                .unwrap();
            println!("acked {i}");
        }
    });
}

#[test]
fn sigkill_between_appends_loses_nothing_acknowledged() {
    let dir = TempDir::new().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_appender",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ORDO_CRASH_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut last_acked = 0u64;
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("acked ") {
            last_acked = n.parse().unwrap();
            if last_acked >= 300 {
                child.kill().unwrap(); // SIGKILL, mid-stream
                break;
            }
        }
    }
    child.wait().unwrap();
    assert!(last_acked >= 300, "child stopped early at {last_acked}");

    rt().block_on(async {
        let (mut log, _sm) = store::open(&StoreConfig::new(dir.path())).unwrap();
        let state = log.get_log_state().await.unwrap();
        let last = state.last_log_id.expect("entries survived").index;
        assert!(
            last >= last_acked,
            "acknowledged up to {last_acked}, but only {last} survived"
        );
        let entries = log.try_get_log_entries(1..=last).await.unwrap();
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, (1..=last).collect::<Vec<_>>(), "log has a hole");
    });
}

/// How many orders the store holds.
fn order_count(store: &StateMachineStore) -> u64 {
    store
        .reader()
        .list(&OrderFilter::default(), PageStart::number(1), 1)
        .unwrap()
        .total
}

/// `ordo defrag`: from fresh files the store gives back the same log, vote and state, in
/// fewer bytes after many superseded writes; a compressed store stays compressed; a store in
/// use is refused and left as it was.
#[test]
fn defrag_keeps_the_store_in_fewer_bytes() {
    for compress in [false, true] {
        let dir = TempDir::new().unwrap();
        let config = store_config(dir.path(), compress);
        let orders = 6_000;
        let (mut log, mut sm) = store::open(&config).unwrap();
        let before = rt().block_on(async {
            // Creates, then every order moved twice: superseded versions for sled to keep.
            // Each order carries a note that compresses poorly, so the superseded versions
            // and purged entries outweigh sled's segment-at-a-time file growth in both
            // modes: with small orders a compressed store measured 5 segments before and
            // after, and the file sizes could not show what defrag gave back.
            let mut entries: Vec<Entry> = (1..=orders)
                .map(|i| {
                    let mut cmd = create(&format!("c{}", i % 50), None, i as i64);
                    if let OrderOp::Create(order) = &mut cmd.op {
                        order.note = Some(scrambled_text(i, 600));
                    }
                    entry(i, cmd)
                })
                .collect();
            for (n, status) in [OrderStatus::Paid, OrderStatus::Shipped].iter().enumerate() {
                let base = orders * (n as u64 + 1);
                entries.extend(
                    (1..=orders).map(|id| entry(base + id, set_status(id, *status, None, None, 0))),
                );
            }
            for chunk in entries.chunks(200) {
                log.blocking_append(chunk.to_vec()).await.unwrap();
                sm.apply(chunk.to_vec()).await.unwrap();
            }
            log.save_vote(&Vote::new(4, 1)).await.unwrap();
            log.purge(log_id(1, 2 * orders)).await.unwrap();
            stored_state(&mut log, &mut sm).await
        });
        // As the CLI does: the store's own compression, whatever the config says.
        let defrag_config = StoreConfig::new(dir.path());
        let refused = store::defrag(&defrag_config).expect_err("the store is open");
        assert!(refused.to_string().contains("in use"), "{refused}");
        drop((log, sm));

        let report = store::defrag(&defrag_config).unwrap();
        assert!(report.trees >= 3 && report.keys > orders, "{report:?}");
        assert!(
            report.bytes_after < report.bytes_before,
            "compressed {compress}: {report:?}"
        );
        let conf = std::fs::read(dir.path().join("sled/conf")).unwrap();
        assert!(
            String::from_utf8_lossy(&conf).contains(&format!("use_compression: {compress}")),
            "compressed {compress}"
        );
        rt().block_on(async {
            let (mut log, mut sm) = store::open(&config).unwrap();
            assert_eq!(stored_state(&mut log, &mut sm).await, before);
            // And it goes on: the next order gets the next id.
            let next = entry(3 * orders + 1, create("c0", None, 0));
            log.blocking_append([next.clone()]).await.unwrap();
            sm.apply([next]).await.unwrap();
            assert_eq!(order_count(&sm), orders + 1);
        });
    }
}

/// What a store holds, as far as a node can tell: its state's digest, vote, log bounds and
/// the log ids of the entries kept.
async fn stored_state(
    log: &mut LogStore,
    sm: &mut StateMachineStore,
) -> (
    String,
    Option<Vote>,
    Option<LogId>,
    Option<LogId>,
    Vec<LogId>,
) {
    let state = log.get_log_state().await.unwrap();
    let kept = log
        .try_get_log_entries(0..u64::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.log_id)
        .collect();
    (
        sm.reader().state_digest().unwrap(),
        log.read_vote().await.unwrap(),
        state.last_purged_log_id,
        state.last_log_id,
        kept,
    )
}

/// `--compress-store`: the same orders take far less disk in a compressed store, and a store
/// keeps the setting it was created with, whatever a later open asks for (sled refuses to
/// open a store with the other one).
#[test]
fn a_compressed_store_is_smaller_and_keeps_its_setting() {
    let (plain, packed) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    // Enough that sled's files, which grow a segment at a time, measure the data: at 30,000
    // orders one came out at 6 segments against 9 (0.667, past the bound below) in CI.
    let orders = 60_000;
    rt().block_on(async {
        for (dir, compress) in [(&plain, false), (&packed, true)] {
            let (mut log, mut sm) = store::open(&store_config(dir.path(), compress)).unwrap();
            let entries: Vec<Entry> = (1..=orders)
                .map(|i| entry(i, create(&format!("customer-{}", i % 100), None, i as i64)))
                .collect();
            for chunk in entries.chunks(500) {
                log.blocking_append(chunk.to_vec()).await.unwrap();
                sm.apply(chunk.to_vec()).await.unwrap();
            }
        }
        let plain_bytes = store::disk_usage_bytes(plain.path());
        let packed_bytes = store::disk_usage_bytes(packed.path());
        // About half here (sled's segments make small stores lumpy: 0.48-0.51 seen); the
        // same bytes written twice without compression come out about equal.
        assert!(
            packed_bytes * 3 < plain_bytes * 2,
            "compressed {packed_bytes} bytes, plain {plain_bytes} bytes"
        );
        for (dir, asked) in [(&plain, true), (&packed, false)] {
            let (mut log, sm) = store::open(&store_config(dir.path(), asked)).unwrap();
            assert_eq!(order_count(&sm), orders);
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_log_id, Some(log_id(1, orders)));
            // sled's own record of the setting (sled 0.34's `conf`) is the store's, not the
            // one asked for.
            let conf = std::fs::read(dir.path().join("sled/conf")).unwrap();
            let conf = String::from_utf8_lossy(&conf);
            assert!(
                conf.contains(&format!("use_compression: {}", !asked)),
                "{conf}"
            );
        }
    });
}

/// Sends a snapshot to another node's store the way openraft does: receive, copy, install.
async fn install(follower: &mut StateMachineStore, snap: ordo::raft::Snapshot) {
    let mut incoming = follower.begin_receiving_snapshot().await.unwrap();
    let mut src = snap.snapshot;
    tokio::io::copy(&mut *src, &mut *incoming).await.unwrap();
    follower
        .install_snapshot(&snap.meta, incoming)
        .await
        .unwrap();
}

/// Applies go on while a snapshot is dumped (it takes seconds on a big store); the snapshot
/// must still be the state at the point it began: installed elsewhere and followed by the
/// same later entries, it must give the same state.
#[test]
fn a_snapshot_dumped_while_applies_go_on_is_the_state_where_it_began() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let (_d1, _l1, mut leader) = PLAIN.build().await.unwrap();
            let (_d2, _l2, mut follower) = PLAIN.build().await.unwrap();
            let base = 20_000u64;
            for chunk in (1..=base).collect::<Vec<_>>().chunks(500) {
                let entries: Vec<Entry> = chunk
                    .iter()
                    .map(|&i| entry(i, create("c", Some(&format!("k{i}")), i as i64)))
                    .collect();
                leader.apply(entries).await.unwrap();
            }

            let mut builder = leader.get_snapshot_builder().await;
            let build = tokio::spawn(async move { builder.build_snapshot().await });
            // While it runs: pay orders all over the id range, create more, retry a key.
            let mut later = Vec::new();
            let mut during = 0;
            for n in 1..=4_000u64 {
                let at = (base + n) as i64;
                let cmd = match n % 3 {
                    0 => set_status((n * 7919) % base + 1, OrderStatus::Paid, None, None, at),
                    1 => create("d", Some(&format!("late{n}")), at),
                    _ => create("c", Some(&format!("k{}", n % 100 + 1)), at),
                };
                let e = entry(base + n, cmd);
                later.push(e.clone());
                leader.apply([e]).await.unwrap();
                if !build.is_finished() {
                    during += 1;
                } else if during > 0 && n > 1_000 {
                    break;
                }
            }
            let snap = build.await.unwrap().unwrap();
            assert!(during > 0, "no apply ran while the snapshot was dumped");
            assert_eq!(snap.meta.last_log_id, Some(log_id(1, base)));

            install(&mut follower, snap).await;
            assert_eq!(
                order_count(&follower),
                base,
                "the snapshot holds the orders of its point, no later ones"
            );
            follower.apply(later).await.unwrap();
            assert_eq!(
                follower.reader().state_digest().unwrap(),
                leader.reader().state_digest().unwrap()
            );
            // The digest leaves out the listing indexes, their counters and the change log.
            assert_same_listings_and_changes(&leader, &follower, &["c", "d"]);
        });
}

/// Two stores list the same orders under every filter, with the same totals, and hold the
/// same change records.
fn assert_same_listings_and_changes(
    a: &StateMachineStore,
    b: &StateMachineStore,
    customers: &[&str],
) {
    for status in OrderStatus::ALL.map(Some).into_iter().chain([None]) {
        for customer_id in customers.iter().map(|c| Some(c.to_string())).chain([None]) {
            let filter = OrderFilter {
                status,
                customer_id,
            };
            let list = |s: &StateMachineStore| {
                let page = s
                    .reader()
                    .list(&filter, PageStart::after(0), u64::MAX)
                    .unwrap();
                (
                    page.total,
                    page.orders.iter().map(|o| o.id).collect::<Vec<_>>(),
                )
            };
            assert_eq!(list(a), list(b), "{filter:?}");
        }
    }
    let changes = |s: &StateMachineStore| s.reader().changes_from(0, usize::MAX).unwrap();
    let (ca, cb) = (changes(a), changes(b));
    assert_eq!(
        (ca.oldest, ca.newest),
        (cb.oldest, cb.newest),
        "change log bounds"
    );
    assert_eq!(ca.changes, cb.changes);
}

fn open_with_retention(dir: &TempDir, revisions: u64) -> (LogStore, StateMachineStore) {
    let mut config = StoreConfig::new(dir.path());
    config.change_retention = store::ChangeRetention {
        revisions,
        max_age_ms: None,
    };
    store::open(&config).unwrap()
}

/// Trimming a change record ahead of a dump's walk would make the dump save it; so while a
/// dump runs only records behind its walk are trimmed, and the rest goes when it is done.
/// The snapshot carries the change log of its point either way.
#[test]
fn the_change_log_is_trimmed_behind_a_dump_and_caught_up_after_it() {
    rt().block_on(async {
        let (d1, d2) = (TempDir::new().unwrap(), TempDir::new().unwrap());
        let (_l1, mut leader) = open_with_retention(&d1, 1000);
        let (_l2, mut follower) = open_with_retention(&d2, 1000);
        let mut index = 0;
        let mut apply = |n: u64| {
            let entries: Vec<Entry> = (index + 1..=index + n)
                .map(|i| entry(i, create("c", None, i as i64)))
                .collect();
            index += n;
            entries
        };
        for _ in 0..10 {
            leader.apply(apply(500)).await.unwrap();
        }
        let bounds = |s: &StateMachineStore| {
            let page = s.reader().changes_from(0, 0).unwrap();
            (page.oldest, page.newest)
        };
        assert_eq!(bounds(&leader), (4001, 5000));

        // Begun, not yet walking: nothing is behind the walk, so nothing is trimmed.
        let mut builder = leader.get_snapshot_builder().await;
        for _ in 0..4 {
            leader.apply(apply(500)).await.unwrap();
        }
        assert_eq!(bounds(&leader), (4001, 7000));

        let snap = builder.build_snapshot().await.unwrap();
        // Done: each chunk trims up to 64 pages of 64 records, until the window holds.
        for _ in 0..10 {
            leader.apply(apply(1)).await.unwrap();
        }
        assert_eq!(bounds(&leader), (6011, 7010));

        install(&mut follower, snap).await;
        assert_eq!(
            bounds(&follower),
            (4001, 5000),
            "the snapshot's own change log"
        );
    });
}

#[test]
fn snapshot_carries_orders_to_another_node() {
    rt().block_on(async {
        let (_d1, _l1, mut leader) = PLAIN.build().await.unwrap();
        let (_d2, _l2, mut follower) = PLAIN.build().await.unwrap();
        let entries: Vec<Entry> = (1..=2500)
            .map(|i| entry(i, create("snap", Some(&format!("k{i}")), i as i64)))
            .collect();
        leader.apply(entries).await.unwrap();
        leader
            .apply([entry(
                2501,
                set_status(7, OrderStatus::Paid, None, None, 3000),
            )])
            .await
            .unwrap();

        let snap = snapshot_of(&mut leader).await;
        install(&mut follower, snap).await;

        assert_eq!(
            follower.applied_state().await.unwrap().0,
            Some(log_id(1, 2501))
        );
        assert_eq!(
            follower.reader().state_digest().unwrap(),
            leader.reader().state_digest().unwrap()
        );
        assert_eq!(
            follower.reader().get(7).unwrap().unwrap().0.status,
            OrderStatus::Paid
        );
        // Idempotency records travel too: a retry on the follower replays, not re-creates.
        let out = follower
            .apply([entry(2502, create("snap", Some("k5"), 4000))])
            .await
            .unwrap();
        let outcome = out[0][0].clone();
        assert!(outcome.replayed);
        assert_eq!(outcome.order().unwrap().id, 5);
        assert_eq!(order_count(&follower), 2500);
    });
}

#[test]
fn idempotency_replays_rejects_reuse_and_expires() {
    rt().block_on(async {
        let (_d, _l, mut sm) = PLAIN.build().await.unwrap();
        let day = 24 * 60 * 60 * 1000;
        let out = sm
            .apply([
                entry(1, create("a", Some("key-1"), 1_000)),
                entry(2, create("a", Some("key-1"), 2_000)),
                entry(3, create("b", Some("key-1"), 3_000)),
                entry(
                    4,
                    set_status(1, OrderStatus::Paid, Some(1), Some("pay-1"), 4_000),
                ),
                entry(
                    5,
                    set_status(1, OrderStatus::Paid, Some(1), Some("pay-1"), 5_000),
                ),
                entry(6, set_status(1, OrderStatus::Shipped, Some(1), None, 6_000)),
            ])
            .await
            .unwrap();
        let out: Vec<_> = out
            .into_iter()
            .map(|mut outcomes| outcomes.remove(0))
            .collect();
        assert_eq!(out[0].clone().order().unwrap().id, 1);
        assert!(!out[0].replayed);
        assert!(
            out[1].replayed && out[1].clone().order().unwrap().id == 1,
            "same key, same body"
        );
        assert_eq!(out[2].result, Err(Rejection::IdempotencyKeyReused));
        assert_eq!(out[3].clone().order().unwrap().version, 2);
        assert!(
            out[4].replayed,
            "status change retried with its key is not applied twice"
        );
        assert_eq!(out[4].clone().order().unwrap().version, 2);
        // A write answers with its change's revision; a replay with the first one's; a
        // refused write with none.
        let revisions: Vec<Option<u64>> = out.iter().map(|o| o.revision).collect();
        assert_eq!(revisions, [Some(1), Some(1), None, Some(2), Some(2), None]);
        assert_eq!(
            out[5].result,
            Err(Rejection::VersionConflict {
                expected: 1,
                actual: 2
            })
        );
        assert_eq!(sm.reader().get(1).unwrap().unwrap().0.version, 2);

        // One stamp a day ahead (a leader with a wrong clock) moves the clock one step only:
        // the key is still remembered, and the retry is replayed, not applied again.
        let out = sm
            .apply([entry(7, create("a", Some("key-1"), 1_000 + day + 1))])
            .await
            .unwrap();
        assert!(
            out[0][0].replayed,
            "a far-ahead stamp must not expire the key"
        );
        // Nor does a whole entry of commands sharing such a stamp: one step per stamp value.
        let far = (0..200)
            .map(|_| create("far", None, 1_000 + day + 2))
            .collect();
        sm.apply([Entry {
            log_id: log_id(1, 8),
            payload: EntryPayload::Normal(CommandBatch { commands: far }),
        }])
        .await
        .unwrap();
        let out = sm
            .apply([entry(9, create("a", Some("key-1"), 1_000 + day + 1))])
            .await
            .unwrap();
        assert!(
            out[0][0].replayed,
            "a far-ahead batch must not expire the key"
        );

        // After 24 h of the clock moving in steps the key is free again: the same request
        // creates anew.
        let step = 10 * 60 * 1000;
        let ticks: Vec<Entry> = (1..=(day / step + 1))
            .map(|i| {
                entry(
                    9 + i as u64,
                    set_status(999, OrderStatus::Paid, None, None, 1_000 + i * step),
                )
            })
            .collect();
        let next = 10 + ticks.len() as u64;
        sm.apply(ticks).await.unwrap();
        let out = sm
            .apply([entry(
                next,
                create("a", Some("key-1"), 1_000 + day + 2 * step),
            )])
            .await
            .unwrap();
        let o = out[0][0].clone();
        assert!(!o.replayed);
        let order = o.order().unwrap();
        assert_eq!(order.id, 202);
        assert_eq!(order.created_at_ms, 1_000 + day + 2 * step);
    });
}

/// A leader stamping a day ahead does not freeze later orders' times at that future: each
/// order carries its own stamp, and a status change is never dated before the order's last one.
#[test]
fn order_times_follow_their_own_stamps_after_a_far_ahead_one() {
    let dir = TempDir::new().unwrap();
    rt().block_on(async {
        let (_log, mut sm) = store::open(&StoreConfig::new(dir.path())).unwrap();
        let day = 24 * 60 * 60 * 1000;
        let t = 1_700_000_000_000i64;
        let out = sm
            .apply([
                entry(1, create("a", None, t)),
                entry(2, create("a", None, t + day)),
                entry(3, create("a", None, t + 1_000)),
                entry(4, set_status(2, OrderStatus::Paid, None, None, t + 2_000)),
            ])
            .await
            .unwrap();
        let times: Vec<(i64, i64)> = out
            .iter()
            .map(|o| {
                let order = o[0].clone().order().unwrap();
                (order.created_at_ms, order.updated_at_ms)
            })
            .collect();
        assert_eq!(times[2], (t + 1_000, t + 1_000), "not frozen at the future");
        assert_eq!(times[3], (t + day, t + day), "never before its last change");
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Two fresh state machines fed the same commands — one entry per command cut into
    /// apply calls one way, and commands grouped into batch entries another way — return
    /// identical results and end in identical state.
    #[test]
    fn same_log_same_state(ops in proptest::collection::vec((0u8..4, 0u64..8, 0usize..5, 0u8..6), 1..60),
                           cut_a in 1usize..7, group_b in 1usize..9) {
        let mut at = 0i64;
        let commands: Vec<OrderCommand> = ops.iter().map(|&(kind, id, st, key)| {
            at += 3_600_000; // an hour per command: keys expire along the way
            let key = (key < 4).then(|| format!("k{key}"));
            match kind {
                0 | 1 => create(&format!("c{id}"), key.as_deref(), at),
                2 => set_status(id, OrderStatus::ALL[st], None, key.as_deref(), at),
                _ => set_status(id, OrderStatus::ALL[st], Some(id % 3 + 1), key.as_deref(), at),
            }
        }).collect();
        let single: Vec<Entry> = commands.iter().enumerate().map(|(i, c)| entry(i as u64 + 1, c.clone())).collect();
        let grouped: Vec<Entry> = commands.chunks(group_b).enumerate().map(|(i, chunk)| Entry {
            log_id: log_id(1, i as u64 + 1),
            payload: EntryPayload::Normal(CommandBatch { commands: chunk.to_vec() }),
        }).collect();
        rt().block_on(async {
            let (_da, _la, mut a) = PLAIN.build().await.unwrap();
            let (_db, _lb, mut b) = PLAIN.build().await.unwrap();
            let mut ra = Vec::new();
            for chunk in single.chunks(cut_a) { ra.extend(a.apply(chunk.to_vec()).await.unwrap()); }
            let rb = b.apply(grouped.clone()).await.unwrap();
            prop_assert_eq!(rb.len(), grouped.len());
            prop_assert_eq!(ra.concat(), rb.concat());
            prop_assert_eq!(a.reader().state_digest().unwrap(), b.reader().state_digest().unwrap());
            Ok(())
        })?;
    }
}

/// openraft 0.9 purges the log up to a received snapshot before the state machine has
/// installed it. A crash in between must not leave a log that starts after the state machine
/// ends: while a snapshot comes in, the purge stops at what the state machine has applied.
#[test]
fn a_purge_during_a_snapshot_install_never_passes_the_state_machine() {
    let dir = TempDir::new().unwrap();
    rt().block_on(async {
        let (mut log, mut sm) = store::open(&StoreConfig::new(dir.path())).unwrap();
        let entries: Vec<Entry> = (1..=150)
            .map(|i| entry(i, create("c", None, i as i64)))
            .collect();
        log.blocking_append(entries.clone()).await.unwrap();
        sm.apply(entries[..100].to_vec()).await.unwrap();

        // A snapshot at 140 starts coming in; openraft purges up to it at once.
        let _incoming = sm.begin_receiving_snapshot().await.unwrap();
        log.purge(log_id(1, 140)).await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 100)));
        assert_eq!(log.try_get_log_entries(101..151).await.unwrap().len(), 50);

        // Crash before the install: what the state machine lacks is still in the log.
        drop((log, sm, _incoming));
        let (mut log, mut sm) = store::open(&StoreConfig::new(dir.path())).unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 100)));
        assert!(state.last_purged_log_id <= applied);
        let next = log.try_get_log_entries(101..102).await.unwrap();
        assert_eq!(
            next.len(),
            1,
            "the entry after the state machine is still there"
        );

        // Outside an install, a purge goes as far as asked.
        sm.apply(entries[100..].to_vec()).await.unwrap();
        log.purge(log_id(1, 140)).await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 140)));
    });
}

/// A leader's 200 creates (entries 1..=200) and its snapshot of them.
async fn leader_snapshot_of_200_creates() -> (Vec<Entry>, ordo::raft::Snapshot) {
    let (_d, _l, mut leader) = PLAIN.build().await.unwrap();
    let all: Vec<Entry> = (1..=200)
        .map(|i| entry(i, create("c", None, i as i64)))
        .collect();
    leader.apply(all.clone()).await.unwrap();
    (all, snapshot_of(&mut leader).await)
}

/// A snapshot of `sm` as it is.
async fn snapshot_of(sm: &mut StateMachineStore) -> ordo::raft::Snapshot {
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap()
}

/// The usual case of a lagging follower: its log ends before the snapshot does. The purge
/// held back during the install is done when the install is, so the entries that follow the
/// snapshot never sit behind a hole (a restart would fail reading it).
#[test]
fn a_purge_held_during_an_install_is_done_when_the_install_is() {
    let dir = TempDir::new().unwrap();
    rt().block_on(async {
        let (all, snap) = leader_snapshot_of_200_creates().await;

        let (mut log, mut sm) = store::open(&StoreConfig::new(dir.path())).unwrap();
        log.blocking_append(all[..150].to_vec()).await.unwrap();
        sm.apply(all[..100].to_vec()).await.unwrap();
        let mut incoming = sm.begin_receiving_snapshot().await.unwrap();
        log.purge(log_id(1, 200)).await.unwrap(); // openraft's purge, before the install
        assert_eq!(
            log.get_log_state().await.unwrap().last_purged_log_id,
            Some(log_id(1, 100))
        );
        let mut src = snap.snapshot;
        tokio::io::copy(&mut *src, &mut *incoming).await.unwrap();
        sm.install_snapshot(&snap.meta, incoming).await.unwrap();
        let after: Vec<Entry> = (201..=210)
            .map(|i| entry(i, create("c", None, i as i64)))
            .collect();
        log.blocking_append(after).await.unwrap();
        drop((log, sm));

        let (mut log, mut sm) = store::open(&StoreConfig::new(dir.path())).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 200)));
        assert_eq!(state.last_log_id, Some(log_id(1, 210)));
        assert!(log.try_get_log_entries(101..201).await.unwrap().is_empty());
        assert_eq!(log.try_get_log_entries(201..211).await.unwrap().len(), 10);
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 200)));
    });
}

/// A page of changes read for a stream stops at a byte budget (each change carries its whole
/// order, tens of KB for the largest), at one change at least: 256 of the largest orders held
/// ~9 MB per stream behind the feed's ring.
#[test]
fn a_page_of_changes_stops_at_its_byte_budget() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = store::open(&StoreConfig::new(dir.path())).unwrap();
    let largest = |i: u64| OrderCommand {
        op: OrderOp::Create(NewOrder {
            customer_id: "c".repeat(64),
            items: (0..100)
                .map(|n| LineItem {
                    sku: format!("{n:0>64}"),
                    quantity: 1,
                    unit_price_cents: 1,
                })
                .collect(),
            note: Some("n".repeat(1000)),
        }),
        idempotency_key: None,
        stamped_at_ms: i as i64,
    };
    rt().block_on(async {
        let entries: Vec<Entry> = (1..=40).map(|i| entry(i, largest(i))).collect();
        sm.apply(entries).await.unwrap();
    });
    let reader = sm.reader();
    assert_eq!(reader.changes_from(1, 256).unwrap().changes.len(), 40);
    // One order is ~11 KB here: 64 KiB holds a handful.
    let page = reader.changes_within(1, 256, 64 * 1024).unwrap();
    assert!(
        (3..=8).contains(&page.changes.len()),
        "{}",
        page.changes.len()
    );
    assert_eq!(page.changes[0].revision, 1);
    assert_eq!(reader.changes_within(7, 256, 1).unwrap().changes.len(), 1);
}

/// A received snapshot is renamed over the current one before its load is marked. A crash
/// between the two leaves the file ahead of the state machine; the next open loads it, since
/// openraft takes the current snapshot for what the node holds and would not send it again.
#[test]
fn a_received_snapshot_renamed_but_not_loaded_is_loaded_at_open() {
    let dir = TempDir::new().unwrap();
    rt().block_on(async {
        let (all, snap) = leader_snapshot_of_200_creates().await;

        let (log, mut sm) = store::open(&StoreConfig::new(dir.path())).unwrap();
        sm.apply(all[..100].to_vec()).await.unwrap();
        drop((log, sm));
        // The crash point: the file is in place, the load not begun.
        let mut src = snap.snapshot;
        let mut current = tokio::fs::File::create(dir.path().join("snapshots/current.snap"))
            .await
            .unwrap();
        tokio::io::copy(&mut *src, &mut current).await.unwrap();
        current.sync_all().await.unwrap();
        drop(current);

        let (_log, mut sm) = store::open(&StoreConfig::new(dir.path())).unwrap();
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 200)));
        assert_eq!(order_count(&sm), 200);
    });
}

/// A status-filtered listing taken while orders change status lists only orders in that
/// status: the index walk is not a point-in-time view, so each order is checked as loaded.
#[test]
fn a_status_filtered_list_during_status_changes_lists_only_that_status() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = store::open(&StoreConfig::new(dir.path())).unwrap();
    const ORDERS: u64 = 3000;
    rt().block_on(async {
        let creates: Vec<Entry> = (1..=ORDERS)
            .map(|i| entry(i, create("c", None, i as i64)))
            .collect();
        sm.apply(creates).await.unwrap();
    });
    let reader = sm.reader();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lister = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let pending = OrderFilter {
                status: Some(OrderStatus::Pending),
                customer_id: None,
            };
            let mut lists = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || lists == 0 {
                let page = reader.list(&pending, PageStart::number(1), 1000).unwrap();
                for o in &page.orders {
                    assert_eq!(o.status, OrderStatus::Pending, "order {} listed", o.id);
                }
                lists += 1;
            }
            lists
        })
    };
    rt().block_on(async {
        for id in 1..=ORDERS {
            let cmd = set_status(id, OrderStatus::Paid, None, None, 0);
            sm.apply([entry(ORDERS + id, cmd)]).await.unwrap();
        }
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let lists = lister.join().expect("no listed order in another status");
    assert!(lists > 0);
}

/// What replication reads for one append is bounded in bytes, never empty.
#[test]
fn replication_reads_are_bounded_in_bytes_but_never_empty() {
    let dir = TempDir::new().unwrap();
    rt().block_on(async {
        let mut config = StoreConfig::new(dir.path());
        config.read_batch_bytes = 1000;
        let (mut log, _sm) = store::open(&config).unwrap();
        let entries: Vec<Entry> = (1..=50)
            .map(|i| entry(i, create("c", None, i as i64)))
            .collect();
        log.blocking_append(entries).await.unwrap();
        let mut reader = log.get_log_reader().await;
        let first = reader.limited_get_log_entries(1, 51).await.unwrap();
        assert!(
            (1..50).contains(&first.len()),
            "{} entries for 1000 bytes",
            first.len()
        );
        assert_eq!(first[0].log_id, log_id(1, 1));
        config.read_batch_bytes = 1;
        drop((log, _sm, reader));
        let (mut log, _sm) = store::open(&config).unwrap();
        let mut reader = log.get_log_reader().await;
        assert_eq!(
            reader.limited_get_log_entries(7, 51).await.unwrap().len(),
            1
        );
        assert!(reader
            .limited_get_log_entries(7, 7)
            .await
            .unwrap()
            .is_empty());

        // Never past a missing entry: a hole is not copied to a follower.
        config.read_batch_bytes = 1 << 20;
        drop((log, _sm, reader));
        let (mut log, _sm) = store::open(&config).unwrap();
        log.purge(log_id(1, 50)).await.unwrap();
        let mut with_hole: Vec<Entry> = (51..=60)
            .map(|i| entry(i, create("c", None, i as i64)))
            .collect();
        with_hole.remove(5); // no entry 56
        log.blocking_append(with_hole).await.unwrap();
        let mut reader = log.get_log_reader().await;
        let got = reader.limited_get_log_entries(51, 61).await.unwrap();
        assert_eq!(
            got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![51, 52, 53, 54, 55]
        );
        // A missing first entry (a hole, or entries a purge removed after openraft chose to
        // send them) is an empty batch, which openraft takes as a heartbeat; an error would
        // stop the Raft core.
        assert!(reader
            .limited_get_log_entries(56, 61)
            .await
            .unwrap()
            .is_empty());
        assert!(reader
            .limited_get_log_entries(40, 61)
            .await
            .unwrap()
            .is_empty());
    });
}

/// What a history of commands leaves in the state machine is part of the stored and
/// replicated format: replicas of different builds, and a build reading an older store, must
/// reach the same state. A change to what apply writes fails here first.
///
/// History of the digest: `0db121bd...` from the code before the command semantics moved into
/// `order/` (commit d50d92d) until the change feed, which added each change's revision
/// (`m:revision`, and `v` + id per order; the change records themselves are left out of the
/// digest). With those two left out, the digest was checked to be `0db121bd...` still: the
/// feed changed nothing else. Clusters must run one build across that change. Then `9d3bef0b...`
/// until the listing indexes (`c`, `s`) and counters (`n`) left the digest, being derived from
/// the orders and laid out anew by the lists that scale (issue #17): the build before that,
/// with `c` and `s` left out of its digest, gave `ddb19dcf...` too. Then `331aa7c0...` since
/// layout 2 (`store/upgrade.rs`) moved each order's revision from `v` + id into the order's
/// value and marked `m:layout`: the new build's state, digested with each order turned back
/// into the two old records and the mark left out, gave `ddb19dcf...` (checked once by hand).
/// Then `7a7b009e...` since layout 3 (the status index in maps of 64 ids, left out of the
/// digest like the rest of the listing indexes): with the mark written as 2, the new build
/// gave `331aa7c0...` (checked once, by changing the mark the upgrade writes). Then
/// `6866dc22...` since layout 4 (the change log in pages of 64 revisions, out of the digest
/// like the records before): with the mark written as 3, `7a7b009e...` (checked the same way).
/// Then `8507bd1b...` since layout 5 (the customer index in heads and runs, out of the digest
/// as before): with the mark written as 4, `6866dc22...` (checked the same way). Then
/// `28579f1a...` since layout 6 (each idempotency record ends with its change's revision):
/// with the mark written as 5 and the records in their old shape, `8507bd1b...` (checked the
/// same way). Then `b4be6838...` since layout 7 (log entries in chunks; the state machine is as
/// in 6): with the mark written as 6, `28579f1a...` (checked the same way).
#[test]
fn a_fixed_history_leaves_the_state_it_always_did() {
    rt().block_on(async {
        let (_d, _l, mut sm) = PLAIN.build().await.unwrap();
        let mut x: u64 = 0x5eed;
        let mut next = |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        let mut stamp = 1_700_000_000_000i64;
        let mut entries = Vec::new();
        for i in 1..=3000u64 {
            // Mostly a little forwards; sometimes the same stamp, a step back, hours, a day.
            stamp += match next(10) {
                0 => 0,
                1 => -3_000,
                2 => 3 * 3_600_000,
                3 => 26 * 3_600_000,
                _ => next(2000) as i64,
            };
            let key = format!("k{}", next(40));
            let key = (next(3) > 0).then_some(key.as_str());
            let command = if next(2) == 0 {
                create(&format!("c{}", next(7)), key, stamp)
            } else {
                let id = 1 + next(i.min(200));
                let status = OrderStatus::ALL[next(5) as usize];
                let expected = (next(2) == 0).then(|| 1 + next(3));
                set_status(id, status, expected, key, stamp)
            };
            entries.push(entry(i, command));
        }
        for chunk in entries.chunks(100) {
            sm.apply(chunk.to_vec()).await.unwrap();
        }
        assert_eq!(
            sm.reader().state_digest().unwrap(),
            "b4be6838e4fc480e588ee612e653171c4c3e29f9526ae7f55a937526a7972553",
            "the stored state of a fixed history changed"
        );
    });
}

/// Every filter's listing, walked by cursor and by page number, against the orders themselves:
/// the same ids in id order, `total` from the counters equal to the count, `next_after` on
/// every page but the last.
fn assert_listings_match(reader: &ordo::store::OrderReader, customers: &[&str]) {
    let all = reader
        .list(&OrderFilter::default(), PageStart::number(1), u64::MAX)
        .unwrap()
        .orders;
    let mut filters = vec![OrderFilter::default()];
    for status in OrderStatus::ALL.map(Some).into_iter().chain([None]) {
        for customer in customers.iter().map(|c| Some(c.to_string())).chain([None]) {
            filters.push(OrderFilter {
                status,
                customer_id: customer,
            });
        }
    }
    for filter in &filters {
        let expected: Vec<u64> = all
            .iter()
            .filter(|o| filter.status.is_none_or(|s| o.status == s))
            .filter(|o| {
                filter
                    .customer_id
                    .as_ref()
                    .is_none_or(|c| &o.customer_id == c)
            })
            .map(|o| o.id)
            .collect();
        for per_page in [1, 7, 1000] {
            let (mut by_cursor, mut by_number) = (Vec::new(), Vec::new());
            let mut pages: Vec<(u64, Vec<u64>)> = Vec::new(); // (cursor, ids) of each page
            let mut after = 0;
            for n in 1..=expected.len() as u64 + 2 {
                let page = reader
                    .list(filter, PageStart::after(after), per_page)
                    .unwrap();
                assert_eq!(page.total, expected.len() as u64, "{filter:?}");
                by_cursor.extend(page.orders.iter().map(|o| o.id));
                pages.push((after, page.orders.iter().map(|o| o.id).collect()));
                let numbered = reader.list(filter, PageStart::number(n), per_page).unwrap();
                assert_eq!(numbered.total, expected.len() as u64, "{filter:?}");
                by_number.extend(numbered.orders.iter().map(|o| o.id));
                match page.next_after {
                    Some(next) => {
                        assert_eq!(Some(&next), by_cursor.last(), "{filter:?}");
                        after = next;
                    }
                    None => break,
                }
            }
            assert_eq!(
                by_cursor, expected,
                "by cursor, {filter:?}, {per_page} per page"
            );
            assert_eq!(
                by_number, expected,
                "by number, {filter:?}, {per_page} per page"
            );
            // A page number counts from the cursor: page 2 after one page's cursor is the next.
            for pair in pages.windows(2) {
                let start = PageStart {
                    after: pair[0].0,
                    page: 2,
                };
                let second = reader.list(filter, start, per_page).unwrap();
                let ids: Vec<u64> = second.orders.iter().map(|o| o.id).collect();
                assert_eq!(ids, pair[1].1, "{filter:?}, {start:?}");
            }
        }
    }
}

/// The `c` keys of the store's customer index: (heads, runs).
fn customer_index_keys(tree: &sled::Tree) -> (usize, usize) {
    // `c`, the customer's length (u16) and bytes, then 0xFF (a head) or an 8-byte id (a run).
    let is_head = |k: &[u8]| k.len() == 3 + u16::from_be_bytes([k[1], k[2]]) as usize + 1;
    let keys: Vec<_> = tree.scan_prefix(b"c").keys().map(Result::unwrap).collect();
    let heads = keys.iter().filter(|k| is_head(k)).count();
    (heads, keys.len() - heads)
}

/// Rewrites the store's customer index as layout 4 and the versions before it kept it: an
/// entry per order, `c` + customer + id, whose value is the order's status tag (empty with
/// `statuses` false, as before the statuses were kept there), and with `counters` each
/// customer's counts by status at `c` + customer + 0xFF. Marks the store as layout 4.
fn write_old_customer_index(tree: &sled::Tree, statuses: bool, counters: bool) {
    for k in tree.scan_prefix(b"c").keys() {
        tree.remove(k.unwrap()).unwrap();
    }
    let mut counts = std::collections::BTreeMap::<Vec<u8>, [u64; 5]>::new();
    for v in tree.scan_prefix(b"o").values() {
        let (order, _revision): (Order, u64) = ordo::codec::decode(&v.unwrap()).unwrap();
        let customer = order.customer_id.as_bytes();
        let prefix = [&b"c"[..], &(customer.len() as u16).to_be_bytes(), customer].concat();
        let tag = order.status.tag();
        let value = if statuses { vec![tag] } else { Vec::new() };
        tree.insert([&prefix[..], &order.id.to_be_bytes()].concat(), value)
            .unwrap();
        counts.entry([&prefix[..], &[0xFF]].concat()).or_default()[usize::from(tag - 1)] += 1;
    }
    if counters {
        for (k, c) in counts {
            tree.insert(k, ordo::codec::encode(&c).unwrap()).unwrap();
        }
    }
    tree.insert(b"m:layout", ordo::codec::encode(&4u64).unwrap())
        .unwrap();
}

#[test]
fn listing_counters_and_cursors_agree_with_the_orders_and_are_rebuilt_for_old_stores() {
    let dir = TempDir::new().unwrap();
    let customers = ["alice", "bob", "carol"];
    let moves = [
        OrderStatus::Paid,
        OrderStatus::Shipped,
        OrderStatus::Cancelled,
    ];
    // 50 orders per customer: a run of its older orders and a head of its newest.
    let orders = 150u64;
    let expected_index = (customers.len(), customers.len());
    rt().block_on(async {
        let (_log, mut sm) = store::open(&StoreConfig::new(dir.path())).unwrap();
        let mut index = 0;
        let mut next = |cmd| {
            index += 1;
            entry(index, cmd)
        };
        let mut entries: Vec<Entry> = (0..orders as usize)
            .map(|i| next(create(customers[i % 3], None, i as i64)))
            .collect();
        // Moves along the lifecycle, some of them refused (invalid transitions count nothing).
        for id in 1..=orders {
            for status in moves.iter().take((id % 4) as usize) {
                entries.push(next(set_status(id, *status, None, None, 100 + id as i64)));
            }
        }
        sm.apply(entries).await.unwrap();
        assert_listings_match(&sm.reader(), &customers);
        drop(sm);
    });
    let db = open_sled_once_released(&dir);
    let tree = db.open_tree("sm").unwrap();
    assert_eq!(customer_index_keys(&tree), expected_index);

    // A store as layout 4 left it: an entry per order with its status, and the counters, all
    // kept up to the applied entry (so only the layout says that they are to be rebuilt).
    write_old_customer_index(&tree, true, true);
    reopened_listings_match(&dir, (tree, db), &customers);
    let db = open_sled_once_released(&dir);
    let tree = db.open_tree("sm").unwrap();
    assert_eq!(
        customer_index_keys(&tree),
        expected_index,
        "no entry of one order is left"
    );

    // A store as the version before the customer counters left it: none of them, and its own
    // mark of how far the rest was kept. A stray counter of a customer without orders (no
    // version wrote one) must go too.
    write_old_customer_index(&tree, true, false);
    let applied = tree
        .remove(b"m:listing_at:2")
        .unwrap()
        .expect("the mark is stored");
    tree.insert(b"m:listing_at", applied).unwrap();
    let mut stray = b"c\x00\x04dave".to_vec();
    stray.push(0xFF);
    // Three orders paid (the counters are five counts, by status).
    let three_paid = ordo::codec::encode(&[0u64, 3, 0, 0, 0]).unwrap();
    tree.insert(stray, three_paid).unwrap();
    let with_dave = ["alice", "bob", "carol", "dave"];
    reopened_listings_match(&dir, (tree, db), &with_dave);

    // A store as a version without any counters left it: none of them, empty values in the
    // customer index, no mark of how far they were kept.
    let db = open_sled_once_released(&dir);
    let tree = db.open_tree("sm").unwrap();
    assert_eq!(
        customer_index_keys(&tree),
        expected_index,
        "dave's counters are gone"
    );
    assert_eq!(
        tree.get(b"m:listing_at").unwrap(),
        None,
        "the old mark is gone"
    );
    let derived: Vec<_> = tree
        .iter()
        .keys()
        .map(|k| k.unwrap())
        .filter(|k| k.starts_with(b"n") || &k[..] == b"m:listing_at:2")
        .collect();
    assert!(derived.len() >= 4, "the counters are stored: {derived:?}");
    for k in derived {
        tree.remove(k).unwrap();
    }
    write_old_customer_index(&tree, false, false);
    reopened_listings_match(&dir, (tree, db), &customers);
}

/// A store written before layout 6 holds idempotency records without the revision of their
/// change. They are not rewritten: a replay of one answers with no revision, records written
/// since answer with theirs, and the store is marked with layout 6 or later (which builds
/// before 6 refuse to open).
#[test]
fn idempotency_records_from_before_layout_6_still_replay() {
    let dir = TempDir::new().unwrap();
    // Two keyed writes, as log entries `index` and `index + 1`, stamped from `at` on.
    let keyed_writes = |index: u64, at: i64| {
        [
            entry(index, create("a", Some("old-create"), at)),
            entry(
                index + 1,
                set_status(1, OrderStatus::Paid, None, Some("old-pay"), at + 1_000),
            ),
        ]
    };
    rt().block_on(async {
        let (_log, mut sm) = store::open(&StoreConfig::new(dir.path())).unwrap();
        let out = sm.apply(keyed_writes(1, 1_000)).await.unwrap();
        assert_eq!((out[0][0].revision, out[1][0].revision), (Some(1), Some(2)));
    });
    let db = open_sled_once_released(&dir);
    let tree = db.open_tree("sm").unwrap();
    // The old shape: the same fields, less the revision at the end.
    for key in ["old-create", "old-pay"] {
        let k = [&b"i"[..], key.as_bytes()].concat();
        let record: IdempotencyRecord =
            ordo::codec::decode(&tree.get(&k).unwrap().unwrap()).unwrap();
        let old = (record.fingerprint, record.result, record.expires_at_ms);
        tree.insert(k, ordo::codec::encode(&old).unwrap()).unwrap();
    }
    tree.insert(b"m:layout", ordo::codec::encode(&5u64).unwrap())
        .unwrap();
    db.flush().unwrap();
    drop((tree, db));
    rt().block_on(async {
        let (_log, mut sm) = store::open(&StoreConfig::new(dir.path())).unwrap();
        // The same two writes retried, then a new keyed create and its retry.
        let mut entries = keyed_writes(3, 3_000).to_vec();
        entries.push(entry(5, create("b", Some("new"), 5_000)));
        entries.push(entry(6, create("b", Some("new"), 6_000)));
        let out = sm.apply(entries).await.unwrap();
        let out: Vec<_> = out.into_iter().map(|mut o| o.remove(0)).collect();
        assert!(out[0].replayed && out[1].replayed && out[3].replayed);
        assert_eq!(out[0].clone().order().unwrap().id, 1);
        assert_eq!(out[1].clone().order().unwrap().version, 2);
        let revisions: Vec<Option<u64>> = out.iter().map(|o| o.revision).collect();
        assert_eq!(revisions, [None, None, Some(3), Some(3)]);
        assert_eq!(order_count(&sm), 2, "no replay applied again");
    });
    let db = open_sled_once_released(&dir);
    let layout: u64 = ordo::codec::decode(
        &db.open_tree("sm")
            .unwrap()
            .get(b"m:layout")
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    // The current layout (7 since the log's chunks), which no build before 6 opens.
    assert_eq!(layout, 7);
}

/// Flushes and closes the store's sled database (as a test edited it), opens the store (its
/// open-time passes run) and checks every listing against the orders.
fn reopened_listings_match(dir: &TempDir, (tree, db): (sled::Tree, sled::Db), customers: &[&str]) {
    db.flush().unwrap();
    drop((tree, db));
    rt().block_on(async {
        let (_log, sm) = store::open(&StoreConfig::new(dir.path())).unwrap();
        assert_listings_match(&sm.reader(), customers);
    });
}

/// The store's sled database, opened as soon as the stores that had it open let it go (sled
/// releases its file lock from a thread of its own).
fn open_sled_once_released(dir: &TempDir) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::open(dir.path().join("sled")) {
            Ok(db) => return db,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "{e}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn a_store_as_the_release_before_left_it_is_moved_at_open_and_keeps_every_revision() {
    let dir = TempDir::new().unwrap();
    let customers = ["alice", "bob"];
    let (expected, changes): (Vec<(Order, u64)>, Vec<Change>) = rt().block_on(async {
        let (_log, mut sm) = store::open(&StoreConfig::new(dir.path())).unwrap();
        let mut entries: Vec<Entry> = (1..=30)
            .map(|i| entry(i, create(customers[i as usize % 2], None, i as i64)))
            .collect();
        for id in 1..=10u64 {
            entries.push(entry(
                30 + id,
                set_status(id, OrderStatus::Paid, None, None, 100),
            ));
        }
        sm.apply(entries).await.unwrap();
        let reader = sm.reader();
        let changes = reader.changes_from(1, 100).unwrap().changes;
        assert_eq!(changes.len(), 40);
        let orders = (1..=30)
            .map(|id| reader.get(id).unwrap().unwrap())
            .collect();
        (orders, changes)
    });
    assert_eq!(
        expected[0].1, 31,
        "order 1's last change is its status change"
    );
    assert_eq!(expected[29].1, 30);

    // The release before: each order's value is the order alone, its revision under `v` + id
    // (none for order 30: last changed before revisions were kept), no layout mark, the
    // customer index as one key per order and no customer counters, its own listing mark, the
    // status index as one key per order and the change log as one key per record. Orders 1-5 stay as they are, as if a pass had moved
    // them and was cut short.
    let db = open_sled_once_released(&dir);
    let tree = db.open_tree("sm").unwrap();
    assert!(
        tree.remove(b"m:layout").unwrap().is_some(),
        "the layout is marked"
    );
    let listing_at = tree.remove(b"m:listing_at:2").unwrap().unwrap();
    tree.insert(b"m:listing_at", listing_at).unwrap();
    write_old_customer_index(&tree, true, false);
    tree.remove(b"m:layout").unwrap();
    let maps: Vec<_> = tree.scan_prefix(b"b").keys().map(Result::unwrap).collect();
    assert!(!maps.is_empty(), "the status index is in maps");
    for map in maps {
        tree.remove(map).unwrap();
    }
    for (order, _) in &expected {
        let old_status_key = [&b"s"[..], &[order.status.tag()], &order.id.to_be_bytes()].concat();
        tree.insert(old_status_key, &[][..]).unwrap();
    }
    // A change log page is its records, each a 2-byte length and its encoding.
    let pages: Vec<_> = tree.scan_prefix(b"f").map(Result::unwrap).collect();
    assert_eq!(pages.len(), 1, "40 changes are one page");
    let mut old_records = 0;
    for (key, page) in pages {
        let mut rest = &page[..];
        while !rest.is_empty() {
            let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            let record: ChangeRecord = ordo::codec::decode(&rest[2..2 + len]).unwrap();
            let old_key = [&b"e"[..], &record.revision.to_be_bytes()].concat();
            tree.insert(old_key, &rest[2..2 + len]).unwrap();
            old_records += 1;
            rest = &rest[2 + len..];
        }
        tree.remove(key).unwrap();
    }
    assert_eq!(old_records, 40);
    for (order, revision) in &expected[5..] {
        let id = order.id.to_be_bytes();
        let key = [&b"o"[..], &id].concat();
        tree.insert(key, ordo::codec::encode(order).unwrap())
            .unwrap();
        if order.id != 30 {
            let old_revision = [&b"v"[..], &id].concat();
            tree.insert(old_revision, ordo::codec::encode(revision).unwrap())
                .unwrap();
        }
    }
    db.flush().unwrap();
    drop((tree, db));

    rt().block_on(async {
        let (_log, sm) = store::open(&StoreConfig::new(dir.path())).unwrap();
        let reader = sm.reader();
        for (order, revision) in &expected {
            let revision = if order.id == 30 { 0 } else { *revision };
            assert_eq!(
                reader.get(order.id).unwrap(),
                Some((order.clone(), revision))
            );
        }
        let page = reader
            .list(&OrderFilter::default(), PageStart::number(1), 100)
            .unwrap();
        assert_eq!(page.orders.len(), 30);
        assert_eq!(page.revisions[0], 31);
        assert_listings_match(&reader, &customers);
        assert_eq!(reader.changes_from(1, 100).unwrap().changes, changes);
        let from_the_middle = reader.changes_from(17, 5).unwrap();
        assert_eq!(from_the_middle.changes, changes[16..21]);
        assert_eq!((from_the_middle.oldest, from_the_middle.newest), (1, 40));
    });
    let db = open_sled_once_released(&dir);
    let tree = db.open_tree("sm").unwrap();
    assert_eq!(tree.scan_prefix(b"v").count(), 0, "no revision key is left");
    assert_eq!(
        tree.scan_prefix(b"s").count(),
        0,
        "no status key of one order is left"
    );
    assert_eq!(
        tree.scan_prefix(b"e").count(),
        0,
        "no change record key is left"
    );
    assert_eq!(
        customer_index_keys(&tree),
        (customers.len(), 0),
        "a head per customer, and no customer index key of one order is left"
    );
    assert!(tree.get(b"m:layout").unwrap().is_some());
}

/// `/cluster/digest`'s pair (applied index, digest), taken while applies go on, is always
/// the digest of the state at that index: replicas compared by it never look divergent
/// because one scan overlapped an apply. The digest of each index comes from a second store
/// that applies the same entries one at a time.
#[test]
fn a_digest_taken_while_applies_go_on_is_of_the_index_it_names() {
    let entries: Vec<Entry> = (1..=1_500u64)
        .map(|i| entry(i, create(&format!("c{}", i % 40), None, i as i64)))
        .collect();
    let (load, rest) = entries.split_at(1_200);

    let oracle_dir = TempDir::new().unwrap();
    let mut at_index = std::collections::BTreeMap::new();
    rt().block_on(async {
        let (mut log, mut sm) = store::open(&StoreConfig::new(oracle_dir.path())).unwrap();
        log.blocking_append(load.to_vec()).await.unwrap();
        sm.apply(load.to_vec()).await.unwrap();
        at_index.insert(1_200u64, sm.reader().state_digest().unwrap());
        for e in rest {
            log.blocking_append([e.clone()]).await.unwrap();
            sm.apply([e.clone()]).await.unwrap();
            at_index.insert(e.log_id.index, sm.reader().state_digest().unwrap());
        }
    });

    let dir = TempDir::new().unwrap();
    rt().block_on(async {
        let (mut log, mut sm) = store::open(&StoreConfig::new(dir.path())).unwrap();
        log.blocking_append(load.to_vec()).await.unwrap();
        sm.apply(load.to_vec()).await.unwrap();
        let reader = sm.reader();
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let served = std::sync::Arc::new(AtomicUsize::new(0));
        let digester = {
            let (done, served) = (done.clone(), served.clone());
            std::thread::spawn(move || {
                let mut taken = Vec::new();
                while !done.load(SeqCst) {
                    // One scan per try: a scan that overlapped an apply gives None.
                    if let Some(pair) = reader.applied_digest(1).unwrap() {
                        taken.push(pair);
                        served.fetch_add(1, SeqCst);
                    }
                }
                taken
            })
        };
        for (n, e) in rest.iter().enumerate() {
            log.blocking_append([e.clone()]).await.unwrap();
            sm.apply([e.clone()]).await.unwrap();
            if n % 10 == 0 {
                // Applies back to back overlap every scan: leave room for one to finish.
                let before = served.load(SeqCst);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                while served.load(SeqCst) == before {
                    assert!(std::time::Instant::now() < deadline, "no digest finished");
                    tokio::task::yield_now().await;
                    std::thread::yield_now();
                }
            }
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let taken = digester.join().unwrap();
        assert!(taken.len() > 10, "only {} digests taken", taken.len());
        for (index, digest) in &taken {
            let index = index.expect("an applied index");
            assert_eq!(
                Some(digest),
                at_index.get(&index),
                "the digest said to be of index {index} is another state's"
            );
        }
    });
}
