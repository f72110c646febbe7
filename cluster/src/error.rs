//! Everything that can go wrong in the cluster, as one enum the admin API maps onto status codes.

use std::path::PathBuf;

/// Why a cluster operation failed. Each message is complete on its own and includes its cause; the cause is
/// also kept as `source()`.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file under `data_dir` could not be read or written.
    #[error("cluster data {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        error: std::io::Error,
    },
    /// A file under `data_dir` is not what Portico wrote.
    #[error("cluster data {path} is corrupt: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The Raft listener could not be bound.
    #[error("cluster listener {address}: {error}")]
    Bind {
        /// The address.
        address: String,
        /// The OS error.
        #[source]
        error: std::io::Error,
    },
    /// The settings are inconsistent (checked before anything starts).
    #[error("cluster settings: {0}")]
    Settings(String),
    /// No leader is known: an election is running or this node is cut off.
    #[error("no leader is known (election in progress or this node is cut off); the write was not made")]
    NoLeader,
    /// The leader has not heard from a quorum recently: it may be cut off, so it refuses writes.
    #[error("no quorum: the leader has not heard from a majority for {0} ms; the write was not made")]
    NoQuorum(u64),
    /// The write was not committed in time; it may still commit later.
    #[error("the write was not committed within {0} ms")]
    Timeout(u64),
    /// The leader could not be reached to forward a write.
    #[error("forwarding to leader {leader} at {address}: {message}")]
    Forward {
        /// Leader id.
        leader: u64,
        /// Its cluster address.
        address: String,
        /// What failed.
        message: String,
    },
    /// The state machine refused the command (it was committed and changed nothing).
    #[error("{0}")]
    Rejected(String),
    /// Raft refused or failed the operation.
    #[error("raft: {0}")]
    Raft(String),
}

impl ClusterError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> ClusterError {
        ClusterError::Io { path: path.into(), error }
    }
}
