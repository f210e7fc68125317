//! A background sweep that makes sled's page cache live within its capacity.
//!
//! sled 0.34.7's cache (`lru.rs`) is 256 shards. A page read goes on its shard's queue, and a
//! shard weighs the pages on its queue, and evicts past its 1/256 of the capacity, only when 64
//! accesses have queued up. Pages read by a walk over many of them (replication reading the log
//! for a lagging follower, a snapshot's dump, random reads over a large store) mostly sit on
//! queues that never fill, and stay in memory, weighed by nothing: a node that sent a follower
//! 190 MB of log kept it all (docs/performance.md, "What sled's cache holds"). A shard's queue
//! fills as well with pages of no use: this sweep reads every key of a small tree of its own,
//! `cache_sweep`, whose leaves fall in every shard, so that a shard takes its queue in about
//! once per sweep (64 reads per shard on average; a queue short of that carries over to the
//! next) and evicts what it holds past its share.
//!
//! A sweep reads ~16,000 keys already in memory: ~8 ms of one core (estimated). Not more often
//! than every few seconds: sweeping every second measured up to ~15 % off c=256 creates in
//! one A/B and nothing in another (docs/performance.md); under load, reads fill the queues of
//! the shards in use anyway. The tree (~0.5 MB) is written when missing and never flushed on
//! its own: it is rebuilt if a crash loses it.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::StoreError;

/// The tree's keys: enough leaves (sled splits a leaf past 16 keys) that every shard holds
/// several, and 64 reads per shard on average (each key is one read of its leaf).
const SWEEP_KEYS: u32 = 16 * 1024;
const TREE: &str = "cache_sweep";

/// The sweeping thread; stops when dropped.
pub(super) struct CacheSweep {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl CacheSweep {
    /// Fills the tree if it is not whole, and starts sweeping every `every`.
    pub(super) fn start(db: &sled::Db, every: Duration) -> Result<CacheSweep, StoreError> {
        let tree = db.open_tree(TREE)?;
        fill(&tree)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ordo-cache-sweep".into())
            .spawn(move || {
                // Nothing is ever sent: the sender's drop ends the loop.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    if let Err(e) = sweep(&tree) {
                        tracing::warn!(error = %e, "cache sweep failed; stopping it");
                        return;
                    }
                }
            })?;
        Ok(CacheSweep {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for CacheSweep {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn key(i: u32) -> [u8; 4] {
    i.to_be_bytes()
}

/// Writes the tree unless its last key is there (one batch, so sled keeps all of it or none).
fn fill(tree: &sled::Tree) -> Result<(), StoreError> {
    if tree.get(key(SWEEP_KEYS - 1))?.is_some() {
        return Ok(());
    }
    let mut batch = sled::Batch::default();
    for i in 0..SWEEP_KEYS {
        batch.insert(&key(i), &[0u8][..]);
    }
    tree.apply_batch(batch)?;
    Ok(())
}

/// Reads every key once: the reads go on the shards' queues.
fn sweep(tree: &sled::Tree) -> Result<(), StoreError> {
    for i in 0..SWEEP_KEYS {
        tree.get(key(i))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_is_written_again_when_its_last_key_is_missing() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree(TREE).unwrap();
        fill(&tree).unwrap();
        assert_eq!(tree.len(), SWEEP_KEYS as usize);
        tree.remove(key(SWEEP_KEYS - 1)).unwrap();
        fill(&tree).unwrap();
        assert_eq!(tree.len(), SWEEP_KEYS as usize);
        sweep(&tree).unwrap();
    }

    #[test]
    fn dropping_the_sweep_stops_its_thread_without_waiting_for_the_next_sweep() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let sweep = CacheSweep::start(&db, Duration::from_secs(3600)).unwrap();
        assert_eq!(db.open_tree(TREE).unwrap().len(), SWEEP_KEYS as usize);
        let (done, dropped) = mpsc::channel();
        std::thread::spawn(move || {
            drop(sweep);
            let _ = done.send(());
        });
        dropped
            .recv_timeout(Duration::from_secs(30))
            .expect("the sweep's drop waited for its hour-long interval");
    }
}
