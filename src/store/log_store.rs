//! The Raft log over sled: entries keyed by big-endian index in the `log` tree, an entry over
//! 7 KiB in chunks (`CHUNK_BYTES`); vote, committed and last-purged log ids in the `raft` tree.
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
//!
//! Reads run beside writes (replication tasks read while the core appends), and sled reads a
//! range a leaf at a time: a read can meet an entry half removed or half rewritten, or read
//! the old log's entries up to a truncation and the new log's after it. An entry below a purge
//! is left out; one torn while an append or truncation ran (`LogWrites`) ends the read there;
//! a read a truncation ran beside returns nothing (an old leader's replication would otherwise
//! send a log that was never the log); anything else that is not whole is corruption, an
//! error.

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

/// Keys per sled batch when removing many entries (more to finish an entry's chunks).
const REMOVE_BATCH_KEYS: usize = 256;

/// The most bytes of an entry one log key holds. sled stores a page of over a quarter of its 512
/// KiB segment as a blob file, and its cache weighs a blob at a few bytes, so it never lets go
/// of one for its size: a leader that read 190 MB of log for a lagging follower kept it
/// (docs/performance.md, "What sled's cache holds"). A log leaf splits past 16 keys, so 17 of
/// these with their keys stay under that. An entry over it (a batch of many or large orders) is
/// stored as its first chunk under `index_key` and the rest under `chunk_key`, which sorts
/// after it and before the next entry.
const CHUNK_BYTES: usize = 7 * 1024;

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The key of chunk `n` (from 1) of entry `index` after its first.
fn chunk_key(index: u64, n: u16) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[..8].copy_from_slice(&index_key(index));
    key[8..].copy_from_slice(&n.to_be_bytes());
    key
}

/// The index of the entry an entry's key, or one of its chunks' keys, belongs to.
fn keyed_index(key: &[u8]) -> u64 {
    key.get(..8)
        .and_then(|k| k.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// Adds to `batch` what stores `bytes` as entry `index`: its chunks, and the removal of any
/// chunks beyond them an entry stored there before left.
fn write_entry(
    log: &sled::Tree,
    batch: &mut sled::Batch,
    index: u64,
    bytes: &[u8],
) -> Result<(), StoreError> {
    for old in log
        .range(chunk_key(index, 1)..=chunk_key(index, u16::MAX))
        .keys()
    {
        batch.remove(old?);
    }
    let mut chunks = bytes.chunks(CHUNK_BYTES);
    batch.insert(&index_key(index), chunks.next().unwrap_or_default());
    for (n, chunk) in (1..).zip(chunks) {
        let n = u16::try_from(n)
            .map_err(|_| StoreError::Corrupt(format!("log entry {index} is too large to store")))?;
        batch.insert(&chunk_key(index, n), chunk);
    }
    Ok(())
}

/// One entry as read: its index and its chunks joined (`None`: chunks without the first).
struct StoredEntry {
    index: u64,
    bytes: Option<sled::IVec>,
}

/// Stored entries in key order, each with its chunks joined.
///
/// sled reads a range a leaf at a time, so a read of an entry whose chunks span two leaves
/// can meet a removal or rewrite of that entry (one batch) between them and see only part of
/// it; `LogReader::decode` tells that from corruption.
struct StoredEntries {
    keys: std::iter::Peekable<sled::Iter>,
}

impl StoredEntries {
    fn new(keys: sled::Iter) -> StoredEntries {
        StoredEntries {
            keys: keys.peekable(),
        }
    }
}

impl Iterator for StoredEntries {
    type Item = Result<StoredEntry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (key, first) = match self.keys.next()? {
            Ok(kv) => kv,
            Err(e) => return Some(Err(e.into())),
        };
        let index = keyed_index(&key);
        let mut joined: Option<Vec<u8>> = None;
        loop {
            match self.keys.peek() {
                Some(Ok((next, _))) if next.len() != 8 && next.get(..8) == key.get(..8) => {}
                Some(Err(_)) => {
                    if let Some(Err(e)) = self.keys.next() {
                        return Some(Err(e.into()));
                    }
                    break;
                }
                _ => break,
            }
            if let Some(Ok((_, chunk))) = self.keys.next() {
                joined
                    .get_or_insert_with(|| first.to_vec())
                    .extend_from_slice(&chunk);
            }
        }
        let bytes = (key.len() == 8).then(|| joined.map_or(first, sled::IVec::from));
        Some(Ok(StoredEntry { index, bytes }))
    }
}

/// Reads log entries; cheap to clone, shared with openraft's replication tasks.
#[derive(Clone)]
pub struct LogReader {
    log: sled::Tree,
    /// Entries below this index are purged, though maybe not yet removed (`LogPurger`).
    first_kept: Arc<AtomicU64>,
    /// The store's appends and truncations, counted for reads running beside them.
    writes: Arc<LogWrites>,
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
        // The first key past the range: the next entry's (its last entry's chunks sort before).
        let past = match range.end_bound() {
            Included(&i) if i < start => return Ok(Vec::new()),
            Included(&i) => i.checked_add(1),
            Excluded(&i) if i <= start => return Ok(Vec::new()),
            Excluded(&i) => Some(i),
            Unbounded => None,
        };
        let seen = self.writes.seen();
        let keys = match past {
            Some(past) => self.log.range(index_key(start)..index_key(past)),
            None => self.log.range(index_key(start)..),
        };
        self.collect(StoredEntries::new(keys), seen)
    }

    /// The entries `stored` reads, in a row, for a read that began with the store's writes at
    /// `seen`.
    fn collect(&self, stored: StoredEntries, seen: WritesSeen) -> Result<Vec<Entry>, StoreError> {
        let mut out: Vec<Entry> = Vec::new();
        for stored in stored {
            let stored = stored?;
            // sled's iterator may pass over keys an append put into a leaf after it took its
            // copy of that leaf: never read on past a missing entry.
            if out
                .last()
                .is_some_and(|last| stored.index != last.log_id.index + 1)
            {
                break;
            }
            match self.decode(stored, seen)? {
                Decoded::Entry(entry) => out.push(entry),
                // Left out, as one purged before would be.
                Decoded::Purged => {}
                // Written while it was read: what follows may not be whole either.
                Decoded::Rewritten => break,
            }
        }
        // What was read before a truncation and after it is no one log.
        if self.writes.truncated_since(seen) {
            return Ok(Vec::new());
        }
        Ok(out)
    }
}

