//! The store's own error type, and its conversion to openraft's `StorageError` at the trait
//! boundary.

use crate::codec::CodecError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// Another process holds the data dir (a running node, or `ordo defrag`).
    #[error("{0} is in use: still open (by a running node, or in this process); stop it first")]
    InUse(std::path::PathBuf),
    /// An offline command pointed at a directory with no store in it.
    #[error("{0} holds no ordo store")]
    NotAStore(std::path::PathBuf),
    /// openraft builds one snapshot at a time; a second dump beginning means a bug.
    #[error("a snapshot dump is already running")]
    DumpRunning,
    /// `build_snapshot` called again on a builder whose dump was already taken (a bug).
    #[error("this snapshot builder was used already")]
    BuilderUsed,
    /// An append waited for a snapshot install to close the hole it would leave, and the
    /// install failed.
    #[error("the snapshot install this append waited for failed")]
    InstallFailed,
    /// Work moved to tokio's blocking pool panicked or was cancelled.
    #[error("a blocking task failed: {0}")]
    TaskFailed(#[from] tokio::task::JoinError),
}

impl StoreError {
    pub(crate) fn into_read(self) -> crate::raft::StorageError {
        openraft::StorageIOError::read(&self).into()
    }
    pub(crate) fn into_write(self) -> crate::raft::StorageError {
        openraft::StorageIOError::write(&self).into()
    }
}
