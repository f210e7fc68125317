//! The Raft log over sled: entries keyed by big-endian index in the `log` tree; vote, committed
//! and last-purged log ids in the `raft` tree.
//!
//! Durability: `append` writes the entries to sled (readable at once) and hands openraft's
//! callback to a flusher thread. The flusher takes every callback waiting, runs one sled flush
//! (fsync) for all of them and only then reports them done, in order: group commit, so many
//! appends share one fsync and none is acknowledged before it is on disk. Votes are flushed
//! before `save_vote` returns. An append first waits (`StoreConfig::apply_lag_wait` at most,
//! 100 ms by default) while the state machine trails the commit by more than 256 entries
//! (`apply_lag`), which bounds the decoded entries openraft queues for it.
//!
//! Purges take effect at once for readers (`first_kept`) and remove the entries from disk on a
//! thread of their own: openraft 0.9 awaits `purge` in its core, and removing the 100,000
//! entries a snapshot covers took 0.6-1 s on an idle machine, during which the node neither
//! appended nor committed anything.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use super::apply_lag::LagWait;
use super::cache_sweep::CacheSweep;
use super::durable::DurableFlush;
use super::{AppliedFloor, Durability, PurgePlan, StoreError};
use crate::codec;
use crate::raft::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::telemetry;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// Keys per sled batch when removing many entries.
const REMOVE_BATCH_KEYS: usize = 256;

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn keyed_index(key: &[u8]) -> u64 {
    key.try_into().map_or(0, u64::from_be_bytes)
}

/// Reads log entries; cheap to clone, shared with openraft's replication tasks.
#[derive(Clone)]
pub struct LogReader {
    log: sled::Tree,
    /// Entries below this index are purged, though maybe not yet removed (`LogPurger`).
    first_kept: Arc<AtomicU64>,
    /// What replication reads at once (`limited_get_log_entries`), in stored bytes: one
    /// AppendEntries to a lagging follower, bounded before anything is decoded or sent.
    batch_bytes: usize,
}

impl LogReader {
    pub(super) fn entries<RB: RangeBounds<u64>>(
        &self,
        range: RB,
    ) -> Result<Vec<Entry>, StoreError> {
        use std::ops::Bound::*;
        let start = match range.start_bound() {
            Included(&i) => i,
            Excluded(&i) => i.saturating_add(1),
            Unbounded => 0,
        }
        .max(self.first_kept());
        let end = match range.end_bound() {
            Included(&i) => Some(i),
            Excluded(&0) => return Ok(Vec::new()),
            Excluded(&i) => Some(i - 1),
            Unbounded => None,
        };
        let iter = match end {
            Some(end) if end < start => return Ok(Vec::new()),
            Some(end) => self.log.range(index_key(start)..=index_key(end)),
            None => self.log.range(index_key(start)..),
        };
        iter.map(|kv| {
            let (_, v) = kv?;
            Ok(codec::decode::<Entry>(&v)?)
        })
        .collect()
    }
}

impl LogReader {
    fn first_kept(&self) -> u64 {
        self.first_kept.load(Ordering::SeqCst)
    }