/// Counts of the log store's changes to stored entries, each odd while one is under way, for
/// reads running beside them. The Raft core makes these changes one at a time (`&mut self`;
/// `force_append` runs before the core starts): with two at once, a count could be even and
/// unchanged while one of them tore a read.
#[derive(Default)]
struct LogWrites {
    /// Appends and truncations.
    any: AtomicU64,
    /// Truncations alone.
    truncations: AtomicU64,
}

/// The counts a read began with.
#[derive(Clone, Copy)]
struct WritesSeen {
    any: u64,
    truncations: u64,
}

impl LogWrites {
    fn seen(&self) -> WritesSeen {
        WritesSeen {
            any: self.any.load(Ordering::SeqCst),
            truncations: self.truncations.load(Ordering::SeqCst),
        }
    }

    /// Whether an append or truncation ran since `seen` was taken, or was under way then.
    fn changed_since(&self, seen: WritesSeen) -> bool {
        !seen.any.is_multiple_of(2) || self.any.load(Ordering::SeqCst) != seen.any
    }

    /// Whether a truncation ran since `seen` was taken, or was under way then.
    fn truncated_since(&self, seen: WritesSeen) -> bool {
        !seen.truncations.is_multiple_of(2)
            || self.truncations.load(Ordering::SeqCst) != seen.truncations
    }

    fn bump(&self, truncation: bool) {
        self.any.fetch_add(1, Ordering::SeqCst);
        if truncation {
            self.truncations.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Runs `write`, an append (or a truncation, with `truncation`), counted. The second
    /// count comes from a drop guard, so a `write` that panics does not leave a count odd,
    /// which would excuse every later torn entry as rewritten.
    fn counted<T>(&self, truncation: bool, write: impl FnOnce() -> T) -> T {
        struct Ended<'a>(&'a LogWrites, bool);
        impl Drop for Ended<'_> {
            fn drop(&mut self) {
                self.0.bump(self.1);
            }
        }
        self.bump(truncation);
        let _ended = Ended(self, truncation);
        write()
    }
}

/// What `LogReader::decode` made of one stored entry.
enum Decoded {
    Entry(Entry),
    /// Purged while it was read.
    Purged,
    /// Truncated or overwritten while it was read.
    Rewritten,
}

impl LogReader {
    fn first_kept(&self) -> u64 {
        self.first_kept.load(Ordering::SeqCst)
    }

    /// The entry read, or why it was not whole (`StoredEntries`): purged (a purge moves
    /// `first_kept` past its entries before it removes any), or written by an append or
    /// truncation that ran since the read began (`seen`). Any other entry that is not whole is
    /// an error.
    fn decode(&self, stored: StoredEntry, seen: WritesSeen) -> Result<Decoded, StoreError> {
        let decoded = match &stored.bytes {
            Some(bytes) => codec::decode::<Entry>(bytes).map_err(StoreError::from),
            None => Err(StoreError::Corrupt(format!(
                "log chunks of entry {} without the entry's first",
                stored.index
            ))),
        };
        match decoded {
            Ok(entry) => Ok(Decoded::Entry(entry)),
            Err(_) if stored.index < self.first_kept() => Ok(Decoded::Purged),
            Err(_) if self.writes.changed_since(seen) => Ok(Decoded::Rewritten),
            Err(e) => Err(e),
        }
    }

