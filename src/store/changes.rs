//! The change log: every applied create and status change as a `ChangeRecord`, written by
//! `order::apply_command` in the same batch as the order, read here for the change feed
//! (joined with the stored order, whose content a change never alters), and trimmed to a
//! retention window.
//!
//! The records are kept in pages of 64 revisions (`keys::change_page`, layout 4): a page's
//! value is its records in revision order, each a 2-byte length and its encoding. A change
//! appends to the newest page instead of adding a sled key; trimming removes the pages below
//! the window and rewrites the one the window starts in, once per apply chunk instead of a
//! key per change. (Before layout 4 each record had its own key, `e` + revision;
//! `move_from_old_layout` pages them.)
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

/// Revisions per page of the change log.
pub(super) const REVISIONS_PER_PAGE: u64 = 64;

/// At most this many pages are trimmed per apply chunk: bounded work, and still more than
/// a chunk adds.
const TRIM_PER_CHUNK: usize = 64;

/// At most this many of the oldest pages are read per apply chunk to find the records past
/// their age.
const AGE_SCAN_PAGES: usize = 8;

/// The page that holds `revision`.
pub(super) fn page_of(revision: u64) -> u64 {
    revision / REVISIONS_PER_PAGE
}

/// Appends `record` to the bytes of its page.
pub(super) fn append_to_page(page: &mut Vec<u8>, record: &ChangeRecord) -> Result<(), StoreError> {
    let bytes = codec::encode(record)?;
    let len = u16::try_from(bytes.len())
        .map_err(|_| StoreError::Corrupt(format!("a change record of {} bytes", bytes.len())))?;
    page.extend_from_slice(&len.to_be_bytes());
    page.extend_from_slice(&bytes);
    Ok(())
}

/// The records of a page, in revision order.
pub(super) fn page_records(page: &[u8]) -> Result<Vec<ChangeRecord>, StoreError> {
    let mut records = Vec::new();
    let mut rest = page;
    while !rest.is_empty() {
        let (record, after) = next_record(rest)?;
        records.push(record);
        rest = after;
    }
    Ok(records)
}

/// The first record of `page` and the bytes after it.
fn next_record(page: &[u8]) -> Result<(ChangeRecord, &[u8]), StoreError> {
    let truncated = || StoreError::Corrupt("a change log page ends inside a record".into());
    let len = match page {
        [a, b, ..] => u16::from_be_bytes([*a, *b]) as usize,
        _ => return Err(truncated()),
    };
    let body = page.get(2..2 + len).ok_or_else(truncated)?;
    Ok((codec::decode(body)?, &page[2 + len..]))
}

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

