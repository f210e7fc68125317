//! `ordo serve`: a node's settings, turned into a `node::NodeConfig`.
//!
//! Every setting is a flag, an `ORDO_*` environment variable (the flag's name in capitals:
//! `--heartbeat-ms` is `ORDO_HEARTBEAT_MS`) and a key of the TOML file `--config` names (the
//! flag without its dashes: `heartbeat-ms = 100`). A flag beats the environment, which beats
//! the file, which beats the default. The file is read by turning its keys into flags placed
//! before the real ones (so clap checks every type, and the real ones win); a key whose
//! variable is set in the environment is left out (so the environment wins over it). An
//! unknown key, or a value of the wrong type, is an error naming it. `--print-config` shows
//! the result and exits.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, CommandFactory, FromArgMatches, Parser};
use serde::Serialize;

use crate::api::server::{self, ServerLimits};
use crate::node::{self, InitialClusterState, NodeConfig};
use crate::rpc::cluster_id;
use crate::rpc::network::DEFAULT_MAX_APPEND_BYTES;
use crate::store::{Durability, DEFAULT_CACHE_CAPACITY_BYTES, DEFAULT_CACHE_SWEEP_EVERY};
use crate::tls::TlsFiles;

#[derive(Debug, Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServeArgs {
    /// A TOML file of settings (keys are the flags without dashes); flags and ORDO_*
    /// variables override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the effective settings (file, environment, flags and defaults merged) as TOML
    /// and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
    /// This node's id (a positive integer, unique in the cluster). Required.
    #[arg(long, env = "ORDO_ID")]
    pub id: Option<u64>,
    /// HOST:PORT to serve the API (and, without --peer-listen, the node-to-node routes) on;
    /// a host name is resolved at start. 0.0.0.0 needs --advertise. Required.
    #[arg(long, env = "ORDO_LISTEN", value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// What a node with an empty data directory does: `new` forms the cluster of --peers
    /// (the node with the lowest id does), `existing` only waits to be added. Use `new` only
    /// to create a cluster; a node that lost its data and is restarted with `existing`
    /// cannot form a second one.
    #[arg(long, env = "ORDO_INITIAL_CLUSTER_STATE", value_enum, default_value_t = ClusterState::Existing)]
    pub initial_cluster_state: ClusterState,
    /// HOST:PORT clients and peers are told to use for this node (default --listen).
    #[arg(long, env = "ORDO_ADVERTISE", value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// HOST:PORT to serve the node-to-node routes on, apart from the public API (a firewall
    /// can then keep clients off it). The client port then answers 404 to them, and this
    /// one to everything else.
    #[arg(long, env = "ORDO_PEER_LISTEN", value_name = "HOST:PORT")]
    pub peer_listen: Option<String>,
    /// HOST:PORT the other nodes reach --peer-listen at (default --peer-listen); this is the
    /// node's address in the membership and in --peers.
    #[arg(long, env = "ORDO_PEER_ADVERTISE", value_name = "HOST:PORT")]
    pub peer_advertise: Option<String>,
    /// Directory for the node's log, state and snapshots. Required.
    #[arg(long, env = "ORDO_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The initial cluster, `1=HOST:PORT,2=HOST:PORT,...` (each node's peer address; host
    /// names are fine); read only on a first start.
    #[arg(
        long,
        env = "ORDO_PEERS",
        value_name = "ID=HOST:PORT,...",
        default_value = ""
    )]
    pub peers: String,
    // How fast a dead leader is replaced, against how long a pause a live one survives.
    // openraft 0.9 lets a follower start an election only after `election_timeout_max` (its
    // leader lease) plus its own timeout, drawn once from [min, max), checked every 1.5
    // heartbeats (75 ms): 600 + 300..600 ms here, so a survivor votes 0.9-1.3 s after the last
    // heartbeat. A leader sends no heartbeat while it waits for its log's fsync (openraft 0.9's
    // core awaits it), and under load fsyncs of 0.3-1 s are common on shared disks: with
    // 30/100/200 (a vote after 300-400 ms) such pauses deposed healthy leaders every minute or
    // so (docs/performance.md). Lower them for faster failover on disks that never pause.
    /// Leader heartbeat interval, ms.
    #[arg(long, env = "ORDO_HEARTBEAT_MS", value_name = "MS", default_value_t = node::DEFAULT_HEARTBEAT_MS)]
    pub heartbeat_ms: u64,
    /// Lower bound of a follower's election timeout, ms.
    #[arg(long, env = "ORDO_ELECTION_TIMEOUT_MIN_MS", value_name = "MS", default_value_t = node::DEFAULT_ELECTION_TIMEOUT_MIN_MS)]
    pub election_timeout_min_ms: u64,
    /// Upper bound of the election timeout, ms; also the leader lease a follower honours.
    #[arg(long, env = "ORDO_ELECTION_TIMEOUT_MAX_MS", value_name = "MS", default_value_t = node::DEFAULT_ELECTION_TIMEOUT_MAX_MS)]
    pub election_timeout_max_ms: u64,
    /// How long a request waits for a leader, commit or read index before 503/504.
    #[arg(long, env = "ORDO_REQUEST_TIMEOUT_MS", value_name = "MS", default_value_t = node::DEFAULT_REQUEST_TIMEOUT_MS)]
    pub request_timeout_ms: u64,
    /// Build a snapshot (and purge the log) every this many entries... (the nodes take turns
    /// within each interval, so they do not all dump at once)
    #[arg(long, env = "ORDO_SNAPSHOT_EVERY_LOGS", value_name = "ENTRIES", default_value_t = node::DEFAULT_SNAPSHOT_EVERY_LOGS)]
    pub snapshot_every_logs: u64,
    /// ...or every this percentage of the entries the last one covers, once that is more: the
    /// interval grows with the store, so dumping it costs each write about the same at any
    /// size (0: a fixed interval of --snapshot-every-logs entries).
    #[arg(long, env = "ORDO_SNAPSHOT_GROWTH_PERCENT", value_name = "PERCENT", default_value_t = node::DEFAULT_SNAPSHOT_GROWTH_PERCENT)]
    pub snapshot_growth_percent: u64,
    /// sled page cache in MiB (each MiB costs about 3.5 MB of RSS; more serves reads a little
    /// faster).
    #[arg(long, env = "ORDO_CACHE_MIB", value_name = "MIB", default_value_t = DEFAULT_CACHE_CAPACITY_BYTES / (1024 * 1024))]
    pub cache_mib: u64,
    /// How often, in ms, to sweep sled's cache so that it lets go of pages past its capacity
    /// (0: never). sled does that only as reads queue up in each of its 256 shards, so a node
    /// that read much and went quiet (a follower caught up from its log, a snapshot sent)
    /// could hold hundreds of MB more for as long as it stayed quiet; a sweep costs ~8 ms of
    /// one core.
    #[arg(long, env = "ORDO_CACHE_SWEEP_MS", value_name = "MS", default_value_t = DEFAULT_CACHE_SWEEP_EVERY.as_millis() as u64)]
    pub cache_sweep_ms: u64,
    /// Compress the store's pages on disk (zstd): about a quarter of the disk per order, at
    /// about half the write rate and +50 MB of RSS on two cores. Taken when the data dir is
    /// created; an existing store keeps what it was created with.
    #[arg(long, env = "ORDO_COMPRESS_STORE")]
    pub compress_store: bool,
    /// Byte budget of one append to a follower, KiB: larger batches are cut (one entry is
    /// always sent whole). Each append must be written and fsynced by the follower within
    /// one heartbeat interval, openraft's timeout for it; a timed-out one halves the budget
    /// for that peer for a while. At most 8192.
    #[arg(long, env = "ORDO_MAX_APPEND_KIB", value_name = "KIB", default_value_t = (DEFAULT_MAX_APPEND_BYTES / 1024) as u64)]
    pub max_append_kib: u64,
    /// How long the leader waits for one snapshot chunk, ms; the last chunk's wait includes
    /// the follower's install, which takes seconds for millions of orders.
    #[arg(long, env = "ORDO_INSTALL_SNAPSHOT_TIMEOUT_MS", value_name = "MS", default_value_t = node::DEFAULT_INSTALL_SNAPSHOT_TIMEOUT_MS)]
    pub install_snapshot_timeout_ms: u64,
    /// After the node's storage fails (disk full, I/O error), how long it keeps answering
    /// 503 `storage_failed` (and failing /readyz) before it exits with status 74, ms.
    #[arg(long, env = "ORDO_STORAGE_FAILURE_EXIT_AFTER_MS", value_name = "MS", default_value_t = node::DEFAULT_STORAGE_FAILURE_EXIT_AFTER_MS)]
    pub storage_failure_exit_after_ms: u64,
    /// The change feed keeps at least the newest this many changes (a `since` older than what
    /// the node holds gets 410). Each costs about the size of its order on disk.
    #[arg(long, env = "ORDO_CHANGES_KEEP", value_name = "REVISIONS", default_value_t = crate::store::DEFAULT_CHANGE_RETENTION_REVISIONS)]
    pub changes_keep: u64,
    /// Also drop changes older than this many hours (0: no age limit).
    #[arg(
        long,
        env = "ORDO_CHANGES_KEEP_HOURS",
        value_name = "HOURS",
        default_value_t = 0
    )]
    pub changes_keep_hours: u64,
    /// How often an idle change-feed stream gets a heartbeat comment, ms.
    #[arg(long, env = "ORDO_CHANGES_HEARTBEAT_MS", value_name = "MS", default_value_t = crate::api::changes::DEFAULT_HEARTBEAT_MS)]
    pub changes_heartbeat_ms: u64,
    /// Change-feed streams this node serves at once (more get 503).
    #[arg(long, env = "ORDO_CHANGES_MAX_SUBSCRIBERS", value_name = "N", default_value_t = crate::api::changes::DEFAULT_MAX_SUBSCRIBERS)]
    pub changes_max_subscribers: usize,
    /// A connection whose client takes none of an answer's bytes for this long is closed
    /// (a stalled client of a backup or a change feed), ms.
    #[arg(long, env = "ORDO_WRITE_STALL_TIMEOUT_MS", value_name = "MS", default_value_t = server::DEFAULT_WRITE_STALL_TIMEOUT_MS)]
    pub write_stall_timeout_ms: u64,
    /// A change-feed subscriber more than this many revisions behind for longer than
    /// --changes-lag-grace-ms is sent where to resume and disconnected.
    #[arg(long, env = "ORDO_CHANGES_MAX_LAG", value_name = "REVISIONS", default_value_t = crate::api::changes::DEFAULT_MAX_LAG)]
    pub changes_max_lag: u64,
    /// See --changes-max-lag, ms.
    #[arg(long, env = "ORDO_CHANGES_LAG_GRACE_MS", value_name = "MS", default_value_t = crate::api::changes::DEFAULT_LAG_GRACE_MS)]
    pub changes_lag_grace_ms: u64,
    /// How long a client may take to send a request's head, and then its whole body, ms.
    #[arg(long, env = "ORDO_READ_TIMEOUT_MS", value_name = "MS", default_value_t = server::DEFAULT_READ_TIMEOUT_MS)]
    pub read_timeout_ms: u64,
    /// Connections served at once; more are closed at accept.
    #[arg(long, env = "ORDO_MAX_CONNECTIONS", value_name = "N", default_value_t = server::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// On SIGTERM, how long requests in flight may still finish, ms.
    #[arg(long, env = "ORDO_SHUTDOWN_GRACE_MS", value_name = "MS", default_value_t = server::DEFAULT_SHUTDOWN_GRACE_MS)]
    pub shutdown_grace_ms: u64,
    /// UNSAFE: acknowledge log appends before fsync. A crash can lose acknowledged orders.
    #[arg(long, env = "ORDO_UNSAFE_NO_FSYNC")]
    pub unsafe_no_fsync: bool,
    /// This node's certificate (PEM, leaf first): serve HTTPS to clients and peers. Needs
    /// --tls-key and --tls-ca. Reloaded on SIGHUP and when the file changes.
    #[arg(long, env = "ORDO_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "ORDO_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): peers must present a certificate it signed, and this node's own
    /// certificate must chain to it.
    #[arg(long, env = "ORDO_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Certificate revocation lists of the cluster CA (PEM): a node certificate listed there
    /// is refused by this node, as a peer calling it and as a peer it calls (a decommissioned
    /// or compromised node's key). With TLS only. Reloaded as --tls-cert is.
    #[arg(long, env = "ORDO_TLS_CRL", value_name = "FILE")]
    pub tls_crl: Option<PathBuf>,
    /// Require `Authorization: Bearer TOKEN` of a user (see `ordo user`) on every public route
    /// but /health.
    #[arg(long, env = "ORDO_AUTH")]
    pub auth: bool,
    /// With --auth: a file holding a token (16+ printable characters) that acts as an admin
    /// until the first user exists, to create it (`ordo user add admin --role admin`).
    #[arg(long, env = "ORDO_BOOTSTRAP_TOKEN_FILE", value_name = "FILE")]
    pub bootstrap_token_file: Option<PathBuf>,
    /// Allow serving without TLS and auth on an address other machines can reach (refused
    /// without it).
    #[arg(long, env = "ORDO_INSECURE")]
    pub insecure: bool,
    /// Recover from a lost quorum: make this node the only voter of its cluster, keeping its
    /// data (etcd's flag of the same name). The value names the cluster and the node:
    /// CLUSTER_ID:NODE_ID (the data dir's `cluster-id` file, `none` for a cluster formed
    /// before ids, and `--id`). The force changes the cluster id: a flag left set afterwards,
    /// or given to another node, does not match and that node refuses to start. See
    /// docs/operations.md.
    #[arg(
        long,
        env = "ORDO_FORCE_NEW_CLUSTER",
        value_name = "CLUSTER_ID:NODE_ID"
    )]
    pub force_new_cluster: Option<String>,
    /// The cluster this node belongs to (32 hex digits; `ordo cluster status` shows it). Give
    /// it to a node joining with an empty data dir: it then refuses every other cluster's
    /// calls from its first start, instead of learning the id of the first call it serves.
    /// A data dir that names another cluster is refused. With `--initial-cluster-state new`,
    /// the cluster formed gets this id.
    #[arg(long, env = "ORDO_CLUSTER_ID", value_name = "ID", value_parser = cluster_id::parse)]
    pub cluster_id: Option<String>,
}

