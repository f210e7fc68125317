//! `ordo-bench`: a load generator for a running cluster — ordo, or etcd with the same load
//! shape through its native gRPC API (`etcd_grpc`, a build feature) or its JSON gateway —
//! printing throughput, latency percentiles (hdrhistogram) and errors by kind, and writing a
//! JSON result.
//!
//! Many tokio tasks share one HTTP/1.1 keep-alive client; each sends one request at a time
//! (closed loop), spread round-robin over the target nodes.
//!
//! With `--feed-subscribers N` (ordo), N change-feed subscribers (`Client::watch`, spread over
//! the nodes) follow the run: the result adds the commit-to-event latency, from a create's
//! acknowledgement to each subscriber's event for it. With `--feed-light` the subscribers are
//! raw streams that only check each event's `id:` follows the one before (no JSON decoding, no
//! latency): the cheapest consumer, so that what the run costs is the nodes' part, not the
//! subscribers' (which share this machine's cores with the nodes and the load).
//! `--feed-replay` instead measures how fast one subscriber takes the change log from its
//! oldest held change (events/s), with no load.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::time::Instant;

mod etcd_grpc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Create orders (etcd: put ~200-byte values).
    Create,
    /// Linearizable reads of existing orders (etcd: linearizable range).
    Read,
    /// Stale local reads (etcd: serializable range).
    ReadStale,
    /// 50% creates, 50% linearizable reads.
    Mixed,
    /// The first page of 100 orders (ordo only).
    ListFirst,
    /// A page of 100 pending orders by cursor, after a random id anywhere in the store: a
    /// filtered page at any depth (ordo only).
    ListCursor,
    /// A page as deep, by page number (`page=N`, skipping every match before it): what a
    /// deep filtered page cost before cursors (ordo only).
    ListNumbered,
    /// The first page of one customer's pending orders, with their total (ordo only).
    ListCustomer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    Ordo,
    /// etcd through its JSON gateway (HTTP/1.1).
    Etcd,
    /// etcd through its gRPC API, as its own clients use it (the `etcd-grpc` build feature).
    EtcdGrpc,
}

#[derive(Debug, Parser)]
#[command(
    name = "ordo-bench",
    version,
    about = "Load-test a running cluster (ordo, or etcd with the same load shape)"
)]
pub struct BenchArgs {
    /// Base URLs of the nodes (etcd: client URLs of the members).
    #[arg(long, env = "ORDO_NODES", default_value = ordo::client::DEFAULT_NODES)]
    pub nodes: String,
    #[arg(long, value_enum, default_value = "ordo")]
    pub target: Target,
    #[arg(long, value_enum, default_value = "create")]
    pub workload: Workload,
    /// Requests in flight (one per task).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Run for this long (ignored with --count).
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Stop after this many requests instead.
    #[arg(long)]
    pub count: Option<u64>,
    /// Items per created order (2 items ≈ a 200-byte body, the etcd value size).
    #[arg(long, default_value_t = 2)]
    pub items: usize,
    /// Write the result as JSON here.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// A label for the result line (e.g. "create c=64").
    #[arg(long)]
    pub label: Option<String>,
    /// For https:// nodes: the CA that signed their certificates (trusted alone).
    #[arg(long, env = "ORDO_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// That CA's revocation lists (PEM), as `ordo --ca-crl`: a listed node is refused.
    #[arg(long, env = "ORDO_CA_CRL", value_name = "FILE")]
    pub ca_crl: Option<PathBuf>,
    /// Sent as `Authorization: Bearer` on every request (ordo nodes run with --auth).
    #[arg(long, env = "ORDO_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Change-feed subscribers following the run (ordo, create workload).
    #[arg(long, default_value_t = 0)]
    pub feed_subscribers: usize,
    /// The subscribers only count events and check their order (see the module comment).
    #[arg(long)]
    pub feed_light: bool,
    /// The subscribers ask the nodes to gather changes for this long (the feed's `batch_ms`).
    #[arg(long, value_name = "MS")]
    pub feed_batch_ms: Option<u64>,
    /// Only measure one subscriber reading the change log from its oldest held change.
    #[arg(long)]
    pub feed_replay: bool,
}

/// What the feed subscribers saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FeedResult {
    pub subscribers: usize,
    pub events: u64,
    /// From a create's acknowledgement to a subscriber's event for it (0 when the event came
    /// first).
    pub commit_to_event_ms: BTreeMap<String, f64>,
    /// Creates whose event some subscriber never got by the end (should be 0); with
    /// `--feed-light`, revisions some subscriber never reached.
    pub missed: u64,
}

