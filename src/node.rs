//! Wiring one node together: open the store, start openraft with the peer network, form the
//! cluster on first start, serve the HTTP API (over TLS when configured, reloading the
//! certificates on SIGHUP or when their files change), and shut down cleanly on
//! SIGTERM/SIGINT.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::{BasicNode, Config, SnapshotPolicy};
use tokio::net::TcpListener;

use crate::api::auth::AuthSettings;
use crate::api::server::ServerLimits;
use crate::api::{self, AppState};
use crate::raft::{NodeId, Raft};
use crate::rpc::client::RpcClient;
use crate::rpc::cluster_id::ClusterId;
use crate::rpc::election_hold::ElectionHold;
use crate::rpc::network::PeerNetwork;
use crate::rpc::PeerDirectory;
use crate::service::Service;
use crate::store::{self, Durability, StoreConfig};
use crate::tls::{NodeTls, TlsFiles};

/// `ordo serve`'s defaults (the flags say why each is what it is).
pub const DEFAULT_HEARTBEAT_MS: u64 = 50;
pub const DEFAULT_ELECTION_TIMEOUT_MIN_MS: u64 = 300;
pub const DEFAULT_ELECTION_TIMEOUT_MAX_MS: u64 = 600;
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 3000;
pub const DEFAULT_SNAPSHOT_EVERY_LOGS: u64 = 100_000;
/// Six snapshots by a million entries where a fixed interval makes ten; the log between two
/// grows to about a third of all entries (plus what is written while one is built).
pub const DEFAULT_SNAPSHOT_GROWTH_PERCENT: u64 = 50;
pub const DEFAULT_INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_STORAGE_FAILURE_EXIT_AFTER_MS: u64 = 5_000;

/// What a node with an empty store does (`--initial-cluster-state`, as etcd has it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitialClusterState {
    /// Form the cluster of `--peers` if this node has the lowest id there.
    New,
    /// Never form a cluster: wait to be added to one. A node whose data directory was lost
    /// and that is restarted with its old flags then cannot start a second cluster.
    #[default]
    Existing,
}

/// Everything `ordo serve` needs to run a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    /// HOST:PORT to serve on (the public API, and node-to-node routes unless `peer_listen`).
    /// A name is resolved when binding.
    pub listen: String,
    /// HOST:PORT clients are told to use for this node (the leader hint); default `listen`.
    pub advertise: Option<String>,
    /// HOST:PORT to serve the node-to-node routes on, apart from the public API.
    pub peer_listen: Option<String>,
    /// HOST:PORT the other nodes reach this node's node-to-node routes at (its address in
    /// the membership); default the one-port address, or `peer_listen`.
    pub peer_advertise: Option<String>,
    pub data_dir: PathBuf,
    /// The initial cluster (id → HOST:PORT); used only on the first start with an empty store.
    pub peers: BTreeMap<NodeId, String>,
    /// Whether an empty node may form the cluster of `peers` (if it has the lowest id), or
    /// only waits to be added.
    pub initial_cluster_state: InitialClusterState,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub request_timeout: Duration,
    pub snapshot_every_logs: u64,
    /// Or this share (%) of the entries the last snapshot covers, once that is more
    /// (`service::snapshot_schedule`; 0: every `snapshot_every_logs` entries).
    pub snapshot_growth_percent: u64,
    pub cache_capacity_bytes: u64,
    /// How often sled's cache is swept to its capacity (`StoreConfig::cache_sweep_every`).
    pub cache_sweep_every: Option<Duration>,
    /// Compress a new store's pages on disk (`StoreConfig::compress`).
    pub compress_store: bool,
    /// Byte budget of one AppendEntries body (see `rpc::network`).
    pub max_append_bytes: usize,
    pub install_snapshot_timeout_ms: u64,
    /// After a storage failure, how long the node answers 503 before it exits.
    pub storage_failure_exit_after: Duration,
    pub durability: Durability,
    /// Read timeouts, connection cap and shutdown grace of the HTTP listener.
    pub server_limits: ServerLimits,
    /// TLS for clients and peers; `None` serves plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Require a user's token on every public route but `/health` (`api::auth`).
    pub auth: bool,
    /// With `auth`: a file holding a token that acts as an admin until the first user
    /// exists (to create it).
    pub bootstrap_token_file: Option<PathBuf>,
    /// Serve without TLS and auth on an address other machines can reach (refused
    /// otherwise).
    pub insecure: bool,
    /// Make this node the only voter of its cluster, with its data (`--force-new-cluster`),
    /// to recover from the loss of a majority: `CLUSTER_ID:NODE_ID`, this node's cluster id
    /// (`none` for a cluster without one) and its node id.
    pub force_new_cluster: Option<String>,
    /// The cluster this node belongs to (`--cluster-id`), kept before it serves: a node
    /// joining with an empty data dir then refuses other clusters' calls from the start.
    pub cluster_id: Option<String>,
    /// The change feed: how much of the change log to keep, and its streams' settings.
    pub change_feed: ChangeFeedConfig,
}

