//! The change feed (`GET /api/orders/changes`), with real `ordo serve` processes: every
//! change once and in order through a leader kill and a follower restart; retention and the
//! 410 with list-then-watch; a consumer that falls behind is cut off with a resume revision;
//! many filtered subscribers at once.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use ordo::client::{Client, ClientConfig, ClientError, NewOrderRequest, WatchFilter};
use ordo::wire::{ChangeJson, OrderListJson};
use tokio::time::Instant;

fn client_for(cluster: &TestCluster) -> Client {
    client_starting_at(cluster, cluster.ids()[0])
}

/// A client whose first pick is node `first` (it goes round the list from there).
fn client_starting_at(cluster: &TestCluster, first: u64) -> Client {
    let mut ids = cluster.ids();
    let at = ids.iter().position(|id| *id == first).unwrap();
    ids.rotate_left(at);
    let mut config = ClientConfig::new(ids.into_iter().map(|id| cluster.url(id, "")));
    config.deadline = Duration::from_secs(30);
    Client::new(config)
}

/// The cluster's newest revision, from a linearizable listing.
async fn newest_revision(client: &Client) -> u64 {
    let q = ordo::client::ListQuery {
        per_page: Some(1),
        ..Default::default()
    };
    client
        .list_orders(&q, ordo::client::ReadMode::Linearizable)
        .await
        .unwrap()
        .value
        .revision
        .unwrap()
}

/// Every order, as a linearizable listing shows them.
async fn all_listed(client: &Client) -> (Vec<ordo::wire::OrderJson>, u64) {
    let mut orders = Vec::new();
    let mut revision = None;
    for page in 1..10_000 {
        let q = ordo::client::ListQuery {
            page: Some(page),
            per_page: Some(100),
            ..Default::default()
        };
        let list: OrderListJson = client
            .list_orders(&q, ordo::client::ReadMode::Linearizable)
            .await
            .unwrap()
            .value;
        revision.get_or_insert(list.revision.unwrap());
        let done = list.orders.len() < 100;
        orders.extend(list.orders);
        if done {
            break;
        }
    }
    (orders, revision.unwrap())
}

/// Three nodes started with `args`, a client for them, and the leader.
async fn start_with(args: &[&str]) -> (TestCluster, Arc<Client>, u64) {
    let args = args.iter().map(|s| s.to_string()).collect();
    let mut cluster = TestCluster::new(Path::new(BIN), 3, None, args);
    cluster.start_all().await;
    let client = Arc::new(client_for(&cluster));
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    (cluster, client, leader)
}

