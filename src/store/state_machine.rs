//! The openraft adapter of the order state machine: `RaftStateMachine` over the `sm` tree
//! (layout in `keys`), its snapshots (dumped while applies go on, see `snapshot_view`;
//! installed from the leader's file), and the applied log id and membership it tracks.
//!
//! A log entry carries a batch of commands. `apply` runs entries against an `Overlay`, each
//! command through `order::apply_command` (`order_state`), and commits every chunk of them as
//! one sled batch together with the chunk's last log id, so a crash never leaves half a chunk.
//! Applying is deterministic: the only time used is the one the leader stamped into the
//! command.

use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta};
use serde::Serialize;

use super::durable::DurableFlush;
use super::keys;
use super::order_state::{fingerprint, OverlayState};
use super::overlay::Overlay;
use super::reader::OrderReader;
use super::snapshot_file::{self, SnapshotDir};
use super::snapshot_view::{DumpGuard, SnapshotView};
use super::{AppliedFloor, StoreError};
use crate::codec;
use crate::order::{apply_command, CommandOutcome, OrderCommand, OrderOp, MAX_CLOCK_STEP_MS};
use crate::raft::{
    ApplyResult, Entry, LogId, Snapshot, StorageError, StoredMembership, TypeConfig,
};
use crate::telemetry;

/// sled's memory use grows steeply with the size of one atomic batch (measured: 300k keys in
/// batches of 4096 took +520 MB, in batches of ≤512 about +95 MB, the page cache), so big
/// writes are cut into batches no larger than these.
const INSTALL_BATCH_RECORDS: usize = 256;
/// Keys written per atomic apply batch, about (a command writes up to ~6).
const APPLY_CHUNK_KEYS: usize = 384;

fn put_encoded<T: Serialize>(ov: &mut Overlay, key: &[u8], value: &T) -> Result<(), StoreError> {
    ov.insert(key.to_vec(), codec::encode(value)?);
    Ok(())
}

/// Applies one order command: the decisions are `order::apply_command`'s, over this chunk's
/// overlay.
fn apply_one(
    ov: &mut Overlay,
    cmd: &OrderCommand,
    clamped: &mut u64,
) -> Result<CommandOutcome, StoreError> {
    let applied = apply_command(&mut OverlayState(ov), cmd, fingerprint(&cmd.op)?)?;
    *clamped += applied.clock_clamped as u64;
    Ok(applied.outcome)
}

/// Read access to a node's current snapshot file, which a backup streams.
#[derive(Clone)]
pub struct SnapshotFiles(Arc<SnapshotDir>);

impl SnapshotFiles {
    /// The current snapshot's meta and its file, opened together (so they match).
    pub fn open_current(
        &self,
    ) -> Result<Option<(crate::raft::SnapshotMeta, std::fs::File)>, StoreError> {
        self.0.open_current()
    }
}

/// The order state machine of one node, implementing openraft's `RaftStateMachine`.
pub struct StateMachineStore {
    db: sled::Db,
    /// Flushes that reach the disk (`durable`).
    durable: Arc<DurableFlush>,
    raft: sled::Tree,
    reader: OrderReader,
    snapshots: Arc<SnapshotDir>,
    view: Arc<SnapshotView>,
    /// Shared with the log store: how far this state machine covers the log.
    floor: Arc<AppliedFloor>,
    /// Files being received from the leader (`begin_receiving_snapshot`), found again by
    /// inode when openraft hands one back to `install_snapshot`.
    receiving: Arc<std::sync::Mutex<Vec<PathBuf>>>,
    /// How much of the change log this node keeps (trimmed as it applies).
    retention: super::ChangeRetention,
}

