//! Brings a store written by an older version to the current layout of its values, at open and
//! after a snapshot install (a snapshot an older leader built has the older layout), before
//! anything reads it. The layout is marked at `keys::LAYOUT` (none: layout 1).
//!
//! Layout 2 keeps an order's revision in the order's own value (`order_state::stored_order`):
//! one key less per change, and one read less per order listed. Layout 1 kept it under `v` +
//! id, and orders last changed before revisions existed had none (revision 0). The pass
//! rewrites every order and removes its `v` key in the same batch; a crash half-way leaves the
//! mark unset, and the pass, which skips orders already moved, runs again.
//!
//! Layout 3 keeps the status index as one map per 64 ids (`status_index`) instead of one key
//! per order: a create writes one key less. Its pass turns the old keys into maps (safe to
//! run again after a crash, see `status_index::move_from_old_layout`).
//!
//! Layout 4 keeps the change log in pages of 64 revisions (`changes`) instead of one key per
//! record: a change writes one key less, and trimming removes a page per 64 changes instead of
//! a key per change. Its pass pages the old records (safe to run again likewise).

use super::changes;
use super::keys;
use super::order_state::stored_order;
use super::status_index;
use super::StoreError;
use crate::codec;
use crate::order::Order;

/// The layout this version writes.
pub const CURRENT_LAYOUT: u64 = 4;

/// Orders rewritten per sled batch: sled's memory grows steeply with a batch's size (see
/// `state_machine`), and this pass may move millions of whole orders.
const BATCH: usize = 512;

/// Moves the store to `CURRENT_LAYOUT` if it is older; returns whether it moved anything.
pub(super) fn ensure(sm: &sled::Tree) -> Result<bool, StoreError> {
    let layout: u64 = match sm.get(keys::LAYOUT)? {
        Some(v) => codec::decode(&v)?,
        None => 1,
    };
    if layout == CURRENT_LAYOUT {
        return Ok(false);
    }
    if layout > CURRENT_LAYOUT {
        return Err(StoreError::Corrupt(format!(
            "the store has layout {layout}, newer than this version's {CURRENT_LAYOUT}: run \
             the newer ordo that wrote it"
        )));
    }
    let started = std::time::Instant::now();
    let orders = if layout < 2 {
        move_revisions_into_orders(sm)?
    } else {
        0
    };
    let status_entries = status_index::move_from_old_layout(sm, BATCH)?;
    let change_records = changes::move_from_old_layout(sm, BATCH)?;
    sm.insert(keys::LAYOUT, codec::encode(&CURRENT_LAYOUT)?)?;
    if orders > 0 || status_entries > 0 || change_records > 0 {
        tracing::info!(
            from = layout,
            orders,
            status_entries,
            change_records,
            ms = started.elapsed().as_millis() as u64,
            "store moved to layout {CURRENT_LAYOUT} (each order's revision in its own value, \
             the status index in maps of 64 ids, the change log in pages of 64 revisions)"
        );
    }
    Ok(true)
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
