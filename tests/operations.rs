//! Operating a node (issue #14), with real `ordo` processes: what a full disk does to a
//! node, metrics, request ids in the logs, backup and restore, and recovery from a lost
//! quorum.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use ordo::wire::ErrorCode;
use serde_json::{json, Value};
use tokio::time::Instant;

/// A tmpfs mounted for one test, unmounted on drop (declare it before the cluster, so the
/// nodes are gone first).
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB at `path`; `None` where this process may not mount.
    fn mount(path: &Path, mib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here ({}): the full-disk test needs root",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs(path.to_path_buf()))
    }

    fn resize(&self, mib: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount the tmpfs at {mib} MiB");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Waits (bounded by `within`) until node `id`'s process exits; its exit code. The node is
/// then marked stopped.
async fn wait_exit(
    cluster: &mut TestCluster,
    id: u64,
    within: Duration,
    what: &str,
) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        let child = cluster.nodes.get_mut(&id).unwrap().child.as_mut().unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            cluster.nodes.get_mut(&id).unwrap().child = None;
            return status.code();
        }
        assert!(Instant::now() < deadline, "node {id}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The largest legal order: it fills a small disk quickly.
fn largest_order(n: usize) -> Value {
    let items: Vec<Value> = (0..100)
        .map(|i| json!({"sku": format!("{i:0>64}"), "quantity": 10_000, "unit_price_cents": 1_000_000_000u64}))
        .collect();
    json!({"customer_id": format!("{n:c>64}"), "items": items, "note": "n".repeat(1000)})
}

/// A node whose data directory fills up says `storage_failed` (503, not a timeout), fails
/// `/readyz`, exits with status 74 for its supervisor; restarted with space, it is ready
/// again and has every order it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_node_loudly_and_loses_no_acknowledged_order() {
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("data");
    let Some(disk) = Tmpfs::mount(&data_dir, 16) else {
        return;
    };
    let mut cluster = TestCluster::new(
        Path::new(BIN),
        1,
        None,
        vec!["--storage-failure-exit-after-ms".into(), "10000".into()],
    );
    cluster.nodes.get_mut(&1).unwrap().data_dir = data_dir.clone();
    cluster.start_all().await;

    // Fill the disk. Every answer is an acknowledgement or `storage_failed`.
    let mut acked = Vec::new();
    let mut failure = None;
    for n in 0..5000 {
        let req = cluster
            .http
            .post(cluster.url(1, "/api/orders"))
            .header("Idempotency-Key", format!("fill-{n}"))
            .json(&largest_order(n));
        let (status, body) = send(req).await.expect("the node answers");
        match status {
            201 => acked.push(body["id"].as_u64().unwrap()),
            _ => {
                failure = Some((status, body));
                break;
            }
        }
    }
    // The write under which the disk filled has an unknown outcome (504: it may still have
    // reached disk elsewhere); one that came after is refused outright.
    let (status, body) = failure.expect("a 16 MiB disk fills up before 5000 large orders");
    match status {
        504 => {
            assert_eq!(body["error"]["code"], ErrorCode::Timeout, "{body}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("storage failed"), "{body}");
        }
        503 => assert_eq!(body["error"]["code"], ErrorCode::StorageFailed, "{body}"),
        _ => panic!("a full disk answered {status} {body}"),
    }
    assert!(acked.len() > 10, "only {} orders fit", acked.len());

    // Until it exits: later requests are refused the same way, and it is not ready.
    let (status, body) = create(&cluster, 1, "after", None, "x").await.unwrap();
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &json!("storage_failed")),
        "{body}"
    );
    let (status, body) = get(&cluster, 1, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["storage"]["ok"], false, "{body}");
    // Said once the core has stopped, which may be just after the first refusal.
    let deadline = Instant::now() + DEADLINE;
    let said = loop {
        let log = std::fs::read_to_string(&cluster.nodes[&1].log_path).unwrap();
        let said = log
            .lines()
            .filter(|l| l.contains("STORAGE FAILED"))
            .map(str::to_string)
            .collect::<Vec<_>>();
        if !said.is_empty() || Instant::now() > deadline {
            break said;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(said.len(), 1, "said once, at ERROR: {said:?}");
    assert!(said[0].contains("ERROR") && said[0].contains(&data_dir.display().to_string()));

    let code = wait_exit(
        &mut cluster,
        1,
        Duration::from_secs(90),
        "the node did not exit after its storage failed",
    )
    .await;
    assert_eq!(code, Some(74), "exit status for the supervisor");

    // The operator frees space; the supervisor restarts the node.
    disk.resize(256);
    cluster.spawn(1);
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok((200, _)) = get(&cluster, 1, "/readyz").await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready again after a restart with space"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &acked {
        let (status, body) = get(&cluster, 1, &format!("/api/orders/{id}"))
            .await
            .unwrap();
        assert_eq!(status, 200, "acknowledged order {id} is gone: {body}");
    }
    let (status, body) = create(&cluster, 1, "after", None, "x").await.unwrap();
    assert_eq!(status, 201, "writable again: {body}");
}