impl StateMachineStore {
    pub(super) fn open(
        db: sled::Db,
        durable: Arc<DurableFlush>,
        snapshot_dir: PathBuf,
        floor: Arc<AppliedFloor>,
        retention: super::ChangeRetention,
    ) -> Result<StateMachineStore, StoreError> {
        let sm = db.open_tree("sm")?;
        let raft = db.open_tree("raft")?;
        let snapshots = Arc::new(SnapshotDir::open(snapshot_dir)?);
        let store = StateMachineStore {
            db,
            durable,
            raft,
            reader: OrderReader::new(sm),
            snapshots,
            view: Arc::new(SnapshotView::default()),
            floor,
            receiving: Default::default(),
            retention,
        };
        if store.raft.get(keys::INSTALLING)?.is_some() {
            tracing::warn!(
                "a snapshot install was interrupted; loading the current snapshot again"
            );
            store.load_current_snapshot()?;
        } else if let Some(ahead) = store.snapshot_ahead()? {
            // A received snapshot is renamed into place before its load is marked: a crash
            // between the two leaves it ahead of the state machine. openraft would take it for
            // what this node holds (and refuse it when sent again), so it is loaded now.
            tracing::warn!(
                snapshot = %ahead,
                "the current snapshot is ahead of the state machine (an install interrupted \
                 before its load began); loading it"
            );
            store.load_current_snapshot()?;
        }
        super::upgrade::ensure(store.sm())?;
        super::list_index::ensure(store.sm())?;
        let (applied, _) = store.applied_state_sync()?;
        store.floor.set_applied(applied.map(|l| l.index));
        store.reader.publish_revision()?;
        Ok(store)
    }

    /// The read handle for the API.
    pub fn reader(&self) -> OrderReader {
        self.reader.clone()
    }

    /// The handle on this node's snapshot files (for backups).
    pub fn snapshot_files(&self) -> SnapshotFiles {
        SnapshotFiles(self.snapshots.clone())
    }

    fn sm(&self) -> &sled::Tree {
        &self.reader.sm
    }

    /// A second handle on the same trees and directory, for blocking work on another thread
    /// while this one keeps exclusive use (openraft holds `&mut self` meanwhile).
    fn blocking_handle(&self) -> StateMachineStore {
        StateMachineStore {
            db: self.db.clone(),
            durable: self.durable.clone(),
            raft: self.raft.clone(),
            reader: self.reader.clone(),
            snapshots: self.snapshots.clone(),
            view: self.view.clone(),
            floor: self.floor.clone(),
            receiving: self.receiving.clone(),
            retention: self.retention,
        }
    }

