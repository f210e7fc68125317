//! ordo's test kit: the process-cluster fixture the tests drive real `ordo` processes with
//! (`cluster`), network namespaces for partitions (`netns`), and fault injection with a
//! linearizability check (the run below, `ordo-torture`, and the torture tests).
//!
//! A run starts a three-node cluster of real processes (each in its own network namespace
//! when it can, see `netns`), drives it with concurrent clients doing creates (with
//! idempotency keys), status changes (with and without expected versions) and linearizable
//! reads, while a nemesis kills, pauses and partitions nodes on a seeded schedule. Every
//! operation goes into a `history`; afterwards the cluster is healed and read in full, and
//! the run passes only if the history is linearizable per order (`checker`), every
//! acknowledged create exists, no idempotency key made two orders, and all nodes hold
//! identical state.

pub mod checker;
pub mod cluster;
pub mod history;
pub mod inprocess;
pub mod netns;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::time::Instant;

use self::checker::Verdict;
use self::cluster::ProcessCluster;
use self::history::{History, Op, OpKind, Outcome};
use ordo::order::OrderStatus;
use ordo::wire::ErrorCode;

/// One kind of fault the nemesis can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillLeader,
    KillRandom,
    PauseLeader,
    PauseRandom,
    /// Cut the leader off from the other nodes.
    PartitionLeader,
    /// Cut a random node off (a 1|2 split).
    PartitionSplit,
    /// Cut one link only: two nodes cannot talk, the third talks to both (a bridge).
    PartitionBridge,
    /// SIGSTOP a node that is not the leader: it falls behind and must catch up.
    PauseFollower,
    /// SIGTERM the leader while one client holds an upload half-sent; restart it after.
    SigtermLeaderStalled,
    /// Undecodable bytes (lying length prefixes, random tails) at every node-to-node route
    /// of every node; no node may go down.
    HostileBytes,
}

