//! Offline defragmentation of a node's store (`ordo defrag`), as etcd's `defrag` does for its
//! bbolt file.
//!
//! sled 0.34 keeps superseded page versions and removed log entries in its files until its
//! segment cleaning reclaims them, and it reclaims little: at a million orders a node's sled
//! files held about 7.7 times the live data (docs/performance.md, "Where the disk goes"), and
//! sled has no setting for it. This copies every tree's live keys into a new sled database
//! beside the old one (`sled.defrag`), in order and in small batches, checks the copy key for
//! key against the original, makes it durable, opens it once more (sled writes the page table
//! it replays at start only when it opens, so the node's next start is quick), and then swaps
//! it in. The swap is two directory renames after a marker file (`defrag.done`) says the copy
//! is whole; `finish_interrupted`, which `store::open` runs first, completes a swap a crash
//! cut short, or drops a copy that never got its marker. A node never opens half a store.
//! Snapshot files are not touched.

use std::path::{Path, PathBuf};

use super::{disk_usage_bytes, open_sled, sync_dir, DataDirLock, StoreConfig, StoreError};

/// Keys per sled batch while copying (sled's memory grows steeply with a batch's size).
const COPY_BATCH: usize = 512;

/// The store's sled directory, the copy being made, the old one during the swap, and the
/// marker that the copy is whole.
struct Paths {
    live: PathBuf,
    copy: PathBuf,
    old: PathBuf,
    done: PathBuf,
}

impl Paths {
    fn of(dir: &Path) -> Paths {
        Paths {
            live: dir.join("sled"),
            copy: dir.join("sled.defrag"),
            old: dir.join("sled.old"),
            done: dir.join("defrag.done"),
        }
    }
}

/// What a defragmentation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefragReport {
    /// Bytes of sled's files before and after (snapshot files not counted).
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Keys copied, over every tree.
    pub keys: u64,
    pub trees: usize,
}

/// Rewrites the store in `config.dir` into fresh files holding only its live keys. Its node
/// must be stopped: a data dir in use is refused at once. Needs free space for the copy (about
/// the live data) and memory for two open stores. A failure before the swap leaves the store
/// as it was; one after it (an error finishing the swap) is finished by the next open.
pub fn defrag(config: &StoreConfig) -> Result<DefragReport, StoreError> {
    let dir = &config.dir;
    let paths = Paths::of(dir);
    if ![&paths.live, &paths.copy, &paths.old]
        .iter()
        .any(|p| p.exists())
    {
        return Err(StoreError::NotAStore(dir.clone()));
    }
    let _lock = DataDirLock::take(dir, std::time::Duration::ZERO)?;
    finish_interrupted(dir)?;
    if !paths.live.join("conf").exists() {
        return Err(StoreError::NotAStore(dir.clone()));
    }
    let bytes_before = disk_usage_bytes(&paths.live);
    let (keys, trees) = match copy(config, &paths) {
        Ok(counts) => counts,
        Err(e) => {
            // The copy is this run's own (the lock is held), and unmarked.
            let _ = std::fs::remove_dir_all(&paths.copy);
            return Err(e);
        }
    };
    std::fs::File::create(&paths.done)?.sync_all()?;
    sync_dir(dir)?;
    finish_interrupted(dir).map_err(|e| {
        StoreError::Corrupt(format!(
            "the copy is whole, but swapping it in failed ({e}); the next start of the node \
             (or `ordo defrag`) finishes the swap"
        ))
    })?;
    Ok(DefragReport {
        bytes_before,
        bytes_after: disk_usage_bytes(&paths.live),
        keys,
        trees,
    })
}