fn parse_peers(raw: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut peers = BTreeMap::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .with_context(|| format!("peer {part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .parse()
            .with_context(|| format!("peer id {id:?} is not a number"))?;
        crate::rpc::check_host_port(addr).map_err(|e| anyhow::anyhow!("--peers: {e}"))?;
        if peers.insert(id, addr.to_string()).is_some() {
            bail!("peer id {id} given twice");
        }
    }
    Ok(peers)
}

/// `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterState {
    New,
    Existing,
}

/// `serve`'s arguments alone, for parsing them again with a file's keys in front.
#[derive(Debug, Parser)]
#[command(name = "ordo serve", args_override_self = true)]
struct ServeOnly {
    #[command(flatten)]
    args: ServeArgs,
}

/// The settings with `--config`'s file merged in under the environment and the flags.
/// `flags` are the command line after `serve`.
fn with_config_file(args: ServeArgs, flags: Vec<std::ffi::OsString>) -> anyhow::Result<ServeArgs> {
    let Some(path) = &args.config else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --config {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("--config {}", path.display()))?;
    let command = ServeOnly::command();
    let mut from_file: Vec<std::ffi::OsString> = Vec::new();
    for (key, value) in &table {
        if key == "log-format" {
            bail!(
                "--config {}: log-format cannot be set in the file (logging starts before it is \
                 read): use --log-format or ORDO_LOG_FORMAT",
                path.display()
            );
        }
        let arg = command
            .get_arguments()
            .find(|a| {
                a.get_long() == Some(key.as_str())
                    && !matches!(key.as_str(), "config" | "print-config" | "help")
            })
            .with_context(|| {
                format!(
                    "--config {}: unknown key {key:?} (keys are `ordo serve` flags without the \
                     dashes, as `ordo serve --help` lists them)",
                    path.display()
                )
            })?;
        if arg
            .get_env()
            .is_some_and(|var| std::env::var_os(var).is_some())
        {
            continue; // the environment wins over the file
        }
        let parsed_as = arg.get_value_parser().type_id();
        let expected = if !arg.get_action().takes_values() {
            "true or false"
        } else if parsed_as == TypeId::of::<u64>() || parsed_as == TypeId::of::<usize>() {
            "an integer"
        } else {
            "a string"
        };
        let flag = format!("--{key}");
        match (value, expected) {
            (toml::Value::Boolean(true), "true or false") => from_file.push(flag.into()),
            (toml::Value::Boolean(false), "true or false") => {}
            // `--key=value`: a value that starts with `-` is still a value.
            (toml::Value::String(s), "a string") => from_file.push(format!("{flag}={s}").into()),
            (toml::Value::Integer(n), "an integer") => from_file.push(format!("{flag}={n}").into()),
            (other, _) => bail!(
                "--config {}: {key} must be {expected}, got {} {other}",
                path.display(),
                other.type_str()
            ),
        }
    }
    let argv = std::iter::once(std::ffi::OsString::from("ordo serve"))
        .chain(from_file)
        .chain(flags);
    let matches = command.try_get_matches_from(argv).map_err(|e| {
        anyhow::anyhow!(
            "settings from --config {} and the command line: {e}",
            path.display()
        )
    })?;
    Ok(ServeOnly::from_arg_matches(&matches)?.args)
}

