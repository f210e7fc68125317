//! The read side of the state machine, shared with the HTTP API: one order, a page of a
//! listing (by id, or through the customer and status indexes of `keys`), and a digest of the
//! whole state for comparing replicas. Reads wait while a snapshot is being installed, so they
//! never see a half-loaded state.

use std::sync::{Arc, RwLock};

use super::customer_index;
use super::keys;
use super::order_state::stored_order;
use super::status_index;
use super::StoreError;
use crate::codec;
use crate::order::{CustomRole, Order, OrderStatus, User};

/// Which orders a listing wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFilter {
    pub status: Option<OrderStatus>,
    pub customer_id: Option<String>,
}

/// One page of a listing, and how many orders match in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderPage {
    pub orders: Vec<Order>,
    /// The revision of each order's last change, read just before the order: at most what its
    /// content reflects.
    pub revisions: Vec<u64>,
    pub total: u64,
    /// Read before the page: every change up to it is in the page (a change feed from this
    /// revision misses nothing the page lacks).
    pub revision: u64,
    /// The id to start the next page after, when more orders may follow.
    pub next_after: Option<u64>,
}

/// Where a page of a listing starts: the `page`th page (from 1) of the matches whose id is
/// above `after`. Reaching the cursor costs nothing at any depth; each page before the wanted
/// one is skipped match by match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageStart {
    pub after: u64,
    pub page: u64,
}

impl PageStart {
    /// The page with this number, from the first order.
    pub fn number(page: u64) -> Self {
        PageStart { after: 0, page }
    }

    /// The first page after the order with this id (a cursor).
    pub fn after(id: u64) -> Self {
        PageStart { after: id, page: 1 }
    }
}

