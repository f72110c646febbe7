//! Measure per-tick scoring cost (normalisation + one batched LSTM step + adaptive thresholds)
//! for N series with the bundled model.
//!
//! ```text
//! cargo run -p portico-anomaly --example bench_inference -- 20
//! ```
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use portico_anomaly::model::SplitMix64;
use portico_anomaly::{Forecaster, Scorer, Tick};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let ticks = 5000;
    let model = Arc::new(Forecaster::bundled().unwrap());
    let mut scorer = Scorer::new(model, 120).unwrap();
    let mut r = SplitMix64::new(1);
    let names: Vec<String> = (0..n).map(|i| format!("upstream.u{i}.latency_p99")).collect();
    let mut times = Vec::with_capacity(ticks);
    for t in 0..ticks {
        let mut tick = Tick::new(t as i64 * 1000);
        for (i, name) in names.iter().enumerate() {
            tick.set(name.clone(), 10.0 * (i + 1) as f64 + r.normal());
        }
        let t0 = Instant::now();
        let scores = scorer.score_tick(&tick).unwrap();
        times.push(t0.elapsed().as_secs_f64() * 1e6);
        assert_eq!(scores.len(), n);
    }
    let steady = &mut times[500..];
    steady.sort_by(|a, b| a.total_cmp(b));
    let mean = steady.iter().sum::<f64>() / steady.len() as f64;
    let pct = |p: f64| steady[((steady.len() - 1) as f64 * p) as usize];
    println!(
        "{n} series, {} ticks: mean {mean:.1} us/tick, p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        steady.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}
