//! The crate's single error type.

use std::path::PathBuf;

/// Every fallible operation in `portico-anomaly` returns this error, so the proxy can map
/// anomaly failures to one admin-API error shape without depending on our internals.
///
/// Each message is complete on its own and includes its cause, so a log line that prints only the error loses
/// nothing; the cause is also kept as `source()` for callers that walk the chain (the binary's error printer
/// leaves out a cause whose text the message already contains, so each is printed once).
#[derive(Debug, thiserror::Error)]
pub enum AnomalyError {
    /// The `[anomaly]` configuration is invalid; the message names the offending key.
    #[error("anomaly config: {0}")]
    Config(String),
    /// A file could not be read or written; the path is kept so operators know which one.
    #[error("{path}: {error}")]
    Io {
        /// File or directory that failed.
        path: PathBuf,
        /// Underlying OS error.
        #[source]
        error: std::io::Error,
    },
    /// An I/O error with no single path attached (pipes, child processes).
    #[error("io: {0}")]
    PlainIo(#[from] std::io::Error),
    /// Arrow encoding or decoding failed (schema mismatch, corrupt IPC file).
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A tensor operation or safetensors load failed inside candle.
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
    /// JSON (de)serialisation failed: model sidecar, alert payloads or exports.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A model file (weights or sidecar) could not be used; names the weights file.
    #[error("model {path} (and its .json sidecar): {message}")]
    ModelFile {
        /// The `.safetensors` path.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// Input data (CSV or IPC for training and scoring) is malformed; message says where.
    #[error("data: {0}")]
    Data(String),
    /// The model file and its sidecar disagree, or the sidecar describes an unsupported model.
    #[error("model metadata: {0}")]
    Model(String),
    /// The detector thread is gone, so requests to it can no longer be answered.
    #[error("detector thread has stopped")]
    DetectorStopped,
}

impl AnomalyError {
    /// Attach a path to an `io::Error`, because a bare "No such file" is useless in a log.
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        AnomalyError::Io { path: path.into(), error }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = AnomalyError> = std::result::Result<T, E>;