impl Fault {
    pub const ALL: [Fault; 10] = [
        Fault::KillLeader,
        Fault::KillRandom,
        Fault::PauseLeader,
        Fault::PauseRandom,
        Fault::PartitionLeader,
        Fault::PartitionSplit,
        Fault::PartitionBridge,
        Fault::PauseFollower,
        Fault::SigtermLeaderStalled,
        Fault::HostileBytes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::KillRandom => "kill",
            Fault::PauseLeader => "pause-leader",
            Fault::PauseRandom => "pause",
            Fault::PartitionLeader => "partition-leader",
            Fault::PartitionSplit => "split",
            Fault::PartitionBridge => "bridge",
            Fault::PauseFollower => "pause-follower",
            Fault::SigtermLeaderStalled => "sigterm-leader-stalled",
            Fault::HostileBytes => "hostile-bytes",
        }
    }

    pub fn parse(s: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == s)
    }

    fn targets_leader(self) -> bool {
        matches!(
            self,
            Fault::KillLeader
                | Fault::PauseLeader
                | Fault::PartitionLeader
                | Fault::SigtermLeaderStalled
        )
    }

    fn needs_network(self) -> bool {
        matches!(
            self,
            Fault::PartitionLeader | Fault::PartitionSplit | Fault::PartitionBridge
        )
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct TortureConfig {
    pub bin: PathBuf,
    pub seed: u64,
    pub duration: Duration,
    pub clients: usize,
    pub faults: Vec<Fault>,
    /// Take the faults in turn (so each kind happens equally often) instead of at random.
    pub cycle_faults: bool,
    /// Try to put nodes in network namespaces (needed for partitions).
    pub use_netns: bool,
    /// Quiet time between faults, and how long a fault lasts (by default longer than an
    /// election with ordo's timings, 0.9-1.3 s, or about 2 s when the first candidate is
    /// refused: a paused or cut-off leader is replaced while the fault lasts).
    pub quiet: Duration,
    pub hold: Duration,
    /// Nodes build a snapshot every this many applied entries, a fixed interval (`None`: ordo's
    /// default, an interval that grows with the store). Small values make snapshot builds, and installs
    /// on nodes that fell behind, part of the run.
    pub snapshot_every_logs: Option<u64>,
    /// Voters in the cluster (3 or 5, say).
    pub nodes: u64,
    /// Creates carry the largest legal orders (100 items, 64-character SKUs, a 1000-character
    /// note) instead of one small line.
    pub large_orders: bool,
    /// Run node 1 (it forms the cluster, so it usually leads first) with its clock moved by
    /// this libfaketime offset (`+1d`: a day ahead).
    pub skewed_clock: Option<String>,
    /// Every node over TLS (development certificates), the workload's clients too.
    pub tls: bool,
}

/// The seed a torture test runs with: `ORDO_TORTURE_SEED` if set (to replay a failed run),
/// else the test's own fixed one.
pub fn seed_from_env(default: u64) -> u64 {
    std::env::var("ORDO_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Where Debian's libfaketime puts the preload library.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// How long every node may take to catch up with the leader after a run (see `run`).
const FINAL_CATCH_UP: Duration = Duration::from_secs(180);

impl TortureConfig {
    pub fn new(bin: PathBuf, seed: u64, duration: Duration) -> TortureConfig {
        TortureConfig {
            bin,
            seed,
            duration,
            clients: 4,
            faults: Fault::ALL.to_vec(),
            cycle_faults: false,
            use_netns: true,
            quiet: Duration::from_millis(1500),
            hold: Duration::from_millis(3000),
            snapshot_every_logs: None,
            nodes: 3,
            large_orders: false,
            skewed_clock: None,
            tls: false,
        }
    }
}

/// What a run did and found.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub ops_by_outcome: BTreeMap<String, u64>,
    pub total_ops: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub skipped_network: Option<String>,
    pub failovers: u64,
    pub longest_unavailable: Duration,
    pub acked_creates: u64,
    pub orders_at_end: u64,
    pub lost_acked: Vec<String>,
    pub duplicated: Vec<String>,
    pub unexpected_answers: Vec<String>,
    pub digests_equal: bool,
    pub verdict: Verdict,
    /// How long nodes took, after a pause or a kill ended, to apply what the leader had
    /// applied at that moment (the longest, and how many were measured).
    pub longest_catch_up: Duration,
    pub catch_ups: u64,
    /// Nodes that did not catch up within the deadline, or went down by themselves.
    pub stuck: Vec<String>,
    /// Orders whose `created_at` is more than an hour off the harness's clock (a leader's
    /// wrong clock leaking into the data; see `--skewed-clock`).
    pub misdated: Vec<String>,
    /// Every node seen leading during the run.
    pub leaders_seen: BTreeSet<u64>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Linearizable
            && self.lost_acked.is_empty()
            && self.duplicated.is_empty()
            && self.unexpected_answers.is_empty()
            && self.digests_equal
            && self.stuck.is_empty()
            && self.misdated.is_empty()
    }

    pub fn fault_count(&self, f: Fault) -> u64 {
        self.faults.get(f.name()).copied().unwrap_or(0)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "torture run, seed {}", self.seed)?;
        writeln!(
            f,
            "  operations: {} ({:?})",
            self.total_ops, self.ops_by_outcome
        )?;
        writeln!(f, "  faults injected: {:?}", self.faults)?;
        if let Some(why) = &self.skipped_network {
            writeln!(f, "  partitions SKIPPED: {why}")?;
        }
        writeln!(
            f,
            "  leader changes seen: {} (leaders: {:?})",
            self.failovers, self.leaders_seen
        )?;
        writeln!(
            f,
            "  longest window without an acknowledged write: {:.2}s",
            self.longest_unavailable.as_secs_f64()
        )?;
        writeln!(
            f,
            "  catch-up after a pause or kill: longest {:.2}s of {} measured",
            self.longest_catch_up.as_secs_f64(),
            self.catch_ups
        )?;
        if !self.stuck.is_empty() {
            writeln!(f, "  STUCK or DOWN: {:?}", self.stuck)?;
        }
        if !self.misdated.is_empty() {
            writeln!(
                f,
                "  MISDATED orders ({}): {:?}",
                self.misdated.len(),
                &self.misdated[..self.misdated.len().min(5)]
            )?;
        }
        writeln!(
            f,
            "  acknowledged creates: {}, orders at the end: {}",
            self.acked_creates, self.orders_at_end
        )?;
        writeln!(
            f,
            "  lost acknowledged creates: {}, duplicated keys: {}",
            self.lost_acked.len(),
            self.duplicated.len()
        )?;
        writeln!(
            f,
            "  nodes converged to identical state: {}",
            self.digests_equal
        )?;
        if !self.unexpected_answers.is_empty() {
            writeln!(
                f,
                "  unexpected answers: {:?}",
                &self.unexpected_answers[..self.unexpected_answers.len().min(10)]
            )?;
        }
        match &self.verdict {
            Verdict::Linearizable => writeln!(f, "  checker: linearizable")?,
            Verdict::Unverified { object } => writeln!(
                f,
                "  checker: NOT VERIFIED (search budget) on order {object}"
            )?,
            Verdict::Violation { object, ops } => {
                writeln!(
                    f,
                    "  checker: NOT LINEARIZABLE — order {object}; its history (µs since start):"
                )?;
                for op in ops {
                    writeln!(
                        f,
                        "    client {} {:>10}..{:<10} {:?} -> {:?}",
                        op.client, op.invoked_us, op.completed_us, op.kind, op.outcome
                    )?;
                }
            }
        }
        write!(
            f,
            "  verdict: {}",
            if self.passed() {
                "PASS"
            } else {
                "FAIL (rerun with this seed)"
            }
        )
    }
}