/// `ordo serve`'s change-feed settings (`--changes-*`).
#[derive(Debug, Clone, Copy)]
pub struct ChangeFeedConfig {
    pub retention: crate::store::ChangeRetention,
    pub heartbeat: Duration,
    pub max_subscribers: usize,
    pub max_lag: u64,
    pub lag_grace: Duration,
}

impl Default for ChangeFeedConfig {
    fn default() -> Self {
        ChangeFeedConfig {
            retention: crate::store::ChangeRetention::default(),
            heartbeat: Duration::from_millis(api::changes::DEFAULT_HEARTBEAT_MS),
            max_subscribers: api::changes::DEFAULT_MAX_SUBSCRIBERS,
            max_lag: api::changes::DEFAULT_MAX_LAG,
            lag_grace: Duration::from_millis(api::changes::DEFAULT_LAG_GRACE_MS),
        }
    }
}

impl NodeConfig {
    /// A node with every setting at `ordo serve`'s default.
    pub fn new(
        id: NodeId,
        listen: impl Into<String>,
        data_dir: PathBuf,
        peers: BTreeMap<NodeId, String>,
    ) -> NodeConfig {
        NodeConfig {
            id,
            listen: listen.into(),
            advertise: None,
            peer_listen: None,
            peer_advertise: None,
            data_dir,
            peers,
            initial_cluster_state: InitialClusterState::default(),
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            election_timeout_min_ms: DEFAULT_ELECTION_TIMEOUT_MIN_MS,
            election_timeout_max_ms: DEFAULT_ELECTION_TIMEOUT_MAX_MS,
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            snapshot_every_logs: DEFAULT_SNAPSHOT_EVERY_LOGS,
            snapshot_growth_percent: DEFAULT_SNAPSHOT_GROWTH_PERCENT,
            cache_capacity_bytes: crate::store::DEFAULT_CACHE_CAPACITY_BYTES,
            cache_sweep_every: Some(crate::store::DEFAULT_CACHE_SWEEP_EVERY),
            compress_store: false,
            max_append_bytes: crate::rpc::network::DEFAULT_MAX_APPEND_BYTES,
            install_snapshot_timeout_ms: DEFAULT_INSTALL_SNAPSHOT_TIMEOUT_MS,
            storage_failure_exit_after: Duration::from_millis(
                DEFAULT_STORAGE_FAILURE_EXIT_AFTER_MS,
            ),
            durability: Durability::Fsync,
            server_limits: ServerLimits::default(),
            tls: None,
            auth: false,
            bootstrap_token_file: None,
            insecure: false,
            force_new_cluster: None,
            cluster_id: None,
            change_feed: ChangeFeedConfig::default(),
        }
    }

