//! The crate's single error type.

use std::path::PathBuf;

/// Every fallible operation in `portico-anomaly` returns this error, so the proxy can map
/// anomaly failures to one admin-API error shape without depending on our internals.
///
/// Each message is complete on its own and includes its cause, so the cause is not also returned by
/// `source()`: printed with its chain, every cause appears once.
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
        error: std::io::Error,
    },
    /// An I/O error with no single path attached (pipes, child processes).
    #[error("io: {0}")]
    PlainIo(std::io::Error),
    /// Arrow encoding or decoding failed (schema mismatch, corrupt IPC file).
    #[error("arrow: {0}")]
    Arrow(arrow::error::ArrowError),
    /// A tensor operation or safetensors load failed inside candle.
    #[error("model: {0}")]
    Candle(candle_core::Error),
    /// JSON (de)serialisation failed: model sidecar, alert payloads or exports.
    #[error("json: {0}")]
    Json(serde_json::Error),
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

/// `From` by hand rather than `#[from]`, which would also make the cause the error's source.
macro_rules! from_cause {
    ($($variant:ident($cause:ty)),* $(,)?) => {
        $(impl From<$cause> for AnomalyError {
            fn from(error: $cause) -> Self {
                AnomalyError::$variant(error)
            }
        })*
    };
}

from_cause!(
    PlainIo(std::io::Error),
    Arrow(arrow::error::ArrowError),
    Candle(candle_core::Error),
    Json(serde_json::Error),
);

/// Shorthand used throughout the crate.
pub type Result<T, E = AnomalyError> = std::result::Result<T, E>;
