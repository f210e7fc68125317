//! A write overlay over a sled tree: the state machine applies a whole batch of log entries
//! against it (later entries see earlier entries' writes) and then commits it as one atomic
//! sled batch, so a crash never leaves half an apply on disk.

use std::collections::BTreeMap;

/// A key and its value.
pub(super) type KeyValue = (Vec<u8>, Vec<u8>);

pub(super) struct Overlay<'a> {
    tree: &'a sled::Tree,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Per prefix, the last key `remove_lowest` removed: every key under the prefix up to it
    /// is removed in this overlay, so the next scan starts after it instead of walking past
    /// every key removed so far (which made a batch of expiries quadratic).
    cursors: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Per prefix, a bound below which `remove_lowest` has taken every committed key under the
    /// prefix. The committed tree does not change while the overlay lives, so later scans of
    /// the tree start there. Expiries are looked for once per command and almost always find
    /// nothing; each look used to walk down the tree again (3% of a loaded leader's CPU).
    swept: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl<'a> Overlay<'a> {
    pub fn new(tree: &'a sled::Tree) -> Self {
        Overlay {
            tree,
            writes: BTreeMap::new(),
            cursors: BTreeMap::new(),
            swept: BTreeMap::new(),
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, sled::Error> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => Ok(self.tree.get(key)?.map(|v| v.to_vec())),
        }
    }

    pub fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        // A key at or below a cursor would be skipped by the next scan: drop that cursor.
        self.cursors
            .retain(|prefix, last| !(key.starts_with(prefix) && key <= *last));
        self.writes.insert(key, Some(value));
    }

    pub fn remove(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// The greatest key from `low` to `high` (both included) and its value, as the batch now
    /// sees them.
    pub fn last_at_or_below(
        &self,
        low: &[u8],
        high: &[u8],
    ) -> Result<Option<KeyValue>, sled::Error> {
        let mut in_tree = None;
        for kv in self.tree.range(low..=high).rev() {
            let (k, v) = kv?;
            match self.writes.get(k.as_ref()) {
                Some(None) => continue, // removed by this batch
                Some(Some(written)) => in_tree = Some((k.to_vec(), written.clone())),
                None => in_tree = Some((k.to_vec(), v.to_vec())),
            }
            break;
        }
        let written = self
            .writes
            .range(low.to_vec()..=high.to_vec())
            .rev()
            .find_map(|(k, v)| Some((k.clone(), v.clone()?)));
        Ok(match (in_tree, written) {
            (Some(t), Some(w)) => Some(if w.0 >= t.0 { w } else { t }),
            (t, w) => t.or(w),
        })
    }

    /// Removes and returns the lowest `limit` keys under `prefix` that sort below `upper`, as
    /// the batch now sees them (committed keys not removed by the overlay, plus keys the
    /// overlay added), in order.
    pub fn remove_lowest(
        &mut self,
        prefix: &[u8],
        upper: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, sled::Error> {
        let start = match self.cursors.get(prefix) {
            Some(last) => {
                let mut after = last.clone();
                after.push(0);
                after
            }
            None => prefix.to_vec(),
        };
        if start.as_slice() >= upper {
            return Ok(Vec::new());
        }
        let mut keys = std::collections::BTreeSet::new();
        let tree_from = match self.swept.get(prefix) {
            Some(bound) if *bound > start => bound.clone(),
            _ => start.clone(),
        };
        let mut tree_done = true;
        if tree_from.as_slice() < upper {
            for kv in self.tree.range(tree_from..upper.to_vec()).keys() {
                let k = kv?;
                if keys.len() >= limit {
                    tree_done = false;
                    break;
                }
                if !matches!(self.writes.get(k.as_ref()), Some(None)) {
                    keys.insert(k.to_vec());
                }
            }
        }
        for (k, v) in self.writes.range(start..upper.to_vec()) {
            if v.is_some() {
                keys.insert(k.clone());
            }
        }
        if tree_done && keys.len() <= limit {
            // Every committed key below `upper` is taken now (or was before).
            let bound = self.swept.entry(prefix.to_vec()).or_default();
            if bound.as_slice() < upper {
                *bound = upper.to_vec();
            }
        }
        let keys: Vec<Vec<u8>> = keys.into_iter().take(limit).collect();
        for k in &keys {
            self.writes.insert(k.clone(), None);
        }
        if let Some(last) = keys.last() {
            self.cursors.insert(prefix.to_vec(), last.clone());
        }
        Ok(keys)
    }

    /// The keys written (or removed) so far.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.writes.keys().map(Vec::as_slice)
    }

    /// How many keys were written (or removed) so far.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    pub fn commit(self) -> Result<(), sled::Error> {
        let mut batch = sled::Batch::default();
        for (k, v) in self.writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.tree.apply_batch(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_at_or_below_sees_the_batchs_writes_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("t").unwrap();
        let x = |i: u8| vec![b'x', i];
        for i in [2, 4, 6] {
            tree.insert(x(i), vec![i]).unwrap();
        }
        tree.insert(b"y", vec![]).unwrap();
        let mut ov = Overlay::new(&tree);
        let last = |ov: &Overlay, high: u8| ov.last_at_or_below(b"x", &x(high)).unwrap();
        assert_eq!(last(&ov, 5), Some((x(4), vec![4])));
        assert_eq!(last(&ov, 1), None);
        ov.insert(x(5), vec![50]);
        ov.insert(x(4), vec![40]);
        assert_eq!(last(&ov, 5), Some((x(5), vec![50])));
        assert_eq!(last(&ov, 4), Some((x(4), vec![40])));
        ov.remove(x(4));
        ov.remove(x(2));
        assert_eq!(last(&ov, 4), None);
        assert_eq!(last(&ov, 9), Some((x(6), vec![6])));
        ov.insert(x(9), vec![90]);
        assert_eq!(last(&ov, 255), Some((x(9), vec![90])));
    }

    #[test]
    fn remove_lowest_takes_keys_in_order_across_calls_and_sees_overlay_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("t").unwrap();
        for i in 0..100u8 {
            tree.insert([b'x', i], vec![]).unwrap();
        }
        tree.insert(b"y", vec![]).unwrap();
        let mut ov = Overlay::new(&tree);
        let mut seen = Vec::new();
        for _ in 0..30 {
            seen.extend(ov.remove_lowest(b"x", &[b'x', 50], 7).unwrap());
        }
        assert_eq!(seen, (0..50u8).map(|i| vec![b'x', i]).collect::<Vec<_>>());
        // A key added below the cursor is found by the next scan.
        ov.insert(vec![b'x', 3, 1], vec![]);
        assert_eq!(
            ov.remove_lowest(b"x", &[b'x', 60], 2).unwrap(),
            vec![vec![b'x', 3, 1], vec![b'x', 50]]
        );
        assert_eq!(ov.get(&[b'x', 10]).unwrap(), None);
        assert!(ov.get(b"y").unwrap().is_some());
    }

    #[test]
    fn remove_lowest_with_a_rising_bound_takes_each_key_once_and_sees_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("t").unwrap();
        for i in (0..20u8).step_by(2) {
            tree.insert([b'x', i], vec![]).unwrap();
        }
        let mut ov = Overlay::new(&tree);
        let x = |i: u8| vec![b'x', i];
        // Nothing below the bound yet, then the keys below each new bound, each once.
        assert!(ov.remove_lowest(b"x", &x(0), 100).unwrap().is_empty());
        assert_eq!(
            ov.remove_lowest(b"x", &x(5), 100).unwrap(),
            [x(0), x(2), x(4)]
        );
        assert!(ov.remove_lowest(b"x", &x(5), 100).unwrap().is_empty());
        assert!(ov.remove_lowest(b"x", &x(3), 100).unwrap().is_empty());
        // A limit leaves the rest for the next call.
        assert_eq!(ov.remove_lowest(b"x", &x(13), 2).unwrap(), [x(6), x(8)]);
        assert_eq!(ov.remove_lowest(b"x", &x(13), 100).unwrap(), [x(10), x(12)]);
        // Keys the overlay writes below the swept bound, committed ones above it.
        ov.insert(x(1), vec![]);
        ov.insert(x(13), vec![]);
        assert_eq!(
            ov.remove_lowest(b"x", &x(17), 100).unwrap(),
            [x(1), x(13), x(14), x(16)]
        );
        assert_eq!(ov.remove_lowest(b"x", &x(255), 100).unwrap(), [x(18)]);
        ov.commit().unwrap();
        assert_eq!(tree.scan_prefix(b"x").count(), 0);
    }

    #[test]
    fn remove_lowest_keeps_scanning_the_tree_when_overlay_writes_filled_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("t").unwrap();
        let x = |i: u8| vec![b'x', i];
        for i in [0, 2, 4] {
            tree.insert(x(i), vec![]).unwrap();
        }
        let mut ov = Overlay::new(&tree);
        ov.insert(x(1), vec![]);
        ov.insert(x(3), vec![]);
        // The tree's keys below x5 were all seen, but the limit left x4 in the tree.
        assert_eq!(
            ov.remove_lowest(b"x", &x(5), 3).unwrap(),
            [x(0), x(1), x(2)]
        );
        assert_eq!(ov.remove_lowest(b"x", &x(5), 10).unwrap(), [x(3), x(4)]);
        // Below a swept bound only overlay writes are left to find.
        ov.insert(x(2), vec![]);
        assert_eq!(ov.remove_lowest(b"x", &x(3), 10).unwrap(), [x(2)]);
        assert!(ov.remove_lowest(b"x", &x(5), 10).unwrap().is_empty());
    }
}
