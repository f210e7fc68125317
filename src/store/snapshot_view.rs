//! A point-in-time view of the state machine tree for a snapshot dump, while applies go on.
//!
//! sled 0.34 has no point-in-time read, and dumping a big store takes seconds (≈0.5 s per
//! 100k orders), so stopping applies for the dump stalls every write for that long. Instead,
//! while a dump runs, each apply first saves the value that every key it is about to change
//! had when the dump began — only for keys the dump has not passed yet, and only the first
//! time. The dump walks the tree in key order and, for a key with a saved value, writes the
//! saved value (or skips the key if it did not exist then); saved values of keys the walk
//! never met (removed meanwhile) are written in their place in key order.
//!
//! Why that is exact: a key's saved value is taken under the same lock in which the dump
//! records how far it has got, and before the apply commits. Either the dump reaches the key
//! after the save, and uses the saved value, or it passed the key earlier, when no write to it
//! had been committed since the dump began.
//!
//! Most writes during a dump create keys of new orders, ahead of the walk, and each would be
//! saved as "did not exist": about a hundred bytes each, 100 MB for 150k creates during one
//! dump of a million-order store. The dump's `Horizon` (the next order id and the revision when
//! it began) recognises those keys by their id instead: they are neither saved nor dumped. (A
//! customer's head is saved like any other key: one per customer written to.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::keys::Horizon;
use super::StoreError;

/// What the dump in progress knows.
struct Dump {
    /// Keys past it were created after the dump began.
    horizon: Horizon,
    /// The last key the dump has handled; keys up to it need no saving.
    passed: Option<Vec<u8>>,
    /// Key → its value when the dump began (`None`: it did not exist); `bool`: dump used it.
    saved: BTreeMap<Vec<u8>, (Option<sled::IVec>, bool)>,
}

/// Shared by the state machine (which saves values before it writes) and the dump.
#[derive(Default)]
pub(super) struct SnapshotView {
    /// Fast path for applies: false while no dump runs.
    active: AtomicBool,
    dump: Mutex<Option<Dump>>,
    /// Wakes an install waiting for the dump to end.
    ended: tokio::sync::Notify,
}

impl SnapshotView {
    fn lock(&self) -> MutexGuard<'_, Option<Dump>> {
        self.dump.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a dump of the tree as it is now, where the store stands at `horizon`. The caller
    /// must not be applying at the same time (openraft's state-machine worker calls both in
    /// turn). The dump ends when the returned guard is dropped, whether or not it ran.
    pub fn begin(self: &Arc<Self>, horizon: Horizon) -> Result<DumpGuard, StoreError> {
        let mut dump = self.lock();
        if dump.is_some() {
            return Err(StoreError::DumpRunning);
        }
        *dump = Some(Dump {
            horizon,
            passed: None,
            saved: BTreeMap::new(),
        });
        self.active.store(true, Ordering::SeqCst);
        Ok(DumpGuard { view: self.clone() })
    }

    /// Call before committing writes to `keys` of `tree`: saves what the dump still needs.
    pub fn before_write<'a>(
        &self,
        tree: &sled::Tree,
        keys: impl Iterator<Item = &'a [u8]>,
    ) -> Result<(), sled::Error> {
        if !self.active.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut guard = self.lock();
        let Some(dump) = guard.as_mut() else {
            return Ok(());
        };
        for key in keys {
            if dump.passed.as_deref().is_some_and(|p| key <= p)
                || dump.horizon.is_past(key)
                || dump.saved.contains_key(key)
            {
                continue;
            }
            dump.saved.insert(key.to_vec(), (tree.get(key)?, false));
        }
        Ok(())
    }

    /// `None` while no dump runs; otherwise the last key its walk has handled (`Some(None)`
    /// before the first). Writes to keys up to it are not saved.
    pub fn walked_upto(&self) -> Option<Option<Vec<u8>>> {
        if !self.active.load(Ordering::SeqCst) {
            return None;
        }
        self.lock().as_ref().map(|dump| dump.passed.clone())
    }

    /// Waits until no dump runs (a snapshot install replaces the whole tree, which the dump
    /// could not follow).
    pub async fn wait_idle(&self) {
        loop {
            let ended = self.ended.notified();
            if !self.active.load(Ordering::SeqCst) {
                return;
            }
            ended.await;
        }
    }

    fn end(&self) {
        *self.lock() = None;
        self.active.store(false, Ordering::SeqCst);
        self.ended.notify_waiters();
    }
}