/// The flags without `ordo`'s global ones (`--log-format`, the client options), which
/// `serve`'s own parser does not know; `main` has read them already.
fn without_global_flags(flags: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    use clap::CommandFactory;
    // (`--name`, whether it takes a value) of every global option.
    let globals: Vec<(String, bool)> = super::Cli::command()
        .get_arguments()
        .filter(|a| a.is_global_set())
        .filter_map(|a| {
            Some((
                format!("--{}", a.get_long()?),
                a.get_action().takes_values(),
            ))
        })
        .collect();
    let mut out = Vec::with_capacity(flags.len());
    let mut skip_value = false;
    for flag in flags {
        let text = flag.to_string_lossy().into_owned();
        if skip_value {
            skip_value = false;
        } else if let Some((_, takes_value)) = globals.iter().find(|(name, _)| *name == text) {
            skip_value = *takes_value;
        } else if !globals
            .iter()
            .any(|(name, _)| text.starts_with(&format!("{name}=")))
        {
            out.push(flag);
        }
    }
    out
}

fn required<T>(value: Option<T>, flag: &str) -> anyhow::Result<T> {
    value.with_context(|| {
        let key = flag.trim_start_matches('-');
        let var = format!("ORDO_{}", key.replace('-', "_").to_uppercase());
        format!("{flag} is required (as a flag, as {var}, or as `{key}` in the --config file)")
    })
}

