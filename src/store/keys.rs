//! The key layout of the `sm` tree (all values encoded by `codec`), in one place:
//! - `m:applied`, `m:membership`: the last applied log id and the last membership (Raft
//!   bookkeeping, left out of the state digest);
//! - `m:next_id`, `m:clock`, `m:last_stamp`: the next order id, the state machine's clock and
//!   the stamp that last moved it (see `order::apply`); `m:users_begun`: a user has existed;
//! - `o` + id: an order and the revision of its last change (`order_state::stored_order`;
//!   before layout 2 the revision had a key of its own, `v` + id);
//! - the listing indexes: `c` + customer + `0xFF`, the customer's head (its counters by
//!   status and its newest orders' ids and statuses), and `c` + customer + id, a run of its
//!   older orders from that id on (`customer_index`; before layout 5, one key per order, `c` +
//!   customer + id with the status tag, beside the counters at the head's key); `b` + status +
//!   id / 64 (a map of which of those 64 ids are in that status, `status_index`; before layout
//!   3, `s` + status + id with an empty value); `n` + `s` + status: how many orders are in
//!   the status. A list's total is a read, never a count. `m:listing_at:2`: the applied log
//!   id the counters and the customer index were last kept up to (a store written by a
//!   version without them is rebuilt at open, see `list_index`);
//! - `i` + key: an idempotency record (with its change's revision since layout 6,
//!   `order_state::stored_record`); `x` + expiry + key: the same key ordered by expiry;
//! - `u` + name: a user; `t` + token hash: the user's name (the lookup of a request's token);
//! - `r` + name: a custom role;
//! - `m:revision`: the last change's revision; `f` + revision / 64: a page of the change log,
//!   the change records of those 64 revisions that are kept (`changes`; before layout 4, `e` +
//!   revision per record; trimmed by each node to its retention window, so left out of the
//!   state digest);
//! - `m:layout`: the layout version of the values above (`upgrade`; in the state digest, and
//!   the same on every node of one build).
//!
//! Ids and expiries are big-endian, so sled's byte order is their numeric order.
//!
//! Snapshot dumps rely on this layout (`Horizon`): a key that starts with `o`, `b`, `c` or
//! `f` and has the shape of an order's own key, a customer's run, a status map or a change log
//! page is judged new by its id or revision (a run, map or page by the lowest it can hold). A
//! new kind of key must not take one of those first bytes unless its length can never be that
//! shape's (as a customer's head: one byte after the customer, never an 8-byte id).

use crate::order::OrderStatus;

pub const APPLIED: &[u8] = b"m:applied";
pub const MEMBERSHIP: &[u8] = b"m:membership";
pub const NEXT_ID: &[u8] = b"m:next_id";
pub const CLOCK: &[u8] = b"m:clock";
pub const LAST_STAMP: &[u8] = b"m:last_stamp";
pub const REVISION: &[u8] = b"m:revision";
/// The layout's version is in the name: `m:listing_at` marked stores kept without the
/// customer counters, and `m:counts_at` another layout of an unreleased build; a store marked
/// only by one of those is rebuilt.
pub const COUNTS_AT: &[u8] = b"m:listing_at:2";
/// Those older marks, removed when the counters are rebuilt.
pub const OLD_COUNTS_AT: [&[u8]; 2] = [b"m:listing_at", b"m:counts_at"];
/// The prefixes of the listing indexes (customer, status).
pub const CUSTOMER_PREFIX: &[u8] = b"c";
pub const STATUS_BITS_PREFIX: &[u8] = b"b";
/// Before layout 3: the status index as one key per order, `s` + status tag + id.
pub const OLD_STATUS_PREFIX: &[u8] = b"s";
/// The prefix of the listing counters.
pub const COUNT_PREFIX: &[u8] = b"n";
/// The prefix of the change log's pages (`changes`).
pub const CHANGE_PAGE_PREFIX: &[u8] = b"f";
/// Before layout 4: one change record per key, `e` + revision.
pub const OLD_CHANGE_PREFIX: &[u8] = b"e";
/// Set when the first user is created, never cleared (the bootstrap token's end).
pub const USERS_BEGUN: &[u8] = b"m:users_begun";
/// In the `raft` tree: set while a snapshot is being loaded into the state machine.
pub const INSTALLING: &[u8] = b"installing_snapshot";

/// The prefix of the expiry index.
pub const EXPIRY_PREFIX: &[u8] = b"x";

/// The prefix of the orders.
pub const ORDER_PREFIX: &[u8] = b"o";

pub fn order(id: u64) -> Vec<u8> {
    with_id(ORDER_PREFIX.to_vec(), id)
}

/// The key of the change log's page `page` (`changes::page_of`).
pub fn change_page(page: u64) -> Vec<u8> {
    with_id(CHANGE_PAGE_PREFIX.to_vec(), page)
}