/// A dump in progress; ends it when dropped.
pub(super) struct DumpGuard {
    view: Arc<SnapshotView>,
}

impl DumpGuard {
    /// The tree's records as they were when the dump began, in key order. Keys removed since
    /// (which the walk no longer meets) come from their saved values, in their place: the
    /// file stays sorted, so a backup's digest, taken in file order, is the state's.
    pub fn records(
        &self,
        tree: &sled::Tree,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + '_ {
        let mut walk = tree.iter();
        let mut walked_all = false;
        let mut ready = std::collections::VecDeque::new();
        std::iter::from_fn(move || loop {
            if let Some(record) = ready.pop_front() {
                return Some(Ok(record));
            }
            if walked_all {
                return None;
            }
            let next = match walk.next() {
                Some(Ok((k, v))) => Some((k, v)),
                Some(Err(e)) => return Some(Err(e.into())),
                None => None,
            };
            let mut guard = self.view.lock();
            let dump = guard.as_mut().expect("the dump runs while its guard lives");
            // Saved keys between the last key walked and this one, which the walk did not
            // meet: removed since the dump began (none can be saved behind the walk).
            use std::ops::Bound;
            let from = dump
                .passed
                .clone()
                .map_or(Bound::Unbounded, Bound::Excluded);
            let to = next
                .as_ref()
                .map_or(Bound::Unbounded, |(k, _)| Bound::Excluded(k.to_vec()));
            // (sled's walk only goes up; an empty range would make `range_mut` panic.)
            let empty = matches!((&from, &to), (Bound::Excluded(a), Bound::Excluded(b)) if a >= b);
            let between = (!empty).then(|| dump.saved.range_mut((from, to)));
            for (key, (then, used)) in between.into_iter().flatten() {
                if std::mem::replace(used, true) {
                    continue;
                }
                if let Some(then) = then {
                    ready.push_back((key.clone(), then.to_vec()));
                }
            }
            let Some((k, v)) = next else {
                walked_all = true;
                continue;
            };
            dump.passed = Some(k.to_vec());
            if dump.horizon.is_past(&k) {
                continue;
            }
            match dump.saved.get_mut(k.as_ref()) {
                None => ready.push_back((k.to_vec(), v.to_vec())),
                Some((then, used)) => {
                    *used = true;
                    if let Some(then) = then {
                        ready.push_back((k.to_vec(), then.to_vec()));
                    }
                }
            }
        })
    }
}

impl Drop for DumpGuard {
    fn drop(&mut self) {
        self.view.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    type State = BTreeMap<Vec<u8>, Vec<u8>>;

    fn key(n: u32) -> Vec<u8> {
        format!("k{n:04}").into_bytes()
    }

    /// A horizon past which no key of these tests lies.
    const NO_HORIZON: Horizon = Horizon {
        next_id: u64::MAX,
        revision: u64::MAX,
    };

    /// Writes through the view as `apply` does: save first, then commit one batch.
    fn write(view: &SnapshotView, tree: &sled::Tree, puts: &[(u32, &str)], removes: &[u32]) {
        let puts: Vec<_> = puts.iter().map(|(k, v)| (key(*k), *v)).collect();
        let removes: Vec<_> = removes.iter().map(|k| key(*k)).collect();
        write_keys(view, tree, &puts, &removes);
    }

    fn write_keys(
        view: &SnapshotView,
        tree: &sled::Tree,
        puts: &[(Vec<u8>, &str)],
        removes: &[Vec<u8>],
    ) {
        let keys = puts.iter().map(|(k, _)| k).chain(removes);
        view.before_write(tree, keys.map(Vec::as_slice)).unwrap();
        let mut batch = sled::Batch::default();
        for (k, v) in puts {
            batch.insert(k.as_slice(), v.as_bytes());
        }
        for k in removes {
            batch.remove(k.as_slice());
        }
        tree.apply_batch(batch).unwrap();
    }

    fn saved_keys(view: &SnapshotView) -> Vec<Vec<u8>> {
        let guard = view.lock();
        guard.as_ref().unwrap().saved.keys().cloned().collect()
    }

    fn contents(tree: &sled::Tree) -> State {
        tree.iter()
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }

    #[test]
    fn the_dump_sees_the_tree_as_it_was_when_it_began() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("sm").unwrap();
        let view = Arc::new(SnapshotView::default());
        for n in 0..100 {
            tree.insert(key(n * 2), b"v0".as_slice()).unwrap(); // even keys 0..198
        }
        let before = contents(&tree);

        let dump = view.begin(NO_HORIZON).unwrap();
        let mut records = dump.records(&tree);
        let mut dumped: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for _ in 0..50 {
            dumped.push(records.next().unwrap().unwrap()); // walked up to k0098
        }
        // Behind the walk: changes it must not pick up (and need not save).
        write(&view, &tree, &[(10, "new"), (11, "created")], &[12]);
        // Ahead of it: changed, created, removed, removed and created again, changed twice.
        write(&view, &tree, &[(120, "new"), (121, "created")], &[140, 160]);
        write(&view, &tree, &[(160, "again"), (120, "newer")], &[180]);
        write(&view, &tree, &[(199, "created")], &[]);
        dumped.extend(records.map(Result::unwrap));
        assert_eq!(dumped.len(), before.len(), "no key twice, none missing");
        assert!(
            dumped.windows(2).all(|w| w[0].0 < w[1].0),
            "in key order, removed keys in their place"
        );
        assert_eq!(dumped.into_iter().collect::<State>(), before);
        drop(dump);

        // Once the dump ends, nothing is saved any more and a new dump can begin.
        assert!(!view.active.load(Ordering::SeqCst));
        write(&view, &tree, &[(150, "x")], &[]);
        let again = view.begin(NO_HORIZON).unwrap();
        assert_eq!(
            again.records(&tree).map(Result::unwrap).collect::<State>(),
            contents(&tree)
        );
    }

