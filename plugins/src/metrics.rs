//! Prometheus metrics: the families every plugin reports into (callbacks, failures, restarts, callback time) and
//! the counters, gauges and histograms plugins define themselves (`proxy_define_metric`).

use std::collections::HashMap;

use parking_lot::Mutex;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::abi;

/// Prometheus families shared by all plugins (label `plugin` distinguishes them).
pub(crate) struct EngineMetrics {
    pub callbacks: IntCounterVec,
    pub failures: IntCounterVec,
    pub restarts: IntCounterVec,
    pub callback_seconds: HistogramVec,
    pub guest_counter: IntCounterVec,
    pub guest_gauge: IntGaugeVec,
    pub guest_histogram: HistogramVec,
    /// The series plugins defined, by plugin name, with how many loaded versions defined each: a plugin's cap
    /// counts over its versions, and a series goes from the registry with the last version that defined it.
    series: Mutex<HashMap<String, SeriesHeld>>,
}

/// One plugin's series, `(type, name)`, with how many loaded versions defined each.
type SeriesHeld = HashMap<(i32, String), usize>;

impl EngineMetrics {
    pub(crate) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let callbacks = IntCounterVec::new(
            Opts::new(
                "portico_plugin_callbacks_total",
                "proxy-wasm callbacks run per plugin and instance (one counter per instance, so that workers do \
                 not share one atomic: sum by plugin for the plugin's total)",
            ),
            &["plugin", "instance"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new("portico_plugin_failures_total", "plugin callback failures by kind (trap, timeout, ...)"),
            &["plugin", "kind"],
        )?;
        let restarts = IntCounterVec::new(
            Opts::new("portico_plugin_instance_restarts_total", "plugin instances recreated after a failure"),
            &["plugin"],
        )?;
        let callback_seconds = HistogramVec::new(
            HistogramOpts::new(
                "portico_plugin_callback_seconds",
                "wall time of plugin callbacks, timed for a random sample of 1 in 8 of them (the clock reads cost \
                 more than short callbacks); _count is about 1/8 of portico_plugin_callbacks_total, which counts \
                 every callback",
            )
            .buckets(vec![
                0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.0025, 0.005, 0.01, 0.05,
                0.1,
            ]),
            &["plugin"],
        )?;
        let guest_counter = IntCounterVec::new(
            Opts::new("portico_plugin_counter", "counters defined by plugins (proxy_define_metric)"),
            &["plugin", "name"],
        )?;
        let guest_gauge = IntGaugeVec::new(
            Opts::new("portico_plugin_gauge", "gauges defined by plugins (proxy_define_metric)"),
            &["plugin", "name"],
        )?;
        let guest_histogram = HistogramVec::new(
            HistogramOpts::new("portico_plugin_histogram", "histograms defined by plugins (proxy_define_metric)")
                .buckets(prometheus::exponential_buckets(1.0, 4.0, 12)?),
            &["plugin", "name"],
        )?;
        registry.register(Box::new(callbacks.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(restarts.clone()))?;
        registry.register(Box::new(callback_seconds.clone()))?;
        registry.register(Box::new(guest_counter.clone()))?;
        registry.register(Box::new(guest_gauge.clone()))?;
        registry.register(Box::new(guest_histogram.clone()))?;
        Ok(EngineMetrics {
            callbacks,
            failures,
            restarts,
            callback_seconds,
            guest_counter,
            guest_gauge,
            guest_histogram,
            series: Mutex::default(),
        })
    }

    /// A version defines series `(t, name)` of `plugin`; false when that would take the plugin past
    /// [`crate::limits::MAX_METRICS_PER_PLUGIN`] series over all its loaded versions.
    fn hold(&self, plugin: &str, t: i32, name: &str) -> bool {
        let mut series = self.series.lock();
        let mine = series.entry(plugin.to_string()).or_default();
        let key = (t, name.to_string());
        let full = mine.len() >= crate::limits::MAX_METRICS_PER_PLUGIN;
        match mine.get_mut(&key) {
            Some(n) => *n += 1,
            None if full => return false,
            None => {
                mine.insert(key, 1);
            }
        }
        true
    }

    /// A version that defined `(t, name)` of `plugin` went away; with the last one, the series leaves
    /// `/metrics` (before, every upload that defined new names added up to 1,000 series that stayed for good).
    fn release(&self, plugin: &str, t: i32, name: &str) {
        let mut series = self.series.lock();
        let Some(mine) = series.get_mut(plugin) else { return };
        let key = (t, name.to_string());
        let gone = match mine.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                mine.remove(&key);
                true
            }
            None => false,
        };
        if mine.is_empty() {
            series.remove(plugin);
        }
        if gone {
            let labels = [plugin, name];
            let _ = match t {
                abi::METRIC_COUNTER => self.guest_counter.remove_label_values(&labels),
                abi::METRIC_GAUGE => self.guest_gauge.remove_label_values(&labels),
                _ => self.guest_histogram.remove_label_values(&labels),
            };
        }
    }
}

