//! `ordo-bench`: a load generator for a running cluster — ordo, or etcd through its JSON
//! gateway with the same load shape — printing throughput, latency percentiles (hdrhistogram)
//! and errors by kind, and writing a JSON result.
//!
//! Many tokio tasks share one HTTP/1.1 keep-alive client; each sends one request at a time
//! (closed loop), spread round-robin over the target nodes.

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    Ordo,
    Etcd,
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
    /// Sent as `Authorization: Bearer` on every request (ordo nodes run with --auth).
    #[arg(long, env = "ORDO_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
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

    /// One request of the workload; Ok on a successful answer, Err(kind) otherwise.
    async fn one(&self, n: u64) -> Result<(), String> {
        let node = &self.nodes[(n % self.nodes.len() as u64) as usize];
        let write = match self.workload {
            Workload::Create => true,
            Workload::Read | Workload::ReadStale => false,
            Workload::Mixed => n.is_multiple_of(2),
        };
        let read_id = 1 + (n.wrapping_mul(2654435761) % self.read_range.max(1));
        let req = match (self.target, write) {
            (Target::Ordo, true) => self
                .http
                .post(format!("{node}/api/orders"))
                .json(&self.create_body(n)),
            (Target::Ordo, false) => {
                let q = if self.workload == Workload::ReadStale {
                    "?consistency=stale"
                } else {
                    ""
                };
                self.http.get(format!("{node}/api/orders/{read_id}{q}"))
            }
            (Target::Etcd, true) => {
                let value = serde_json::to_string(&self.create_body(n)).unwrap_or_default();
                let value = format!("{value:<200}");
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
        let _ = resp.bytes().await;
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
        Target::Etcd => Ok(10_000),
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
        http = http.use_preconfigured_tls(ordo::tls::client_config(ca)?);
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
    let read_range = if args.workload == Workload::Create {
        0
    } else {
        read_range(&http, args, &nodes)
            .await
            .context("finding orders to read")?
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
    });
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
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
