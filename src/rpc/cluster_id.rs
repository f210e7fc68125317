//! The cluster's identity: a random id made once, when the cluster is formed, kept in a file
//! of every node's data directory and carried by every node-to-node call (`CLUSTER_HEADER`).
//! A node refuses calls that carry another cluster's id, so a node whose directory was wiped
//! and that formed a cluster of its own again (restarted with its old flags) cannot disturb
//! the cluster it used to belong to, nor be joined by it.
//!
//! The id is made by the node that forms a cluster (its first start with `--peers`, unless
//! `--cluster-id` names it), by `--force-new-cluster` and by `ordo restore`. A joining node
//! given `--cluster-id` keeps it before it serves (`pin`). Another node learns it from the
//! first call that carries one (the leader's appends, or the forming node's votes) and that it
//! serves with a 2xx, and keeps it from then on. A 2xx says the call decoded, not that Raft
//! took it (a refused vote is a 200 too): an undecodable call with a forged id teaches nothing,
//! but a well-formed call from another cluster reaching a node that knows no id yet still does,
//! which is what `--cluster-id` is for. Until a node knows an id, such calls are served one at
//! a time, so two clusters' calls cannot both be served before one id is kept. A call without
//! an id is accepted: nodes that do not know it yet (a new learner) send none. A cluster formed
//! before ids existed has none and gets none.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use rand::RngCore;

/// Request header of node-to-node calls: the sender's cluster id.
pub const CLUSTER_HEADER: &str = "x-ordo-cluster";

/// The file in the data directory that holds the id.
const FILE: &str = "cluster-id";

pub struct ClusterId {
    path: PathBuf,
    id: RwLock<Option<String>>,
    /// Held while a call serves that would teach this node its id.
    first_calls: tokio::sync::Mutex<()>,
}

/// What to do with a call, by the cluster id it carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Ours, or none (a node that does not know it yet).
    Serve,
    /// Another cluster's, or not an id.
    Refuse,
    /// This node knows no id yet: serve it (`first_call`), and keep this id if it succeeds.
    Learn(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterIdError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds {found:?}, which is not a cluster id")]
    Malformed { path: PathBuf, found: String },
    #[error(
        "--cluster-id {asked}: this data dir belongs to cluster {found} ({path}). A node keeps \
         the cluster it joined: give that id, or leave the flag out; to join the other cluster, \
         start with an empty data dir"
    )]
    Mismatch {
        path: PathBuf,
        asked: String,
        found: String,
    },
}

/// A cluster id given by hand (`ordo serve --cluster-id`): 32 lowercase hex digits.
pub fn parse(raw: &str) -> Result<String, String> {
    if well_formed(raw) {
        Ok(raw.to_string())
    } else {
        Err(
            "a cluster id is 32 lowercase hex digits (GET /cluster/status shows the cluster's)"
                .into(),
        )
    }
}

