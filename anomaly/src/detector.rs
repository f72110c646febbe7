//! The detector: a dedicated OS thread that owns the model and does all inference, so model
//! maths never runs on (or stalls) the proxy's tokio workers.
//!
//! Data flow: proxy sampler --[`DetectorHandle::submit`], bounded, never blocks--> detector thread
//! -> store (Arrow ring) -> scorer (forecaster ensemble, robust scoring) -> alert engine -> incident
//! engine -> published snapshots (scores, alerts, incidents, stats), a `tokio::sync::broadcast` of
//! [`AnomalyEvent`]s (for SSE), and hook runs — once per settled incident, for its cause — spawned on the
//! tokio runtime handle given in [`DetectorOptions::runtime`]. Webhook posting is left to the proxy (it owns
//! the HTTP client): subscribe to events and post [`crate::alert::incident_payload`] for settled and resolved
//! incidents.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::sync::broadcast;

use crate::alert::{Alert, AlertChange, AlertEngine};
use crate::config::AnomalyConfig;
use crate::error::{AnomalyError, Result};
use crate::hook::{ActionRecord, HookRunner};
use crate::incident::{Incident, IncidentChange, IncidentEngine, IncidentTransition, Topology};
use crate::model::{Forecaster, ModelMeta};
use crate::sample::Tick;
use crate::score::{Scorer, SeriesScore};
use crate::series::DetectorParams;
use crate::store::{SeriesStore, StoreOptions};

/// Everything the detector publishes on its broadcast channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum AnomalyEvent {
    /// Scores of every series in one tick (drives live charts).
    Scores {
        /// Tick timestamp (unix ms).
        timestamp_ms: i64,
        /// Per-series scores.
        scores: Vec<SeriesScore>,
    },
    /// An alert fired, escalated or resolved.
    Alert(AlertChange),
    /// An incident opened, grew, settled (its cause decided) or resolved.
    Incident(IncidentChange),
}

/// Counters and timings for the admin API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DetectorStats {
    /// Ticks processed.
    pub ticks: u64,
    /// Ticks dropped because the submit queue was full.
    pub dropped: u64,
    /// Ticks whose processing failed (logged).
    pub errors: u64,
    /// Distinct series seen.
    pub series: usize,
    /// Scoring + inference time of the last tick, microseconds.
    pub last_inference_us: u64,
    /// Mean of the above over all ticks.
    pub mean_inference_us: f64,
    /// Max of the above over all ticks.
    pub max_inference_us: u64,
}

/// Non-config inputs to [`Detector::spawn`].
#[derive(Debug, Clone)]
pub struct DetectorOptions {
    /// Runtime on which hook processes are spawned; required when hooks are configured.
    pub runtime: Option<Handle>,
    /// Passed to hooks as `PORTICO_ADMIN_URL`.
    pub admin_url: String,
    /// Alerts kept in the history ring.
    pub history_limit: usize,
    /// Broadcast buffer; slow SSE subscribers lag (and skip) rather than block the detector.
    pub event_capacity: usize,
    /// Which upstreams each listener routes to, for grouping alerts into incidents.
    pub topology: Topology,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        DetectorOptions {
            runtime: None,
            admin_url: "http://127.0.0.1:9901".into(),
            history_limit: 1000,
            event_capacity: 1024,
            topology: Topology::default(),
        }
    }
}

enum Msg {
    Tick(Box<Tick>),
    Topology(Topology),
    Flush(mpsc::Sender<()>),
}

struct Shared {
    scores: RwLock<BTreeMap<String, SeriesScore>>,
    active: RwLock<Vec<Alert>>,
    history: Mutex<VecDeque<Alert>>,
    /// Open incidents, then recently resolved ones (bounded like the alert history).
    incidents: RwLock<VecDeque<Incident>>,
    store: Mutex<SeriesStore>,
    stats: Mutex<DetectorStats>,
    dropped: AtomicU64,
    events: broadcast::Sender<AnomalyEvent>,
    hooks: HookRunner,
    meta: ModelMeta,
}

/// Load the model named in the config, or the bundled one when `model` is unset.
pub fn load_model(config: &AnomalyConfig) -> Result<Forecaster> {
    match &config.model {
        Some(p) => Forecaster::load(p),
        None => Forecaster::bundled(),
    }
}

/// Namespace for [`Detector::spawn`].
#[derive(Debug)]
pub struct Detector;