/// `writers` tasks each create `each` orders for `customer` (with a note of `note_bytes`).
async fn write_orders(
    client: &Arc<Client>,
    writers: u64,
    each: u64,
    customer: &str,
    note_bytes: usize,
) {
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let client = client.clone();
            let customer = format!("{customer}{w}");
            tokio::spawn(async move {
                for i in 0..each {
                    let mut order = NewOrderRequest::new(customer.as_str()).item("x", 1, i);
                    if note_bytes > 0 {
                        order = order.note("n".repeat(note_bytes));
                    }
                    client
                        .create_order(&order, None)
                        .await
                        .unwrap_or_else(|e| panic!("writer {w}: {e}"));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// A raw change-feed request to `node` on a connection with a 4 KiB receive buffer, its
/// answer's head read (200): not reading on soon fills the path between the node and this
/// client, and the node's stream stalls (loopback's default buffers would take megabytes).
async fn stalling_subscriber(
    cluster: &TestCluster,
    node: u64,
    request: &str,
) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket
        .connect(cluster.nodes[&node].addr.parse().unwrap())
        .await
        .unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        conn.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    conn
}

/// The changes a watch collects in the background, how far it has got, and its task (which
/// ends with the watch's error, if it fails).
struct Collected {
    seen: Arc<Mutex<Vec<ChangeJson>>>,
    position: ordo::client::WatchPosition,
    task: tokio::task::JoinHandle<Option<ClientError>>,
}

/// Collects a watch's changes in the background (see `Collected`).
async fn collect(client: Arc<Client>, since: u64, filter: WatchFilter) -> Collected {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let into = seen.clone();
    let (position_tx, position_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        // Longer than the nodes' 15 s heartbeat: a stream that stops delivering must not be
        // rescued by reconnecting after a silence.
        let (changes, position) =
            client.watch_with_position(since, filter, Duration::from_secs(60));
        let _ = position_tx.send(position);
        futures_util::pin_mut!(changes);
        while let Some(change) = changes.next().await {
            match change {
                Ok(c) => into.lock().unwrap().push(c),
                Err(e) => return Some(e),
            }
        }
        None
    });
    let position = position_rx.await.expect("the watch task starts");
    Collected {
        seen,
        position,
        task,
    }
}

async fn wait_for_revision(seen: &Mutex<Vec<ChangeJson>>, revision: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.lock().unwrap().last().map_or(0, |c| c.revision) < revision {
        assert!(
            Instant::now() < deadline,
            "{what}: the watch never reached revision {revision} (at {:?})",
            seen.lock().unwrap().last().map(|c| c.revision)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_every_change_once_in_order_through_a_leader_kill_and_a_follower_restart() {
    let mut cluster = start_cluster(3).await;
    let client = Arc::new(client_for(&cluster));
    // The watch streams from the leader first, so that killing the leader kills its stream.
    let first_leader = cluster.wait_for_leader(&cluster.ids()).await;
    let watching = Arc::new(client_starting_at(&cluster, first_leader));
    let Collected {
        seen,
        task: watcher,
        ..
    } = collect(watching, 0, WatchFilter::default()).await;

    // Writes: creates and status changes, through the client (which retries on failover).
    let mut ids = Vec::new();
    let write_round = |client: Arc<Client>, round: usize| async move {
        let mut made = Vec::new();
        for i in 0..15 {
            let order = client
                .create_order(
                    &NewOrderRequest::new(format!("c{}", i % 3)).item("x", 1, 100),
                    None,
                )
                .await
                .unwrap_or_else(|e| panic!("round {round} create {i}: {e}"))
                .order;
            if i % 2 == 0 {
                client
                    .set_status(order.id, "paid", None, None)
                    .await
                    .unwrap_or_else(|e| panic!("round {round} pay {}: {e}", order.id));
            }
            made.push(order.id);
        }
        made
    };
    ids.extend(write_round(client.clone(), 1).await);

    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    cluster.kill(leader);
    ids.extend(write_round(client.clone(), 2).await);

    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    cluster.stop(follower).await;
    cluster.spawn(leader);
    ids.extend(write_round(client.clone(), 3).await);
    cluster.spawn(follower);
    ids.extend(write_round(client.clone(), 4).await);

    let newest = newest_revision(&client).await;
    wait_for_revision(&seen, newest, "after the writes").await;
    watcher.abort();
    let seen = seen.lock().unwrap().clone();

    // Exactly revisions 1..=newest, each once, in order.
    let revisions: Vec<u64> = seen.iter().map(|c| c.revision).collect();
    assert_eq!(revisions, (1..=newest).collect::<Vec<_>>());
    // 60 creates and 4 x 8 status changes, none lost or doubled.
    let count = |kind: &str| seen.iter().filter(|c| c.kind == kind).count();
    assert_eq!(
        (count("order.created"), count("order.status_changed")),
        (ids.len(), 32)
    );
    assert_eq!(newest as usize, ids.len() + 32);
    // Folding the events gives the final listing, order for order.
    let mut folded: BTreeMap<u64, ordo::wire::OrderJson> = BTreeMap::new();
    for c in &seen {
        folded.insert(c.order.id, c.order.clone());
    }
    let (listed, _) = all_listed(&client).await;
    assert_eq!(folded.into_values().collect::<Vec<_>>(), listed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_since_below_retention_is_410_and_list_then_watch_misses_nothing() {
    let (cluster, client, _) = start_with(&["--changes-keep", "10"]).await;
    for i in 0..30 {
        client
            .create_order(&NewOrderRequest::new("r").item("x", 1, i), None)
            .await
            .unwrap();
    }
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let (status, body) = send(
        cluster
            .http
            .get(cluster.url(leader, "/api/orders/changes?since=0")),
    )
    .await
    .unwrap();
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error"]["code"], "revision_gone");
    let oldest = body["error"]["oldest_revision"].as_u64().unwrap();
    assert!((21..=30).contains(&oldest), "{body}");
    // The client says the same, typed.
    let failed = collect(client.clone(), 0, WatchFilter::default()).await;
    assert!(matches!(
        failed.task.await.unwrap(),
        Some(ClientError::RevisionGone { .. })
    ));

    // List, then watch from the listing's revision: the listing plus the events make every
    // order, none missing.
    let (listed, revision) = all_listed(&client).await;
    assert_eq!((listed.len(), revision), (30, 30));
    let Collected {
        seen,
        task: watcher,
        ..
    } = collect(client.clone(), revision, WatchFilter::default()).await;
    // Each write answers with its change's revision: the id of its event.
    let mut answered = Vec::new();
    for i in 0..5 {
        let created = client
            .create_order(&NewOrderRequest::new("after").item("x", 1, i), None)
            .await
            .unwrap();
        answered.push((created.order.id, created.order.revision));
    }
    let paid = client.set_status(31, "paid", None, None).await.unwrap();
    answered.push((paid.id, paid.revision));
    wait_for_revision(&seen, 36, "list then watch").await;
    watcher.abort();
    let events: Vec<(u64, Option<u64>)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|c| (c.order.id, Some(c.revision)))
        .collect();
    assert_eq!(events, answered);
    let ids: Vec<u64> = events.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [31, 32, 33, 34, 35, 31]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_falls_behind_is_cut_off_with_where_to_resume() {
    use tokio::io::AsyncReadExt;
    let (cluster, client, leader) =
        start_with(&["--changes-max-lag", "50", "--changes-lag-grace-ms", "500"]).await;
    // Opened, then not read while 3000 changes of about 1.3 KB (about 4 MB) happen.
    let mut conn = stalling_subscriber(
        &cluster,
        leader,
        "GET /api/orders/changes?since=0 HTTP/1.1\r\nHost: ordo\r\nConnection: close\r\n\r\n",
    )
    .await;
    write_orders(&client, 8, 375, "slow", 1000).await;
    // Reading now: some events, then the last words, then the end (the node closes).
    let mut text = String::new();
    let read_all = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read_all)
        .await
        .expect("the node neither cut the stream off nor ended it");
    let last = text
        .split("\n\n")
        .filter(|e| e.contains("event:"))
        .last()
        .unwrap_or_default();
    assert!(last.contains("event: feed.lagged"), "{last}");
    let data = last.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let resume: serde_json::Value = serde_json::from_str(data).unwrap();
    let resume_from = resume["resume_from"].as_u64().unwrap();
    // The last event it was sent is the one to resume after.
    let sent: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: ")?.parse().ok())
        .collect();
    assert_eq!(sent.last().copied().unwrap_or(0), resume_from, "{sent:?}");
    assert!(resume_from < 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_filtered_subscribers_get_exactly_their_changes() {
    let cluster = start_cluster(3).await;
    let client = Arc::new(client_for(&cluster));
    let start = newest_revision(&client).await;
    let customers = ["ann", "bob", "cid", "dee"];
    let mut watchers = Vec::new();
    for i in 0..100 {
        let filter = WatchFilter {
            customer_id: Some(customers[i % 4].to_string()),
            status: (i % 2 == 1).then(|| "paid".to_string()),
            // A third gather changes for 50 ms: the same events, in fewer chunks.
            batch_ms: (i % 3 == 0).then_some(50),
        };
        let Collected { seen, task, .. } = collect(client.clone(), start, filter.clone()).await;
        watchers.push((filter, seen, task));
    }
    let mut expected: BTreeMap<(String, Option<String>), Vec<u64>> = BTreeMap::new();
    let mut revision = start;
    for i in 0..40u64 {
        let customer = customers[(i % 4) as usize];
        let order = client
            .create_order(&NewOrderRequest::new(customer).item("x", 1, i), None)
            .await
            .unwrap()
            .order;
        revision += 1;
        expected
            .entry((customer.to_string(), None))
            .or_default()
            .push(revision);
        if i % 3 == 0 {
            client
                .set_status(order.id, "paid", None, None)
                .await
                .unwrap();
            revision += 1;
            for status in [None, Some("paid".to_string())] {
                expected
                    .entry((customer.to_string(), status))
                    .or_default()
                    .push(revision);
            }
        }
    }
    assert_eq!(newest_revision(&client).await, revision);
    for (filter, seen, _) in &watchers {
        let key = (filter.customer_id.clone().unwrap(), filter.status.clone());
        let want = expected.get(&key).cloned().unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.lock().unwrap().len() < want.len() {
            assert!(
                Instant::now() < deadline,
                "{key:?}: {:?} of {want:?}",
                seen.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Once all have their count, a last look: exactly the matching changes, each once.
    for (filter, seen, task) in watchers {
        let key = (filter.customer_id.clone().unwrap(), filter.status.clone());
        let got: Vec<u64> = seen.lock().unwrap().iter().map(|c| c.revision).collect();
        assert_eq!(
            got,
            expected.get(&key).cloned().unwrap_or_default(),
            "{key:?}"
        );
        task.abort();
    }
}

/// A filtered watch whose last match is long gone from the change log still resumes after a
/// failover: the node tells it how far it got (progress marks), not only what matched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_watch_resumes_past_changes_it_did_not_want() {
    let (mut cluster, client, leader) = start_with(&["--changes-keep", "20"]).await;
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    // Watches through a follower first (killing it does not stop the writes).
    let watching = Arc::new(client_starting_at(&cluster, follower));
    let filter = WatchFilter {
        customer_id: Some("rare".into()),
        status: None,
        batch_ms: None,
    };
    let Collected {
        seen,
        position,
        task: watcher,
    } = collect(watching, 0, filter).await;
    let rare = || NewOrderRequest::new("rare").item("x", 1, 1);
    client.create_order(&rare(), None).await.unwrap();
    for i in 0..60 {
        let other = NewOrderRequest::new("other").item("x", 1, i);
        client.create_order(&other, None).await.unwrap();
    }
    // The watch has passed the 60 other changes (it only got a progress mark for them)...
    let newest = newest_revision(&client).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let at = position.get();
        if at >= newest {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the watch is at {at}, not {newest}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... so when its node dies, it resumes from there on another node, though its last
    // match (revision 1) is no longer held (the nodes keep 20).
    cluster.kill(follower);
    client.create_order(&rare(), None).await.unwrap();
    wait_for_revision(&seen, newest + 1, "the rare order after the failover").await;
    assert!(
        !watcher.is_finished(),
        "the watch ended: {:?}",
        watcher.await
    );
    watcher.abort();
    let got: Vec<u64> = seen.lock().unwrap().iter().map(|c| c.order.id).collect();
    assert_eq!(got, vec![1, 62]);
}

/// A client that stops reading altogether is disconnected once it has taken no bytes for
/// `--write-stall-timeout-ms`, and its subscriber slot is free again. With one slot per node
/// (`--changes-max-subscribers 1`), a second subscriber is refused (503) until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_and_its_slot_freed() {
    let (cluster, client, leader) = start_with(&[
        "--write-stall-timeout-ms",
        "1000",
        "--changes-max-subscribers",
        "1",
    ])
    .await;
    let conn = stalling_subscriber(
        &cluster,
        leader,
        "GET /api/orders/changes?since=0 HTTP/1.1\r\nHost: ordo\r\n\r\n",
    )
    .await;
    let second = || {
        cluster
            .http
            .get(cluster.url(leader, "/api/orders/changes"))
            .send()
    };
    assert_eq!(second().await.unwrap().status(), 503, "one slot, taken");

    // Enough changes to fill the path to the stalled client (about 4 MB).
    write_orders(&client, 8, 375, "stall", 1000).await;
    // The node gives the stalled stream up and its slot with it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = second().await.unwrap().status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            Instant::now() < deadline,
            "the stalled subscriber still holds its slot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(conn);
}

/// A node that catches up by installing a snapshot gets the change log with it: it serves the
/// same window as the leader (the same oldest revision), not one that starts at the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_installed_a_snapshot_serves_the_same_window() {
    let (mut cluster, client, leader) = start_with(&[
        "--snapshot-every-logs",
        "100",
        "--snapshot-growth-percent",
        "0",
        "--changes-keep",
        "50",
    ])
    .await;
    let behind = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    cluster.kill(behind);
    // More than the 1000 entries the log keeps past a snapshot, so it must get a snapshot:
    // one writer, so that each order is an entry of its own (the leader puts concurrent
    // writes into one entry).
    const WRITTEN: u64 = 1300;
    write_orders(&client, 1, WRITTEN, "s", 0).await;
    cluster.spawn(behind);
    let applied = |s: Option<serde_json::Value>| s.and_then(|s| s["last_applied"].as_u64());
    let target = applied(cluster.status(leader).await).unwrap();
    cluster.wait_applied(behind, target).await;

    let metrics = cluster
        .http
        .get(cluster.url(behind, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let installs = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ordo_snapshot_installs_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        installs >= 1.0,
        "node {behind} caught up without a snapshot"
    );
    let oldest = |id: u64| {
        let req = cluster
            .http
            .get(cluster.url(id, "/api/orders/changes?since=0"));
        async move {
            let (status, body) = send(req).await.unwrap();
            assert_eq!(status, 410, "{body}");
            body["error"]["oldest_revision"].as_u64().unwrap()
        }
    };
    // One more change after it is back, so that both trim in the same apply. A snapshot dump
    // running on a node at that apply holds the node's trim back until its next apply
    // (`store::changes`): then one more change, a bounded number of times.
    let mut newest = WRITTEN;
    let (mut on_leader, mut on_behind) = (0, 0);
    for _ in 0..3 {
        client
            .create_order(&NewOrderRequest::new("last").item("x", 1, 1), None)
            .await
            .unwrap();
        newest += 1;
        let target = applied(cluster.status(leader).await).unwrap();
        cluster.wait_applied(behind, target).await;
        (on_leader, on_behind) = (oldest(leader).await, oldest(behind).await);
        if (on_leader, on_behind) == (newest - 50 + 1, newest - 50 + 1) {
            break;
        }
    }
    assert_eq!(on_behind, on_leader, "the windows differ");
    assert_eq!(
        on_leader,
        newest - 50 + 1,
        "the newest 50 of {newest} changes"
    );
    // And it streams them, from the oldest on.
    let mut stream = reqwest::Client::new()
        .get(cluster.url(
            behind,
            &format!("/api/orders/changes?since={}", on_behind - 1),
        ))
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), stream.chunk())
            .await
            .expect("an event")
            .unwrap()
            .expect("the stream goes on");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.starts_with(&format!("id: {on_behind}\n")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_gets_heartbeats_and_a_new_change_at_once() {
    let (cluster, client, _) = start_with(&["--changes-heartbeat-ms", "300"]).await;
    let since = newest_revision(&client).await;
    let node = cluster.ids()[1];
    let mut stream = reqwest::Client::new()
        .get(cluster.url(node, &format!("/api/orders/changes?since={since}")))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    // With nothing written, the stream carries comment lines only: heartbeats.
    let mut text = String::new();
    read_until(
        &mut stream,
        &mut text,
        |t| t.matches(":\n\n").count() >= 3,
        "three heartbeats",
    )
    .await;
    assert!(
        text.split("\n\n").all(|e| e.is_empty() || e == ":"),
        "{text:?}"
    );
    // A change then arrives as one complete event.
    let order = client
        .create_order(&NewOrderRequest::new("hb").item("x", 1, 100), None)
        .await
        .unwrap()
        .order;
    text.clear();
    read_until(
        &mut stream,
        &mut text,
        |t| t.contains("\ndata: ") && t.ends_with("\n\n"),
        "the event",
    )
    .await;
    let event = text.split("\n\n").find(|e| e.contains("data: ")).unwrap();
    let lines: Vec<&str> = event.lines().filter(|l| *l != ":").collect();
    assert_eq!(lines[0], format!("id: {}", since + 1), "{text:?}");
    assert_eq!(lines[1], "event: order.created", "{text:?}");
    let change: ChangeJson =
        serde_json::from_str(lines[2].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!((change.revision, change.order.id), (since + 1, order.id));
}

/// A node cut off from its cluster (both others gone: it knows no leader) ends its caught-up
/// streams with `feed.error` and where to resume, so that their clients watch through another
/// node; before, it sent heartbeats for ever, and a client never learnt of the changes the
/// rest of the cluster made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_its_cluster_sends_its_watchers_on() {
    let (mut cluster, client, _) = start_with(&["--changes-heartbeat-ms", "300"]).await;
    let since = newest_revision(&client).await;
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let watched = cluster.ids().into_iter().find(|n| *n != leader).unwrap();
    let mut stream = reqwest::Client::new()
        .get(cluster.url(watched, &format!("/api/orders/changes?since={since}")))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    for other in cluster.ids().into_iter().filter(|n| *n != watched) {
        cluster.kill(other);
    }
    let mut text = String::new();
    read_until(
        &mut stream,
        &mut text,
        |t| t.contains("event: feed.error"),
        "feed.error",
    )
    .await;
    assert!(
        text.contains(&format!("\"resume_from\":{since}")),
        "{text:?}"
    );
}
