//! The listing indexes' derived parts: the status counters (`keys::status_count`) and the
//! whole customer index (`customer_index`: each customer's counters, and its orders' ids and
//! statuses), kept by `order_state` on every apply and rebuilt here for a store that was
//! written without them or in an older layout of them.
//!
//! A filtered list answers its `total` from a counter; a customer's list reads the statuses
//! from its index, never the orders it does not return; every filtered list walks
//! its index from where the page starts. All of it is derived from the orders: a
//! node that applied entries with an older version, or installed a snapshot an older leader
//! built, holds none or stale ones. Each apply chunk therefore records the log id it kept them
//! up to (`keys::COUNTS_AT`) beside the applied one; at open and after a snapshot install the
//! two must be equal, or both are built again from the orders (one pass over the store,
//! logged). A crash half-way leaves `COUNTS_AT` behind, so the pass runs again.

use std::collections::BTreeMap;

use super::customer_index;
use super::keys;
use super::order_state::stored_order;
use super::StoreError;
use crate::codec;

/// Keys written per sled batch while rebuilding.
const REBUILD_BATCH: usize = 10_000;

/// Rebuilds the status counters and the customer index if they were not kept up to the
/// applied log id. Returns whether it rebuilt.
pub(super) fn ensure(sm: &sled::Tree) -> Result<bool, StoreError> {
    let applied = sm.get(keys::APPLIED)?;
    if sm.get(keys::COUNTS_AT)? == applied {
        return Ok(false);
    }
    let started = std::time::Instant::now();
    // Whatever an older layout or a cut pass left goes first.
    remove_prefix(sm, keys::COUNT_PREFIX)?;
    remove_prefix(sm, keys::CUSTOMER_PREFIX)?;
    let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let orders = sm.scan_prefix(keys::ORDER_PREFIX).values().map(|v| {
        let (order, _) = stored_order::decode(&v?)?;
        *counts.entry(keys::status_count(order.status)).or_default() += 1;
        Ok((order.customer_id, order.id, order.status))
    });
    let orders = customer_index::rebuild(sm, orders, REBUILD_BATCH)?;
    let mut batch = sled::Batch::default();
    for (k, n) in counts {
        batch.insert(k, codec::encode(&n)?);
    }
    for old in keys::OLD_COUNTS_AT {
        batch.remove(old);
    }
    match applied {
        Some(applied) => batch.insert(keys::COUNTS_AT, applied),
        None => batch.remove(keys::COUNTS_AT),
    }
    sm.apply_batch(batch)?;
    tracing::info!(
        orders,
        ms = started.elapsed().as_millis() as u64,
        "listing counters and the customer index rebuilt (the store was written without \
         them, or by an older version)"
    );
    Ok(true)
}

/// Removes every key under `prefix`, in batches.
fn remove_prefix(sm: &sled::Tree, prefix: &[u8]) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    for (n, k) in sm.scan_prefix(prefix).keys().enumerate() {
        batch.remove(k?);
        if (n + 1).is_multiple_of(REBUILD_BATCH) {
            sm.apply_batch(std::mem::take(&mut batch))?;
        }
    }
    sm.apply_batch(batch)?;
    Ok(())
}
