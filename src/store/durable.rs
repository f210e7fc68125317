//! Making what sled has written durable, which sled 0.34's own `flush` does not quite do.
//!
//! On Linux, sled's flush ends with `sync_file_range` on its file. That writes the data out,
//! but not the file's metadata: as sled's file grows, its new size and blocks are only
//! recorded on disk by the file system's next journal commit (sled's own `sync_all` comes from
//! a background thread every 500 ms). It does not flush the disk's write cache either. And
//! sled writes values over about 128 KiB (large log entries and pages) to separate blob files
//! that it never fsyncs. A log append acknowledged after sled's flush alone could so be lost
//! in a power failure or a kernel crash, though not when only the process dies. `flush` here
//! follows sled's with an `fdatasync` of its file (data, size and a cache flush), and an
//! fsync of each blob file written since the last one, and of their directory.

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
    /// The blob files fsynced so far that sled still has (it removes those it no longer needs).
    synced_blobs: Mutex<HashSet<OsString>>,
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
            synced_blobs: Mutex::new(HashSet::new()),
            _dir_lock: dir_lock,
        };
        durable.sync_new_blobs()?;
        Ok(Arc::new(durable))
    }

    /// Flushes sled and makes everything it wrote before durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        self.file.sync_data()?;
        self.sync_new_blobs()
    }

    /// `flush` on tokio's blocking pool.
    pub async fn flush_async(self: &Arc<Self>) -> Result<(), StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.flush()).await?
    }

    /// Fsyncs the blob files not fsynced yet, then their directory (for their names).
    fn sync_new_blobs(&self) -> Result<(), StoreError> {
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|p| p.into_inner());
        let present = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<HashSet<_>, _>>()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => return Err(e.into()),
        };
        let mut any = false;
        for name in present.difference(&synced) {
            match File::open(self.blobs.join(name)) {
                Ok(blob) => blob.sync_all()?,
                // Removed by sled meanwhile: nothing to keep.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            }
            any = true;
        }
        if any {
            File::open(&self.blobs)?.sync_all()?;
        }
        *synced = present;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value over sled's blob threshold goes to a blob file of its own, which the flush
    /// finds and fsyncs; one sled no longer has is forgotten.
    #[test]
    fn a_flush_fsyncs_the_blob_files_sled_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let sled_dir = dir.path().join("sled");
        let (db, _) = super::super::open_sled(&sled_dir, 1 << 20, false).unwrap();
        let lock = DataDirLock::take(dir.path(), std::time::Duration::ZERO).unwrap();
        let durable = DurableFlush::new(db.clone(), &sled_dir, lock).unwrap();
        let synced = || durable.synced_blobs.lock().unwrap().clone();
        assert!(synced().is_empty());
        db.insert("large", vec![7u8; 300 << 10]).unwrap();
        durable.flush().unwrap();
        let blobs: HashSet<OsString> = std::fs::read_dir(sled_dir.join("blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(!blobs.is_empty(), "sled kept the value in a blob file");
        assert_eq!(synced(), blobs);
        std::fs::remove_file(sled_dir.join("blobs").join(blobs.iter().next().unwrap())).unwrap();
        durable.sync_new_blobs().unwrap();
        assert_eq!(synced().len(), blobs.len() - 1);
    }
}