impl Detector {
    /// Validate `config`, start the detector thread and return its handle.
    pub fn spawn(config: &AnomalyConfig, forecaster: Forecaster, opts: DetectorOptions) -> Result<DetectorHandle> {
        config.validate()?;
        if !config.hooks.is_empty() && opts.runtime.is_none() {
            return Err(AnomalyError::Config("hooks are configured but no tokio runtime handle was given".into()));
        }
        let store = SeriesStore::new(StoreOptions {
            capacity: config.history_ticks(),
            dir: config.store_dir.clone(),
            max_bytes: config.store_max_bytes,
            ..StoreOptions::default()
        })?;
        let (events, _) = broadcast::channel(opts.event_capacity.max(1));
        let shared = Arc::new(Shared {
            scores: RwLock::new(BTreeMap::new()),
            active: RwLock::new(Vec::new()),
            history: Mutex::new(VecDeque::new()),
            incidents: RwLock::new(VecDeque::new()),
            store: Mutex::new(store),
            stats: Mutex::new(DetectorStats::default()),
            dropped: AtomicU64::new(0),
            events,
            hooks: HookRunner::new(config.hooks.clone(), config.max_concurrent_hooks, opts.admin_url.clone()),
            meta: forecaster.meta().clone(),
        });
        let (tx, rx) = mpsc::sync_channel(config.queue);
        let worker = Worker {
            shared: shared.clone(),
            scorer: Scorer::with_params(
                Arc::new(forecaster),
                DetectorParams { warmup: config.warmup, adapt_rows: config.adapt_ticks(), ..DetectorParams::default() },
            )?,
            alerts: AlertEngine::new(config.thresholds.clone()),
            incidents: IncidentEngine::new(
                i64::try_from(config.incidents.window.0.as_millis()).unwrap_or(i64::MAX),
                i64::try_from(config.incidents.settle.0.as_millis()).unwrap_or(i64::MAX),
                opts.topology.clone(),
            ),
            runtime: opts.runtime,
            history_limit: opts.history_limit.max(1),
        };
        let thread = std::thread::Builder::new()
            .name("portico-anomaly".into())
            .spawn(move || worker.run(rx))
            .map_err(AnomalyError::PlainIo)?;
        Ok(DetectorHandle { tx: Some(tx), shared, thread: Some(thread) })
    }
}

struct Worker {
    shared: Arc<Shared>,
    scorer: Scorer,
    alerts: AlertEngine,
    incidents: IncidentEngine,
    runtime: Option<Handle>,
    history_limit: usize,
}

impl Worker {
    /// Open incidents first, then resolved ones newest last, at most `history_limit` resolved.
    fn publish_incidents(&self, changes: &[IncidentChange]) {
        let mut list = self.shared.incidents.write();
        list.retain(|i| i.state == crate::incident::IncidentState::Resolved);
        for ch in changes.iter().filter(|c| c.transition == IncidentTransition::Resolved) {
            if list.len() >= self.history_limit {
                list.pop_front();
            }
            list.push_back(ch.incident.clone());
        }
        for open in self.incidents.open().iter().rev() {
            list.push_front(open.clone());
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            match msg {
                Msg::Tick(t) => {
                    if let Err(e) = self.process(&t) {
                        self.shared.stats.lock().errors += 1;
                        tracing::warn!(error = %e, "anomaly detector failed to process tick");
                    }
                }
                Msg::Topology(t) => self.incidents.set_topology(t),
                Msg::Flush(ack) => {
                    let _ = ack.send(());
                }
            }
        }
        if let Err(e) = self.shared.store.lock().flush() {
            tracing::warn!(error = %e, "anomaly store flush at shutdown failed");
        }
    }

    fn process(&mut self, tick: &Tick) -> Result<()> {
        let stored = self.shared.store.lock().push(tick);
        let t0 = Instant::now();
        let scores = self.scorer.score_tick(tick)?;
        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        {
            let mut st = self.shared.stats.lock();
            st.ticks += 1;
            st.series = self.scorer.series_count();
            st.last_inference_us = us;
            st.max_inference_us = st.max_inference_us.max(us);
            st.mean_inference_us += (us as f64 - st.mean_inference_us) / st.ticks as f64;
        }
        let changes: Vec<AlertChange> = scores.iter().filter_map(|s| self.alerts.update(s)).collect();
        {
            let mut snap = self.shared.scores.write();
            for s in &scores {
                snap.insert(s.series.clone(), s.clone());
            }
        }
        if !changes.is_empty() {
            *self.shared.active.write() = self.alerts.active();
            let mut hist = self.shared.history.lock();
            for ch in &changes {
                match hist.iter_mut().rev().find(|a| a.id == ch.alert.id) {
                    Some(a) => *a = ch.alert.clone(),
                    None => {
                        if hist.len() >= self.history_limit {
                            hist.pop_front();
                        }
                        hist.push_back(ch.alert.clone());
                    }
                }
            }
        }
        let mut incident_changes = Vec::new();
        for ch in &changes {
            incident_changes.extend(self.incidents.on_alert(ch, tick.timestamp_ms));
        }
        incident_changes.extend(self.incidents.tick(tick.timestamp_ms));
        if !incident_changes.is_empty() {
            self.publish_incidents(&incident_changes);
        }
        // Send errors only mean "no subscriber right now".
        let _ = self.shared.events.send(AnomalyEvent::Scores { timestamp_ms: tick.timestamp_ms, scores });
        for ch in changes {
            tracing::debug!(series = %ch.alert.series, severity = ?ch.alert.severity, transition = ?ch.transition, score = ch.alert.peak_score, "anomaly alert");
            let _ = self.shared.events.send(AnomalyEvent::Alert(ch));
        }
        for ch in incident_changes {
            let inc = &ch.incident;
            match ch.transition {
                IncidentTransition::Settled => {
                    let symptoms: Vec<&str> = inc.symptoms.iter().map(|m| m.alert.series.as_str()).collect();
                    tracing::info!(incident = %inc.id, cause = %inc.cause.alert.series, symptoms = ?symptoms, severity = ?inc.severity, "anomaly incident");
                    if let Some(rt) = &self.runtime {
                        self.shared.hooks.dispatch_incident(rt, inc);
                    }
                }
                IncidentTransition::Resolved => {
                    tracing::info!(incident = %inc.id, cause = %inc.cause.alert.series, "anomaly incident resolved");
                }
                IncidentTransition::Opened | IncidentTransition::Grew => {}
            }
            let _ = self.shared.events.send(AnomalyEvent::Incident(ch));
        }
        stored
    }
}

