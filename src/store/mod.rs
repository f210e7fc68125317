//! Everything a node keeps on disk, behind openraft's storage traits.
//!
//! One sled database per node holds four trees: `log` (Raft entries by big-endian index),
//! `raft` (vote, committed and purged log ids, the snapshot-install marker), `sm` (the order
//! state machine) and `cache_sweep` (keys read to keep sled's cache within its size).
//! Snapshots are single files under `snapshots/`. The log store acknowledges appends only
//! after sled has flushed them (group commit on a flusher thread); the state machine writes
//! each applied batch as one atomic sled batch.

mod apply_lag;
pub mod backup;
mod cache_sweep;
mod changes;
mod customer_index;
mod defrag;
mod durable;
mod error;
mod keys;
mod list_index;
mod log_store;
mod order_state;
mod overlay;
mod reader;
mod snapshot_file;
mod snapshot_view;
mod state_machine;
mod status_index;
mod upgrade;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use changes::{ChangeRetention, ChangesPage, DEFAULT_CHANGE_RETENTION_REVISIONS};
pub use defrag::{defrag, DefragReport};
pub use error::StoreError;
pub use log_store::{LeadingFlag, LogReader, LogStore};
pub use reader::{OrderFilter, OrderPage, OrderReader, PageStart};
pub use state_machine::{SnapshotFiles, StateMachineStore};

/// How hard a log append is pushed to disk before openraft hears it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The default: an append is acknowledged after sled's flush (fsync) covers it.
    Fsync,
    /// UNSAFE: acknowledge appends before they reach disk. A crash of a majority can lose
    /// acknowledged orders. Only for benchmarks that say they use it. Votes and purges are
    /// still flushed (see `LogStore::flush_always`).
    UnsafeNoFsync,
}

/// Where and how to open a node's store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub dir: PathBuf,
    /// sled's page cache in bytes (sled's own default is 1 GiB; ordo's is 16 MiB). sled counts
    /// pages at about their stored size: each MiB here measured about 3.5 MB of a node's RSS
    /// (docs/performance.md, "What the cache costs").
    pub cache_capacity_bytes: u64,
    pub durability: Durability,
    /// Stored bytes of log entries replication reads for one append (see `LogReader`).
    pub read_batch_bytes: usize,
    /// How much of the change log this node keeps (`changes`).
    pub change_retention: ChangeRetention,
    /// Whether a new store compresses its pages on disk (zstd, in sled): about a quarter of
    /// the disk, at about half the write rate on two cores (docs/performance.md, "A
    /// compressed store"). Fixed when the store is created; an existing store keeps its own.
    pub compress: bool,
    /// The longest a log append waits for the state machine to come within 256 entries of the
    /// commit (`apply_lag`). openraft's core waits with it: keep it well inside an election
    /// timeout, and above one heartbeat, so that a leader sending faster than this node applies
    /// sees its appends time out and sends smaller ones (`Node` derives it from the timings).
    pub apply_lag_wait: std::time::Duration,
    /// How often to sweep sled's cache so that it lets go of what it holds past its capacity
    /// (`cache_sweep`); `None` (the default outside a node) never does: a short-lived store
    /// (restore, defrag, tests) does not need it.
    pub cache_sweep_every: Option<std::time::Duration>,
}

pub const DEFAULT_CACHE_CAPACITY_BYTES: u64 = 16 * 1024 * 1024;
pub const DEFAULT_READ_BATCH_BYTES: usize = 1024 * 1024;
/// Twice the default heartbeat, a third of the default shortest election timeout.
pub const DEFAULT_APPLY_LAG_WAIT: std::time::Duration = std::time::Duration::from_millis(100);
/// A node's cache sweep interval (a sweep costs ~8 ms of one core; see `cache_sweep` for why
/// not more often).
pub const DEFAULT_CACHE_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl StoreConfig {
    pub fn new(dir: impl AsRef<Path>) -> Self {
        StoreConfig {
            dir: dir.as_ref().to_path_buf(),
            cache_capacity_bytes: DEFAULT_CACHE_CAPACITY_BYTES,
            durability: Durability::Fsync,
            read_batch_bytes: DEFAULT_READ_BATCH_BYTES,
            change_retention: ChangeRetention::default(),
            compress: false,
            apply_lag_wait: DEFAULT_APPLY_LAG_WAIT,
            cache_sweep_every: None,
        }
    }
}

/// How far the state machine covers the log while a snapshot comes in: the log store never
/// purges past what the state machine has applied and committed to sled then.
///
/// openraft 0.9 purges the log as soon as it hands a received snapshot to the state machine,
/// before the install is done; a crash then would leave a log that starts after the state
/// machine ends. From the first chunk received until the install is done, purges stop at the
/// state machine's applied index, and the rest is purged as soon as the install is done
/// (before any entry after the snapshot arrives, so the log never has a hole). Outside
/// installs openraft purges only what a snapshot covers, never past the applied index.
///
/// It also carries the applied index against the commit (`apply_lag`), for appends to wait on.
pub(crate) struct AppliedFloor {
    /// One lock for all of it: deciding how far a purge may go and holding back the rest
    /// must be one step with respect to the end of an install.
    state: std::sync::Mutex<FloorState>,
    /// Signalled when an install is done (appends that would leave a hole wait for it).
    installed: tokio::sync::Notify,
    purger: log_store::LogPurger,
    /// The same applied index against the commit: appends wait while it trails far behind.
    lag: apply_lag::ApplyLag,
}

