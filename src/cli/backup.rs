//! `ordo backup` (take one from a running cluster, or check a file) and `ordo restore` (make a
//! data directory from one, for the first node of a new cluster). The file format and the
//! checks are `store::backup`'s; see docs/operations.md for the procedure.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{report_error, ConnArgs};
use crate::node::FORCE_NEW_CLUSTER_PENDING;
use crate::rpc::cluster_id::ClusterId;
use crate::store::backup::{self, VerifiedBackup};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub command: Option<BackupCommand>,
    /// Write the backup here (first to FILE.partial, which is checked, then renamed).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Give up after this many milliseconds (a backup of millions of orders takes a while).
    #[arg(long, default_value_t = 1_800_000, value_name = "MS")]
    pub within_ms: u64,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Check a backup file end to end (both checksums, every record) and say what it holds.
    Verify {
        /// The backup file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// A new (absent or empty) data directory for the first node of the new cluster.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Compress the restored store on disk, as `ordo serve --compress-store` does for a new
    /// one (the store keeps this for good).
    #[arg(long)]
    pub compress_store: bool,
}

fn describe(v: &VerifiedBackup) -> String {
    format!(
        "cluster {} at index {} (term {}), taken from node {}: {} records, digest {}",
        v.header.cluster_id.as_deref().unwrap_or("(unknown)"),
        v.header.index,
        v.header.term,
        v.header.node_id,
        v.records,
        v.digest
    )
}

pub async fn run(conn: &ConnArgs, args: BackupArgs) -> i32 {
    match (args.command, args.out) {
        (Some(BackupCommand::Verify { file }), _) => match backup::verify(&file) {
            Ok(v) => {
                if conn.json {
                    println!("{}", serde_json::to_string(&v).expect("serializable"));
                } else {
                    println!("{}: good; {}", file.display(), describe(&v));
                }
                0
            }
            Err(e) => {
                eprintln!("error: {}: {e}", file.display());
                1
            }
        },
        (None, Some(out)) => take(conn, out, Duration::from_millis(args.within_ms)).await,
        (None, None) => {
            eprintln!("error: give --out FILE (or `ordo backup verify FILE`)");
            2
        }
    }
}

async fn take(conn: &ConnArgs, out: PathBuf, within: Duration) -> i32 {
    let client = match conn.client() {
        Ok(c) => c,
        Err(e) => return report_error(conn, &e),
    };
    let started = Instant::now();
    let mut partial = out.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    if let Err(e) = client.backup_to(&partial, within).await {
        let _ = std::fs::remove_file(&partial);
        return report_error(conn, &e);
    }
    let checked = tokio::task::spawn_blocking({
        let partial = partial.clone();
        move || backup::verify(&partial)
    })
    .await
    .expect("the check does not panic");
    let verified = match checked {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            eprintln!("error: the backup received does not check out: {e}");
            return 1;
        }
    };
    if let Err(e) = std::fs::rename(&partial, &out) {
        eprintln!("error: {} -> {}: {e}", partial.display(), out.display());
        return 1;
    }
    // The rename reaches the disk before the backup is reported written.
    if let Err(e) = sync_dir_of(&out) {
        eprintln!("error: syncing the directory of {}: {e}", out.display());
        return 1;
    }
    let bytes = std::fs::metadata(&out).map_or(0, |m| m.len());
    let secs = started.elapsed().as_secs_f64();
    if conn.json {
        let mut v = serde_json::to_value(&verified).expect("serializable");
        v["file"] = out.display().to_string().into();
        v["bytes"] = bytes.into();
        v["seconds"] = secs.into();
        println!("{v}");
    } else {
        println!(
            "wrote {} ({bytes} bytes in {secs:.1} s): {}",
            out.display(),
            describe(&verified)
        );
    }
    0
}

/// Whether `dir` exists and another filesystem is mounted there (its device is not its
/// parent's).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = match dir.canonicalize().ok().as_deref().and_then(Path::parent) {
        Some(p) => p.to_path_buf(),
        None => return false,
    };
    match (std::fs::metadata(dir), std::fs::metadata(parent)) {
        (Ok(d), Ok(p)) => d.is_dir() && d.dev() != p.dev(),
        _ => false,
    }
}

/// Fsyncs the directory `path` is in (a rename into it is durable then).
fn sync_dir_of(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

pub fn restore(conn: &ConnArgs, args: RestoreArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    let dir = &args.data_dir;
    if is_mount_point(dir) {
        // The store is built beside `dir` and renamed over it, which a mount point (a
        // container volume, a disk of its own) does not allow: the copy would also land on
        // the parent's filesystem. (Checked first: a new volume is seldom empty, ext4 has
        // `lost+found`.)
        anyhow::bail!(
            "{} is a mount point: restore into a new directory inside it (say {}) and give \
             that to `ordo serve --data-dir`",
            dir.display(),
            dir.join("data").display()
        );
    }
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        anyhow::bail!(
            "{} is not empty: restore only into a new directory",
            dir.display()
        );
    }
    // Everything is made in a directory beside it and renamed into place once whole: a
    // restore that fails half-way leaves nothing a node could start from. (Beside it by name:
    // `dir/` with a slash, as a shell completes it, must not put it inside.)
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        anyhow::bail!("{} names no directory to restore into", dir.display());
    };
    let mut building_name = name.to_os_string();
    building_name.push(".restoring");
    let building = parent.join(building_name);
    if building.exists() {
        std::fs::remove_dir_all(&building)
            .with_context(|| format!("removing the leftover {}", building.display()))?;
    }
    let verified = match backup::restore(&args.from, &building, args.compress_store) {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&building);
            return Err(anyhow::Error::new(e).context(format!(
                "restoring {} into {}",
                args.from.display(),
                dir.display()
            )));
        }
    };
    let finish = || -> anyhow::Result<String> {
        // A new cluster: its own id, so no node of the old one can talk to it by mistake.
        let cluster_id = ClusterId::load(&building)?.create()?;
        std::fs::write(building.join(FORCE_NEW_CLUSTER_PENDING), b"restored\n")
            .context("marking the data directory for its first start")?;
        std::fs::File::open(&building)?.sync_all()?;
        let replaced = dir.exists();
        if replaced {
            std::fs::remove_dir(dir).with_context(|| format!("replacing {}", dir.display()))?;
        }
        if let Err(e) = std::fs::rename(&building, dir) {
            if replaced {
                // The empty directory the user made is put back.
                let _ = std::fs::create_dir(dir);
            }
            return Err(anyhow::Error::new(e).context(format!(
                "{} -> {}",
                building.display(),
                dir.display()
            )));
        }
        Ok(cluster_id)
    };
    let cluster_id = match finish() {
        Ok(id) => id,
        Err(e) => {
            // Nothing half-made is left behind (it can be as large as the store).
            let _ = std::fs::remove_dir_all(&building);
            return Err(e);
        }
    };
    // The rename reaches the disk before "restored" is said: a power loss after it must not
    // leave the directory missing (a node would then start an empty store there).
    sync_dir_of(dir)?;
    if conn.json {
        let mut v = serde_json::to_value(&verified).expect("serializable");
        v["new_cluster_id"] = cluster_id.clone().into();
        v["seconds"] = started.elapsed().as_secs_f64().into();
        println!("{v}");
    } else {
        println!(
            "restored {} into {} (new cluster {cluster_id}): {}.\nStart it with `ordo serve \
             --id ID --data-dir {} ...`: it comes up as a one-node cluster; add members as \
             usual.",
            args.from.display(),
            args.data_dir.display(),
            describe(&verified),
            args.data_dir.display()
        );
    }
    Ok(0)
}
