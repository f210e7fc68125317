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

use super::{disk_usage_bytes, open_sled, StoreConfig, StoreError};

/// Keys per sled batch while copying (sled's memory grows steeply with a batch's size).
const COPY_BATCH: usize = 512;

/// The store's sled directory, the copy being made, the old one during the swap, and the
/// marker that the copy is whole.
struct Paths {
    live: PathBuf,
    copy: PathBuf,
    old: PathBuf,
    done: PathBuf,
    dir: PathBuf,
}

impl Paths {
    fn of(dir: &Path) -> Paths {
        Paths {
            live: dir.join("sled"),
            copy: dir.join("sled.defrag"),
            old: dir.join("sled.old"),
            done: dir.join("defrag.done"),
            dir: dir.to_path_buf(),
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

/// Rewrites the store in `config.dir` into fresh files holding only its live keys. The node
/// must be stopped: a store open elsewhere is refused (sled's file lock). A failure leaves
/// the store as it was.
pub fn defrag(config: &StoreConfig) -> Result<DefragReport, StoreError> {
    let paths = Paths::of(&config.dir);
    finish_interrupted(&config.dir)?;
    if !paths.live.join("conf").exists() {
        return Err(StoreError::Corrupt(format!(
            "no store in {}",
            config.dir.display()
        )));
    }
    let bytes_before = disk_usage_bytes(&paths.live);
    let (keys, trees) = match copy(config, &paths) {
        Ok(counts) => counts,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&paths.copy);
            return Err(e);
        }
    };
    sync_file(&std::fs::File::create(&paths.done)?)?;
    sync_dir(&paths.dir)?;
    finish_interrupted(&config.dir)?;
    Ok(DefragReport {
        bytes_before,
        bytes_after: disk_usage_bytes(&paths.live),
        keys,
        trees,
    })
}

/// Copies every tree of the live store into `paths.copy`, with the same compression, and
/// checks the copy; returns (keys, trees).
fn copy(config: &StoreConfig, paths: &Paths) -> Result<(u64, usize), StoreError> {
    let cache = config.cache_capacity_bytes;
    let (old, compressed) =
        open_sled(&paths.live, cache, config.compress).map_err(|e| match e {
            StoreError::Sled(sled::Error::Io(io)) if io.to_string().contains("acquire lock") => {
                StoreError::Corrupt(format!(
                    "{} is in use (is its node running? stop it first)",
                    paths.live.display()
                ))
            }
            e => e,
        })?;
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
        // Nothing else writes either store: the two must hold the same pairs.
        if !same_pairs(&from, &to)? {
            return Err(StoreError::Corrupt(format!(
                "the copy of tree {:?} differs from the original",
                String::from_utf8_lossy(name)
            )));
        }
    }
    new.flush()?;
    drop(new);
    drop(old);
    // Opened once more so that sled writes its page table now, not at the node's next start.
    let (reopened, _) = open_sled(&paths.copy, cache, compressed)?;
    reopened.flush()?;
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

/// Completes a defragmentation that a crash cut short, or drops a copy that was never
/// finished; does nothing when there was none.
pub(super) fn finish_interrupted(dir: &Path) -> Result<(), StoreError> {
    let p = Paths::of(dir);
    if p.done.exists() {
        // The copy is whole: whichever renames are left, then the old files and the marker.
        if p.copy.exists() {
            if p.live.exists() {
                std::fs::rename(&p.live, &p.old)?;
            }
            std::fs::rename(&p.copy, &p.live)?;
            sync_dir(&p.dir)?;
        }
        if p.old.exists() {
            std::fs::remove_dir_all(&p.old)?;
        }
        std::fs::remove_file(&p.done)?;
        sync_dir(&p.dir)?;
        tracing::info!(dir = %dir.display(), "store defragmented: the new files are in use");
    } else if p.copy.exists() {
        std::fs::remove_dir_all(&p.copy)?;
        tracing::info!(dir = %dir.display(), "an unfinished defragmentation copy was removed");
    }
    Ok(())
}

fn sync_file(file: &std::fs::File) -> std::io::Result<()> {
    file.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
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
}
