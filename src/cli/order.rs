//! `ordo order ...`: create, get, list and change the status of orders, through the client.

use clap::Subcommand;

use super::table::PlainTable;
use super::{print_json, report_error, ConnArgs};
use crate::client::{ListQuery, NewOrderRequest, Order, ReadMode};

/// The statuses an order can have.
const STATUSES: [&str; 5] = ["pending", "paid", "shipped", "delivered", "cancelled"];

#[derive(Debug, Subcommand)]
pub enum OrderCommand {
    /// Create an order (prints it; with --json, the API's order).
    #[command(after_help = "Examples:\n  \
        ordo order create --customer alice --item book:2:1250 --item pen:1:99\n  \
        ordo order create --customer bob --item mug:1:800 --note 'gift wrap' --idempotency-key cart-77")]
    Create {
        /// The customer's id: 1 to 64 characters, no control characters.
        #[arg(long, value_name = "CUSTOMER_ID")]
        customer: String,
        /// A line of the order, once per line (1 to 100): quantity 1 to 10000, unit price in
        /// cents 0 to 1000000000 (12.50 is 1250).
        #[arg(long = "item", required = true, value_name = "SKU:QTY:PRICE_CENTS", value_parser = parse_item)]
        items: Vec<(String, u32, u64)>,
        /// Free text, at most 1000 characters.
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
        /// Reuse a key to make a retry of this exact create safe: 1 to 128 printable ASCII
        /// characters (default: a fresh one, printed if the outcome is unknown).
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
    /// Show one order.
    #[command(after_help = "Examples:\n  \
        ordo order get 1\n  \
        ordo order get 1 --stale        # this node's copy, also without a quorum")]
    Get {
        /// The order's id.
        #[arg(value_name = "ID")]
        id: u64,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// List orders by id, a page at a time.
    #[command(after_help = "Examples:\n  \
        ordo order list --customer alice\n  \
        ordo order list --status paid --page 2 --per-page 50\n  \
        ordo order list --status paid --after 1234          # the page after order 1234")]
    List {
        /// Only orders in this status.
        #[arg(long, value_name = "STATUS", value_parser = STATUSES)]
        status: Option<String>,
        /// Only this customer's orders.
        #[arg(long, value_name = "CUSTOMER_ID")]
        customer: Option<String>,
        /// The page, from 1 (counted from --after when given).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=u32::MAX as u64))]
        page: Option<u64>,
        /// Only orders with a higher id: a cursor, as fast at any depth (where --page skips
        /// every match before its page). Each listing prints the id to pass for the next page.
        #[arg(long, value_name = "ORDER_ID")]
        after: Option<u64>,
        /// Orders per page, 1 to 100.
        #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100))]
        per_page: u64,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Print changes to orders as they happen (the change feed), until interrupted. Survives
    /// a node dying: it resumes on another node where it left off.
    #[command(after_help = "Examples:\n  \
        ordo order watch                          # from now on\n  \
        ordo order watch --since 0 --json         # every change the nodes still hold, as JSON lines\n  \
        ordo order watch --customer alice --status paid\n  \
        ordo order watch --json --batch-ms 50     # a busy feed into another program")]
    Watch {
        /// Start after this revision (default: from now on). `order list` prints the revision
        /// it reflects: list, then watch from there, and nothing is missed.
        #[arg(long, value_name = "REVISION")]
        since: Option<u64>,
        /// Only changes to this customer's orders.
        #[arg(long, value_name = "CUSTOMER_ID")]
        customer: Option<String>,
        /// Only changes that leave an order in this status.
        #[arg(long, value_name = "STATUS", value_parser = STATUSES)]
        status: Option<String>,
        /// Let the node gather changes for up to this long before sending them (the feed's
        /// `batch_ms`): less CPU on both ends for a busy feed, each change up to this much later.
        #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=crate::api::changes::MAX_BATCH_MS))]
        batch_ms: Option<u64>,
    },
    /// Move an order to a new status: pending → paid or cancelled, paid → shipped or
    /// cancelled, shipped → delivered.
    #[command(after_help = "Examples:\n  \
        ordo order set-status 1 paid\n  \
        ordo order set-status 1 shipped --expected-version 2   # only if nobody changed it since")]
    SetStatus {
        /// The order's id.
        #[arg(value_name = "ID")]
        id: u64,
        /// The new status.
        #[arg(value_name = "STATUS", value_parser = STATUSES)]
        status: String,
        /// Change it only if the order is at this version (else exit 4, version_conflict).
        #[arg(long, value_name = "VERSION")]
        expected_version: Option<u64>,
        /// Reuse a key to make a retry of this exact change safe (1 to 128 printable ASCII
        /// characters).
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// Read the answering node's local state (may be behind; works without a quorum).
    #[arg(long, conflicts_with = "allow_stale")]
    stale: bool,
    /// Linearizable if a quorum answers within a third of --timeout-ms (at most 3 s), else
    /// a stale read, said so on stderr.
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
    let mut table = PlainTable::new(
        &["ID", "CUSTOMER", "STATUS", "VERSION", "TOTAL", "CREATED"],
        &[0, 3, 4],
    );
    for o in orders {
        table.row(vec![
            o.id.to_string(),
            o.customer_id.clone(),
            o.status.clone(),
            o.version.to_string(),
            money(o.total_cents),
            o.created_at.clone(),
        ]);
    }
    table.print();
}

/// `order watch`: one line per change (with --json, the event's `data`), until the stream
/// ends with an error.
async fn watch(
    conn: &ConnArgs,
    client: &crate::client::Client,
    since: Option<u64>,
    filter: crate::client::WatchFilter,
) -> Result<(), crate::client::ClientError> {
    use futures_util::StreamExt;
    use std::io::Write;
    // Without --since: from the revision the cluster is at now.
    let since = match since {
        Some(s) => s,
        None => {
            let query = ListQuery {
                per_page: Some(1),
                ..ListQuery::default()
            };
            let now = client.list_orders(&query, ReadMode::Linearizable).await?;
            now.value.revision.unwrap_or(0)
        }
    };
    let changes = client.watch(since, filter, crate::client::DEFAULT_IDLE_TIMEOUT);
    futures_util::pin_mut!(changes);
    while let Some(change) = changes.next().await {
        let change = change?;
        if conn.json {
            print_json(&change);
        } else {
            let o = &change.order;
            let moved = match &change.previous_status {
                Some(before) => format!("{before} -> {}", o.status),
                None => o.status.clone(),
            };
            println!(
                "{:>8}  {:<20}  order {}  customer {}  {}  total {}",
                change.revision,
                change.kind,
                o.id,
                o.customer_id,
                moved,
                money(o.total_cents)
            );
        }
        // One line per change as it happens, also into a pipe.
        let _ = std::io::stdout().flush();
    }
    Ok(())
}

/// On stderr, so that stdout stays exactly the API's answer.
fn stale_note(stale: bool, read: &ReadArgs) {
    if stale && read.allow_stale {
        eprintln!(
            "note: no linearizable answer in time (no quorum?): this is a stale read of one \
             node's local state, which may be behind"
        );
    } else if stale {
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
                    print_json(&c.order);
                } else {
                    print_order(&c.order);
                }
                if c.replayed {
                    eprintln!("note: this idempotency key was used before; that order is shown");
                }
            })
        }
        OrderCommand::Get { id, read } => client.get_order(id, read.mode()).await.map(|r| {
            if conn.json {
                print_json(&r.value);
            } else {
                print_order(&r.value);
            }
            stale_note(r.stale, &read);
        }),
        OrderCommand::List {
            status,
            customer,
            page,
            after,
            per_page,
            read,
        } => {
            let q = ListQuery {
                status,
                customer_id: customer,
                page,
                after,
                per_page: Some(per_page),
            };
            client.list_orders(&q, read.mode()).await.map(|r| {
                if conn.json {
                    print_json(&r.value);
                } else {
                    print_table(&r.value.orders);
                    let at = r
                        .value
                        .revision
                        .map(|rev| format!(", at revision {rev}"))
                        .unwrap_or_default();
                    let next = r
                        .value
                        .next_after
                        .map(|id| format!("; next page: --after {id}"))
                        .unwrap_or_default();
                    println!(
                        "page {} ({} per page), {} matching in all{at}{next}",
                        r.value.page, r.value.per_page, r.value.total
                    );
                }
                stale_note(r.stale, &read);
            })
        }
        OrderCommand::Watch {
            since,
            customer,
            status,
            batch_ms,
        } => {
            let filter = crate::client::WatchFilter {
                customer_id: customer,
                status,
                batch_ms,
            };
            watch(conn, &client, since, filter).await
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
                    print_json(&o);
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