    /// The log id of the last entry in the log (`None` when it holds none: empty, or purged
    /// up to a snapshot).
    pub fn last_log_id(&self) -> Result<Option<LogId>, StoreError> {
        match self.log.last()? {
            Some((k, _)) => self.log_id_at(keyed_index(&k)),
            None => Ok(None),
        }
    }

    /// The log id of the entry at `index`, if the log holds it (and it is not purged).
    fn log_id_at(&self, index: u64) -> Result<Option<LogId>, StoreError> {
        Ok(self.entries(index..=index)?.pop().map(|e| e.log_id))
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
    /// Nothing at all when entry `start` is not there, or when a truncation ran beside the
    /// read (`collect_to_send`): a purge can remove it between openraft's decision to send it
    /// and this read. openraft 0.9 treats an empty batch as a heartbeat and decides again (a
    /// snapshot, once it sees the purge); an error here would be a storage error, which stops
    /// the node's Raft core for good (seen in a torture run).
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if end <= start {
            return Ok(Vec::new());
        }
        let seen = self.writes.seen();
        // Nothing below the last purge, though it may still be on disk.
        let run = (start >= self.first_kept())
            .then(|| StoredEntries::new(self.log.range(index_key(start)..index_key(end))));
        self.collect_to_send(run, start, seen)
            .map_err(StoreError::into_read)
    }
}

