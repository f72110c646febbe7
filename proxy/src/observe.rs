//! Turns Portico's own counters into per-tick series for the anomaly detector: requests/s, 5xx ratio and
//! latency quantiles per listener and per upstream, the same per endpoint (mean latency), and open connections. It reads the in-process metric registry and the endpoints' own counters (never
//! an HTTP scrape of itself) and differences them against the previous tick, so each value describes only the
//! last interval. The endpoint series are what lets an incident name the one endpoint at fault.

use crate::metrics::Metrics;
use crate::upstream::Upstream;
use prometheus::proto::MetricFamily;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Series values for one tick, by dotted name (`listener.web.qps`, `upstream.app.latency_p99`, …).
pub type TickValues = BTreeMap<String, f64>;

/// Cumulative state of one listener or upstream at the previous tick.
#[derive(Debug, Default, Clone)]
struct Cumulative {
    requests: u64,
    errors: u64,
    /// Histogram buckets as (upper bound, cumulative count).
    buckets: Vec<(f64, u64)>,
}

/// Differences successive reads of the registry into per-interval series.
#[derive(Debug, Default)]
pub struct SeriesSampler {
    previous: HashMap<String, Cumulative>,
    /// Per endpoint (`<upstream>.<address>`): attempts, failures, answers, summed latency µs.
    endpoints: HashMap<String, (u64, u64, u64, u64)>,
}

impl SeriesSampler {
    /// A sampler with no history: its first tick reports rates against zero, so call it once to prime.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the registry and the endpoints and returns the series for the `elapsed` interval since the last call.
    pub fn sample(
        &mut self,
        metrics: &Metrics,
        upstreams: &crate::config::ByName<Arc<Upstream>>,
        elapsed: Duration,
    ) -> TickValues {
        let families = metrics.registry.gather();
        let mut current: HashMap<String, Cumulative> = HashMap::new();
        let mut out = TickValues::new();
        for family in &families {
            match family.name() {
                "portico_requests_total" => collect_requests(family, &mut current),
                "portico_request_duration_seconds" => collect_latency(family, &mut current),
                "portico_active_connections" => {
                    let total: f64 = family.get_metric().iter().map(|m| m.get_gauge().get_value()).sum();
                    out.insert("proxy.active_connections".into(), total);
                }
                _ => {}
            }
        }
        let seconds = elapsed.as_secs_f64().max(1e-3);
        for (scope, now) in &current {
            let before = self.previous.get(scope).cloned().unwrap_or_default();
            let requests = now.requests.saturating_sub(before.requests);
            let errors = now.errors.saturating_sub(before.errors);
            out.insert(format!("{scope}.qps"), requests as f64 / seconds);
            out.insert(
                format!("{scope}.error_ratio"),
                if requests == 0 { 0.0 } else { errors as f64 / requests as f64 },
            );
            let delta = bucket_delta(&now.buckets, &before.buckets);
            for (q, name) in [(0.5, "latency_p50"), (0.95, "latency_p95"), (0.99, "latency_p99")] {
                out.insert(format!("{scope}.{name}"), quantile(&delta, q).map_or(0.0, |s| s * 1000.0));
            }
        }
        self.previous = current;
        self.sample_endpoints(upstreams, seconds, &mut out);
        out
    }

    fn sample_endpoints(
        &mut self,
        upstreams: &crate::config::ByName<Arc<Upstream>>,
        seconds: f64,
        out: &mut TickValues,
    ) {
        let mut seen = HashMap::with_capacity(self.endpoints.len());
        for (name, upstream) in upstreams {
            for endpoint in &upstream.endpoints {
                let key = format!("{name}.{}", endpoint.name);
                let now = endpoint.traffic();
                let (a0, f0, n0, l0) = self.endpoints.get(&key).copied().unwrap_or_default();
                let attempts = now.0.saturating_sub(a0);
                let failures = now.1.saturating_sub(f0);
                let answers = now.2.saturating_sub(n0);
                let latency_us = now.3.saturating_sub(l0);
                let prefix = format!("endpoint.{key}");
                out.insert(format!("{prefix}.qps"), attempts as f64 / seconds);
                out.insert(
                    format!("{prefix}.error_ratio"),
                    if attempts == 0 { 0.0 } else { failures as f64 / attempts as f64 },
                );
                // No answer in the interval: no latency value, rather than a misleading zero.
                if answers > 0 {
                    out.insert(format!("{prefix}.latency"), latency_us as f64 / answers as f64 / 1000.0);
                }
                seen.insert(key, now);
            }
        }
        self.endpoints = seen;
    }
}

fn label<'a>(metric: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    metric.get_label().iter().find(|l| l.name() == name).map_or("", |l| l.value())
}

