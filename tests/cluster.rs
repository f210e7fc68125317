//! Cluster tests with real `ordo` processes: election, forwarding, failover under writes,
//! loss of quorum, a paused leader (and a follower's reads meanwhile), full restart, and
//! membership changes.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use ordo::wire::ErrorCode;
use serde_json::{json, Value};
use tokio::time::Instant;

fn notes(orders: &[Value]) -> Vec<String> {
    orders
        .iter()
        .map(|o| o["note"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_every_node_are_readable_through_every_node() {
    let cluster = start_cluster(3).await;
    let mut written = Vec::new();
    for node in cluster.ids() {
        for i in 0..4 {
            let key = format!("n{node}-{i}");
            let order = create_until_acked(&cluster, &[node], &format!("cust-{node}"), &key).await;
            written.push(order);
        }
    }
    for node in cluster.ids() {
        for order in &written {
            let (status, body) = get(&cluster, node, &format!("/api/orders/{}", order["id"]))
                .await
                .unwrap();
            assert_eq!(status, 200);
            // As the create answered, its revision included.
            assert!(body["revision"].as_u64().is_some_and(|r| r > 0), "{body}");
            assert_eq!(
                &body, order,
                "node {node} reads order {} differently",
                order["id"]
            );
        }
        let all = all_orders(&cluster, node, false).await;
        assert_eq!(all.len(), written.len());
        let (status, body) = get(&cluster, node, "/api/orders?customer_id=cust-2")
            .await
            .unwrap();
        assert_eq!((status, body["total"].as_u64()), (200, Some(4)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_under_writes_loses_and_duplicates_nothing() {
    let mut cluster = start_cluster(3).await;
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let total = 120;
    let mut acked = Vec::new();
    let mut killed = false;
    for i in 0..total {
        let key = format!("w-{i}");
        let alive: Vec<u64> = cluster
            .ids()
            .into_iter()
            .filter(|id| !killed || *id != leader)
            .collect();
        acked.push(create_until_acked(&cluster, &alive, "stream", &key).await);
        if i == 40 {
            cluster.kill(leader);
            killed = true;
        }
    }
    let survivors: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    let new_leader = cluster.wait_for_leader(&survivors).await;
    assert_ne!(new_leader, leader);

    let orders = all_orders(&cluster, new_leader, false).await;
    let expected: BTreeSet<String> = (0..total).map(|i| format!("w-{i}")).collect();
    let found = notes(&orders);
    assert_eq!(found.len(), total, "duplicated or lost orders: {found:?}");
    assert_eq!(found.into_iter().collect::<BTreeSet<_>>(), expected);
    for order in &acked {
        let (status, body) = get(
            &cluster,
            new_leader,
            &format!("/api/orders/{}", order["id"]),
        )
        .await
        .unwrap();
        assert_eq!((status, &body["note"]), (200, &order["note"]));
    }

    // The killed node comes back, catches up and serves the same data.
    cluster.spawn(leader);
    cluster.wait_caught_up(leader, new_leader).await;
    assert_eq!(
        cluster.digest(leader).await["digest"],
        cluster.digest(new_leader).await["digest"]
    );
    assert_eq!(all_orders(&cluster, leader, true).await, orders);
    assert_eq!(all_orders(&cluster, leader, false).await, orders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn majority_down_fails_with_503_stale_reads_answer_and_recovery() {
    let mut cluster = start_cluster(3).await;
    let first = create_until_acked(&cluster, &[1, 2, 3], "q", "before").await;
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let followers: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    // Kill one follower and the leader; the other follower is alone. It must hold `first`
    // before: an acknowledgement needs only the leader and one follower to have it.
    let (alone, other) = (followers[0], followers[1]);
    cluster.wait_caught_up(alone, leader).await;
    cluster.kill(other);
    cluster.kill(leader);
    let before = all_orders(&cluster, alone, true).await;

    // Writes and linearizable reads fail with 503 (a write proposed just before the quorum
    // went away may end 504: its fate is unknown). Each answer comes back bounded.
    let deadline = Instant::now() + DEADLINE;
    let (mut write_503, mut read_503) = (false, false);
    while !(write_503 && read_503) {
        assert!(
            Instant::now() < deadline,
            "no 503 while the majority is down"
        );
        let (ws, wb) = create(&cluster, alone, "q", Some("during"), "during")
            .await
            .expect("an HTTP answer");
        assert!(ws == 503 || ws == 504, "write without quorum: {ws} {wb}");
        write_503 |= ws == 503;
        let (rs, rb) = get(&cluster, alone, &format!("/api/orders/{}", first["id"]))
            .await
            .expect("an HTTP answer");
        assert_eq!(rs, 503, "linearizable read without quorum: {rb}");
        read_503 = true;
        assert!(
            [ErrorCode::NoLeader.as_str(), ErrorCode::NoQuorum.as_str()]
                .contains(&rb["error"]["code"].as_str().unwrap()),
            "{rb}"
        );
    }
    // Stale reads still answer from local state; nothing was half-written.
    let (status, body) = get(
        &cluster,
        alone,
        &format!("/api/orders/{}?consistency=stale", first["id"]),
    )
    .await
    .unwrap();
    assert_eq!((status, &body), (200, &first));
    assert_eq!(all_orders(&cluster, alone, true).await, before);

    // One node back: a majority again, and the cluster serves.
    cluster.spawn(other);
    cluster.wait_for_leader(&[alone, other]).await;
    create_until_acked(&cluster, &[alone, other], "q", "during").await;
    let orders = all_orders(&cluster, other, false).await;
    let during: Vec<_> = notes(&orders)
        .into_iter()
        .filter(|n| n == "during")
        .collect();
    assert_eq!(during.len(), 1, "the retried write exists exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_paused_leader_serves_no_stale_read_and_loses_no_write() {
    let mut cluster = start_cluster(3).await;
    let order = create_until_acked(&cluster, &[1, 2, 3], "p", "paused-1").await;
    let id = order["id"].as_u64().unwrap();
    let old = cluster.wait_for_leader(&cluster.ids()).await;
    cluster.pause(old);
    let others: Vec<u64> = cluster.ids().into_iter().filter(|n| *n != old).collect();
    let new = cluster.wait_for_leader(&others).await;

    // Move the order on while the old leader sleeps.
    let (status, body) = send(
        cluster
            .http
            .patch(cluster.url(new, &format!("/api/orders/{id}")))
            .json(&json!({"status": "paid"})),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");

    cluster.resume(old);
    // Its first linearizable read must not be the stale "pending".
    let (status, body) = get(&cluster, old, &format!("/api/orders/{id}"))
        .await
        .unwrap();
    assert!(
        status == 503 || (status == 200 && body["status"] == "paid"),
        "stale read from old leader: {status} {body}"
    );

    // A write through the old leader either fails or is really committed.
    let (status, body) = create(&cluster, old, "p", Some("after-resume"), "after-resume")
        .await
        .unwrap();
    if status == 201 {
        let (s, b) = get(&cluster, new, &format!("/api/orders/{}", body["id"]))
            .await
            .unwrap();
        assert_eq!((s, &b["note"]), (200, &json!("after-resume")));
    } else {
        assert!(status == 503 || status == 504, "{status} {body}");
    }
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let (status, body) = get(&cluster, leader, &format!("/api/orders/{id}"))
        .await
        .unwrap();
    assert_eq!((status, &body["status"]), (200, &json!("paid")));
}

/// A linearizable read on a follower whose leader froze (SIGSTOP: its connections stay
/// open and answer nothing) is answered once another leader is known: the follower gives up
/// its read-index call to the frozen leader then, not at the request's deadline (20 s here,
/// far past an election; the test's HTTP client gives up at 20 s too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_s_read_moves_on_from_a_frozen_leader() {
    let args = ["--request-timeout-ms", "20000"];
    let mut cluster = TestCluster::new(
        std::path::Path::new(BIN),
        3,
        None,
        args.iter().map(|s| s.to_string()).collect(),
    );
    cluster.start_all().await;
    let order = create_until_acked(&cluster, &cluster.ids(), "f", "frozen-1").await;
    let path = format!("/api/orders/{}", order["id"]);
    let old = cluster.wait_for_leader(&cluster.ids()).await;
    let follower = cluster.ids().into_iter().find(|n| *n != old).unwrap();
    // A read through the leader first, so the follower holds a connection to it.
    let (status, body) = get(&cluster, follower, &path).await.unwrap();
    assert_eq!(status, 200, "{body}");

    cluster.pause(old);
    let read = get(&cluster, follower, &path).await;
    cluster.resume(old);
    let (status, body) = read.unwrap();
    assert_eq!((status, &body["note"]), (200, &json!("frozen-1")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_all_keeps_every_order() {
    let mut cluster = start_cluster(3).await;
    for i in 0..15 {
        create_until_acked(&cluster, &[1, 2, 3], "r", &format!("r-{i}")).await;
    }
    let before = all_orders(&cluster, 1, false).await;
    for id in cluster.ids() {
        cluster.stop(id).await;
    }
    for id in cluster.ids() {
        cluster.spawn(id);
    }
    cluster.wait_for_leader(&cluster.ids()).await;
    for id in cluster.ids() {
        assert_eq!(
            all_orders(&cluster, id, false).await,
            before,
            "node {id} after full restart"
        );
    }
    // And after SIGKILL of all three.
    for id in cluster.ids() {
        cluster.kill(id);
    }
    for id in cluster.ids() {
        cluster.spawn(id);
    }
    cluster.wait_for_leader(&cluster.ids()).await;
    assert_eq!(all_orders(&cluster, 2, false).await, before);
}

/// With no writes, the leader keeps the state machine's clock (the one idempotency records
/// expire by) within a minute of its own, by ticks that change nothing else: the next order gets
/// the next id, and the key used before still answers the first order. Without the ticks
/// the clock stands still while the cluster idles, and a record made after the idle time
/// would expire early in real time once writes catch the clock up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cluster_keeps_its_state_clock_near_the_time() {
    let cluster = start_cluster(3).await;
    let first = create_until_acked(&cluster, &[1, 2, 3], "t", "tick-1").await;
    let clock_of = |status: &Value| status["state_clock_ms"].as_i64();
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let start = clock_of(&cluster.status(leader).await.unwrap()).expect("a clock once written");
    // Ticks come once the clock lags by a minute; allow a slow machine three times that.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let leader = cluster.wait_for_leader(&cluster.ids()).await;
        let now = cluster.status(leader).await.and_then(|s| clock_of(&s));
        if now.is_some_and(|c| c >= start + 60_000) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the state clock stayed at {now:?} (written at {start}) while the cluster idled"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let again = create_until_acked(&cluster, &[1, 2, 3], "t", "tick-1").await;
    assert_eq!(again, first, "the key still answers the first order");
    let next = create_until_acked(&cluster, &[1, 2, 3], "t", "tick-2").await;
    assert_eq!(next["id"].as_u64(), first["id"].as_u64().map(|id| id + 1));
    assert_eq!(all_orders(&cluster, leader, false).await.len(), 2);
}

/// After the whole cluster was stopped for two days (every node restarted with its wall
/// clock two days on, by libfaketime), the first keyed write is applied only once the
/// leader has caught the state machine's clock up: its key's record then lives its 24 h
/// from now, not from before the stop (by which it would expire within seconds of the
/// ticks that follow). The first key still answers its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_write_after_a_long_stop_waits_for_the_clock_to_catch_up() {
    if !std::path::Path::new(ordo_testkit::LIBFAKETIME).exists() {
        eprintln!("SKIPPED: libfaketime is missing (Debian package libfaketime)");
        return;
    }
    const DAY_MS: i64 = 86_400_000;
    let mut cluster = start_cluster(3).await;
    let first = create_until_acked(&cluster, &[1, 2, 3], "s", "stop-1").await;
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let before = cluster.status(leader).await.unwrap()["state_clock_ms"]
        .as_i64()
        .expect("a clock once written");
    for id in cluster.ids() {
        cluster.stop(id).await;
    }
    for id in cluster.ids() {
        cluster.set_env(
            id,
            vec![
                ("LD_PRELOAD".into(), ordo_testkit::LIBFAKETIME.into()),
                ("FAKETIME".into(), "+2d".into()),
                ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
            ],
        );
        cluster.spawn(id);
    }
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let second = create_until_acked(&cluster, &[leader], "s", "stop-2").await;
    let clock = cluster.status(leader).await.unwrap()["state_clock_ms"]
        .as_i64()
        .unwrap();
    assert!(
        clock >= before + 2 * DAY_MS - 120_000,
        "the write was applied with the clock {} min after the stop, not two days",
        (clock - before) / 60_000
    );
    assert_eq!(second["id"].as_u64(), first["id"].as_u64().map(|id| id + 1));
    let again = create_until_acked(&cluster, &[1, 2, 3], "s", "stop-2").await;
    assert_eq!(again, second);
}

/// Sends the request `make` builds until it is answered other than 503 or 504 (no leader for
/// a moment), within the deadline: its status and body.
async fn send_until_served(make: impl Fn() -> reqwest::RequestBuilder) -> (u16, Value) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        // (No answer in the client's time, as a slow catch-up may take: asked again too.)
        match send(make()).await {
            Ok((status, body)) if status != 503 && status != 504 => return (status, body),
            answer => assert!(Instant::now() < deadline, "{answer:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The leader, a follower, and the other ids: (leader, removed, kept).
async fn a_follower_to_remove(cluster: &TestCluster) -> (u64, u64, Vec<u64>) {
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let removed = cluster.ids().into_iter().find(|n| *n != leader).unwrap();
    let keep = cluster
        .ids()
        .into_iter()
        .filter(|n| *n != removed)
        .collect();
    (leader, removed, keep)
}

/// The voters a cluster status (or a membership change's answer) lists.
fn voters_of(status: &Value) -> BTreeSet<String> {
    status["members"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn voter_set(ids: &[u64]) -> BTreeSet<String> {
    ids.iter().map(u64::to_string).collect()
}

/// `POST /cluster/members` through node `via`.
fn members_request(cluster: &TestCluster, via: u64, members: &[u64]) -> reqwest::RequestBuilder {
    let body = json!({ "members": members });
    cluster
        .http
        .post(cluster.url(via, "/cluster/members"))
        .json(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_learner_promote_and_remove_a_node() {
    let mut cluster = start_cluster(3).await;
    for i in 0..10 {
        create_until_acked(&cluster, &[1, 2, 3], "m", &format!("m-{i}")).await;
    }
    cluster.add_node(4);
    let addr4 = cluster.nodes[&4].addr.clone();
    // A call the new node cannot decode, claiming some cluster's id, teaches it nothing: it
    // would otherwise keep that id and refuse the real leader's appends (409) for good.
    let deadline = Instant::now() + DEADLINE;
    while cluster.status(4).await.is_none() {
        assert!(Instant::now() < deadline, "node 4 never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = send(
        cluster
            .http
            .post(cluster.url(4, "/raft/append"))
            .header("x-ordo-cluster", "0123456789abcdef0123456789abcdef")
            .body("not an append"),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");
    // Sent to a follower on purpose: it forwards membership changes to the leader.
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    let follower = [1, 2, 3].into_iter().find(|n| *n != leader).unwrap();
    let (status, body) = send(
        cluster
            .http
            .post(cluster.url(follower, "/cluster/learners"))
            .json(&json!({"id": 4, "addr": addr4})),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["learners"]["4"], json!(addr4));

    // Refused before anything is proposed: a learner at another node's address (it would
    // answer for that node), and a member added again at another address.
    let addr2 = cluster.nodes[&2].addr.clone();
    for (id, addr) in [(5, addr2.as_str()), (4, "127.0.0.1:1")] {
        let (status, body) = send(
            cluster
                .http
                .post(cluster.url(follower, "/cluster/learners"))
                .json(&json!({"id": id, "addr": addr})),
        )
        .await
        .unwrap();
        assert_eq!(
            (status, &body["error"]["field"]),
            (422, &json!("addr")),
            "{body}"
        );
    }

    // A learner that fell behind (stopped while more than a thousand entries were written:
    // one per sequential create) is not made a voter until it has caught up.
    cluster.pause(4);
    for i in 0..1050 {
        create_until_acked(&cluster, &[leader], "m", &format!("behind-{i}")).await;
    }
    let keep: Vec<u64> = vec![2, 3, 4];
    // (A moment without a leader is a 503 to retry; anything else must be the refusal.)
    let (status, body) = send_until_served(|| members_request(&cluster, follower, &keep)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], json!("members"), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("caught up"), "{body}");
    cluster.resume(4);

    // Caught up, through a follower too: membership calls take the same forwarding path as
    // writes.
    let deadline = Instant::now() + DEADLINE;
    let body = loop {
        let (status, body) = send(members_request(&cluster, follower, &keep))
            .await
            .unwrap();
        if status == 200 {
            break body;
        }
        assert!(
            [422, 503, 504].contains(&status) && Instant::now() < deadline,
            "{status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(voters_of(&body), voter_set(&keep));

    // A learner that died is taken out of the membership (it would stay for ever otherwise,
    // its id and address taken). Through a voter of the new set: node 1 may be the leader that
    // just stepped down (a 503 until the others elect).
    cluster.add_node(5);
    let addr5 = cluster.nodes[&5].addr.clone();
    let add5 = || {
        let body = json!({"id": 5, "addr": addr5});
        cluster
            .http
            .post(cluster.url(2, "/cluster/learners"))
            .json(&body)
    };
    let (status, body) = send_until_served(add5).await;
    assert_eq!(status, 200, "{body}");
    cluster.kill(5);
    let remove5 = || cluster.http.delete(cluster.url(2, "/cluster/learners/5"));
    let (status, body) = send_until_served(remove5).await;
    // (A 422 "not in the membership" only as the answer to a retry of a removal made.)
    let retried = status == 422 && body.to_string().contains("not in the membership");
    assert!(status == 200 || retried, "{status} {body}");
    let (_, after) = get(&cluster, 2, "/cluster/status").await.unwrap();
    assert_eq!(after["learners"], json!({}), "{after}");

    cluster.kill(1);
    let leader = cluster.wait_for_leader(&keep).await;
    create_until_acked(&cluster, &keep, "m", "m-after").await;
    let orders = all_orders(&cluster, 4, false).await;
    assert_eq!(orders.len(), 10 + 1050 + 1);
    assert_eq!(all_orders(&cluster, leader, false).await, orders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_node_cleanly() {
    let mut cluster = start_cluster(3).await;
    create_until_acked(&cluster, &[1, 2, 3], "s", "s-1").await;
    cluster.stop(2).await; // asserts a clean exit status within the deadline
    let survivors = [1, 3];
    cluster.wait_for_leader(&survivors).await;
    create_until_acked(&cluster, &survivors, "s", "s-2").await;
}

/// A leader told to stop while a client's upload is stalled must not hold the cluster's
/// writes hostage: Raft stops first, the followers elect, and writes go on while the old
/// leader is still draining its HTTP server. Then the stalled client cannot keep it alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_leader_with_a_stalled_upload_hands_over_at_once() {
    use std::io::Write;
    // A long grace and read timeout, so the old leader is provably still up (draining)
    // when the survivors acknowledge a write.
    let args = [
        "--shutdown-grace-ms",
        "600000",
        "--read-timeout-ms",
        "600000",
    ];
    let mut cluster = TestCluster::new(
        std::path::Path::new(BIN),
        3,
        None,
        args.iter().map(|s| s.to_string()).collect(),
    );
    cluster.start_all().await;
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    create_until_acked(&cluster, &[leader], "t", "t-1").await;

    // Half an upload, then silence.
    let addr = cluster.nodes[&leader].addr.clone();
    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    stalled
        .write_all(
            b"POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{\"customer_id\": \"slo",
        )
        .unwrap();

    cluster.terminate(leader);
    let survivors: Vec<u64> = cluster.ids().into_iter().filter(|n| *n != leader).collect();
    cluster.wait_for_leader(&survivors).await;
    create_until_acked(&cluster, &survivors, "t", "t-2").await;
    assert!(
        !cluster.has_exited(leader),
        "the old leader should still be draining the stalled request"
    );

    // The stalled client goes away: nothing else holds the old leader.
    drop(stalled);
    cluster.wait_stopped(leader).await;
    let orders = all_orders(&cluster, survivors[0], false).await;
    assert_eq!(notes(&orders), vec!["t-1", "t-2"]);
}

/// A client that stops halfway through a request head or body is cut off after the read
/// timeout instead of holding its connection (and a shutdown) forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_heads_and_bodies_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let args = ["--read-timeout-ms", "500"];
    let mut cluster = TestCluster::new(
        std::path::Path::new(BIN),
        1,
        None,
        args.iter().map(|s| s.to_string()).collect(),
    );
    cluster.start_all().await;
    let addr = cluster.nodes[&1].addr.clone();
    let head = "POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n";
    let with_body = format!("{head}Content-Length: 1000\r\n\r\n{{\"customer_id\": \"slo");
    for partial in [head.to_string(), with_body] {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        conn.write_all(partial.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        // Ends when the server closes the connection; a 4xx may come first.
        tokio::time::timeout(DEADLINE, conn.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("connection still open after {DEADLINE:?}: {partial:?}"))
            .ok();
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 4"),
            "{partial:?} got {text}"
        );
    }
    // A body trickled a byte at a time: the read deadline is for the whole body, not for
    // each byte, so the trickle does not keep the connection.
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(format!("{head}Content-Length: 1000\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (mut rd, mut wr) = conn.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..300 {
            if wr.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        // Keep the write half open: only the server may end this connection.
        std::future::pending::<()>().await;
    });
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, rd.read_to_end(&mut answer))
        .await
        .expect("a trickled body kept its connection open")
        .ok();
    trickle.abort();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 4"),
        "trickle got {text}"
    );

    // And the node still serves.
    create_until_acked(&cluster, &[1], "t", "after-stalls").await;
}

/// `/livez` answers while the process serves; `/readyz` only while the node can serve
/// traffic: 503 (naming the failed check) on a survivor once a majority is gone, 200 again
/// once a quorum is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_quorum_and_livez_the_process() {
    let mut cluster = start_cluster(3).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    for id in [1, 2, 3] {
        let (status, body) = get(&cluster, id, "/readyz").await.unwrap();
        assert_eq!(
            (status, &body["ready"]),
            (200, &json!(true)),
            "node {id}: {body}"
        );
    }
    let survivor = [1, 2, 3].into_iter().find(|n| *n != leader).unwrap();
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != survivor).collect();
    for id in &others {
        cluster.kill(*id);
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let body = loop {
        let (status, body) = get(&cluster, survivor, "/readyz").await.unwrap();
        if status == 503 {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(body["ready"], json!(false), "{body}");
    let failed: Vec<&String> = body["checks"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, c)| c["ok"] == json!(false))
        .map(|(name, _)| name)
        .collect();
    assert!(!failed.is_empty(), "{body}");
    let (status, _) = get(&cluster, survivor, "/livez").await.unwrap();
    assert_eq!(status, 200);

    cluster.spawn(others[0]);
    cluster.wait_for_leader(&[survivor, others[0]]).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (status, body) = get(&cluster, survivor, "/readyz").await.unwrap();
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready again: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A node's log written to a file carries no terminal escape codes, and
/// `ORDO_LOG_FORMAT=json` makes every line a JSON object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_files_are_plain_or_json_lines() {
    let mut cluster = TestCluster::new(std::path::Path::new(BIN), 3, None, Vec::new());
    cluster.set_env(3, vec![("ORDO_LOG_FORMAT".into(), "json".into())]);
    cluster.start_all().await;
    create_until_acked(&cluster, &[1, 2, 3], "log", "log-1").await;
    for id in [1, 2, 3] {
        let log = std::fs::read_to_string(&cluster.nodes[&id].log_path).unwrap();
        assert!(log.contains("node serving"), "node {id}: {log}");
        assert!(!log.contains('\u{1b}'), "node {id} logged escape codes");
        if id == 3 {
            for line in log.lines().filter(|l| !l.trim().is_empty()) {
                let v: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
            }
        }
    }
}

/// A change of the voters sent to the node it removes answers once the leader has made it.
/// The leader stops replicating to a node it removed, so that node never receives the entry
/// it waited for: it answered 504 after its whole deadline (about 65 s), a change that was
/// made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_sent_to_the_node_it_removes_is_answered() {
    let cluster = start_cluster(3).await;
    let (leader, removed, keep) = a_follower_to_remove(&cluster).await;
    // (A moment without a leader is a 503 to retry; the same change again is harmless.)
    let (status, body) = send_until_served(|| members_request(&cluster, removed, &keep)).await;
    assert_eq!(status, 200, "{body}");
    // The answer shows the change made, though the removed node may hold it half done.
    assert_eq!(voters_of(&body), voter_set(&keep), "{body}");
    assert!(body.get("joint_voters").is_none(), "{body}");
    // Made: the leader's voters are the others.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, s) = get(&cluster, leader, "/cluster/status").await.unwrap();
        if voters_of(&s) == voter_set(&keep) {
            break;
        }
        assert!(Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node removed from the voters without hearing of it (it was paused, so the removing
/// entry never reached it) goes quiet: its term stops climbing, its log says why and it is
/// not ready; added again, it follows the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_goes_quiet_says_why_and_can_rejoin() {
    let mut cluster = start_cluster(3).await;
    let (leader, removed, keep) = a_follower_to_remove(&cluster).await;
    cluster.pause(removed);
    let (status, body) = send(
        cluster
            .http
            .post(cluster.url(leader, "/cluster/members"))
            .json(&json!({ "members": keep })),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    cluster.resume(removed);

    // It campaigns, a member answers that it holds a newer membership without it, and the
    // node says so in its log, within a generous deadline.
    let log_path = cluster.nodes[&removed].log_path.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("this node was removed from the cluster") {
            break;
        }
        if Instant::now() > deadline {
            cluster.dump_logs(30);
            panic!("node {removed} never said it was removed");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And it campaigns no more: over many election timeouts its term stays put. (Before,
    // it climbed by one per timeout, about every 300 ms.)
    let term = |s: Option<Value>| s.map(|s| s["term"].as_u64().unwrap());
    let first = term(cluster.status(removed).await).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let later = term(cluster.status(removed).await).unwrap();
    assert!(later <= first + 1, "term climbed from {first} to {later}");
    let ready = cluster
        .http
        .get(cluster.url(removed, "/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "a removed node must get no traffic");
    // The others keep working.
    create_until_acked(&cluster, &keep, "r", "after-removal").await;

    // Added again (as a learner, then a voter), it follows the leader and has every order.
    // Its one campaign left it a term above the leader's: replicating to it makes the leader
    // step down for a new election (plain Raft), so a change may find no leader for a
    // moment. Each is retried as a client would, bounded.
    let addr = cluster.nodes[&removed].addr.clone();
    let learner = json!({"id": removed, "addr": addr});
    let voters = json!({ "members": cluster.ids() });
    for (path, body) in [("/cluster/learners", learner), ("/cluster/members", voters)] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let leader = cluster.wait_for_leader(&keep).await;
            let (status, answer) = send(cluster.http.post(cluster.url(leader, path)).json(&body))
                .await
                .unwrap();
            if status == 200 {
                break;
            }
            assert!(
                matches!(status, 503 | 504) && Instant::now() < deadline,
                "{path}: {status} {answer}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let expected = all_orders(&cluster, leader, true).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while all_orders(&cluster, removed, true).await != expected {
        assert!(Instant::now() < deadline, "node {removed} did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(expected.len(), 1, "the order written while it was out");
}