/// One metric a plugin defined: a handle on its Prometheus series (cloning it is a reference count).
#[derive(Clone)]
pub(crate) enum GuestMetric {
    Counter(IntCounter),
    Gauge(IntGauge),
    Histogram(Histogram),
}

#[derive(Default)]
struct Defined {
    by_name: HashMap<(i32, String), u32>,
    list: Vec<GuestMetric>,
}

/// The metrics one plugin version defined, by the id the guest got back (1-based).
#[derive(Default)]
pub(crate) struct GuestMetrics(Mutex<Defined>);

impl GuestMetrics {
    /// The metric's id, or the ABI status to answer: `BAD_ARGUMENT` for an unknown type or a name over
    /// [`crate::limits::MAX_METRIC_NAME`], `INTERNAL_FAILURE` once the plugin has defined
    /// [`crate::limits::MAX_METRICS_PER_PLUGIN`] over its loaded versions (each is a series in `/metrics`
    /// until the last version that defined it goes).
    pub fn define(&self, families: &EngineMetrics, plugin: &str, t: i32, name: &str) -> Result<u32, i32> {
        use crate::limits::{MAX_METRICS_PER_PLUGIN, MAX_METRIC_NAME};
        let mut gm = self.0.lock();
        if let Some(id) = gm.by_name.get(&(t, name.to_string())) {
            return Ok(*id);
        }
        if name.len() > MAX_METRIC_NAME {
            crate::limits::refused(
                plugin,
                format_args!("proxy_define_metric refused: name of {} bytes, over {MAX_METRIC_NAME}", name.len()),
            );
            return Err(abi::BAD_ARGUMENT);
        }
        if !matches!(t, abi::METRIC_COUNTER | abi::METRIC_GAUGE | abi::METRIC_HISTOGRAM) {
            return Err(abi::BAD_ARGUMENT);
        }
        if gm.list.len() >= MAX_METRICS_PER_PLUGIN || !families.hold(plugin, t, name) {
            crate::limits::refused(
                plugin,
                format_args!(
                    "proxy_define_metric refused: the plugin already defined {MAX_METRICS_PER_PLUGIN} metrics \
                     (over its loaded versions)"
                ),
            );
            return Err(abi::INTERNAL_FAILURE);
        }
        let labels = [plugin, name];
        let m = families;
        let metric = match t {
            abi::METRIC_COUNTER => GuestMetric::Counter(m.guest_counter.with_label_values(&labels)),
            abi::METRIC_GAUGE => GuestMetric::Gauge(m.guest_gauge.with_label_values(&labels)),
            abi::METRIC_HISTOGRAM => GuestMetric::Histogram(m.guest_histogram.with_label_values(&labels)),
            _ => return Err(abi::BAD_ARGUMENT),
        };
        gm.list.push(metric);
        let id = u32::try_from(gm.list.len()).map_err(|_| abi::INTERNAL_FAILURE)?;
        gm.by_name.insert((t, name.to_string()), id);
        Ok(id)
    }

    /// The version that defined these is gone: see [`EngineMetrics::release`].
    pub fn release(&self, families: &EngineMetrics, plugin: &str) {
        for (t, name) in self.0.lock().by_name.keys() {
            families.release(plugin, *t, name);
        }
    }

    /// The metric the guest got `id` for, to keep per instance (updates then take no lock).
    pub fn handle(&self, id: u32) -> Option<GuestMetric> {
        self.0.lock().list.get((id as usize).wrapping_sub(1)).cloned()
    }
}

impl GuestMetric {
    /// `proxy_increment_metric`: counters only go up.
    pub fn increment(&self, delta: i64) -> i32 {
        match self {
            GuestMetric::Counter(c) => match u64::try_from(delta) {
                Ok(d) => {
                    c.inc_by(d);
                    abi::OK
                }
                Err(_) => abi::BAD_ARGUMENT,
            },
            GuestMetric::Gauge(g) => {
                g.add(delta);
                abi::OK
            }
            GuestMetric::Histogram(_) => abi::BAD_ARGUMENT,
        }
    }

    /// `proxy_record_metric`: sets a gauge, observes a histogram sample, moves a counter up to `value`.
    pub fn record(&self, value: u64) -> i32 {
        match self {
            GuestMetric::Counter(c) => {
                // Counters only move forward: recording a lower value is refused.
                match value.checked_sub(c.get()) {
                    Some(d) => {
                        c.inc_by(d);
                        abi::OK
                    }
                    None => abi::BAD_ARGUMENT,
                }
            }
            GuestMetric::Gauge(g) => {
                g.set(i64::try_from(value).unwrap_or(i64::MAX));
                abi::OK
            }
            GuestMetric::Histogram(h) => {
                h.observe(value as f64);
                abi::OK
            }
        }
    }

    /// `proxy_get_metric`.
    pub fn get(&self) -> Result<u64, i32> {
        match self {
            GuestMetric::Counter(c) => Ok(c.get()),
            GuestMetric::Gauge(g) => Ok(g.get() as u64),
            GuestMetric::Histogram(_) => Err(abi::BAD_ARGUMENT),
        }
    }
}
