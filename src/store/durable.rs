//! Making what sled has written durable, which sled 0.34's own `flush` does not quite do.
//!
//! On Linux, sled's flush ends with `sync_file_range` on its file. That writes the data out,
//! but not the file's metadata: as sled's file grows, its new size and blocks are only
//! recorded on disk by the file system's next journal commit (sled's own `sync_all` comes from
//! a background thread every 500 ms). It does not flush the disk's write cache either. And
//! sled writes pages over about 128 KiB (log leaves of large entries before layout 7) to blob files
//! that it never fsyncs. A log append acknowledged after sled's flush alone could so be lost
//! in a power failure or a kernel crash, though not when only the process dies. `flush` here
//! follows sled's with an `fdatasync` of its file (data, size and a cache flush), and an
//! fsync of each blob file written since the last one, and of their directory.
//!
//! sled writes a blob file while it reserves the entry's place, which can be during a flush
//! here: a file listed by one flush may be half written. It is fsynced then, and once more by
//! the next flush, whose sled flush began after the listing and so waited for that write to
//! end. Flushes run one at a time, so "the next" is well defined.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{DataDirLock, StoreError};

/// A sled database and the files behind it, flushed durably.
pub(crate) struct DurableFlush {
    db: sled::Db,
    /// sled's one data file (`db`), opened only to fsync it.
    file: File,
    blobs: PathBuf,
    /// Blob files as flushes have seen them; the mutex also runs flushes one at a time.
    blobs_seen: Mutex<BlobsSeen>,
    /// The data dir's lock: both halves of an open store hold this, so the lock goes when the
    /// store is closed.
    _dir_lock: DataDirLock,
}

impl DurableFlush {
    /// For `db`, whose files are in `sled_dir`. Fsyncs the blob files already there: written
    /// before this start, they may never have been.
    pub fn new(
        db: sled::Db,
        sled_dir: &Path,
        dir_lock: DataDirLock,
    ) -> Result<Arc<DurableFlush>, StoreError> {
        let durable = DurableFlush {
            db,
            file: File::open(sled_dir.join("db"))?,
            blobs: sled_dir.join("blobs"),
            blobs_seen: Mutex::new(BlobsSeen::default()),
            _dir_lock: dir_lock,
        };
        // Nothing writes yet: what is there is whole once fsynced.
        let mut seen = durable.blobs_seen.lock().unwrap_or_else(|p| p.into_inner());
        durable.sync_new_blobs(&mut seen)?;
        let listed = std::mem::take(&mut seen.listed_once);
        seen.whole.extend(listed);
        drop(seen);
        Ok(Arc::new(durable))
    }

    /// Flushes sled and makes everything it wrote before durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut seen = self.blobs_seen.lock().unwrap_or_else(|p| p.into_inner());
        self.db.flush()?;
        self.file.sync_data()?;
        self.sync_new_blobs(&mut seen)?;
        Ok(())
    }

    /// Holds every flush back until the guard is dropped (tests of what waits for one).
    #[cfg(test)]
    pub(crate) fn hold_flushes(&self) -> std::sync::MutexGuard<'_, impl Sized> {
        self.blobs_seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `flush` on tokio's blocking pool.
    pub async fn flush_async(self: &Arc<Self>) -> Result<(), StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.flush()).await?
    }

    /// Fsyncs the blob files listed for the first time, and again those listed first by the
    /// flush before (whole by now), then their directory; returns the files it fsynced.
    fn sync_new_blobs(&self, seen: &mut BlobsSeen) -> Result<Vec<OsString>, StoreError> {
        let present = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<HashSet<_>, _>>()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => return Err(e.into()),
        };
        let mut fsynced = Vec::new();
        for name in present.difference(&seen.whole) {
            match File::open(self.blobs.join(name)) {
                Ok(blob) => blob.sync_all()?,
                // Removed by sled meanwhile: nothing to keep.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            }
            fsynced.push(name.clone());
        }
        if !fsynced.is_empty() {
            File::open(&self.blobs)?.sync_all()?;
        }
        let newly: HashSet<OsString> = present
            .iter()
            .filter(|n| !seen.whole.contains(*n) && !seen.listed_once.contains(*n))
            .cloned()
            .collect();
        // Those listed by the last flush were whole before this one's sled flush returned.
        seen.whole
            .extend(seen.listed_once.drain().filter(|n| present.contains(n)));
        seen.whole.retain(|n| present.contains(n));
        seen.listed_once = newly;
        Ok(fsynced)
    }
}

/// The blob files flushes have seen (sled removes those it no longer needs; so are they here).
#[derive(Default)]
struct BlobsSeen {
    /// Fsynced after they were whole: done.
    whole: HashSet<OsString>,
    /// Listed by the last flush only: maybe half written then, fsynced again by the next.
    listed_once: HashSet<OsString>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn durable_store(dir: &Path) -> (sled::Db, Arc<DurableFlush>) {
        let sled_dir = dir.join("sled");
        let (db, _) = super::super::open_sled(&sled_dir, 1 << 20, false).unwrap();
        let lock = DataDirLock::take(dir, std::time::Duration::ZERO).unwrap();
        (db.clone(), DurableFlush::new(db, &sled_dir, lock).unwrap())
    }

    /// A value over sled's blob threshold goes to a blob file of its own, which flushes find
    /// and fsync.
    #[test]
    fn a_flush_fsyncs_the_blob_files_sled_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let (db, durable) = durable_store(dir.path());
        db.insert("large", vec![7u8; 300 << 10]).unwrap();
        durable.flush().unwrap();
        let blobs: HashSet<OsString> = std::fs::read_dir(dir.path().join("sled/blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(!blobs.is_empty(), "sled kept the value in a blob file");
        let seen = durable.blobs_seen.lock().unwrap();
        assert_eq!(seen.listed_once, blobs, "fsynced, and to be once more");
    }

    /// A blob file a flush lists may be half written: it is fsynced then, again by the next
    /// flush (whole by then), and not after; one sled removed is forgotten.
    #[test]
    fn a_blob_file_is_fsynced_again_by_the_flush_after_it_was_first_listed() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, durable) = durable_store(dir.path());
        let blob = dir.path().join("sled/blobs/123");
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, b"half").unwrap();
        let sync = || {
            let mut seen = durable.blobs_seen.lock().unwrap();
            durable.sync_new_blobs(&mut seen).unwrap()
        };
        assert_eq!(sync(), vec![OsString::from("123")]);
        std::fs::write(&blob, b"half and the rest").unwrap();
        assert_eq!(sync(), vec![OsString::from("123")], "again, now whole");
        assert!(sync().is_empty(), "done");
        std::fs::remove_file(&blob).unwrap();
        assert!(sync().is_empty());
        assert!(durable.blobs_seen.lock().unwrap().whole.is_empty());
    }
}