/// One sample of a Prometheus text exposition: the metric's name and labels.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses the text format (comments skipped; label values without escapes, as ordo's are).
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value of {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').expect("labels end with }");
                let labels = inner
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').expect("label=value");
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The value of `name` with (at least) these labels; summed when several series match.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

async fn scrape(cluster: &TestCluster, id: u64) -> Vec<Sample> {
    let resp = cluster
        .http
        .get(cluster.url(id, "/metrics"))
        .send()
        .await
        .expect("scrape /metrics");
    assert_eq!(resp.status(), 200);
    let kind = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    parse_metrics(&resp.text().await.unwrap())
}

/// Polls node `id`'s metrics until `check` holds (bounded); returns the samples.
async fn wait_metrics(
    cluster: &TestCluster,
    id: u64,
    what: &str,
    check: impl Fn(&[Sample]) -> bool,
) -> Vec<Sample> {
    let deadline = Instant::now() + DEADLINE + Duration::from_secs(20);
    loop {
        let samples = scrape(cluster, id).await;
        if check(&samples) {
            return samples;
        }
        assert!(
            Instant::now() < deadline,
            "node {id}: {what}; metrics: {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Metrics move as they should after writes, a snapshot and a leader kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_writes_snapshots_and_a_leader_kill() {
    let mut cluster = TestCluster::new(
        Path::new(BIN),
        3,
        None,
        vec!["--snapshot-every-logs".into(), "40".into()],
    );
    cluster.start_all().await;
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    // The Raft gauges follow openraft's metrics within a fraction of a second.
    let before = wait_metrics(&cluster, leader, "the leader's gauges", |s| {
        value(s, "ordo_raft_state", &[("state", "leader")]) == Some(1.0)
    })
    .await;
    let created = |s: &[Sample]| {
        value(
            s,
            "ordo_http_requests_total",
            &[
                ("route", "/api/orders"),
                ("method", "POST"),
                ("status", "201"),
            ],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(
        value(&before, "ordo_raft_state", &[("state", "leader")]),
        Some(1.0)
    );
    assert_eq!(
        value(&before, "ordo_raft_leader_id", &[]),
        Some(leader as f64)
    );

    let writes = 60;
    for i in 0..writes {
        let (status, body) = create(&cluster, leader, "m", Some(&format!("m-{i}")), "x")
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
    }
    let after = wait_metrics(
        &cluster,
        leader,
        "orders sampled and a snapshot built",
        |s| {
            value(s, "ordo_orders_stored", &[]) == Some(writes as f64)
                && value(s, "ordo_snapshot_builds_total", &[]).unwrap_or(0.0) >= 1.0
        },
    )
    .await;
    assert_eq!(created(&after) - created(&before), writes as f64);
    let grew = |name: &str| {
        value(&after, name, &[]).unwrap_or(0.0) - value(&before, name, &[]).unwrap_or(0.0)
    };
    assert!(grew("ordo_proposals_total") >= 1.0, "proposals counted");
    assert!(
        grew("ordo_raft_applied_index") >= writes as f64,
        "applied index moved"
    );
    assert!(
        grew("ordo_log_fsync_duration_seconds_count") >= 1.0,
        "fsyncs timed"
    );
    assert!(grew("ordo_http_request_duration_seconds_count") >= writes as f64);
    assert!(value(&after, "ordo_snapshot_bytes", &[]).unwrap() > 0.0);
    assert!(value(&after, "ordo_data_dir_bytes", &[]).unwrap() > 0.0);
    assert_eq!(
        value(&after, "ordo_idempotency_records_stored", &[]),
        Some(writes as f64)
    );
    for id in cluster.ids().into_iter().filter(|&id| id != leader) {
        assert!(value(
            &after,
            "ordo_raft_replication_lag_entries",
            &[("follower", &id.to_string())]
        )
        .is_some());
    }

    // Kill the leader: a survivor leads, in a later term, and reports the old one unreachable.
    let term = value(&after, "ordo_raft_term", &[]).unwrap();
    cluster.kill(leader);
    let survivors: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != leader)
        .collect();
    let new_leader = cluster.wait_for_leader(&survivors).await;
    let old = leader.to_string();
    let samples = wait_metrics(&cluster, new_leader, "new leader's metrics", |s| {
        value(s, "ordo_raft_state", &[("state", "leader")]) == Some(1.0)
            && value(s, "ordo_peer_unreachable", &[("peer", &old)]) == Some(1.0)
    })
    .await;
    assert!(value(&samples, "ordo_raft_term", &[]).unwrap() > term);
    assert!(value(&samples, "ordo_raft_leader_changes_total", &[]).unwrap() >= 1.0);
    assert_eq!(
        value(&samples, "ordo_raft_leader_id", &[]),
        Some(new_leader as f64)
    );
    assert_eq!(value(&samples, "ordo_raft_storage_failed", &[]), Some(0.0));
}

/// A request id given to a follower comes back in the answer and appears in the follower's
/// and the leader's logs for the forwarded write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_follows_a_forwarded_write_into_the_leaders_log() {
    let mut cluster = TestCluster::new(Path::new(BIN), 3, None, Vec::new());
    for id in cluster.ids() {
        cluster.set_env(
            id,
            vec![("RUST_LOG".into(), "info,ordo::access=info".into())],
        );
    }
    cluster.start_all().await;
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let id = "trace-me-7f3a9c";
    let resp = cluster
        .http
        .post(cluster.url(follower, "/api/orders"))
        .header("X-Request-Id", id)
        .json(&order_body("rid", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-request-id"], id);

    // A request without one (or with a bad one) gets an id made for it.
    let resp = cluster
        .http
        .get(cluster.url(follower, "/livez"))
        .header("X-Request-Id", "has spaces and \"quotes\"")
        .send()
        .await
        .unwrap();
    let made = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(
        !made.is_empty() && made.bytes().all(|b| b.is_ascii_hexdigit()),
        "{made}"
    );

    let lines_with = |node: u64, path: &str| -> Vec<String> {
        std::fs::read_to_string(&cluster.nodes[&node].log_path)
            .unwrap()
            .lines()
            .filter(|l| l.contains(id) && l.contains(path))
            .map(String::from)
            .collect()
    };
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (f, l) = (
            lines_with(follower, "/api/orders"),
            lines_with(leader, "/raft/write"),
        );
        // At least once on the leader: a forward that was retried shows there twice.
        if f.len() == 1 && !l.is_empty() {
            assert!(f[0].contains("status=201"), "{}", f[0]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "follower lines {f:?}, leader lines {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With the default log settings, a peer that stays down for 30 s costs its survivors a
/// bounded number of log lines: one when it goes, one when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_peer_is_logged_once_not_per_retry() {
    let mut cluster = TestCluster::new(Path::new(BIN), 3, None, Vec::new());
    for id in cluster.ids() {
        cluster.set_env(
            id,
            vec![("RUST_LOG".into(), ordo::DEFAULT_LOG_FILTER.into())],
        );
    }
    cluster.start_all().await;
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let victim = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let leader_log = cluster.nodes[&leader].log_path.clone();
    let lines = || {
        std::fs::read_to_string(&leader_log)
            .unwrap()
            .lines()
            .count()
    };
    let before = lines();
    cluster.kill(victim);
    // The window the issue sets: 30 s with the peer down (a duration, not a condition).
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = lines() - before;
    let log = std::fs::read_to_string(&leader_log).unwrap();
    let tail: Vec<&str> = log.lines().skip(before).collect();
    assert!(
        during <= 5,
        "{during} lines in 30 s with one peer down (at most 5):\n{}",
        tail.join("\n")
    );
    assert_eq!(
        tail.iter()
            .filter(|l| l.contains("peer unreachable"))
            .count(),
        1,
        "{tail:?}"
    );

    cluster.spawn(victim);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let log = std::fs::read_to_string(&cluster.nodes[&leader].log_path).unwrap();
        if log
            .lines()
            .skip(before)
            .any(|l| l.contains("peer reachable again"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the peer's return was not logged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the `ordo` CLI to its end (bounded by its own --within/--timeout flags).
fn ordo_cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run ordo")
}

/// A rolling defrag, as operations.md tells it: `ordo defrag` refuses a running node's data
/// dir; on a follower stopped with SIGTERM it rewrites the store, and the restarted follower
/// catches up with the writes made meanwhile and ends with the leader's digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_defragmented_while_the_others_serve_catches_up() {
    let mut cluster = start_cluster(3).await;
    let ids = cluster.ids();
    for i in 0..100 {
        create_until_acked(&cluster, &ids, "defrag", &format!("before-{i}")).await;
    }
    let leader = cluster.wait_for_leader(&ids).await;
    let follower = *ids.iter().find(|&&id| id != leader).unwrap();
    let data_dir = cluster.nodes[&follower].data_dir.clone();
    let data_dir = data_dir.to_str().unwrap();

    let refused = ordo_cli(&["defrag", "--data-dir", data_dir]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("in use"),
        "{said}"
    );

    cluster.stop(follower).await;
    let done = ordo_cli(&["--json", "defrag", "--data-dir", data_dir]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let report: Value = serde_json::from_slice(&done.stdout).expect("a JSON report");
    assert!(report["keys"].as_u64().unwrap() > 100, "{report}");
    assert!(report["bytes_after"].as_u64().unwrap() > 0, "{report}");

    let others: Vec<u64> = ids.iter().copied().filter(|&id| id != follower).collect();
    for i in 0..20 {
        create_until_acked(&cluster, &others, "defrag", &format!("during-{i}")).await;
    }
    cluster.spawn(follower);
    cluster.wait_caught_up(follower, leader).await;
    assert_eq!(
        cluster.digest(follower).await["digest"],
        cluster.digest(leader).await["digest"]
    );
    assert_eq!(all_orders(&cluster, follower, true).await.len(), 120);
}

/// A backup taken while writes go on holds every write acknowledged before it began, no
/// write it does not show in full, and restores into a new cluster whose digest is the
/// backup's; that cluster takes writes and members. A changed byte makes the file refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_writes_restores_into_a_new_cluster() {
    let source = start_cluster(3).await;
    let nodes = source
        .ids()
        .iter()
        .map(|&id| source.url(id, ""))
        .collect::<Vec<_>>()
        .join(",");

    // Writers: two tasks creating orders through every node until told to stop (bounded).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u64, Instant)>::new()));
    let mut writers = Vec::new();
    for w in 0..2u64 {
        let (http, urls) = (
            source.http.clone(),
            source
                .ids()
                .iter()
                .map(|&id| source.url(id, "/api/orders"))
                .collect::<Vec<_>>(),
        );
        let (stop, acked) = (stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..5000u64 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let url = &urls[(i as usize + w as usize) % urls.len()];
                let resp = http
                    .post(url)
                    .header("Idempotency-Key", format!("bk-{w}-{i}"))
                    .json(&order_body(&format!("w{w}"), &format!("{w}-{i}")))
                    .send()
                    .await;
                if let Ok(resp) = resp {
                    if resp.status() == 201 {
                        let body: Value = resp.json().await.unwrap();
                        acked
                            .lock()
                            .unwrap()
                            .push((body["id"].as_u64().unwrap(), Instant::now()));
                    }
                }
            }
        }));
    }
    // Let some writes land, then back up while they go on.
    let deadline = Instant::now() + DEADLINE;
    while acked.lock().unwrap().len() < 100 {
        assert!(Instant::now() < deadline, "writes do not get through");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.backup");
    let began = Instant::now();
    let acked_before: Vec<u64> = acked.lock().unwrap().iter().map(|(id, _)| *id).collect();
    let out = ordo_cli(&[
        "backup",
        "--nodes",
        &nodes,
        "--json",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "backup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let taken: Value = serde_json::from_slice(&out.stdout).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "a backup readable by others: {mode:o}");
    let more = acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, at)| *at > began)
        .count();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        more > 0,
        "no write was acknowledged while the backup ran: not a test under load"
    );

    // Not onto a mount point (a volume): the store is built beside the target and renamed
    // over it. Refused, naming a directory inside it, and nothing is left behind.
    let volume = dir.path().join("volume");
    if let Some(_mounted) = Tmpfs::mount(&volume, 64) {
        let out = ordo_cli(&[
            "restore",
            "--from",
            file.to_str().unwrap(),
            "--data-dir",
            volume.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("is a mount point"),
            "{err}"
        );
        assert!(!dir.path().join("volume.restoring").exists());
        assert_eq!(std::fs::read_dir(&volume).unwrap().count(), 0);
    }

    // Restore into a new one-node cluster.
    let mut restored = TestCluster::new(Path::new(BIN), 1, None, Vec::new());
    let data_dir = restored.nodes[&1].data_dir.clone();
    // With a trailing slash, as a shell completes a directory: the restore is built beside
    // it, not inside.
    let out = ordo_cli(&[
        "restore",
        "--json",
        "--from",
        file.to_str().unwrap(),
        "--data-dir",
        &format!("{}/", data_dir.display()),
    ]);
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restore: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(restore["new_cluster_id"], taken["header"]["cluster_id"]);
    restored.start_all().await;
    let digest = restored.digest(1).await;
    assert_eq!(
        digest["digest"], taken["digest"],
        "the restored state is the backup's"
    );

    // Every write acknowledged before the backup began is in it; every order in it is the
    // source's order, whole.
    let in_backup = all_orders(&restored, 1, false).await;
    let ids: std::collections::BTreeSet<u64> = in_backup
        .iter()
        .map(|o| o["id"].as_u64().unwrap())
        .collect();
    for id in &acked_before {
        assert!(
            ids.contains(id),
            "order {id}, acknowledged before the backup, is missing"
        );
    }
    assert_eq!(
        ids.len() as u64,
        *ids.iter().max().unwrap(),
        "ids are dense: a prefix of the source"
    );
    let source_orders = all_orders(&source, 1, false).await;
    for order in &in_backup {
        let id = order["id"].as_u64().unwrap() as usize;
        assert_eq!(
            order,
            &source_orders[id - 1],
            "order {id} differs from the source's"
        );
    }
    assert!(
        source_orders.len() > in_backup.len(),
        "writes after the backup are not in it"
    );

    // The new cluster takes writes and a member.
    let (status, body) = create(&restored, 1, "after", Some("after-restore"), "x")
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["id"].as_u64(), Some(in_backup.len() as u64 + 1));
    restored.add_node(2);
    let addr = restored.nodes[&2].addr.clone();
    let (status, body) = send(
        restored
            .http
            .post(restored.url(1, "/cluster/learners"))
            .json(&json!({"id": 2, "addr": addr})),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(
        restored
            .http
            .post(restored.url(1, "/cluster/members"))
            .json(&json!({"members": [1, 2]})),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    restored.wait_caught_up(2, 1).await;
    assert_eq!(
        restored.digest(2).await["digest"],
        restored.digest(1).await["digest"]
    );

    // A changed byte anywhere in the file is refused, by verify and by restore.
    let good = std::fs::read(&file).unwrap();
    for at in [3, 20, good.len() / 2, good.len() - 40, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        let bad_file = dir.path().join(format!("bad-{at}.backup"));
        std::fs::write(&bad_file, &bad).unwrap();
        let out = ordo_cli(&["backup", "verify", bad_file.to_str().unwrap()]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && said.contains("corrupt"),
            "byte {at}: {said}"
        );
        let target = dir.path().join(format!("restore-{at}"));
        let out = ordo_cli(&[
            "restore",
            "--from",
            bad_file.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
        ]);
        assert!(
            !out.status.success(),
            "restored a corrupted backup (byte {at})"
        );
        assert!(
            !target.join("sled").exists(),
            "a refused restore leaves no store behind"
        );
    }
    std::fs::write(dir.path().join("cut.backup"), &good[..good.len() - 10]).unwrap();
    let out = ordo_cli(&[
        "backup",
        "verify",
        dir.path().join("cut.backup").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
}

/// Clients that open backups and stop reading hold only `MAX_BACKUP_STREAMS` of the node's
/// streams (each one a blocking thread that log flushes share): the next backup is refused
/// with 503 `unavailable` while writes go on, and a slot is free again once a client goes.
/// The store is made larger than what socket buffers hold, so a stalled stream really waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_backup_downloads_take_a_bounded_number_of_streams() {
    let mut cluster = TestCluster::new(Path::new(BIN), 1, None, Vec::new());
    cluster.start_all().await;
    // ~40 MB of the largest legal orders (about 9 KB each stored), in eight writers.
    let per_writer = 560;
    let mut writers = Vec::new();
    for w in 0..8 {
        let (http, url) = (cluster.http.clone(), cluster.url(1, "/api/orders"));
        writers.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let n = w * per_writer + i;
                let req = http
                    .post(&url)
                    .header("Idempotency-Key", format!("big-{n}"))
                    .json(&largest_order(n));
                let (status, body) = send(req).await.expect("the node answers");
                assert!(status == 201 || status == 200, "{status}: {body}");
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }

    let backup = || {
        cluster
            .http
            .get(cluster.url(1, "/cluster/backup"))
            .timeout(Duration::from_secs(120))
            .send()
    };
    // Opened and never read: the node's writer blocks once the pipes are full.
    let mut stalled = Vec::new();
    for _ in 0..ordo::api::cluster::MAX_BACKUP_STREAMS {
        let resp = backup().await.unwrap();
        assert_eq!(resp.status(), 200);
        stalled.push(resp);
    }
    let refused = backup().await.unwrap();
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    // Writes are not held up by the stalled streams.
    let (status, body) = send(
        cluster
            .http
            .post(cluster.url(1, "/api/orders"))
            .json(&order_body("after", "stalled")),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{body}");

    // One client goes: its stream notices at its next write, and a backup is served again
    // (read in full). Well before the 60 s after which a stalled stream is cut off anyway.
    drop(stalled.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    let served = loop {
        let resp = backup().await.unwrap();
        if resp.status() == 200 {
            break resp.bytes().await.unwrap();
        }
        assert_eq!(resp.status(), 503);
        assert!(Instant::now() < deadline, "no slot came free");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(served.len() > 30_000_000, "{} bytes", served.len());
    assert_eq!(&served[..8], b"ORDOBKP1");
}

/// The lost-quorum procedure: two of three nodes are gone for good; the survivor, restarted
/// with --force-new-cluster and its cluster's id, leads a one-node cluster with every order it
/// had, takes writes, and takes a wiped node back as a member. Left on afterwards, the flag
/// names the old cluster and is refused, on the survivor and on the node added back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_brings_back_a_writable_cluster_after_losing_a_majority() {
    let mut cluster = start_cluster(3).await;
    let mut acked = Vec::new();
    for i in 0..40 {
        acked.push(create_until_acked(&cluster, &cluster.ids(), "q", &format!("q-{i}")).await);
    }
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let survivor = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let lost: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != survivor)
        .collect();
    cluster.wait_caught_up(survivor, leader).await;
    for &id in &lost {
        cluster.kill(id);
    }
    // Without a quorum, no writes.
    let (status, _) = create(&cluster, survivor, "q", None, "no quorum")
        .await
        .unwrap();
    assert!(
        status == 503 || status == 504,
        "a write without quorum answered {status}"
    );

    let id_file = cluster.nodes[&survivor].data_dir.join("cluster-id");
    let old_id = std::fs::read_to_string(&id_file).unwrap();
    cluster.kill(survivor);
    // The flag names the cluster and the node to force: another cluster's id, or another
    // node (an old member back with its data, given the flag by a shared environment file),
    // is refused, and the node keeps its cluster id.
    let flag = |id: &str, node: u64| {
        let value = format!("{}:{node}", id.trim());
        vec![("ORDO_FORCE_NEW_CLUSTER".to_string(), value)]
    };
    cluster.set_env(survivor, flag("0123456789abcdef0123456789abcdef", survivor));
    cluster.spawn(survivor);
    let code = wait_exit(
        &mut cluster,
        survivor,
        DEADLINE,
        "a force of another cluster",
    )
    .await;
    assert_ne!(code, Some(0));
    assert_eq!(std::fs::read_to_string(&id_file).unwrap(), old_id);
    let old_member = lost[1];
    cluster.set_env(old_member, flag(&old_id, survivor));
    cluster.spawn(old_member);
    let code = wait_exit(
        &mut cluster,
        old_member,
        DEADLINE,
        "a force of another node",
    )
    .await;
    assert_ne!(code, Some(0));
    cluster.set_env(survivor, flag(&old_id, survivor));
    cluster.spawn(survivor);
    cluster.wait_for_leader(&[survivor]).await;
    let status = cluster.status(survivor).await.unwrap();
    assert_eq!(status["members"].as_object().unwrap().len(), 1, "{status}");
    assert!(status["last_log_term"].as_u64().is_some(), "{status}");
    let new_id = std::fs::read_to_string(&id_file).unwrap();
    assert_ne!(new_id, old_id, "a forced cluster gets a new cluster id");
    let orders = all_orders(&cluster, survivor, false).await;
    for order in &acked {
        let id = order["id"].as_u64().unwrap() as usize;
        assert_eq!(&orders[id - 1], order, "order {id} after the recovery");
    }
    let (status, body) = create(&cluster, survivor, "q", Some("after"), "after")
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");

    // A lost node comes back wiped, as a learner, then a voter.
    let back = lost[0];
    std::fs::remove_dir_all(&cluster.nodes[&back].data_dir).unwrap();
    cluster.spawn_to_join(back);
    let addr = cluster.nodes[&back].addr.clone();
    let (status, body) = send(
        cluster
            .http
            .post(cluster.url(survivor, "/cluster/learners"))
            .json(&json!({"id": back, "addr": addr})),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(
        cluster
            .http
            .post(cluster.url(survivor, "/cluster/members"))
            .json(&json!({"members": [survivor, back]})),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    cluster.wait_caught_up(back, survivor).await;
    assert_eq!(
        cluster.digest(back).await["digest"],
        cluster.digest(survivor).await["digest"]
    );

    // Restarted with the flag still set, the survivor refuses to start (and says why), and so
    // does the node added back if it is given the same flag (a shared environment file).
    for node in [survivor, back] {
        cluster.kill(node);
        cluster.set_env(node, flag(&old_id, survivor));
        cluster.spawn(node);
        let code = wait_exit(
            &mut cluster,
            node,
            DEADLINE,
            "a node started with a stale --force-new-cluster",
        )
        .await;
        assert_ne!(code, Some(0));
        let log = std::fs::read_to_string(&cluster.nodes[&node].log_path).unwrap();
        assert!(
            log.contains("remove the flag"),
            "node {node}: no reason given"
        );
    }
}

/// `--force-new-cluster` on a node without data (a wiped node given the flag by mistake)
/// refuses to start instead of forming a cluster of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_refuses_an_empty_node() {
    let mut cluster = TestCluster::new(Path::new(BIN), 1, None, Vec::new());
    cluster.set_env(1, vec![("ORDO_FORCE_NEW_CLUSTER".into(), "none".into())]);
    cluster.spawn_to_join(1);
    let code = wait_exit(
        &mut cluster,
        1,
        DEADLINE,
        "an empty node started with --force-new-cluster",
    )
    .await;
    assert_ne!(code, Some(0));
    let log = std::fs::read_to_string(&cluster.nodes[&1].log_path).unwrap();
    assert!(log.contains("this node has no data"), "{log}");
}
