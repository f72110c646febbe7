//! Rollout metrics: per-version requests, failures and latency of a plugin under a rollout, and where each
//! rollout stands. The version-labelled series count only while a rollout splits the traffic (the data path
//! of a plugin without one counts nothing extra).

use prometheus::{GaugeVec, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

/// The rollout metric families, registered once with the plugin engine's.
#[derive(Debug, Clone)]
pub struct RolloutMetrics {
    requests: IntCounterVec,
    failures: IntCounterVec,
    latency: HistogramVec,
    percent: GaugeVec,
    state: IntGaugeVec,
}

/// The states `portico_plugin_rollout_state` has a series for.
pub const STATES: [&str; 4] = ["running", "promoted", "rolled_back", "aborted"];

/// One version's pre-resolved handles.
#[derive(Debug, Clone)]
pub struct VersionCounters {
    /// Requests answered through this version.
    pub requests: IntCounter,
    /// Of which answered 5xx.
    pub failures: IntCounter,
    /// Time to response head.
    pub latency: prometheus::Histogram,
}

impl RolloutMetrics {
    /// Creates and registers the families.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let labels = &["plugin", "version"];
        let requests = IntCounterVec::new(
            Opts::new(
                "portico_plugin_version_requests_total",
                "Requests through each version of a plugin under a rollout (version = stable | candidate).",
            ),
            labels,
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "portico_plugin_version_failures_total",
                "Requests through each version of a plugin under a rollout answered 5xx (local errors included).",
            ),
            labels,
        )?;
        let latency = HistogramVec::new(
            prometheus::HistogramOpts::new(
                "portico_plugin_version_request_seconds",
                "Time to response head of requests through each version of a plugin under a rollout.",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            labels,
        )?;
        let percent = GaugeVec::new(
            Opts::new("portico_plugin_rollout_percent", "Share of requests sent to a rollout's candidate, percent."),
            &["plugin"],
        )?;
        let state = IntGaugeVec::new(
            Opts::new(
                "portico_plugin_rollout_state",
                "1 for the state a plugin's latest rollout is in (running, promoted, rolled_back, aborted).",
            ),
            &["plugin", "state"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(percent.clone()))?;
        registry.register(Box::new(state.clone()))?;
        Ok(RolloutMetrics { requests, failures, latency, percent, state })
    }

    /// The handles of one version of `plugin`.
    pub fn version(&self, plugin: &str, version: &str) -> VersionCounters {
        VersionCounters {
            requests: self.requests.with_label_values(&[plugin, version]),
            failures: self.failures.with_label_values(&[plugin, version]),
            latency: self.latency.with_label_values(&[plugin, version]),
        }
    }

    /// Publishes a rollout's share and state.
    pub fn publish(&self, plugin: &str, percent: f64, state: &str) {
        self.percent.with_label_values(&[plugin]).set(percent);
        for s in STATES {
            self.state.with_label_values(&[plugin, s]).set(i64::from(s == state));
        }
    }
}
