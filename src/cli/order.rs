//! `ordo order ...`: create, get, list and change the status of orders, through the client.

use clap::Subcommand;

use super::{report_error, ConnArgs};
use crate::client::{ListQuery, NewOrderRequest, Order, ReadMode};

#[derive(Debug, Subcommand)]
pub enum OrderCommand {
    /// Create an order: `--item SKU:QTY:PRICE_CENTS` once per line.
    Create {
        #[arg(long)]
        customer: String,
        #[arg(long = "item", required = true, value_parser = parse_item)]
        items: Vec<(String, u32, u64)>,
        #[arg(long)]
        note: Option<String>,
        /// Reuse a key to make a retry of this exact create safe (default: a fresh one).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Show one order.
    Get {
        id: u64,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// List orders, ordered by id.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        page: Option<u64>,
        #[arg(long)]
        per_page: Option<u64>,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Move an order to a new status (pending, paid, shipped, delivered, cancelled).
    SetStatus {
        id: u64,
        status: String,
        #[arg(long)]
        expected_version: Option<u64>,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// Read the answering node's local state (may be behind; works without a quorum).
    #[arg(long, conflicts_with = "allow_stale")]
    stale: bool,
    /// Linearizable if possible within the timeout, else a stale read (marked as such).
    #[arg(long)]
    allow_stale: bool,
}

impl ReadArgs {
    fn mode(&self) -> ReadMode {
        match (self.stale, self.allow_stale) {
            (true, _) => ReadMode::Stale,
            (_, true) => ReadMode::AllowStale,
            _ => ReadMode::Linearizable,
        }
    }
}

fn parse_item(raw: &str) -> Result<(String, u32, u64), String> {
    let mut parts = raw.rsplitn(3, ':');
    let (price, qty, sku) = (parts.next(), parts.next(), parts.next());
    match (
        sku,
        qty.and_then(|q| q.parse().ok()),
        price.and_then(|p| p.parse().ok()),
    ) {
        (Some(sku), Some(qty), Some(price)) if !sku.is_empty() => Ok((sku.to_string(), qty, price)),
        _ => Err(format!("{raw:?} is not SKU:QUANTITY:UNIT_PRICE_CENTS")),
    }
}

fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn print_order(o: &Order) {
    println!(
        "order {}  customer {}  status {}  version {}",
        o.id, o.customer_id, o.status, o.version
    );
    println!("  created {}  updated {}", o.created_at, o.updated_at);
    for i in &o.items {
        println!(
            "  {:<24} {:>6} x {:>12} = {:>14}",
            i.sku,
            i.quantity,
            money(i.unit_price_cents),
            money(i.unit_price_cents * i.quantity as u64)
        );
    }
    println!("  total {}", money(o.total_cents));
    if let Some(n) = &o.note {
        println!("  note: {n}");
    }
}

fn print_table(orders: &[Order]) {
    println!(
        "{:<8} {:<20} {:<10} {:>7} {:>14} {:<24}",
        "ID", "CUSTOMER", "STATUS", "VERSION", "TOTAL", "CREATED"
    );
    for o in orders {
        println!(
            "{:<8} {:<20} {:<10} {:>7} {:>14} {:<24}",
            o.id,
            o.customer_id,
            o.status,
            o.version,
            money(o.total_cents),
            o.created_at
        );
    }
}

fn stale_note(stale: bool, json: bool) {
    if stale && !json {
        eprintln!("note: stale read (local state of one node; it may be behind)");
    }
}

pub async fn run(conn: &ConnArgs, command: OrderCommand) -> i32 {
    let client = match conn.client() {
        Ok(client) => client,
        Err(e) => return super::report_error(conn, &e),
    };
    let result = match command {
        OrderCommand::Create {
            customer,
            items,
            note,
            idempotency_key,
        } => {
            let mut req = NewOrderRequest::new(customer);
            for (sku, qty, price) in items {
                req = req.item(sku, qty, price);
            }
            req.note = note;
            client.create_order(&req, idempotency_key).await.map(|c| {
                if conn.json {
                    println!("{}", serde_json::json!({"order": c.order, "replayed": c.replayed, "idempotency_key": c.idempotency_key}));
                } else {
                    print_order(&c.order);
                    if c.replayed {
                        eprintln!("note: this idempotency key was used before; that order is shown");
                    }
                }
            })
        }
        OrderCommand::Get { id, read } => client.get_order(id, read.mode()).await.map(|r| {
            if conn.json {
                println!(
                    "{}",
                    serde_json::json!({"order": r.value, "stale": r.stale})
                );
            } else {
                print_order(&r.value);
            }
            stale_note(r.stale, conn.json);
        }),
        OrderCommand::List {
            status,
            customer,
            page,
            per_page,
            read,
        } => {
            let q = ListQuery {
                status,
                customer_id: customer,
                page,
                per_page,
            };
            client.list_orders(&q, read.mode()).await.map(|r| {
                if conn.json {
                    println!("{}", serde_json::json!({"orders": r.value.orders, "page": r.value.page, "per_page": r.value.per_page, "total": r.value.total, "stale": r.stale}));
                } else {
                    print_table(&r.value.orders);
                    println!("page {} ({} per page), {} matching in all", r.value.page, r.value.per_page, r.value.total);
                }
                stale_note(r.stale, conn.json);
            })
        }
        OrderCommand::SetStatus {
            id,
            status,
            expected_version,
            idempotency_key,
        } => client
            .set_status(id, &status, expected_version, idempotency_key)
            .await
            .map(|o| {
                if conn.json {
                    println!("{}", serde_json::json!({"order": o}));
                } else {
                    print_order(&o);
                }
            }),
    };
    match result {
        Ok(()) => 0,
        Err(e) => report_error(conn, &e),
    }
}