/// Copies every tree of the live store into `paths.copy`, with the same compression, checks
/// the copy as read back from its files, and makes all of it durable; returns (keys, trees).
fn copy(config: &StoreConfig, paths: &Paths) -> Result<(u64, usize), StoreError> {
    let cache = config.cache_capacity_bytes;
    let (old, compressed) = open_sled(&paths.live, cache, config.compress)?;
    if paths.copy.exists() {
        std::fs::remove_dir_all(&paths.copy)?;
    }
    let (new, _) = open_sled(&paths.copy, cache, compressed)?;
    let mut keys = 0;
    let names = old.tree_names();
    for name in &names {
        let (from, to) = (old.open_tree(name)?, new.open_tree(name)?);
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for kv in from.iter() {
            let (k, v) = kv?;
            batch.insert(k, v);
            in_batch += 1;
            if in_batch == COPY_BATCH {
                to.apply_batch(std::mem::take(&mut batch))?;
                keys += in_batch as u64;
                in_batch = 0;
            }
        }
        to.apply_batch(batch)?;
        keys += in_batch as u64;
    }
    new.flush()?;
    drop(new);
    // Opened again, from its files (sled also writes the page table it replays at start now,
    // not at the node's next start), and checked against the original: nothing else writes
    // either store meanwhile, so they must hold the same trees and pairs.
    let (new, _) = open_sled(&paths.copy, cache, compressed)?;
    let mut new_names = new.tree_names();
    let mut old_names = names.clone();
    new_names.sort();
    old_names.sort();
    if new_names != old_names {
        return Err(StoreError::Corrupt(
            "the copy's trees differ from the store's".into(),
        ));
    }
    for name in &names {
        if !same_pairs(&old.open_tree(name)?, &new.open_tree(name)?)? {
            return Err(StoreError::Corrupt(format!(
                "the copy of tree {:?} differs from the original",
                String::from_utf8_lossy(name)
            )));
        }
    }
    new.flush()?;
    drop(new);
    drop(old);
    // sled's flush leaves file sizes and blob files to the file system's own time: every file
    // and directory of the copy is fsynced before the marker says it is whole.
    sync_all_under(&paths.copy)?;
    Ok((keys, names.len()))
}

/// Whether two trees hold the same keys and values.
fn same_pairs(a: &sled::Tree, b: &sled::Tree) -> Result<bool, StoreError> {
    let (mut a, mut b) = (a.iter(), b.iter());
    loop {
        match (a.next().transpose()?, b.next().transpose()?) {
            (None, None) => return Ok(true),
            (Some(x), Some(y)) if x == y => {}
            _ => return Ok(false),
        }
    }
}

