//! The listing counters and the (customer, status) index, kept by `order_state` on every apply
//! and rebuilt here for a store that was written without them.
//!
//! A filtered list answers its `total` from a counter (`keys::count`) and walks the narrowest
//! index from where the page starts, so its cost does not grow with the number of matches.
//! The counters are derived state: a node that applied entries with an older version, or
//! installed a snapshot an older leader built, holds none or stale ones. Each apply chunk
//! therefore records the log id it kept them up to (`keys::COUNTS_AT`) beside the applied one;
//! at open and after a snapshot install the two must be equal, or the counters and the
//! composite index are built again from the orders (one pass over the store, logged).

use std::collections::BTreeMap;

use super::keys;
use super::StoreError;
use crate::codec;
use crate::order::Order;

/// Keys written per sled batch while rebuilding.
const REBUILD_BATCH: usize = 10_000;

/// Rebuilds the counters and the composite index if they were not kept up to the applied log
/// id. Returns whether it rebuilt.
pub(super) fn ensure(sm: &sled::Tree) -> Result<bool, StoreError> {
    let applied = sm.get(keys::APPLIED)?;
    if sm.get(keys::COUNTS_AT)? == applied {
        return Ok(false);
    }
    let started = std::time::Instant::now();
    for prefix in [keys::CUSTOMER_STATUS_PREFIX, keys::COUNT_PREFIX] {
        let mut batch = sled::Batch::default();
        for (n, k) in sm.scan_prefix(prefix).keys().enumerate() {
            batch.remove(k?);
            if (n + 1) % REBUILD_BATCH == 0 {
                sm.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        sm.apply_batch(batch)?;
    }
    let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let mut batch = sled::Batch::default();
    let mut orders = 0usize;
    for kv in sm.scan_prefix(keys::ORDER_PREFIX) {
        let (_, v) = kv?;
        let order: Order = codec::decode(&v)?;
        let by_both = keys::customer_status_prefix(&order.customer_id, order.status);
        *counts.entry(keys::count(&by_both)).or_default() += 1;
        *counts
            .entry(keys::count(&keys::status_prefix(order.status)))
            .or_default() += 1;
        batch.insert(keys::with_id(by_both, order.id), Vec::new());
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
        "listing counters and the customer-status index rebuilt (the store was written \
         without them, or by an older version)"
    );
    Ok(true)
}