    /// Refuses what would expose the cluster by accident: without TLS and auth, an address
    /// other machines can reach lets anyone there read and change orders (and, without TLS,
    /// post into the Raft log).
    fn check_exposure(&self, bound: SocketAddr) -> anyhow::Result<()> {
        if (self.tls.is_none() || !self.auth) && !bound.ip().is_loopback() && !self.insecure {
            anyhow::bail!(
                "refusing to serve on {bound}, which other machines can reach, without TLS \
                 and auth: anyone there could change orders{}. Give --tls-cert, --tls-key and \
                 --tls-ca, and --auth (see docs/security.md), listen on a loopback address, or \
                 pass --insecure if the network itself is trusted",
                if self.tls.is_none() {
                    " and send Raft messages"
                } else {
                    ""
                }
            );
        }
        Ok(())
    }

    /// `--auth`'s settings, with the bootstrap token read from its file.
    fn auth_settings(&self) -> anyhow::Result<Option<AuthSettings>> {
        let Some(path) = &self.bootstrap_token_file else {
            return Ok(self.auth.then(AuthSettings::default));
        };
        if !self.auth {
            anyhow::bail!("--bootstrap-token-file needs --auth");
        }
        // Once the first user exists the file is no longer needed: a node restarted after it
        // was removed starts without a bootstrap token.
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(file = %path.display(), "--bootstrap-token-file is gone: no bootstrap token");
                return Ok(Some(AuthSettings::default()));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading --bootstrap-token-file {}", path.display()))
            }
        };
        let token = text.trim();
        let usable = token.len() >= 16
            && token.len() <= 512
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b));
        if !usable {
            anyhow::bail!(
                "--bootstrap-token-file {}: the token must be 16 to 512 of A-Z, a-z, 0-9 and \
                 -._~+/= (what an Authorization: Bearer header carries)",
                path.display()
            );
        }
        Ok(Some(AuthSettings {
            bootstrap_hash: Some(crate::order::token_hash(token)),
        }))
    }

    /// The address clients are told to use for this node.
    pub fn client_address(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.clone())
    }

    /// This node's address in the membership: where the other nodes send Raft messages.
    pub fn peer_address(&self) -> String {
        if let Some(a) = &self.peer_advertise {
            return a.clone();
        }
        match &self.peer_listen {
            Some(l) => l.clone(),
            None => self.client_address(),
        }
    }

    /// Addresses that are not HOST:PORT, an unspecified address (0.0.0.0) where others need
    /// one to reach this node, and `--peers` naming this node by another address than the
    /// one it advertises.
    pub fn check_addresses(&self) -> anyhow::Result<()> {
        let named = [
            ("--listen", Some(&self.listen)),
            ("--advertise", self.advertise.as_ref()),
            ("--peer-listen", self.peer_listen.as_ref()),
            ("--peer-advertise", self.peer_advertise.as_ref()),
        ];
        for (flag, addr) in named {
            if let Some(addr) = addr {
                crate::rpc::check_host_port(addr).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
            }
        }
        let unspecified = |a: &str| {
            a.parse::<SocketAddr>()
                .is_ok_and(|s| s.ip().is_unspecified())
        };
        if unspecified(&self.client_address()) {
            anyhow::bail!(
                "--listen {} is every interface: give --advertise HOST:PORT, the address \
                 clients and peers reach this node at",
                self.listen
            );
        }
        if unspecified(&self.peer_address()) {
            anyhow::bail!(
                "--peer-listen {} is every interface: give --peer-advertise HOST:PORT",
                self.peer_address()
            );
        }
        if let Some(named) = self.peers.get(&self.id) {
            if *named != self.peer_address() {
                anyhow::bail!(
                    "--peers names node {} {named}, but it advertises {} to its peers",
                    self.id,
                    self.peer_address()
                );
            }
        }
        Ok(())
    }

    fn raft_config(&self) -> anyhow::Result<Config> {
        let config = Config {
            cluster_name: "ordo".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            // `service::snapshot_schedule` asks for each snapshot.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: 1000,
            // sled's memory grows steeply with batch size; 256 entries per append stays modest.
            max_payload_entries: 256,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            // Adding a learner waits until it is as close as a promotion asks (openraft's
            // default, 5000 entries, returned from add-learner with a learner the next step
            // would refuse).
            replication_lag_threshold: crate::service::membership::MAX_PROMOTION_LAG,
            ..Default::default()
        };
        config.validate().context("invalid raft timing options")
    }

    /// How long an append may wait for this node's applies (`StoreConfig::apply_lag_wait`):
    /// two heartbeats, so that a leader outrunning them sees a timeout and sends less, but a
    /// third of the shortest election timeout at most, so that the waiting core still hears its
    /// leader in time. (With an election timeout under three heartbeats the cap falls below one
    /// heartbeat, and the leader is not paced: the timings are then tight anyway.)
    fn apply_lag_wait(&self) -> Duration {
        Duration::from_millis((2 * self.heartbeat_ms).min(self.election_timeout_min_ms / 3))
    }

    /// How long to wait before trying an unreachable peer again: half the shortest election
    /// timeout, so a restarted peer is contacted before it would campaign.
    fn unreachable_retry(&self) -> Duration {
        Duration::from_millis((self.election_timeout_min_ms / 2).max(10))
    }
}

