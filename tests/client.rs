//! The client library and the CLI against real clusters: a dead node (leader or not) is
//! skipped, retries never duplicate, degraded reads fall back to stale, and the CLI's output
//! and exit codes.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ordo::client::{Client, ClientConfig, ClientError, ListQuery, NewOrderRequest, ReadMode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};

fn client_for(cluster: &TestCluster, ids: &[u64]) -> Client {
    let mut config = ClientConfig::new(
        ids.iter()
            .map(|id| format!("http://{}", cluster.nodes[id].addr)),
    );
    config.deadline = Duration::from_secs(30);
    Client::new(config)
}

async fn all_via_client(client: &Client) -> Vec<ordo::client::Order> {
    let mut out = Vec::new();
    for page in 1..=1000 {
        let q = ListQuery {
            page: Some(page),
            per_page: Some(100),
            ..Default::default()
        };
        let read = client
            .list_orders(&q, ReadMode::Linearizable)
            .await
            .unwrap();
        if read.value.orders.is_empty() {
            break;
        }
        out.extend(read.value.orders);
    }
    // The same listing walked by cursor (`after`, following each page's `next_after`).
    let mut by_cursor: Vec<ordo::client::Order> = Vec::new();
    let mut after = Some(0);
    for _ in 0..1000 {
        let Some(a) = after else { break };
        let q = ListQuery {
            after: Some(a),
            per_page: Some(37),
            ..Default::default()
        };
        let read = client
            .list_orders(&q, ReadMode::Linearizable)
            .await
            .unwrap();
        assert_eq!(read.value.page, 1, "the first page after the cursor");
        assert_eq!(read.value.total as usize, out.len());
        by_cursor.extend(read.value.orders);
        after = read.value.next_after;
    }
    assert_eq!(after, None, "the cursor walk ended");
    assert_eq!(
        by_cursor.iter().map(|o| o.id).collect::<Vec<_>>(),
        out.iter().map(|o| o.id).collect::<Vec<_>>()
    );
    out
}

