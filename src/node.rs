//! Wiring one node together: open the store, start openraft with the peer network, form the
//! cluster on first start, serve the HTTP API (over TLS when configured, reloading the
//! certificates on SIGHUP or when their files change), and shut down cleanly on
//! SIGTERM/SIGINT.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::{BasicNode, Config, SnapshotPolicy};
use tokio::net::TcpListener;

use crate::api::server::ServerLimits;
use crate::api::{self, AppState};
use crate::raft::{NodeId, Raft};
use crate::rpc::client::RpcClient;
use crate::rpc::election_hold::ElectionHold;
use crate::rpc::network::PeerNetwork;
use crate::service::Service;
use crate::store::{self, Durability, StoreConfig};
use crate::tls::{NodeTls, TlsFiles};

/// `ordo serve`'s defaults (the flags say why each is what it is).
pub const DEFAULT_HEARTBEAT_MS: u64 = 30;
pub const DEFAULT_ELECTION_TIMEOUT_MIN_MS: u64 = 100;
pub const DEFAULT_ELECTION_TIMEOUT_MAX_MS: u64 = 200;
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 3000;
pub const DEFAULT_SNAPSHOT_EVERY_LOGS: u64 = 100_000;
pub const DEFAULT_INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 60_000;

/// Everything `ordo serve` needs to run a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The initial cluster (id → HOST:PORT); used only on the first start with an empty store.
    pub peers: BTreeMap<NodeId, String>,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub request_timeout: Duration,
    pub snapshot_every_logs: u64,
    pub cache_capacity_bytes: u64,
    /// Byte budget of one AppendEntries body (see `rpc::network`).
    pub max_append_bytes: usize,
    pub install_snapshot_timeout_ms: u64,
    pub durability: Durability,
    /// Read timeouts, connection cap and shutdown grace of the HTTP listener.
    pub server_limits: ServerLimits,
    /// TLS for clients and peers; `None` serves plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Serve plain HTTP on an address other machines can reach (refused otherwise).
    pub insecure: bool,
}

impl NodeConfig {
    /// A node with every setting at `ordo serve`'s default.
    pub fn new(
        id: NodeId,
        listen: SocketAddr,
        data_dir: PathBuf,
        peers: BTreeMap<NodeId, String>,
    ) -> NodeConfig {
        NodeConfig {
            id,
            listen,
            data_dir,
            peers,
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            election_timeout_min_ms: DEFAULT_ELECTION_TIMEOUT_MIN_MS,
            election_timeout_max_ms: DEFAULT_ELECTION_TIMEOUT_MAX_MS,
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            snapshot_every_logs: DEFAULT_SNAPSHOT_EVERY_LOGS,
            cache_capacity_bytes: crate::store::DEFAULT_CACHE_CAPACITY_BYTES,
            max_append_bytes: crate::rpc::network::DEFAULT_MAX_APPEND_BYTES,
            install_snapshot_timeout_ms: DEFAULT_INSTALL_SNAPSHOT_TIMEOUT_MS,
            durability: Durability::Fsync,
            server_limits: ServerLimits::default(),
            tls: None,
            insecure: false,
        }
    }

    /// Refuses what would expose the cluster by accident: plain HTTP on an address other
    /// machines can reach lets anyone read and change orders and post into the Raft log.
    fn check_exposure(&self) -> anyhow::Result<()> {
        if self.tls.is_none() && !self.listen.ip().is_loopback() && !self.insecure {
            anyhow::bail!(
                "refusing to serve plain HTTP on {}, which other machines can reach: anyone \
                 there could change orders and send Raft messages. Give --tls-cert, --tls-key \
                 and --tls-ca (see docs/security.md), listen on a loopback address, or pass \
                 --insecure if the network itself is trusted",
                self.listen
            );
        }
        Ok(())
    }

    fn raft_config(&self) -> anyhow::Result<Config> {
        let config = Config {
            cluster_name: "ordo".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_logs),
            max_in_snapshot_log_to_keep: 1000,
            // sled's memory grows steeply with batch size; 256 entries per append stays modest.
            max_payload_entries: 256,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            ..Default::default()
        };
        config.validate().context("invalid raft timing options")
    }

    /// How long to wait before trying an unreachable peer again: half the shortest election
    /// timeout, so a restarted peer is contacted before it would campaign.
    fn unreachable_retry(&self) -> Duration {
        Duration::from_millis((self.election_timeout_min_ms / 2).max(10))
    }
}

/// Runs a node until SIGTERM or SIGINT.
pub async fn serve(config: NodeConfig) -> anyhow::Result<()> {
    config.check_exposure()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    run(config, listener, shutdown_signal()).await
}