/// Where a node serves: the public API (and, without `peer`, the node-to-node routes too).
pub struct Listeners {
    pub client: TcpListener,
    pub peer: Option<TcpListener>,
}

impl Listeners {
    /// One port for everything.
    pub fn one(listener: TcpListener) -> Listeners {
        Listeners {
            client: listener,
            peer: None,
        }
    }
}

/// Binds `addr` (a host name is resolved here; the first address that binds is used).
async fn bind(flag: &str, addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{flag} {addr}: cannot resolve or bind it"))
}

/// Why a node stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// SIGTERM/SIGINT, or the caller's shutdown future.
    Asked,
    /// Its log or state store failed (disk full, I/O error): the Raft core stopped, and the
    /// node answered 503 `storage_failed` for `storage_failure_exit_after`, then stopped, so
    /// that a supervisor restarts it (`ordo serve` exits with a code of its own).
    StorageFailed,
}

/// Runs a node until SIGTERM or SIGINT, or until its storage fails.
pub async fn serve(config: NodeConfig) -> anyhow::Result<Stopped> {
    config.check_addresses()?;
    let client = bind("--listen", &config.listen).await?;
    let peer = match &config.peer_listen {
        Some(addr) => Some(bind("--peer-listen", addr).await?),
        None => None,
    };
    run(config, Listeners { client, peer }, shutdown_signal()).await
}

