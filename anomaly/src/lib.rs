//! Portico's self-watching anomaly detection.
//!
//! The proxy samples its own counters into a [`Tick`] every `interval` and submits it to a
//! [`DetectorHandle`]. A dedicated thread stores ticks as Arrow batches ([`store`]), runs a small
//! candle LSTM forecaster per series ([`model`]), turns forecast surprise into scores in [0, 1]
//! with adaptive thresholds ([`score`]), raises alerts with hysteresis ([`alert`]) and runs
//! remediation hooks ([`hook`]). [`train`](mod@train) builds new models from recorded history.
//!
//! ```no_run
//! # fn main() -> Result<(), portico_anomaly::AnomalyError> {
//! use portico_anomaly::{AnomalyConfig, Detector, DetectorOptions, Forecaster, Tick};
//! let cfg = AnomalyConfig::default();
//! let det = Detector::spawn(&cfg, Forecaster::bundled()?, DetectorOptions::default())?;
//! det.submit(Tick::new(portico_anomaly::sample::now_ms()).with("process.cpu", 3.5));
//! # Ok(()) }
//! ```

pub mod alert;
pub mod config;
pub mod corpus;
pub mod cpu;
pub mod detector;
pub mod error;
pub mod eval;
pub mod evidence;
pub mod forecast;
pub mod hook;
pub mod incident;
pub mod model;
pub mod nab;
pub mod sample;
pub mod score;
pub mod series;
pub mod spread;
pub mod store;
pub mod time;
pub mod train;

pub use alert::{incident_payload, webhook_payload, Alert, AlertChange, AlertEngine, AlertState, Severity, Transition};
pub use config::{AnomalyConfig, HookConfig, HookMatch, HookRole, IncidentConfig, Thresholds};
pub use cpu::{CpuSampler, CpuUsage};
pub use detector::{load_model, AnomalyEvent, Detector, DetectorHandle, DetectorOptions, DetectorStats};
pub use error::{AnomalyError, Result};
pub use eval::{evaluate, EvalOptions, EvalReport, FaultLabel, LabelledScenario};
pub use hook::{ActionRecord, HookRunner, Outcome};
pub use incident::{Incident, IncidentChange, IncidentEngine, IncidentState, IncidentTransition, Scope, Topology};
pub use model::{Forecaster, ModelMeta};
pub use sample::{LatencyWindow, Quantiles, Tick};
pub use score::{score_csv, score_series, ScoreSummary, Scorer, SeriesScore};
pub use series::{DetectorKit, DetectorParams, SeriesDetector, Verdict};
pub use store::{SeriesStore, StoreOptions};
pub use train::{train, train_series, TrainOptions, TrainProgress, TrainReport};
