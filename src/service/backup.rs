//! Choosing what a backup copies: a snapshot of this node's state machine that covers
//! everything committed before the backup was asked for. The node passes a linearizable read
//! barrier first (so it has applied all of that), then uses its current snapshot if it covers
//! that far, or has openraft build one (which runs beside applies: writes go on) and waits for
//! it. `api` streams the file; the format is `store::backup`'s.

use std::time::Duration;

use tokio::time::Instant;

use super::{Service, ServiceError};
use crate::raft::SnapshotMeta;
use crate::store::SnapshotFiles;

/// Building a snapshot of millions of orders takes minutes (five at ten million orders beside
/// writes on two cores), and a backup may wait for one running build and then its own.
const BACKUP_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(1800);

impl Service {
    /// The snapshot a backup should copy, opened: it covers at least every write committed
    /// before this call.
    pub async fn backup_snapshot(
        &self,
        files: &SnapshotFiles,
    ) -> Result<(SnapshotMeta, std::fs::File), ServiceError> {
        self.linearizable_barrier().await?;
        let target = self.applied_index().unwrap_or(0);
        let deadline = Instant::now() + BACKUP_SNAPSHOT_TIMEOUT;
        let mut metrics = self.raft.metrics();
        loop {
            let seen = metrics.borrow_and_update().snapshot;
            self.check_storage()?;
            let current = files
                .open_current()
                .map_err(|e| ServiceError::Internal(format!("opening the snapshot: {e}")))?;
            if let Some((meta, file)) = current {
                if meta.last_log_id.is_some_and(|l| l.index >= target) {
                    return Ok((meta, file));
                }
            }
            // Ignored while a build runs; that one may end short of the target, and then the
            // next turn asks again.
            let _ = self.raft.trigger().snapshot().await;
            let built = metrics.wait_for(|m| m.snapshot != seen || m.running_state.is_err());
            match tokio::time::timeout_at(deadline, built).await {
                Ok(Ok(m)) if m.running_state.is_err() => {
                    drop(m);
                    self.check_storage()?;
                    return Err(ServiceError::Unavailable("the node is stopping".into()));
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(ServiceError::Unavailable("the node is stopping".into())),
                Err(_) => {
                    return Err(ServiceError::Timeout(format!(
                        "no snapshot covering index {target} within {BACKUP_SNAPSHOT_TIMEOUT:?}"
                    )))
                }
            }
        }
    }

    /// The id of the cluster this node belongs to, once it knows it.
    pub fn cluster_id(&self) -> Option<String> {
        self.rpc.cluster_id()
    }
}