impl LogReader {
    /// What `limited_get_log_entries` sends: the entries `run` reads from `start` on, whole
    /// and in a row, within the byte budget, for a read that began with the writes at `seen`.
    fn collect_to_send(
        &self,
        run: Option<StoredEntries>,
        start: u64,
        seen: WritesSeen,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for stored in run.into_iter().flatten() {
            let stored = stored?;
            // Only entries that follow on from `start`: never send past a missing one.
            if stored.index != start + out.len() as u64 {
                break;
            }
            let size = stored.bytes.as_ref().map_or(0, |b| b.len());
            if !out.is_empty() && bytes + size > self.batch_bytes {
                break;
            }
            bytes += size;
            // Purged while it was read (the rest are too), or rewritten (the rest may be).
            match self.decode(stored, seen)? {
                Decoded::Entry(entry) => out.push(entry),
                Decoded::Purged | Decoded::Rewritten => break,
            }
        }
        // An old leader's replication, reading while the new leader's entries replace its
        // log's tail: what it read is no one log, and must not be sent.
        if self.writes.truncated_since(seen) {
            tracing::info!(
                start,
                "the log was truncated while entries to replicate were read: none sent this time"
            );
            return Ok(Vec::new());
        }
        if out.is_empty() {
            tracing::warn!(
                start,
                "log entry to replicate is not in the log (purged or rewritten meanwhile?): none \
                 sent this time"
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

/// Tells the log store whether this node leads: only a leader's appends skip the apply-lag
/// wait for a while after one gave up (`apply_lag`).
#[derive(Clone)]
pub struct LeadingFlag(std::sync::Arc<AppliedFloor>);

impl LeadingFlag {
    pub fn set(&self, leading: bool) {
        self.0.apply_lag().set_leading(leading);
    }
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
                writes: Arc::default(),
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

    /// A flush as the durability asked for: none with `UnsafeNoFsync`.
    async fn flush(&self) -> Result<(), StoreError> {
        if self.durability == Durability::Fsync {
            self.durable.flush_async().await?;
        }
        Ok(())
    }

    /// A flush even with `UnsafeNoFsync`, for writes that are rare and whose loss is worse
    /// than losing orders: a vote forgotten in a crash lets the node vote twice in one term
    /// (two leaders), and a purge ahead of a state machine not on disk leaves a node that
    /// cannot rebuild its state.
    async fn flush_always(&self) -> Result<(), StoreError> {
        self.durable.flush_async().await
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        let last_purged = last_purged(&self.raft)?;
        let last = self.reader.last_log_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    /// A handle the node's wiring tells whether this node leads (see `apply_lag`).
    pub fn leading_flag(&self) -> LeadingFlag {
        LeadingFlag(self.floor.clone())
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
        let log = &self.reader.log;
        let mut batch = sled::Batch::default();
        write_entry(log, &mut batch, entry.log_id.index, &codec::encode(entry)?)?;
        self.reader
            .writes
            .counted(false, || log.apply_batch(batch))?;
        self.write_meta(KEY_VOTE, vote)?;
        self.durable.flush()?;
        Ok(())
    }

    /// The log id of the entry at `index`, if the log still holds it.
    fn entry_log_id(&self, index: u64) -> Result<Option<LogId>, StoreError> {
        self.reader.log_id_at(index)
    }

    fn remove_range(&self, from: u64, to_inclusive: Option<u64>) -> Result<(), StoreError> {
        remove_range(&self.reader.log, from, to_inclusive)
    }
}

/// Removes entries `from..=to_inclusive` (to the end with `None`) in small batches, each of
/// whole entries (all their chunks or none): one big sled batch costs memory out of all
/// proportion (see `state_machine`). The order keeps the log without holes if a crash stops it
/// half-way: a truncation removes from the end backwards, a purge from the start forwards.
fn remove_range(log: &sled::Tree, from: u64, to_inclusive: Option<u64>) -> Result<(), StoreError> {
    let Some(to) = to_inclusive else {
        // A truncation: the few entries after a conflict.
        let keys = log
            .range(index_key(from)..)
            .keys()
            .collect::<Result<Vec<_>, _>>()?;
        for batch in whole_entry_batches(&keys, REMOVE_BATCH_KEYS)
            .into_iter()
            .rev()
        {
            remove_keys(log, batch.iter().cloned())?;
        }
        return Ok(());
    };
    // A purge, often of a hundred thousand entries or more: each batch's entries are found
    // just before they are removed, so each log page read is emptied at once. Reading them all
    // first left large log pages resident in sled's cache, far past its size (its 256 shards
    // evict late, and never a shard's only page): 40-50 MB of a node's heap at the peak of a
    // snapshot at a million orders (docs/performance.md).
    let past = to.checked_add(1).map(index_key);
    let mut from = index_key(from).to_vec();
    loop {
        let keys = match past {
            Some(past) => log.range(from.as_slice()..&past[..]),
            None => log.range(from.as_slice()..),
        };
        let mut batch = Vec::new();
        for key in keys.keys() {
            let key = key?;
            if batch.len() >= REMOVE_BATCH_KEYS && key.len() == 8 {
                break;
            }
            batch.push(key);
        }
        let Some(last) = batch.last() else {
            return Ok(());
        };
        // The key right after the last one removed.
        from = last.to_vec();
        from.push(0);
        remove_keys(log, batch)?;
    }
}

/// `keys` (in order) cut into batches of `size` keys or a few more: each ends where an entry
/// ends, so no batch holds part of an entry's chunks.
fn whole_entry_batches(keys: &[sled::IVec], size: usize) -> Vec<&[sled::IVec]> {
    let mut batches = Vec::new();
    let mut rest = keys;
    while !rest.is_empty() {
        let mut len = rest.len().min(size.max(1));
        while len < rest.len() && rest[len].len() != 8 {
            len += 1;
        }
        let (batch, after) = rest.split_at(len);
        batches.push(batch);
        rest = after;
    }
    batches
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
        self.flush_always()
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
                .await
                .map_err(StoreError::into_write)?;
        }
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes =
                codec::encode(&entry).map_err(|e| openraft::StorageIOError::write_logs(&e))?;
            write_entry(&self.reader.log, &mut batch, entry.log_id.index, &bytes)
                .map_err(StoreError::into_write)?;
        }
        // Counted even at new indexes: a read that began after a truncation may hold a leaf
        // read before this append and then meet this entry's later chunks without its first
        // (or pass over whole entries, which the readers' in-a-row checks stop at).
        self.reader
            .writes
            .counted(false, || self.reader.log.apply_batch(batch))
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
        self.reader
            .writes
            .counted(true, || self.remove_range(log_id.index, None))
            .map_err(StoreError::into_write)?;
        self.flush().await.map_err(StoreError::into_write)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The state machine shares this database and is not flushed per apply. Flushing here
        // makes its state durable before the entries that could rebuild it are gone; read
        // the limit first, so what it allows is covered by this flush. See `AppliedFloor`.
        let plan = self.floor.plan_purge(log_id);
        self.flush_always().await.map_err(StoreError::into_write)?;
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

    /// Entry `index` with `commands` commands, each about 60 bytes stored: over `CHUNK_BYTES`
    /// from about 120 commands.
    fn entry_of(index: u64, commands: usize) -> Entry {
        let one = |n: usize| OrderCommand {
            op: OrderOp::SetStatus {
                id: index * 10_000 + n as u64,
                status: OrderStatus::Paid,
                expected_version: None,
            },
            idempotency_key: Some(format!("key-{index}-{n:032}")),
            stamped_at_ms: n as i64,
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(CommandBatch {
                commands: (0..commands).map(one).collect(),
            }),
        }
    }

    /// Every key of the log tree, as (entry index, chunk number or 0 for an entry's first).
    fn keys_on_disk(dir: &std::path::Path) -> Vec<(u64, u16)> {
        let (db, _) = crate::store::open_sled(
            &dir.join("sled"),
            crate::store::DEFAULT_CACHE_CAPACITY_BYTES,
            false,
        )
        .unwrap();
        let log = db.open_tree("log").unwrap();
        log.iter()
            .keys()
            .map(|k| {
                let k = k.unwrap();
                let n = match k.len() {
                    8 => 0,
                    _ => u16::from_be_bytes(k[8..].try_into().unwrap()),
                };
                (keyed_index(&k), n)
            })
            .collect()
    }

    /// Entry `index` as term `term` writes it: terms of one parity hold 1,100 commands, the
    /// others 1,500 (the same commands, more of them), so that joined chunks of two versions
    /// fail to decode. A read across versions of whole entries is caught by its terms.
    fn version_of(index: u64, term: u64) -> Entry {
        in_term(
            term,
            entry_of(index, if term.is_multiple_of(2) { 1500 } else { 1100 }),
        )
    }

    /// `entry` as a leader of term `term` writes it.
    fn in_term(term: u64, entry: Entry) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), entry.log_id.index),
            ..entry
        }
    }

    /// A reader that races the truncation and rewriting of entries it reads (a deposed
    /// leader's replication task, still reading while the new leader's appends replace the
    /// tail of its log) never fails and never returns part of an entry, nor entries of two
    /// versions of the log. Before, a torn chunked entry was a read error, which openraft 0.9
    /// takes for a storage failure and stops the node's Raft core for; and a read across a
    /// truncation could return the old log's entries followed by the new log's.
    #[test]
    fn reads_racing_a_rewrite_of_chunked_entries_never_fail_or_tear() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let dir = tempfile::TempDir::new().unwrap();
        let config = crate::store::StoreConfig {
            durability: Durability::UnsafeNoFsync,
            ..crate::store::StoreConfig::new(dir.path())
        };
        let (mut log, _sm) = crate::store::open(&config).unwrap();
        const KEPT: u64 = 3;
        const LAST: u64 = 8;
        rt.block_on(log.blocking_append((1..=LAST).map(|i| version_of(i, 1))))
            .unwrap();
        // Set on every way out of this test, a failing one too, so the reader always ends.
        struct Stop(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Stop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = Stop(stop.clone());
        let reading = {
            let (mut reader, stop) = (log.reader(), stop.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                let mut reads = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let by_budget = rt.block_on(reader.limited_get_log_entries(1, LAST + 1));
                    let whole = reader.entries(1..=LAST).map_err(StoreError::into_read);
                    for read in [by_budget, whole] {
                        let read = read.expect("a read racing a rewrite");
                        for (e, index) in read.iter().zip(1..) {
                            let term = e.log_id.leader_id.term;
                            assert_eq!(e, &version_of(index, term), "entry {index} read torn");
                        }
                        // Every round writes entries KEPT+1.. in one term.
                        let terms: Vec<u64> = read
                            .iter()
                            .filter(|e| e.log_id.index > KEPT)
                            .map(|e| e.log_id.leader_id.term)
                            .collect();
                        assert!(
                            terms.windows(2).all(|t| t[0] == t[1]),
                            "entries of two versions of the log in one read: terms {terms:?}"
                        );
                        reads += 1;
                    }
                }
                reads
            })
        };
        for round in 0..300u64 {
            let term = round + 2;
            rt.block_on(async {
                log.truncate(LogId::new(CommittedLeaderId::new(term - 1, 1), KEPT + 1))
                    .await
                    .unwrap();
                log.blocking_append((KEPT + 1..=LAST).map(|i| version_of(i, term)))
                    .await
                    .unwrap();
            });
        }
        drop(stopping);
        let reads = reading.join().expect("the reader thread");
        assert!(reads > 0);
    }

    /// Entries over a chunk are stored in chunks and read back whole by every reader, and the
    /// chunks go with their entry when it is truncated, overwritten or purged.
    #[tokio::test]
    async fn large_entries_are_stored_in_chunks_and_read_back_whole() {
        let dir = tempfile::TempDir::new().unwrap();
        let config = crate::store::StoreConfig::new(dir.path());
        let stored = |e: &Entry| codec::encode(e).unwrap().len();
        // The most commands entry `i` holds within one chunk; one more is a chunk and a bit.
        let fits = |i: u64| {
            (1..1000)
                .take_while(|&n| stored(&entry_of(i, n)) <= CHUNK_BYTES)
                .last()
                .unwrap()
        };
        // Sizes from one command to ~15 chunks, the largest last.
        let sizes = |i: u64| match i % 6 {
            0 | 2 => 1,
            1 => 200,
            3 => 2000,
            4 => fits(i),
            _ => fits(i) + 1,
        };
        let written: Vec<Entry> = (0..60).map(|i| entry_of(i, sizes(i))).collect();
        assert!(stored(&written[3]) > 10 * CHUNK_BYTES);
        assert!(stored(&written[4]) <= CHUNK_BYTES && stored(&written[5]) > CHUNK_BYTES);
        {
            let (mut log, _sm) = crate::store::open(&config).unwrap();
            log.blocking_append(written.clone()).await.unwrap();
            let mut reader = log.get_log_reader().await;
            assert_eq!(reader.try_get_log_entries(0..60).await.unwrap(), written);
            assert_eq!(
                reader.try_get_log_entries(3..=5).await.unwrap(),
                written[3..=5]
            );
            assert_eq!(log.reader.last_log_id().unwrap(), Some(written[59].log_id));
            // Replication's reads: up to the byte budget (at least one), whole entries only.
            let budget = log.reader.batch_bytes;
            let sent = reader.limited_get_log_entries(3, 60).await.unwrap();
            assert_eq!(sent[..], written[3..3 + sent.len()]);
            let sent_bytes: usize = sent.iter().map(stored).sum();
            assert!(
                sent_bytes <= budget.max(stored(&sent[0])),
                "{sent_bytes} > {budget}"
            );
            assert_eq!(
                reader.limited_get_log_entries(9, 10).await.unwrap(),
                written[9..10]
            );

            // A truncation inside the large entries takes their chunks too.
            log.truncate(written[45].log_id).await.unwrap();
            assert_eq!(log.reader.last_log_id().unwrap(), Some(written[44].log_id));
            // An entry written over one with more chunks leaves none of the old ones behind.
            log.blocking_append([entry_of(45, 2000)]).await.unwrap();
            log.blocking_append([entry_of(45, 300)]).await.unwrap();
            assert_eq!(
                reader.try_get_log_entries(45..).await.unwrap(),
                [entry_of(45, 300)]
            );
            // A purge to the middle of the large entries.
            log.purge(written[21].log_id).await.unwrap();
            assert_eq!(
                reader.try_get_log_entries(0..30).await.unwrap(),
                written[22..30]
            );
        }
        let keys = keys_on_disk(dir.path());
        assert_eq!(keys.first(), Some(&(22, 0)));
        assert_eq!(keys.last().map(|k| k.0), Some(45));
        // Every entry left is all there: its first key, then its chunks 1, 2, ... in order.
        for entry in written[22..45].iter().chain([&entry_of(45, 300)]) {
            let index = entry.log_id.index;
            let mine: Vec<u16> = keys.iter().filter(|k| k.0 == index).map(|k| k.1).collect();
            let chunks = stored(entry).div_ceil(CHUNK_BYTES) as u16;
            assert_eq!(mine, (0..chunks).collect::<Vec<_>>(), "entry {index}");
        }
    }

    /// A read that meets a purge between two leaves of an entry's chunks sees part of it: left
    /// out if the entry is below the purge (which moves `first_kept` before removing), or if a
    /// write to the log began or was under way since the read began; an error otherwise (a log
    /// cut short).
    #[tokio::test]
    async fn an_entry_read_in_part_is_purged_below_the_first_kept_and_corrupt_above() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut log, _sm) =
            crate::store::open(&crate::store::StoreConfig::new(dir.path())).unwrap();
        log.blocking_append((0..10).map(|i| entry_of(i, if i == 5 { 500 } else { 1 })))
            .await
            .unwrap();
        let tree = log.reader.log.clone();
        assert!(tree.get(chunk_key(5, 2)).unwrap().is_some());
        // What such a read sees: the first chunk and the one after, not the rest.
        tree.remove(chunk_key(5, 2)).unwrap();
        let read = |from: u64| {
            let mut stored = StoredEntries::new(tree.range(index_key(from)..index_key(from + 1)));
            stored.next().unwrap().unwrap()
        };
        let part = read(5);
        assert_eq!(part.index, 5);
        let now = log.reader.writes.seen();
        assert!(now.any.is_multiple_of(2));
        assert!(matches!(
            log.reader.decode(part, now),
            Err(StoreError::Codec(_))
        ));
        // Read from a log being written (an odd count), or written since: a rewrite.
        for any in [now.any - 1, now.any - 2] {
            let seen = WritesSeen { any, ..now };
            assert!(matches!(
                log.reader.decode(read(5), seen),
                Ok(Decoded::Rewritten)
            ));
        }
        // A chunk without its entry's first, as the next read would meet it.
        tree.remove(index_key(5)).unwrap();
        assert!(read(5).bytes.is_none());
        assert!(matches!(
            log.reader.decode(read(5), now),
            Err(StoreError::Corrupt(_))
        ));
        let mut reader = log.get_log_reader().await;
        assert!(reader.try_get_log_entries(0..10).await.is_err());

        log.reader.first_kept.store(6, Ordering::SeqCst);
        assert!(matches!(
            log.reader.decode(read(5), now),
            Ok(Decoded::Purged)
        ));
        assert!(
            matches!(log.reader.decode(read(6), now), Ok(Decoded::Entry(e)) if e == entry_of(6, 1))
        );
        let seen = reader.try_get_log_entries(0..10).await.unwrap();
        assert_eq!(seen, (6..10).map(|i| entry_of(i, 1)).collect::<Vec<_>>());
    }

    /// A read that a truncation and the new leader's appends overtake mid-way holds the old
    /// log's first leaf and reads the new log's after it. The premise is checked on a raw read
    /// (it mixes terms); both readers return nothing from such a read.
    #[tokio::test]
    async fn a_read_overtaken_by_a_truncation_returns_no_mix_of_two_logs() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut log, _sm) =
            crate::store::open(&crate::store::StoreConfig::new(dir.path())).unwrap();
        log.blocking_append((0..200).map(|i| in_term(1, entry(i))))
            .await
            .unwrap();
        let tree = log.reader.log.clone();
        // Three reads begin and take their first leaf, then the log is replaced from 4 on.
        let seen = log.reader.writes.seen();
        let mut reads: Vec<StoredEntries> = (0..3)
            .map(|_| StoredEntries::new(tree.range(index_key(0)..index_key(200))))
            .collect();
        for read in &mut reads {
            assert!(read.keys.peek().is_some());
        }
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 4))
            .await
            .unwrap();
        log.blocking_append((4..200).map(|i| in_term(2, entry(i))))
            .await
            .unwrap();
        let raw = reads.pop().unwrap();
        let terms: std::collections::BTreeSet<u64> = raw
            .map(|s| codec::decode::<Entry>(&s.unwrap().bytes.unwrap()).unwrap())
            .filter(|e| e.log_id.index >= 4)
            .map(|e| e.log_id.leader_id.term)
            .collect();
        assert_eq!(
            terms,
            [1, 2].into(),
            "the premise: a raw read mixes the two logs"
        );
        let to_send = log.reader.collect_to_send(reads.pop(), 0, seen).unwrap();
        assert_eq!(to_send, Vec::new());
        let collected = log.reader.collect(reads.pop().unwrap(), seen).unwrap();
        assert_eq!(collected, Vec::new());
        // A read begun now reads the new log.
        let now = log.reader.entries(0..200).unwrap();
        assert_eq!(now.len(), 200);
        assert!(now[4..].iter().all(|e| e.log_id.leader_id.term == 2));
    }

    /// Appends and truncations are counted for the reads beside them; only truncations make a
    /// read's entries no one log.
    #[tokio::test]
    async fn appends_and_truncations_are_counted_for_reads_beside_them() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut log, _sm) =
            crate::store::open(&crate::store::StoreConfig::new(dir.path())).unwrap();
        let writes = log.reader.writes.clone();
        let before = writes.seen();
        log.blocking_append((0..4).map(entry)).await.unwrap();
        assert!(writes.changed_since(before));
        assert!(!writes.truncated_since(before));
        let appended = writes.seen();
        assert!(!writes.changed_since(appended));
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 2))
            .await
            .unwrap();
        assert!(writes.changed_since(appended));
        assert!(writes.truncated_since(appended));
        assert!(!writes.truncated_since(writes.seen()));
    }

    /// A write that panics still ends its count: a count left odd would excuse every later
    /// torn entry as rewritten.
    #[test]
    fn a_write_that_panics_still_ends_its_count() {
        let writes = LogWrites::default();
        let before = writes.seen();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            writes.counted(true, || panic!("sled failed inside the write"))
        }));
        assert!(panicked.is_err());
        let after = writes.seen();
        assert!(writes.changed_since(before) && writes.truncated_since(before));
        assert!(!writes.changed_since(after), "an append count left odd");
        assert!(
            !writes.truncated_since(after),
            "a truncation count left odd"
        );
    }

    /// A truncation's batches each hold whole entries: a crash between two leaves no entry
    /// cut short (they are removed from the last batch backwards).
    #[test]
    fn removal_batches_end_where_an_entry_ends() {
        // Entries 0..20, every third with 4 chunks after its first.
        let keys: Vec<sled::IVec> = (0..20u64)
            .flat_map(|i| {
                let chunks = if i % 3 == 0 { 4 } else { 0 };
                std::iter::once(sled::IVec::from(&index_key(i)[..]))
                    .chain((1..=chunks).map(move |n| sled::IVec::from(&chunk_key(i, n)[..])))
            })
            .collect();
        for size in [1, 2, 3, 5, 7, keys.len(), keys.len() + 1] {
            let batches = whole_entry_batches(&keys, size);
            assert_eq!(
                batches.concat(),
                keys,
                "size {size}: every key once, in order"
            );
            for batch in &batches {
                assert_eq!(batch[0].len(), 8, "size {size}: a batch starts at an entry");
                // A batch is as large as asked, or stops at the first entry's end after that.
                let whole = batch.len() <= size || batch[size..].iter().all(|k| k.len() == 10);
                assert!(whole, "size {size}: {} keys", batch.len());
            }
        }
    }

    /// No log page grows into one of sled's blob files, however large the entries: the
    /// reason for the chunks (see `CHUNK_BYTES`).
    #[tokio::test]
    async fn a_log_of_large_entries_makes_no_blob_files() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut log, _sm) =
            crate::store::open(&crate::store::StoreConfig::new(dir.path())).unwrap();
        // ~50 KB each, as a batch of 26 orders of 100 line items is.
        for i in 0..200 {
            log.blocking_append([entry_of(i, 800)]).await.unwrap();
        }
        let blobs = std::fs::read_dir(dir.path().join("sled").join("blobs"))
            .map_or(0, |files| files.count());
        assert_eq!(blobs, 0, "sled wrote log pages as blob files");
    }

    /// The entry indexes the log tree holds keys of, each once.
    fn on_disk(dir: &std::path::Path) -> Vec<u64> {
        let mut indexes: Vec<u64> = keys_on_disk(dir).into_iter().map(|k| k.0).collect();
        indexes.dedup();
        indexes
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

    /// Whether `task`, which must wait for something held back, finishes anyway within a
    /// window: one that did not wait would within microseconds; nothing can make one that
    /// waits finish, so there is nothing to poll for.
    async fn finishes_early<T>(task: &tokio::task::JoinHandle<T>) -> bool {
        let window = tokio::time::Instant::now() + std::time::Duration::from_millis(300);
        while tokio::time::Instant::now() < window {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            if task.is_finished() {
                return true;
            }
        }
        false
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
        let early = finishes_early(&append).await;
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

    /// Even with `UnsafeNoFsync`, a vote is saved only once a flush has run: a vote lost in a
    /// crash would let the node vote twice in one term.
    #[tokio::test]
    #[allow(clippy::await_holding_lock)]
    async fn a_vote_waits_for_its_flush_even_without_fsync() {
        let dir = tempfile::TempDir::new().unwrap();
        let config = crate::store::StoreConfig {
            durability: Durability::UnsafeNoFsync,
            ..crate::store::StoreConfig::new(dir.path())
        };
        let (mut log, _sm) = crate::store::open(&config).unwrap();
        let durable = log.durable.clone();
        let held = durable.hold_flushes();
        let vote = tokio::spawn(async move {
            log.save_vote(&Vote::new(2, 1)).await.unwrap();
        });
        let early = finishes_early(&vote).await;
        drop(held);
        assert!(!early, "the vote was saved before any flush could run");
        tokio::time::timeout(std::time::Duration::from_secs(30), vote)
            .await
            .expect("saved once the flush could run")
            .unwrap();
    }

    /// An append that would leave a hole after a purge held back for an install waits for
    /// the install however long it takes (it used to give up after 60 s and write the hole,
    /// which a crash before the install's end made unreadable), and fails if the install does.
    #[tokio::test(start_paused = true)]
    async fn an_append_across_a_hole_waits_for_the_install_to_end() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut log, _sm) =
            crate::store::open(&crate::store::StoreConfig::new(dir.path())).unwrap();
        let floor = log.floor.clone();
        log.blocking_append((0..10).map(entry)).await.unwrap();
        floor.set_applied(Some(9));
        // A snapshot up to 100 comes in; openraft purges up to it, held at what is applied.
        floor.begin_receiving();
        let snapshot_last = LogId::new(CommittedLeaderId::new(1, 1), 100);
        log.purge(snapshot_last).await.unwrap();
        let purged = Some(LogId::new(CommittedLeaderId::new(1, 1), 9));
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, purged);

        let append_101 = |mut log: LogStore| {
            tokio::spawn(async move {
                let appended = log.blocking_append([entry(101)]).await;
                (log, appended)
            })
        };
        let long = std::time::Duration::from_secs(3600);
        let waiting = append_101(log);
        tokio::time::sleep(long).await;
        assert!(!waiting.is_finished(), "appended across the hole");
        floor.install_failed();
        let (mut log, appended) = waiting.await.unwrap();
        assert!(appended.is_err(), "the install failed, so does the append");
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, purged);

        floor.begin_receiving();
        let waiting = append_101(log);
        tokio::time::sleep(long).await;
        assert!(!waiting.is_finished(), "appended across the hole");
        floor.install_done(Some(snapshot_last)).unwrap();
        let (mut log, appended) = waiting.await.unwrap();
        appended.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(snapshot_last));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(101));
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
