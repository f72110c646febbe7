//! Prometheus metrics, all prefixed `portico_`. Registered once; request code increments pre-resolved
//! handles, and endpoint gauges are refreshed when `/metrics` is scraped.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// Every metric Portico's data path exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Registry `/metrics` encodes; plugins and the detector register theirs here too.
    pub registry: Registry,
    /// `portico_requests_total{listener,upstream,class}`: answered requests by status class (2xx…5xx).
    pub requests: IntCounterVec,
    /// `portico_request_duration_seconds{listener,upstream}`: time to response head.
    pub request_duration: HistogramVec,
    /// `portico_upstream_connect_errors_total{upstream}`.
    pub connect_errors: IntCounterVec,
    /// `portico_upstream_retries_total{upstream}`.
    pub retries: IntCounterVec,
    /// `portico_upstream_ejections_total{upstream}`.
    pub ejections: IntCounterVec,
    /// `portico_active_connections{listener}`.
    pub active_connections: IntGaugeVec,
    /// `portico_connections_total{listener}`.
    pub connections: IntCounterVec,
    /// `portico_upstream_endpoint_available{upstream,endpoint}`: 1 when the endpoint takes traffic.
    pub endpoint_available: IntGaugeVec,
    /// `portico_upstream_endpoint_active_requests{upstream,endpoint}`.
    pub endpoint_active: IntGaugeVec,
    /// `portico_upstream_endpoint_idle_connections{upstream,endpoint}`: pooled HTTP/1 connections, all workers.
    pub endpoint_idle: IntGaugeVec,
    /// `portico_upstream_pooled_connection_replays_total{upstream}`: idempotent requests sent again on a new
    /// connection because the upstream closed their pooled one (its keep-alive timeout is shorter than ours).
    pub pool_replays: IntCounterVec,
    /// `portico_config_reloads_total{result}`.
    pub reloads: IntCounterVec,
    /// `portico_tunnels_total{listener}`: CONNECT tunnels and protocol upgrades established.
    pub tunnels: IntCounterVec,
}

impl Metrics {
    /// Creates and registers all metrics in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let request_duration = HistogramVec::new(
            HistogramOpts::new("portico_request_duration_seconds", "Time from request to response head.")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["listener", "upstream"],
        )?;
        registry.register(Box::new(request_duration.clone()))?;
        Ok(Metrics {
            requests: counter(
                "portico_requests_total",
                "Requests answered, by status class.",
                &["listener", "upstream", "class"],
            )?,
            request_duration,
            connect_errors: counter(
                "portico_upstream_connect_errors_total",
                "Failed upstream connection attempts.",
                &["upstream"],
            )?,
            retries: counter("portico_upstream_retries_total", "Retried upstream attempts.", &["upstream"])?,
            ejections: counter(
                "portico_upstream_ejections_total",
                "Endpoints ejected by outlier detection.",
                &["upstream"],
            )?,
            active_connections: gauge("portico_active_connections", "Open client connections.", &["listener"])?,
            connections: counter("portico_connections_total", "Accepted client connections.", &["listener"])?,
            endpoint_available: gauge(
                "portico_upstream_endpoint_available",
                "1 when the endpoint takes traffic (healthy, not ejected, not drained).",
                &["upstream", "endpoint"],
            )?,
            endpoint_active: gauge(
                "portico_upstream_endpoint_active_requests",
                "Requests in flight to the endpoint.",
                &["upstream", "endpoint"],
            )?,
            endpoint_idle: gauge(
                "portico_upstream_endpoint_idle_connections",
                "Idle pooled HTTP/1 connections to the endpoint, over all workers.",
                &["upstream", "endpoint"],
            )?,
            pool_replays: counter(
                "portico_upstream_pooled_connection_replays_total",
                "Idempotent requests sent again on a new connection after the upstream closed their pooled one.",
                &["upstream"],
            )?,
            reloads: counter("portico_config_reloads_total", "Configuration reloads by result.", &["result"])?,
            tunnels: counter("portico_tunnels_total", "CONNECT tunnels and upgrades established.", &["listener"])?,
            registry,
        })
    }

    /// The text exposition format, as `promtool check metrics` expects it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}

/// The status class label for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