/// Each request counts once for its listener and once for its upstream (forward-proxy requests have none).
fn scopes(metric: &prometheus::proto::Metric) -> impl Iterator<Item = String> {
    let listener = label(metric, "listener");
    let upstream = label(metric, "upstream");
    let first = (!listener.is_empty()).then(|| format!("listener.{listener}"));
    let second = (!upstream.is_empty()).then(|| format!("upstream.{upstream}"));
    first.into_iter().chain(second)
}

fn collect_requests(family: &MetricFamily, current: &mut HashMap<String, Cumulative>) {
    for metric in family.get_metric() {
        let count = metric.get_counter().get_value() as u64;
        let is_error = label(metric, "class") == "5xx";
        for scope in scopes(metric) {
            let entry = current.entry(scope).or_default();
            entry.requests += count;
            if is_error {
                entry.errors += count;
            }
        }
    }
}

fn collect_latency(family: &MetricFamily, current: &mut HashMap<String, Cumulative>) {
    for metric in family.get_metric() {
        let histogram = metric.get_histogram();
        let buckets: Vec<(f64, u64)> =
            histogram.get_bucket().iter().map(|b| (b.upper_bound(), b.cumulative_count())).collect();
        let total = histogram.get_sample_count();
        for scope in scopes(metric) {
            let entry = current.entry(scope).or_default();
            merge_buckets(&mut entry.buckets, &buckets, total);
        }
    }
}

/// Adds one histogram's cumulative buckets into another with the same bounds; the +Inf bucket is the total.
fn merge_buckets(into: &mut Vec<(f64, u64)>, from: &[(f64, u64)], total: u64) {
    if into.is_empty() {
        into.extend_from_slice(from);
        into.push((f64::INFINITY, total));
        return;
    }
    for (slot, (_, count)) in into.iter_mut().zip(from.iter().chain(std::iter::once(&(f64::INFINITY, total)))) {
        slot.1 += count;
    }
}

fn bucket_delta(now: &[(f64, u64)], before: &[(f64, u64)]) -> Vec<(f64, u64)> {
    now.iter()
        .enumerate()
        .map(|(i, (bound, count))| (*bound, count.saturating_sub(before.get(i).map_or(0, |b| b.1))))
        .collect()
}

/// Prometheus's `histogram_quantile`: linear interpolation inside the bucket holding the rank. A rank in the
/// +Inf bucket reports the highest finite bound. None when the interval saw no request.
fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower_bound = 0.0;
    let mut lower_count = 0u64;
    for (bound, count) in buckets {
        if (*count as f64) >= rank {
            if bound.is_infinite() {
                return Some(lower_bound);
            }
            let in_bucket = (count - lower_count) as f64;
            let fraction = if in_bucket == 0.0 { 1.0 } else { (rank - lower_count as f64) / in_bucket };
            return Some(lower_bound + (bound - lower_bound) * fraction);
        }
        lower_bound = *bound;
        lower_count = *count;
    }
    Some(lower_bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_ratios_and_quantiles_cover_only_the_last_interval() -> Result<(), prometheus::Error> {
        let metrics = Metrics::new()?;
        let mut sampler = SeriesSampler::new();
        let answer = |status: u16, ms: Option<u64>, times: usize| {
            (0..times).for_each(|_| metrics.observe_request("web", "app", status, ms.map(Duration::from_millis)))
        };
        answer(200, None, 100);
        sampler.sample(&metrics, &Default::default(), Duration::from_secs(1));

        answer(200, Some(2), 88);
        answer(200, Some(200), 2);
        answer(503, Some(2), 10);
        let tick = sampler.sample(&metrics, &Default::default(), Duration::from_secs(2));
        assert_eq!(tick["listener.web.qps"], 50.0);
        assert_eq!(tick["upstream.app.qps"], 50.0);
        assert!((tick["upstream.app.error_ratio"] - 0.1).abs() < 1e-9);
        let p50 = tick["listener.web.latency_p50"];
        assert!((1.0..=2.5).contains(&p50), "p50 {p50} ms lies in the 1–2.5 ms bucket");
        let p99 = tick["listener.web.latency_p99"];
        assert!((100.0..=250.0).contains(&p99), "p99 {p99} ms lies in the 100–250 ms bucket");

        let idle = sampler.sample(&metrics, &Default::default(), Duration::from_secs(1));
        assert_eq!(idle["listener.web.qps"], 0.0);
        assert_eq!(idle["listener.web.latency_p99"], 0.0);
        assert_eq!(idle["listener.web.error_ratio"], 0.0);
        Ok(())
    }

    #[test]
    fn quantile_interpolates_like_prometheus() {
        let buckets = [(1.0, 50), (2.0, 100), (f64::INFINITY, 100)];
        assert_eq!(quantile(&buckets, 0.5), Some(1.0));
        assert_eq!(quantile(&buckets, 0.75), Some(1.5));
        assert_eq!(quantile(&[(1.0, 0), (f64::INFINITY, 0)], 0.5), None);
        assert_eq!(quantile(&[(1.0, 0), (f64::INFINITY, 4)], 0.5), Some(1.0));
    }
}