#[derive(Debug, Default)]
struct FloorState {
    applied: Option<u64>,
    receiving: bool,
    /// A purge held back while a snapshot came in.
    deferred: Option<crate::raft::LogId>,
    /// The install failed: appends waiting for it fail too (the Raft core stops on the
    /// install's error anyway, but it may be waiting in one of them).
    install_failed: bool,
}

/// How far a purge may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PurgePlan {
    /// As far as asked.
    All,
    /// Up to this applied index (or nothing); the rest is deferred to the install's end.
    HeldAt(Option<u64>),
}

/// How often an append that would leave a hole in the log says it is still waiting for the
/// install to end.
const HOLE_WAIT_WARNING: std::time::Duration = std::time::Duration::from_secs(60);

impl AppliedFloor {
    fn new(purger: log_store::LogPurger, apply_lag_wait: std::time::Duration) -> AppliedFloor {
        AppliedFloor {
            state: Default::default(),
            installed: tokio::sync::Notify::new(),
            purger,
            lag: apply_lag::ApplyLag::new(apply_lag_wait),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FloorState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn purger(&self) -> &log_store::LogPurger {
        &self.purger
    }

    /// Decides how far a purge up to `asked` may go, deferring the rest while a snapshot
    /// comes in.
    fn plan_purge(&self, asked: crate::raft::LogId) -> PurgePlan {
        let mut st = self.lock();
        if !st.receiving || st.applied.is_some_and(|a| a >= asked.index) {
            return PurgePlan::All;
        }
        if st.deferred.is_none_or(|d| d < asked) {
            st.deferred = Some(asked);
        }
        PurgePlan::HeldAt(st.applied)
    }

    /// The state machine now holds (durably) the snapshot ending at `snapshot_last`: purges
    /// are free again, and one held back meanwhile is done now, up to the snapshot at most.
    fn install_done(&self, snapshot_last: Option<crate::raft::LogId>) -> Result<(), StoreError> {
        let deferred = {
            let mut st = self.lock();
            st.applied = snapshot_last.map(|l| l.index);
            st.receiving = false;
            st.deferred.take()
        };
        self.lag.set_applied(snapshot_last.map(|l| l.index));
        let purged = match (deferred, snapshot_last) {
            (Some(d), Some(s)) => self.purger.purge_upto(d.min(s)),
            _ => Ok(()),
        };
        self.installed.notify_waiters();
        purged
    }

    /// True while a purge is held back for an install still running.
    fn purge_deferred(&self) -> bool {
        let st = self.lock();
        st.receiving && st.deferred.is_some()
    }

    /// Waits while writing entries from `first_index` on would leave a hole after
    /// `last_stored`: a purge is held back for an install still running, and a new leader
    /// already sends the entries after the snapshot. Without a deadline: an append across
    /// the hole would be acknowledged, and after a crash before the install's end the log
    /// could not be read back. An install ends on its own, done or failed.
    async fn wait_unless_hole_closed(
        &self,
        first_index: u64,
        last_stored: Option<u64>,
    ) -> Result<(), StoreError> {
        let started = tokio::time::Instant::now();
        let mut warn_at = started + HOLE_WAIT_WARNING;
        let mut said = false;
        loop {
            let notified = self.installed.notified();
            {
                let st = self.lock();
                if st.install_failed {
                    return Err(StoreError::InstallFailed);
                }
                let gap = last_stored.map_or(first_index > 0, |l| first_index > l + 1);
                if !(st.receiving && st.deferred.is_some() && gap) {
                    return Ok(());
                }
            }
            if !std::mem::replace(&mut said, true) {
                tracing::info!(
                    first_index,
                    "append after a snapshot still being installed: waiting for the install"
                );
            }
            if tokio::time::timeout_at(warn_at, notified).await.is_err() {
                tracing::warn!(
                    first_index,
                    waited_s = started.elapsed().as_secs(),
                    "an append is still waiting for a snapshot install to end"
                );
                warn_at += HOLE_WAIT_WARNING;
            }
        }
    }

    /// The install failed: an append waiting for it fails too, instead of waiting forever.
    fn install_failed(&self) {
        self.lock().install_failed = true;
        self.installed.notify_waiters();
    }

    fn set_applied(&self, index: Option<u64>) {
        self.lock().applied = index;
        self.lag.set_applied(index);
    }

    fn apply_lag(&self) -> &apply_lag::ApplyLag {
        &self.lag
    }

    fn begin_receiving(&self) {
        let mut st = self.lock();
        st.receiving = true;
        st.install_failed = false;
    }
}

/// Opens (or creates) a node's store: the Raft log and the order state machine over one sled
/// database. A state machine left half-way through a snapshot install is finished here.
pub fn open(config: &StoreConfig) -> Result<(LogStore, StateMachineStore), StoreError> {
    std::fs::create_dir_all(&config.dir)?;
    let dir_lock = DataDirLock::take(&config.dir, LOCK_WAIT)?;
    defrag::finish_interrupted(&config.dir)?;
    let started = std::time::Instant::now();
    let sled_dir = config.dir.join("sled");
    let (db, compressed) = open_sled(&sled_dir, config.cache_capacity_bytes, config.compress)?;
    if compressed != config.compress {
        tracing::warn!(
            data_dir = %config.dir.display(),
            compressed,
            "this store keeps the compression it was created with \
             (--compress-store only applies to new data dirs)"
        );
    }
    let durable = durable::DurableFlush::new(db.clone(), &sled_dir, dir_lock)?;
    // The first open after a long run takes a while at scale (sled replays its file: 19 s at
    // ten million orders, docs/performance.md): said, with sled's share, so that a slow
    // start is not taken for a hang.
    let sled_ms = started.elapsed().as_millis() as u64;
    let floor = Arc::new(AppliedFloor::new(
        log_store::LogPurger::new(&db)?,
        config.apply_lag_wait,
    ));
    let sm = StateMachineStore::open(
        db.clone(),
        durable.clone(),
        config.dir.join("snapshots"),
        floor.clone(),
        config.change_retention,
    )?;
    let sweep = match config.cache_sweep_every {
        Some(every) => Some(cache_sweep::CacheSweep::start(&db, every)?),
        None => None,
    };
    let log = LogStore::open(
        db,
        durable,
        config.durability,
        floor,
        config.read_batch_bytes,
        sweep,
    )?;
    tracing::info!(
        sled_ms,
        total_ms = started.elapsed().as_millis() as u64,
        "store opened"
    );
    Ok((log, sm))
}

/// How long to wait for sled's file lock: a store just dropped in this process (or a node
/// process just exiting) releases it only when sled's background threads have stopped.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// zstd's level for `StoreConfig::compress` (the one measured); sled compresses every page it
/// writes, on the write path.
const COMPRESSION_LEVEL: i32 = 3;

/// Opens (or creates) the sled database in `sled_dir`, compressed if it is new and
/// `compress_if_new` says so; returns it and whether it compresses. sled fixes compression when
/// it creates its files and refuses another setting later: a store keeps what it was created
/// with, which its `conf` says.
fn open_sled(
    sled_dir: &Path,
    cache_capacity_bytes: u64,
    compress_if_new: bool,
) -> Result<(sled::Db, bool), StoreError> {
    let started = std::time::Instant::now();
    let compress = stored_compression(sled_dir).unwrap_or(compress_if_new);
    loop {
        let opened = sled::Config::new()
            .path(sled_dir)
            .cache_capacity(cache_capacity_bytes)
            .use_compression(compress)
            .compression_factor(COMPRESSION_LEVEL)
            .open();
        match opened {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Ok(db) => {
                sync_sled_conf(sled_dir)?;
                // The name of sled's directory too (made with the data dir on a first start).
                if let Some(parent) = sled_dir.parent() {
                    sync_dir(parent)?;
                }
                return Ok((db, compress));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// An exclusive lock on a data dir (`flock` on its `lock` file), held by an open store for
/// as long as it is open and by `ordo defrag` while it runs: sled's own lock covers only its
/// files, not the work around them (an interrupted defrag finished at open, or a copy made
/// beside them).
pub(crate) struct DataDirLock {
    /// Locked while open.
    _file: std::fs::File,
}

impl DataDirLock {
    /// Takes the lock of `dir`, waiting up to `wait` for another holder to let it go.
    pub(crate) fn take(dir: &Path, wait: std::time::Duration) -> Result<DataDirLock, StoreError> {
        use std::os::unix::io::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        let started = std::time::Instant::now();
        loop {
            // SAFETY: flock on a descriptor this function owns; no memory is involved.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(DataDirLock { _file: file });
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(e.into());
            }
            if started.elapsed() >= wait {
                return Err(StoreError::InUse(dir.to_path_buf()));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// sled writes its `conf` file, which holds the compression setting, without an fsync. Were it
/// lost in a crash soon after the store was made, sled would take the next start's setting for
/// the store's and fail to read its own pages; so it is made durable on every open.
fn sync_sled_conf(sled_dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(sled_dir.join("conf"))?.sync_all()?;
    sync_dir(sled_dir)
}

/// Fsyncs a directory: makes the names in it durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Whether the sled store in `sled_dir` compresses its pages, from the `conf` file sled keeps
/// its fixed settings in (lines such as `use_compression: true`, then a binary checksum);
/// `None` without one.
fn stored_compression(sled_dir: &Path) -> Option<bool> {
    let conf = std::fs::read(sled_dir.join("conf")).ok()?;
    String::from_utf8_lossy(&conf)
        .lines()
        .find_map(|l| l.strip_prefix("use_compression:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Bytes the store occupies on disk (sled files and snapshots).
pub fn disk_usage_bytes(dir: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        if meta.is_dir() {
            std::fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0)
        } else {
            meta.len()
        }
    }
    walk(dir)
}
