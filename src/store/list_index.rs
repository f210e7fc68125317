//! The listing indexes' derived parts: the status counters (`keys::status_count`), each customer's
//! counters by status (`CustomerCounts`) and the statuses in the customer index's values,
//! kept by `order_state` on every apply and rebuilt here for a store that was written without
//! them.
//!
//! A filtered list answers its `total` from a counter; a customer's list reads the statuses
//! from its own index entries, never the orders it does not return; every filtered list walks
//! its index from where the page starts. All of it is derived from the orders: a
//! node that applied entries with an older version, or installed a snapshot an older leader
//! built, holds none or stale ones. Each apply chunk therefore records the log id it kept them
//! up to (`keys::COUNTS_AT`) beside the applied one; at open and after a snapshot install the
//! two must be equal, or both are built again from the orders (one pass over the store,
//! logged). A crash half-way leaves `COUNTS_AT` behind, so the pass runs again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::keys;
use super::order_state::stored_order;
use super::StoreError;
use crate::codec;
use crate::order::OrderStatus;

/// Keys written per sled batch while rebuilding.
const REBUILD_BATCH: usize = 10_000;

/// How many of one customer's orders are in each status (by `OrderStatus::tag`), at
/// `keys::customer_counts`: a customer's list total, filtered by status or not, is one read.
/// Not removed at zero: a customer's orders are never deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct CustomerCounts([u64; OrderStatus::ALL.len()]);

impl CustomerCounts {
    /// The customer's orders in `status`, or all of them.
    pub fn total(&self, status: Option<OrderStatus>) -> u64 {
        match status {
            Some(s) => self.0[Self::slot(s)],
            None => self.0.iter().sum(),
        }
    }

    /// Counts one more order in `status` (`delta` 1) or one fewer (-1).
    pub fn add(&mut self, status: OrderStatus, delta: i64) -> Result<(), StoreError> {
        let n = &mut self.0[Self::slot(status)];
        *n = n.checked_add_signed(delta).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "a customer's {} counter would pass zero",
                status.as_str()
            ))
        })?;
        Ok(())
    }

    fn slot(status: OrderStatus) -> usize {
        usize::from(status.tag() - 1)
    }
}

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
        let (order, _) = stored_order::decode(&v)?;
        *counts.entry(keys::status_count(order.status)).or_default() += 1;
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
    sm.apply_batch(std::mem::take(&mut batch))?;
    rebuild_customer_counts(sm)?;
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
        "listing counters and the customer index's statuses rebuilt (the store was written \
         without them, or by an older version)"
    );
    Ok(true)
}

/// Writes every customer's counters from the customer index (whose values are now the
/// statuses), one customer at a time in key order, and removes counters whose customer has no
/// index entry. A counter key sorts right after its customer's entries, so it is reached when
/// that customer's counts are complete, and written behind the walk.
fn rebuild_customer_counts(sm: &sled::Tree) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    let mut pending = 0usize;
    // The customer being counted (its key prefix) and its counts so far.
    let mut current: Option<(Vec<u8>, CustomerCounts)> = None;
    let finish = |batch: &mut sled::Batch, done: Option<(Vec<u8>, CustomerCounts)>| {
        if let Some((prefix, counts)) = done {
            batch.insert(
                keys::counts_of_customer_prefix(prefix),
                codec::encode(&counts)?,
            );
        }
        Ok::<_, StoreError>(())
    };
    for kv in sm.scan_prefix(keys::CUSTOMER_PREFIX) {
        let (k, v) = kv?;
        let Some((prefix, is_counts)) = keys::split_customer_key(&k) else {
            return Err(StoreError::Corrupt(format!(
                "a malformed customer index key: {k:?}"
            )));
        };
        let same = current.as_ref().is_some_and(|(p, _)| p[..] == *prefix);
        if is_counts {
            if same {
                finish(&mut batch, current.take())?;
            } else {
                batch.remove(k.clone());
            }
        } else {
            if !same {
                finish(&mut batch, current.take())?;
            }
            let status = v
                .first()
                .and_then(|t| OrderStatus::from_tag(*t))
                .ok_or_else(|| StoreError::Corrupt(format!("no status in {k:?}")))?;
            let (_, counts) = current.get_or_insert_with(|| (prefix.to_vec(), Default::default()));
            counts.add(status, 1)?;
        }
        pending += 1;
        if pending.is_multiple_of(REBUILD_BATCH) {
            sm.apply_batch(std::mem::take(&mut batch))?;
        }
    }
    finish(&mut batch, current.take())?;
    sm.apply_batch(batch)?;
    Ok(())
}
