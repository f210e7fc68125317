//! The customer index (layout 5): per customer, one head key
//! (`keys::head_of_customer_prefix`) whose value holds the customer's counters by status and
//! its newest orders, and runs of its older orders (`c` + customer + the lowest id in the run:
//! `run_key`). Each order is an entry of its id and its status, so that a customer's list
//! filtered by status reads no order it does not return, and its total comes with the walk.
//!
//! Why not one key per order, as before: a create wrote its order, an index entry and the
//! counters, three sled keys, and sled's apply and leaf splits cost per key. Now a create
//! rewrites the customer's head (one key, as the counters alone were) and, once every
//! `RUN_LEN` creates of that customer, moves the head's entries into a run of their own.
//! A status change rewrites the head and, for an order no longer in it, its run. A million
//! orders need about 31,000 run keys here instead of a million entries.
//!
//! Ids only grow, so a customer's runs, in key order, and then its head hold its orders in id
//! order, and the run holding an id is the last run key at or below that id.

use std::collections::{hash_map, HashMap};

use serde::{Deserialize, Serialize};

use super::keys;
use super::overlay::Overlay;
use super::StoreError;
use crate::codec;
use crate::order::OrderStatus;

/// Entries per run; the head holds at most this many before they become a run. (4 in unit
/// tests, so that the model tests' few orders per customer fill runs too.)
pub const RUN_LEN: usize = if cfg!(test) { 4 } else { 32 };

/// How many of one customer's orders are in each status (by `OrderStatus::tag`): a customer's
/// list total, filtered by status or not. A customer's orders are never deleted, so the head
/// stays once written.
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

/// One order in the index: its id and its status's tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Entry {
    pub id: u64,
    pub status: u8,
}

impl Entry {
    fn new(id: u64, status: OrderStatus) -> Entry {
        Entry {
            id,
            status: status.tag(),
        }
    }
}

/// The value at a customer's head key.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct CustomerHead {
    pub counts: CustomerCounts,
    /// The customer's newest orders (at most `RUN_LEN`), ascending ids.
    pub newest: Vec<Entry>,
}

impl CustomerHead {
    /// Adds a new order, the customer's highest id. When the head is full, its entries leave
    /// it first, returned as the run to write (under the lowest id in it).
    pub fn add_new(
        &mut self,
        id: u64,
        status: OrderStatus,
    ) -> Result<Option<Vec<Entry>>, StoreError> {
        if self.newest.last().is_some_and(|e| e.id >= id) {
            return Err(StoreError::Corrupt(format!(
                "order {id} is not newer than its customer's newest indexed order"
            )));
        }
        let sealed = (self.newest.len() >= RUN_LEN).then(|| std::mem::take(&mut self.newest));
        self.newest.push(Entry::new(id, status));
        self.counts.add(status, 1)?;
        Ok(sealed)
    }
}

/// The key of the run whose lowest id is `lowest`, from the customer's `keys::customer_prefix`.
fn run_key(prefix: Vec<u8>, lowest: u64) -> Vec<u8> {
    keys::with_id(prefix, lowest)
}

fn decode_head(value: Option<&[u8]>) -> Result<CustomerHead, StoreError> {
    Ok(value.map(codec::decode).transpose()?.unwrap_or_default())
}

/// Indexes order `id` of `customer` in `status`: a new order (`previous` None) or one that
/// moved from status `previous`.
pub(super) fn put(
    ov: &mut Overlay<'_>,
    customer: &str,
    id: u64,
    previous: Option<OrderStatus>,
    status: OrderStatus,
) -> Result<(), StoreError> {
    let prefix = keys::customer_prefix(customer);
    let head_key = keys::head_of_customer_prefix(prefix.clone());
    let mut head = decode_head(ov.get(&head_key)?.as_deref())?;
    match previous {
        None => {
            if let Some(run) = head.add_new(id, status)? {
                ov.insert(run_key(prefix, run[0].id), codec::encode(&run)?);
            }
        }
        Some(previous) => {
            head.counts.add(previous, -1)?;
            head.counts.add(status, 1)?;
            if let Some(entry) = head.newest.iter_mut().find(|e| e.id == id) {
                entry.status = status.tag();
            } else {
                let at = run_key(prefix.clone(), id);
                let not_indexed =
                    || StoreError::Corrupt(format!("order {id} is not in its customer's index"));
                let (run_key, run) = ov.last_at_or_below(&prefix, &at)?.ok_or_else(not_indexed)?;
                let mut run: Vec<Entry> = codec::decode(&run)?;
                let entry = run
                    .iter_mut()
                    .find(|e| e.id == id)
                    .ok_or_else(not_indexed)?;
                entry.status = status.tag();
                ov.insert(run_key, codec::encode(&run)?);
            }
        }
    }
    ov.insert(head_key, codec::encode(&head)?);
    Ok(())
}