    /// The log id of the last entry in the log (`None` when it holds none: empty, or purged
    /// up to a snapshot).
    pub fn last_log_id(&self) -> Result<Option<LogId>, StoreError> {
        match self.log.last()? {
            Some((k, v)) if keyed_index(&k) >= self.first_kept() => {
                Ok(Some(codec::decode::<Entry>(&v)?.log_id))
            }
            _ => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.entries(range).map_err(StoreError::into_read)
    }

    /// Entries from `start` until `end` or until `batch_bytes` of them are read (at least
    /// one): the batch a lagging follower is sent stays within the append byte budget.
    ///
    /// Nothing at all when entry `start` is not there: a purge can remove it between
    /// openraft's decision to send it and this read. openraft 0.9 treats an empty batch as a
    /// heartbeat and decides again (a snapshot, once it sees the purge); an error here would
    /// be a storage error, which stops the node's Raft core for good (seen in a torture run).
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if end <= start {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        // Nothing below the last purge, though it may still be on disk.
        let run =
            (start >= self.first_kept()).then(|| self.log.range(index_key(start)..index_key(end)));
        for kv in run.into_iter().flatten() {
            let (k, v) = kv.map_err(|e| StoreError::from(e).into_read())?;
            // Only entries that follow on from `start`: never send past a missing one.
            if k.as_ref() != index_key(start + out.len() as u64) {
                break;
            }
            if !out.is_empty() && bytes + v.len() > self.batch_bytes {
                break;
            }
            bytes += v.len();
            out.push(codec::decode::<Entry>(&v).map_err(|e| StoreError::from(e).into_read())?);
        }
        if out.is_empty() {
            tracing::warn!(
                start,
                "log entry to replicate is not in the log (purged meanwhile?): none sent this time"
            );
        }
        Ok(out)
    }
}

/// The Raft log store of one node.
pub struct LogStore {
    /// Flushes that reach the disk (`durable`).
    durable: Arc<DurableFlush>,
    pub(super) reader: LogReader,
    raft: sled::Tree,
    durability: Durability,
    flusher: Option<(mpsc::Sender<LogFlushed<TypeConfig>>, JoinHandle<()>)>,
    /// While a snapshot comes in, purges stop at what the state machine covers.
    floor: std::sync::Arc<AppliedFloor>,
    /// Held for the database's lifetime in the node: the log's reads for lagging followers are
    /// what it most often has to let go of.
    _sweep: Option<CacheSweep>,
}

impl LogStore {
    pub(super) fn open(
        db: sled::Db,
        durable: Arc<DurableFlush>,
        durability: Durability,
        floor: std::sync::Arc<AppliedFloor>,
        read_batch_bytes: usize,
        sweep: Option<CacheSweep>,
    ) -> Result<LogStore, StoreError> {
        let log = db.open_tree("log")?;
        let raft = db.open_tree("raft")?;
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let flush_to_disk = durable.clone();
        let handle = std::thread::Builder::new()
            .name("ordo-log-flusher".into())
            .spawn(move || run_flusher(&flush_to_disk, rx))?;
        let first_kept = floor.purger().first_kept.clone();
        Ok(LogStore {
            durable,
            reader: LogReader {
                log,
                first_kept,
                batch_bytes: read_batch_bytes,
            },
            raft,
            durability,
            flusher: Some((tx, handle)),
            floor,
            _sweep: sweep,
        })
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match self.raft.get(key)? {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
    }

    fn write_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<(), StoreError> {
        self.raft.insert(key, codec::encode(value)?)?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        if self.durability == Durability::Fsync {
            self.durable.flush_async().await?;
        }
        Ok(())
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        let last_purged = last_purged(&self.raft)?;
        let last = self.reader.last_log_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    /// A reader of this log, for the service's status.
    pub fn reader(&self) -> LogReader {
        self.reader.clone()
    }

    /// The last log id the log holds or has purged.
    pub(super) fn last_log_id(&self) -> Result<Option<LogId>, StoreError> {
        Ok(self.log_state()?.last_log_id)
    }

    /// The vote saved last.
    pub(super) fn vote(&self) -> Result<Option<Vote>, StoreError> {
        self.read_meta(KEY_VOTE)
    }

    /// Makes the log start after `last` (as if purged up to it): for a state machine restored
    /// from a backup, which covers the log up to there. Flushed before it returns.
    pub(super) fn start_after(&self, last: LogId) -> Result<(), StoreError> {
        self.write_meta(KEY_LAST_PURGED, &last)?;
        self.reader
            .first_kept
            .fetch_max(last.index + 1, Ordering::SeqCst);
        self.remove_range(0, Some(last.index))?;
        self.durable.flush()?;
        Ok(())
    }

    /// Appends `entry` after the last one and saves `vote`, flushed, outside openraft (for
    /// `backup::force_single_member`, before the Raft core starts).
    pub(super) fn force_append(&self, entry: &Entry, vote: &Vote) -> Result<(), StoreError> {
        let last = self.last_log_id()?;
        if last.map_or(0, |l| l.index + 1) != entry.log_id.index {
            return Err(StoreError::Corrupt(format!(
                "entry {} does not follow the last one, {last:?}",
                entry.log_id.index
            )));
        }
        self.reader
            .log
            .insert(index_key(entry.log_id.index), codec::encode(entry)?)?;
        self.write_meta(KEY_VOTE, vote)?;
        self.durable.flush()?;
        Ok(())
    }

    /// The log id of the entry at `index`, if the log still holds it.
    fn entry_log_id(&self, index: u64) -> Result<Option<LogId>, StoreError> {
        if index < self.reader.first_kept() {
            return Ok(None);
        }
        match self.reader.log.get(index_key(index))? {
            Some(v) => Ok(Some(codec::decode::<Entry>(&v)?.log_id)),
            None => Ok(None),
        }
    }

    fn remove_range(&self, from: u64, to_inclusive: Option<u64>) -> Result<(), StoreError> {
        remove_range(&self.reader.log, from, to_inclusive)
    }
}

/// Removes entries `from..=to_inclusive` (to the end with `None`) in small batches: one
/// big sled batch costs memory out of all proportion (see `state_machine`). The order
/// keeps the log without holes if a crash stops it half-way: a truncation removes from the
/// end backwards, a purge from the start forwards.
fn remove_range(log: &sled::Tree, from: u64, to_inclusive: Option<u64>) -> Result<(), StoreError> {
    let Some(to) = to_inclusive else {
        // A truncation: the few entries after a conflict.
        let keys = log
            .range(index_key(from)..)
            .keys()
            .collect::<Result<Vec<_>, _>>()?;
        for chunk in keys.rchunks(REMOVE_BATCH_KEYS) {
            remove_keys(log, chunk.iter().rev().cloned())?;
        }
        return Ok(());
    };
    // A purge, often of a hundred thousand entries or more: each batch's entries are found
    // just before they are removed, so each log page read is emptied at once. Reading them all
    // first left large log pages resident in sled's cache, far past its size (its 256 shards
    // evict late, and never a shard's only page): 40-50 MB of a node's heap at the peak of a
    // snapshot at a million orders (docs/performance.md).
    let mut from = from;
    loop {
        let keys = log
            .range(index_key(from)..=index_key(to))
            .keys()
            .take(REMOVE_BATCH_KEYS)
            .collect::<Result<Vec<_>, _>>()?;
        let Some(last) = keys.last().map(|k| keyed_index(k)) else {
            return Ok(());
        };
        remove_keys(log, keys)?;
        match last.checked_add(1) {
            Some(next) if next <= to => from = next,
            _ => return Ok(()),
        }
    }
}

/// Removes `keys` from the log in one sled batch.
fn remove_keys(
    log: &sled::Tree,
    keys: impl IntoIterator<Item = sled::IVec>,
) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    for k in keys {
        batch.remove(k);
    }
    log.apply_batch(batch)?;
    Ok(())
}

/// Purges log entries up to and including `upto`: records it as the last purged id and moves
/// `first_kept` past it at once (readers no longer see the entries), then a thread of its own
/// removes them from disk. A no-op if the log was purged that far already. Shared by
/// `LogStore::purge` and the end of a snapshot install (a purge held back meanwhile, see
/// `AppliedFloor`).
///
/// Entries at or below a purge are never written again (they are covered by a snapshot), so
/// the removal cannot race an append. A crash part-way leaves entries below `first_kept`:
/// invisible, and removed by the next purge or at the next open.
pub(super) struct LogPurger {
    log: sled::Tree,
    raft: sled::Tree,
    /// Purges come from the Raft core and from the end of an install: one at a time, so the
    /// last purged id only ever moves forwards.
    lock: Mutex<()>,
    first_kept: Arc<AtomicU64>,
    /// The removal thread and what it is to remove up to (taken on drop).
    remover: Option<(mpsc::Sender<u64>, JoinHandle<()>)>,
}

impl LogPurger {
    pub(super) fn new(db: &sled::Db) -> Result<LogPurger, StoreError> {
        let log = db.open_tree("log")?;
        let raft = db.open_tree("raft")?;
        let last_purged = last_purged(&raft)?;
        let (tx, rx) = mpsc::channel::<u64>();
        let removing = log.clone();
        let handle = std::thread::Builder::new()
            .name("ordo-log-purger".into())
            .spawn(move || run_remover(removing, rx))?;
        if let Some(last) = last_purged {
            // Whatever a crash left of the last purge.
            let _ = tx.send(last.index);
        }
        Ok(LogPurger {
            log,
            raft,
            lock: Mutex::new(()),
            first_kept: Arc::new(AtomicU64::new(last_purged.map_or(0, |l| l.index + 1))),
            remover: Some((tx, handle)),
        })
    }