/// The figures of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    pub label: String,
    pub target: String,
    pub workload: String,
    pub concurrency: usize,
    pub seconds: f64,
    pub ok: u64,
    pub throughput_per_sec: f64,
    pub latency_ms: BTreeMap<String, f64>,
    pub errors: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<FeedResult>,
}

struct Shared {
    http: reqwest::Client,
    nodes: Vec<String>,
    target: Target,
    workload: Workload,
    items: usize,
    next: AtomicU64,
    budget: Option<u64>,
    read_range: u64,
    hist: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// With feed subscribers: when each created order was acknowledged.
    acked: Option<Mutex<std::collections::HashMap<u64, Instant>>>,
    /// With `--target etcd-grpc`: the connections every request goes through instead.
    grpc: Option<etcd_grpc::EtcdGrpc>,
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl Shared {
    fn create_body(&self, n: u64) -> Value {
        let items: Vec<Value> = (0..self.items)
            .map(|i| json!({"sku": format!("SKU-{:06}-{i}", n % 1_000_000), "quantity": 1 + (n % 5), "unit_price_cents": 1999}))
            .collect();
        json!({"customer_id": format!("bench-{}", n % 1000), "items": items})
    }

    /// What etcd stores for create `n`: the order's JSON, padded to at least 200 bytes.
    fn etcd_value(&self, n: u64) -> String {
        let value = serde_json::to_string(&self.create_body(n)).unwrap_or_default();
        format!("{value:<200}")
    }

    /// One request of the workload; Ok on a successful answer, Err(kind) otherwise.
    async fn one(&self, n: u64) -> Result<(), String> {
        let node = &self.nodes[(n % self.nodes.len() as u64) as usize];
        let write = match self.workload {
            Workload::Create => true,
            Workload::Mixed => n.is_multiple_of(2),
            _ => false,
        };
        let read_id = 1 + (n.wrapping_mul(2654435761) % self.read_range.max(1));
        if let Some(grpc) = &self.grpc {
            return if write {
                grpc.put(n, format!("bench/{n}"), self.etcd_value(n)).await
            } else {
                let serializable = self.workload == Workload::ReadStale;
                grpc.get(n, format!("bench/{read_id}"), serializable).await
            };
        }
        let req = match (self.target, write) {
            (Target::Ordo, true) => self
                .http
                .post(format!("{node}/api/orders"))
                .json(&self.create_body(n)),
            (Target::Ordo, false) => {
                // The bench never changes a status, so every order it made is pending: the
                // numbered page 1 + read_id / 100 is as deep as the cursor at `read_id` (it
                // starts up to 99 orders before it), up to the 10,000 matches a filtered
                // numbered page may skip (page 101; deeper is a 400: cursors go there).
                let path = match self.workload {
                    Workload::ReadStale => format!("/api/orders/{read_id}?consistency=stale"),
                    Workload::ListFirst => "/api/orders?per_page=100".into(),
                    Workload::ListCursor => {
                        format!("/api/orders?status=pending&per_page=100&after={read_id}")
                    }
                    Workload::ListNumbered => format!(
                        "/api/orders?status=pending&per_page=100&page={}",
                        1 + (read_id / 100) % 101
                    ),
                    Workload::ListCustomer => format!(
                        "/api/orders?status=pending&customer_id=bench-{}&per_page=100",
                        n % 1000
                    ),
                    _ => format!("/api/orders/{read_id}"),
                };
                self.http.get(format!("{node}{path}"))
            }
            (Target::EtcdGrpc, _) => unreachable!("sent by the gRPC client above"),
            (Target::Etcd, true) => {
                let value = self.etcd_value(n);
                self.http
                    .post(format!("{node}/v3/kv/put"))
                    .json(&json!({"key": b64(&format!("bench/{n}")), "value": b64(&value)}))
            }
            (Target::Etcd, false) => self.http.post(format!("{node}/v3/kv/range")).json(&json!({
                "key": b64(&format!("bench/{read_id}")),
                "serializable": self.workload == Workload::ReadStale,
            })),
        };
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                "timeout".to_string()
            } else if e.is_connect() {
                "connect".to_string()
            } else {
                "io".to_string()
            }
        })?;
        let status = resp.status();
        // Drain the body so the connection can be reused.
        let body = resp.bytes().await;
        if let (Some(acked), true, Ok(body)) = (&self.acked, write, &body) {
            if let Some(id) = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v["id"].as_u64())
            {
                acked.lock().unwrap().insert(id, Instant::now());
            }
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("http_{}", status.as_u16()))
        }
    }
}

