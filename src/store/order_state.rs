//! The order state over sled: `order::OrderState` on an `Overlay` of the `sm` tree, in the
//! layout of `keys`. Only reads and writes; every decision is `order::apply_command`'s.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::changes;
use super::customer_index;
use super::keys;
use super::overlay::Overlay;
use super::status_index;
use super::StoreError;
use crate::codec;
use crate::order::{
    ChangeRecord, CustomRole, IdempotencyRecord, Order, OrderOp, OrderState, OrderStatus, User,
};

/// The state of one apply chunk: reads see the chunk's earlier writes, and the whole chunk is
/// committed as one sled batch by the caller.
pub struct OverlayState<'o, 't>(pub &'o mut Overlay<'t>);

/// The value at `keys::order`: an order and the revision of its last change together, so that
/// one read gets both as one apply left them (layout 2; `upgrade` moves older stores to it).
pub(super) mod stored_order {
    use super::{codec, Order, StoreError};

    pub fn encode(order: &Order, revision: u64) -> Result<Vec<u8>, StoreError> {
        Ok(codec::encode(&(order, revision))?)
    }

    pub fn decode(bytes: &[u8]) -> Result<(Order, u64), StoreError> {
        Ok(codec::decode(bytes)?)
    }
}

/// The value at `keys::idempotency`. Layout 6 appended the revision of the change the request
/// made; records stored before are not rewritten (they expire within a day like any other) and
/// read as having none. Exactly one shape decodes a value: the codec refuses both a value cut
/// short and trailing bytes.
pub(super) mod stored_record {
    use serde::Deserialize;

    use super::{codec, IdempotencyRecord, Order, StoreError};
    use crate::order::Rejection;

    /// A record as layouts 1 to 5 stored it.
    #[derive(Deserialize)]
    struct BeforeLayout6 {
        fingerprint: [u8; 32],
        result: Result<Order, Rejection>,
        expires_at_ms: i64,
    }

    pub fn decode(bytes: &[u8]) -> Result<IdempotencyRecord, StoreError> {
        match codec::decode::<IdempotencyRecord>(bytes) {
            Ok(record) => Ok(record),
            Err(current) => match codec::decode::<BeforeLayout6>(bytes) {
                Ok(old) => Ok(IdempotencyRecord {
                    fingerprint: old.fingerprint,
                    result: old.result,
                    expires_at_ms: old.expires_at_ms,
                    revision: None,
                }),
                Err(_) => Err(current.into()),
            },
        }
    }
}

/// The fingerprint an idempotency record binds its key to: a hash of the operation's encoding.
pub fn fingerprint(op: &OrderOp) -> Result<[u8; 32], StoreError> {
    Ok(Sha256::digest(codec::encode(op)?).into())
}

impl OverlayState<'_, '_> {
    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.0.get(key)? {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
    }

    fn put<T: Serialize>(&mut self, key: Vec<u8>, value: &T) -> Result<(), StoreError> {
        self.0.insert(key, codec::encode(value)?);
        Ok(())
    }

    /// Puts `id` in the status index under `status` (`delta` 1) or takes it out (`delta` -1),
    /// and moves the status's counter with it; a map or counter at zero is removed.
    fn index_status(&mut self, status: OrderStatus, id: u64, delta: i64) -> Result<(), StoreError> {
        let (group, bit) = status_index::locate(id);
        let map = keys::with_id(keys::status_bits_prefix(status), group);
        let bits = match self.0.get(&map)? {
            Some(v) => status_index::decode(&v)?,
            None => 0,
        };
        let bits = if delta > 0 { bits | bit } else { bits & !bit };
        if bits == 0 {
            self.0.remove(map);
        } else {
            self.0.insert(map, status_index::encode(bits));
        }
        let counter = keys::status_count(status);
        let n: u64 = self.get(&counter)?.unwrap_or(0);
        let n = n.checked_add_signed(delta).ok_or_else(|| {
            StoreError::Corrupt(format!("a listing counter would pass zero: {counter:?}"))
        })?;
        if n == 0 {
            self.0.remove(counter);
            Ok(())
        } else {
            self.put(counter, &n)
        }
    }
}

