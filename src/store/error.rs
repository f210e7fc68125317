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
    /// openraft builds one snapshot at a time; a second dump beginning means a bug.
    #[error("a snapshot dump is already running")]
    DumpRunning,
}

impl StoreError {
    pub(crate) fn into_read(self) -> crate::raft::StorageError {
        openraft::StorageIOError::read(&self).into()
    }
    pub(crate) fn into_write(self) -> crate::raft::StorageError {
        openraft::StorageIOError::write(&self).into()
    }
}