/// 32 lowercase hex digits.
fn well_formed(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ClusterId {
    /// The id stored in `data_dir`, if any.
    pub fn load(data_dir: &Path) -> Result<ClusterId, ClusterIdError> {
        let path = data_dir.join(FILE);
        let id = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let id = text.trim().to_string();
                if !well_formed(&id) {
                    return Err(ClusterIdError::Malformed { path, found: id });
                }
                Some(id)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(ClusterIdError::Io { path, source }),
        };
        Ok(ClusterId {
            path,
            id: RwLock::new(id),
            first_calls: tokio::sync::Mutex::new(()),
        })
    }

    pub fn get(&self) -> Option<String> {
        self.id.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Keeps `asked` (from `--cluster-id`, checked by `parse`) before the node serves, so that
    /// from its first call on it refuses every other cluster's: without it a node that knows
    /// no id learns the first one it serves, which may be another cluster's. A data dir that
    /// already names another cluster is an error: a node never changes cluster this way.
    pub fn pin(&self, asked: &str) -> Result<(), ClusterIdError> {
        match self.get() {
            Some(found) if found == asked => Ok(()),
            Some(found) => Err(ClusterIdError::Mismatch {
                path: self.path.clone(),
                asked: asked.to_string(),
                found,
            }),
            None => {
                self.store(asked)?;
                tracing::info!(cluster_id = asked, "cluster id from --cluster-id");
                Ok(())
            }
        }
    }

    /// Makes a new id and keeps it (when this node forms a cluster, or leads one without).
    pub fn create(&self) -> Result<String, ClusterIdError> {
        let mut bytes = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut bytes);
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.store(&id)?;
        Ok(id)
    }

    /// What to do with a call carrying `theirs` (or no id).
    pub fn admission(&self, theirs: Option<&str>) -> Admission {
        let Some(theirs) = theirs else {
            return Admission::Serve;
        };
        match self.get() {
            Some(ours) if ours == theirs => Admission::Serve,
            Some(_) => Admission::Refuse,
            None if well_formed(theirs) => Admission::Learn(theirs.to_string()),
            None => Admission::Refuse,
        }
    }

    /// Serves a call that carries `theirs` while this node knows no id (`Admission::Learn`):
    /// one at a time, and `theirs` is kept if `serve` answers with success. Returns the
    /// answer, or None when the call must be refused (another id was learnt meanwhile).
    pub async fn first_call<F, R>(
        &self,
        theirs: &str,
        serve: F,
        succeeded: impl FnOnce(&R) -> bool,
    ) -> Result<Option<R>, ClusterIdError>
    where
        F: std::future::Future<Output = R>,
    {
        let _turn = self.first_calls.lock().await;
        match self.admission(Some(theirs)) {
            Admission::Serve => return Ok(Some(serve.await)),
            Admission::Refuse => return Ok(None),
            Admission::Learn(_) => {}
        }
        let answer = serve.await;
        if succeeded(&answer) {
            self.learn(theirs)?;
        }
        Ok(Some(answer))
    }

    fn learn(&self, theirs: &str) -> Result<(), ClusterIdError> {
        let mut id = self.id.write().unwrap_or_else(|p| p.into_inner());
        if id.is_none() {
            self.write_file(theirs)?;
            tracing::info!(cluster_id = theirs, "joined cluster");
            *id = Some(theirs.to_string());
        }
        Ok(())
    }

    fn store(&self, new: &str) -> Result<(), ClusterIdError> {
        let mut id = self.id.write().unwrap_or_else(|p| p.into_inner());
        self.write_file(new)?;
        *id = Some(new.to_string());
        Ok(())
    }

    /// Written beside and renamed over, and synced, so a crash leaves the old file or the
    /// new one.
    fn write_file(&self, id: &str) -> Result<(), ClusterIdError> {
        use std::io::Write;
        let io = |source| ClusterIdError::Io {
            path: self.path.clone(),
            source,
        };
        let temp = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&temp).map_err(io)?;
        writeln!(file, "{id}").map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&temp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_id_served_is_kept_and_another_is_refused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ClusterId::load(dir.path()).unwrap();
        assert_eq!(ids.get(), None);
        assert_eq!(ids.admission(None), Admission::Serve, "calls without an id");
        assert_eq!(ids.admission(Some("not-an-id")), Admission::Refuse);
        let theirs = "0123456789abcdef0123456789abcdef";
        let other = "fedcba9876543210fedcba9876543210";
        assert_eq!(
            ids.admission(Some(other)),
            Admission::Learn(other.to_string())
        );
        // A call that fails (an undecodable body, say) teaches nothing...
        let ok = |status: &u16| *status < 300;
        let answer = ids.first_call(other, async { 400u16 }, ok).await.unwrap();
        assert_eq!((answer, ids.get()), (Some(400), None));
        // ...one served is kept, and another id is refused from then on.
        let answer = ids.first_call(theirs, async { 200u16 }, ok).await.unwrap();
        assert_eq!(answer, Some(200));
        assert_eq!(ids.get().as_deref(), Some(theirs));
        assert_eq!(ids.admission(Some(theirs)), Admission::Serve);
        assert_eq!(ids.admission(Some(other)), Admission::Refuse);
        let late = ids.first_call(other, async { 200u16 }, ok).await.unwrap();
        assert_eq!(late, None, "learnt meanwhile: refused");

        let reopened = ClusterId::load(dir.path()).unwrap();
        assert_eq!(reopened.get().as_deref(), Some(theirs));
        assert_eq!(reopened.admission(Some(other)), Admission::Refuse);

        std::fs::write(dir.path().join(FILE), "garbage").unwrap();
        assert!(ClusterId::load(dir.path()).is_err());
    }

    #[test]
    fn a_pinned_id_is_kept_from_the_start_and_a_data_dir_of_another_cluster_is_refused() {
        let ours = "0123456789abcdef0123456789abcdef";
        let other = "fedcba9876543210fedcba9876543210";
        assert!(parse("0123456789ABCDEF0123456789ABCDEF").is_err());
        assert!(parse(&ours[1..]).is_err());
        assert_eq!(parse(ours).as_deref(), Ok(ours));

        let dir = tempfile::tempdir().unwrap();
        let ids = ClusterId::load(dir.path()).unwrap();
        ids.pin(ours).unwrap();
        // Refused before any call could teach it another.
        assert_eq!(ids.admission(Some(other)), Admission::Refuse);
        assert_eq!(ids.admission(Some(ours)), Admission::Serve);
        let reopened = ClusterId::load(dir.path()).unwrap();
        assert_eq!(reopened.get().as_deref(), Some(ours), "kept on disk");
        reopened.pin(ours).unwrap();
        let err = reopened.pin(other).unwrap_err();
        assert!(matches!(err, ClusterIdError::Mismatch { .. }), "{err}");
        assert_eq!(reopened.get().as_deref(), Some(ours), "not overwritten");
    }
}
