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
    let (status, body) = failure.expect("a 16 MiB disk fills up before 5000 large orders");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], ErrorCode::StorageFailed, "{body}");
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
    let log = std::fs::read_to_string(&cluster.nodes[&1].log_path).unwrap();
    let said = log
        .lines()
        .filter(|l| l.contains("STORAGE FAILED"))
        .collect::<Vec<_>>();
    assert_eq!(said.len(), 1, "said once, at ERROR: {said:?}");
    assert!(said[0].contains("ERROR") && said[0].contains(&data_dir.display().to_string()));

    let deadline = Instant::now() + Duration::from_secs(90);
    let code = loop {
        let child = cluster.nodes.get_mut(&1).unwrap().child.as_mut().unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            Instant::now() < deadline,
            "the node did not exit after its storage failed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(code, Some(74), "exit status for the supervisor");
    cluster.nodes.get_mut(&1).unwrap().child = None;

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