/// The layout version of the store's values (`upgrade`).
pub const LAYOUT: &[u8] = b"m:layout";
/// Before layout 2: the prefix of the orders' revisions, `v` + id.
pub const OLD_ORDER_REVISION_PREFIX: &[u8] = b"v";

pub fn customer_prefix(customer_id: &str) -> Vec<u8> {
    let mut k = CUSTOMER_PREFIX.to_vec();
    k.extend_from_slice(&(customer_id.len() as u16).to_be_bytes());
    k.extend_from_slice(customer_id.as_bytes());
    k
}

/// The last byte of a customer's head key: above the first byte of any order id (ids stay
/// below 2^56), so the head sorts after all of the customer's runs.
const CUSTOMER_HEAD_SUFFIX: u8 = 0xFF;

/// The key of a customer's head (`customer_index`), from the customer's `customer_prefix`:
/// one byte, not an id, after the customer, so `Horizon` never judges it new, and it sorts
/// after the customer's runs.
pub fn head_of_customer_prefix(mut prefix: Vec<u8>) -> Vec<u8> {
    prefix.push(CUSTOMER_HEAD_SUFFIX);
    prefix
}

/// The prefix of a status's maps in the status index (`status_index`); the key of a map is
/// this + the 64 ids' group (`status_index::locate`).
pub fn status_bits_prefix(status: OrderStatus) -> Vec<u8> {
    vec![STATUS_BITS_PREFIX[0], status.tag()]
}

/// The counter of the orders in `status` (its key predates layout 3's maps, and kept the old
/// index's prefix: `n` + `s` + tag).
pub fn status_count(status: OrderStatus) -> Vec<u8> {
    vec![COUNT_PREFIX[0], OLD_STATUS_PREFIX[0], status.tag()]
}

pub fn with_id(mut prefix: Vec<u8>, id: u64) -> Vec<u8> {
    prefix.extend_from_slice(&id.to_be_bytes());
    prefix
}

/// The highest revision whose change log page sorts at or below `key` (the last a page there
/// can hold; 0 when none does, or when `key` is a page key of another shape: the caller then
/// removes none).
pub fn last_change_upto(key: Option<&[u8]>) -> u64 {
    const PER_PAGE: u64 = super::changes::REVISIONS_PER_PAGE;
    match key {
        Some(k) if k.first() > CHANGE_PAGE_PREFIX.first() => u64::MAX,
        Some(k)
            if k.first() == CHANGE_PAGE_PREFIX.first()
                && k.len() == CHANGE_PAGE_PREFIX.len() + 8 =>
        {
            id_suffix(k)
                .saturating_mul(PER_PAGE)
                .saturating_add(PER_PAGE - 1)
        }
        _ => 0,
    }
}

/// Where the store stood at some moment (a snapshot dump's start): the next order id and the
/// last revision. Tells, from a key alone, that it was first written after that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    pub next_id: u64,
    pub revision: u64,
}

impl Horizon {
    /// Whether `key` cannot have existed at the horizon: an order for an id from `next_id`
    /// on, a customer's run or a status map whose every id is from `next_id` on, or a change
    /// log page whose every revision is above `revision`. Ids and revisions only grow, so such
    /// a key is new. (A run, map or page that can hold older ones too may have existed: it is
    /// saved before it changes, as any other key.) False for every other key, including ones
    /// it cannot parse.
    pub fn is_past(&self, key: &[u8]) -> bool {
        let id_keyed = |prefix_len: usize| key.len() == prefix_len + 8;
        match key.first().copied() {
            Some(p) if p == ORDER_PREFIX[0] => id_keyed(1) && id_suffix(key) >= self.next_id,
            Some(p) if p == STATUS_BITS_PREFIX[0] => {
                id_keyed(2)
                    && id_suffix(key)
                        .checked_mul(super::status_index::IDS_PER_KEY)
                        .is_some_and(|lowest| lowest >= self.next_id)
            }
            Some(p) if p == CUSTOMER_PREFIX[0] && key.len() >= 3 => {
                let customer_len = u16::from_be_bytes([key[1], key[2]]) as usize;
                id_keyed(3 + customer_len) && id_suffix(key) >= self.next_id
            }
            Some(p) if p == CHANGE_PAGE_PREFIX[0] => {
                id_keyed(1)
                    && id_suffix(key)
                        .checked_mul(super::changes::REVISIONS_PER_PAGE)
                        .is_some_and(|lowest| lowest > self.revision)
            }
            _ => false,
        }
    }
}

/// The order id at the end of an order or index key.
pub fn id_suffix(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[key.len() - 8..].try_into().expect("8-byte id suffix"))
}

