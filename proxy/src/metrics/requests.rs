//! `portico_requests_total{listener,upstream,class}` and `portico_request_duration_seconds{listener,upstream}`,
//! counted per thread and added up when scraped.
//!
//! Every request adds to both. prometheus' own vectors keep one set of atomics per series, which both data-path
//! workers then write on every request (a counter, and a histogram's count, bucket and sum): each write to a
//! line the other core wrote last waits for it to come across. Here each thread that counts a series gets a
//! shard of it of its own — written by that thread alone, with plain loads and stores — and a scrape adds the
//! shards up. Counts only ever grow, so the sum is exact; a scrape that lands mid-request may see its bucket
//! before its sum moves, as with any lock-free histogram.

use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Counter, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::Duration;

/// The duration histogram's upper bounds, in seconds.
const BOUNDS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The same bounds in nanoseconds, so that a sample is placed by integer comparisons.
const BOUNDS_NS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Status class labels, by index.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The most (listener, upstream) pairs a thread keeps shards at hand for; past it the list starts over (the
/// shards themselves stay in their series and are found again).
const CACHED_PAIRS: usize = 64;

/// One thread's counts of one series. Aligned so that no other thread's shard shares its lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    classes: [AtomicU64; 5],
    /// Samples per bucket, not cumulative; the last one is past the largest bound.
    buckets: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Shard {
    /// Adds to a count only this shard's thread writes: a load and a store, no locked instruction.
    fn add(cell: &AtomicU64, n: u64) {
        cell.store(cell.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }
}

/// One (listener, upstream) pair: its shards, one per thread that counted it.
#[derive(Debug)]
struct Series {
    listener: String,
    upstream: String,
    /// Whether any request of it was timed; a pair only ever refused before routing exports no histogram.
    timed: AtomicBool,
    shards: Mutex<Vec<(ThreadId, Arc<Shard>)>>,
}

impl Series {
    /// The calling thread's shard, made on its first request.
    fn shard(&self) -> Arc<Shard> {
        let me = std::thread::current().id();
        let mut shards = self.shards.lock();
        if let Some((_, shard)) = shards.iter().find(|(thread, _)| *thread == me) {
            return shard.clone();
        }
        let shard = Arc::new(Shard::default());
        shards.push((me, shard.clone()));
        shard
    }

    /// (count per class, samples per bucket, summed seconds) over all shards.
    fn totals(&self) -> ([u64; 5], [u64; BOUNDS_NS.len() + 1], u64) {
        let mut classes = [0u64; 5];
        let mut buckets = [0u64; BOUNDS_NS.len() + 1];
        let mut sum_ns = 0u64;
        let load = |cell: &AtomicU64| cell.load(Ordering::Relaxed);
        for (_, shard) in self.shards.lock().iter() {
            for (total, cell) in classes.iter_mut().zip(&shard.classes) {
                *total = total.wrapping_add(load(cell));
            }
            for (total, cell) in buckets.iter_mut().zip(&shard.buckets) {
                *total = total.wrapping_add(load(cell));
            }
            sum_ns = sum_ns.wrapping_add(load(&shard.sum_ns));
        }
        (classes, buckets, sum_ns)
    }
}

/// A thread's shard of one series, at hand.
struct Cached {
    owner: u64,
    series: Arc<Series>,
    shard: Arc<Shard>,
}

thread_local! {
    static CACHED: RefCell<Vec<Cached>> = const { RefCell::new(Vec::new()) };
}

/// Both request metrics of one registry. Clones share the series.
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Tells this registry's shards from another's in a thread's cache (tests run several in one process).
    id: u64,
    series: Mutex<HashMap<(String, String), Arc<Series>>>,
    descs: [Desc; 2],
}

impl RequestMetrics {
    /// Both metrics, not yet registered.
    pub fn new() -> Result<Self, prometheus::Error> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let desc = |name: &str, help: &str, labels: &[&str]| {
            Desc::new(name.into(), help.into(), labels.iter().map(|l| l.to_string()).collect(), HashMap::new())
        };
        Ok(RequestMetrics {
            inner: Arc::new(Inner {
                id: NEXT.fetch_add(1, Ordering::Relaxed),
                series: Mutex::new(HashMap::new()),
                descs: [
                    desc(
                        "portico_requests_total",
                        "Requests answered, by status class.",
                        &["listener", "upstream", "class"],
                    )?,
                    desc(
                        "portico_request_duration_seconds",
                        "Time from request to response head.",
                        &["listener", "upstream"],
                    )?,
                ],
            }),
        })
    }

    /// Counts an answered request by its status class and, unless `elapsed` is `None` (a request refused
    /// before it was routed), its time to response head.
    pub fn observe(&self, listener: &str, upstream: &str, status: u16, elapsed: Option<Duration>) {
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            let owner = self.inner.id;
            let found = cached
                .iter()
                .position(|c| c.owner == owner && c.series.listener == listener && c.series.upstream == upstream);
            let index = match found {
                Some(index) => index,
                None => {
                    if cached.len() >= CACHED_PAIRS {
                        cached.clear();
                    }
                    let series = self.series(listener, upstream);
                    let shard = series.shard();
                    cached.push(Cached { owner, series, shard });
                    cached.len() - 1
                }
            };
            let Cached { series, shard, .. } = &cached[index];
            Shard::add(&shard.classes[class], 1);
            if let Some(elapsed) = elapsed {
                let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
                Shard::add(&shard.sum_ns, ns);
                Shard::add(&shard.buckets[BOUNDS_NS.partition_point(|bound| *bound < ns)], 1);
                if !series.timed.load(Ordering::Relaxed) {
                    series.timed.store(true, Ordering::Relaxed);
                }
            }
        });
    }

    fn series(&self, listener: &str, upstream: &str) -> Arc<Series> {
        let mut series = self.inner.series.lock();
        series
            .entry((listener.to_string(), upstream.to_string()))
            .or_insert_with(|| {
                Arc::new(Series {
                    listener: listener.to_string(),
                    upstream: upstream.to_string(),
                    timed: AtomicBool::new(false),
                    shards: Mutex::new(Vec::new()),
                })
            })
            .clone()
    }

    /// Requests of a pair answered with a status of `class` (`"2xx"`…), over all threads.
    pub fn count(&self, listener: &str, upstream: &str, class: &str) -> u64 {
        let Some(index) = CLASSES.iter().position(|c| *c == class) else { return 0 };
        self.existing(listener, upstream).map_or(0, |s| s.totals().0[index])
    }

    /// Timed requests of a pair, over all threads.
    pub fn timed_count(&self, listener: &str, upstream: &str) -> u64 {
        self.existing(listener, upstream).map_or(0, |s| s.totals().1.iter().sum())
    }

    fn existing(&self, listener: &str, upstream: &str) -> Option<Arc<Series>> {
        self.inner.series.lock().get(&(listener.to_string(), upstream.to_string())).cloned()
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_string());
    pair.set_value(value.to_string());
    pair
}