    pub(super) fn applied_state_sync(
        &self,
    ) -> Result<(Option<LogId>, StoredMembership), StoreError> {
        let applied = self.applied_sync()?;
        let membership = match self.sm().get(keys::MEMBERSHIP)? {
            Some(v) => codec::decode(&v)?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    /// The current snapshot's last log id, if it is past what the state machine has applied.
    /// Only a received snapshot can be: one this node built covers what it had applied.
    fn snapshot_ahead(&self) -> Result<Option<LogId>, StoreError> {
        let Some(meta) = self.snapshots.current_meta()? else {
            return Ok(None);
        };
        let applied = self.applied_sync()?;
        Ok(meta.last_log_id.filter(|&last| Some(last) > applied))
    }

    fn applied_sync(&self) -> Result<Option<LogId>, StoreError> {
        Ok(match self.sm().get(keys::APPLIED)? {
            Some(v) => codec::decode::<Option<LogId>>(&v)?,
            None => None,
        })
    }

    /// Replaces the state machine with the current snapshot file. Marked in the `raft` tree
    /// while it runs, so a crash half-way is finished on the next open.
    pub(super) fn load_current_snapshot(
        &self,
    ) -> Result<SnapshotMeta<u64, openraft::BasicNode>, StoreError> {
        let _g = self
            .reader
            .install_lock
            .write()
            .unwrap_or_else(|p| p.into_inner());
        self.raft.insert(keys::INSTALLING, &[1u8][..])?;
        self.durable.flush()?;
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
            .insert(keys::APPLIED, codec::encode(&meta.last_log_id)?)?;
        self.sm()
            .insert(keys::MEMBERSHIP, codec::encode(&meta.last_membership)?)?;
        // A snapshot an older version built has an older layout and no listing counters.
        super::upgrade::ensure(self.sm())?;
        super::list_index::ensure(self.sm())?;
        self.durable.flush()?;
        self.raft.remove(keys::INSTALLING)?;
        self.durable.flush()?;
        self.reader.publish_revision()?;
        self.reader.users_changed();
        Ok(meta)
    }

    /// `install_snapshot`'s work (which tells appends waiting for it when it fails).
    async fn install_received(
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
        let started = std::time::Instant::now();
        // The received file itself becomes the snapshot (no copy): make it durable, check it
        // is whole (its checksum) and is the one we were told about, rename it over the
        // current one, load it.
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
        // Its layout too: a snapshot this version cannot load must fail here, while the
        // current snapshot and the state machine are still whole.
        let header = tokio::task::spawn_blocking(move || {
            snapshot_file::read(&checked, |k, v| {
                if k == keys::LAYOUT {
                    super::upgrade::readable_layout(Some(&v))?;
                }
                Ok(())
            })
        })
        .await
        .map_err(|e| err(e.into()))?
        .map_err(err)?;
        // The membership too: the state machine takes it from the file, openraft from `meta`.
        if header.last_log_id != meta.last_log_id || header.last_membership != meta.last_membership
        {
            return Err(err(StoreError::Corrupt(format!(
                "snapshot file covers {:?} with membership {:?}, expected {:?} with {:?}",
                header.last_log_id, header.last_membership, meta.last_log_id, meta.last_membership
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
        let bytes = std::fs::metadata(self.snapshots.current_path()).map_or(0, |m| m.len());
        snapshot_done(SnapshotEvent::Installed, &meta.snapshot_id, bytes, started);
        Ok(())
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

    /// Copies a snapshot file into a new, fsynced temp file of the snapshot directory (removed
    /// at once if the copy fails, as a failed build's is).
    async fn copy_to_temp(&self, mut file: Box<tokio::fs::File>) -> Result<PathBuf, StoreError> {
        use tokio::io::{AsyncSeekExt, AsyncWriteExt};
        let temp = self.snapshots.temp_path("installing");
        let copied = async {
            file.seek(std::io::SeekFrom::Start(0)).await?;
            let mut out = tokio::fs::File::create(&temp).await?;
            tokio::io::copy(&mut *file, &mut out).await?;
            out.flush().await?;
            out.sync_all().await
        }
        .await;
        if let Err(e) = copied {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(e.into());
        }
        Ok(temp)
    }

    /// Where the store stands now, for a dump beginning here (between two applies).
    fn horizon(&self) -> Result<keys::Horizon, StoreError> {
        Ok(keys::Horizon {
            next_id: self.reader.next_id()?,
            revision: self.reader.revision_unlocked()?,
        })
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

enum SnapshotEvent {
    Built,
    Installed,
}

/// Counts, times and logs a snapshot this node built or installed.
fn snapshot_done(event: SnapshotEvent, id: &str, bytes: u64, started: std::time::Instant) {
    let took = started.elapsed();
    let (count, duration, what) = match event {
        SnapshotEvent::Built => (
            telemetry::SNAPSHOT_BUILDS,
            telemetry::SNAPSHOT_BUILD_DURATION,
            "built snapshot",
        ),
        SnapshotEvent::Installed => (
            telemetry::SNAPSHOT_INSTALLS,
            telemetry::SNAPSHOT_INSTALL_DURATION,
            "installed snapshot",
        ),
    };
    metrics::counter!(count).increment(1);
    metrics::histogram!(duration).record(took.as_secs_f64());
    metrics::gauge!(telemetry::SNAPSHOT_BYTES).set(bytes as f64);
    tracing::info!(snapshot_id = %id, bytes, ms = took.as_millis() as u64, "{what}");
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
        let started = std::time::Instant::now();
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
            let bytes = file.metadata().map_or(0, |m| m.len());
            snapshot_done(SnapshotEvent::Built, &meta.snapshot_id, bytes, started);
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
            let mut users_touched = false;
            while ov.len() < APPLY_CHUNK_KEYS {
                let Some(entry) = entries.next() else { break };
                let apply_err = |e: StoreError| openraft::StorageIOError::apply(entry.log_id, &e);
                let outcomes = match &entry.payload {
                    EntryPayload::Blank => Vec::new(),
                    EntryPayload::Normal(batch) => {
                        users_touched |= batch
                            .commands
                            .iter()
                            .any(|cmd| matches!(cmd.op, OrderOp::Admin(_)));
                        batch
                            .commands
                            .iter()
                            .map(|cmd| apply_one(&mut ov, cmd, &mut clamped))
                            .collect::<Result<_, _>>()
                            .map_err(apply_err)?
                    }
                    EntryPayload::Membership(m) => {
                        let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                        put_encoded(&mut ov, keys::MEMBERSHIP, &stored).map_err(apply_err)?;
                        Vec::new()
                    }
                };
                results.push(outcomes);
                last = Some(entry.log_id);
            }
            // While a snapshot dump runs, only records its walk has passed are trimmed: one
            // removed ahead of the walk would be saved for it, value and all.
            let trim_upto = self
                .view
                .walked_upto()
                .map(|k| keys::last_change_upto(k.as_deref()));
            let revision =
                super::changes::trim(&mut ov, &self.reader.sm, self.retention, trim_upto)
                    .map_err(StoreError::into_write)?;
            put_encoded(&mut ov, keys::APPLIED, &last).map_err(StoreError::into_write)?;
            put_encoded(&mut ov, keys::COUNTS_AT, &last).map_err(StoreError::into_write)?;
            self.view
                .before_write(self.sm(), ov.keys())
                .map_err(|e| StoreError::from(e).into_write())?;
            ov.commit().map_err(|e| StoreError::from(e).into_write())?;
            self.floor.set_applied(last.map(|l| l.index));
            // Users first: a stream woken by the new revision then sees the change to the
            // users before it sends the chunk's changes. (A stream reading the log right
            // now may still send this chunk's; it ends at its next look.)
            if users_touched {
                self.reader.users_changed();
            }
            self.reader.publish(revision);
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
            let dump = self.view.begin(self.horizon()?)?;
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
        // Each write reaches the disk before it returns (`O_DSYNC`, tokio writes at most 2 MiB
        // at once): a snapshot received whole into the page cache and fsynced at the end would
        // reach the disk in one burst ahead of the log's fsyncs. openraft writes the chunks, so
        // there is no step to pace as the builder does (`PacedFile`).
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DSYNC)
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
        // Appends may wait for this install (`AppliedFloor`): they hear of its end however it
        // ends, an error or a panic (which would end the worker and leave them waiting).
        struct Ends<'a>(&'a super::AppliedFloor, bool);
        impl Drop for Ends<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.install_failed();
                }
            }
        }
        let floor = self.floor.clone();
        let mut ends = Ends(&floor, false);
        let installed = self.install_received(meta, snapshot).await;
        ends.1 = installed.is_ok();
        installed
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.open_current_snapshot().map_err(StoreError::into_read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn blank(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    /// A received snapshot this version cannot load (a newer layout), or whose header does
    /// not match what openraft was told, is refused while the current snapshot and the state
    /// machine are still whole: a newer layout, found only while loading, left the node with a
    /// cleared state machine that every restart failed to load again.
    #[tokio::test]
    async fn a_snapshot_that_cannot_be_loaded_is_refused_before_it_replaces_anything() {
        let dir = tempfile::TempDir::new().unwrap();
        let config = crate::store::StoreConfig::new(dir.path());
        let (log, mut sm) = crate::store::open(&config).unwrap();
        sm.apply((1..=3).map(blank)).await.unwrap();
        let applied = Some(blank(3).log_id);

        let meta = SnapshotMeta {
            last_log_id: Some(blank(10).log_id),
            last_membership: StoredMembership::default(),
            snapshot_id: "newer".into(),
        };
        let newer = super::super::upgrade::CURRENT_LAYOUT + 1;
        let file = sm.snapshots.temp_path("test");
        let records = [Ok((keys::LAYOUT.to_vec(), codec::encode(&newer).unwrap()))];
        snapshot_file::write(&file, &meta, records).unwrap();
        let received = Box::new(tokio::fs::File::open(&file).await.unwrap());
        assert!(sm.install_snapshot(&meta, received).await.is_err());
        assert!(sm.snapshots.current_meta().unwrap().is_none());
        assert_eq!(sm.applied_state_sync().unwrap().0, applied);

        // A file whose header says another membership than openraft was told: refused too.
        let file = sm.snapshots.temp_path("test");
        let records = std::iter::empty::<Result<(Vec<u8>, Vec<u8>), StoreError>>();
        snapshot_file::write(&file, &meta, records).unwrap();
        let told = SnapshotMeta {
            last_membership: StoredMembership::new(
                Some(blank(2).log_id),
                openraft::Membership::new(vec![[1u64].into()], ()),
            ),
            ..meta.clone()
        };
        let received = Box::new(tokio::fs::File::open(&file).await.unwrap());
        assert!(sm.install_snapshot(&told, received).await.is_err());
        assert!(sm.snapshots.current_meta().unwrap().is_none());
        assert_eq!(sm.applied_state_sync().unwrap().0, applied);

        drop((log, sm));
        let (_log, sm) = crate::store::open(&config).unwrap();
        assert_eq!(sm.applied_state_sync().unwrap().0, applied);
    }
}