async fn worker(shared: Arc<Shared>, end: Instant) {
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        if shared.budget.is_some_and(|b| n >= b)
            || (shared.budget.is_none() && Instant::now() >= end)
        {
            break;
        }
        let started = Instant::now();
        match shared.one(n).await {
            Ok(()) => {
                let _ = local.record(started.elapsed().as_micros().max(1) as u64);
            }
            Err(kind) => *errors.entry(kind).or_default() += 1,
        }
    }
    let _ = shared.hist.lock().unwrap().add(&local);
    let mut all = shared.errors.lock().unwrap();
    for (k, v) in errors {
        *all.entry(k).or_default() += v;
    }
}

/// How many ids reads may pick from: the orders (or keys) that exist.
async fn read_range(
    http: &reqwest::Client,
    args: &BenchArgs,
    nodes: &[String],
) -> anyhow::Result<u64> {
    match args.target {
        Target::Ordo => {
            let v: Value = http
                .get(format!("{}/api/orders?per_page=1", nodes[0]))
                .send()
                .await?
                .json()
                .await?;
            let total = v["total"].as_u64().unwrap_or(0);
            if total == 0 {
                bail!("no orders to read: run a create benchmark first");
            }
            Ok(total)
        }
        // Keys bench/0..N written by an earlier put run; a missing key is still a full read.
        Target::Etcd | Target::EtcdGrpc => Ok(10_000),
    }
}