    pub(super) fn purge_upto(&self, upto: LogId) -> Result<(), StoreError> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if last_purged(&self.raft)?.is_some_and(|p| p.index >= upto.index) {
            return Ok(());
        }
        self.raft.insert(KEY_LAST_PURGED, codec::encode(&upto)?)?;
        self.first_kept.fetch_max(upto.index + 1, Ordering::SeqCst);
        let sent = self.remover.as_ref().map(|(tx, _)| tx.send(upto.index));
        if matches!(sent, Some(Ok(()))) {
            return Ok(());
        }
        tracing::warn!("the log purger's thread is gone; removing purged entries in line");
        remove_range(&self.log, 0, Some(upto.index))
    }
}

/// Stops the removal thread after it has removed what it was sent, so that sled's files are
/// released with the stores (also those of a store that failed to open).
impl Drop for LogPurger {
    fn drop(&mut self) {
        if let Some((tx, handle)) = self.remover.take() {
            drop(tx);
            if handle.join().is_err() {
                tracing::error!("the log purger's thread panicked");
            }
        }
    }
}

/// The last purged log id, as recorded in the `raft` tree.
fn last_purged(raft: &sled::Tree) -> Result<Option<LogId>, StoreError> {
    match raft.get(KEY_LAST_PURGED)? {
        Some(v) => Ok(Some(codec::decode(&v)?)),
        None => Ok(None),
    }
}

/// Removes purged entries, each time up to the furthest purge sent meanwhile.
fn run_remover(log: sled::Tree, rx: mpsc::Receiver<u64>) {
    while let Ok(mut upto) = rx.recv() {
        while let Ok(further) = rx.try_recv() {
            upto = upto.max(further);
        }
        if let Err(e) = remove_range(&log, 0, Some(upto)) {
            // Left on disk, unseen; the next purge tries again from the start.
            tracing::error!(upto, error = %e, "removing purged log entries failed");
        }
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        // Closing the channel stops the flusher; join it so the sled files are released when the
        // store is gone (a reopen in the same process must not find them locked).
        if let Some((tx, handle)) = self.flusher.take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}

/// The group-commit loop: one fsync for every callback queued while the previous one ran.
///
/// It does not linger for more: measured, a 500 µs wait before each fsync under back-to-back
/// appends cut throughput from ~4000 to ~1200 creates/s — the appends that follow wait on
/// this fsync, so the fastest fsync wins.
fn run_flusher(durable: &DurableFlush, rx: mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        metrics::histogram!(telemetry::GROUP_COMMIT).record(waiting.len() as f64);
        let started = std::time::Instant::now();
        let flushed = durable.flush();
        metrics::histogram!(telemetry::FSYNC_DURATION).record(started.elapsed().as_secs_f64());
        match flushed {
            Ok(_) => waiting
                .into_iter()
                .for_each(|cb| cb.log_io_completed(Ok(()))),
            Err(e) => {
                tracing::error!(error = %e, "log flush failed");
                for cb in waiting {
                    cb.log_io_completed(Err(std::io::Error::other(e.to_string())));
                }
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.reader.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.log_state().map_err(StoreError::into_read)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(KEY_VOTE, vote)
            .map_err(|e| openraft::StorageIOError::write_vote(&e))?;
        self.flush()
            .await
            .map_err(|e| openraft::StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(KEY_VOTE)
            .map_err(|e| openraft::StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed on its own: it rides along with the next log flush. Losing it only means
        // a restart re-applies a little later, when the leader commits again.
        if let Some(c) = &committed {
            metrics::gauge!(telemetry::RAFT_COMMITTED_INDEX).set(c.index as f64);
        }
        self.floor
            .apply_lag()
            .set_committed(committed.map(|c| c.index));
        self.write_meta(KEY_COMMITTED, &committed)
            .map_err(StoreError::into_write)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .read_meta::<Option<LogId>>(KEY_COMMITTED)
            .map_err(StoreError::into_read)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if self.floor.apply_lag().wait_for_applies().await == LagWait::GaveUp {
            tracing::debug!("applies still far behind the commit; appending anyway");
        }
        let mut entries = entries.into_iter().peekable();
        // Only while a purge is held back for an install can an append leave a hole.
        if let Some(first) = entries.peek().filter(|_| self.floor.purge_deferred()) {
            let first_index = first.log_id.index;
            // The last entry the log shows (none below a purge, even while the background
            // removal has not reached it).
            let last_stored = self
                .reader
                .last_log_id()
                .map_err(StoreError::into_write)?
                .map(|l| l.index);
            self.floor
                .wait_unless_hole_closed(first_index, last_stored)
                .await;
        }
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes =
                codec::encode(&entry).map_err(|e| openraft::StorageIOError::write_logs(&e))?;
            batch.insert(&index_key(entry.log_id.index), bytes);
        }
        self.reader
            .log
            .apply_batch(batch)
            .map_err(|e| openraft::StorageIOError::write_logs(&e))?;
        match (self.durability, &self.flusher) {
            (Durability::Fsync, Some((tx, _))) => {
                if let Err(mpsc::SendError(cb)) = tx.send(callback) {
                    cb.log_io_completed(Err(std::io::Error::other("log flusher stopped")));
                }
            }
            // Only while the store is being dropped: never acknowledged without a flush.
            (Durability::Fsync, None) => {
                callback.log_io_completed(Err(std::io::Error::other("log flusher stopped")))
            }
            (Durability::UnsafeNoFsync, _) => callback.log_io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.remove_range(log_id.index, None)
            .map_err(StoreError::into_write)?;
        self.flush().await.map_err(StoreError::into_write)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The state machine shares this database and is not flushed per apply. Flushing here
        // makes its state durable before the entries that could rebuild it are gone; read
        // the limit first, so what it allows is covered by this flush. See `AppliedFloor`.
        let plan = self.floor.plan_purge(log_id);
        self.flush().await.map_err(StoreError::into_write)?;
        let upto = match plan {
            PurgePlan::All => log_id,
            PurgePlan::HeldAt(applied) => {
                let held = match applied {
                    Some(a) => self.entry_log_id(a).map_err(StoreError::into_write)?,
                    None => None,
                };
                tracing::info!(
                    asked = log_id.index,
                    applied = ?applied,
                    purged = ?held.map(|l| l.index),
                    "snapshot install under way: log purge held at what the state machine \
                     covers; the rest goes when the install is done"
                );
                match held {
                    Some(l) => l,
                    None => return Ok(()),
                }
            }
        };
        self.floor
            .purger()
            .purge_upto(upto)
            .map_err(StoreError::into_write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::{CommandBatch, OrderCommand, OrderOp, OrderStatus};
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry {
        let cmd = OrderCommand {
            op: OrderOp::SetStatus {
                id: index,
                status: OrderStatus::Paid,
                expected_version: None,
            },
            idempotency_key: None,
            stamped_at_ms: 0,
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(CommandBatch::one(cmd)),
        }
    }

    fn on_disk(dir: &std::path::Path) -> Vec<u64> {
        let (db, _) = crate::store::open_sled(
            &dir.join("sled"),
            crate::store::DEFAULT_CACHE_CAPACITY_BYTES,
            false,
        )
        .unwrap();
        let log = db.open_tree("log").unwrap();
        log.iter()
            .keys()
            .map(|k| keyed_index(&k.unwrap()))
            .collect()
    }

    /// A purge hides its entries at once and removes them on the purger's thread; dropping the
    /// store waits for that, so a reopen finds them gone.
    #[tokio::test]
    async fn a_purge_hides_its_entries_at_once_and_removes_them_in_the_background() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut log, sm) =
            crate::store::open(&crate::store::StoreConfig::new(dir.path())).unwrap();
        log.blocking_append((0..3000).map(entry)).await.unwrap();
        let upto = LogId::new(CommittedLeaderId::new(1, 1), 2499);
        log.purge(upto).await.unwrap();

        let mut reader = log.get_log_reader().await;
        let seen: Vec<u64> = reader
            .try_get_log_entries(0..3000)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(seen, (2500..3000).collect::<Vec<_>>());
        assert!(reader
            .limited_get_log_entries(2000, 3000)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            reader
                .limited_get_log_entries(2500, 2501)
                .await
                .unwrap()
                .len(),
            1
        );
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(upto));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(2999));

        // Purged to the end: the log is empty for readers, its last id the purged one.
        let all = LogId::new(CommittedLeaderId::new(1, 1), 2999);
        log.purge(all).await.unwrap();
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(all));
        assert_eq!(log.reader.last_log_id().unwrap(), None);

        drop((log, sm, reader));
        assert_eq!(on_disk(dir.path()), Vec::<u64>::new());
    }

    /// openraft hears of an append only after its durable flush (sled's, then the fdatasync):
    /// while no flush can run the append stays unacknowledged, and it is acknowledged once one
    /// can.
    #[tokio::test]
    // Holding the flushes' lock across the waits is the point: the flusher thread waits on it.
    #[allow(clippy::await_holding_lock)]
    async fn an_append_is_acknowledged_only_after_its_durable_flush() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut log, sm) =
            crate::store::open(&crate::store::StoreConfig::new(dir.path())).unwrap();
        let durable = log.durable.clone();
        let held = durable.hold_flushes();
        let append = tokio::spawn(async move {
            log.blocking_append([entry(1)]).await.unwrap();
            log
        });
        // A window for an acknowledgement that did not wait for the flush to arrive in (it
        // would within microseconds); nothing can make this one come, so nothing to poll for.
        let window = tokio::time::Instant::now() + std::time::Duration::from_millis(300);
        let mut early = false;
        while !early && tokio::time::Instant::now() < window {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            early = append.is_finished();
        }
        // Let the flusher go before asserting: a panic with flushes held would hang the drop.
        drop(held);
        assert!(!early, "acknowledged before any flush could run");
        let log = tokio::time::timeout(std::time::Duration::from_secs(30), append)
            .await
            .expect("acknowledged once the flush could run")
            .unwrap();
        drop((log, sm, durable));
        assert_eq!(on_disk(dir.path()), vec![1]);
    }

