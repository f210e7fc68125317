//! Brings a store written by an older version to the current layout of its values, at open and
//! after a snapshot install (a snapshot an older leader built has the older layout), before
//! anything reads it. The layout is marked at `keys::LAYOUT` (none: layout 1).
//!
//! Layout 2 keeps an order's revision in the order's own value (`order_state::stored_order`):
//! one key less per change, and one read less per order listed. Layout 1 kept it under `v` +
//! id, and orders last changed before revisions existed had none (revision 0). The pass
//! rewrites every order and removes its `v` key in the same batch; a crash half-way leaves the
//! upgrading mark (`ensure`), and the pass, which skips orders already moved, runs again.
//!
//! Layout 3 keeps the status index as one map per 64 ids (`status_index`) instead of one key
//! per order: a create writes one key less. Its pass turns the old keys into maps (safe to
//! run again after a crash, see `regroup`).
//!
//! Layout 4 keeps the change log in pages of 64 revisions (`changes`) instead of one key per
//! record: a change writes one key less, and trimming removes a page per 64 changes instead of
//! a key per change. Its pass pages the old records (safe to run again likewise).
//!
//! Layout 5 keeps the customer index as a head per customer (its counters and newest orders)
//! and runs of older orders (`customer_index`) instead of an entry per order beside the
//! counters: a create writes one key less. The index is derived from the orders, so its pass
//! is `list_index`'s rebuild: this one only clears the rebuild's mark, and marks the layout.
//!
//! Layout 6 appends to each idempotency record the revision of the change its request made
//! (a replayed write answers with it). Its pass is the mark alone: records stored before are
//! read as having no revision (`order_state::stored_record`) and expire within a day. The
//! mark keeps a build before 6, which cannot read the new records, from opening the store.
//!
//! Layout 7 stores Raft log entries over 7 KiB in chunks (`log_store::CHUNK_BYTES`). The state
//! machine is as in 6 and an older log reads as it is, so its pass is the mark alone. The mark
//! keeps a build before 7 from opening the store: it would take a chunk's key for entry 0 and
//! could report a shorter log than the node holds (and vote on it) instead of failing.

use super::changes;
use super::keys;
use super::order_state::stored_order;
use super::status_index;
use super::StoreError;
use crate::codec;
use crate::order::Order;

/// The layout this version writes.
pub const CURRENT_LAYOUT: u64 = 7;

/// Orders rewritten per sled batch: sled's memory grows steeply with a batch's size (see
/// `state_machine`), and this pass may move millions of whole orders.
const BATCH: usize = 512;

/// The layout a store (or a snapshot) marked with `mark` at `keys::LAYOUT` has, if this
/// version can read it: an error for a newer one, or a mark that does not decode.
pub(super) fn readable_layout(mark: Option<&[u8]>) -> Result<u64, StoreError> {
    let layout: u64 = match mark {
        Some(v) => codec::decode(v)?,
        None => 1,
    };
    if layout > CURRENT_LAYOUT {
        return Err(StoreError::Corrupt(format!(
            "the store has layout {layout}, newer than this version's {CURRENT_LAYOUT}: run \
             the newer ordo that wrote it"
        )));
    }
    Ok(layout)
}

/// While the passes run, the mark is `upgrading_mark(from)`: 1000 times the layout moved to,
/// plus the one moved from. A build that knows only older layouts takes it for a newer one
/// and refuses the store (after a crash half-way and a roll back, it would otherwise read a
/// half-moved store as its own: orders already paged missing from its change feed, say);
/// this build runs the passes again from where the mark says. A later build's mark names
/// another target, which this one refuses likewise. It is never a real layout, and never in a
/// snapshot (a dump cannot run while `ensure` does).
fn upgrading_mark(from: u64) -> u64 {
    1_000 * CURRENT_LAYOUT + from
}

/// Moves the store to `CURRENT_LAYOUT` if it is older; returns whether it moved anything.
pub(super) fn ensure(sm: &sled::Tree) -> Result<bool, StoreError> {
    let mark = sm.get(keys::LAYOUT)?;
    let interrupted = match mark.as_deref().map(codec::decode::<u64>) {
        Some(Ok(m)) => (1..CURRENT_LAYOUT).find(|from| upgrading_mark(*from) == m),
        _ => None,
    };
    let layout = match interrupted {
        Some(from) => from,
        None => readable_layout(mark.as_deref())?,
    };
    if layout == CURRENT_LAYOUT {
        return Ok(false);
    }
    if interrupted.is_none() {
        sm.insert(keys::LAYOUT, codec::encode(&upgrading_mark(layout))?)?;
        sm.flush()?;
    }
    let started = std::time::Instant::now();
    let orders = if layout < 2 {
        move_revisions_into_orders(sm)?
    } else {
        0
    };
    let status_entries = status_index::move_from_old_layout(sm, BATCH)?;
    let change_records = changes::move_from_old_layout(sm, BATCH)?;
    let mut mark = sled::Batch::default();
    if layout < 5 {
        // `list_index::ensure`, next, then builds the customer index anew.
        mark.remove(keys::COUNTS_AT);
    }
    mark.insert(keys::LAYOUT, codec::encode(&CURRENT_LAYOUT)?);
    sm.apply_batch(mark)?;
    if orders > 0 || status_entries > 0 || change_records > 0 {
        tracing::info!(
            from = layout,
            orders,
            status_entries,
            change_records,
            ms = started.elapsed().as_millis() as u64,
            "store moved to layout {CURRENT_LAYOUT} (each order's revision in its own value, \
             the status index in maps of 64 ids, the change log in pages of 64 revisions; \
             the customer index is rebuilt next)"
        );
    }
    Ok(true)
}