/// What the clients share.
struct Shared {
    urls: Vec<String>,
    http: reqwest::Client,
    history: History,
    start: Instant,
    stop: AtomicBool,
    /// (tag, id) of every acknowledged create.
    known: Mutex<Vec<(String, u64)>>,
    /// Every tag a create was attempted with.
    attempted: Mutex<BTreeSet<String>>,
    last_ack_us: AtomicU64,
    longest_gap_us: AtomicU64,
    unexpected: Mutex<Vec<String>>,
    large_orders: bool,
}

/// The body of a create tagged `tag`: one small line, or the largest legal order.
fn create_body(client: usize, tag: &str, large: bool) -> Value {
    if !large {
        return json!({"customer_id": format!("client-{client}"),
            "items": [{"sku": "t", "quantity": 1, "unit_price_cents": 100}], "note": tag});
    }
    let items: Vec<Value> = (0..ordo::order::MAX_ITEMS)
        .map(|i| {
            json!({"sku": format!("{i:03}-{}", "s".repeat(ordo::order::MAX_SKU_CHARS - 4)),
                   "quantity": ordo::order::MAX_QUANTITY,
                   "unit_price_cents": ordo::order::MAX_UNIT_PRICE_CENTS})
        })
        .collect();
    // The tag leads the note (the checker reads orders back by it), padded to the limit.
    let note = format!(
        "{tag}{}",
        " ".repeat(ordo::order::MAX_NOTE_CHARS - tag.len())
    );
    json!({"customer_id": format!("client-{client}"), "items": items, "note": note})
}

/// The tag a create's note carries (see `create_body`).
fn note_tag(order: &Value) -> String {
    order["note"]
        .as_str()
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn acked_write(&self) {
        let now = self.now_us();
        let last = self.last_ack_us.swap(now, Ordering::Relaxed);
        self.longest_gap_us
            .fetch_max(now.saturating_sub(last), Ordering::Relaxed);
    }

    fn unexpected(&self, what: String) {
        self.unexpected.lock().unwrap().push(what);
    }
}

/// Sends one request; classifies the answer into an outcome.
async fn send(req: reqwest::RequestBuilder, is_write: bool) -> Result<(u16, Value), Outcome> {
    match req.timeout(Duration::from_secs(5)).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp.json::<Value>().await.unwrap_or(Value::Null);
            match status {
                503 => Err(Outcome::Failed),
                504 if is_write => Err(Outcome::Unknown),
                504 => Err(Outcome::Failed),
                _ => Ok((status, body)),
            }
        }
        // Nothing was sent: no effect.
        Err(e) if e.is_connect() => Err(Outcome::Failed),
        Err(_) if is_write => Err(Outcome::Unknown),
        Err(_) => Err(Outcome::Failed),
    }
}

fn order_state(body: &Value) -> Option<Outcome> {
    let status = OrderStatus::parse(body["status"].as_str()?)?;
    Some(Outcome::State {
        status,
        version: body["version"].as_u64()?,
    })
}

