//! The snapshot file format and the directory that keeps the current snapshot.
//!
//! A snapshot is one file: `ORDOSNP2`, a length-prefixed encoded `SnapshotMeta`, then every
//! key/value of the state machine tree as length-prefixed records, then an end marker (so a cut
//! file is detected, not half-loaded), then the SHA-256 of every byte before it (so a changed
//! byte is detected too: on install, on load and on restore). It is written to a temp file,
//! fsynced and renamed over `current.snap`, so the current snapshot is always whole. Files
//! stream record by record; nothing holds the whole state machine in memory. Files of the
//! first format (`ORDOSNAP`, no checksum), which earlier versions wrote, are still read.

use sha2::{Digest, Sha256};

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::StoreError;
use crate::codec;
use crate::raft::SnapshotMeta;

const MAGIC: &[u8; 8] = b"ORDOSNP2";
/// The first format, without the checksum.
const MAGIC_V1: &[u8; 8] = b"ORDOSNAP";
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

/// Writes a snapshot file at `path` from the records and fsyncs it. On failure the part written
/// is removed at once, not at the next start (`SnapshotDir::open`): on a full disk it is the
/// space the node needs. (openraft 0.9 stops the node on a failed build anyway.)
pub(super) fn write<I>(path: &Path, meta: &SnapshotMeta, records: I) -> Result<(), StoreError>
where
    I: IntoIterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>>,
{
    let written = write_whole(path, meta, records);
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

fn write_whole<I>(path: &Path, meta: &SnapshotMeta, records: I) -> Result<(), StoreError>
where
    I: IntoIterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>>,
{
    let file = PacedFile::new(File::create(path)?);
    let mut w = Hashing::new(BufWriter::with_capacity(1 << 20, file));
    w.write_all(MAGIC)?;
    write_chunk(&mut w, &codec::encode(meta)?)?;
    for rec in records {
        let (k, v) = rec?;
        write_chunk(&mut w, &k)?;
        write_chunk(&mut w, &v)?;
    }
    w.write_all(&END_MARKER.to_be_bytes())?;
    let (mut w, digest) = w.finish();
    w.write_all(&digest)?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(())
}

/// How many written bytes a large file may leave in the page cache (see `PacedFile`).
const WRITEBACK_STEP_BYTES: u64 = 8 << 20;

/// A file written from its start whose pages are sent to the disk every `WRITEBACK_STEP_BYTES`
/// as it is written. Written whole and fsynced once at the end, a snapshot of a large store
/// (hundreds of MB) reaches the disk in one burst, and the log's fsyncs (which sled's writes
/// wait behind) queue behind it for seconds: long enough for a leader to miss its heartbeats.
/// Paced, the disk holds at most two steps of it at a time. On Linux each step starts the
/// writeback of the bytes just written and waits for the step before it
/// (`sync_file_range`, as RocksDB's `bytes_per_sync` does: no journal commit or cache flush
/// per step); elsewhere each step is an `fdatasync`. Only `sync_all` makes the file durable.
pub(super) struct PacedFile {
    file: File,
    step: u64,
    /// Bytes written so far.
    written: u64,
    /// Writeback has been started for the bytes below this offset...
    started_to: u64,
    /// ...and is done for the bytes below this one.
    done_to: u64,
    #[cfg(test)]
    steps: u64,
}

impl PacedFile {
    pub(super) fn new(file: File) -> Self {
        PacedFile::with_step(file, WRITEBACK_STEP_BYTES)
    }

    fn with_step(file: File, step: u64) -> Self {
        PacedFile {
            file,
            step,
            written: 0,
            started_to: 0,
            done_to: 0,
            #[cfg(test)]
            steps: 0,
        }
    }

    /// Fsyncs the file, data and metadata.
    pub(super) fn sync_all(&self) -> std::io::Result<()> {
        self.file.sync_all()
    }

    /// Waits for the step in flight to reach the disk and starts the next one.
    fn pace(&mut self) -> std::io::Result<()> {
        writeback::wait(&self.file, self.done_to, self.started_to)?;
        self.done_to = self.started_to;
        writeback::start(&self.file, self.started_to, self.written)?;
        self.started_to = self.written;
        #[cfg(test)]
        {
            self.steps += 1;
        }
        Ok(())
    }
}

impl Write for PacedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Paced before writing, so that an error never follows bytes written.
        if self.written - self.started_to >= self.step {
            self.pace()?;
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(target_os = "linux")]
mod writeback {
    use std::fs::File;
    use std::os::fd::AsRawFd;

    /// Starts writing bytes `from..to` of `file` to the disk, without waiting.
    pub fn start(file: &File, from: u64, to: u64) -> std::io::Result<()> {
        sync_file_range(file, from, to, libc::SYNC_FILE_RANGE_WRITE)
    }

    /// Waits until bytes `from..to` of `file` are on the disk (not its metadata: not durable).
    pub fn wait(file: &File, from: u64, to: u64) -> std::io::Result<()> {
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        sync_file_range(file, from, to, flags)
    }

    fn sync_file_range(file: &File, from: u64, to: u64, flags: u32) -> std::io::Result<()> {
        if to <= from {
            return Ok(());
        }
        let (offset, len) = (from as libc::off64_t, (to - from) as libc::off64_t);
        // SAFETY: a system call on a descriptor `file` keeps open; it touches no memory of ours.
        match unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod writeback {
    use std::fs::File;

    pub fn start(_file: &File, _from: u64, _to: u64) -> std::io::Result<()> {
        Ok(())
    }

    pub fn wait(file: &File, _from: u64, _to: u64) -> std::io::Result<()> {
        file.sync_data()
    }
}

/// A reader or writer that hashes every byte that passes through it.
pub(super) struct Hashing<T> {
    inner: T,
    hasher: Sha256,
}

impl<T> Hashing<T> {
    pub(super) fn new(inner: T) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// The inner reader or writer, and the SHA-256 of what passed.
    pub(super) fn finish(self) -> (T, [u8; 32]) {
        (self.inner, self.hasher.finalize().into())
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
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
    Ok(read_header_and_format(r)?.0)
}

/// The meta, and whether the file ends with a checksum (the current format).
fn read_header_and_format(r: &mut impl Read) -> Result<(SnapshotMeta, bool), StoreError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .map_err(|_| StoreError::Corrupt("not an ordo snapshot file (too short)".into()))?;
    let checksummed = match &magic {
        m if m == MAGIC => true,
        m if m == MAGIC_V1 => false,
        _ => return Err(StoreError::Corrupt("not an ordo snapshot file".into())),
    };
    let corrupt = || StoreError::Corrupt("snapshot header is cut short".into());
    let len = read_len(r).map_err(|e| eof_is(e, corrupt))?;
    let header = read_chunk(r, len).map_err(|e| eof_is(e, corrupt))?;
    let meta = codec::decode(&header)
        .map_err(|e| StoreError::Corrupt(format!("snapshot header does not decode: {e}")))?;
    Ok((meta, checksummed))
}

/// Reads a snapshot file: its meta, then each record in turn through `on_record`.
pub(super) fn read(
    path: &Path,
    mut on_record: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), StoreError>,
) -> Result<SnapshotMeta, StoreError> {
    read_from(
        BufReader::with_capacity(1 << 20, File::open(path)?),
        &mut on_record,
    )
}

/// Reads a snapshot from `r` (see `read`), checking its checksum at the end: the records
/// handed out before a mismatch is found must be thrown away by the caller (install and
/// restore check the whole file before they load it).
pub(crate) fn read_from(
    r: impl Read,
    on_record: &mut impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), StoreError>,
) -> Result<SnapshotMeta, StoreError> {
    let cut = || StoreError::Corrupt("snapshot file is cut short".into());
    let mut r = Hashing::new(r);
    let (meta, checksummed) = read_header_and_format(&mut r)?;
    loop {
        let klen = read_len(&mut r).map_err(|_| cut())?;
        if klen == END_MARKER {
            break;
        }
        let key = read_chunk(&mut r, klen).map_err(|e| eof_is(e, cut))?;
        let vlen = read_len(&mut r).map_err(|_| cut())?;
        let value = read_chunk(&mut r, vlen).map_err(|e| eof_is(e, cut))?;
        on_record(key, value)?;
    }
    let (mut r, computed) = r.finish();
    if checksummed {
        let mut stored = [0u8; 32];
        r.read_exact(&mut stored).map_err(|_| cut())?;
        if stored[..] != computed[..] {
            return Err(StoreError::Corrupt(
                "snapshot file fails its checksum: a byte changed on disk or on the way".into(),
            ));
        }
    }
    let mut extra = [0u8; 1];
    if r.read(&mut extra)? != 0 {
        return Err(StoreError::Corrupt(
            "snapshot file has bytes after its end".into(),
        ));
    }
    Ok(meta)
}

/// A file that ends inside a record is corrupt (not an I/O failure).
fn eof_is(e: StoreError, corrupt: impl Fn() -> StoreError) -> StoreError {
    match e {
        StoreError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => corrupt(),
        e => e,
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
    fn a_build_that_fails_leaves_no_part_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(tmp.path().to_path_buf()).unwrap();
        let path = dir.temp_path("test");
        // Enough records that part of the file reached the disk before the failing read.
        let records = (0..200_000u64)
            .map(|i| Ok((i.to_be_bytes().to_vec(), vec![7u8; 64])))
            .chain([Err(StoreError::Corrupt(
                "a record could not be read".into(),
            ))]);
        assert!(write(&path, &meta(1), records).is_err());
        assert!(!path.exists(), "the part written was removed");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
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

    #[test]
    fn a_changed_or_cut_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(tmp.path().to_path_buf()).unwrap();
        let path = written(&dir, 7);
        let good = std::fs::read(&path).unwrap();
        assert_eq!(read(&path, |_, _| Ok(())).unwrap(), meta(7));

        // Every single flipped byte is caught, wherever it is.
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            std::fs::write(&path, &bad).unwrap();
            assert!(
                matches!(read(&path, |_, _| Ok(())), Err(StoreError::Corrupt(_))),
                "byte {at} of {} flipped and the file was accepted",
                good.len()
            );
        }
        for len in [0, 5, good.len() / 2, good.len() - 1] {
            std::fs::write(&path, &good[..len]).unwrap();
            assert!(
                matches!(read(&path, |_, _| Ok(())), Err(StoreError::Corrupt(_))),
                "cut to {len} bytes and accepted"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert!(matches!(
            read(&path, |_, _| Ok(())),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn a_paced_file_sends_each_step_to_the_disk_once_and_keeps_every_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("paced");
        let mut file = PacedFile::with_step(File::create(&path).unwrap(), 4096);
        let mut expected = Vec::new();
        for i in 0..10u8 {
            // Whole steps, then a write of three bytes: a step is paced only once it is full.
            let bytes = vec![i; 4096];
            file.write_all(&bytes).unwrap();
            expected.extend_from_slice(&bytes);
        }
        assert_eq!(
            file.steps, 9,
            "the tenth step is not paced until something follows it"
        );
        file.write_all(b"end").unwrap();
        expected.extend_from_slice(b"end");
        assert_eq!(file.steps, 10);
        assert_eq!(
            (file.done_to, file.started_to, file.written),
            (9 * 4096, 10 * 4096, 40_963)
        );
        file.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn a_snapshot_larger_than_a_few_writeback_steps_reads_back_whole() {
        let value_bytes = 300_001;
        let count = (3 * WRITEBACK_STEP_BYTES as usize) / value_bytes + 1;
        let value = |i: usize| vec![(i % 251) as u8; value_bytes];
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("big.snap");
        let records = (0..count).map(|i| Ok(((i as u32).to_be_bytes().to_vec(), value(i))));
        write(&path, &meta(3), records).unwrap();

        let mut seen = 0;
        let read_meta = read(&path, |k, v| {
            assert_eq!(k, (seen as u32).to_be_bytes(), "record {seen} out of order");
            assert!(v == value(seen), "record {seen} changed");
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(read_meta, meta(3));
        assert_eq!(seen, count);
    }
}
