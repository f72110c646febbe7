//! The live detector's cost per tick: N series (a realistic mix of listener, upstream and per-endpoint series)
//! scored together, as the detector thread does once per `interval`.
//!
//! ```text
//! cargo run --release -p portico-anomaly --example bench_inference -- 60
//! ```
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use portico_anomaly::model::SplitMix64;
use portico_anomaly::{Forecaster, Scorer, Tick};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(60);
    let ticks = 5000;
    let model = Arc::new(Forecaster::bundled().unwrap());
    let mut scorer = Scorer::new(model, 120).unwrap();
    let mut r = SplitMix64::new(1);
    let kinds = ["qps", "error_ratio", "latency"];
    let names: Vec<String> = (0..n)
        .map(|i| match i % 3 {
            0 => format!("upstream.u{}.{}", i / 3, kinds[i % 3]),
            1 => format!("endpoint.u{}.10.0.0.{}:80.{}", i / 9, i % 250, kinds[i % 3]),
            _ => format!("listener.l{}.{}", i / 3, kinds[i % 3]),
        })
        .collect();
    let mut times = Vec::with_capacity(ticks);
    let cpu = || rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    let mut cpu_us = 0.0;
    for t in 0..ticks {
        let mut tick = Tick::new(t as i64 * 1000);
        for (i, name) in names.iter().enumerate() {
            let base = 10.0 * (i + 1) as f64;
            tick.set(name.clone(), base + base * 0.05 * r.normal());
        }
        let (t0, c0) = (Instant::now(), cpu());
        let scores = scorer.score_tick(&tick).unwrap();
        times.push(t0.elapsed().as_secs_f64() * 1e6);
        let c1 = cpu();
        if t >= 500 {
            cpu_us += (c1.tv_sec - c0.tv_sec) as f64 * 1e6 + (c1.tv_nsec - c0.tv_nsec) as f64 / 1e3;
        }
        assert_eq!(scores.len(), n);
    }
    let steady = &mut times[500..];
    steady.sort_by(|a, b| a.total_cmp(b));
    let mean = steady.iter().sum::<f64>() / steady.len() as f64;
    let cpu_mean = cpu_us / steady.len() as f64;
    let pct = |p: f64| steady[((steady.len() - 1) as f64 * p) as usize];
    println!(
        "{n} series, {} ticks: CPU {cpu_mean:.1} us/tick ({:.2} us/series; at one tick per second {:.3} % of a core); \
         wall clock mean {mean:.1} us, p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        steady.len(),
        cpu_mean / n as f64,
        cpu_mean / 1e4,
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}
