//! Test helpers on top of the test kit's clusters: `ProcessCluster` (real `ordo serve`
//! processes on free loopback ports, killed and reaped on drop) for the cluster, client and
//! torture tests, `InProcessCluster` (nodes in the test's own process) for input checks; and
//! the order requests the tests make, for either. Waits poll with deadlines; nothing sleeps
//! for a condition.

#![allow(dead_code, unused_imports)]

use std::path::Path;
use std::time::Duration;

pub use ordo_testkit::cluster::{Nodes, ProcessCluster as TestCluster, DEADLINE};
pub use ordo_testkit::inprocess::InProcessCluster;
use serde_json::{json, Value};
use tokio::time::Instant;

pub const BIN: &str = env!("CARGO_BIN_EXE_ordo");

/// Starts nodes 1..=n as one cluster and waits for a leader.
pub async fn start_cluster(n: u64) -> TestCluster {
    let mut cluster = TestCluster::new(Path::new(BIN), n, None, Vec::new());
    cluster.start_all().await;
    cluster
}

pub fn order_body(customer: &str, note: &str) -> Value {
    json!({
        "customer_id": customer,
        "items": [{"sku": "sku-1", "quantity": 2, "unit_price_cents": 1234}],
        "note": note,
    })
}

/// Sends a request; Err only when no HTTP answer came back (connection refused, timeout).
pub async fn send(req: reqwest::RequestBuilder) -> Result<(u16, Value), String> {
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// POSTs an order to node `id`, with `note` and an optional idempotency key.
pub async fn create(
    cluster: &impl Nodes,
    id: u64,
    customer: &str,
    key: Option<&str>,
    note: &str,
) -> Result<(u16, Value), String> {
    let mut req = cluster
        .http()
        .post(cluster.url(id, "/api/orders"))
        .json(&order_body(customer, note));
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    send(req).await
}

pub async fn get(cluster: &impl Nodes, id: u64, path: &str) -> Result<(u16, Value), String> {
    send(cluster.http().get(cluster.url(id, path))).await
}

/// Every order, read page by page through node `id` (linearizable unless `stale`).
pub async fn all_orders(cluster: &impl Nodes, id: u64, stale: bool) -> Vec<Value> {
    let mut out = Vec::new();
    for page in 1..=10_000 {
        let q = if stale { "&consistency=stale" } else { "" };
        let (status, body) = get(
            cluster,
            id,
            &format!("/api/orders?per_page=100&page={page}{q}"),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
        let orders = body["orders"].as_array().unwrap().clone();
        if orders.is_empty() {
            break;
        }
        out.extend(orders);
    }
    out
}

/// Creates an order with an idempotency key (also its note), retrying through the given nodes
/// until it is acknowledged (bounded by `DEADLINE` and a count). Returns the order.
pub async fn create_until_acked(
    cluster: &impl Nodes,
    nodes: &[u64],
    customer: &str,
    key: &str,
) -> Value {
    let deadline = Instant::now() + DEADLINE;
    let mut last = String::new();
    for attempt in 0..2000usize {
        let node = nodes[attempt % nodes.len()];
        match create(cluster, node, customer, Some(key), key).await {
            Ok((200 | 201, body)) => return body,
            Ok((status @ (503 | 504), body)) => last = format!("{status} {body}"),
            Ok((status, body)) => panic!("create {key} on node {node}: unexpected {status} {body}"),
            Err(e) => last = e,
        }
        assert!(
            Instant::now() < deadline,
            "create {key} never acknowledged; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("create {key} never acknowledged; last: {last}");
}

/// Reads what a stream sends into `text` until `done` says enough, within a generous deadline.
pub async fn read_until(
    stream: &mut reqwest::Response,
    text: &mut String,
    done: impl Fn(&str) -> bool,
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(text) {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {what} within 60 s; got {text:?}"))
            .unwrap()
            .unwrap_or_else(|| panic!("the stream ended before {what}; got {text:?}"));
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}