/// Runs a node on `listeners` until `shutdown` completes (`serve` passes SIGTERM/SIGINT; a
/// test can pass a channel and run nodes in its own process). The listeners are bound before
/// the cluster forms, so peers can reach this node as soon as it votes.
pub async fn run(
    config: NodeConfig,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Stopped> {
    let raft_config = Arc::new(config.raft_config()?);
    config.check_addresses()?;
    let auth = config.auth_settings()?;
    if auth.is_some() && config.tls.is_none() {
        tracing::warn!(
            "--auth without TLS: the node-to-node routes (/raft/*) are open to whoever reaches \
             the port, and a forged Raft message bypasses auth; use TLS beyond a trusted host"
        );
    }
    for listener in std::iter::once(&listeners.client).chain(listeners.peer.as_ref()) {
        config.check_exposure(listener.local_addr()?)?;
    }
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
        change_retention: config.change_feed.retention,
        compress: config.compress_store,
        apply_lag_wait: config.apply_lag_wait(),
        cache_sweep_every: config.cache_sweep_every,
    };
    if config.durability == Durability::UnsafeNoFsync {
        tracing::warn!("UNSAFE: log appends are acknowledged before fsync; a crash can lose acknowledged orders");
    }
    let (mut log_store, state_machine) = store::open(&store_config)
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    let reader = state_machine.reader();
    let snapshots = state_machine.snapshot_files();
    // One client for every node-to-node call: Raft's and the service's calls to the leader.
    let directory = Arc::new(PeerDirectory::new(config.id, config.client_address()));
    let cluster_id = Arc::new(ClusterId::load(&config.data_dir)?);
    if let Some(asked) = &config.cluster_id {
        cluster_id.pin(asked)?;
    }
    force_new_cluster_if_asked(&config, &mut log_store, &state_machine, &cluster_id)?;
    let rpc = RpcClient::new(tls.clone(), directory.clone(), cluster_id.clone());
    let network = PeerNetwork::new(
        rpc.clone(),
        config.unreachable_retry(),
        config.max_append_bytes,
    );
    let clocks = network.clocks();
    let removal_notices = network.removal_notices();
    let log_reader = log_store.reader();
    let leading = log_store.leading_flag();
    let raft = Raft::new(config.id, raft_config, network, log_store, state_machine)
        .await
        .context("starting raft")?;
    tokio::spawn(follow_leadership(raft.clone(), leading));

    tracing::info!(
        id = config.id,
        listen = %config.listen,
        peer_listen = config.peer_listen.as_deref().unwrap_or("(the same)"),
        client_address = %config.client_address(),
        peer_address = %config.peer_address(),
        tls = tls.is_some(),
        version = crate::VERSION,
        "node serving"
    );
    if let Some(tls) = &tls {
        tokio::spawn(reload_certificates(tls.clone()));
    }

    if !raft.is_initialized().await? {
        match config.initial_cluster_state {
            InitialClusterState::New => initialize_if_first(&raft, &config, &cluster_id).await?,
            InitialClusterState::Existing => tracing::info!(
                "empty store: waiting to be added to a cluster (--initial-cluster-state \
                 existing; give `new` only to form a new cluster)"
            ),
        }
    } else {
        tracing::info!(
            cluster_id = cluster_id.get().as_deref().unwrap_or("(not known yet)"),
            "existing data found: rejoining the cluster it records (--peers ignored)"
        );
    }

    crate::telemetry::handle();
    crate::service::observer::spawn(raft.clone(), reader.clone(), config.data_dir.clone());
    crate::service::snapshot_schedule::SnapshotSchedule {
        every_logs: config.snapshot_every_logs,
        growth_percent: config.snapshot_growth_percent,
    }
    .spawn(raft.clone());
    let service = Service::start(
        config.id,
        raft.clone(),
        rpc,
        directory.clone(),
        clocks,
        config.request_timeout,
        Duration::from_millis((config.election_timeout_max_ms * 2).max(1000)),
        log_reader,
        {
            let reader = reader.clone();
            Arc::new(move || reader.clock_ms().ok().flatten())
        },
    );
    let election_hold = ElectionHold::new(
        raft.clone(),
        Duration::from_millis(config.election_timeout_max_ms),
    );
    crate::rpc::removal::RemovalWatch::spawn(
        config.id,
        raft.clone(),
        removal_notices,
        election_hold.clone(),
    );
    let peer_routes = crate::rpc::server::router(
        raft.clone(),
        election_hold,
        service.clone(),
        directory,
        cluster_id,
    );
    // Set once Raft has stopped on the way out: the HTTP servers drain, change feeds end.
    let (stopped_tx, stopped_rx) = tokio::sync::watch::channel(false);
    let feed = api::changes::ChangeFeed::new(
        config.change_feed.heartbeat,
        config.change_feed.max_subscribers,
        config.change_feed.max_lag,
        config.change_feed.lag_grace,
        reader.clone(),
        stopped_rx.clone(),
        api::changes::ClusterView::new(
            config.id,
            raft.server_metrics(),
            raft.metrics(),
            Duration::from_millis(config.heartbeat_ms),
        ),
    );
    let state = AppState::new(api::AppParts {
        service,
        reader,
        auth: auth.map(Arc::new),
        snapshots,
        feed,
        backups: Arc::new(tokio::sync::Semaphore::new(
            api::cluster::MAX_BACKUP_STREAMS,
        )),
    });
    // With a peer port, each port serves only its own routes (the other's answer 404).
    let (client_routes, peer_server) = match listeners.peer {
        None => (api::router(state, Some(peer_routes)), None),
        Some(peer) => (
            api::router(state, None),
            Some((peer, api::peer_only(peer_routes))),
        ),
    };
    // On SIGTERM Raft stops first: a leader that keeps heartbeating while its HTTP server
    // drains holds the whole cluster's writes hostage to its slowest client. Once Raft is
    // down the followers elect a new leader, and requests still here fail fast.
    let storage_failed = std::sync::atomic::AtomicBool::new(false);
    let stop_raft_first = async {
        tokio::select! {
            _ = shutdown => {}
            _ = storage_failure(&raft, &config) => {
                storage_failed.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        tracing::info!("stopping raft, then the HTTP server");
        if let Err(e) = raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        let _ = stopped_tx.send(true);
    };
    let raft_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stopped| *stopped).await;
    };
    let clients = api::server::serve(
        listeners.client,
        client_routes,
        config.server_limits,
        tls.clone(),
        async {
            tokio::join!(stop_raft_first, raft_stopped(stopped_rx.clone()));
        },
    );
    let peers = async {
        if let Some((listener, routes)) = peer_server {
            let stopped = raft_stopped(stopped_rx.clone());
            api::server::serve(listener, routes, config.server_limits, tls.clone(), stopped).await;
        }
    };
    tokio::join!(clients, peers);
    tracing::info!("node stopped");
    Ok(
        if storage_failed.load(std::sync::atomic::Ordering::SeqCst) {
            Stopped::StorageFailed
        } else {
            Stopped::Asked
        },
    )
}

