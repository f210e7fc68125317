//! The order itself: what is stored for every order and the status machine it moves through.
//!
//! These types are the on-disk and in-log form (encoded by `codec`), so they carry no
//! serde attributes that a non-self-describing format like bincode cannot honour; the
//! JSON shape the HTTP API shows lives in `api::json`.

use serde::{Deserialize, Serialize};

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_cents: u64,
}

/// What a client asks for when it creates an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrder {
    pub customer_id: String,
    pub items: Vec<LineItem>,
    pub note: Option<String>,
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum OrderStatus {
    Pending,
    Paid,
    Shipped,
    Delivered,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Pending,
        OrderStatus::Paid,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
    ];

    /// The lowercase name used by the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Paid => "paid",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// A stable one-byte tag, used as a key prefix by the status index.
    pub fn tag(self) -> u8 {
        match self {
            OrderStatus::Pending => 1,
            OrderStatus::Paid => 2,
            OrderStatus::Shipped => 3,
            OrderStatus::Delivered => 4,
            OrderStatus::Cancelled => 5,
        }
    }

    /// The status whose `tag` is `tag`.
    pub fn from_tag(tag: u8) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|s| s.tag() == tag)
    }

    /// The only moves an order may make; everything else is an invalid transition.
    pub fn can_move_to(self, next: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, next),
            (Pending, Paid)
                | (Pending, Cancelled)
                | (Paid, Shipped)
                | (Paid, Cancelled)
                | (Shipped, Delivered)
        )
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One applied change to an order (a create or a status change), numbered by the state
/// machine's revision counter: the same revision on every replica. The change feed is made
/// of these; the store keeps each as a `ChangeRecord` and joins it with its order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub revision: u64,
    /// The order as the change left it.
    pub order: Order,
    /// Its status before a status change; `None` for a create.
    pub previous_status: Option<OrderStatus>,
}

/// A `Change` as stored: only what the change set. An order's customer, items, total, note
/// and creation time never change after its create, so the order as any change left it is
/// the stored order with this record's status, version and update time. Keeping the order's
/// content once, not once per change, keeps the change log (and every snapshot, which
/// carries it) a few dozen bytes per change even for the largest orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub revision: u64,
    pub order_id: u64,
    pub status: OrderStatus,
    pub version: u64,
    pub updated_at_ms: i64,
    /// The status before a status change; `None` for a create.
    pub previous_status: Option<OrderStatus>,
}

impl ChangeRecord {
    /// The record of the change that left `order` as it is, at `revision`.
    pub fn of(revision: u64, order: &Order, previous_status: Option<OrderStatus>) -> Self {
        ChangeRecord {
            revision,
            order_id: order.id,
            status: order.status,
            version: order.version,
            updated_at_ms: order.updated_at_ms,
            previous_status,
        }
    }

    /// The change itself, given the order it belongs to (as stored now, or as any change
    /// left it: only the fields a change sets differ).
    pub fn with_order(&self, mut order: Order) -> Change {
        debug_assert_eq!(order.id, self.order_id);
        order.status = self.status;
        order.version = self.version;
        order.updated_at_ms = self.updated_at_ms;
        Change {
            revision: self.revision,
            order,
            previous_status: self.previous_status,
        }
    }
}

/// A stored order. Times are milliseconds since the Unix epoch, stamped by the leader that
/// proposed the command, so every replica stores the same value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: u64,
    pub customer_id: String,
    pub items: Vec<LineItem>,
    pub total_cents: u64,
    pub note: Option<String>,
    pub status: OrderStatus,
    pub version: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}