/// Runs a node on `listener` until `shutdown` completes (`serve` passes SIGTERM/SIGINT; a test
/// can pass a channel and run nodes in its own process). The listener is bound before the
/// cluster forms, so peers can reach this node as soon as it votes.
pub async fn run(
    config: NodeConfig,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let raft_config = Arc::new(config.raft_config()?);
    config.check_exposure()?;
    let tls = match &config.tls {
        Some(files) => Some(NodeTls::load(files.clone()).context("loading the TLS files")?),
        None => None,
    };
    let store_config = StoreConfig {
        dir: config.data_dir.clone(),
        cache_capacity_bytes: config.cache_capacity_bytes,
        durability: config.durability,
        // Read about as much as one append may carry; the peer client still checks the
        // encoded size (PayloadTooLarge), which this makes rare.
        read_batch_bytes: config.max_append_bytes,
    };
    if config.durability == Durability::UnsafeNoFsync {
        tracing::warn!("UNSAFE: log appends are acknowledged before fsync; a crash can lose acknowledged orders");
    }
    let (log_store, state_machine) = store::open(&store_config)
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    let reader = state_machine.reader();
    // One client for every node-to-node call: Raft's and the service's calls to the leader.
    let rpc = RpcClient::new(tls.clone());
    let network = PeerNetwork::new(
        rpc.clone(),
        config.unreachable_retry(),
        config.max_append_bytes,
    );
    let clocks = network.clocks();
    let raft = Raft::new(config.id, raft_config, network, log_store, state_machine)
        .await
        .context("starting raft")?;

    tracing::info!(id = config.id, listen = %config.listen, tls = tls.is_some(), "node serving");
    if let Some(tls) = &tls {
        tokio::spawn(reload_certificates(tls.clone()));
    }

    if !raft.is_initialized().await? {
        initialize_if_first(&raft, &config).await?;
    } else {
        tracing::info!("existing data found: rejoining the cluster it records (--peers ignored)");
    }

    let service = Service::start(
        config.id,
        raft.clone(),
        rpc,
        clocks,
        config.request_timeout,
        Duration::from_millis((config.election_timeout_max_ms * 2).max(1000)),
    );
    let election_hold = ElectionHold::new(
        raft.clone(),
        Duration::from_millis(config.election_timeout_max_ms),
    );
    let peer_routes = crate::rpc::server::router(raft.clone(), election_hold, service.clone());
    let routes = api::router(AppState { service, reader }, peer_routes);
    // On SIGTERM Raft stops first: a leader that keeps heartbeating while its HTTP server
    // drains holds the whole cluster's writes hostage to its slowest client. Once Raft is
    // down the followers elect a new leader, and requests still here fail fast.
    let stop_raft_first = async {
        shutdown.await;
        tracing::info!("stopping raft, then the HTTP server");
        if let Err(e) = raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    };
    api::server::serve(listener, routes, config.server_limits, tls, stop_raft_first).await;
    tracing::info!("node stopped");
    Ok(())
}

/// On a first start, the node with the lowest id in `--peers` forms the cluster with every
/// peer as a voter; the others wait to be contacted.
async fn initialize_if_first(raft: &Raft, config: &NodeConfig) -> anyhow::Result<()> {
    let Some((&first, _)) = config.peers.iter().next() else {
        tracing::info!("empty store and no --peers: waiting to be added to a cluster");
        return Ok(());
    };
    if first != config.id {
        tracing::info!(
            initializer = first,
            "empty store: waiting for node {first} to form the cluster"
        );
        return Ok(());
    }
    let members: BTreeMap<NodeId, BasicNode> = config
        .peers
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect();
    tracing::info!(?members, "forming the cluster");
    raft.initialize(members)
        .await
        .context("initializing the cluster")?;
    Ok(())
}

/// How often the certificate files are checked for changes.
const CERT_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Reloads the TLS files on SIGHUP, and when one of them changes (a rotation by a tool that
/// rewrites them), for as long as the node runs. A reload that fails keeps the old
/// certificates and says why; the next change or SIGHUP tries again.
async fn reload_certificates(tls: Arc<NodeTls>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: certificates reload on file change only");
            None
        }
    };
    let mut tick = tokio::time::interval(CERT_CHECK_EVERY);
    loop {
        let why = tokio::select! {
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => "SIGHUP",
            _ = tick.tick() => {
                if !tls.files_changed() {
                    continue;
                }
                "a file changed"
            }
        };
        match tls.reload() {
            Ok(()) => tracing::info!(why, "reloaded the TLS certificates"),
            Err(e) => {
                tracing::error!(why, error = %e, "reloading the TLS certificates failed; still using the old ones")
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_refused_off_loopback_unless_insecure_is_given() {
        let config = |listen: &str| {
            NodeConfig::new(
                1,
                listen.parse().unwrap(),
                "/nonexistent".into(),
                BTreeMap::new(),
            )
        };
        assert!(config("127.0.0.1:7000").check_exposure().is_ok());
        assert!(config("[::1]:7000").check_exposure().is_ok());
        for exposed in ["0.0.0.0:7000", "10.1.2.3:7000", "[::]:7000"] {
            let err = config(exposed).check_exposure().unwrap_err().to_string();
            assert!(
                err.contains("--tls-cert") && err.contains("--insecure"),
                "{err}"
            );
            let mut insecure = config(exposed);
            insecure.insecure = true;
            assert!(insecure.check_exposure().is_ok());
            let mut with_tls = config(exposed);
            with_tls.tls = Some(TlsFiles {
                cert: "c".into(),
                key: "k".into(),
                ca: "a".into(),
            });
            assert!(with_tls.check_exposure().is_ok());
        }
    }
}
