//! What the proxy feeds the detector: one [`Tick`] per interval, plus helpers to build one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One sample of every series at one instant.
///
/// Series names are dotted paths (`process.cpu`, `listener.web.qps`, `upstream.app.latency_p99`)
/// so hooks can match them with globs and new listeners/upstreams appear without schema changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    /// Unix time in milliseconds.
    pub timestamp_ms: i64,
    /// Series name -> value. Non-finite values are ignored by the detector.
    pub values: BTreeMap<String, f64>,
}

impl Tick {
    /// An empty tick at `timestamp_ms`.
    pub fn new(timestamp_ms: i64) -> Self {
        Tick { timestamp_ms, values: BTreeMap::new() }
    }

    /// Builder-style insert, convenient when assembling a tick from many counters.
    pub fn with(mut self, series: impl Into<String>, value: f64) -> Self {
        self.values.insert(series.into(), value);
        self
    }

    /// Insert or overwrite one series value.
    pub fn set(&mut self, series: impl Into<String>, value: f64) {
        self.values.insert(series.into(), value);
    }
}

/// Current wall-clock time in unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Canonical series names, so the proxy and hook globs agree on spelling.
pub mod names {
    /// Process CPU percent (100 = one core).
    pub const PROCESS_CPU: &str = "process.cpu";
    /// Host CPU percent across all cores.
    pub const HOST_CPU: &str = "host.cpu";
    /// Open client connections over all listeners.
    pub const ACTIVE_CONNECTIONS: &str = "proxy.active_connections";

    /// `listener.<name>.<metric>`, e.g. `listener.web.qps`.
    pub fn listener(name: &str, metric: &str) -> String {
        format!("listener.{name}.{metric}")
    }

    /// `upstream.<name>.<metric>`, e.g. `upstream.app.latency_p99`.
    pub fn upstream(name: &str, metric: &str) -> String {
        format!("upstream.{name}.{metric}")
    }
}

/// p50/p95/p99 of one tick's latencies, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Number of recorded durations.
    pub count: u64,
}

const SUB_BUCKETS: usize = 8; // per power of two: ~9 % bucket width, ~4.5 % worst-case error
const OCTAVES: usize = 28; // 1 µs .. ~268 s
const BUCKETS: usize = SUB_BUCKETS * OCTAVES + 1;

/// Lock-free log-bucketed latency histogram for one tick.
///
/// Request tasks call [`LatencyWindow::record`] concurrently (atomics, no lock on the hot path);
/// the sampler calls [`LatencyWindow::take`] once per tick to read and reset it. Quantiles are
/// approximate (bucket geometric midpoint, within ~5 %), which is plenty for anomaly detection and
/// keeps memory fixed regardless of request rate.
#[derive(Debug)]
pub struct LatencyWindow {
    buckets: Box<[AtomicU64]>,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket_of(micros: u64) -> usize {
    if micros <= 1 {
        return 0;
    }
    let idx = ((micros as f64).log2() * SUB_BUCKETS as f64).floor() as usize + 1;
    idx.min(BUCKETS - 1)
}

fn bucket_mid_ms(idx: usize) -> f64 {
    if idx == 0 {
        return 0.001;
    }
    let lo = ((idx - 1) as f64 / SUB_BUCKETS as f64).exp2();
    let hi = (idx as f64 / SUB_BUCKETS as f64).exp2();
    (lo * hi).sqrt() / 1000.0
}

impl LatencyWindow {
    /// An empty window.
    pub fn new() -> Self {
        LatencyWindow { buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect() }
    }

    /// Record one request duration.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// Read quantiles and reset to empty; `None` when nothing was recorded this tick.
    pub fn take(&self) -> Option<Quantiles> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.swap(0, Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let q = |p: f64| -> f64 {
            let rank = ((p * total as f64).ceil() as u64).clamp(1, total);
            let mut acc = 0;
            for (i, c) in counts.iter().enumerate() {
                acc += c;
                if acc >= rank {
                    return bucket_mid_ms(i);
                }
            }
            bucket_mid_ms(BUCKETS - 1)
        };
        Some(Quantiles { p50: q(0.50), p95: q(0.95), p99: q(0.99), count: total })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn quantiles_are_within_bucket_error() {
        let w = LatencyWindow::new();
        assert!(w.take().is_none());
        for ms in 1..=1000u64 {
            w.record(Duration::from_millis(ms));
        }
        let q = w.take().unwrap();
        assert_eq!(q.count, 1000);
        for (got, want) in [(q.p50, 500.0), (q.p95, 950.0), (q.p99, 990.0)] {
            assert!((got - want).abs() / want < 0.06, "got {got} want {want}");
        }
        assert!(w.take().is_none(), "take resets the window");
    }

    #[test]
    fn tick_builder_and_names() {
        let t = Tick::new(5).with(names::listener("web", "qps"), 10.0).with(names::PROCESS_CPU, 3.0);
        assert_eq!(t.values["listener.web.qps"], 10.0);
        assert_eq!(names::upstream("app", "error_ratio"), "upstream.app.error_ratio");
    }
}