/// Handle to a running detector. Cheap reads go to published snapshots; dropping the handle
/// stops the thread after it drains queued ticks.
pub struct DetectorHandle {
    tx: Option<SyncSender<Msg>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DetectorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetectorHandle").field("stats", &self.stats()).finish()
    }
}

impl DetectorHandle {
    /// Queue a tick without blocking; returns `false` (and counts a drop) if the queue is full
    /// or the detector has stopped. Safe to call from async code.
    pub fn submit(&self, tick: Tick) -> bool {
        let Some(tx) = &self.tx else { return false };
        match tx.try_send(Msg::Tick(Box::new(tick))) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Block until every tick queued before this call has been processed. Blocking: call from a
    /// plain thread or `spawn_blocking`, not directly on a tokio worker.
    pub fn flush(&self) -> Result<()> {
        let tx = self.tx.as_ref().ok_or(AnomalyError::DetectorStopped)?;
        let (ack_tx, ack_rx) = mpsc::channel();
        tx.send(Msg::Flush(ack_tx)).map_err(|_| AnomalyError::DetectorStopped)?;
        ack_rx.recv().map_err(|_| AnomalyError::DetectorStopped)
    }

    /// Latest score per series.
    pub fn scores(&self) -> BTreeMap<String, SeriesScore> {
        self.shared.scores.read().clone()
    }

    /// Currently firing alerts.
    pub fn active_alerts(&self) -> Vec<Alert> {
        self.shared.active.read().clone()
    }

    /// Open incidents (oldest first), then recently resolved ones (oldest first).
    pub fn incidents(&self) -> Vec<Incident> {
        self.shared.incidents.read().iter().cloned().collect()
    }

    /// Tells the incident engine which upstreams each listener routes to (after a reload). Never blocks.
    pub fn set_topology(&self, topology: Topology) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Msg::Topology(topology));
        }
    }

    /// Recent alerts (firing and resolved), oldest first, bounded by `history_limit`.
    pub fn alert_history(&self) -> Vec<Alert> {
        self.shared.history.lock().iter().cloned().collect()
    }

    /// Subscribe to scores and alert changes (for `GET /anomaly/events` SSE).
    pub fn subscribe(&self) -> broadcast::Receiver<AnomalyEvent> {
        self.shared.events.subscribe()
    }

    /// Counters and inference timings.
    pub fn stats(&self) -> DetectorStats {
        let mut s = self.shared.stats.lock().clone();
        s.dropped = self.shared.dropped.load(Ordering::Relaxed);
        s
    }

    /// Hook audit log (`GET /anomaly/actions`).
    pub fn actions(&self) -> Vec<ActionRecord> {
        self.shared.hooks.actions()
    }

    /// The hook runner (e.g. to trigger hooks manually from a CLI).
    pub fn hooks(&self) -> &HookRunner {
        &self.shared.hooks
    }

    /// Metadata of the model in use.
    pub fn model_meta(&self) -> &ModelMeta {
        &self.shared.meta
    }

    /// History since `since_ms` as Arrow IPC stream bytes (`?format=arrow`).
    pub fn export_arrow(&self, since_ms: i64) -> Result<Vec<u8>> {
        self.shared.store.lock().export_ipc_stream(since_ms)
    }

    /// History since `since_ms` as JSON records (`?format=json`).
    pub fn export_json(&self, since_ms: i64) -> Result<serde_json::Value> {
        self.shared.store.lock().export_json(since_ms)
    }

    /// Stop the thread after queued ticks are processed, flushing the store to disk. Blocking.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            t.join().map_err(|_| AnomalyError::DetectorStopped)?;
        }
        Ok(())
    }
}

impl Drop for DetectorHandle {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