pub async fn run_bench(args: &BenchArgs) -> anyhow::Result<BenchResult> {
    let nodes: Vec<String> = args
        .nodes
        .split(',')
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if nodes.is_empty() {
        bail!("no nodes given");
    }
    let mut http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency.max(1))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10));
    if let Some(ca) = &args.ca_cert {
        http = http.use_preconfigured_tls(ordo::tls::client_config(ca, args.ca_crl.as_deref())?);
    }
    if let Some(token) = &args.token {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        );
        http = http.default_headers(headers);
    }
    let http = http.build()?;
    let lists = matches!(
        args.workload,
        Workload::ListFirst
            | Workload::ListCursor
            | Workload::ListNumbered
            | Workload::ListCustomer
    );
    if lists && args.target != Target::Ordo {
        bail!("the list workloads are ordo's only");
    }
    let read_range = if args.workload == Workload::Create {
        0
    } else {
        read_range(&http, args, &nodes)
            .await
            .context("finding orders to read")?
    };
    let grpc = match args.target {
        Target::EtcdGrpc => Some(etcd_grpc::EtcdGrpc::connect(&nodes).await?),
        _ => None,
    };
    let shared = Arc::new(Shared {
        http,
        nodes,
        target: args.target,
        workload: args.workload,
        items: args.items.max(1),
        next: AtomicU64::new(0),
        budget: args.count,
        read_range,
        hist: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        errors: Mutex::new(BTreeMap::new()),
        acked: (args.feed_subscribers > 0).then(Default::default),
        grpc,
    });
    if args.feed_replay {
        return feed_replay(args, &shared.nodes).await;
    }
    let feed = if args.feed_subscribers > 0 {
        Some(Subscribers::start(args, &shared.nodes).await?)
    } else {
        None
    };
    let start = Instant::now();
    let end = start + Duration::from_secs(args.duration_secs);
    let tasks: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| tokio::spawn(worker(shared.clone(), end)))
        .collect();
    for t in tasks {
        t.await?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let hist = shared.hist.lock().unwrap().clone();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let latency_ms: BTreeMap<String, f64> = [
        ("p50", ms(0.5)),
        ("p90", ms(0.9)),
        ("p99", ms(0.99)),
        ("p99.9", ms(0.999)),
        ("max", hist.max() as f64 / 1000.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let workload = format!("{:?}", args.workload).to_lowercase();
    let errors = shared.errors.lock().unwrap().clone();
    let feed = match feed {
        Some(subscribers) => {
            let acked = shared.acked.as_ref().map(|a| a.lock().unwrap().clone());
            Some(
                subscribers
                    .finish(args, &shared.nodes, acked.unwrap_or_default())
                    .await?,
            )
        }
        None => None,
    };
    Ok(BenchResult {
        label: args
            .label
            .clone()
            .unwrap_or_else(|| format!("{workload} c={}", args.concurrency)),
        target: format!("{:?}", args.target).to_lowercase(),
        workload,
        concurrency: args.concurrency,
        seconds,
        ok: hist.len(),
        throughput_per_sec: hist.len() as f64 / seconds,
        latency_ms,
        errors,
        feed,
    })
}

/// A client for the change feed, starting at node `first` of `nodes`.
fn feed_client(
    args: &BenchArgs,
    nodes: &[String],
    first: usize,
) -> anyhow::Result<ordo::client::Client> {
    let mut rotated = nodes.to_vec();
    rotated.rotate_left(first % nodes.len());
    let mut config = ordo::client::ClientConfig::new(rotated);
    config.ca_cert = args.ca_cert.clone();
    config.ca_crl = args.ca_crl.clone();
    config.token = args.token.clone();
    config.deadline = Duration::from_secs(30);
    Ok(ordo::client::Client::try_new(config)?)
}

/// The newest revision, from a listing.
async fn newest_revision(client: &ordo::client::Client) -> anyhow::Result<u64> {
    let q = ordo::client::ListQuery {
        per_page: Some(1),
        ..Default::default()
    };
    let list = client
        .list_orders(&q, ordo::client::ReadMode::Linearizable)
        .await?;
    list.value
        .revision
        .context("the nodes do not report revisions (a build without the change feed?)")
}

/// One subscriber's create events: (order id, when the event came).
type Arrivals = Arc<Mutex<Vec<(u64, Instant)>>>;

/// Subscribers following a run.
struct Subscribers {
    seen: Vec<Arrivals>,
    last: Vec<Arc<AtomicU64>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Subscribers {
    async fn start(args: &BenchArgs, nodes: &[String]) -> anyhow::Result<Subscribers> {
        use futures_util::StreamExt;
        let since = newest_revision(&feed_client(args, nodes, 0)?).await?;
        let mut subscribers = Subscribers {
            seen: Vec::new(),
            last: Vec::new(),
            tasks: Vec::new(),
        };
        for i in 0..args.feed_subscribers {
            if args.feed_light {
                let batch = args
                    .feed_batch_ms
                    .map_or(String::new(), |ms| format!("&batch_ms={ms}"));
                let url = format!(
                    "{}/api/orders/changes?since={since}{batch}",
                    nodes[i % nodes.len()]
                );
                let seen = Arc::new(Mutex::new(Vec::new()));
                let last = Arc::new(AtomicU64::new(since));
                let (into, at) = (seen.clone(), last.clone());
                subscribers
                    .tasks
                    .push(tokio::spawn(light_subscriber(url, into, at)));
                subscribers.seen.push(seen);
                subscribers.last.push(last);
                continue;
            }
            let client = feed_client(args, nodes, i)?;
            let seen = Arc::new(Mutex::new(Vec::new()));
            let last = Arc::new(AtomicU64::new(since));
            let (into, at) = (seen.clone(), last.clone());
            let batch_ms = args.feed_batch_ms;
            subscribers.tasks.push(tokio::spawn(async move {
                let filter = ordo::client::WatchFilter {
                    batch_ms,
                    ..Default::default()
                };
                let changes = client.watch(since, filter, Duration::from_secs(45));
                futures_util::pin_mut!(changes);
                while let Some(Ok(change)) = changes.next().await {
                    if change.kind == ordo::wire::ORDER_CREATED {
                        into.lock().unwrap().push((change.order.id, Instant::now()));
                    }
                    at.store(change.revision, Ordering::Relaxed);
                }
            }));
            subscribers.seen.push(seen);
            subscribers.last.push(last);
        }
        Ok(subscribers)
    }

    /// Waits (bounded) for every subscriber to reach the newest revision, stops them and
    /// measures, against when each create was acknowledged.
    async fn finish(
        self,
        args: &BenchArgs,
        nodes: &[String],
        acked: std::collections::HashMap<u64, Instant>,
    ) -> anyhow::Result<FeedResult> {
        let newest = newest_revision(&feed_client(args, nodes, 0)?).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.last.iter().any(|l| l.load(Ordering::Relaxed) < newest)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for t in &self.tasks {
            t.abort();
        }
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let (mut events, mut missed) = (0u64, 0u64);
        if args.feed_light {
            // Each subscriber's record is one entry: (events taken in order, when).
            for (seen, last) in self.seen.iter().zip(&self.last) {
                events += seen.lock().unwrap().first().map(|(n, _)| *n).unwrap_or(0);
                missed += newest.saturating_sub(last.load(Ordering::Relaxed));
            }
            return Ok(FeedResult {
                subscribers: self.seen.len(),
                events,
                commit_to_event_ms: Default::default(),
                missed,
            });
        }
        for seen in &self.seen {
            let seen = seen.lock().unwrap();
            events += seen.len() as u64;
            let got: std::collections::HashSet<u64> = seen.iter().map(|(id, _)| *id).collect();
            missed += acked.keys().filter(|id| !got.contains(id)).count() as u64;
            for (id, at) in seen.iter() {
                if let Some(ack) = acked.get(id) {
                    let _ =
                        hist.record(at.saturating_duration_since(*ack).as_micros().max(1) as u64);
                }
            }
        }
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        Ok(FeedResult {
            subscribers: self.seen.len(),
            events,
            commit_to_event_ms: [
                ("p50", ms(0.5)),
                ("p99", ms(0.99)),
                ("max", hist.max() as f64 / 1000.0),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            missed,
        })
    }
}

/// A `--feed-light` subscriber: reads the raw stream from `url`, checks that every event's
/// `id:` follows the one before, and keeps the count of such events in `seen` (as its only
/// entry) and the newest id in `last`. It stops at the first event out of order.
async fn light_subscriber(url: String, seen: Arrivals, last: Arc<AtomicU64>) {
    let Ok(mut response) = reqwest::Client::new().get(url).send().await else {
        return;
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut count = 0u64;
    let mut newest = last.load(Ordering::Relaxed);
    while let Ok(Some(chunk)) = response.chunk().await {
        pending.extend_from_slice(&chunk);
        let mut used = 0;
        while let Some(end) = memchr::memmem::find(&pending[used..], b"\n\n") {
            let event = &pending[used..used + end];
            used += end + 2;
            let Some(id) = event
                .strip_prefix(b"id: ")
                .and_then(|rest| rest.split(|b| *b == b'\n').next())
                .and_then(|id| std::str::from_utf8(id).ok()?.parse::<u64>().ok())
            else {
                continue; // a heartbeat
            };
            if id != newest + 1 {
                return;
            }
            newest = id;
            count += 1;
        }
        pending.drain(..used);
        *seen.lock().unwrap() = vec![(count, Instant::now())];
        last.store(newest, Ordering::Relaxed);
    }
}

/// One subscriber reads the change log from its oldest held change (revision 0 if the log
/// was never trimmed) to the newest: events/s.
async fn feed_replay(args: &BenchArgs, nodes: &[String]) -> anyhow::Result<BenchResult> {
    use futures_util::StreamExt;
    let client = feed_client(args, nodes, 0)?;
    let newest = newest_revision(&client).await?;
    let mut since = 0;
    let mut start = Instant::now();
    let mut events = 0u64;
    // At most one restart: from the oldest change the nodes said they hold.
    for _ in 0..2 {
        start = Instant::now();
        events = 0;
        let changes = client.watch(since, Default::default(), Duration::from_secs(45));
        futures_util::pin_mut!(changes);
        let mut trimmed = None;
        while let Some(change) = changes.next().await {
            let change = match change {
                Ok(change) => change,
                Err(ordo::client::ClientError::RevisionGone { oldest, .. }) if events == 0 => {
                    trimmed = Some(oldest);
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            events += 1;
            if change.revision >= newest {
                break;
            }
        }
        match trimmed {
            Some(oldest) if since == 0 => since = oldest.saturating_sub(1),
            Some(_) => bail!("the change log was trimmed again while the replay began"),
            None => break,
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(BenchResult {
        label: args.label.clone().unwrap_or_else(|| "feed replay".into()),
        target: "ordo".into(),
        workload: "feed-replay".into(),
        concurrency: 1,
        seconds,
        ok: events,
        throughput_per_sec: events as f64 / seconds,
        latency_ms: BTreeMap::from([
            ("p50".to_string(), 0.0),
            ("p90".into(), 0.0),
            ("p99".into(), 0.0),
            ("p99.9".into(), 0.0),
            ("max".into(), 0.0),
        ]),
        errors: BTreeMap::new(),
        feed: None,
    })
}

fn main() -> anyhow::Result<()> {
    run(BenchArgs::parse())
}

fn run(args: BenchArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(run_bench(&args))?;
    let l = &result.latency_ms;
    println!(
        "{:<18} {:<5} {:>9.0}/s  p50 {:.2}ms p90 {:.2}ms p99 {:.2}ms p99.9 {:.2}ms max {:.2}ms  errors {:?}",
        result.label, result.target, result.throughput_per_sec, l["p50"], l["p90"], l["p99"], l["p99.9"], l["max"], result.errors
    );
    if let Some(feed) = &result.feed {
        let f = &feed.commit_to_event_ms;
        let latency = match (f.get("p50"), f.get("p99"), f.get("max")) {
            (Some(p50), Some(p99), Some(max)) => {
                format!("commit-to-event p50 {p50:.2}ms p99 {p99:.2}ms max {max:.2}ms")
            }
            _ => "light subscribers (no latency)".into(),
        };
        println!(
            "{:<18} feed  {} subscribers, {} events, {latency}, missed {}",
            result.label, feed.subscribers, feed.events, feed.missed
        );
    }
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