/// Completes `storage_failure_exit_after` after this node's storage failed, having said so
/// once at ERROR. Meanwhile the node answers 503 `storage_failed` and fails `/readyz`, so
/// that load balancers and clients move on before it goes. Why exit rather than wait for the
/// disk: openraft's core does not restart after a storage error, and a fresh start re-reads
/// the store from disk, which is what was acknowledged.
///
/// It waits on openraft's server metrics (vote, role, leader, membership), which change
/// rarely, and not on the full metrics, which change several times per write: waking on each
/// of those cost every write a thread wake-up (docs/performance.md, "Wake-ups per write").
/// Both channels close when the core stops, after it has put the reason in the full metrics.
/// This future is dropped before the node's own shutdown stops the core (`serve`), so a core
/// that stops while it waits stopped on its own: a storage error, or a panic.
async fn storage_failure(raft: &Raft, config: &NodeConfig) {
    let mut server = raft.server_metrics();
    while server.changed().await.is_ok() {}
    let cause = crate::service::storage_failure(raft)
        .unwrap_or_else(|| "the Raft core stopped by itself (it may have panicked)".into());
    tracing::error!(
        data_dir = %config.data_dir.display(),
        cause = %cause,
        exit_in_ms = config.storage_failure_exit_after.as_millis() as u64,
        "STORAGE FAILED: this node serves no writes or reads now and will exit so that its \
         supervisor restarts it; free space on (or repair) the data directory's disk first"
    );
    tokio::time::sleep(config.storage_failure_exit_after).await;
}

/// Tells the log store whether this node leads, as openraft's server metrics say, until the
/// core stops.
async fn follow_leadership(raft: Raft, leading: store::LeadingFlag) {
    let mut server = raft.server_metrics();
    loop {
        let state = server.borrow_and_update().state;
        leading.set(state == openraft::ServerState::Leader);
        if server.changed().await.is_err() {
            return;
        }
    }
}

/// In the data directory: `ordo restore` asks the first start to make the node a one-node
/// cluster (as `--force-new-cluster` does).
pub const FORCE_NEW_CLUSTER_PENDING: &str = "force-new-cluster";
/// In the data directory: this node was made a one-node cluster once.
const FORCE_NEW_CLUSTER_DONE: &str = "forced-new-cluster";