/// Moves records kept one per key under `old_prefix` into keys that each gather several (the
/// passes of layouts 3 and 4): `place` names an old record's new key and what it carries there
/// (the old keys of one new key must be consecutive), `merge` writes a new key's value from the
/// value it has (if a pass cut short wrote it) and what was gathered for it. Each sled batch
/// holds whole new keys with the removal of their old ones, so a crash half-way leaves every
/// record either under its old key or in its new one, and a pass run again merges the rest.
/// Returns how many old records it moved.
pub(super) fn regroup<T>(
    sm: &sled::Tree,
    old_prefix: &[u8],
    batch_records: usize,
    place: impl Fn(&[u8], &[u8]) -> Result<(Vec<u8>, T), StoreError>,
    merge: impl Fn(Option<&[u8]>, Vec<T>) -> Result<Vec<u8>, StoreError>,
) -> Result<u64, StoreError> {
    let mut batch = sled::Batch::default();
    let mut in_batch = 0usize;
    let mut moved = 0u64;
    // The new key being gathered, and what it gathered so far.
    let mut current: Option<(Vec<u8>, Vec<T>)> = None;
    let finish = |batch: &mut sled::Batch, done: Option<(Vec<u8>, Vec<T>)>| {
        if let Some((key, gathered)) = done {
            let value = merge(sm.get(&key)?.as_deref(), gathered)?;
            batch.insert(key, value);
        }
        Ok::<_, StoreError>(())
    };
    for kv in sm.scan_prefix(old_prefix) {
        let (k, v) = kv?;
        let (key, item) = place(&k, &v)?;
        if current.as_ref().is_some_and(|(c, _)| *c != key) {
            finish(&mut batch, current.take())?;
            if in_batch >= batch_records {
                sm.apply_batch(std::mem::take(&mut batch))?;
                in_batch = 0;
            }
        }
        current
            .get_or_insert_with(|| (key, Vec::new()))
            .1
            .push(item);
        batch.remove(k);
        in_batch += 1;
        moved += 1;
    }
    finish(&mut batch, current.take())?;
    sm.apply_batch(batch)?;
    Ok(moved)
}

/// Layout 1 to 2: each order's revision from `v` + id into the order's value. Returns how
/// many orders it rewrote.
fn move_revisions_into_orders(sm: &sled::Tree) -> Result<usize, StoreError> {
    let mut batch = sled::Batch::default();
    let mut moved = 0usize;
    for kv in sm.scan_prefix(keys::ORDER_PREFIX) {
        let (k, v) = kv?;
        if stored_order::decode(&v).is_ok() {
            continue; // moved by a pass that was cut short
        }
        let order: Order = codec::decode(&v)?;
        let old_revision = keys::with_id(keys::OLD_ORDER_REVISION_PREFIX.to_vec(), order.id);
        let revision: u64 = match sm.get(&old_revision)? {
            Some(r) => codec::decode(&r)?,
            None => 0,
        };
        batch.insert(k, stored_order::encode(&order, revision)?);
        batch.remove(old_revision);
        moved += 1;
        if moved.is_multiple_of(BATCH) {
            sm.apply_batch(std::mem::take(&mut batch))?;
        }
    }
    // Revisions of orders that are not stored (none should be) go too.
    for k in sm.scan_prefix(keys::OLD_ORDER_REVISION_PREFIX).keys() {
        batch.remove(k?);
    }
    sm.apply_batch(batch)?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(sm: &sled::Tree) -> u64 {
        codec::decode(&sm.get(keys::LAYOUT).unwrap().unwrap()).unwrap()
    }

    /// A pass cut short leaves a mark no build before this one opens, and this one finishes
    /// the move from it.
    #[test]
    fn an_upgrade_cut_short_is_refused_by_older_builds_and_finished_by_this_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let sm = db.open_tree("sm").unwrap();
        // A layout-1 store (no mark) holding a value no pass can read: the first pass fails.
        let order_key = keys::with_id(keys::ORDER_PREFIX.to_vec(), 7);
        sm.insert(&order_key, b"not an order".to_vec()).unwrap();
        assert!(ensure(&sm).is_err());
        assert_eq!(mark(&sm), 1_000 * CURRENT_LAYOUT + 1);
        // What a build of layout 6, say, checks at open: a layout newer than its own.
        let older_build = sm.get(keys::LAYOUT).unwrap();
        assert!(readable_layout(older_build.as_deref()).is_err());

        // A later build's mark of an upgrade cut short (to layout 99, from 1): refused here.
        let ours = sm
            .insert(keys::LAYOUT, codec::encode(&99_001u64).unwrap())
            .unwrap();
        assert!(
            ensure(&sm).is_err(),
            "another build's upgrade taken as this one's"
        );
        sm.insert(keys::LAYOUT, ours.unwrap()).unwrap();

        sm.remove(&order_key).unwrap();
        assert!(ensure(&sm).unwrap(), "the move runs again");
        assert_eq!(mark(&sm), CURRENT_LAYOUT);
        assert!(!ensure(&sm).unwrap(), "and only once");
    }
}