/// 200 creates through a client whose node list includes a dead node; exactly 200 orders.
async fn two_hundred_creates_with(client: &Client, tag: &str) {
    let before = all_via_client(client).await.len();
    let mut ids = BTreeSet::new();
    for i in 0..200 {
        let req = NewOrderRequest::new(tag)
            .item("sku", 1, 100)
            .note(format!("{tag}-{i}"));
        let created = client
            .create_order(&req, None)
            .await
            .unwrap_or_else(|e| panic!("create {i}: {e}"));
        assert!(!created.replayed);
        ids.insert(created.order.id);
    }
    assert_eq!(ids.len(), 200);
    let all = all_via_client(client).await;
    assert_eq!(all.len(), before + 200, "exactly 200 new orders");
    let mine: BTreeSet<u64> = all
        .iter()
        .filter(|o| o.customer_id == tag)
        .map(|o| o.id)
        .collect();
    assert_eq!(mine, ids);
    for id in ids.iter().step_by(20) {
        let read = client.get_order(*id, ReadMode::Linearizable).await.unwrap();
        assert!(!read.stale);
        assert_eq!(read.value.customer_id, tag);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_succeed_with_the_leader_or_a_follower_dead() {
    let mut cluster = start_cluster(3).await;
    let client = client_for(&cluster, &[1, 2, 3]);
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    cluster.kill(leader);
    two_hundred_creates_with(&client, "leader-dead").await;

    cluster.spawn(leader);
    let new_leader = cluster.wait_for_leader(&cluster.ids()).await;
    let follower = cluster
        .ids()
        .into_iter()
        .find(|n| *n != new_leader)
        .unwrap();
    cluster.kill(follower);
    two_hundred_creates_with(&client, "follower-dead").await;
}

/// A TCP proxy to `upstream` that swallows the answer to the first request: the server
/// applies the write, the client sees the connection drop and must retry.
async fn answer_dropping_proxy(upstream: String) -> (String, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    tokio::spawn(async move {
        for _ in 0..100 {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                return;
            };
            let drop_this = !flag.swap(true, Ordering::SeqCst);
            tokio::spawn(async move {
                if drop_this {
                    let (mut ri, _wi) = inbound.split();
                    let (mut ro, mut wo) = outbound.split();
                    let mut buf = vec![0u8; 64 * 1024];
                    let up = async {
                        loop {
                            let n = ri.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            tokio::io::AsyncWriteExt::write_all(&mut wo, &buf[..n])
                                .await
                                .ok();
                        }
                    };
                    let mut answer = [0u8; 1];
                    // Forward the request; once the server starts answering, cut the client off.
                    tokio::select! {
                        _ = up => {}
                        _ = ro.read(&mut answer) => {}
                    }
                } else {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, dropped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_a_lost_answer_creates_exactly_one_order() {
    let cluster = start_cluster(3).await;
    let follower = {
        let leader = cluster.wait_for_leader(&cluster.ids()).await;
        cluster.ids().into_iter().find(|n| *n != leader).unwrap()
    };
    let (proxy, dropped) = answer_dropping_proxy(cluster.nodes[&follower].addr.clone()).await;
    let mut config = ClientConfig::new([format!("http://{proxy}")]);
    config.deadline = Duration::from_secs(30);
    let client = Client::new(config);

    let req = NewOrderRequest::new("lost-answer").item("sku", 3, 700);
    let created = client.create_order(&req, None).await.unwrap();
    assert!(
        dropped.load(Ordering::SeqCst),
        "the first answer was dropped"
    );
    assert!(
        created.replayed,
        "the retry was answered from the idempotency record"
    );

    // Same for a status change: applied once, version 2, not 3.
    let moved = client
        .set_status(created.order.id, "paid", None, None)
        .await
        .unwrap();
    assert_eq!(moved.version, 2);

    let direct = client_for(&cluster, &[1, 2, 3]);
    let all = all_via_client(&direct).await;
    assert_eq!(all.len(), 1, "one order, not two: {all:?}");
    assert_eq!(all[0].id, created.order.id);
    assert_eq!((all[0].status.as_str(), all[0].version), ("paid", 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_reads_degrade_to_stale_and_writes_are_unavailable() {
    let mut cluster = start_cluster(3).await;
    let client = client_for(&cluster, &[1, 2, 3]);
    let mut known = Vec::new();
    for i in 0..5 {
        let req = NewOrderRequest::new("degraded")
            .item("sku", 1, 1)
            .note(format!("d-{i}"));
        known.push(client.create_order(&req, None).await.unwrap().order);
    }
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let survivor = cluster.ids().into_iter().find(|n| *n != leader).unwrap();
    // Let the survivor apply everything before the others die (a stale read shows what it has).
    cluster.wait_caught_up(survivor, leader).await;
    for id in cluster.ids().into_iter().filter(|n| *n != survivor) {
        cluster.kill(id);
    }

    let mut config = ClientConfig::new(
        cluster
            .ids()
            .iter()
            .map(|id| format!("http://{}", cluster.nodes[id].addr)),
    );
    config.deadline = Duration::from_secs(6);
    let client = Client::new(config);

    let read = client
        .get_order(known[2].id, ReadMode::AllowStale)
        .await
        .unwrap();
    assert!(read.stale, "without a quorum the answer is marked stale");
    // As the create answered, its revision included (the order has not changed since).
    assert!(known[2].revision.is_some());
    assert_eq!(read.value, known[2]);
    let list = client
        .list_orders(
            &ListQuery {
                customer_id: Some("degraded".into()),
                ..Default::default()
            },
            ReadMode::AllowStale,
        )
        .await
        .unwrap();
    assert!(list.stale);
    assert_eq!(list.value.orders, known);

    let started = std::time::Instant::now();
    let err = client
        .create_order(&NewOrderRequest::new("x").item("s", 1, 1), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Unavailable { .. }), "{err:?}");
    // Bounded by its deadline (6 s), with a wide margin for a slow machine.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    // The write's outcome is unknown: the error hands back the key it carried, and says so.
    let key = err
        .idempotency_key()
        .expect("an unavailable write names its idempotency key")
        .to_string();
    assert!(err.to_string().contains(&key), "{err}");

    // Once the cluster is back, the retry with that key makes exactly one order.
    for id in cluster.ids().into_iter().filter(|n| *n != survivor) {
        cluster.spawn(id);
    }
    cluster.wait_for_leader(&cluster.ids()).await;
    let client = client_for(&cluster, &[1, 2, 3]);
    let req = NewOrderRequest::new("x").item("s", 1, 1);
    client.create_order(&req, Some(key.clone())).await.unwrap();
    client.create_order(&req, Some(key)).await.unwrap();
    let xs = client
        .list_orders(
            &ListQuery {
                customer_id: Some("x".into()),
                ..Default::default()
            },
            ReadMode::Linearizable,
        )
        .await
        .unwrap();
    assert_eq!(xs.value.orders.len(), 1, "{:?}", xs.value.orders);
}

fn ordo_cli(nodes: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("ORDO_NODES", nodes)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_print_and_exit_as_documented() {
    let mut cluster = start_cluster(3).await;
    let nodes = cluster
        .ids()
        .iter()
        .map(|id| format!("http://{}", cluster.nodes[id].addr))
        .collect::<Vec<_>>()
        .join(",");
    let nodes = nodes.as_str();
    let cli = |args: Vec<&str>| {
        let nodes = nodes.to_string();
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        tokio::task::spawn_blocking(move || {
            ordo_cli(&nodes, &args.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };

    let (code, out, err) = cli(vec![
        "order",
        "create",
        "--customer",
        "carol",
        "--item",
        "book:2:1250",
        "--item",
        "pen:1:99",
        "--json",
    ])
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    // --json prints exactly what the API answers: the order itself.
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let order: ordo::wire::OrderJson = serde_json::from_value(v.clone()).unwrap();
    assert_eq!((order.total_cents, order.revision), (2599, Some(1)));
    assert_eq!(v.as_object().unwrap().len(), 9, "{v}");
    let id = order.id.to_string();

    let (code, out, _) = cli(vec!["order", "get", &id]).await.unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("carol") && out.contains("25.99"), "{out}");

    let (code, _, err) = cli(vec!["order", "set-status", &id, "shipped"])
        .await
        .unwrap();
    assert_eq!(code, 4, "illegal transition is a conflict: {err}");
    // As JSON, in the API's words, with --json before the subcommand.
    let (code, out, _) = cli(vec!["--json", "order", "set-status", &id, "shipped"])
        .await
        .unwrap();
    assert_eq!(code, 4);
    let e: ordo::wire::ErrorBody = serde_json::from_str(&out).unwrap();
    assert_eq!(e.error.code, "invalid_transition", "{out}");
    let (code, out, _) = cli(vec!["--json", "order", "get", "987654"]).await.unwrap();
    assert_eq!(code, 3);
    let e: ordo::wire::ErrorBody = serde_json::from_str(&out).unwrap();
    assert_eq!(e.error.code, "not_found", "{out}");
    let (code, out, _) = cli(vec![
        "--json",
        "order",
        "create",
        "--customer",
        "c",
        "--item",
        "a:0:1",
    ])
    .await
    .unwrap();
    assert_eq!(code, 5);
    let e: ordo::wire::ErrorBody = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (e.error.code.as_str(), e.error.field.as_deref()),
        ("validation_failed", Some("items[0].quantity")),
        "{out}"
    );
    let (code, out, _) = cli(vec![
        "order",
        "set-status",
        &id,
        "paid",
        "--expected-version",
        "1",
        "--json",
    ])
    .await
    .unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("\"paid\""));
    // `order watch` prints each change as a JSON line, here the two above, and runs until
    // stopped. (`--batch-ms` goes to the node as `batch_ms`; from 0 the stream starts behind,
    // so nothing is held back.)
    let mut watch = tokio::process::Command::new(BIN)
        .args([
            "order",
            "watch",
            "--since",
            "0",
            "--json",
            "--batch-ms",
            "20",
        ])
        .env("ORDO_NODES", nodes)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut changes = Vec::new();
    while changes.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("order watch printed both changes within 60 s")
            .unwrap()
            .expect("order watch ended early");
        changes.push(serde_json::from_str::<ordo::wire::ChangeJson>(&line).unwrap());
    }
    watch.kill().await.unwrap();
    let seen: Vec<_> = changes
        .iter()
        .map(|c| {
            (
                c.revision,
                c.kind.as_str(),
                c.order.id,
                c.previous_status.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (1, "order.created", order.id, None),
            (2, "order.status_changed", order.id, Some("pending"))
        ]
    );
    // Errors say it once, in words (not "not found: order 987654 not found").
    let (code, _, err) = cli(vec!["order", "get", "987654"]).await.unwrap();
    assert_eq!(code, 3, "not found");
    assert_eq!(err.matches("not found").count(), 1, "{err}");
    let (code, _, err) = cli(vec!["order", "create", "--customer", "", "--item", "a:1:1"])
        .await
        .unwrap();
    assert_eq!(code, 5, "validation");
    assert_eq!(err.matches("customer_id").count(), 1, "{err}");
    let (code, _, _) = cli(vec![
        "order",
        "create",
        "--customer",
        "c",
        "--item",
        "nonsense",
    ])
    .await
    .unwrap();
    assert_eq!(code, 2, "usage");

    let (code, out, _) = cli(vec!["order", "list", "--status", "paid", "--json"])
        .await
        .unwrap();
    assert_eq!(code, 0);
    let list: ordo::wire::OrderListJson = serde_json::from_str(&out).unwrap();
    assert_eq!(list.total, 1);

    // Wide (CJK) customer ids keep the table's columns: every row's TOTAL ends where the
    // header's does, in display columns, and no line ends in spaces.
    for customer in ["田中商店", "a-rather-long-customer-id-of-forty-chars"] {
        let (code, _, err) = cli(vec![
            "order",
            "create",
            "--customer",
            customer,
            "--item",
            "x:1:100",
        ])
        .await
        .unwrap();
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, _) = cli(vec!["order", "list", "--per-page", "100"])
        .await
        .unwrap();
    assert_eq!(code, 0);
    let rows: Vec<&str> = out.lines().filter(|l| !l.starts_with("page ")).collect();
    // Where the 5th column (TOTAL, right-aligned) ends, in display columns.
    let total_end = |row: &str| {
        use unicode_width::UnicodeWidthStr;
        let cell = row.split_whitespace().nth(4).unwrap();
        let start = cell.as_ptr() as usize - row.as_ptr() as usize;
        row[..start + cell.len()].width()
    };
    assert!(rows[0].split_whitespace().nth(4) == Some("TOTAL"), "{out}");
    assert!(rows.iter().any(|l| l.contains("田中商店")), "{out}");
    for row in &rows {
        assert_eq!(total_end(row), total_end(rows[0]), "misaligned:\n{out}");
        assert_eq!(*row, row.trim_end(), "line ends in spaces:\n{out}");
    }

    let (code, out, err) = cli(vec!["cluster", "members", "1", "2", "3"])
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("leader: node ") && !out.contains("Some("),
        "{out}"
    );

    let (code, out, _) = cli(vec!["completion", "bash"]).await.unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("complete") && out.contains("ordo"), "{out}");

    // Healthy (exit 0) once all three agree on a leader: an election on a slow machine may
    // make one run see a disagreement, so ask again (bounded).
    let mut status = cli(vec!["cluster", "status"]).await.unwrap();
    for _ in 0..50 {
        if status.0 == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        status = cli(vec!["cluster", "status"]).await.unwrap();
    }
    let (code, out, _) = status;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("leader") || l.contains("follower"))
            .count(),
        3,
        "{out}"
    );
    assert!(
        out.lines().all(|l| l == l.trim_end()),
        "lines end in spaces:\n{out}"
    );

    // Given one node, it lists every member (from the membership).
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let one = format!("http://{}", cluster.nodes[&leader].addr);
    let (_, out, _) = cli(vec!["cluster", "status", "--nodes", &one])
        .await
        .unwrap();
    for id in cluster.ids() {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{id} "))),
            "node {id}:\n{out}"
        );
    }

    // A member down: still listed, by its id, and the exit code says degraded.
    let down = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    cluster.kill(down);
    let (code, out, _) = cli(vec!["cluster", "status"]).await.unwrap();
    assert_eq!(code, 8, "degraded: {out}");
    let row = out
        .lines()
        .find(|l| l.contains("unreachable"))
        .unwrap_or_else(|| panic!("no row for the dead node:\n{out}"));
    assert!(row.starts_with(&format!("{down} ")), "{row}");
    assert!(out.trim_end().ends_with("DEGRADED"), "{out}");

    // A reader that goes away (`ordo order list | head -1`) ends the CLI quietly, without a
    // panic: the answer comes after a network round trip, when the pipe is already closed.
    let mut child = Command::new(BIN)
        .args(["order", "list", "--per-page", "100", "--stale"])
        .env("ORDO_NODES", nodes)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}

/// A node that takes the connection but never answers (a listener that never accepts: the
/// kernel completes the handshake): the CLI gives up at its deadline and says so, rather than
/// that nothing listens there (a write sent there may have been applied).
#[test]
fn a_cli_whose_node_never_answers_says_it_gave_no_answer_not_that_none_listened() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let (code, _, err) = ordo_cli(&url, &["order", "get", "1", "--timeout-ms", "1500"]);
    assert_eq!(code, 6, "{err}");
    assert!(!err.contains("no node accepted a connection"), "{err}");
    assert!(err.contains("gave no answer in time"), "{err}");
    drop(silent);
}

/// Nothing listens where the CLI is pointed: the error keeps its cause and says what to do.
#[test]
fn a_cli_pointed_at_no_cluster_says_why_and_what_to_do() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let (code, _, err) = ordo_cli(&url, &["order", "get", "1", "--timeout-ms", "1500"]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("Connection refused"), "{err}");
    assert!(
        err.contains("hint:") && err.contains("ORDO_NODES") && err.contains(&url),
        "{err}"
    );
    let (code, out, _) = ordo_cli(
        &url,
        &["--json", "order", "get", "1", "--timeout-ms", "500"],
    );
    assert_eq!(code, 6);
    let e: ordo::wire::ErrorBody = serde_json::from_str(&out).unwrap();
    assert_eq!(e.error.code, "unavailable", "{out}");
}