/// A customer's counters (all zero for a customer without orders), and the ids of its orders
/// from `first` on, in `status` if one is given, ascending.
///
/// The head is read once, first; then the runs below the head's first entry as the iterator
/// goes (one sled read per run), then the head's entries: a walk beside applies misses no
/// order the customer had when it began, and gives each once. A run sealed meanwhile holds
/// entries of that head from its first on, so it is never read. (Read the other way round,
/// with the head last, such a run could be missed together with its entries: sled's iterator
/// keeps the leaf it read last.)
pub(super) fn list(
    sm: &sled::Tree,
    customer: &str,
    status: Option<OrderStatus>,
    first: u64,
) -> Result<
    (
        CustomerCounts,
        impl Iterator<Item = Result<u64, StoreError>>,
    ),
    StoreError,
> {
    let prefix = keys::customer_prefix(customer);
    let head = decode_head(
        sm.get(keys::head_of_customer_prefix(prefix.clone()))?
            .as_deref(),
    )?;
    // The runs that existed when the head was read: every one of them is below its first
    // entry (none without one: a customer's first order starts its head).
    let runs_end = run_key(prefix.clone(), head.newest.first().map_or(0, |e| e.id));
    // The run that may hold `first` starts at or below it.
    let start = match sm
        .range(prefix.clone()..=run_key(prefix.clone(), first))
        .next_back()
    {
        Some(kv) => kv?.0.to_vec(),
        None => prefix,
    };
    let runs = sm
        .range(start.min(runs_end.clone())..runs_end)
        .values()
        .map(|run| Ok(codec::decode::<Vec<Entry>>(&run?)?));
    let wanted = status.map(|s| s.tag());
    let ids = runs
        .chain(std::iter::once(Ok(head.newest)))
        .flat_map(move |entries| {
            let ids: Vec<Result<u64, StoreError>> = match entries {
                Ok(entries) => entries
                    .into_iter()
                    .filter(|e| e.id >= first && wanted.is_none_or(|t| e.status == t))
                    .map(|e| Ok(e.id))
                    .collect(),
                Err(e) => vec![Err(e)],
            };
            ids
        });
    Ok((head.counts, ids))
}