/// The read side of the state machine, shared with the HTTP API. Reads wait while a snapshot
/// is being installed, so they never see a half-loaded state.
#[derive(Clone)]
pub struct OrderReader {
    pub(super) sm: sled::Tree,
    /// Held for writing while a snapshot is loaded into `sm`.
    pub(super) install_lock: Arc<RwLock<()>>,
    /// The newest revision applied, for the change feed's subscribers (`changes`).
    pub(super) revision_seen: Arc<tokio::sync::watch::Sender<u64>>,
    /// Counts changes to the users and roles (bumped once they are readable), so that a
    /// change-feed stream looks its caller up again only when they changed.
    users_generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl OrderReader {
    pub(super) fn new(sm: sled::Tree) -> OrderReader {
        OrderReader {
            sm,
            install_lock: Arc::new(RwLock::new(())),
            revision_seen: Arc::new(tokio::sync::watch::Sender::new(0)),
            users_generation: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// Wakes when the users or roles change (an admin command applied, a snapshot
    /// installed). Subscribe before reading them: a change after the read then wakes it.
    pub fn watch_users(&self) -> tokio::sync::watch::Receiver<u64> {
        self.users_generation.subscribe()
    }

    /// The users or roles changed, and the change is readable.
    pub(super) fn users_changed(&self) {
        self.users_generation.send_modify(|g| *g += 1);
    }

    /// An order and the revision of its last change.
    pub fn get(&self, id: u64) -> Result<Option<(Order, u64)>, StoreError> {
        let _g = self.install_lock.read().unwrap_or_else(|p| p.into_inner());
        self.get_with_revision(id)
    }

    /// `get` without waiting: `None` while a snapshot is being loaded.
    pub fn try_get(&self, id: u64) -> Option<Result<Option<(Order, u64)>, StoreError>> {
        match self.install_lock.try_read() {
            Ok(_g) => Some(self.get_with_revision(id)),
            Err(std::sync::TryLockError::Poisoned(p)) => {
                let _g = p.into_inner();
                Some(self.get_with_revision(id))
            }
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// The order and its revision, from one value (no install lock: callers hold it).
    fn get_with_revision(&self, id: u64) -> Result<Option<(Order, u64)>, StoreError> {
        match self.sm.get(keys::order(id))? {
            Some(v) => Ok(Some(stored_order::decode(&v)?)),
            None => Ok(None),
        }
    }

    pub(super) fn get_unlocked(&self, id: u64) -> Result<Option<Order>, StoreError> {
        Ok(self.get_with_revision(id)?.map(|(order, _)| order))
    }

    /// The value at `key`, decoded (no install lock: callers hold it).
    fn decoded<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.sm.get(key)? {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Orders matching `filter`, ordered by id, from `start`. The total is read from a
    /// counter (a status's, or the customer's head); a filtered page walks its index
    /// from where it starts: a cursor page costs the same however deep it is; a numbered page
    /// skips the index entries before it.
    pub fn list(
        &self,
        filter: &OrderFilter,
        start: PageStart,
        per_page: u64,
    ) -> Result<OrderPage, StoreError> {
        let _g = self.install_lock.read().unwrap_or_else(|p| p.into_inner());
        let per_page = per_page.max(1);
        let mut page = OrderPage {
            orders: Vec::new(),
            revisions: Vec::new(),
            total: 0,
            // Read before the orders: sled reads are no snapshot, and a revision read after
            // them could be newer than their content (a client skipping events up to it would
            // then lose one).
            revision: self.revision_unlocked()?,
            next_after: None,
        };
        // The first id after the cursor, and how many matches from there precede the page.
        let first = start.after.checked_add(1);
        let skip = start.page.saturating_sub(1).saturating_mul(per_page);

        if filter.status.is_none() && filter.customer_id.is_none() {
            // Ids are dense (1, 2, 3, ... with no deletes), so a page is a run of known ids.
            page.total = self.next_id()? - 1;
            let Some(first) = first.and_then(|f| f.checked_add(skip)) else {
                return Ok(page);
            };
            let last = first.saturating_add(per_page - 1).min(page.total);
            for id in first..=last {
                if let Some((order, revision)) = self.get_with_revision(id)? {
                    page.orders.push(order);
                    page.revisions.push(revision);
                }
            }
            if last >= first && last < page.total {
                page.next_after = Some(last);
            }
            return Ok(page);
        }

        // A customer's orders and their total come from the customer index, which holds
        // their statuses; the others from the status index's maps and a status's counter.
        // (With no first id, after the last one, the walk is empty and not read.)
        let walk_from = first.unwrap_or(u64::MAX);
        let (total, ids): (u64, Box<dyn Iterator<Item = Result<u64, StoreError>>>) =
            match (&filter.customer_id, filter.status) {
                (Some(c), status) => {
                    let (counts, ids) = customer_index::list(&self.sm, c, status, walk_from)?;
                    (counts.total(status), Box::new(ids))
                }
                (None, Some(s)) => (
                    self.decoded::<u64>(&keys::status_count(s))?.unwrap_or(0),
                    Box::new(status_index::ids_from(&self.sm, s, walk_from)),
                ),
                (None, None) => unreachable!("an unfiltered list walks no index"),
            };
        page.total = total;
        if first.is_none() {
            return Ok(page);
        }
        // Skipped by hand, not with `Iterator::skip`: an unreadable index entry among the
        // skipped ones is an error, not a match that shifts the page.
        let mut ids = ids;
        let mut skipped = 0u64;
        while skipped < skip {
            match ids.next() {
                Some(id) => {
                    id?;
                    skipped += 1;
                }
                None => break,
            }
        }
        for id in ids {
            let id = id?;
            if page.orders.len() as u64 == per_page {
                // One more index entry: there is a next page (its orders may have moved on by
                // the time it is read; a page can then be short, or empty).
                page.next_after = page.orders.last().map(|o| o.id);
                break;
            }
            let Some((order, revision)) = self.get_with_revision(id)? else {
                continue;
            };
            // The walk is not a point-in-time view: the order may have changed status since
            // its index entry was read.
            if filter.status.is_some_and(|s| s != order.status) {
                continue;
            }
            page.orders.push(order);
            page.revisions.push(revision);
        }
        Ok(page)
    }

    /// The user whose token hashes to `hash`.
    pub fn user_by_token(&self, hash: &[u8; 32]) -> Result<Option<User>, StoreError> {
        let _g = self.install_lock.read().unwrap_or_else(|p| p.into_inner());
        let Some(name) = self.decoded::<String>(&keys::token(hash))? else {
            return Ok(None);
        };
        self.decoded(&keys::user(&name))
    }

    /// Every user, by name.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        let _g = self.install_lock.read().unwrap_or_else(|p| p.into_inner());
        self.sm
            .scan_prefix(keys::USER_PREFIX)
            .values()
            .map(|v| Ok(codec::decode(&v?)?))
            .collect()
    }

    /// A custom role.
    pub fn role(&self, name: &str) -> Result<Option<CustomRole>, StoreError> {
        let _g = self.install_lock.read().unwrap_or_else(|p| p.into_inner());
        self.decoded(&keys::role(name))
    }

    /// Every custom role, by name.
    pub fn roles(&self) -> Result<Vec<CustomRole>, StoreError> {
        let _g = self.install_lock.read().unwrap_or_else(|p| p.into_inner());
        self.sm
            .scan_prefix(keys::ROLE_PREFIX)
            .values()
            .map(|v| Ok(codec::decode(&v?)?))
            .collect()
    }

    /// Whether a user has ever existed (auth's bootstrap token works only until then).
    pub fn users_begun(&self) -> Result<bool, StoreError> {
        let _g = self.install_lock.read().unwrap_or_else(|p| p.into_inner());
        Ok(self.sm.get(keys::USERS_BEGUN)?.is_some())
    }

    /// How many orders the store holds (ids are dense: no order is ever deleted).
    pub fn order_count(&self) -> Result<u64, StoreError> {
        Ok(self.next_id()? - 1)
    }

    /// How many idempotency records are kept (until they expire). A scan of that index: for
    /// the metrics sampler, every few seconds, not per request.
    pub fn idempotency_record_count(&self) -> Result<u64, StoreError> {
        let mut n = 0u64;
        for k in self.sm.scan_prefix(keys::idempotency("")).keys() {
            k?;
            n += 1;
        }
        Ok(n)
    }

    /// The state machine's clock, which idempotency records expire by (`None` before the
    /// first command).
    pub fn clock_ms(&self) -> Result<Option<i64>, StoreError> {
        self.decoded(keys::CLOCK)
    }

    pub(super) fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.decoded(keys::NEXT_ID)?.unwrap_or(1))
    }

    /// A digest of the state machine as of one applied index, and that index: what replicas
    /// compare. The scan is no point-in-time view, so it is taken again until no apply
    /// committed while it ran (each apply batch, and an install, moves `APPLIED`; sled applies
    /// a batch atomically for readers), at most `tries` times: None if applies kept landing.
    pub fn applied_digest(
        &self,
        tries: usize,
    ) -> Result<Option<(Option<u64>, String)>, StoreError> {
        for _ in 0..tries {
            let before = self.sm.get(keys::APPLIED)?;
            let digest = self.state_digest()?;
            if self.sm.get(keys::APPLIED)? == before {
                let applied = match before {
                    Some(v) => codec::decode::<Option<crate::raft::LogId>>(&v)?,
                    None => None,
                };
                return Ok(Some((applied.map(|l| l.index), digest)));
            }
        }
        Ok(None)
    }

    /// A digest of the whole state machine except Raft bookkeeping: equal on replicas that
    /// applied the same commands.
    pub fn state_digest(&self) -> Result<String, StoreError> {
        let _g = self.install_lock.read().unwrap_or_else(|p| p.into_inner());
        let mut digest = super::backup::StateDigest::default();
        for kv in self.sm.iter() {
            let (k, v) = kv?;
            digest.add(&k, &v);
        }
        Ok(digest.finish())
    }
}