/// `--force-new-cluster` (or a restore's first start): before the Raft core starts, make
/// this node the only voter, keeping its data, and give it a new cluster id. The flag names
/// the cluster and the node it forces (`CLUSTER_ID:NODE_ID`), so a flag left set afterwards no
/// longer matches and the node refuses to start, and so does any other node given it: applied
/// again once members were added back, or on an old member that comes back with its data, it
/// would make a second cluster beside a majority of the old membership. The membership comes
/// first (skipped once this node is the only voter), then the new id, then the marker: a
/// crash before the new id is repeated by starting again with the flag; a crash after it
/// leaves the force done, and the flag, now naming the old cluster, is refused (remove it).
fn force_new_cluster_if_asked(
    config: &NodeConfig,
    log: &mut store::LogStore,
    sm: &store::StateMachineStore,
    cluster_id: &ClusterId,
) -> anyhow::Result<()> {
    let pending = config.data_dir.join(FORCE_NEW_CLUSTER_PENDING);
    let done = config.data_dir.join(FORCE_NEW_CLUSTER_DONE);
    let restoring = pending.exists();
    let sync_dir = || std::fs::File::open(&config.data_dir)?.sync_all();
    if restoring && done.exists() {
        // A restore's force ran, and the pending file's removal did not reach the disk.
        std::fs::remove_file(&pending)
            .and_then(|_| sync_dir())
            .with_context(|| format!("removing {}", pending.display()))?;
        return Ok(());
    }
    if config.force_new_cluster.is_none() && !restoring {
        return Ok(());
    }
    let voters = store::backup::voters(log, sm)?;
    if voters.is_empty() {
        anyhow::bail!(
            "--force-new-cluster: this node has no data (no membership in its log or state): \
             the flag keeps a survivor's data; on an empty node it would start a cluster of its \
             own. Remove the flag"
        );
    }
    if let (Some(asked), false) = (&config.force_new_cluster, restoring) {
        let cluster = cluster_id.get().unwrap_or_else(|| "none".into());
        let ours = format!("{cluster}:{}", config.id);
        if *asked != ours {
            anyhow::bail!(
                "--force-new-cluster {asked}: this is node {} of cluster {} (voters \
                 {voters:?}), so the flag names another node or cluster. A force gives the \
                 node a new cluster id, so a flag left set after one names the old cluster, and \
                 on another node of it (say from a shared environment file) it names another \
                 node: remove the flag. (To force this node, give --force-new-cluster {ours}: \
                 the id in {}, a colon and this node's id.)",
                config.id,
                cluster,
                config.data_dir.join("cluster-id").display()
            );
        }
    }
    let entry = if !restoring && voters == BTreeSet::from([config.id]) {
        // Done before a crash, or a cluster of one: only the new id is left to make.
        tracing::warn!("--force-new-cluster: this node is already the only voter");
        None
    } else {
        Some(
            store::backup::force_single_member(log, sm, config.id, config.peer_address())
                .context("--force-new-cluster: rewriting the membership")?,
        )
    };
    if !restoring {
        // A new identity: nodes of the old cluster (a "lost" majority that was only cut
        // off) are refused if they come back, instead of truncating this node's log; and the
        // flag, once it has done its work, names a cluster this node is no longer in.
        cluster_id.create()?;
    }
    std::fs::write(&done, format!("{}\n", entry.map_or(0, |e| e.index)))
        .and_then(|_| sync_dir())
        .with_context(|| format!("writing {}", done.display()))?;
    if restoring {
        std::fs::remove_file(&pending)
            .and_then(|_| sync_dir())
            .with_context(|| format!("removing {}", pending.display()))?;
    }
    let Some(entry) = entry else {
        tracing::warn!(
            id = config.id,
            cluster_id = cluster_id.get().as_deref().unwrap_or("(none)"),
            "FORCED A NEW CLUSTER: this node is the only voter, with a new cluster id"
        );
        return Ok(());
    };
    tracing::warn!(
        id = config.id,
        old_voters = ?voters,
        membership_entry = entry.index,
        term = entry.leader_id.term,
        cluster_id = cluster_id.get().as_deref().unwrap_or("(none)"),
        "FORCED A NEW CLUSTER: this node is now the only voter and keeps its data; add the \
         others back as new, empty nodes (docs/operations.md, lost quorum)"
    );
    Ok(())
}