fn family(desc: &Desc, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(desc.fq_name.clone());
    family.set_help(desc.help.clone());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

impl Collector for RequestMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let all: Vec<Arc<Series>> = self.inner.series.lock().values().cloned().collect();
        let mut counters = Vec::with_capacity(all.len() * CLASSES.len());
        let mut histograms = Vec::with_capacity(all.len());
        for series in all {
            let (classes, buckets, sum_ns) = series.totals();
            // Label pairs sorted by name, as prometheus' own vectors give them.
            for (class, count) in CLASSES.iter().zip(classes) {
                let mut counter = Counter::default();
                counter.set_value(count as f64);
                let mut metric = Metric::from_label(vec![
                    label("class", class),
                    label("listener", &series.listener),
                    label("upstream", &series.upstream),
                ]);
                metric.set_counter(counter);
                counters.push(metric);
            }
            if !series.timed.load(Ordering::Relaxed) {
                continue;
            }
            let mut cumulative = 0u64;
            let bucket_list = BOUNDS
                .iter()
                .zip(buckets)
                .map(|(bound, count)| {
                    cumulative = cumulative.wrapping_add(count);
                    let mut bucket = Bucket::default();
                    bucket.set_upper_bound(*bound);
                    bucket.set_cumulative_count(cumulative);
                    bucket
                })
                .collect();
            let mut histogram = Histogram::default();
            histogram.set_bucket(bucket_list);
            histogram.set_sample_count(buckets.iter().fold(0u64, |a, b| a.wrapping_add(*b)));
            histogram.set_sample_sum(sum_ns as f64 / 1e9);
            let mut metric =
                Metric::from_label(vec![label("listener", &series.listener), label("upstream", &series.upstream)]);
            metric.set_histogram(histogram);
            histograms.push(metric);
        }
        let [requests, durations] = &self.inner.descs;
        vec![family(requests, MetricType::COUNTER, counters), family(durations, MetricType::HISTOGRAM, histograms)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shards written on several threads add up in a scrape, each sample in the bucket prometheus would put it
    /// in (a bound is inclusive), and the sum in seconds.
    #[test]
    fn shards_of_every_thread_add_up_in_the_right_buckets() -> Result<(), prometheus::Error> {
        let metrics = RequestMetrics::new()?;
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let metrics = metrics.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        metrics.observe("web", "app", 200, Some(Duration::from_micros(500)));
                        metrics.observe("web", "app", 502, Some(Duration::from_millis(20)));
                    }
                })
            })
            .collect();
        for thread in threads {
            assert!(thread.join().is_ok());
        }
        metrics.observe("web", "app", 200, Some(Duration::from_secs(11)));
        assert_eq!(metrics.count("web", "app", "2xx"), 301);
        assert_eq!(metrics.count("web", "app", "5xx"), 300);
        assert_eq!(metrics.timed_count("web", "app"), 601);

        let families = metrics.collect();
        let histogram = families[1].get_metric()[0].get_histogram();
        let cumulative: Vec<(f64, u64)> =
            histogram.get_bucket().iter().map(|b| (b.upper_bound(), b.cumulative_count())).collect();
        assert_eq!(cumulative[0], (0.0005, 300), "500 µs is in the 0.5 ms bucket");
        assert_eq!(cumulative[4], (0.01, 300));
        assert_eq!(cumulative[5], (0.025, 600));
        assert_eq!(cumulative[13], (10.0, 600), "11 s is past every bound");
        assert_eq!(histogram.get_sample_count(), 601);
        assert!((histogram.get_sample_sum() - (300.0 * 0.0005 + 300.0 * 0.02 + 11.0)).abs() < 1e-6);
        Ok(())
    }
}
