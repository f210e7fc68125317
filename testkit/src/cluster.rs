//! A cluster of real `ordo serve` processes for tests and the torture run: on free loopback
//! ports, or each node in its own network namespace (`netns::Topology`) when partitions are
//! wanted. It signals only the processes it started, by PID, polls for state with deadlines,
//! and kills and reaps every child when dropped (printing each node's log tail if the thread
//! is panicking, so a failed test shows what the nodes saw).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use ordo::tls::dev_certs::{DevCa, Validity};
use ordo::tls::TlsFiles;

use super::netns::Topology;

/// `ordo serve`'s TLS flags for node `id`, whose files are in `certs` (none without TLS).
fn tls_args(tls: bool, certs: &Path, id: u64) -> Vec<PathBuf> {
    if !tls {
        return Vec::new();
    }
    vec![
        "--tls-cert".into(),
        certs.join(format!("node{id}.pem")),
        "--tls-key".into(),
        certs.join(format!("node{id}-key.pem")),
        "--tls-ca".into(),
        certs.join("ca.pem"),
    ]
}

/// Generous: test machines may have two noisy cores.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// What test helpers need of a cluster, whether its nodes are processes (`ProcessCluster`)
/// or run in the test's own process (`inprocess::InProcessCluster`).
pub trait Nodes {
    fn ids(&self) -> Vec<u64>;
    /// `http://HOST:PORT` (or `https://`) of node `id`, then `path`.
    fn url(&self, id: u64, path: &str) -> String;
    fn http(&self) -> &reqwest::Client;
    /// False once node `id` has stopped (its process exited, or its task ended).
    fn is_serving(&mut self, id: u64) -> bool;
}

impl Nodes for ProcessCluster {
    fn ids(&self) -> Vec<u64> {
        ProcessCluster::ids(self)
    }

    fn url(&self, id: u64, path: &str) -> String {
        ProcessCluster::url(self, id, path)
    }

    fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn is_serving(&mut self, id: u64) -> bool {
        !self.has_exited(id)
    }
}

pub struct ClusterNode {
    pub id: u64,
    /// HOST:PORT the node serves on.
    pub addr: String,
    /// HOST:PORT of its node-to-node routes, when they have a port of their own.
    pub peer_addr: Option<String>,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub child: Option<Child>,
}

pub struct ProcessCluster {
    pub nodes: BTreeMap<u64, ClusterNode>,
    pub http: reqwest::Client,
    pub topology: Option<Topology>,
    bin: PathBuf,
    peers: String,
    extra_args: Vec<String>,
    /// Extra environment of node N (libfaketime's, say: no wrapper process, so signals
    /// still reach the node itself).
    envs: BTreeMap<u64, Vec<(String, String)>>,
    /// With TLS (`enable_tls`): the development CA, whose directory holds every node's files.
    tls: Option<DevCa>,
    /// For nodes run with `--auth` (`set_token`).
    token: Option<String>,
    // Last, so the directory outlives the processes using it.
    dir: tempfile::TempDir,
}

/// A loopback port nobody listens on right now.
///
/// Ports come from 22000-31999, below the kernel's ephemeral range (32768 and up on Linux),
/// and each is handed out once per process. A port from `bind(0)` was ephemeral: between its
/// release and the node's bind, a client connection could take it as its local port, or a
/// parallel test's cluster could be given it too; once a node of another cluster served on a
/// port this cluster's peers called, the two clusters' Raft messages met (seen in CI).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 22_000;
    const SPAN: u32 = 10_000;
    // Where this process starts in the span: apart from other processes' (say, a torture run
    // beside the tests).
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}-{}", FIRST + SPAN - 1)
}

