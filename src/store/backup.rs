//! Whole-store operations a node does not do while it serves: the backup file format (write,
//! verify), restoring a backup into an empty data directory, and the surgery behind
//! `--force-new-cluster` (make this node the only voter of its cluster).
//!
//! A backup file is `ORDOBKP1`, a length-prefixed JSON `BackupHeader`, the snapshot file
//! exactly as the node keeps it (`snapshot_file`, with its own checksum), then the SHA-256 of
//! every byte before it. A snapshot is a point-in-time copy of the state machine at a
//! committed index, so a backup is too; `service` picks one that covers everything committed
//! before the backup was asked for.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use openraft::{BasicNode, EntryPayload, Membership};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::snapshot_file::{self, Hashing, SnapshotDir};
use super::{LogStore, StateMachineStore, StoreError};
use crate::raft::{Entry, LogId, NodeId, SnapshotMeta, Vote};

const MAGIC: &[u8; 8] = b"ORDOBKP1";
/// A header is a few hundred bytes; more is not a backup of ours.
const MAX_HEADER_BYTES: u32 = 64 * 1024;

/// What a backup file says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// The cluster it was taken from.
    pub cluster_id: Option<String>,
    /// The node that served it.
    pub node_id: NodeId,
    /// The committed log index (and its term) the copy is at.
    pub index: u64,
    pub term: u64,
    /// Wall clock of the serving node when the backup began, ms since the epoch.
    pub taken_at_ms: i64,
    /// Length of the snapshot file that follows.
    pub snapshot_bytes: u64,
}

/// What a checked backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifiedBackup {
    pub header: BackupHeader,
    /// The digest of the orders, users and roles in it (as `/cluster/digest` computes it).
    pub digest: String,
    pub records: u64,
}

/// The header of a backup of `meta`, whose snapshot file is `snapshot_bytes` long.
pub fn header_for(
    meta: &SnapshotMeta,
    cluster_id: Option<String>,
    node_id: NodeId,
    taken_at_ms: i64,
    snapshot_bytes: u64,
) -> Result<BackupHeader, StoreError> {
    let last = meta
        .last_log_id
        .ok_or_else(|| StoreError::Corrupt("the snapshot covers no log entry".into()))?;
    Ok(BackupHeader {
        cluster_id,
        node_id,
        index: last.index,
        term: last.leader_id.term,
        taken_at_ms,
        snapshot_bytes,
    })
}

/// Writes a backup: the header, the snapshot file `snapshot` (exactly `snapshot_bytes` of it),
/// the checksum. Streams; blocking.
pub fn write(
    header: &BackupHeader,
    snapshot: impl Read,
    out: impl Write,
) -> Result<(), StoreError> {
    let mut w = Hashing::new(BufWriter::with_capacity(1 << 20, out));
    w.write_all(MAGIC)?;
    let json = serde_json::to_vec(header).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    w.write_all(&(json.len() as u32).to_be_bytes())?;
    w.write_all(&json)?;
    let copied = std::io::copy(&mut snapshot.take(header.snapshot_bytes), &mut w)?;
    if copied != header.snapshot_bytes {
        return Err(StoreError::Corrupt(format!(
            "the snapshot file ended after {copied} of {} bytes",
            header.snapshot_bytes
        )));
    }
    let (mut inner, digest) = w.finish();
    inner.write_all(&digest)?;
    inner.flush()?;
    Ok(())
}

fn read_header(r: &mut impl Read) -> Result<BackupHeader, StoreError> {
    let short = || StoreError::Corrupt("not an ordo backup file (too short)".into());
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| short())?;
    if &magic != MAGIC {
        return Err(StoreError::Corrupt("not an ordo backup file".into()));
    }
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(|_| short())?;
    let len = u32::from_be_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(StoreError::Corrupt(format!("backup header of {len} bytes")));
    }
    let mut json = vec![0u8; len as usize];
    r.read_exact(&mut json).map_err(|_| short())?;
    serde_json::from_slice(&json)
        .map_err(|e| StoreError::Corrupt(format!("backup header does not parse: {e}")))
}