/// About the memory a change holds: its order's strings and items, and the rest.
fn approx_bytes(order: &crate::order::Order) -> usize {
    let item = std::mem::size_of::<crate::order::LineItem>();
    std::mem::size_of::<Change>()
        + order.customer_id.len()
        + order.note.as_ref().map_or(0, String::len)
        + order
            .items
            .iter()
            .map(|i| item + i.sku.len())
            .sum::<usize>()
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
        self.changes_within(from, max, usize::MAX)
    }

    /// `changes_from`, stopping once the changes hold about `max_bytes` of memory (at least
    /// one change): each carries its whole order, up to tens of KB for the largest.
    pub fn changes_within(
        &self,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<ChangesPage, StoreError> {
        let _g = self.install_lock.read().unwrap_or_else(|p| p.into_inner());
        let newest = self.revision_unlocked()?;
        let oldest = match self
            .sm
            .scan_prefix(keys::CHANGE_PAGE_PREFIX)
            .values()
            .next()
        {
            Some(page) => next_record(&page?)?.0.revision,
            None => newest + 1,
        };
        let mut changes = Vec::new();
        let mut bytes = 0usize;
        if max > 0 && from >= oldest && from <= newest {
            let pages = keys::change_page(page_of(from))..keys::change_page(page_of(newest) + 1);
            let records = self.sm.range(pages).values().flat_map(|page| {
                match page
                    .map_err(StoreError::from)
                    .and_then(|p| page_records(&p))
                {
                    Ok(records) => records.into_iter().map(Ok).collect::<Vec<_>>(),
                    Err(e) => vec![Err(e)],
                }
            });
            for record in records {
                let record = record?;
                if record.revision < from {
                    continue;
                }
                // A chunk applied since `newest` was read may have added to its page: stop at
                // `newest`, which callers take as the page's upper bound.
                if record.revision > newest {
                    break;
                }
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
                bytes += approx_bytes(&order);
                changes.push(record.with_order(order));
                if changes.len() >= max || bytes >= max_bytes {
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

/// A change record stored under its own key (before layout 4). The first builds with the
/// change feed stored a whole `Change` (the order's full content once per change); a store or
/// snapshot they wrote still holds some, read here as the record they contain. (A `Change`'s
/// bytes never decode as a `ChangeRecord`: the decoder refuses the trailing bytes of the
/// order's content.)
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

/// Moves the change log from one key per record (`keys::OLD_CHANGE_PREFIX` + revision: layouts
/// 1 to 3) into pages (`upgrade::regroup`: safe to run again after a crash). Returns how many
/// records it moved.
pub(super) fn move_from_old_layout(
    sm: &sled::Tree,
    batch_records: usize,
) -> Result<u64, StoreError> {
    let place = |k: &[u8], v: &[u8]| {
        if k.len() != keys::OLD_CHANGE_PREFIX.len() + 8 {
            return Err(StoreError::Corrupt(format!(
                "a malformed change record key of the old layout: {k:?}"
            )));
        }
        let record = decode_record(v)?;
        Ok((keys::change_page(page_of(record.revision)), record))
    };
    let merge = |already: Option<&[u8]>, records: Vec<ChangeRecord>| {
        let mut all = already.map(page_records).transpose()?.unwrap_or_default();
        all.extend(records);
        all.sort_by_key(|r| r.revision);
        all.dedup_by_key(|r| r.revision);
        let mut page = Vec::new();
        for record in &all {
            append_to_page(&mut page, record)?;
        }
        Ok(page)
    };
    super::upgrade::regroup(sm, keys::OLD_CHANGE_PREFIX, batch_records, place, merge)
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
        'pages: for page in tree
            .scan_prefix(keys::CHANGE_PAGE_PREFIX)
            .values()
            .take(AGE_SCAN_PAGES)
        {
            let page = page?;
            let mut rest = &page[..];
            while !rest.is_empty() {
                let (record, after) = next_record(rest)?;
                if record.updated_at_ms >= cutoff {
                    break 'pages;
                }
                keep_from = keep_from.max(record.revision.saturating_add(1));
                rest = after;
            }
        }
    }
    if let Some(upto) = upto {
        keep_from = keep_from.min(upto.saturating_add(1));
    }
    // Pages below the one holding `keep_from` go whole (the newest record always stays)...
    let keep_from = keep_from.min(newest);
    let first_kept = keys::change_page(page_of(keep_from));
    let removed = ov.remove_lowest(keys::CHANGE_PAGE_PREFIX, &first_kept, TRIM_PER_CHUNK)?;
    // ...and that page keeps its records from `keep_from` on, once no older page is left
    // (the log stays contiguous).
    if removed.len() < TRIM_PER_CHUNK {
        if let Some(page) = ov.get(&first_kept)? {
            if next_record(&page)?.0.revision < keep_from {
                let mut kept = Vec::with_capacity(page.len());
                for record in page_records(&page)? {
                    if record.revision >= keep_from {
                        append_to_page(&mut kept, &record)?;
                    }
                }
                if kept.is_empty() {
                    ov.remove(first_kept);
                } else {
                    ov.insert(first_kept, kept);
                }
            }
        }
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::{LineItem, Order, OrderStatus};

    fn record(revision: u64) -> ChangeRecord {
        ChangeRecord {
            revision,
            order_id: revision / 2 + 1,
            status: OrderStatus::Pending,
            version: 1,
            updated_at_ms: revision as i64,
            previous_status: None,
        }
    }

    #[test]
    fn a_page_reads_back_its_records_and_a_cut_page_is_an_error_not_a_panic() {
        let mut page = Vec::new();
        for r in 64..70 {
            append_to_page(&mut page, &record(r)).unwrap();
        }
        let records: Vec<_> = (64..70).map(record).collect();
        assert_eq!(page_records(&page).unwrap(), records);
        assert_eq!(page_records(&[]).unwrap(), vec![]);
        for cut in [1, 2, 3, page.len() - 1] {
            assert!(
                matches!(page_records(&page[..cut]), Err(StoreError::Corrupt(_))),
                "cut at {cut}"
            );
        }
        assert_eq!(page_of(63), 0);
        assert_eq!(page_of(64), 1);
    }

    #[test]
    fn old_records_move_into_pages_also_when_a_pass_was_cut_short() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let sm = db.open_tree("sm").unwrap();
        let old_key = |r: u64| keys::with_id(keys::OLD_CHANGE_PREFIX.to_vec(), r);
        // Revisions 10-200, as a trimmed log of one key per record leaves them.
        for r in 10..=200 {
            sm.insert(old_key(r), codec::encode(&record(r)).unwrap())
                .unwrap();
        }
        // A pass cut short: the page of 64-127 already written, its old keys gone; and (as no
        // pass of whole pages leaves it, but the merge must not lose it) 128-130 in the page
        // of 128-191 whose other records are still under old keys.
        for (page_no, records) in [(1, 64..128), (2, 128..131)] {
            let mut page = Vec::new();
            for r in records {
                append_to_page(&mut page, &record(r)).unwrap();
                sm.remove(old_key(r)).unwrap();
            }
            sm.insert(keys::change_page(page_no), page).unwrap();
        }

        assert_eq!(move_from_old_layout(&sm, 2).unwrap(), 191 - 64 - 3);
        assert_eq!(sm.scan_prefix(keys::OLD_CHANGE_PREFIX).count(), 0);
        let all: Vec<ChangeRecord> = sm
            .scan_prefix(keys::CHANGE_PAGE_PREFIX)
            .values()
            .flat_map(|p| page_records(&p.unwrap()).unwrap())
            .collect();
        assert_eq!(all, (10..=200).map(record).collect::<Vec<_>>());
        assert_eq!(sm.scan_prefix(keys::CHANGE_PAGE_PREFIX).count(), 4);
        assert_eq!(
            move_from_old_layout(&sm, 2).unwrap(),
            0,
            "nothing left to move"
        );
    }

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
