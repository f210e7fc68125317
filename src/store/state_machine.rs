//! The order state machine over sled, its snapshots (dumped while applies go on, see
//! `snapshot_view`), and the read side the API uses.
//!
//! Layout of the `sm` tree (all values encoded by `codec`):
//! - `m:applied`, `m:membership`, `m:next_id`, `m:clock`, `m:last_stamp`: last applied log id,
//!   last membership, the next order id, and the state machine's clock (follows leader stamps,
//!   never backwards and at most `MAX_CLOCK_STEP_MS` per distinct stamp; idempotency records
//!   expire by it) with the last stamp seen;
//! - `o` + id: the order; `c` + customer + id and `s` + status + id: the listing indexes;
//! - `i` + key: an idempotency record; `x` + expiry + key: the same key ordered by expiry.
//!
//! A log entry carries a batch of commands. `apply` runs entries against an `Overlay` and
//! commits every chunk of them as one sled batch together with the chunk's last log id, so a
//! crash never leaves half a chunk.
//! Applying is deterministic: the only time used is the one the leader stamped into the
//! command.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::overlay::Overlay;
use super::snapshot_file::{self, SnapshotDir};
use super::snapshot_view::{DumpGuard, SnapshotView};
use super::{AppliedFloor, StoreError};
use crate::codec;
use crate::order::{
    create_order, transition, CommandOutcome, Order, OrderCommand, OrderOp, OrderStatus, Rejection,
};
use crate::raft::{
    ApplyResult, Entry, LogId, Snapshot, StorageError, StoredMembership, TypeConfig,
};

const K_APPLIED: &[u8] = b"m:applied";
const K_MEMBERSHIP: &[u8] = b"m:membership";
const K_NEXT_ID: &[u8] = b"m:next_id";
const K_CLOCK: &[u8] = b"m:clock";
/// The stamp of the last command applied (the clock moves once per stamp value).
const K_LAST_STAMP: &[u8] = b"m:last_stamp";
/// In the `raft` tree: set while a snapshot is being loaded into the state machine.
const K_INSTALLING: &[u8] = b"installing_snapshot";

/// How long an idempotency key is remembered, in the state machine's clock.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 60 * 60 * 1000;
/// The most one stamp may move the state machine's clock (which decides when
/// idempotency records expire) forwards: a leader whose clock is a day ahead cannot expire
/// every record with one write. After a long idle time the clock catches up step by step,
/// which only keeps records longer.
pub const MAX_CLOCK_STEP_MS: i64 = 10 * 60 * 1000;
/// At most this many expired idempotency records are dropped per command (bounded work, and
/// a bounded sled batch: a 256-command entry removes at most 4k keys). A command makes at
/// most one record, so expiry still outpaces creation.
const EXPIRE_PER_COMMAND: usize = 8;
/// sled's memory use grows steeply with the size of one atomic batch (measured: 300k keys in
/// batches of 4096 took +520 MB, in batches of ≤512 about +95 MB, the page cache), so big
/// writes are cut into batches no larger than these.
const INSTALL_BATCH_RECORDS: usize = 256;
/// Keys written per atomic apply batch, about (a command writes up to ~6).
const APPLY_CHUNK_KEYS: usize = 384;