impl ProcessCluster {
    /// Lays out nodes 1..=n (not started). With `topology`, node N serves on its namespace
    /// address, else on a free loopback port.
    pub fn new(
        bin: &Path,
        n: u64,
        topology: Option<Topology>,
        extra_args: Vec<String>,
    ) -> ProcessCluster {
        let mut dir = tempfile::Builder::new()
            .prefix("ordo-cluster-")
            .tempdir()
            .expect("temp dir");
        // For a post-mortem of a run that passed but looked wrong: keep the logs and data.
        if std::env::var_os("ORDO_TEST_KEEP_DIR").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping {}", dir.path().display());
        }
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let addr = match &topology {
                Some(t) => format!("{}:7000", t.addr(id)),
                None => format!("127.0.0.1:{}", free_port()),
            };
            nodes.insert(id, ClusterNode::new(dir.path(), id, addr));
        }
        let peers = nodes
            .values()
            .map(|n| format!("{}={}", n.id, n.addr))
            .collect::<Vec<_>>()
            .join(",");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("http client");
        ProcessCluster {
            nodes,
            http,
            topology,
            bin: bin.to_path_buf(),
            peers,
            extra_args,
            envs: BTreeMap::new(),
            tls: None,
            token: None,
            dir,
        }
    }

    /// Serves every node over TLS from now on: makes a CA in `certs/` of the cluster's
    /// directory and a certificate for each node; `http` then trusts that CA (as a client,
    /// with no certificate of its own). Call before the nodes start.
    pub fn enable_tls(&mut self) {
        let ca = DevCa::create(&self.certs_dir()).expect("development CA");
        for id in self.ids() {
            self.issue_cert(&ca, id, Validity::days(30));
        }
        self.http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .use_preconfigured_tls(
                ordo::tls::client_config(&self.certs_dir().join("ca.pem"), None).expect("CA"),
            )
            .build()
            .expect("https client");
        self.tls = Some(ca);
    }

    /// Addresses every node by `host` (`localhost`, say) instead of 127.0.0.1, in its flags and
    /// in `url`. Call before the nodes start.
    pub fn use_host_name(&mut self, host: &str) {
        for node in self.nodes.values_mut() {
            node.addr = node.addr.replace("127.0.0.1", host);
        }
        self.peers = self.peer_list();
    }

    /// Gives every node a port of its own for the node-to-node routes (`--peer-listen`); the
    /// cluster is formed over those. Call before the nodes start.
    pub fn enable_peer_ports(&mut self) {
        for node in self.nodes.values_mut() {
            let host = node.addr.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
            node.peer_addr = Some(format!("{host}:{}", free_port()));
        }
        self.peers = self.peer_list();
    }

    /// `--peers`: each node's peer address.
    fn peer_list(&self) -> String {
        self.nodes
            .values()
            .map(|n| format!("{}={}", n.id, n.peer_addr.as_ref().unwrap_or(&n.addr)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Where the TLS files live: `ca.pem`, `nodeN.pem`, `nodeN-key.pem`.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// (Re)issues node `id`'s certificate from `ca`, valid as `validity` says, for the
    /// address it serves on (a namespace's address, with a topology) and loopback.
    pub fn issue_cert(&self, ca: &DevCa, id: u64, validity: Validity) -> TlsFiles {
        let addr = &self.nodes[&id].addr;
        let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
        let mut hosts = vec!["127.0.0.1", "localhost"];
        if !hosts.contains(&host) {
            hosts.push(host);
        }
        ca.issue_node(&self.certs_dir(), &format!("node{id}"), &hosts, validity)
            .expect("node certificate")
    }

    /// The cluster's CA, once `enable_tls` made it.
    pub fn ca(&self) -> Option<&DevCa> {
        self.tls.as_ref()
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Gives node `id` these environment variables from its next start on.
    pub fn set_env(&mut self, id: u64, vars: Vec<(String, String)>) {
        self.envs.insert(id, vars);
    }

    /// Starts every node and waits until they agree on a leader.
    pub async fn start_all(&mut self) {
        for id in self.ids() {
            self.spawn(id);
        }
        self.wait_for_leader(&self.ids()).await;
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn url(&self, id: u64, path: &str) -> String {
        format!("{}://{}{}", self.scheme(), self.nodes[&id].addr, path)
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.nodes[&id].child.is_some()
    }

    /// True once node `id`'s process has exited (it is reaped by `wait_stopped` or on drop).
    pub fn has_exited(&mut self, id: u64) -> bool {
        let node = self.nodes.get_mut(&id).expect("known node");
        node.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Adds node `id` on a free loopback port, started with no peers (to join as a learner).
    pub fn add_node(&mut self, id: u64) {
        let node = ClusterNode::new(self.dir.path(), id, format!("127.0.0.1:{}", free_port()));
        self.nodes.insert(id, node);
        if let Some(ca) = &self.tls {
            self.issue_cert(ca, id, Validity::days(30));
        }
        self.spawn_with_peers(id, "");
    }

    /// (Re)starts node `id` with no peers, to be added to the cluster (as a node whose data
    /// was lost is, after it was removed from the membership).
    pub fn spawn_to_join(&mut self, id: u64) {
        self.spawn_with_peers(id, "");
    }

    /// (Re)starts node `id` with the cluster's peers.
    pub fn spawn(&mut self, id: u64) {
        let peers = self.peers.clone();
        self.spawn_with_peers(id, &peers);
    }

    fn spawn_with_peers(&mut self, id: u64, peers: &str) {
        let prefix = self
            .topology
            .as_ref()
            .map(|t| t.exec_prefix(id))
            .unwrap_or_default();
        let node = self.nodes.get_mut(&id).expect("known node");
        assert!(node.child.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .expect("node log");
        // `ip netns exec` execs the program in place, so the PID is the node's own.
        let mut cmd = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.args([
            "serve",
            "--id",
            &id.to_string(),
            "--listen",
            &node.addr,
            "--peers",
            peers,
            // Formed by the lowest id on the first start; ignored once there is data.
            "--initial-cluster-state",
            if peers.is_empty() { "existing" } else { "new" },
        ])
        .arg("--data-dir")
        .arg(&node.data_dir)
        .args(&self.extra_args)
        .args(tls_args(
            self.tls.is_some(),
            &self.dir.path().join("certs"),
            id,
        ))
        .args(
            node.peer_addr
                .iter()
                .flat_map(|a| ["--peer-listen".to_string(), a.clone()]),
        )
        // Namespace addresses are not loopback: plain HTTP there must be asked for.
        .args((self.topology.is_some() && self.tls.is_none()).then_some("--insecure"))
        // Only what the test asks for: an ORDO_* setting exported where the tests run (a
        // cluster id, a TLS file) would change every node.
        .env_clear()
        .envs(std::env::vars().filter(|(k, _)| !k.starts_with("ORDO_")))
        .env(
            "RUST_LOG",
            std::env::var("ORDO_TEST_LOG").unwrap_or_else(|_| "info,openraft=info".into()),
        )
        .envs(self.envs.get(&id).cloned().unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
        node.child = Some(cmd.spawn().expect("spawn ordo"));
    }

    fn signal(&self, id: u64, sig: i32) {
        let child = self.nodes[&id]
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        // SAFETY: kill(2) on the PID of a child this cluster spawned and has not reaped.
        let rc = unsafe { libc::kill(child.id() as i32, sig) };
        assert_eq!(rc, 0, "signal {sig} to node {id}");
    }

    /// SIGHUP (a node reloads its TLS certificates).
    pub fn hangup(&self, id: u64) {
        self.signal(id, libc::SIGHUP);
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM, and wait (bounded) for a clean exit; panics if it does not exit cleanly.
    pub async fn stop(&mut self, id: u64) {
        self.terminate(id);
        self.wait_stopped(id).await;
    }

    /// SIGTERM only.
    pub fn terminate(&self, id: u64) {
        self.signal(id, libc::SIGTERM);
    }

    /// Waits (bounded) until node `id` has exited, and reaps it; panics unless it exited
    /// cleanly within the deadline.
    pub async fn wait_stopped(&mut self, id: u64) {
        let deadline = Instant::now() + DEADLINE;
        let child = self.nodes.get_mut(&id).unwrap().child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
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
        self.nodes.get_mut(&id).unwrap().child = None;
    }

    /// SIGSTOP.
    pub fn pause(&mut self, id: u64) {
        self.signal(id, libc::SIGSTOP);
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: u64) {
        self.signal(id, libc::SIGCONT);
    }

    pub async fn status(&self, id: u64) -> Option<Value> {
        let req = self
            .authorized(self.http.get(self.url(id, "/cluster/status")))
            .timeout(Duration::from_secs(2));
        req.send().await.ok()?.json().await.ok()
    }

    /// The token the cluster's own helpers (status, digest) send to nodes run with `--auth`.
    pub fn set_token(&mut self, token: &str) {
        self.token = Some(token.to_string());
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// The leader as node `among[0..]` see it right now, if they all agree and it says so.
    pub async fn agreed_leader(&self, among: &[u64]) -> Option<u64> {
        let mut leader = None;
        for &id in among {
            let seen = self.status(id).await?["leader_id"].as_u64()?;
            if leader.is_some_and(|l| l != seen) {
                return None;
            }
            leader = Some(seen);
        }
        let leader = leader.filter(|l| among.contains(l))?;
        (self.status(leader).await?["state"] == "leader").then_some(leader)
    }

    /// Waits until every node in `among` agrees on one leader among them.
    pub async fn wait_for_leader(&self, among: &[u64]) -> u64 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(leader) = self.agreed_leader(among).await {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {among:?} within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (bounded) until node `id` has applied what node `reference` has applied now.
    pub async fn wait_caught_up(&self, id: u64, reference: u64) {
        let applied = self
            .status(reference)
            .await
            .expect("the reference node answers")["last_applied"]
            .as_u64()
            .expect("last_applied");
        self.wait_applied(id, applied).await;
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64) {
        self.wait_applied_within(id, index, DEADLINE).await
    }

    /// `wait_applied` with its own deadline.
    pub async fn wait_applied_within(&self, id: u64, index: u64, within: Duration) {
        let deadline = Instant::now() + within;
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

    /// `GET /cluster/digest` of node `id`.
    pub async fn digest(&self, id: u64) -> Value {
        self.authorized(self.http.get(self.url(id, "/cluster/digest")))
            .send()
            .await
            .expect("digest")
            .json()
            .await
            .expect("digest json")
    }

    pub fn dump_logs(&self, lines: usize) {
        for node in self.nodes.values() {
            let log = std::fs::read_to_string(&node.log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(lines).collect();
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

impl ClusterNode {
    fn new(dir: &Path, id: u64, addr: String) -> ClusterNode {
        ClusterNode {
            id,
            addr,
            peer_addr: None,
            data_dir: dir.join(format!("n{id}")),
            log_path: dir.join(format!("n{id}.log")),
            child: None,
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let lines = std::env::var("ORDO_TEST_DUMP_LINES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(40);
            self.dump_logs(lines);
        }
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill(); // SIGKILL ends a stopped (SIGSTOP) process too
                let _ = child.wait();
            }
        }
        // The topology (namespaces, bridge) is dropped after the processes are gone.
    }
}