pub fn idempotency(key: &str) -> Vec<u8> {
    let mut k = vec![b'i'];
    k.extend_from_slice(key.as_bytes());
    k
}

pub fn expiry(expires_at_ms: i64, key: &str) -> Vec<u8> {
    let mut k = EXPIRY_PREFIX.to_vec();
    k.extend_from_slice(&(expires_at_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

pub const USER_PREFIX: &[u8] = b"u";

pub fn user(name: &str) -> Vec<u8> {
    let mut k = USER_PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

pub const ROLE_PREFIX: &[u8] = b"r";

pub fn role(name: &str) -> Vec<u8> {
    let mut k = ROLE_PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn token(hash: &[u8; 32]) -> Vec<u8> {
    let mut k = vec![b't'];
    k.extend_from_slice(hash);
    k
}

/// The idempotency key an expiry key is for.
pub fn key_of_expiry(expiry_key: &[u8]) -> String {
    String::from_utf8_lossy(&expiry_key[EXPIRY_PREFIX.len() + 8..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer_head(customer: &str) -> Vec<u8> {
        head_of_customer_prefix(customer_prefix(customer))
    }

    #[test]
    fn a_customers_head_sorts_after_its_runs() {
        for customer in ["", "a", "a customer"] {
            let head = customer_head(customer);
            let prefix = customer_prefix(customer);
            for id in [1, 255, 1 << 40, (1 << 56) - 1] {
                let run = with_id(prefix.clone(), id);
                assert!(run < head, "{customer:?} {id}");
            }
        }
        // The next customer's keys come after the head.
        assert!(customer_head("a") < with_id(customer_prefix("b"), 1));
    }

    #[test]
    fn a_dump_past_a_page_has_passed_every_revision_it_can_hold() {
        assert_eq!(last_change_upto(None), 0);
        assert_eq!(last_change_upto(Some(&customer_head("c"))), 0);
        assert_eq!(last_change_upto(Some(&change_page(0))), 63);
        assert_eq!(last_change_upto(Some(&change_page(2))), 191);
        assert_eq!(last_change_upto(Some(&change_page(u64::MAX))), u64::MAX);
        assert_eq!(last_change_upto(Some(b"f\x00")), 0, "not a page key");
        assert_eq!(last_change_upto(Some(&order(1))), u64::MAX);
    }

    #[test]
    fn the_horizon_knows_an_orders_own_keys_and_newer_changes_only() {
        let horizon = Horizon {
            next_id: 10,
            revision: 20,
        };
        let status = status_bits_prefix(OrderStatus::Pending);
        for (id, new) in [(9, false), (10, true), (11, true)] {
            assert_eq!(horizon.is_past(&order(id)), new, "order {id}");
            for customer in ["", "c", "a customer with a longer id"] {
                let key = with_id(customer_prefix(customer), id);
                assert_eq!(horizon.is_past(&key), new, "customer {customer:?} of {id}");
            }
        }
        // A page is new only if every revision it can hold is: 64-127 for page 1.
        for (revision, page, new) in [
            (20, 0, false),
            (20, 1, true),
            (63, 1, true),
            (64, 1, false),
            (127, 1, false),
            (127, 2, true),
            (20, u64::MAX, false),
        ] {
            let horizon = Horizon {
                next_id: 1,
                revision,
            };
            assert_eq!(
                horizon.is_past(&change_page(page)),
                new,
                "page {page} at revision {revision}"
            );
        }
        assert!(!horizon.is_past(&with_id(OLD_CHANGE_PREFIX.to_vec(), 21)));
        // A status map is new only if every id it can hold is: ids 64-127 for map 1.
        for (next_id, map, new) in [
            (10, 0, false),
            (10, 1, true),
            (64, 1, true),
            (65, 1, false),
            (127, 1, false),
            (128, 1, false),
            (128, 2, true),
            // A map no id could be in (corrupt) is not known to be new.
            (10, u64::MAX, false),
        ] {
            let horizon = Horizon {
                next_id,
                revision: 0,
            };
            assert_eq!(
                horizon.is_past(&with_id(status.clone(), map)),
                new,
                "map {map} at next id {next_id}"
            );
        }
        // Keys without an order id or revision are never known to be new.
        for key in [
            status_count(OrderStatus::Pending),
            with_id(vec![OLD_STATUS_PREFIX[0], OrderStatus::Pending.tag()], 11),
            customer_head("c"),
            customer_head(""),
            NEXT_ID.to_vec(),
            REVISION.to_vec(),
            idempotency("k"),
            expiry(i64::MAX, "k"),
            user("u"),
            role("r"),
            token(&[0xff; 32]),
            b"o".to_vec(),
            b"c\xff\xff".to_vec(),
        ] {
            assert!(!horizon.is_past(&key), "{key:?}");
        }
    }
}