/// Fsyncs every file and directory under `dir`, and `dir`.
fn sync_all_under(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_all_under(&entry.path())?;
        } else {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

/// Completes a defragmentation that a crash cut short, or drops a copy that was never
/// finished; does nothing when there was none. Callers hold the data dir's lock.
pub(super) fn finish_interrupted(dir: &Path) -> Result<(), StoreError> {
    let p = Paths::of(dir);
    if p.done.exists() {
        // The copy is whole: whichever renames are left, then the old files and the marker.
        if p.copy.exists() {
            if p.live.exists() {
                if p.old.exists() {
                    std::fs::remove_dir_all(&p.old)?; // a stale one, in the way of the rename
                }
                std::fs::rename(&p.live, &p.old)?;
            }
            std::fs::rename(&p.copy, &p.live)?;
            sync_dir(dir)?;
        }
        if p.old.exists() {
            std::fs::remove_dir_all(&p.old)?;
            sync_dir(dir)?;
        }
        std::fs::remove_file(&p.done)?;
        sync_dir(dir)?;
        tracing::info!(dir = %dir.display(), "store defragmented: the new files are in use");
        return Ok(());
    }
    if p.copy.exists() {
        std::fs::remove_dir_all(&p.copy)?;
        tracing::info!(dir = %dir.display(), "an unfinished defragmentation copy was removed");
    }
    if p.old.exists() {
        // Only a swap leaves it, and a swap has a marker: put back or left over by hand.
        if p.live.exists() {
            std::fs::remove_dir_all(&p.old)?;
        } else {
            std::fs::rename(&p.old, &p.live)?;
        }
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sled database at `sled_dir` whose key `which` says which one it is.
    fn make(sled_dir: &Path, which: &str) {
        let (db, _) = open_sled(sled_dir, 1 << 20, false).unwrap();
        db.insert("which", which).unwrap();
        db.flush().unwrap();
    }

    fn which(sled_dir: &Path) -> String {
        let (db, _) = open_sled(sled_dir, 1 << 20, false).unwrap();
        let v = db.get("which").unwrap().expect("a marked database");
        String::from_utf8(v.to_vec()).unwrap()
    }

    /// Each state a crash can leave, and what the next open finds.
    #[test]
    fn an_interrupted_defragmentation_is_finished_or_dropped() {
        let left = |p: &Paths| [&p.copy, &p.old, &p.done].map(|f| f.exists());
        // The copy got its marker; the crash came before, between or after the renames.
        for renamed in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let p = Paths::of(dir.path());
            make(&p.live, "old");
            make(&p.copy, "copy");
            std::fs::File::create(&p.done).unwrap();
            if renamed >= 1 {
                std::fs::rename(&p.live, &p.old).unwrap();
            }
            if renamed >= 2 {
                std::fs::rename(&p.copy, &p.live).unwrap();
            }
            finish_interrupted(dir.path()).unwrap();
            assert_eq!(which(&p.live), "copy", "after {renamed} renames");
            assert_eq!(left(&p), [false; 3], "after {renamed} renames");
        }
        // The copy never got its marker: it goes, the store stays.
        let dir = tempfile::tempdir().unwrap();
        let p = Paths::of(dir.path());
        make(&p.live, "old");
        make(&p.copy, "copy");
        finish_interrupted(dir.path()).unwrap();
        assert_eq!(which(&p.live), "old");
        assert_eq!(left(&p), [false; 3]);
        // Nothing to do.
        finish_interrupted(dir.path()).unwrap();
        assert_eq!(which(&p.live), "old");
    }

    /// An old store left beside the live one goes, whether or not a swap was under way; one
    /// left without a live store is put back.
    #[test]
    fn a_stale_old_store_is_removed_or_put_back() {
        // In the way of a marked swap.
        let dir = tempfile::tempdir().unwrap();
        let p = Paths::of(dir.path());
        make(&p.live, "old");
        make(&p.copy, "copy");
        make(&p.old, "stale");
        std::fs::File::create(&p.done).unwrap();
        finish_interrupted(dir.path()).unwrap();
        assert_eq!(which(&p.live), "copy");
        assert!(!p.old.exists() && !p.done.exists());
        // Left over beside a live store, no swap.
        make(&p.old, "stale");
        finish_interrupted(dir.path()).unwrap();
        assert_eq!(which(&p.live), "copy");
        assert!(!p.old.exists());
        // The only store there is.
        std::fs::rename(&p.live, &p.old).unwrap();
        finish_interrupted(dir.path()).unwrap();
        assert_eq!(which(&p.live), "copy");
        assert!(!p.old.exists());
    }

    /// While another holds the data dir (a node, or another defrag), defrag refuses at once and
    /// touches nothing; a directory without a store is refused as such.
    #[test]
    fn a_data_dir_in_use_or_without_a_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            defrag(&StoreConfig::new(dir.path())),
            Err(StoreError::NotAStore(_))
        ));
        let p = Paths::of(dir.path());
        make(&p.live, "old");
        make(&p.copy, "someone else's copy");
        let held = DataDirLock::take(dir.path(), std::time::Duration::ZERO).unwrap();
        assert!(matches!(
            DataDirLock::take(dir.path(), std::time::Duration::ZERO),
            Err(StoreError::InUse(_))
        ));
        assert!(matches!(
            defrag(&StoreConfig::new(dir.path())),
            Err(StoreError::InUse(_))
        ));
        assert_eq!(which(&p.copy), "someone else's copy");
        drop(held);
        let report = defrag(&StoreConfig::new(dir.path())).unwrap();
        assert_eq!((report.keys, report.trees), (1, 1));
        assert_eq!(which(&p.live), "old");
        assert!(!p.copy.exists());
    }
}
