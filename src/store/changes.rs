//! The change log: every applied create and status change as a `ChangeRecord` under its
//! revision (`keys::change`), written by `order::apply_command` in the same batch as the order,
//! read here for the change feed (joined with the stored order, whose content a change never
//! alters), and trimmed to a retention window.
//!
//! Trimming is each node's own business (`ChangeRetention` comes from its flags): it runs in
//! the state machine's apply loop, in the same atomic batch as the chunk's commands, so a
//! snapshot dump sees it like any other write and the log never has a hole; the records are
//! left out of the state digest. While a dump runs, only records its walk has passed are
//! trimmed (the rest would be saved for it). What the log holds is always a contiguous run of
//! revisions ending at the newest one.

use super::keys;
use super::overlay::Overlay;
use super::reader::OrderReader;
use super::StoreError;
use crate::codec;
use crate::order::{Change, ChangeRecord};

/// How much of the change log a node keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeRetention {
    /// The newest this many revisions (at least 1).
    pub revisions: u64,
    /// Also drop records whose change is older than this, by the state machine's clock
    /// (`None`: no age limit).
    pub max_age_ms: Option<i64>,
}

pub const DEFAULT_CHANGE_RETENTION_REVISIONS: u64 = 100_000;

impl Default for ChangeRetention {
    fn default() -> Self {
        ChangeRetention {
            revisions: DEFAULT_CHANGE_RETENTION_REVISIONS,
            max_age_ms: None,
        }
    }
}

/// At most this many records are trimmed per apply chunk: bounded work, and still more than
/// a chunk adds.
const TRIM_PER_CHUNK: usize = 512;

/// A run of change records, and the log's bounds when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangesPage {
    /// Consecutive revisions, from the one asked for.
    pub changes: Vec<Change>,
    /// The oldest revision still held (`newest + 1` when the log is empty).
    pub oldest: u64,
    /// The newest revision applied (0 before any change).
    pub newest: u64,
}

impl OrderReader {
    /// The revision of the last applied change (0 before any); callers hold the install lock.
    pub(super) fn revision_unlocked(&self) -> Result<u64, StoreError> {
        Ok(match self.sm.get(keys::REVISION)? {
            Some(v) => codec::decode(&v)?,
            None => 0,
        })
    }

    /// Up to `max` changes from revision `from` on, if the log still holds `from` (`max` 0:
    /// only the bounds).
    pub fn changes_from(&self, from: u64, max: usize) -> Result<ChangesPage, StoreError> {
        let _g = self.install_lock.read().unwrap_or_else(|p| p.into_inner());
        let newest = self.revision_unlocked()?;
        let oldest = match self.sm.scan_prefix(keys::CHANGE_PREFIX).keys().next() {
            Some(k) => keys::id_suffix(&k?),
            None => newest + 1,
        };
        let mut changes = Vec::new();
        if max > 0 && from >= oldest && from <= newest {
            for kv in self.sm.range(keys::change(from)..keys::change(newest + 1)) {
                let (_, v) = kv?;
                let record = decode_record(&v)?;
                // The log is contiguous; a gap would mean a lost record: stop before it.
                if record.revision != from + changes.len() as u64 {
                    break;
                }
                let order = self.get_unlocked(record.order_id)?.ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "change {} names order {}, which is not stored",
                        record.revision, record.order_id
                    ))
                })?;
                changes.push(record.with_order(order));
                if changes.len() >= max {
                    break;
                }
            }
        }
        Ok(ChangesPage {
            changes,
            oldest,
            newest,
        })
    }

    /// Wakes when changes up to a newer revision are applied (or a snapshot installed).
    pub fn watch_revision(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revision_seen.subscribe()
    }

    /// Tells the change feed's subscribers how far the state machine has got, as stored (after
    /// an open or a snapshot install).
    pub(super) fn publish_revision(&self) -> Result<(), StoreError> {
        self.publish(self.revision_unlocked()?);
        Ok(())
    }

    /// Tells the change feed's subscribers that changes up to `revision` are applied.
    pub(super) fn publish(&self, revision: u64) {
        self.revision_seen.send_if_modified(|seen| {
            let newer = *seen != revision;
            *seen = revision;
            newer
        });
    }
}

/// A stored change record. The first builds with the change feed stored a whole `Change` (the
/// order's full content once per change); a store or snapshot they wrote still holds some, read
/// here as the record they contain. (A `Change`'s bytes never decode as a `ChangeRecord`: the
/// decoder refuses the trailing bytes of the order's content.)
fn decode_record(bytes: &[u8]) -> Result<ChangeRecord, StoreError> {
    match codec::decode::<ChangeRecord>(bytes) {
        Ok(record) => Ok(record),
        Err(e) => match codec::decode::<Change>(bytes) {
            Ok(old) => Ok(ChangeRecord::of(
                old.revision,
                &old.order,
                old.previous_status,
            )),
            Err(_) => Err(e.into()),
        },
    }
}

/// Drops records outside `retention` as part of an apply chunk (ages by the state machine's
/// clock: the records' times are the leaders' stamps), none above revision `upto` if given.
/// Returns the newest revision, as the chunk leaves it (0 before any change).
pub(super) fn trim(
    ov: &mut Overlay<'_>,
    tree: &sled::Tree,
    retention: ChangeRetention,
    upto: Option<u64>,
) -> Result<u64, StoreError> {
    let newest: u64 = match ov.get(keys::REVISION)? {
        Some(v) => codec::decode(&v)?,
        None => return Ok(0),
    };
    // Keep revisions above `newest - revisions`.
    let mut keep_from = newest.saturating_sub(retention.revisions.max(1)) + 1;
    if let (Some(max_age), Some(clock)) = (retention.max_age_ms, ov.get(keys::CLOCK)?) {
        let clock: i64 = codec::decode(&clock)?;
        let cutoff = clock.saturating_sub(max_age);
        // The first of the oldest records still young enough (they are in time order, as
        // the stamps are, up to clock skew between leaders: close enough for retention).
        for kv in tree.scan_prefix(keys::CHANGE_PREFIX).take(TRIM_PER_CHUNK) {
            let (k, v) = kv?;
            let record = decode_record(&v)?;
            if record.updated_at_ms >= cutoff {
                break;
            }
            keep_from = keep_from.max(keys::id_suffix(&k) + 1);
        }
    }
    if let Some(upto) = upto {
        keep_from = keep_from.min(upto.saturating_add(1));
    }
    ov.remove_lowest(
        keys::CHANGE_PREFIX,
        &keys::change(keep_from.min(newest)),
        TRIM_PER_CHUNK,
    )?;
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::{LineItem, Order, OrderStatus};

    #[test]
    fn a_change_stored_whole_by_the_first_feed_builds_reads_as_its_record() {
        let order = Order {
            id: 7,
            customer_id: "c".into(),
            items: vec![LineItem {
                sku: "s".into(),
                quantity: 1,
                unit_price_cents: 5,
            }],
            total_cents: 5,
            note: None,
            status: OrderStatus::Paid,
            version: 2,
            created_at_ms: 10,
            updated_at_ms: 20,
        };
        let old = Change {
            revision: 9,
            order: order.clone(),
            previous_status: Some(OrderStatus::Pending),
        };
        let record = ChangeRecord::of(9, &order, Some(OrderStatus::Pending));
        assert_eq!(
            decode_record(&codec::encode(&old).unwrap()).unwrap(),
            record
        );
        assert_eq!(
            decode_record(&codec::encode(&record).unwrap()).unwrap(),
            record
        );
        assert_eq!(record.with_order(order), old);
    }
}