/// Builds the whole index again from the orders, which `orders` yields in id order as
/// (customer, id, status), writing sled batches of about `batch_orders` orders: the heads
/// touched by a batch are kept in memory until it is written, then read back from the tree.
/// The caller has removed every key of the index before.
pub(super) fn rebuild(
    sm: &sled::Tree,
    orders: impl Iterator<Item = Result<(String, u64, OrderStatus), StoreError>>,
    batch_orders: usize,
) -> Result<usize, StoreError> {
    let mut heads: HashMap<Vec<u8>, CustomerHead> = HashMap::new();
    let mut batch = sled::Batch::default();
    let mut n = 0usize;
    let write = |heads: &mut HashMap<Vec<u8>, CustomerHead>, mut batch: sled::Batch| {
        for (prefix, head) in heads.drain() {
            batch.insert(keys::head_of_customer_prefix(prefix), codec::encode(&head)?);
        }
        sm.apply_batch(batch)?;
        Ok::<_, StoreError>(())
    };
    for order in orders {
        let (customer, id, status) = order?;
        let prefix = keys::customer_prefix(&customer);
        let head = match heads.entry(prefix.clone()) {
            hash_map::Entry::Occupied(e) => e.into_mut(),
            hash_map::Entry::Vacant(e) => {
                let key = keys::head_of_customer_prefix(prefix.clone());
                e.insert(decode_head(sm.get(key)?.as_deref())?)
            }
        };
        if let Some(run) = head.add_new(id, status)? {
            batch.insert(run_key(prefix, run[0].id), codec::encode(&run)?);
        }
        n += 1;
        if n.is_multiple_of(batch_orders) {
            write(&mut heads, std::mem::take(&mut batch))?;
        }
    }
    write(&mut heads, batch)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        db.open_tree("sm").unwrap()
    }

    fn ids_from(
        sm: &sled::Tree,
        customer: &str,
        status: Option<OrderStatus>,
        first: u64,
    ) -> Result<impl Iterator<Item = Result<u64, StoreError>>, StoreError> {
        list(sm, customer, status, first).map(|(_, ids)| ids)
    }

    fn counts(sm: &sled::Tree, customer: &str) -> Result<CustomerCounts, StoreError> {
        list(sm, customer, None, 0).map(|(counts, _)| counts)
    }

    fn ids(sm: &sled::Tree, customer: &str, status: Option<OrderStatus>, first: u64) -> Vec<u64> {
        ids_from(sm, customer, status, first)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Applies `ops` ((customer, id, previous, status)) in overlays of `chunk` each.
    fn apply(sm: &sled::Tree, ops: &[(&str, u64, Option<OrderStatus>, OrderStatus)], chunk: usize) {
        for part in ops.chunks(chunk) {
            let mut ov = Overlay::new(sm);
            for (customer, id, previous, status) in part {
                put(&mut ov, customer, *id, *previous, *status).unwrap();
            }
            ov.commit().unwrap();
        }
    }

    #[test]
    fn a_customers_orders_come_back_in_order_from_runs_and_head_with_their_statuses() {
        use OrderStatus::*;
        for chunk in [1, 7, 1000] {
            let sm = tree();
            // Two customers interleaved, each with runs and a head.
            let mut ops = Vec::new();
            let mut a_ids = Vec::new();
            for id in 1..=120u64 {
                let customer = if id % 5 == 0 { "b" } else { "a" };
                if customer == "a" {
                    a_ids.push(id);
                }
                ops.push((customer, id, None, Pending));
            }
            // Pay every third order of "a": in runs, in the head, some twice moved on.
            for id in a_ids.iter().copied().filter(|id| id % 3 == 0) {
                ops.push(("a", id, Some(Pending), Paid));
            }
            ops.push(("a", a_ids[0], Some(Pending), Cancelled));
            ops.push(("a", 3, Some(Paid), Shipped));
            apply(&sm, &ops, chunk);

            assert_eq!(ids(&sm, "a", None, 0), a_ids, "chunk {chunk}");
            let runs = sm
                .scan_prefix(keys::customer_prefix("a"))
                .keys()
                .filter(|k| k.as_ref().unwrap().len() == keys::customer_prefix("a").len() + 8)
                .count();
            assert_eq!(runs, (a_ids.len() - 1) / RUN_LEN, "chunk {chunk}");
            let paid: Vec<u64> = a_ids
                .iter()
                .copied()
                .filter(|id| id % 3 == 0 && *id != 3)
                .collect();
            assert_eq!(ids(&sm, "a", Some(Paid), 0), paid);
            assert_eq!(ids(&sm, "a", Some(Shipped), 0), [3]);
            assert_eq!(ids(&sm, "a", Some(Cancelled), 0), [1]);
            // From any first id: a run's middle, a run's first id, past every run, past all.
            for first in [2, 33, 41, 90, 119, 200] {
                let expected: Vec<u64> = a_ids.iter().copied().filter(|id| *id >= first).collect();
                assert_eq!(ids(&sm, "a", None, first), expected, "from {first}");
            }
            assert_eq!(
                ids(&sm, "b", None, 0),
                (5..=120).step_by(5).collect::<Vec<_>>()
            );
            assert!(ids(&sm, "c", None, 0).is_empty());
            let a = counts(&sm, "a").unwrap();
            assert_eq!(a.total(None), a_ids.len() as u64);
            assert_eq!(a.total(Some(Paid)), paid.len() as u64);
            assert_eq!(
                a.total(Some(Pending)),
                (a_ids.len() - paid.len() - 2) as u64
            );
            assert_eq!(counts(&sm, "b").unwrap().total(None), 24);
            assert_eq!(counts(&sm, "c").unwrap().total(None), 0);
        }
    }

    #[test]
    fn a_walk_beside_applies_misses_no_order_the_customer_had_when_it_began() {
        // The head moves into a new run, once or twice, while a walk is under way: before it
        // reads anything, or between the last run and the head. Another customer's keys after
        // the head, in varying numbers, put the head at every place in its sled leaf, also
        // first (sled's iterator keeps the leaf it read last and reads the next one anew:
        // with the head read last, a run sealed meanwhile was missed there).
        for runs in 1..12u64 {
            for others in 0..20u64 {
                for (seals, read_first) in [(1, 0), (2, 0), (1, runs), (2, runs)] {
                    let sm = tree();
                    let mut ops: Vec<_> = (1..=(runs + 1) * RUN_LEN as u64)
                        .map(|id| ("a", id, None, OrderStatus::Pending))
                        .collect();
                    let existing: Vec<u64> = ops.iter().map(|op| op.1).collect();
                    let after = existing.len() as u64;
                    ops.extend(
                        (1..=others * RUN_LEN as u64)
                            .map(|n| ("b", after + n, None, OrderStatus::Pending)),
                    );
                    apply(&sm, &ops, 7);
                    let case = format!("{runs} runs, {others} others, {seals} seals after reading {read_first} runs");
                    let mut walk = ids_from(&sm, "a", None, 0).unwrap();
                    let mut seen: Vec<u64> = (0..read_first * RUN_LEN as u64)
                        .map(|_| walk.next().unwrap().unwrap())
                        .collect();
                    let newest = ops.len() as u64 + 1;
                    let added: Vec<_> = (newest..newest + seals * RUN_LEN as u64)
                        .map(|id| ("a", id, None, OrderStatus::Pending))
                        .collect();
                    apply(&sm, &added, 1);
                    seen.extend(walk.map(Result::unwrap));
                    assert_eq!(seen, existing, "{case}");
                }
            }
        }
        // From an id in the middle, and by status, while a run is sealed before the first read.
        let sm = tree();
        let ops: Vec<_> = (1..=10 * RUN_LEN as u64)
            .map(|id| {
                (
                    "a",
                    id,
                    None,
                    [OrderStatus::Pending, OrderStatus::Paid][id as usize % 2],
                )
            })
            .collect();
        apply(&sm, &ops, 1000);
        let walk = ids_from(&sm, "a", Some(OrderStatus::Paid), 7).unwrap();
        let newest = ops.len() as u64 + 1;
        apply(&sm, &[("a", newest, None, OrderStatus::Paid)], 1);
        let expected: Vec<u64> = (7..newest).filter(|id| id % 2 == 1).collect();
        assert_eq!(walk.map(Result::unwrap).collect::<Vec<_>>(), expected);
    }

    #[test]
    fn a_customer_whose_name_extends_anothers_is_a_customer_of_its_own() {
        let sm = tree();
        let ops: Vec<_> = (1..=80u64)
            .map(|id| {
                (
                    if id % 2 == 0 { "ab" } else { "a" },
                    id,
                    None,
                    OrderStatus::Pending,
                )
            })
            .collect();
        apply(&sm, &ops, 10);
        assert_eq!(
            ids(&sm, "a", None, 0),
            (1..=80).step_by(2).collect::<Vec<_>>()
        );
        assert_eq!(
            ids(&sm, "ab", None, 50),
            (50..=80).step_by(2).collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_rebuild_writes_what_applying_the_creates_writes() {
        let orders: Vec<(String, u64, OrderStatus)> = (1..=500u64)
            .map(|id| {
                let status = OrderStatus::ALL[(id % 5) as usize];
                (format!("c{}", id % 7), id, status)
            })
            .collect();
        let applied = tree();
        for (customer, id, status) in &orders {
            let mut ov = Overlay::new(&applied);
            put(&mut ov, customer, *id, None, OrderStatus::Pending).unwrap();
            if *status != OrderStatus::Pending {
                put(&mut ov, customer, *id, Some(OrderStatus::Pending), *status).unwrap();
            }
            ov.commit().unwrap();
        }
        let rebuilt = tree();
        let n = rebuild(&rebuilt, orders.iter().cloned().map(Ok), 37).unwrap();
        assert_eq!(n, 500);
        let contents = |t: &sled::Tree| -> Vec<_> { t.iter().map(Result::unwrap).collect() };
        assert_eq!(contents(&rebuilt), contents(&applied));
    }

    #[test]
    fn corrupt_index_values_are_errors_not_panics() {
        let sm = tree();
        let prefix = keys::customer_prefix("a");
        let head = keys::head_of_customer_prefix(prefix.clone());
        sm.insert(keys::with_id(prefix.clone(), 1), &b"\xff\xff\xff"[..])
            .unwrap();
        let newer = CustomerHead {
            counts: CustomerCounts::default(),
            newest: vec![Entry::new(5, OrderStatus::Pending)],
        };
        sm.insert(&head, codec::encode(&newer).unwrap()).unwrap();
        let all: Vec<_> = ids_from(&sm, "a", None, 0).unwrap().collect();
        assert!(
            matches!(all[..], [Err(StoreError::Codec(_)), Ok(5)]),
            "{all:?}"
        );
        sm.insert(&head, &b"\x01"[..]).unwrap();
        assert!(ids_from(&sm, "a", None, 0).is_err());
        assert!(counts(&sm, "a").is_err());
        let mut ov = Overlay::new(&sm);
        assert!(put(&mut ov, "a", 2, None, OrderStatus::Pending).is_err());
        // An order the index does not hold cannot move.
        let sm = tree();
        apply(&sm, &[("a", 5, None, OrderStatus::Pending)], 1);
        let mut ov = Overlay::new(&sm);
        let moved = put(
            &mut ov,
            "a",
            4,
            Some(OrderStatus::Pending),
            OrderStatus::Paid,
        );
        assert!(matches!(moved, Err(StoreError::Corrupt(_))), "{moved:?}");
        // Nor can a new order take an id below the customer's newest.
        let added = put(&mut ov, "a", 3, None, OrderStatus::Pending);
        assert!(matches!(added, Err(StoreError::Corrupt(_))), "{added:?}");
    }
}
