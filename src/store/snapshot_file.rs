//! The snapshot file format and the directory that keeps the current snapshot.
//!
//! A snapshot is one file: `ORDOSNAP`, a length-prefixed encoded `SnapshotMeta`, then every
//! key/value of the state machine tree as length-prefixed records, then an end marker (so a cut
//! file is detected, not half-loaded). It is written to a temp file, fsynced and renamed over
//! `current.snap`, so the current snapshot is always whole. Files stream record by record;
//! nothing holds the whole state machine in memory.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::StoreError;
use crate::codec;
use crate::raft::SnapshotMeta;

const MAGIC: &[u8; 8] = b"ORDOSNAP";
const END_MARKER: u32 = u32::MAX;
const CURRENT: &str = "current.snap";
/// No key or value of the state machine comes near this; a larger length in a file is
/// corruption (or a hostile sender), not a reason to allocate it.
const MAX_RECORD_BYTES: u32 = 64 * 1024 * 1024;

/// The snapshot directory of one node.
pub(super) struct SnapshotDir {
    path: PathBuf,
    seq: AtomicU64,
    publish_lock: Mutex<()>,
}

impl SnapshotDir {
    /// Opens the directory, dropping temp files a crash left behind.
    pub fn open(path: PathBuf) -> Result<SnapshotDir, StoreError> {
        std::fs::create_dir_all(&path)?;
        for entry in std::fs::read_dir(&path)?.flatten() {
            if entry.path().extension().is_some_and(|e| e == "tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(SnapshotDir {
            path,
            seq: AtomicU64::new(0),
            publish_lock: Mutex::new(()),
        })
    }

    pub fn current_path(&self) -> PathBuf {
        self.path.join(CURRENT)
    }

    /// A fresh temp file path in this directory (`kind` says what it is for, in the name).
    pub fn temp_path(&self, kind: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.path
            .join(format!("{kind}-{}-{n}.tmp", std::process::id()))
    }

    /// Makes a complete, fsynced temp file the current snapshot (one received from the leader).
    pub fn publish(&self, temp: &Path) -> Result<(), StoreError> {
        let _guard = self.publish_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.replace_current(temp)
    }

    /// Makes a snapshot this node built (`temp`, covering `meta`) the current one — unless the
    /// current one already covers as much: a snapshot installed from the leader while this
    /// one was being written. Then the installed one stays (putting an older one over it
    /// would hand followers a snapshot behind the purged log) and `temp` is dropped. Returns
    /// the current snapshot's meta and file, opened under the lock so the two match.
    pub fn publish_built(
        &self,
        temp: &Path,
        meta: &SnapshotMeta,
    ) -> Result<(SnapshotMeta, File), StoreError> {
        let _guard = self.publish_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = self.read_current_meta()? {
            if current.last_log_id >= meta.last_log_id {
                let _ = std::fs::remove_file(temp);
                return Ok((current, File::open(self.current_path())?));
            }
        }
        // Opened before the rename: the handle stays on this file if a later one replaces it.
        let file = File::open(temp)?;
        self.replace_current(temp)?;
        Ok((meta.clone(), file))
    }

    fn replace_current(&self, temp: &Path) -> Result<(), StoreError> {
        std::fs::rename(temp, self.current_path())?;
        File::open(&self.path)?.sync_all()?;
        Ok(())
    }

