//! Test support: `OrderState` over plain maps, and generators of command sequences. The
//! property tests of `apply` run on it with no disk; the store's tests check that the sled
//! state agrees with it command for command.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;

use proptest::prelude::*;
use sha2::{Digest, Sha256};

use super::{
    AdminOp, ChangeRecord, CustomRole, IdempotencyRecord, LineItem, NewOrder, Order, OrderCommand,
    OrderOp, OrderState, OrderStatus, Permission, User,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryState {
    pub clock: Option<i64>,
    pub last_stamp: Option<i64>,
    pub next_id: u64,
    pub orders: BTreeMap<u64, Order>,
    pub records: BTreeMap<String, IdempotencyRecord>,
    /// (expiry, key), as the store's expiry index orders them.
    pub expiries: BTreeSet<(i64, String)>,
    pub users: BTreeMap<String, User>,
    pub users_begun: bool,
    pub roles: BTreeMap<String, CustomRole>,
    pub revision: u64,
    pub changes: BTreeMap<u64, ChangeRecord>,
    /// Order id → the revision of its last change.
    pub order_revisions: BTreeMap<u64, u64>,
}

impl Default for MemoryState {
    fn default() -> Self {
        MemoryState {
            clock: None,
            last_stamp: None,
            next_id: 1,
            orders: BTreeMap::new(),
            records: BTreeMap::new(),
            expiries: BTreeSet::new(),
            users: BTreeMap::new(),
            users_begun: false,
            roles: BTreeMap::new(),
            revision: 0,
            changes: BTreeMap::new(),
            order_revisions: BTreeMap::new(),
        }
    }
}

impl OrderState for MemoryState {
    type Error = Infallible;

    fn clock(&self) -> Result<Option<i64>, Infallible> {
        Ok(self.clock)
    }
    fn last_stamp(&self) -> Result<Option<i64>, Infallible> {
        Ok(self.last_stamp)
    }
    fn set_clock(&mut self, clock: i64, last_stamp: i64) -> Result<(), Infallible> {
        self.clock = Some(clock);
        self.last_stamp = Some(last_stamp);
        Ok(())
    }
    fn next_id(&self) -> Result<u64, Infallible> {
        Ok(self.next_id)
    }
    fn set_next_id(&mut self, next: u64) -> Result<(), Infallible> {
        self.next_id = next;
        Ok(())
    }
    fn order(&self, id: u64) -> Result<Option<Order>, Infallible> {
        Ok(self.orders.get(&id).cloned())
    }
    fn put_order(
        &mut self,
        order: &Order,
        _previous: Option<&Order>,
        revision: u64,
    ) -> Result<(), Infallible> {
        self.orders.insert(order.id, order.clone());
        self.order_revisions.insert(order.id, revision);
        Ok(())
    }
    fn revision(&self) -> Result<u64, Infallible> {
        Ok(self.revision)
    }
    fn put_change(&mut self, change: &ChangeRecord) -> Result<(), Infallible> {
        self.revision = change.revision;
        self.changes.insert(change.revision, *change);
        Ok(())
    }
    fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, Infallible> {
        Ok(self.records.get(key).cloned())
    }
    fn put_idempotency(&mut self, key: &str, record: &IdempotencyRecord) -> Result<(), Infallible> {
        self.records.insert(key.to_string(), record.clone());
        self.expiries
            .insert((record.expires_at_ms.max(0), key.to_string()));
        Ok(())
    }
    fn remove_idempotency(
        &mut self,
        key: &str,
        record: &IdempotencyRecord,
    ) -> Result<(), Infallible> {
        self.records.remove(key);
        self.expiries
            .remove(&(record.expires_at_ms.max(0), key.to_string()));
        Ok(())
    }
    fn user(&self, name: &str) -> Result<Option<User>, Infallible> {
        Ok(self.users.get(name).cloned())
    }
    fn token_owner(&self, hash: &[u8; 32]) -> Result<Option<String>, Infallible> {
        Ok(self
            .users
            .values()
            .find(|u| u.token_hash == *hash)
            .map(|u| u.name.clone()))
    }
    fn put_user(&mut self, user: &User) -> Result<(), Infallible> {
        self.users_begun = true;
        self.users.insert(user.name.clone(), user.clone());
        Ok(())
    }
    fn remove_user(&mut self, user: &User) -> Result<(), Infallible> {
        self.users.remove(&user.name);
        Ok(())
    }
    fn role(&self, name: &str) -> Result<Option<CustomRole>, Infallible> {
        Ok(self.roles.get(name).cloned())
    }
    fn put_role(&mut self, role: &CustomRole) -> Result<(), Infallible> {
        self.roles.insert(role.name.clone(), role.clone());
        Ok(())
    }
    fn remove_role(&mut self, name: &str) -> Result<(), Infallible> {
        self.roles.remove(name);
        Ok(())
    }
    fn expire_idempotency(&mut self, now: i64, max: usize) -> Result<(), Infallible> {
        let due: Vec<(i64, String)> = self
            .expiries
            .iter()
            .take_while(|(at, _)| *at <= now.max(0))
            .take(max)
            .cloned()
            .collect();
        for entry in due {
            self.records.remove(&entry.1);
            self.expiries.remove(&entry);
        }
        Ok(())
    }
}

/// A fingerprint for tests: equal exactly for equal operations.
pub fn fingerprint(op: &OrderOp) -> [u8; 32] {
    Sha256::digest(format!("{op:?}")).into()
}

/// One command of a generated history, and how often it is sent in a row (retries).
#[derive(Debug, Clone)]
pub struct Sent {
    pub command: OrderCommand,
    pub times: usize,
}

fn admin_op() -> impl Strategy<Value = OrderOp> {
    let name = || proptest::sample::select(vec!["ann", "bob", "cy"]);
    let role = proptest::sample::select(vec!["admin", "reader", "auditor", "nobody"]);
    prop_oneof![
        (name(), role, 0u8..3).prop_map(|(name, role, token)| {
            OrderOp::Admin(AdminOp::AddUser(User {
                name: name.into(),
                role: role.into(),
                token_hash: [token; 32],
            }))
        }),
        name().prop_map(|name| OrderOp::Admin(AdminOp::RevokeUser { name: name.into() })),
        proptest::collection::vec(proptest::sample::select(Permission::ALL.to_vec()), 0..3)
            .prop_map(|permissions| OrderOp::Admin(AdminOp::PutRole(CustomRole {
                name: "auditor".into(),
                permissions,
            }))),
        Just(OrderOp::Admin(AdminOp::DeleteRole {
            name: "auditor".into()
        })),
    ]
}

fn op() -> impl Strategy<Value = OrderOp> {
    prop_oneof![
        1 => admin_op(),
        4 => (0u8..4, 1u32..4).prop_map(|(customer, quantity)| OrderOp::Create(NewOrder {
            customer_id: format!("c{customer}"),
            items: vec![LineItem {
                sku: "sku".into(),
                quantity,
                unit_price_cents: 100,
            }],
            note: None,
        })),
        4 => (
            1u64..6,
            proptest::sample::select(OrderStatus::ALL.to_vec()),
            proptest::option::of(1u64..4)
        )
            .prop_map(|(id, status, expected_version)| OrderOp::SetStatus {
                id,
                status,
                expected_version,
            }),
    ]
}

/// How far the leader's stamp moves between commands: mostly a little, sometimes not at all
/// (one batch), sometimes back (a new leader with a slower clock), sometimes by hours or a
/// day (an idle night, a leader whose clock is far ahead).
fn stamp_step() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 0i64..2_000,
        2 => Just(0i64),
        1 => -5_000i64..0,
        1 => 3_600_000i64..30 * 3_600_000,
    ]
}

/// A history of up to `len` commands over a few keys, some sent more than once in a row.
pub fn history(len: usize) -> impl Strategy<Value = Vec<Sent>> {
    proptest::collection::vec(
        (op(), proptest::option::of(0u8..4), stamp_step(), 1usize..4),
        1..len,
    )
    .prop_map(|steps| {
        let mut stamp = 1_700_000_000_000i64;
        steps
            .into_iter()
            .map(|(op, key, step, times)| {
                stamp += step;
                Sent {
                    command: OrderCommand {
                        op,
                        idempotency_key: key.map(|k| format!("key-{k}")),
                        stamped_at_ms: stamp,
                    },
                    times,
                }
            })
            .collect()
    })
}
