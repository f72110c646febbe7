//! Portico watching itself: every `[anomaly] interval` it samples its own counters (requests/s, 5xx ratio,
//! latency quantiles per listener and upstream, open connections, process and host CPU) into a tick for the
//! anomaly detector, exports the scores as metrics, and posts incidents (one Alertmanager group each, when its
//! cause is settled and when it resolves) to Alertmanager-style webhooks. A plugin rollout that rolls back is
//! raised here too, as an alert of its own (see [`rollout_alerts`]).
//! The detector (model inference) runs on its own thread; sampling runs on a blocking thread; nothing here
//! does real work on a tokio worker.

use crate::body::RequestBody;
use crate::observe::SeriesSampler;
use crate::server::Shared;
use portico_anomaly::{
    AnomalyConfig, AnomalyEvent, CpuSampler, Detector, DetectorHandle, DetectorOptions, IncidentTransition, Tick,
    Topology,
};
use prometheus::{Gauge, GaugeVec, IntGauge, Opts};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Why the detector could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The model or detector failed to start.
    #[error("anomaly detection: {0}")]
    Anomaly(#[from] portico_anomaly::AnomalyError),
    /// The starter thread died.
    #[error("anomaly detection: the start-up thread failed")]
    Starter,
}

/// Gauges the detector's results are exported as.
#[derive(Debug, Clone)]
pub struct WatchMetrics {
    /// `portico_anomaly_score{series}` in [0, 1].
    pub score: GaugeVec,
    /// `portico_anomaly_active`: alerts firing now.
    pub active: IntGauge,
    /// `portico_anomaly_inference_seconds`: scoring time of the last tick.
    pub inference: Gauge,
}

impl WatchMetrics {
    /// Registers the gauges.
    pub fn register(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let score = GaugeVec::new(
            Opts::new("portico_anomaly_score", "Anomaly score of each watched series, 0 (normal) to 1."),
            &["series"],
        )?;
        let active = IntGauge::new("portico_anomaly_active", "Anomaly alerts firing now.")?;
        let inference =
            Gauge::new("portico_anomaly_inference_seconds", "Time the detector spent scoring the last tick.")?;
        registry.register(Box::new(score.clone()))?;
        registry.register(Box::new(active.clone()))?;
        registry.register(Box::new(inference.clone()))?;
        Ok(WatchMetrics { score, active, inference })
    }
}

/// A running detector with its sampling and webhook tasks.
#[derive(Debug)]
pub struct Watch {
    /// The detector; admin routes read it.
    pub detector: Arc<DetectorHandle>,
    /// The configuration it was started with (a reload with the same one keeps it).
    pub config: AnomalyConfig,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Watch {
    /// Loads the model and starts the detector thread, the sampler and the webhook poster.
    pub async fn start(shared: &Arc<Shared>, config: AnomalyConfig, admin_url: String) -> Result<Watch, WatchError> {
        let runtime = tokio::runtime::Handle::current();
        let starting = config.clone();
        let topology = topology(&shared.snapshot.load().config);
        let detector = tokio::task::spawn_blocking(move || {
            let model = portico_anomaly::load_model(&starting)?;
            let options = DetectorOptions { runtime: Some(runtime), admin_url, topology, ..DetectorOptions::default() };
            Detector::spawn(&starting, model, options)
        })
        .await
        .map_err(|_| WatchError::Starter)??;
        let detector = Arc::new(detector);
        tracing::info!(interval = ?config.interval.0, model = ?detector.model_meta().version, "anomaly detection started");
        let mut tasks = vec![tokio::spawn(sample_loop(Arc::downgrade(shared), detector.clone(), config.interval.0))];
        if !config.webhooks.is_empty() {
            tasks.push(tokio::spawn(post_webhooks(shared.clone(), detector.clone(), config.webhooks.clone())));
        }
        let rollbacks = shared.plugins.rolled_back_events();
        tasks.push(tokio::spawn(rollout_alerts(
            Arc::downgrade(shared),
            detector.clone(),
            config.webhooks.clone(),
            rollbacks,
        )));
        Ok(Watch { detector, config, tasks })
    }

    /// Refreshes the anomaly gauges from the detector's latest state, just before a scrape.
    pub fn export_gauges(&self, metrics: &WatchMetrics) {
        for (series, score) in self.detector.scores() {
            metrics.score.with_label_values(&[&series]).set(score.score);
        }
        metrics.active.set(i64::try_from(self.detector.active_alerts().len()).unwrap_or(i64::MAX));
        metrics.inference.set(self.detector.stats().last_inference_us as f64 / 1e6);
    }

    /// Stops the tasks and the detector thread (joined off the async runtime).
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        let detector = self.detector;
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(handle) = Arc::try_unwrap(detector) {
                if let Err(e) = handle.shutdown() {
                    tracing::warn!(error = %e, "anomaly detector did not shut down cleanly");
                }
            }
        })
        .await;
    }
}

/// Which upstream each listener sends to, for grouping alerts into incidents. A listener whose filters may
/// route (plugins choose the upstream) is left out, which relates it to every upstream.
pub fn topology(config: &crate::config::Config) -> Topology {
    let mut t = Topology::default();
    for l in &config.listeners {
        if let (Some(upstream), true) = (&l.upstream, l.filters.is_empty()) {
            t.routes.entry(l.name.clone()).or_default().insert(upstream.clone());
        }
    }
    t
}