    /// The current snapshot's meta and file, read from one open file so the two always match
    /// (a snapshot published between reading the meta and opening the file would not).
    pub fn open_current(&self) -> Result<Option<(SnapshotMeta, File)>, StoreError> {
        use std::io::{Seek, SeekFrom};
        let mut file = match File::open(self.current_path()) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let meta = read_header(&mut BufReader::new(&mut file))?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Some((meta, file)))
    }

    /// The current snapshot's meta, if there is one.
    #[cfg(test)]
    pub fn current_meta(&self) -> Result<Option<SnapshotMeta>, StoreError> {
        let _guard = self.publish_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.read_current_meta()
    }

    fn read_current_meta(&self) -> Result<Option<SnapshotMeta>, StoreError> {
        match File::open(self.current_path()) {
            Ok(f) => Ok(Some(read_header(&mut BufReader::new(f))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Writes a snapshot file at `path` from the records and fsyncs it.
pub(super) fn write<I>(path: &Path, meta: &SnapshotMeta, records: I) -> Result<(), StoreError>
where
    I: IntoIterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>>,
{
    let file = File::create(path)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(MAGIC)?;
    write_chunk(&mut w, &codec::encode(meta)?)?;
    for rec in records {
        let (k, v) = rec?;
        write_chunk(&mut w, &k)?;
        write_chunk(&mut w, &v)?;
    }
    w.write_all(&END_MARKER.to_be_bytes())?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(())
}

fn write_chunk(w: &mut impl Write, bytes: &[u8]) -> Result<(), StoreError> {
    let len = u32::try_from(bytes.len()).ok().filter(|&l| l != END_MARKER);
    let len = len.ok_or_else(|| StoreError::Corrupt("record too large for a snapshot".into()))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(bytes)?;
    Ok(())
}

fn read_len(r: &mut impl Read) -> Result<u32, StoreError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    Ok(u32::from_be_bytes(len))
}

fn read_chunk(r: &mut impl Read, len: u32) -> Result<Vec<u8>, StoreError> {
    if len > MAX_RECORD_BYTES {
        return Err(StoreError::Corrupt(format!(
            "snapshot record of {len} bytes (at most {MAX_RECORD_BYTES})"
        )));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

fn read_header(r: &mut impl Read) -> Result<SnapshotMeta, StoreError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(StoreError::Corrupt("not an ordo snapshot file".into()));
    }
    let len = read_len(r)?;
    Ok(codec::decode(&read_chunk(r, len)?)?)
}

/// Reads a snapshot file: its meta, then each record in turn through `on_record`.
pub(super) fn read(
    path: &Path,
    mut on_record: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), StoreError>,
) -> Result<SnapshotMeta, StoreError> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
    let meta = read_header(&mut r)?;
    loop {
        let klen = read_len(&mut r)
            .map_err(|_| StoreError::Corrupt("snapshot file is cut short".into()))?;
        if klen == END_MARKER {
            return Ok(meta);
        }
        let key = read_chunk(&mut r, klen)?;
        let vlen = read_len(&mut r)?;
        let value = read_chunk(&mut r, vlen)?;
        on_record(key, value)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{LogId, StoredMembership};

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("at-{index}"),
        }
    }

    fn written(dir: &SnapshotDir, index: u64) -> PathBuf {
        let path = dir.temp_path("test");
        let records = [Ok((b"k".to_vec(), index.to_be_bytes().to_vec()))];
        write(&path, &meta(index), records).unwrap();
        path
    }

    fn header_of(mut file: File) -> SnapshotMeta {
        read_header(&mut BufReader::new(&mut file)).unwrap()
    }

    #[test]
    fn a_built_snapshot_never_replaces_a_newer_installed_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(tmp.path().to_path_buf()).unwrap();

        // Installed from the leader at 10 while this node was dumping its state at 5.
        dir.publish(&written(&dir, 10)).unwrap();
        let built = written(&dir, 5);
        let (kept, file) = dir.publish_built(&built, &meta(5)).unwrap();
        assert_eq!(kept, meta(10));
        assert_eq!(header_of(file), meta(10));
        assert_eq!(dir.current_meta().unwrap(), Some(meta(10)));
        assert!(!built.exists(), "the older built file is dropped");

        // A newer built snapshot does replace it, and its file stays readable as returned
        // even when another one replaces it afterwards.
        let (current, file) = dir.publish_built(&written(&dir, 20), &meta(20)).unwrap();
        assert_eq!(current, meta(20));
        dir.publish(&written(&dir, 30)).unwrap();
        assert_eq!(header_of(file), meta(20));
        assert_eq!(dir.current_meta().unwrap(), Some(meta(30)));
    }
}
