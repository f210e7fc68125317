//! The listing indexes' derived parts: the status counters (`keys::count`) and the statuses
//! in the customer index's values, kept by `order_state` on every apply and rebuilt here for a
//! store that was written without them.
//!
//! A status-filtered list answers its `total` from a counter; a customer's list reads the
//! statuses from its own index entries, never the orders it does not return; every filtered
//! list walks its index from where the page starts. All of it is derived from the orders: a
//! node that applied entries with an older version, or installed a snapshot an older leader
//! built, holds none or stale ones. Each apply chunk therefore records the log id it kept them
//! up to (`keys::COUNTS_AT`) beside the applied one; at open and after a snapshot install the
//! two must be equal, or both are built again from the orders (one pass over the store,
//! logged). A crash half-way leaves `COUNTS_AT` behind, so the pass runs again.

use std::collections::BTreeMap;

use super::keys;
use super::StoreError;
use crate::codec;
use crate::order::Order;

/// Keys written per sled batch while rebuilding.
const REBUILD_BATCH: usize = 10_000;

/// Rebuilds the counters and the customer index's statuses if they were not kept up to the
/// applied log id. Returns whether it rebuilt.
pub(super) fn ensure(sm: &sled::Tree) -> Result<bool, StoreError> {
    let applied = sm.get(keys::APPLIED)?;
    if sm.get(keys::COUNTS_AT)? == applied {
        return Ok(false);
    }
    let started = std::time::Instant::now();
    let mut batch = sled::Batch::default();
    for (n, k) in sm.scan_prefix(keys::COUNT_PREFIX).keys().enumerate() {
        batch.remove(k?);
        if (n + 1).is_multiple_of(REBUILD_BATCH) {
            sm.apply_batch(std::mem::take(&mut batch))?;
        }
    }
    sm.apply_batch(batch)?;
    let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let mut batch = sled::Batch::default();
    let mut orders = 0usize;
    for kv in sm.scan_prefix(keys::ORDER_PREFIX) {
        let (_, v) = kv?;
        let order: Order = codec::decode(&v)?;
        *counts
            .entry(keys::count(&keys::status_prefix(order.status)))
            .or_default() += 1;
        batch.insert(
            keys::with_id(keys::customer_prefix(&order.customer_id), order.id),
            vec![order.status.tag()],
        );
        orders += 1;
        if orders.is_multiple_of(REBUILD_BATCH) {
            sm.apply_batch(std::mem::take(&mut batch))?;
        }
    }
    for (k, n) in counts {
        batch.insert(k, codec::encode(&n)?);
    }
    match applied {
        Some(applied) => batch.insert(keys::COUNTS_AT, applied),
        None => batch.remove(keys::COUNTS_AT),
    }
    sm.apply_batch(batch)?;
    tracing::info!(
        orders,
        ms = started.elapsed().as_millis() as u64,
        "listing counters and the customer index's statuses rebuilt (the store was written \
         without them, or by an older version)"
    );
    Ok(true)
}