impl OrderState for OverlayState<'_, '_> {
    type Error = StoreError;

    fn clock(&self) -> Result<Option<i64>, StoreError> {
        self.get(keys::CLOCK)
    }

    fn last_stamp(&self) -> Result<Option<i64>, StoreError> {
        self.get(keys::LAST_STAMP)
    }

    fn set_clock(&mut self, clock: i64, last_stamp: i64) -> Result<(), StoreError> {
        self.put(keys::CLOCK.to_vec(), &clock)?;
        self.put(keys::LAST_STAMP.to_vec(), &last_stamp)
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.get(keys::NEXT_ID)?.unwrap_or(1))
    }

    fn set_next_id(&mut self, next: u64) -> Result<(), StoreError> {
        self.put(keys::NEXT_ID.to_vec(), &next)
    }

    fn order(&self, id: u64) -> Result<Option<Order>, StoreError> {
        match self.0.get(&keys::order(id))? {
            Some(v) => Ok(Some(stored_order::decode(&v)?.0)),
            None => Ok(None),
        }
    }

    fn put_order(
        &mut self,
        order: &Order,
        previous: Option<&Order>,
        revision: u64,
    ) -> Result<(), StoreError> {
        self.0.insert(
            keys::order(order.id),
            stored_order::encode(order, revision)?,
        );
        if previous.is_some_and(|p| p.status == order.status) {
            return Ok(());
        }
        if let Some(previous) = previous {
            self.index_status(previous.status, order.id, -1)?;
        }
        self.index_status(order.status, order.id, 1)?;
        customer_index::put(
            self.0,
            &order.customer_id,
            order.id,
            previous.map(|p| p.status),
            order.status,
        )
    }

    fn revision(&self) -> Result<u64, StoreError> {
        Ok(self.get(keys::REVISION)?.unwrap_or(0))
    }

    fn put_change(&mut self, change: &ChangeRecord) -> Result<(), StoreError> {
        self.put(keys::REVISION.to_vec(), &change.revision)?;
        let key = keys::change_page(changes::page_of(change.revision));
        let mut page = self.0.get(&key)?.unwrap_or_default();
        changes::append_to_page(&mut page, change)?;
        self.0.insert(key, page);
        Ok(())
    }

    fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        match self.0.get(&keys::idempotency(key))? {
            Some(v) => Ok(Some(stored_record::decode(&v)?)),
            None => Ok(None),
        }
    }

    fn put_idempotency(&mut self, key: &str, record: &IdempotencyRecord) -> Result<(), StoreError> {
        self.put(keys::idempotency(key), record)?;
        self.0
            .insert(keys::expiry(record.expires_at_ms, key), Vec::new());
        Ok(())
    }

    fn remove_idempotency(
        &mut self,
        key: &str,
        record: &IdempotencyRecord,
    ) -> Result<(), StoreError> {
        self.0.remove(keys::idempotency(key));
        self.0.remove(keys::expiry(record.expires_at_ms, key));
        Ok(())
    }

    fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        self.get(&keys::user(name))
    }

    fn token_owner(&self, hash: &[u8; 32]) -> Result<Option<String>, StoreError> {
        self.get(&keys::token(hash))
    }

    fn put_user(&mut self, user: &User) -> Result<(), StoreError> {
        self.put(keys::USERS_BEGUN.to_vec(), &true)?;
        self.put(keys::user(&user.name), user)?;
        self.put(keys::token(&user.token_hash), &user.name)
    }

    fn remove_user(&mut self, user: &User) -> Result<(), StoreError> {
        self.0.remove(keys::user(&user.name));
        self.0.remove(keys::token(&user.token_hash));
        Ok(())
    }

    fn role(&self, name: &str) -> Result<Option<CustomRole>, StoreError> {
        self.get(&keys::role(name))
    }

    fn put_role(&mut self, role: &CustomRole) -> Result<(), StoreError> {
        self.put(keys::role(&role.name), role)
    }

    fn remove_role(&mut self, name: &str) -> Result<(), StoreError> {
        self.0.remove(keys::role(name));
        Ok(())
    }

    fn expire_idempotency(&mut self, now: i64, max: usize) -> Result<(), StoreError> {
        let upper = keys::expiry(now.saturating_add(1), "");
        for expiry_key in self.0.remove_lowest(keys::EXPIRY_PREFIX, &upper, max)? {
            self.0
                .remove(keys::idempotency(&keys::key_of_expiry(&expiry_key)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::order::memory_state::{history, MemoryState};
    use crate::order::{apply_command, Order};

    fn decoded<T: DeserializeOwned>(tree: &sled::Tree, prefix: &[u8]) -> Vec<(Vec<u8>, T)> {
        tree.scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (k.to_vec(), codec::decode(&v).unwrap())
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The sled state agrees with the in-memory one command for command, whichever chunks
        /// the commands are committed in, and its indexes hold exactly what the orders say.
        #[test]
        fn the_sled_state_agrees_with_the_model(h in history(60), chunk in 1usize..8) {
            let db = sled::Config::new().temporary(true).open().unwrap();
            let tree = db.open_tree("sm").unwrap();
            let mut model = MemoryState::default();
            let commands: Vec<_> = h.iter().flat_map(|s| vec![s.command.clone(); s.times]).collect();
            for part in commands.chunks(chunk) {
                let mut ov = Overlay::new(&tree);
                for command in part {
                    let fp = fingerprint(&command.op).unwrap();
                    let on_sled = apply_command(&mut OverlayState(&mut ov), command, fp).unwrap();
                    let in_memory = match apply_command(&mut model, command, fp) {
                        Ok(applied) => applied,
                        Err(never) => match never {},
                    };
                    prop_assert_eq!(on_sled, in_memory);
                }
                ov.commit().unwrap();
            }
            let (orders, revisions): (Vec<Order>, Vec<u64>) = decoded::<(Order, u64)>(&tree, b"o").into_iter().map(|(_, stored)| stored).unzip();
            prop_assert_eq!(&orders, &model.orders.values().cloned().collect::<Vec<_>>());
            prop_assert_eq!(&revisions, &model.order_revisions.values().cloned().collect::<Vec<_>>());
            prop_assert_eq!(tree.scan_prefix(keys::OLD_ORDER_REVISION_PREFIX).count(), 0, "no revision key of the old layout");
            let records: Vec<(String, IdempotencyRecord)> = decoded(&tree, b"i")
                .into_iter()
                .map(|(k, r)| (String::from_utf8(k[1..].to_vec()).unwrap(), r))
                .collect();
            prop_assert_eq!(&records, &model.records.clone().into_iter().collect::<Vec<_>>());
            let expiries: Vec<Vec<u8>> = tree.scan_prefix(keys::EXPIRY_PREFIX).keys().map(|k| k.unwrap().to_vec()).collect();
            let expected: Vec<Vec<u8>> = model.expiries.iter().map(|(at, key)| keys::expiry(*at, key)).collect();
            prop_assert_eq!(expiries, expected);
            prop_assert_eq!(tree.scan_prefix(keys::OLD_STATUS_PREFIX).count(), 0, "no status key of the old layout");
            for status in OrderStatus::ALL {
                let by_status: Vec<u64> = status_index::ids_from(&tree, status, 0).map(Result::unwrap).collect();
                let expected: Vec<u64> = orders.iter().filter(|o| o.status == status).map(|o| o.id).collect();
                prop_assert_eq!(by_status, expected, "the status index of {}", status);
            }
            let maps = tree.scan_prefix(keys::STATUS_BITS_PREFIX).values().map(|v| status_index::decode(&v.unwrap()).unwrap());
            prop_assert!(maps.into_iter().all(|bits| bits != 0), "no empty map is kept");
            let customers: std::collections::BTreeSet<&str> = orders.iter().map(|o| o.customer_id.as_str()).collect();
            for customer in customers {
                let theirs: Vec<&Order> = orders.iter().filter(|o| o.customer_id == customer).collect();
                let (counts, ids) = customer_index::list(&tree, customer, None, 0).unwrap();
                let ids: Vec<u64> = ids.map(Result::unwrap).collect();
                prop_assert_eq!(ids, theirs.iter().map(|o| o.id).collect::<Vec<_>>(), "the index of {}", customer);
                prop_assert_eq!(counts.total(None), theirs.len() as u64);
                for status in OrderStatus::ALL {
                    let ids: Vec<u64> = customer_index::list(&tree, customer, Some(status), 0).unwrap().1.map(Result::unwrap).collect();
                    let expected: Vec<u64> = theirs.iter().filter(|o| o.status == status).map(|o| o.id).collect();
                    prop_assert_eq!(counts.total(Some(status)), expected.len() as u64, "{}'s {} counter", customer, status);
                    prop_assert_eq!(ids, expected, "{}'s orders in {}", customer, status);
                }
            }
            let index_keys = tree.scan_prefix(keys::CUSTOMER_PREFIX).count();
            let heads = orders.iter().map(|o| &o.customer_id).collect::<std::collections::BTreeSet<_>>().len();
            prop_assert!(index_keys <= heads + orders.len() / customer_index::RUN_LEN, "{} index keys", index_keys);
            let counts: Vec<(Vec<u8>, u64)> = decoded(&tree, keys::COUNT_PREFIX);
            let mut expected = std::collections::BTreeMap::<Vec<u8>, u64>::new();
            for o in &orders {
                *expected.entry(keys::status_count(o.status)).or_default() += 1;
            }
            prop_assert_eq!(counts, expected.into_iter().collect::<Vec<_>>(), "the listing counters count the orders");
            let users: Vec<User> = decoded::<User>(&tree, keys::USER_PREFIX).into_iter().map(|(_, u)| u).collect();
            prop_assert_eq!(&users, &model.users.values().cloned().collect::<Vec<_>>());
            let by_token: Vec<(Vec<u8>, String)> = decoded(&tree, b"t");
            let mut expected: Vec<(Vec<u8>, String)> = users.iter().map(|u| (keys::token(&u.token_hash), u.name.clone())).collect();
            expected.sort();
            prop_assert_eq!(by_token, expected, "the token index holds exactly the users' tokens");
            let roles: Vec<CustomRole> = decoded::<CustomRole>(&tree, keys::ROLE_PREFIX).into_iter().map(|(_, r)| r).collect();
            prop_assert_eq!(&roles, &model.roles.values().cloned().collect::<Vec<_>>());
            let changes: Vec<ChangeRecord> = tree.scan_prefix(keys::CHANGE_PAGE_PREFIX).values().flat_map(|page| changes::page_records(&page.unwrap()).unwrap()).collect();
            prop_assert_eq!(&changes, &model.changes.values().cloned().collect::<Vec<_>>());
            let state = OverlayState(&mut Overlay::new(&tree));
            prop_assert_eq!(
                (state.clock().unwrap(), state.last_stamp().unwrap(), state.next_id().unwrap(), state.revision().unwrap()),
                (model.clock, model.last_stamp, model.next_id, model.revision)
            );
            // A snapshot dump taken now skips the keys its horizon calls new: none may exist yet.
            let horizon = keys::Horizon { next_id: state.next_id().unwrap(), revision: state.revision().unwrap() };
            for k in tree.iter().keys() {
                let k = k.unwrap();
                prop_assert!(!horizon.is_past(&k), "{:?} is past the store's own horizon", k);
            }
        }
    }
}