async fn sample_loop(shared: Weak<Shared>, detector: Arc<DetectorHandle>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = Arc::new(parking_lot::Mutex::new((SeriesSampler::new(), CpuSampler::new(), Instant::now())));
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        let (state, metrics) = (state.clone(), shared.clone());
        // Reading the registry and /proc is quick but blocking: keep it off the workers.
        let sampled = tokio::task::spawn_blocking(move || {
            let mut guard = state.lock();
            let (series, cpu, last) = &mut *guard;
            let elapsed = last.elapsed();
            *last = Instant::now();
            let mut tick = Tick::new(portico_anomaly::sample::now_ms());
            let upstreams = metrics.snapshot.load().upstreams.clone();
            for (name, value) in series.sample(&metrics.metrics, &upstreams, elapsed) {
                tick.set(name, value);
            }
            if let Ok(Some(usage)) = cpu.sample() {
                tick.set(portico_anomaly::sample::names::PROCESS_CPU, usage.process);
                tick.set(portico_anomaly::sample::names::HOST_CPU, usage.host);
            }
            tick
        })
        .await;
        let Ok(sample) = sampled else { continue };
        detector.submit(sample);
    }
}

/// Posts every settled or resolved incident, as one Alertmanager webhook group, to each configured receiver.
async fn post_webhooks(shared: Arc<Shared>, detector: Arc<DetectorHandle>, urls: Vec<String>) {
    let mut events = detector.subscribe();
    let instance = std::env::var("HOSTNAME").unwrap_or_else(|_| "portico".into());
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(skipped = n, "webhook poster fell behind; some alert changes were not posted");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let AnomalyEvent::Incident(change) = event else { continue };
        if !matches!(change.transition, IncidentTransition::Settled | IncidentTransition::Resolved) {
            continue;
        }
        let admin = format!("http://{}", shared.snapshot.load().config.admin.listen);
        let payload = portico_anomaly::incident_payload(&change.incident, "portico", &instance, &admin).to_string();
        post(&shared, &urls, payload).await;
    }
}

/// Posts one payload to each receiver.
async fn post(shared: &Shared, urls: &[String], payload: String) {
    for url in urls {
        let request = http::Request::post(url.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(RequestBody::Full(Some(bytes::Bytes::from(payload.clone()))));
        let Ok(request) = request else {
            tracing::warn!(%url, "webhook URL is not a valid request target");
            continue;
        };
        match tokio::time::timeout(Duration::from_secs(5), shared.forward_client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => {}
            Ok(Ok(response)) => {
                tracing::warn!(%url, status = %response.status(), "webhook receiver refused the alert")
            }
            Ok(Err(e)) => tracing::warn!(%url, error = %e, "webhook post failed"),
            Err(_) => tracing::warn!(%url, "webhook post timed out"),
        }
    }
}

/// Raises a critical alert on series `plugin.NAME.rollout` for every rollout that rolls back: the anomaly hooks
/// whose `on` matches it run (with the alert on stdin, as for the detector's own), and the webhooks receive it as
/// an Alertmanager alert named `rollout_rolled_back` carrying the plugin, the reason and both modules' sha256.
async fn rollout_alerts(
    shared: Weak<Shared>,
    detector: Arc<DetectorHandle>,
    urls: Vec<String>,
    mut rollbacks: tokio::sync::broadcast::Receiver<crate::plugin::rollout::RolledBack>,
) {
    let instance = std::env::var("HOSTNAME").unwrap_or_else(|_| "portico".into());
    loop {
        let event = match rollbacks.recv().await {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(skipped = n, "rollout alerts fell behind; some rollbacks raised no alert");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let Some(shared) = shared.upgrade() else { return };
        let at = event.at.duration_since(std::time::SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let series = format!("plugin.{}.rollout", event.plugin);
        let alert = portico_anomaly::Alert {
            id: format!("{series}@{at}"),
            series,
            severity: portico_anomaly::Severity::Critical,
            state: portico_anomaly::AlertState::Firing,
            score: 1.0,
            peak_score: 1.0,
            value: event.candidate_error_ratio,
            predicted: None,
            started_at: at,
            resolved_at: None,
        };
        detector.hooks().dispatch(&tokio::runtime::Handle::current(), &alert);
        if urls.is_empty() {
            continue;
        }
        let admin = format!("http://{}", shared.snapshot.load().config.admin.listen);
        let mut payload = portico_anomaly::webhook_payload(std::slice::from_ref(&alert), "portico", &instance, &admin);
        payload["groupLabels"]["alertname"] = "rollout_rolled_back".into();
        payload["commonLabels"]["alertname"] = "rollout_rolled_back".into();
        payload["alerts"][0]["labels"]["alertname"] = "rollout_rolled_back".into();
        payload["alerts"][0]["labels"]["plugin"] = event.plugin.clone().into();
        let annotations = &mut payload["alerts"][0]["annotations"];
        annotations["summary"] = format!("Rollout of plugin {} rolled back", event.plugin).into();
        annotations["description"] = event.reason.clone().into();
        annotations["candidate_sha256"] = event.candidate_sha256.clone().into();
        annotations["stable_sha256"] = event.stable_sha256.clone().into();
        payload["alerts"][0]["generatorURL"] = format!("{admin}/plugins/{}/rollout", event.plugin).into();
        post(&shared, &urls, payload.to_string()).await;
    }
}
