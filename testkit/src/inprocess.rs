//! Nodes served inside the test's own process (`node::run` on listeners the fixture binds),
//! for tests that check what the HTTP API answers rather than how processes fail: no binary to
//! spawn, no signals, a few hundred milliseconds to start. Cluster, client and torture tests
//! keep real processes (`cluster::ProcessCluster`).

use std::collections::BTreeMap;
use std::time::Duration;

use ordo::node::{self, NodeConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cluster::{Nodes, DEADLINE};

struct InProcessNode {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<node::Stopped>>,
}

/// Nodes 1..=n of one cluster, each on its own loopback port and data directory, running on
/// the test's tokio runtime. Dropping it stops them.
pub struct InProcessCluster {
    pub http: reqwest::Client,
    nodes: BTreeMap<u64, InProcessNode>,
    // Last, so the directory outlives the nodes using it.
    _dir: tempfile::TempDir,
}

impl InProcessCluster {
    /// Starts nodes 1..=n and waits until they agree on a leader.
    pub async fn start(n: u64) -> InProcessCluster {
        let dir = tempfile::Builder::new()
            .prefix("ordo-inprocess-")
            .tempdir()
            .expect("temp dir");
        let mut listeners = BTreeMap::new();
        for id in 1..=n {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a loopback port");
            listeners.insert(id, listener);
        }
        let peers: BTreeMap<u64, String> = listeners
            .iter()
            .map(|(id, l)| (*id, l.local_addr().unwrap().to_string()))
            .collect();
        let mut nodes = BTreeMap::new();
        for (id, listener) in listeners {
            let addr = listener.local_addr().unwrap();
            let mut config = NodeConfig::new(
                id,
                addr.to_string(),
                dir.path().join(format!("n{id}")),
                peers.clone(),
            );
            config.initial_cluster_state = node::InitialClusterState::New;
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(node::run(config, node::Listeners::one(listener), async {
                let _ = stopped.await;
            }));
            let addr = addr.to_string();
            nodes.insert(
                id,
                InProcessNode {
                    addr,
                    stop: Some(stop),
                    task,
                },
            );
        }
        let cluster = InProcessCluster {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("http client"),
            nodes,
            _dir: dir,
        };
        cluster.wait_for_leader(&cluster.ids()).await;
        cluster
    }

    /// Waits until every node in `among` names the same leader among them.
    pub async fn wait_for_leader(&self, among: &[u64]) -> u64 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut seen = Vec::new();
            for &id in among {
                let status = self
                    .http
                    .get(self.url(id, "/cluster/status"))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                if let Ok(resp) = status {
                    if let Ok(v) = resp.json::<serde_json::Value>().await {
                        seen.push(v["leader_id"].as_u64());
                    }
                }
            }
            if let Some(Some(leader)) = seen.first().copied() {
                if seen.len() == among.len()
                    && seen.iter().all(|l| *l == Some(leader))
                    && among.contains(&leader)
                {
                    return leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {among:?} within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Nodes for InProcessCluster {
    fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    fn url(&self, id: u64, path: &str) -> String {
        format!("http://{}{}", self.nodes[&id].addr, path)
    }

    fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn is_serving(&mut self, id: u64) -> bool {
        !self.nodes[&id].task.is_finished()
    }
}

impl Drop for InProcessCluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(stop) = node.stop.take() {
                let _ = stop.send(());
            }
            node.task.abort();
        }
    }
}