/// On a first start, the node with the lowest id in `--peers` forms the cluster with every
/// peer as a voter; the others wait to be contacted.
async fn initialize_if_first(
    raft: &Raft,
    config: &NodeConfig,
    cluster_id: &ClusterId,
) -> anyhow::Result<()> {
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
    // An id given with --cluster-id names the cluster to form; otherwise a new one is made.
    let made = match &config.cluster_id {
        Some(pinned) => pinned.clone(),
        None => cluster_id.create().context("making the cluster id")?,
    };
    tracing::info!(?members, cluster_id = %made, "forming the cluster");
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

    fn config(listen: &str) -> NodeConfig {
        NodeConfig::new(1, listen, "/nonexistent".into(), BTreeMap::new())
    }

    #[test]
    fn plain_http_is_refused_off_loopback_unless_insecure_is_given() {
        let bound = |a: &str| a.parse::<SocketAddr>().unwrap();
        let node = config("localhost:7000");
        assert!(node.check_exposure(bound("127.0.0.1:7000")).is_ok());
        assert!(node.check_exposure(bound("[::1]:7000")).is_ok());
        for exposed in ["0.0.0.0:7000", "10.1.2.3:7000", "[::]:7000"] {
            let err = node.check_exposure(bound(exposed)).unwrap_err().to_string();
            assert!(
                err.contains("--tls-cert") && err.contains("--insecure"),
                "{err}"
            );
            let mut insecure = config(exposed);
            insecure.insecure = true;
            assert!(insecure.check_exposure(bound(exposed)).is_ok());
            let mut with_tls = config(exposed);
            with_tls.tls = Some(TlsFiles {
                cert: "c".into(),
                key: "k".into(),
                ca: "a".into(),
                crl: None,
            });
            assert!(
                with_tls.check_exposure(bound(exposed)).is_err(),
                "TLS without auth"
            );
            with_tls.auth = true;
            assert!(with_tls.check_exposure(bound(exposed)).is_ok());
        }
    }

    #[test]
    fn addresses_are_checked_and_every_interface_needs_an_advertised_address() {
        assert!(config("localhost:7000").check_addresses().is_ok());
        assert_eq!(config("node1:7001").peer_address(), "node1:7001");
        let err = config("0.0.0.0:7000").check_addresses().unwrap_err();
        assert!(err.to_string().contains("--advertise"), "{err}");
        let mut everywhere = config("0.0.0.0:7000");
        everywhere.advertise = Some("node1:7000".into());
        assert!(everywhere.check_addresses().is_ok());
        assert_eq!(everywhere.peer_address(), "node1:7000");
        assert_eq!(everywhere.client_address(), "node1:7000");

        let mut split = config("node1:7000");
        split.peer_listen = Some("0.0.0.0:7100".into());
        assert!(
            split.check_addresses().is_err(),
            "peer port on every interface"
        );
        split.peer_advertise = Some("node1:7100".into());
        assert!(split.check_addresses().is_ok());
        assert_eq!(
            (split.client_address(), split.peer_address()),
            ("node1:7000".to_string(), "node1:7100".to_string())
        );

        let mut mismatch = config("node1:7000");
        mismatch.peers.insert(1, "node1:7999".into());
        let err = mismatch.check_addresses().unwrap_err().to_string();
        assert!(
            err.contains("node1:7999") && err.contains("node1:7000"),
            "{err}"
        );

        assert!(config("node1").check_addresses().is_err());
    }
}