async fn client_loop(shared: Arc<Shared>, client: usize, seed: u64) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ops = 0u64;
    let mut next_tag = 0u64;
    while !shared.stop.load(Ordering::Relaxed) && ops < 1_000_000 {
        ops += 1;
        let url = &shared.urls[rng.gen_range(0..shared.urls.len())];
        let target = {
            let known = shared.known.lock().unwrap();
            let recent = &known[known.len().saturating_sub(12)..];
            (!recent.is_empty()).then(|| recent[rng.gen_range(0..recent.len())].clone())
        };
        let roll: f64 = rng.gen();
        let invoked_us = shared.now_us();
        let (object, kind, outcome) = match target {
            Some((tag, id)) if roll >= 0.25 => {
                if roll < 0.6 {
                    let to = OrderStatus::ALL[rng.gen_range(0..5)];
                    let expected_version = rng.gen_bool(0.5).then(|| rng.gen_range(1..=4));
                    let req = shared.http.patch(format!("{url}/api/orders/{id}")).json(
                        &json!({"status": to.as_str(), "expected_version": expected_version}),
                    );
                    let outcome = match send(req, true).await {
                        Ok((200, body)) => {
                            shared.acked_write();
                            order_state(&body).unwrap_or(Outcome::Unknown)
                        }
                        Ok((404, _)) => Outcome::NotFound,
                        Ok((409, body))
                            if body["error"]["code"] == ErrorCode::InvalidTransition =>
                        {
                            Outcome::InvalidTransition
                        }
                        Ok((409, body)) if body["error"]["code"] == ErrorCode::VersionConflict => {
                            Outcome::VersionConflict
                        }
                        Ok((status, body)) => {
                            shared.unexpected(format!("PATCH {status} {body}"));
                            Outcome::Unknown
                        }
                        Err(o) => o,
                    };
                    (
                        tag,
                        OpKind::SetStatus {
                            to,
                            expected_version,
                        },
                        outcome,
                    )
                } else {
                    let outcome = match send(
                        shared.http.get(format!("{url}/api/orders/{id}")),
                        false,
                    )
                    .await
                    {
                        Ok((200, body)) => order_state(&body).unwrap_or(Outcome::Failed),
                        Ok((404, _)) => Outcome::NotFound,
                        Ok((status, body)) => {
                            shared.unexpected(format!("GET {status} {body}"));
                            Outcome::Failed
                        }
                        Err(o) => o,
                    };
                    (tag, OpKind::Read, outcome)
                }
            }
            _ => {
                let tag = format!("c{client}-{next_tag}");
                next_tag += 1;
                shared.attempted.lock().unwrap().insert(tag.clone());
                // A create that did not answer is retried with the same key, a few times.
                for attempt in 0..4 {
                    let url = if attempt == 0 {
                        url
                    } else {
                        &shared.urls[rng.gen_range(0..shared.urls.len())]
                    };
                    let invoked = if attempt == 0 {
                        invoked_us
                    } else {
                        shared.now_us()
                    };
                    let body = create_body(client, &tag, shared.large_orders);
                    let req = shared
                        .http
                        .post(format!("{url}/api/orders"))
                        .header("Idempotency-Key", &tag)
                        .json(&body);
                    let outcome = match send(req, true).await {
                        Ok((200 | 201, body)) => {
                            shared.acked_write();
                            if let Some(id) = body["id"].as_u64() {
                                shared.known.lock().unwrap().push((tag.clone(), id));
                            }
                            Outcome::Created
                        }
                        Ok((status, body)) => {
                            shared.unexpected(format!("POST {status} {body}"));
                            Outcome::Unknown
                        }
                        Err(o) => o,
                    };
                    let done = outcome == Outcome::Created;
                    let completed_us = shared.now_us();
                    let op = Op {
                        client,
                        object: tag.clone(),
                        kind: OpKind::Create,
                        invoked_us: invoked,
                        completed_us,
                        outcome,
                    };
                    shared.history.record(op);
                    if done || shared.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    ops += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        shared.history.record(Op {
            client,
            object,
            kind,
            invoked_us,
            completed_us: shared.now_us(),
            outcome,
        });
    }
    ops
}

/// Which node leads now, by asking the running nodes.
async fn current_leader(cluster: &ProcessCluster, running: &[u64]) -> Option<u64> {
    let mut best: Option<(u64, u64)> = None;
    for &id in running {
        if let Some(s) = cluster.status(id).await {
            if s["state"] == "leader" {
                let term = s["term"].as_u64().unwrap_or(0);
                if best.is_none_or(|(_, t)| term > t) {
                    best = Some((id, term));
                }
            }
        }
    }
    best.map(|(id, _)| id)
}

/// What the nemesis measured of nodes coming back.
#[derive(Debug, Default)]
struct CatchUps {
    longest: Duration,
    count: u64,
    stuck: Vec<String>,
}

/// A node's `last_applied`, if it answers.
async fn applied_index(cluster: &ProcessCluster, id: u64) -> Option<u64> {
    cluster.status(id).await?["last_applied"].as_u64()
}

/// Times how long node `id` takes to apply what `leader` has applied now.
async fn measure_catch_up(
    cluster: &ProcessCluster,
    id: u64,
    leader: u64,
    what: &str,
    stats: &mut CatchUps,
) {
    let started = Instant::now();
    let Some(target) = applied_index(cluster, leader).await else {
        return;
    };
    let deadline = started + cluster::DEADLINE * 2;
    loop {
        if applied_index(cluster, id)
            .await
            .is_some_and(|a| a >= target)
        {
            stats.longest = stats.longest.max(started.elapsed());
            stats.count += 1;
            return;
        }
        if Instant::now() > deadline {
            stats.stuck.push(format!(
                "node {id} after {what}: not at index {target} within {:?}",
                cluster::DEADLINE * 2
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Undecodable bodies for the node-to-node routes: lying length prefixes and random tails.
/// Bodies that happen to decode are left out: a forged but well-formed Raft message is a
/// question of peer authentication, not of robustness.
fn hostile_bodies(rng: &mut StdRng, route: &str, n: usize) -> Vec<Vec<u8>> {
    use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
    use ordo::raft::TypeConfig;
    const LIMIT: usize = 1 << 20;
    let decodes = |b: &[u8]| match route {
        "/raft/append" => {
            ordo::codec::decode_bounded::<AppendEntriesRequest<TypeConfig>, LIMIT>(b).is_ok()
        }
        "/raft/vote" => ordo::codec::decode_bounded::<VoteRequest<u64>, LIMIT>(b).is_ok(),
        "/raft/snapshot" => {
            ordo::codec::decode_bounded::<InstallSnapshotRequest<TypeConfig>, LIMIT>(b).is_ok()
        }
        _ => ordo::codec::decode_bounded::<ordo::rpc::WriteRequest, LIMIT>(b).is_ok(),
    };
    let mut out = Vec::new();
    for _ in 0..n * 20 {
        if out.len() >= n {
            break;
        }
        let len = rng.gen_range(2..64);
        let mut body: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        body[0] = ordo::codec::FORMAT_VERSION;
        // Varint markers of 4- and 8-byte lengths, then a huge length.
        let at = rng.gen_range(1..len);
        body[at] = if rng.gen_bool(0.5) { 0xfd } else { 0xfc };
        for b in body.iter_mut().skip(at + 1).take(8) {
            *b = rng.gen_range(0x40..=0xff);
        }
        if !decodes(&body) {
            out.push(body);
        }
    }
    out
}

/// Injects one fault, holds it, heals it. Returns false when the fault could not be applied.
async fn inject(
    cluster: &mut ProcessCluster,
    fault: Fault,
    rng: &mut StdRng,
    hold: Duration,
    stats: &mut CatchUps,
) -> Result<bool, String> {
    let all = cluster.ids();
    let Some(leader) = current_leader(cluster, &all).await else {
        return Ok(false);
    };
    let followers: Vec<u64> = all.iter().copied().filter(|n| *n != leader).collect();
    let victim = if fault.targets_leader() {
        leader
    } else if fault == Fault::PauseFollower {
        followers[rng.gen_range(0..followers.len())]
    } else {
        all[rng.gen_range(0..all.len())]
    };
    match fault {
        Fault::KillLeader | Fault::KillRandom => {
            cluster.kill(victim);
            tokio::time::sleep(hold).await;
            cluster.spawn(victim);
            let others: Vec<u64> = all.iter().copied().filter(|n| *n != victim).collect();
            if let Some(now) = current_leader(cluster, &others).await {
                measure_catch_up(cluster, victim, now, fault.name(), stats).await;
            }
        }
        Fault::PauseLeader | Fault::PauseRandom | Fault::PauseFollower => {
            cluster.pause(victim);
            tokio::time::sleep(hold).await;
            cluster.resume(victim);
            let others: Vec<u64> = all.iter().copied().filter(|n| *n != victim).collect();
            if let Some(now) = current_leader(cluster, &others).await {
                measure_catch_up(cluster, victim, now, fault.name(), stats).await;
            }
        }
        Fault::PartitionLeader | Fault::PartitionSplit | Fault::PartitionBridge => {
            let topo = cluster.topology.as_mut().ok_or("no network namespaces")?;
            let others: Vec<u64> = all.iter().copied().filter(|n| *n != victim).collect();
            if fault == Fault::PartitionBridge {
                // `victim` bridges: the other two lose their direct link.
                topo.cut_link(others[0], others[1])?;
            } else {
                topo.partition(&[vec![victim], others])?;
            }
            tokio::time::sleep(hold).await;
            topo.heal()?;
        }
        Fault::SigtermLeaderStalled => {
            // Half an upload, then silence, held open across the SIGTERM.
            let addr = cluster.nodes[&victim].addr.clone();
            let stalled = tokio::net::TcpStream::connect(&addr).await.ok();
            if let Some(mut conn) = stalled {
                use tokio::io::AsyncWriteExt;
                let head = "POST /api/orders HTTP/1.1\r\nHost: x\r\n\
                            Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n{";
                let _ = conn.write_all(head.as_bytes()).await;
                cluster.terminate(victim);
                tokio::time::sleep(hold).await;
                drop(conn);
            } else {
                cluster.terminate(victim);
                tokio::time::sleep(hold).await;
            }
            cluster.wait_stopped(victim).await;
            cluster.spawn(victim);
        }
        Fault::HostileBytes => {
            // As a client would send them: with TLS, without a cluster certificate.
            let http = cluster.http.clone();
            let tls = cluster.ca().is_some();
            for id in all.iter().copied() {
                for route in [
                    "/raft/append",
                    "/raft/vote",
                    "/raft/snapshot",
                    "/raft/write",
                ] {
                    for body in hostile_bodies(rng, route, 8) {
                        let sent = http
                            .post(cluster.url(id, route))
                            .timeout(Duration::from_secs(5))
                            .body(body.clone())
                            .send()
                            .await;
                        // Refused by the decoder (400) or the size limit (413); over TLS, by
                        // the peer check (403) before anything else.
                        let refused = |s: u16| if tls { s == 403 } else { s == 400 || s == 413 };
                        match sent {
                            Ok(resp) if refused(resp.status().as_u16()) => {}
                            Ok(resp) => stuck_push(
                                stats,
                                format!(
                                    "node {id} {route} answered {} to hostile bytes {body:?}",
                                    resp.status()
                                ),
                            ),
                            Err(e) if e.is_connect() => stuck_push(
                                stats,
                                format!(
                                    "node {id} unreachable after hostile bytes at {route}: {e}"
                                ),
                            ),
                            Err(_) => {}
                        }
                    }
                }
            }
            tokio::time::sleep(hold).await;
            for id in all {
                if cluster.has_exited(id) {
                    stuck_push(stats, format!("node {id} exited after hostile bytes"));
                }
            }
        }
    }
    Ok(true)
}

/// Creates the admin user the secure run's workload uses, with the bootstrap token; retried
/// (bounded) while the cluster settles.
async fn make_admin(cluster: &ProcessCluster, bootstrap: &str) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        for id in cluster.ids() {
            let sent = cluster
                .http
                .post(cluster.url(id, "/auth/users"))
                .bearer_auth(bootstrap)
                .json(&serde_json::json!({"name": "torture", "role": "admin"}))
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status() == 201 => {
                    let body: Value = resp.json().await.map_err(|e| e.to_string())?;
                    return body["token"]
                        .as_str()
                        .map(String::from)
                        .ok_or_else(|| format!("no token in {body}"));
                }
                Ok(resp) => last = format!("node {id}: HTTP {}", resp.status()),
                Err(e) => last = format!("node {id}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("could not create the admin user: {last}"))
}

fn stuck_push(stats: &mut CatchUps, what: String) {
    if stats.stuck.len() < 20 {
        stats.stuck.push(what);
    }
}

/// Runs one torture run and reports.
pub async fn run(config: TortureConfig) -> Result<Report, String> {
    let ids: Vec<u64> = (1..=config.nodes.max(1)).collect();
    let mut skipped_network = None;
    let wants_network = config.faults.iter().any(|f| f.needs_network());
    let topology = if config.use_netns && wants_network {
        match netns::Topology::create(&ids) {
            Ok(t) => Some(t),
            Err(e) => {
                skipped_network = Some(format!("network namespaces unavailable ({e})"));
                None
            }
        }
    } else {
        if wants_network {
            skipped_network = Some("network namespaces disabled".into());
        }
        None
    };
    let faults: Vec<Fault> = config
        .faults
        .iter()
        .copied()
        .filter(|f| topology.is_some() || !f.needs_network())
        .collect();
    let mut node_args = match config.snapshot_every_logs {
        // That often exactly: snapshots under the faults all along the run.
        Some(n) => [
            "--snapshot-every-logs",
            &n.to_string(),
            "--snapshot-growth-percent",
            "0",
        ]
        .map(String::from)
        .to_vec(),
        None => Vec::new(),
    };
    // Secure mode: users too. The bootstrap token makes the admin the workload runs as.
    let secrets = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bootstrap = "torture-bootstrap-token-0123456789";
    if config.tls {
        let file = secrets.path().join("bootstrap-token");
        std::fs::write(&file, bootstrap).map_err(|e| e.to_string())?;
        node_args.extend(["--auth".to_string(), "--bootstrap-token-file".to_string()]);
        node_args.push(file.to_string_lossy().into_owned());
    }
    let mut cluster = ProcessCluster::new(&config.bin, config.nodes.max(1), topology, node_args);
    if let Some(offset) = &config.skewed_clock {
        if !std::path::Path::new(LIBFAKETIME).exists() {
            return Err(format!(
                "{LIBFAKETIME} is missing (Debian package libfaketime)"
            ));
        }
        let vars = vec![
            ("LD_PRELOAD".to_string(), LIBFAKETIME.to_string()),
            ("FAKETIME".to_string(), offset.clone()),
            // Only the wall clock: timers and timeouts run on the monotonic one.
            ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
        ];
        cluster.set_env(1, vars);
    }
    if config.tls {
        cluster.enable_tls();
        cluster.set_token(bootstrap);
    }
    cluster.start_all().await;
    let token = if config.tls {
        let token = make_admin(&cluster, bootstrap).await?;
        cluster.set_token(&token);
        Some(token)
    } else {
        None
    };

    let shared = Arc::new(Shared {
        urls: cluster
            .ids()
            .iter()
            .map(|id| cluster.url(*id, ""))
            .collect(),
        http: {
            let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(1));
            if config.tls {
                let ca = cluster.certs_dir().join("ca.pem");
                let tls = ordo::tls::client_config(&ca, None).map_err(|e| e.to_string())?;
                builder = builder.use_preconfigured_tls(tls);
            }
            if let Some(token) = &token {
                let mut headers = reqwest::header::HeaderMap::new();
                let value = format!("Bearer {token}")
                    .parse()
                    .map_err(|e| format!("{e}"))?;
                headers.insert(reqwest::header::AUTHORIZATION, value);
                builder = builder.default_headers(headers);
            }
            builder.build().map_err(|e| e.to_string())?
        },
        history: History::default(),
        start: Instant::now(),
        stop: AtomicBool::new(false),
        known: Mutex::new(Vec::new()),
        attempted: Mutex::new(BTreeSet::new()),
        last_ack_us: AtomicU64::new(0),
        longest_gap_us: AtomicU64::new(0),
        unexpected: Mutex::new(Vec::new()),
        large_orders: config.large_orders,
    });
    let clients: Vec<_> = (0..config.clients)
        .map(|c| {
            tokio::spawn(client_loop(
                shared.clone(),
                c,
                config.seed.wrapping_add(c as u64 + 1),
            ))
        })
        .collect();

    // The leader watcher counts failovers.
    let failovers = Arc::new(AtomicU64::new(0));
    let leaders_seen = Arc::new(Mutex::new(BTreeSet::new()));
    let watcher = {
        let urls = shared.urls.clone();
        let http = shared.http.clone();
        let failovers = failovers.clone();
        let leaders_seen = leaders_seen.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut last: Option<u64> = None;
            while !shared.stop.load(Ordering::Relaxed) {
                for url in &urls {
                    let req = http
                        .get(format!("{url}/cluster/status"))
                        .timeout(Duration::from_millis(500));
                    if let Ok(resp) = req.send().await {
                        if let Ok(s) = resp.json::<Value>().await {
                            if s["state"] == "leader" {
                                let id = s["node_id"].as_u64();
                                if last.is_some() && id != last {
                                    failovers.fetch_add(1, Ordering::Relaxed);
                                }
                                if let Some(id) = id {
                                    leaders_seen.lock().unwrap().insert(id);
                                }
                                last = id;
                                break;
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut injected: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut nemesis_error = None;
    let end = Instant::now() + config.duration;
    let mut turn = 0usize;
    let mut catch_ups = CatchUps::default();
    while Instant::now() + config.quiet < end && !faults.is_empty() && turn < 10_000 {
        tokio::time::sleep(config.quiet).await;
        let fault = if config.cycle_faults {
            faults[turn % faults.len()]
        } else {
            faults[rng.gen_range(0..faults.len())]
        };
        turn += 1;
        match inject(&mut cluster, fault, &mut rng, config.hold, &mut catch_ups).await {
            Ok(true) => *injected.entry(fault.name()).or_default() += 1,
            Ok(false) => {}
            Err(e) => {
                nemesis_error = Some(e);
                break;
            }
        }
    }
    if Instant::now() < end {
        tokio::time::sleep_until(end).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let _ = watcher.await;
    if let Some(e) = nemesis_error {
        return Err(format!("nemesis failed: {e}"));
    }

    // Heal (all faults were already healed as they ended) and read the final state.
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let applied = cluster
        .status(leader)
        .await
        .and_then(|s| s["last_applied"].as_u64())
        .unwrap_or(0);
    // A node that fell far behind catches up by a snapshot; with large orders (and their
    // change records) on a busy 2-core machine, after a run full of elections, that took
    // just over a minute once: the deadline for it is generous.
    for id in cluster.ids() {
        cluster
            .wait_applied_within(id, applied, FINAL_CATCH_UP)
            .await;
    }
    let final_invoked = shared.now_us();
    let mut final_orders: Vec<Value> = Vec::new();
    for page in 1..=100_000u64 {
        let url = cluster.url(leader, &format!("/api/orders?per_page=100&page={page}"));
        let body: Value = read_with_retry(&shared.http, &url).await?;
        let orders = body["orders"].as_array().cloned().unwrap_or_default();
        if orders.is_empty() {
            break;
        }
        final_orders.extend(orders);
    }
    let final_completed = shared.now_us();

    let mut by_tag: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for o in &final_orders {
        by_tag.entry(note_tag(o)).or_default().push(o);
    }
    let duplicated: Vec<String> = by_tag
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, _)| k.clone())
        .collect();
    let known = shared.known.lock().unwrap().clone();
    // Every stamp is the cluster's median clock, whichever node led: none a day off.
    let now_ms = ordo::rpc::clock::wall_clock_ms();
    let misdated: Vec<String> = final_orders
        .iter()
        .filter(|o| {
            let at = o["created_at"].as_str().unwrap_or_default();
            chrono::DateTime::parse_from_rfc3339(at)
                .map(|t| (t.timestamp_millis() - now_ms).abs() > 3_600_000)
                .unwrap_or(true)
        })
        .map(|o| format!("order {} created_at {}", o["id"], o["created_at"]))
        .collect();
    let lost_acked: Vec<String> = known
        .iter()
        .filter(|(tag, _)| !by_tag.contains_key(tag))
        .map(|(tag, _)| tag.clone())
        .collect();

    // Final reads join the history: the state each order ended in.
    let attempted = shared.attempted.lock().unwrap().clone();
    for tag in &attempted {
        let outcome = match by_tag.get(tag).and_then(|v| v.first()) {
            Some(o) => order_state(o).unwrap_or(Outcome::Failed),
            None => Outcome::NotFound,
        };
        shared.history.record(Op {
            client: usize::MAX,
            object: tag.clone(),
            kind: OpKind::Read,
            invoked_us: final_invoked,
            completed_us: final_completed,
            outcome,
        });
    }

    // Convergence: every node at the same applied index holds the same state.
    let mut digests_equal = false;
    for _ in 0..50 {
        let mut seen = BTreeSet::new();
        let mut answered = true;
        for id in cluster.ids() {
            let d = cluster.digest(id).await;
            // A digest refused (503 while applies land) compares nothing.
            answered &= d["digest"].as_str().is_some();
            seen.insert((
                d["last_applied"].as_u64(),
                d["digest"].as_str().unwrap_or_default().to_string(),
            ));
        }
        if answered && seen.len() == 1 {
            digests_equal = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let shared =
        Arc::try_unwrap(shared).map_err(|_| "clients still hold the history".to_string())?;
    let unexpected_answers = shared.unexpected.into_inner().unwrap();
    let longest_unavailable = Duration::from_micros(shared.longest_gap_us.load(Ordering::Relaxed));
    let ops = shared.history.into_ops();
    let mut ops_by_outcome = BTreeMap::new();
    for op in ops.iter().filter(|o| o.client != usize::MAX) {
        let name = match &op.outcome {
            Outcome::Created | Outcome::State { .. } => "ok",
            Outcome::NotFound | Outcome::InvalidTransition | Outcome::VersionConflict => "refused",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        };
        *ops_by_outcome.entry(name.to_string()).or_insert(0) += 1;
    }
    let total_ops = ops_by_outcome.values().sum();
    let verdict = tokio::task::spawn_blocking(move || checker::check(&ops))
        .await
        .map_err(|e| e.to_string())?;
    let leaders_seen = leaders_seen.lock().unwrap().clone();
    Ok(Report {
        seed: config.seed,
        ops_by_outcome,
        total_ops,
        faults: injected,
        skipped_network,
        failovers: failovers.load(Ordering::Relaxed),
        longest_unavailable,
        acked_creates: known.len() as u64,
        orders_at_end: final_orders.len() as u64,
        lost_acked,
        duplicated,
        unexpected_answers,
        digests_equal,
        verdict,
        longest_catch_up: catch_ups.longest,
        catch_ups: catch_ups.count,
        stuck: catch_ups.stuck,
        misdated,
        leaders_seen,
    })
}

async fn read_with_retry(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let deadline = Instant::now() + cluster::DEADLINE;
    loop {
        if let Ok(resp) = http.get(url).timeout(Duration::from_secs(5)).send().await {
            if resp.status().is_success() {
                return resp.json().await.map_err(|e| e.to_string());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("final read of {url} kept failing"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