/// Reads a whole backup file, checking both checksums and every record; hands each record
/// to `on_record`. Returns what it holds.
fn read(
    path: &Path,
    mut on_record: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<(VerifiedBackup, SnapshotMeta), StoreError> {
    let mut r = Hashing::new(BufReader::with_capacity(1 << 20, File::open(path)?));
    let header = read_header(&mut r)?;
    let mut digest = StateDigest::default();
    let mut records = 0u64;
    let meta = {
        let mut snapshot = (&mut r).take(header.snapshot_bytes);
        let meta = snapshot_file::read_from(&mut snapshot, &mut |k, v| {
            digest.add(&k, &v);
            records += 1;
            on_record(&k, &v)
        })?;
        if snapshot.limit() != 0 {
            return Err(StoreError::Corrupt(
                "the snapshot in the backup is shorter than its header says".into(),
            ));
        }
        meta
    };
    if meta.last_log_id.map(|l| l.index) != Some(header.index) {
        return Err(StoreError::Corrupt(format!(
            "the header says index {} but the snapshot covers {:?}",
            header.index, meta.last_log_id
        )));
    }
    let (mut rest, computed) = r.finish();
    let mut stored = [0u8; 32];
    rest.read_exact(&mut stored)
        .map_err(|_| StoreError::Corrupt("backup file is cut short".into()))?;
    if stored[..] != computed[..] {
        return Err(StoreError::Corrupt(
            "backup file fails its checksum: a byte changed since it was written".into(),
        ));
    }
    if rest.read(&mut [0u8; 1])? != 0 {
        return Err(StoreError::Corrupt(
            "backup file has bytes after its end".into(),
        ));
    }
    let verified = VerifiedBackup {
        header,
        digest: digest.finish(),
        records,
    };
    Ok((verified, meta))
}

/// Checks a backup file end to end without restoring it.
pub fn verify(path: &Path) -> Result<VerifiedBackup, StoreError> {
    Ok(read(path, |_, _| Ok(()))?.0)
}

/// The state digest over records in key order (as `OrderReader::state_digest`): Raft's
/// bookkeeping keys are left out, so replicas that applied the same commands agree.
#[derive(Default)]
pub(super) struct StateDigest(Sha256);

impl StateDigest {
    pub(super) fn add(&mut self, k: &[u8], v: &[u8]) {
        // Raft bookkeeping, the change records each node trims to its own window, and the
        // listing indexes and counters (derived from the orders, and rebuilt by a node whose
        // version laid them out otherwise: see `list_index`).
        if k == super::keys::APPLIED
            || k == super::keys::MEMBERSHIP
            || k == super::keys::COUNTS_AT
            || k.starts_with(super::keys::CHANGE_PAGE_PREFIX)
            || k.starts_with(super::keys::OLD_CHANGE_PREFIX)
            || k.starts_with(super::keys::COUNT_PREFIX)
            || k.starts_with(super::keys::CUSTOMER_PREFIX)
            || k.starts_with(super::keys::STATUS_BITS_PREFIX)
            || k.starts_with(super::keys::OLD_STATUS_PREFIX)
        {
            return;
        }
        self.0.update((k.len() as u32).to_be_bytes());
        self.0.update(k);
        self.0.update((v.len() as u32).to_be_bytes());
        self.0.update(v);
    }

    pub(super) fn finish(self) -> String {
        format!("{:x}", self.0.finalize())
    }
}

/// Restores the backup at `from` into the empty directory `dir`: the snapshot becomes the
/// node's current snapshot and its state machine; the log starts after it. The node started
/// there still holds the old cluster's membership: the caller makes it a one-node cluster
/// (`force_single_member`, on its first start). `compress`: `StoreConfig::compress`.
pub fn restore(from: &Path, dir: &Path, compress: bool) -> Result<VerifiedBackup, StoreError> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        return Err(StoreError::Corrupt(format!(
            "{} is not empty: restore only into a new directory",
            dir.display()
        )));
    }
    let verified = verify(from)?;
    // Copy the snapshot out of the backup, check it again (as a snapshot file) and publish it.
    let snapshots = SnapshotDir::open(dir.join("snapshots"))?;
    let temp = snapshots.temp_path("restoring");
    {
        let mut r = BufReader::new(File::open(from)?);
        read_header(&mut r)?;
        let mut out = File::create(&temp)?;
        std::io::copy(&mut r.take(verified.header.snapshot_bytes), &mut out)?;
        out.sync_all()?;
    }
    // Not checked again here: loading it below reads it whole and checks its checksum (a
    // failure leaves a directory the caller throws away).
    snapshots.publish(&temp)?;
    drop(snapshots);
    let (log, sm) = super::open(&super::StoreConfig {
        compress,
        ..super::StoreConfig::new(dir)
    })?;
    // Opening loaded it already (a current snapshot ahead of the state machine is loaded at
    // open); loading it again would double a restore's time.
    let last = match sm.applied_state_sync()?.0 {
        Some(loaded) => loaded,
        None => sm
            .load_current_snapshot()?
            .last_log_id
            .expect("checked: the snapshot covers an index"),
    };
    log.start_after(last)?;
    Ok(verified)
}

/// The voters of the membership this node will start with: the last membership entry in its
/// log, or the one its state machine holds.
pub fn voters(log: &LogStore, sm: &StateMachineStore) -> Result<BTreeSet<NodeId>, StoreError> {
    let (applied, stored) = sm.applied_state_sync()?;
    let from = applied.map_or(0, |l| l.index + 1);
    let mut voters: BTreeSet<NodeId> = stored.membership().voter_ids().collect();
    for entry in log.reader.entries(from..)? {
        if let EntryPayload::Membership(m) = &entry.payload {
            voters = m.voter_ids().collect();
        }
    }
    Ok(voters)
}

/// `--force-new-cluster`: makes this node the only voter of its cluster, keeping its data
/// (every entry of its log, committed or not, and its state machine). Appends a membership
/// entry naming only this node (`addr` is its peer address) in a term after any it has seen,
/// and votes for itself in that term, so on start it elects itself, commits the whole log and
/// serves. Blocking; before the Raft core starts. Returns the new entry's log id.
pub fn force_single_member(
    log: &mut LogStore,
    sm: &StateMachineStore,
    id: NodeId,
    addr: String,
) -> Result<LogId, StoreError> {
    let (applied, _) = sm.applied_state_sync()?;
    let mut last = log.last_log_id()?;
    if last < applied {
        // The log ends before the state machine (a restored backup): it starts after it.
        let applied = applied.expect("applied > last, so it is some");
        log.start_after(applied)?;
        last = Some(applied);
    }
    let vote = log.vote()?.unwrap_or_default();
    let term = vote
        .leader_id()
        .term
        .max(last.map_or(0, |l| l.leader_id.term))
        + 1;
    let membership = Membership::new(
        vec![BTreeSet::from([id])],
        BTreeMap::from([(id, BasicNode { addr })]),
    );
    let log_id = LogId::new(
        openraft::CommittedLeaderId::new(term, id),
        last.map_or(0, |l| l.index + 1),
    );
    let entry = Entry {
        log_id,
        payload: EntryPayload::Membership(membership),
    };
    log.force_append(&entry, &Vote::new(term, id))?;
    Ok(log_id)
}