    /// While the state machine trails the commit by far, an append waits before writing
    /// anything; the state machine's applies let it go (the wait's bound is far off here, so
    /// only they can).
    #[tokio::test]
    async fn an_append_waits_while_the_state_machine_trails_the_commit() {
        use openraft::storage::RaftStateMachine;
        use std::future::Future;
        let dir = tempfile::TempDir::new().unwrap();
        let (mut log, mut sm) = crate::store::open(&crate::store::StoreConfig {
            apply_lag_wait: std::time::Duration::from_secs(3600),
            ..crate::store::StoreConfig::new(dir.path())
        })
        .unwrap();
        log.blocking_append((0..1000).map(entry)).await.unwrap();
        log.save_committed(Some(LogId::new(CommittedLeaderId::new(1, 1), 999)))
            .await
            .unwrap();
        let floor = log.floor.clone();
        let mut reader = log.reader.clone();
        {
            let append = log.blocking_append([entry(1000)]);
            tokio::pin!(append);
            let waker = std::task::Waker::noop();
            let first = append
                .as_mut()
                .poll(&mut std::task::Context::from_waker(waker));
            assert!(first.is_pending());
            assert!(
                reader
                    .try_get_log_entries(1000..1001)
                    .await
                    .unwrap()
                    .is_empty(),
                "written while 1000 committed entries were not applied"
            );

            let mut source = reader.clone();
            let entries = source.try_get_log_entries(0..1000).await.unwrap();
            sm.apply(entries).await.unwrap();
            assert_eq!(floor.apply_lag().lag(), 0);
            tokio::time::timeout(std::time::Duration::from_secs(30), append)
                .await
                .expect("the append goes once the state machine has caught up")
                .unwrap();
        }
        assert_eq!(
            reader.try_get_log_entries(1000..1001).await.unwrap().len(),
            1
        );
    }

