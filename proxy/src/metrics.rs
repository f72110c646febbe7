//! Prometheus metrics, all prefixed `portico_`. Registered once; request code increments pre-resolved
//! handles, and endpoint gauges are refreshed when `/metrics` is scraped.
//!
//! Each data-path worker looks the per-request handles (`requests_total`, `request_duration_seconds` of a
//! listener and upstream) up once and keeps them ([`Metrics::observe_request`]): a lookup by label values
//! hashes them, takes the vector's shared lock and clones an `Arc`, which put three cache lines that both
//! workers write on every request.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    /// Tells this registry's handles from another's in a worker's cache (tests run several in one process).
    id: u64,
}

/// One listener and upstream's request handles: a counter per status class and the duration histogram.
#[derive(Debug)]
struct RequestHandles {
    metrics: u64,
    listener: String,
    upstream: String,
    classes: [IntCounter; 5],
    duration: Histogram,
}

/// The most (listener, upstream) pairs a worker keeps handles for; past it the cache starts over.
const CACHED_PAIRS: usize = 64;

thread_local! {
    static REQUEST_HANDLES: RefCell<Vec<RequestHandles>> = const { RefCell::new(Vec::new()) };
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
            id: {
                static NEXT: AtomicU64 = AtomicU64::new(1);
                NEXT.fetch_add(1, Ordering::Relaxed)
            },
        })
    }

    /// Counts an answered request in `portico_requests_total` and, unless `elapsed` is `None` (a request
    /// refused before it was routed), `portico_request_duration_seconds`, through this worker's handles.
    pub fn observe_request(&self, listener: &str, upstream: &str, status: u16, elapsed: Option<Duration>) {
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        REQUEST_HANDLES.with(|cache| {
            let mut cache = cache.borrow_mut();
            let found =
                cache.iter().position(|h| h.metrics == self.id && h.listener == listener && h.upstream == upstream);
            let index = match found {
                Some(index) => index,
                None => {
                    if cache.len() >= CACHED_PAIRS {
                        cache.clear();
                    }
                    cache.push(self.request_handles(listener, upstream));
                    cache.len() - 1
                }
            };
            let handles = &cache[index];
            handles.classes[class].inc();
            if let Some(elapsed) = elapsed {
                handles.duration.observe(elapsed.as_secs_f64());
            }
        });
    }

    fn request_handles(&self, listener: &str, upstream: &str) -> RequestHandles {
        let class = |c: &str| self.requests.with_label_values(&[listener, upstream, c]);
        RequestHandles {
            metrics: self.id,
            listener: listener.to_string(),
            upstream: upstream.to_string(),
            classes: [class("1xx"), class("2xx"), class("3xx"), class("4xx"), class("5xx")],
            duration: self.request_duration.with_label_values(&[listener, upstream]),
        }
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

    /// A worker's cached handles count into the registry they came from, never into another one the same
    /// thread also served, and a request refused before routing adds no duration sample.
    #[test]
    fn cached_handles_count_into_their_own_registry() {
        let (a, b) = (Metrics::new().expect("metrics a"), Metrics::new().expect("metrics b"));
        for _ in 0..3 {
            a.observe_request("web", "app", 200, Some(Duration::from_millis(2)));
        }
        a.observe_request("web", "app", 503, Some(Duration::from_millis(2)));
        a.observe_request("web", "", 404, None);
        b.observe_request("web", "app", 200, Some(Duration::from_millis(2)));
        let count = |m: &Metrics, labels: &[&str]| m.requests.with_label_values(labels).get();
        assert_eq!(count(&a, &["web", "app", "2xx"]), 3);
        assert_eq!(count(&a, &["web", "app", "5xx"]), 1);
        assert_eq!(count(&a, &["web", "", "4xx"]), 1);
        assert_eq!(count(&b, &["web", "app", "2xx"]), 1);
        assert_eq!(a.request_duration.with_label_values(&["web", "app"]).get_sample_count(), 4);
        assert_eq!(a.request_duration.with_label_values(&["web", ""]).get_sample_count(), 0);
        assert_eq!(b.request_duration.with_label_values(&["web", "app"]).get_sample_count(), 1);
    }
}
