//! The last ten minutes of Portico's own traffic, one point a second, for the dashboard's charts: requests/s,
//! 5xx ratio and latency quantiles per listener and upstream, and requests/s, error ratio and mean latency per
//! endpoint (the series [`crate::observe::SeriesSampler`] makes for the anomaly detector, sampled on their own
//! so that the dashboard has them whether or not detection is on). `GET /stats` serves them.
//!
//! Kept in columns (one array of values per series beside one array of timestamps), so a page that opens
//! draws the last minutes at once and then asks only for what is newer.

use crate::metrics::Metrics;
use crate::observe::SeriesSampler;
use crate::upstream::Upstream;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How often a point is taken.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Points kept: ten minutes at [`PERIOD`].
pub const CAPACITY: usize = 600;

/// The ring of recent points. Sampled by the server every [`PERIOD`] on a blocking thread (reading the metric
/// registry is quick, but not free), read by the admin API.
#[derive(Debug)]
pub struct StatsHistory {
    ring: parking_lot::Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    sampler: SeriesSampler,
    /// When the previous sample was taken; `None` before the first, which only primes the sampler.
    last: Option<Instant>,
    capacity: usize,
    /// Unix milliseconds of each point.
    timestamps: VecDeque<i64>,
    /// Values by series, aligned with `timestamps`; `None` where the series had no value (an endpoint that
    /// answered nothing in that second has no latency, a listener added later has no past).
    series: BTreeMap<String, VecDeque<Option<f64>>>,
}

impl Default for StatsHistory {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl StatsHistory {
    /// A ring keeping at most `capacity` points.
    pub fn with_capacity(capacity: usize) -> Self {
        StatsHistory {
            ring: parking_lot::Mutex::new(Ring {
                sampler: SeriesSampler::new(),
                last: None,
                capacity: capacity.max(1),
                timestamps: VecDeque::new(),
                series: BTreeMap::new(),
            }),
        }
    }

    /// Takes one point from the registry and the endpoints. Blocking: call it off the async workers.
    pub fn sample(&self, metrics: &Metrics, upstreams: &crate::config::ByName<Arc<Upstream>>) {
        let mut ring = self.ring.lock();
        let now = Instant::now();
        let elapsed = ring.last.map(|last| now.duration_since(last));
        ring.last = Some(now);
        let values = ring.sampler.sample(metrics, upstreams, elapsed.unwrap_or(PERIOD));
        if elapsed.is_some() {
            ring.push(unix_ms(SystemTime::now()), values);
        }
    }

    /// The points after `since_ms` (unix ms; 0 for all) as JSON:
    /// `{"period_ms": 1000, "timestamps": [...], "series": {"listener.web.qps": [12.0, null, ...], ...}}`.
    pub fn since(&self, since_ms: i64) -> serde_json::Value {
        let ring = self.ring.lock();
        let skip = ring.timestamps.iter().take_while(|t| **t <= since_ms).count();
        let timestamps: Vec<i64> = ring.timestamps.iter().skip(skip).copied().collect();
        let series: serde_json::Map<String, serde_json::Value> = ring
            .series
            .iter()
            .filter(|(_, values)| values.iter().skip(skip).any(Option::is_some))
            .map(|(name, values)| {
                let values: Vec<serde_json::Value> = values
                    .iter()
                    .skip(skip)
                    .map(|v| v.map_or(serde_json::Value::Null, |v| rounded(v).into()))
                    .collect();
                (name.clone(), serde_json::Value::Array(values))
            })
            .collect();
        serde_json::json!({
            "period_ms": PERIOD.as_millis() as u64,
            "timestamps": timestamps,
            "series": series,
        })
    }
}

impl Ring {
    fn push(&mut self, timestamp_ms: i64, values: BTreeMap<String, f64>) {
        if self.timestamps.len() == self.capacity {
            self.timestamps.pop_front();
            for column in self.series.values_mut() {
                column.pop_front();
            }
            // A series gone for the whole window (a removed endpoint) goes too.
            self.series.retain(|_, column| column.iter().any(Option::is_some));
        }
        let before = self.timestamps.len();
        self.timestamps.push_back(timestamp_ms);
        for (name, column) in self.series.iter_mut() {
            column.push_back(values.get(name).copied().filter(|v| v.is_finite()));
        }
        for (name, value) in values {
            if !self.series.contains_key(&name) && value.is_finite() {
                let mut column: VecDeque<Option<f64>> = std::iter::repeat_n(None, before).collect();
                column.push_back(Some(value));
                self.series.insert(name, column);
            }
        }
    }
}

/// Three significant decimals are plenty for a chart, and keep the JSON short.
fn rounded(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn columns_stay_aligned_and_old_points_fall_off() {
        let history = StatsHistory::with_capacity(3);
        {
            let mut ring = history.ring.lock();
            ring.push(1000, tick(&[("listener.web.qps", 1.0)]));
            ring.push(2000, tick(&[("listener.web.qps", 2.0), ("endpoint.app.a.latency", 5.0)]));
            ring.push(3000, tick(&[("listener.web.qps", 3.0)]));
            ring.push(4000, tick(&[("listener.web.qps", 4.0)]));
        }
        let all = history.since(0);
        assert_eq!(all["timestamps"], serde_json::json!([2000, 3000, 4000]));
        assert_eq!(all["series"]["listener.web.qps"], serde_json::json!([2.0, 3.0, 4.0]));
        assert_eq!(all["series"]["endpoint.app.a.latency"], serde_json::json!([5.0, null, null]));

        let newer = history.since(3000);
        assert_eq!(newer["timestamps"], serde_json::json!([4000]));
        assert_eq!(newer["series"]["listener.web.qps"], serde_json::json!([4.0]));
        assert!(newer["series"].get("endpoint.app.a.latency").is_none(), "no value in the window: left out");

        history.ring.lock().push(5000, tick(&[("listener.web.qps", 5.0)]));
        history.ring.lock().push(6000, tick(&[("listener.web.qps", 6.0)]));
        assert!(!history.ring.lock().series.contains_key("endpoint.app.a.latency"), "a series gone for the window");
    }

    #[test]
    fn the_first_sample_only_primes() -> Result<(), prometheus::Error> {
        let metrics = Metrics::new()?;
        let history = StatsHistory::default();
        (0..100).for_each(|_| metrics.observe_request("web", "app", 200, None));
        history.sample(&metrics, &Default::default());
        assert_eq!(history.since(0)["timestamps"], serde_json::json!([]));
        metrics.observe_request("web", "app", 503, None);
        history.sample(&metrics, &Default::default());
        let all = history.since(0);
        assert_eq!(all["timestamps"].as_array().map(Vec::len), Some(1));
        assert_eq!(all["series"]["upstream.app.error_ratio"], serde_json::json!([1.0]));
        Ok(())
    }
}
