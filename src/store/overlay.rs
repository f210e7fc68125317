//! A write overlay over a sled tree: the state machine applies a whole batch of log entries
//! against it (later entries see earlier entries' writes) and then commits it as one atomic
//! sled batch, so a crash never leaves half an apply on disk.

use std::collections::BTreeMap;

pub(super) struct Overlay<'a> {
    tree: &'a sled::Tree,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Overlay<'a> {
    pub fn new(tree: &'a sled::Tree) -> Self {
        Overlay {
            tree,
            writes: BTreeMap::new(),
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, sled::Error> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => Ok(self.tree.get(key)?.map(|v| v.to_vec())),
        }
    }

    pub fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    pub fn remove(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// Keys under `prefix` that sort below `upper`, as the batch now sees them (committed keys
    /// not removed by the overlay, plus keys the overlay added), in order, at most `limit`.
    pub fn keys_below(
        &self,
        prefix: &[u8],
        upper: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, sled::Error> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for kv in self.tree.range(prefix.to_vec()..upper.to_vec()).keys() {
            let k = kv?;
            if keys.len() >= limit {
                break;
            }
            if !matches!(self.writes.get(k.as_ref()), Some(None)) {
                keys.push(k.to_vec());
            }
        }
        for (k, v) in self.writes.range(prefix.to_vec()..upper.to_vec()) {
            if v.is_some() && !keys.contains(k) {
                keys.push(k.clone());
            }
        }
        keys.sort();
        keys.truncate(limit);
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
