//! Prometheus metrics, all prefixed `portico_`. Registered once; endpoint gauges are refreshed when `/metrics`
//! is scraped.
//!
//! The two every request writes, `requests_total` and `request_duration_seconds`, are kept per thread and
//! added up when scraped ([`requests`]); the others change on rarer events (a connection, a retry, a reload)
//! and are prometheus' own vectors.

pub mod requests;

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use requests::RequestMetrics;
use std::time::Duration;

/// Every metric Portico's data path exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Registry `/metrics` encodes; plugins and the detector register theirs here too.
    pub registry: Registry,
    /// `portico_requests_total{listener,upstream,class}`: answered requests by status class (2xx…5xx), and
    /// `portico_request_duration_seconds{listener,upstream}`: time to response head.
    pub requests: RequestMetrics,
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
    /// `portico_connections_closed_for_cancels_total{listener}`: client connections asked to close because
    /// they cancelled too many requests (HTTP/2 rapid reset; see `listen::cancels`).
    pub cancel_closes: IntCounterVec,
    /// `portico_http2_floods_total{listener}`: client connections closed for a control-frame flood (see
    /// `listen::h2_flood`).
    pub h2_floods: IntCounterVec,
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
        let requests = RequestMetrics::new()?;
        registry.register(Box::new(requests.clone()))?;
        Ok(Metrics {
            requests,
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
            cancel_closes: counter(
                "portico_connections_closed_for_cancels_total",
                "Client connections closed gracefully because they cancelled too many of their requests.",
                &["listener"],
            )?,
            h2_floods: counter(
                "portico_http2_floods_total",
                "Client HTTP/2 connections closed for sending far more control frames than requests.",
                &["listener"],
            )?,
            registry,
        })
    }

    /// Counts an answered request in `portico_requests_total` and, unless `elapsed` is `None` (a request
    /// refused before it was routed), `portico_request_duration_seconds`.
    pub fn observe_request(&self, listener: &str, upstream: &str, status: u16, elapsed: Option<Duration>) {
        self.requests.observe(listener, upstream, status, elapsed);
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

#[cfg(test)]
mod tests {
    use super::Metrics;
    use std::time::Duration;

    /// A thread's shards count into the registry they came from, never into another one the same thread also
    /// served, and a request refused before routing adds no duration sample.
    #[test]
    fn cached_shards_count_into_their_own_registry() {
        let (a, b) = (Metrics::new().expect("metrics a"), Metrics::new().expect("metrics b"));
        for _ in 0..3 {
            a.observe_request("web", "app", 200, Some(Duration::from_millis(2)));
        }
        a.observe_request("web", "app", 503, Some(Duration::from_millis(2)));
        a.observe_request("web", "", 404, None);
        b.observe_request("web", "app", 200, Some(Duration::from_millis(2)));
        assert_eq!(a.requests.count("web", "app", "2xx"), 3);
        assert_eq!(a.requests.count("web", "app", "5xx"), 1);
        assert_eq!(a.requests.count("web", "", "4xx"), 1);
        assert_eq!(b.requests.count("web", "app", "2xx"), 1);
        assert_eq!(a.requests.timed_count("web", "app"), 4);
        assert_eq!(a.requests.timed_count("web", ""), 0);
        assert_eq!(b.requests.timed_count("web", "app"), 1);
        let text = String::from_utf8_lossy(&a.encode()).into_owned();
        assert!(text.contains("portico_requests_total{class=\"2xx\",listener=\"web\",upstream=\"app\"} 3"), "{text}");
        assert!(
            text.contains("portico_request_duration_seconds_bucket{listener=\"web\",upstream=\"app\",le=\"+Inf\"} 4"),
            "{text}"
        );
        assert!(!text.contains("portico_request_duration_seconds_count{listener=\"web\",upstream=\"\"}"), "{text}");
    }
}
