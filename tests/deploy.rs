//! Deployment shapes, with real `ordo serve` processes on loopback: host names as addresses
//! everywhere, and a separate port for the node-to-node routes.

mod common;

use std::path::Path;

use common::*;
use ordo::wire::{ErrorCode, LEADER_HEADER};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_runs_with_host_names_as_addresses() {
    let mut cluster = TestCluster::new(Path::new(BIN), 3, None, Vec::new());
    cluster.use_host_name("localhost");
    cluster.start_all().await;
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let follower = cluster.ids().into_iter().find(|n| *n != leader).unwrap();

    // The membership holds the names, and a write through a follower is forwarded by name.
    let status = cluster.status(follower).await.unwrap();
    for id in cluster.ids() {
        let addr = status["members"][id.to_string()].as_str().unwrap();
        assert!(addr.starts_with("localhost:"), "{status}");
    }
    let (code, created) = create(&cluster, follower, "named", None, "by name")
        .await
        .unwrap();
    assert_eq!(code, 201, "{created}");
    let order = create_until_acked(&cluster, &cluster.ids(), "named", "again").await;
    assert_eq!(
        all_orders(&cluster, leader, false).await.len(),
        2,
        "{order}"
    );

    // A killed leader is replaced and found again by name.
    cluster.kill(leader);
    let survivors: Vec<u64> = cluster.ids().into_iter().filter(|n| *n != leader).collect();
    cluster.wait_for_leader(&survivors).await;
    create_until_acked(&cluster, &survivors, "named", "after-failover").await;
    cluster.spawn(leader);
    cluster.wait_for_leader(&cluster.ids()).await;
    let applied = cluster.status(survivors[0]).await.unwrap()["last_applied"]
        .as_u64()
        .unwrap();
    cluster.wait_applied(leader, applied).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_port_serves_only_node_routes_and_the_client_port_only_the_api() {
    let mut cluster = TestCluster::new(Path::new(BIN), 3, None, Vec::new());
    cluster.enable_peer_ports();
    cluster.start_all().await;
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let follower = cluster.ids().into_iter().find(|n| *n != leader).unwrap();

    // Forwarded over the peer ports; the leader hint names the leader's client port.
    let resp = cluster
        .http
        .post(cluster.url(follower, "/api/orders"))
        .json(&order_body("split", "over the peer port"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let hint = resp.headers()[LEADER_HEADER].to_str().unwrap().to_string();
    assert_eq!(hint, cluster.nodes[&leader].addr);
    let status = cluster.status(follower).await.unwrap();
    assert_eq!(
        status["members"][leader.to_string()].as_str(),
        cluster.nodes[&leader].peer_addr.as_deref(),
        "the membership holds peer addresses: {status}"
    );

    let not_found = Value::from(ErrorCode::NotFound.as_str());
    for id in cluster.ids() {
        let peer = format!("http://{}", cluster.nodes[&id].peer_addr.as_ref().unwrap());
        // The client port has no node-to-node routes...
        for route in ordo::rpc::ROUTES {
            let (status, body) = send(cluster.http.post(cluster.url(id, route)).body("x"))
                .await
                .unwrap();
            assert_eq!(
                (status, &body["error"]["code"]),
                (404, &not_found),
                "{route}"
            );
        }
        // ...and the peer port has nothing else.
        for path in ["/api/orders", "/api/orders/1", "/cluster/status", "/health"] {
            let (status, body) = send(cluster.http.get(format!("{peer}{path}")))
                .await
                .unwrap();
            assert_eq!(
                (status, &body["error"]["code"]),
                (404, &not_found),
                "{path}"
            );
        }
        // The peer port's routes are there: a body that does not decode gets the 400.
        let (status, body) = send(cluster.http.post(format!("{peer}/raft/vote")).body("x"))
            .await
            .unwrap();
        assert_eq!(status, 400, "{body}");
    }
    assert_eq!(all_orders(&cluster, follower, false).await.len(), 1);
}