pub fn run(args: ServeArgs) -> anyhow::Result<i32> {
    // The command line after `ordo serve`, for parsing again behind the file's keys.
    let flags: Vec<_> = std::env::args_os()
        .skip_while(|a| a != "serve")
        .skip(1)
        .collect();
    let args = with_config_file(args, without_global_flags(flags))?;
    if args.print_config {
        print!(
            "{}",
            toml::to_string(&args).context("printing the settings")?
        );
        return Ok(0);
    }
    let id = required(args.id, "--id")?;
    let peers = parse_peers(&args.peers)?;
    let data_dir = required(args.data_dir, "--data-dir")?;
    if args.cluster_id.is_some() && args.force_new_cluster.is_some() {
        bail!(
            "--cluster-id and --force-new-cluster: the force gives the node a new cluster id, \
             which the pinned one would then contradict; leave --cluster-id (ORDO_CLUSTER_ID, \
             cluster-id in --config) out"
        );
    }
    if id == 0 || peers.contains_key(&0) {
        // openraft takes 0 as well, but the leader gauge in /metrics says 0 for no leader, and
        // learners are refused id 0. Builds before this one took it: a store made by one keeps
        // working, and the log says how to move off it.
        let in_use = std::fs::read_dir(&data_dir).is_ok_and(|mut d| d.next().is_some());
        if !in_use {
            bail!("node ids are 1 or more (--id, --peers)");
        }
        tracing::warn!(
            "node id 0 (--id or --peers) is kept for stores made by older builds only: add \
             the node again under a new id (ordo cluster add-learner, then members) and \
             take 0 out"
        );
    }
    if !peers.is_empty() && !peers.contains_key(&id) {
        bail!("--peers must include this node's own id {id}");
    }
    let config = NodeConfig {
        id,
        listen: required(args.listen, "--listen")?,
        advertise: args.advertise,
        peer_listen: args.peer_listen,
        peer_advertise: args.peer_advertise,
        initial_cluster_state: match args.initial_cluster_state {
            ClusterState::New => InitialClusterState::New,
            ClusterState::Existing => InitialClusterState::Existing,
        },
        data_dir,
        peers,
        heartbeat_ms: args.heartbeat_ms,
        election_timeout_min_ms: args.election_timeout_min_ms,
        election_timeout_max_ms: args.election_timeout_max_ms,
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        snapshot_every_logs: args.snapshot_every_logs,
        snapshot_growth_percent: args.snapshot_growth_percent,
        cache_capacity_bytes: args.cache_mib * 1024 * 1024,
        cache_sweep_every: (args.cache_sweep_ms > 0)
            .then(|| Duration::from_millis(args.cache_sweep_ms)),
        compress_store: args.compress_store,
        // Peers refuse append bodies over 16 MiB: keep batches well under that.
        max_append_bytes: (args.max_append_kib.clamp(1, 8192) * 1024) as usize,
        install_snapshot_timeout_ms: args.install_snapshot_timeout_ms,
        storage_failure_exit_after: Duration::from_millis(args.storage_failure_exit_after_ms),
        change_feed: node::ChangeFeedConfig {
            retention: crate::store::ChangeRetention {
                revisions: args.changes_keep.max(1),
                max_age_ms: (args.changes_keep_hours > 0)
                    .then(|| (args.changes_keep_hours as i64).saturating_mul(3_600_000)),
            },
            heartbeat: Duration::from_millis(args.changes_heartbeat_ms.max(100)),
            max_subscribers: args.changes_max_subscribers,
            max_lag: args.changes_max_lag,
            lag_grace: Duration::from_millis(args.changes_lag_grace_ms),
        },
        server_limits: ServerLimits {
            header_read_timeout: Duration::from_millis(args.read_timeout_ms),
            body_read_timeout: Duration::from_millis(args.read_timeout_ms),
            max_connections: args.max_connections.max(1),
            shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
            write_stall_timeout: Duration::from_millis(args.write_stall_timeout_ms.max(100)),
        },
        durability: if args.unsafe_no_fsync {
            Durability::UnsafeNoFsync
        } else {
            Durability::Fsync
        },
        tls: match (args.tls_cert, args.tls_key, args.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Some(TlsFiles {
                cert,
                key,
                ca,
                crl: args.tls_crl,
            }),
            (None, None, None) if args.tls_crl.is_some() => {
                bail!("--tls-crl needs TLS: give --tls-cert, --tls-key and --tls-ca too")
            }
            (None, None, None) => None,
            _ => bail!(
                "--tls-cert, --tls-key and --tls-ca go together (from flags, ORDO_TLS_* or the \
                 --config file): give all three or none"
            ),
        },
        auth: args.auth,
        bootstrap_token_file: args.bootstrap_token_file,
        insecure: args.insecure,
        force_new_cluster: args.force_new_cluster,
        cluster_id: args.cluster_id,
    };
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    // The node runs as a task on the runtime's workers, not on this thread: whatever the
    // node's top future waits on would otherwise wake this (non-worker) thread, a context
    // switch of its own each time.
    let stopped = rt.block_on(async { tokio::spawn(node::serve(config)).await });
    match stopped.context("the node's task panicked")?? {
        node::Stopped::Asked => Ok(0),
        node::Stopped::StorageFailed => Ok(STORAGE_FAILED_EXIT_CODE),
    }
}

/// `ordo serve`'s exit status after a storage failure (sysexits' EX_IOERR): a supervisor
/// restarts the node (systemd's `Restart=on-failure`), which then reads its store afresh.
pub const STORAGE_FAILED_EXIT_CODE: i32 = 74;