    #[test]
    fn keys_created_past_the_horizon_are_neither_saved_nor_dumped() {
        use crate::order::OrderStatus;
        use crate::store::keys;
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("sm").unwrap();
        let view = Arc::new(SnapshotView::default());
        let order_keys = |id| {
            [
                keys::order(id),
                keys::with_id(keys::customer_prefix("c1"), id),
            ]
        };
        // Status maps: of ids 0-63 (which existed before the horizon) and of ids 64-127.
        let map = |status, group| keys::with_id(keys::status_bits_prefix(status), group);
        let (pending, paid) = (OrderStatus::Pending, OrderStatus::Paid);
        for id in 1..=50 {
            for k in order_keys(id) {
                tree.insert(k, b"v0".as_slice()).unwrap();
            }
        }
        tree.insert(map(pending, 0), b"v0".as_slice()).unwrap();
        // The change log's page of revisions 0-63 (50 changes so far).
        tree.insert(keys::change_page(0), b"v0".as_slice()).unwrap();
        tree.insert(map(paid, 0), b"v0".as_slice()).unwrap();
        let before = contents(&tree);

        let dump = view
            .begin(Horizon {
                next_id: 51,
                revision: 50,
            })
            .unwrap();
        let mut records = dump.records(&tree);
        let (first, _) = records.next().unwrap().unwrap();
        assert_eq!(first.as_ref(), map(pending, 0));
        // New orders and the page of revisions 64-127 (past the horizon), then a change to
        // order 30 (not).
        for id in 51..=60 {
            let puts: Vec<_> = order_keys(id).into_iter().map(|k| (k, "new")).collect();
            write_keys(&view, &tree, &puts, &[]);
        }
        write_keys(&view, &tree, &[(keys::change_page(1), "new")], &[]);
        // The maps: one the dump has passed, one past the horizon, one it has still to reach.
        let maps = [map(pending, 0), map(pending, 1), map(paid, 0)].map(|k| (k, "new"));
        write_keys(&view, &tree, &maps, &[]);
        write_keys(
            &view,
            &tree,
            &[(keys::order(30), "paid")],
            &[keys::change_page(0)],
        );
        assert_eq!(
            saved_keys(&view),
            vec![map(paid, 0), keys::change_page(0), keys::order(30)]
        );

        let mut dumped = vec![(first.to_vec(), b"v0".to_vec())];
        dumped.extend(records.map(|r| {
            let (k, v) = r.unwrap();
            (k.to_vec(), v.to_vec())
        }));
        assert_eq!(dumped.len(), before.len(), "no key twice, none missing");
        assert!(dumped.windows(2).all(|w| w[0].0 < w[1].0), "in key order");
        assert_eq!(dumped.into_iter().collect::<State>(), before);
    }

    #[test]
    fn only_one_dump_runs_at_a_time() {
        let view = Arc::new(SnapshotView::default());
        let first = view.begin(NO_HORIZON).unwrap();
        assert!(matches!(
            view.begin(NO_HORIZON),
            Err(StoreError::DumpRunning)
        ));
        drop(first);
        assert!(view.begin(NO_HORIZON).is_ok());
    }
}