fn order_key(id: u64) -> Vec<u8> {
    let mut k = vec![b'o'];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn customer_prefix(customer_id: &str) -> Vec<u8> {
    let mut k = vec![b'c'];
    k.extend_from_slice(&(customer_id.len() as u16).to_be_bytes());
    k.extend_from_slice(customer_id.as_bytes());
    k
}

fn status_prefix(status: OrderStatus) -> Vec<u8> {
    vec![b's', status.tag()]
}

fn with_id(mut prefix: Vec<u8>, id: u64) -> Vec<u8> {
    prefix.extend_from_slice(&id.to_be_bytes());
    prefix
}

fn idem_key(key: &str) -> Vec<u8> {
    let mut k = vec![b'i'];
    k.extend_from_slice(key.as_bytes());
    k
}

fn expiry_key(expires_at_ms: i64, key: &str) -> Vec<u8> {
    let mut k = vec![b'x'];
    k.extend_from_slice(&(expires_at_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

/// What the state machine remembers of a request made with an idempotency key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IdempotencyRecord {
    fingerprint: [u8; 32],
    result: Result<Order, Rejection>,
    expires_at_ms: i64,
}

fn fingerprint(op: &OrderOp) -> Result<[u8; 32], StoreError> {
    Ok(Sha256::digest(codec::encode(op)?).into())
}

fn get_decoded<T: serde::de::DeserializeOwned>(
    ov: &Overlay,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    match ov.get(key)? {
        Some(v) => Ok(Some(codec::decode(&v)?)),
        None => Ok(None),
    }
}

fn put_encoded<T: Serialize>(ov: &mut Overlay, key: &[u8], value: &T) -> Result<(), StoreError> {
    ov.insert(key.to_vec(), codec::encode(value)?);
    Ok(())
}

/// Applies one order command against the overlay and returns its outcome.
/// The state machine's clock after a command stamped `stamp`: never backwards, and never more
/// than `MAX_CLOCK_STEP_MS` forwards at once. Returns whether the stamp was cut short.
fn advance_clock(clock: Option<i64>, stamp: i64) -> (i64, bool) {
    match clock {
        None => (stamp, false),
        Some(c) if stamp <= c => (c, false),
        Some(c) if stamp - c <= MAX_CLOCK_STEP_MS => (stamp, false),
        Some(c) => (c + MAX_CLOCK_STEP_MS, true),
    }
}

/// Applies one order command against the overlay and returns its outcome; `clamped` counts
/// stamps that would have moved the clock by more than a step.
///
/// The clock moves once per stamp value: the commands a leader batches share one stamp, and
/// a batch of 256 of them must not move it 256 steps. (Per command, not per entry, so that
/// how commands are grouped into entries never changes the state.)
fn apply_command(
    ov: &mut Overlay,
    cmd: &OrderCommand,
    clamped: &mut u64,
) -> Result<CommandOutcome, StoreError> {
    let clock: Option<i64> = get_decoded(ov, K_CLOCK)?;
    let last_stamp: Option<i64> = get_decoded(ov, K_LAST_STAMP)?;
    let now = if last_stamp == Some(cmd.stamped_at_ms) {
        clock.unwrap_or(cmd.stamped_at_ms)
    } else {
        let (now, cut) = advance_clock(clock, cmd.stamped_at_ms);
        *clamped += cut as u64;
        put_encoded(ov, K_CLOCK, &now)?;
        put_encoded(ov, K_LAST_STAMP, &cmd.stamped_at_ms)?;
        now
    };
    expire_idempotency_records(ov, now)?;
    // An order's own times are the leader's stamp (the cluster's median clock, see
    // `rpc::clock`), not the bounded clock: after an idle night that lags real time.
    let stamp = cmd.stamped_at_ms;

    let fp = fingerprint(&cmd.op)?;
    if let Some(key) = &cmd.idempotency_key {
        if let Some(rec) = get_decoded::<IdempotencyRecord>(ov, &idem_key(key))? {
            if rec.expires_at_ms > now {
                return Ok(if rec.fingerprint == fp {
                    CommandOutcome {
                        result: rec.result,
                        replayed: true,
                    }
                } else {
                    CommandOutcome {
                        result: Err(Rejection::IdempotencyKeyReused),
                        replayed: false,
                    }
                });
            }
            ov.remove(expiry_key(rec.expires_at_ms, key));
        }
    }

    let result = match &cmd.op {
        OrderOp::Create(new) => {
            let id: u64 = get_decoded(ov, K_NEXT_ID)?.unwrap_or(1);
            let created = create_order(id, new, stamp);
            if let Ok(order) = &created {
                put_encoded(ov, &order_key(id), order)?;
                ov.insert(with_id(customer_prefix(&order.customer_id), id), Vec::new());
                ov.insert(with_id(status_prefix(order.status), id), Vec::new());
                put_encoded(ov, K_NEXT_ID, &(id + 1))?;
            }
            created
        }
        OrderOp::SetStatus {
            id,
            status,
            expected_version,
        } => match get_decoded::<Order>(ov, &order_key(*id))? {
            None => Err(Rejection::NotFound(*id)),
            Some(order) => {
                // Never before its last change, whichever leader's stamp this is.
                let at = stamp.max(order.updated_at_ms);
                let moved = transition(&order, *status, *expected_version, at);
                if let Ok(updated) = &moved {
                    put_encoded(ov, &order_key(*id), updated)?;
                    ov.remove(with_id(status_prefix(order.status), *id));
                    ov.insert(with_id(status_prefix(updated.status), *id), Vec::new());
                }
                moved
            }
        },
    };

    if let Some(key) = &cmd.idempotency_key {
        let expires_at_ms = now.saturating_add(IDEMPOTENCY_TTL_MS);
        let rec = IdempotencyRecord {
            fingerprint: fp,
            result: result.clone(),
            expires_at_ms,
        };
        put_encoded(ov, &idem_key(key), &rec)?;
        ov.insert(expiry_key(expires_at_ms, key), Vec::new());
    }
    Ok(CommandOutcome {
        result,
        replayed: false,
    })
}

/// Drops a bounded number of idempotency records whose time has passed. Expiry is judged by
/// the record's own time at lookup as well, so this is storage cleanup, never semantics.
fn expire_idempotency_records(ov: &mut Overlay, now: i64) -> Result<(), StoreError> {
    let upper = expiry_key(now.saturating_add(1), "");
    for k in ov.remove_lowest(b"x", &upper, EXPIRE_PER_COMMAND)? {
        let key = String::from_utf8_lossy(&k[9..]).into_owned();
        ov.remove(idem_key(&key));
    }
    Ok(())
}

/// Which orders a listing wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFilter {
    pub status: Option<OrderStatus>,
    pub customer_id: Option<String>,
}

/// One page of a listing, and how many orders match in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderPage {
    pub orders: Vec<Order>,
    pub total: u64,
}

/// The read side of the state machine, shared with the HTTP API. Reads wait while a snapshot
/// is being installed, so they never see a half-loaded state.
#[derive(Clone)]
pub struct OrderReader {
    sm: sled::Tree,
    install_lock: Arc<RwLock<()>>,
}

impl OrderReader {
    pub fn get(&self, id: u64) -> Result<Option<Order>, StoreError> {
        let _g = self.install_lock.read().unwrap_or_else(|p| p.into_inner());
        self.get_unlocked(id)
    }

    /// `get` without waiting: `None` while a snapshot is being loaded.
    pub fn try_get(&self, id: u64) -> Option<Result<Option<Order>, StoreError>> {
        match self.install_lock.try_read() {
            Ok(_g) => Some(self.get_unlocked(id)),
            Err(std::sync::TryLockError::Poisoned(p)) => {
                let _g = p.into_inner();
                Some(self.get_unlocked(id))
            }
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    fn get_unlocked(&self, id: u64) -> Result<Option<Order>, StoreError> {
        match self.sm.get(order_key(id))? {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Orders matching `filter`, ordered by id; `page` counts from 1.
    pub fn list(
        &self,
        filter: &OrderFilter,
        page: u64,
        per_page: u64,
    ) -> Result<OrderPage, StoreError> {
        let _g = self.install_lock.read().unwrap_or_else(|p| p.into_inner());
        let skip = page.saturating_sub(1).saturating_mul(per_page);
        let id_of =
            |k: &[u8]| u64::from_be_bytes(k[k.len() - 8..].try_into().expect("8-byte id suffix"));

        if filter.status.is_none() && filter.customer_id.is_none() {
            // Ids are dense (1, 2, 3, ... with no deletes), so a page starts at a known id.
            let total = self.next_id()? - 1;
            let first = skip.saturating_add(1);
            let mut orders = Vec::new();
            for kv in self
                .sm
                .range(order_key(first)..order_key(u64::MAX))
                .take(per_page as usize)
            {
                orders.push(codec::decode(&kv?.1)?);
            }
            return Ok(OrderPage { orders, total });
        }

        // Walk the narrower index. A status is always checked on the loaded order too: the
        // walk is not a point-in-time view, so an order may have moved on since its index key
        // was read.
        let prefix = match &filter.customer_id {
            Some(c) => customer_prefix(c),
            None => status_prefix(filter.status.expect("one filter is set")),
        };
        let check_status = filter.status.is_some();
        let mut total = 0u64;
        let mut orders = Vec::new();
        for k in self.sm.scan_prefix(&prefix).keys() {
            let k = k?;
            let on_page = total >= skip && (orders.len() as u64) < per_page;
            if check_status || on_page {
                let Some(order) = self.get_unlocked(id_of(&k))? else {
                    continue;
                };
                if check_status && Some(order.status) != filter.status {
                    continue;
                }
                if on_page {
                    orders.push(order);
                }
            }
            total += 1;
        }
        Ok(OrderPage { orders, total })
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        Ok(match self.sm.get(K_NEXT_ID)? {
            Some(v) => codec::decode(&v)?,
            None => 1,
        })
    }

    /// A digest of the whole state machine except Raft bookkeeping: equal on replicas that
    /// applied the same commands.
    pub fn state_digest(&self) -> Result<String, StoreError> {
        let _g = self.install_lock.read().unwrap_or_else(|p| p.into_inner());
        let mut h = Sha256::new();
        for kv in self.sm.iter() {
            let (k, v) = kv?;
            if k.as_ref() == K_APPLIED || k.as_ref() == K_MEMBERSHIP {
                continue;
            }
            h.update((k.len() as u32).to_be_bytes());
            h.update(&k);
            h.update((v.len() as u32).to_be_bytes());
            h.update(&v);
        }
        Ok(format!("{:x}", h.finalize()))
    }
}

/// The order state machine of one node, implementing openraft's `RaftStateMachine`.
pub struct StateMachineStore {
    db: sled::Db,
    raft: sled::Tree,
    reader: OrderReader,
    snapshots: Arc<SnapshotDir>,
    view: Arc<SnapshotView>,
    /// Shared with the log store: how far this state machine covers the log.
    floor: Arc<AppliedFloor>,
    /// Files being received from the leader (`begin_receiving_snapshot`), found again by
    /// inode when openraft hands one back to `install_snapshot`.
    receiving: Arc<std::sync::Mutex<Vec<PathBuf>>>,
}

impl StateMachineStore {
    pub(super) fn open(
        db: sled::Db,
        snapshot_dir: PathBuf,
        floor: Arc<AppliedFloor>,
    ) -> Result<StateMachineStore, StoreError> {
        let sm = db.open_tree("sm")?;
        let raft = db.open_tree("raft")?;
        let snapshots = Arc::new(SnapshotDir::open(snapshot_dir)?);
        let store = StateMachineStore {
            db,
            raft,
            reader: OrderReader {
                sm,
                install_lock: Arc::new(RwLock::new(())),
            },
            snapshots,
            view: Arc::new(SnapshotView::default()),
            floor,
            receiving: Default::default(),
        };
        if store.raft.get(K_INSTALLING)?.is_some() {
            tracing::warn!(
                "a snapshot install was interrupted; loading the current snapshot again"
            );
            store.load_current_snapshot()?;
        }
        let (applied, _) = store.applied_state_sync()?;
        store.floor.set_applied(applied.map(|l| l.index));
        Ok(store)
    }

    /// The read handle for the API.
    pub fn reader(&self) -> OrderReader {
        self.reader.clone()
    }

    fn sm(&self) -> &sled::Tree {
        &self.reader.sm
    }

    /// A second handle on the same trees and directory, for blocking work on another thread
    /// while this one keeps exclusive use (openraft holds `&mut self` meanwhile).
    fn blocking_handle(&self) -> StateMachineStore {
        StateMachineStore {
            db: self.db.clone(),
            raft: self.raft.clone(),
            reader: self.reader.clone(),
            snapshots: self.snapshots.clone(),
            view: self.view.clone(),
            floor: self.floor.clone(),
            receiving: self.receiving.clone(),
        }
    }

    fn applied_state_sync(&self) -> Result<(Option<LogId>, StoredMembership), StoreError> {
        let applied = match self.sm().get(K_APPLIED)? {
            Some(v) => codec::decode::<Option<LogId>>(&v)?,
            None => None,
        };
        let membership = match self.sm().get(K_MEMBERSHIP)? {
            Some(v) => codec::decode(&v)?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    /// Replaces the state machine with the current snapshot file. Marked in the `raft` tree
    /// while it runs, so a crash half-way is finished on the next open.
    fn load_current_snapshot(&self) -> Result<SnapshotMeta<u64, openraft::BasicNode>, StoreError> {
        let _g = self
            .reader
            .install_lock
            .write()
            .unwrap_or_else(|p| p.into_inner());
        self.raft.insert(K_INSTALLING, &[1u8][..])?;
        self.db.flush()?;
        self.sm().clear()?;
        let mut batch = sled::Batch::default();
        let mut n = 0usize;
        let meta = snapshot_file::read(&self.snapshots.current_path(), |k, v| {
            batch.insert(k, v);
            n += 1;
            if n.is_multiple_of(INSTALL_BATCH_RECORDS) {
                self.sm().apply_batch(std::mem::take(&mut batch))?;
            }
            Ok(())
        })?;
        self.sm().apply_batch(batch)?;
        // The meta is the authority on what the snapshot covers.
        self.sm()
            .insert(K_APPLIED, codec::encode(&meta.last_log_id)?)?;
        self.sm()
            .insert(K_MEMBERSHIP, codec::encode(&meta.last_membership)?)?;
        self.db.flush()?;
        self.raft.remove(K_INSTALLING)?;
        self.db.flush()?;
        Ok(meta)
    }

    fn open_current_snapshot(&self) -> Result<Option<Snapshot>, StoreError> {
        let Some((meta, file)) = self.snapshots.open_current()? else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }

    /// Where the received snapshot file `file` lives: the `begin_receiving_snapshot` file with
    /// the same inode, if it is one.
    async fn received_path(&self, file: &tokio::fs::File) -> Result<Option<PathBuf>, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let ino = file.metadata().await?.ino();
        let receiving = self.receiving.lock().unwrap_or_else(|p| p.into_inner());
        Ok(receiving
            .iter()
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() == ino))
            .cloned())
    }

    /// Copies a snapshot file into a new, fsynced temp file of the snapshot directory.
    async fn copy_to_temp(&self, mut file: Box<tokio::fs::File>) -> Result<PathBuf, StoreError> {
        use tokio::io::{AsyncSeekExt, AsyncWriteExt};
        let temp = self.snapshots.temp_path("installing");
        file.seek(std::io::SeekFrom::Start(0)).await?;
        let mut out = tokio::fs::File::create(&temp).await?;
        tokio::io::copy(&mut *file, &mut out).await?;
        out.flush().await?;
        out.sync_all().await?;
        Ok(temp)
    }

    /// The meta of a snapshot of the state machine as it is now.
    fn snapshot_meta(&self) -> Result<SnapshotMeta<u64, openraft::BasicNode>, StoreError> {
        let (last_log_id, last_membership) = self.applied_state_sync()?;
        let snapshot_id = match &last_log_id {
            Some(l) => format!(
                "{}-{}-{}",
                l.leader_id.term,
                l.index,
                chrono::Utc::now().timestamp_millis()
            ),
            None => format!("empty-{}", chrono::Utc::now().timestamp_millis()),
        };
        Ok(SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        })
    }
}

/// Writes the snapshot that `get_snapshot_builder` began: the state machine as it was then,
/// dumped while applies go on (see `snapshot_view`).
pub struct SnapshotBuilder {
    /// Taken by `build_snapshot`; an error if the dump could not begin.
    begun: Option<Result<BegunDump, StoreError>>,
    store: StateMachineStore,
}

/// A snapshot's starting point: what it will cover, and the dump's hold on that state.
struct BegunDump {
    meta: SnapshotMeta<u64, openraft::BasicNode>,
    dump: DumpGuard,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let err =
            |e: StoreError| StorageError::from(openraft::StorageIOError::write_snapshot(None, &e));
        let BegunDump { meta, dump } = self
            .begun
            .take()
            .unwrap_or(Err(StoreError::BuilderUsed))
            .map_err(err)?;
        // Seconds of disk I/O for a big store: on the blocking pool.
        let store = self.store.blocking_handle();
        let written = meta.clone();
        let path = tokio::task::spawn_blocking(move || {
            let path = store.snapshots.temp_path("building");
            snapshot_file::write(&path, &written, dump.records(store.sm()))?;
            Ok::<_, StoreError>(path)
        })
        .await
        .map_err(|e| err(e.into()))?
        .map_err(err)?;
        let (current, file) = self
            .store
            .snapshots
            .publish_built(&path, &meta)
            .map_err(err)?;
        if current.snapshot_id == meta.snapshot_id {
            tracing::info!(snapshot_id = %meta.snapshot_id, "built snapshot");
        } else {
            tracing::info!(
                built = %meta.snapshot_id,
                kept = %current.snapshot_id,
                "a snapshot installed meanwhile covers as much; kept it"
            );
        }
        Ok(Snapshot {
            meta: current,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.applied_state_sync().map_err(StoreError::into_read)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Entries are committed in chunks, each one atomic sled batch that also records its
        // last log id, so a crash leaves the state machine at a chunk boundary, never inside.
        // A chunk closes after the entry that brings it to `APPLY_CHUNK_KEYS` written keys.
        let mut results = Vec::new();
        let mut clamped = 0u64;
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let mut ov = Overlay::new(&self.reader.sm);
            let mut last = None;
            while ov.len() < APPLY_CHUNK_KEYS {
                let Some(entry) = entries.next() else { break };
                let apply_err = |e: StoreError| openraft::StorageIOError::apply(entry.log_id, &e);
                let outcomes = match &entry.payload {
                    EntryPayload::Blank => Vec::new(),
                    EntryPayload::Normal(batch) => batch
                        .commands
                        .iter()
                        .map(|cmd| apply_command(&mut ov, cmd, &mut clamped))
                        .collect::<Result<_, _>>()
                        .map_err(apply_err)?,
                    EntryPayload::Membership(m) => {
                        let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                        put_encoded(&mut ov, K_MEMBERSHIP, &stored).map_err(apply_err)?;
                        Vec::new()
                    }
                };
                results.push(outcomes);
                last = Some(entry.log_id);
            }
            put_encoded(&mut ov, K_APPLIED, &last).map_err(StoreError::into_write)?;
            self.view
                .before_write(self.sm(), ov.keys())
                .map_err(|e| StoreError::from(e).into_write())?;
            ov.commit().map_err(|e| StoreError::from(e).into_write())?;
            self.floor.set_applied(last.map(|l| l.index));
        }
        if clamped > 0 {
            tracing::warn!(
                stamps = clamped,
                max_step_ms = MAX_CLOCK_STEP_MS,
                "stamps far ahead of the state machine's clock: it moved one step each"
            );
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // Only the starting point is fixed here, between two applies; the dump itself runs in
        // build_snapshot while applies go on.
        let begun = self.snapshot_meta().and_then(|meta| {
            let dump = self.view.begin()?;
            Ok(BegunDump { meta, dump })
        });
        SnapshotBuilder {
            begun: Some(begun),
            store: self.blocking_handle(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        // From here until the install is done, the log store keeps what the state machine
        // does not cover yet (see `AppliedFloor`).
        self.floor.begin_receiving();
        let path = self.snapshots.temp_path("incoming");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| StoreError::from(e).into_write())?;
        // openraft receives one snapshot at a time: an earlier file still here was abandoned.
        let mut receiving = self.receiving.lock().unwrap_or_else(|p| p.into_inner());
        for old in receiving.drain(..) {
            let _ = std::fs::remove_file(old);
        }
        receiving.push(path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let err = |e: StoreError| {
            StorageError::from(openraft::StorageIOError::write_snapshot(
                Some(meta.signature()),
                &e,
            ))
        };
        // The received file itself becomes the snapshot (no copy): make it durable, check it
        // is whole and is the one we were told about, rename it over the current one, load it.
        let path = match self.received_path(&snapshot).await.map_err(err)? {
            Some(path) => {
                snapshot
                    .sync_all()
                    .await
                    .map_err(|e| err(StoreError::from(e)))?;
                path
            }
            // Handed some other file (openraft's storage suite does): copy it first.
            None => self.copy_to_temp(snapshot).await.map_err(err)?,
        };
        let checked = path.clone();
        let header =
            tokio::task::spawn_blocking(move || snapshot_file::read(&checked, |_, _| Ok(())))
                .await
                .map_err(|e| err(e.into()))?
                .map_err(err)?;
        if header.last_log_id != meta.last_log_id {
            return Err(err(StoreError::Corrupt(format!(
                "snapshot file covers {:?}, expected {:?}",
                header.last_log_id, meta.last_log_id
            ))));
        }
        // A dump of this node's own snapshot may still be walking the tree this replaces.
        self.view.wait_idle().await;
        self.snapshots.publish(&path).map_err(err)?;
        let this = self.blocking_handle();
        tokio::task::spawn_blocking(move || this.load_current_snapshot())
            .await
            .map_err(|e| err(e.into()))?
            .map_err(err)?;
        self.floor.install_done(meta.last_log_id).map_err(err)?;
        tracing::info!(snapshot_id = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.open_current_snapshot().map_err(StoreError::into_read)
    }
}
