//! Test harness: real `ordo serve` processes on free loopback ports in a temp dir.
//!
//! A `TestCluster` owns its child processes: it SIGKILLs and reaps every one it started when
//! dropped, also when the test panicked (then it prints the tail of each node's log). Every
//! wait polls for a condition with a deadline; nothing sleeps in place of a condition.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

pub const BIN: &str = env!("CARGO_BIN_EXE_ordo");

/// Generous: the test machine has two noisy cores.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct TestNode {
    pub id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub child: Option<Child>,
    pub paused: bool,
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, TestNode>,
    pub http: reqwest::Client,
    peers: String,
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestCluster {
    /// Starts nodes 1..=n forming one cluster and waits until it has a leader.
    pub async fn start(n: u64) -> TestCluster {
        let dir = tempfile::Builder::new()
            .prefix("ordo-test-")
            .tempdir()
            .unwrap();
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            nodes.insert(id, TestNode::new(&dir, id));
        }
        let peers = nodes
            .values()
            .map(|n| format!("{}={}", n.id, n.addr))
            .collect::<Vec<_>>()
            .join(",");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let mut cluster = TestCluster {
            dir,
            nodes,
            http,
            peers,
        };
        let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
        for id in ids {
            cluster.spawn(id);
        }
        cluster.wait_for_leader(&cluster.ids()).await;
        cluster
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn url(&self, id: u64, path: &str) -> String {
        format!("http://{}{}", self.nodes[&id].addr, path)
    }

    /// Adds a node that starts with no peers (to be added as a learner).
    pub fn add_node(&mut self, id: u64) {
        let node = TestNode::new(&self.dir, id);
        self.nodes.insert(id, node);
        self.spawn_with_peers(id, "");
    }

    /// (Re)starts node `id` with the cluster's peers.
    pub fn spawn(&mut self, id: u64) {
        let peers = self.peers.clone();
        self.spawn_with_peers(id, &peers);
    }

    fn spawn_with_peers(&mut self, id: u64, peers: &str) {
        let node = self.nodes.get_mut(&id).unwrap();
        assert!(node.child.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .unwrap();
        let child = Command::new(BIN)
            .args([
                "serve",
                "--id",
                &id.to_string(),
                "--listen",
                &node.addr,
                "--peers",
                peers,
            ])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .env("RUST_LOG", "info,openraft=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn ordo");
        node.child = Some(child);
        node.paused = false;
    }

    fn signal(&mut self, id: u64, sig: i32) {
        let child = self.nodes[&id]
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        let rc = unsafe { libc::kill(child.id() as i32, sig) };
        assert_eq!(rc, 0, "signal {sig} to node {id}");
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, and wait (bounded) for a clean exit.
    pub async fn stop(&mut self, id: u64) {
        self.signal(id, libc::SIGTERM);
        let deadline = Instant::now() + DEADLINE;
        let node = self.nodes.get_mut(&id).unwrap();
        let child = node.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "node {id} exited with {status} after SIGTERM"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not stop after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node.child = None;
    }

    pub fn pause(&mut self, id: u64) {
        self.signal(id, libc::SIGSTOP);
        self.nodes.get_mut(&id).unwrap().paused = true;
    }

    pub fn resume(&mut self, id: u64) {
        self.signal(id, libc::SIGCONT);
        self.nodes.get_mut(&id).unwrap().paused = false;
    }

    pub async fn status(&self, id: u64) -> Option<Value> {
        let resp = self
            .http
            .get(self.url(id, "/cluster/status"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        resp.json().await.ok()
    }

    /// Waits until every node in `among` agrees on one leader (which is among them).
    pub async fn wait_for_leader(&self, among: &[u64]) -> u64 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut seen = Vec::new();
            for &id in among {
                if let Some(s) = self.status(id).await {
                    seen.push(s["leader_id"].as_u64());
                }
            }
            if seen.len() == among.len() {
                if let Some(Some(leader)) = seen.first().copied() {
                    if seen.iter().all(|l| *l == Some(leader)) && among.contains(&leader) {
                        let s = self.status(leader).await;
                        if s.is_some_and(|s| s["state"] == "leader") {
                            return leader;
                        }
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {among:?}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(s) = self.status(id).await {
                if s["last_applied"].as_u64().is_some_and(|a| a >= index) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not apply up to {index}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn digest(&self, id: u64) -> Value {
        self.http
            .get(self.url(id, "/cluster/digest"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// POSTs an order; returns (status, body).
    pub async fn create(
        &self,
        id: u64,
        customer: &str,
        key: Option<&str>,
        note: &str,
    ) -> Result<(u16, Value), String> {
        let mut req = self
            .http
            .post(self.url(id, "/api/orders"))
            .json(&order_body(customer, note));
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        send(req).await
    }

    pub async fn get(&self, id: u64, path: &str) -> Result<(u16, Value), String> {
        send(self.http.get(self.url(id, path))).await
    }

    /// Every order, read page by page through node `id` (linearizable unless `stale`).
    pub async fn all_orders(&self, id: u64, stale: bool) -> Vec<Value> {
        let mut out = Vec::new();
        for page in 1..=10_000 {
            let q = if stale { "&consistency=stale" } else { "" };
            let (status, body) = self
                .get(id, &format!("/api/orders?per_page=100&page={page}{q}"))
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

    fn dump_logs(&self) {
        for node in self.nodes.values() {
            let log = std::fs::read_to_string(&node.log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "----- node {} log tail ({}) -----",
                node.id,
                node.log_path.display()
            );
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl TestNode {
    fn new(dir: &tempfile::TempDir, id: u64) -> TestNode {
        TestNode {
            id,
            addr: format!("127.0.0.1:{}", free_port()),
            data_dir: dir.path().join(format!("n{id}")),
            log_path: dir.path().join(format!("n{id}.log")),
            child: None,
            paused: false,
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill(); // SIGKILL works on a stopped process too
                let _ = child.wait();
            }
        }
    }
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

/// Creates an order with an idempotency key, retrying through the given nodes until it is
/// acknowledged (bounded by `DEADLINE` and a count). Returns the order.
pub async fn create_until_acked(
    cluster: &TestCluster,
    nodes: &[u64],
    customer: &str,
    key: &str,
) -> Value {
    let deadline = Instant::now() + DEADLINE;
    let mut last = String::new();
    for attempt in 0..2000usize {
        let node = nodes[attempt % nodes.len()];
        match cluster.create(node, customer, Some(key), key).await {
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