    /// Entries a crash left below the last purge stay hidden after a restart and are removed
    /// then.
    #[tokio::test]
    async fn entries_a_crash_left_below_a_purge_are_hidden_and_removed_at_open() {
        let dir = tempfile::TempDir::new().unwrap();
        let config = crate::store::StoreConfig::new(dir.path());
        let (mut log, sm) = crate::store::open(&config).unwrap();
        log.blocking_append((0..100).map(entry)).await.unwrap();
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 49))
            .await
            .unwrap();
        drop((log, sm));
        {
            // What a crash part-way through the removal would have left.
            let sled_dir = config.dir.join("sled");
            let (db, _) =
                crate::store::open_sled(&sled_dir, config.cache_capacity_bytes, config.compress)
                    .unwrap();
            let tree = db.open_tree("log").unwrap();
            for i in 40..50 {
                tree.insert(index_key(i), codec::encode(&entry(i)).unwrap())
                    .unwrap();
            }
            db.flush().unwrap();
        }
        let (mut log, sm) = crate::store::open(&config).unwrap();
        let mut reader = log.get_log_reader().await;
        let first = reader.try_get_log_entries(0..100).await.unwrap()[0]
            .log_id
            .index;
        assert_eq!(first, 50);
        assert!(reader
            .limited_get_log_entries(45, 60)
            .await
            .unwrap()
            .is_empty());
        drop((log, sm, reader));
        assert_eq!(on_disk(dir.path()), (50..100).collect::<Vec<_>>());
    }
}
