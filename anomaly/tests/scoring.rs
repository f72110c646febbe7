#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use portico_anomaly::alert::{AlertEngine, AlertState, Transition};
use portico_anomaly::config::Thresholds;
use portico_anomaly::model::SplitMix64;
use portico_anomaly::score::{ScoreParams, Scorer};
use portico_anomaly::{score_csv, Forecaster, SeriesScore, Severity, Tick};

fn noise(seed: u64, n: usize, mean: f64, sd: f64) -> Vec<f64> {
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| mean + sd * r.normal()).collect()
}

fn run(model: &Arc<Forecaster>, values: &[f64]) -> Vec<f64> {
    let mut s = Scorer::new(model.clone(), 60);
    values
        .iter()
        .enumerate()
        .map(|(i, v)| s.score_tick(&Tick::new(i as i64).with("upstream.app.latency_p99", *v)).unwrap()[0].score)
        .collect()
}

#[test]
fn low_on_steady_noise_high_on_spike() {
    let model = Arc::new(Forecaster::bundled().unwrap());
    let mut v = noise(7, 1200, 100.0, 5.0);
    for x in &mut v[1000..1010] {
        *x += 150.0;
    }
    let scores = run(&model, &v);
    assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
    assert!(scores[..60].iter().all(|&s| s == 0.0), "warmup scores 0");
    let normal_max = scores[100..1000].iter().cloned().fold(0.0, f64::max);
    let normal_mean = scores[100..1000].iter().sum::<f64>() / 900.0;
    assert!(normal_max < 0.7, "steady noise max score {normal_max}");
    assert!(normal_mean < 0.05, "steady noise mean score {normal_mean}");
    assert!(scores[1000] > 0.9, "spike score {}", scores[1000]);
    assert!(scores[1000..1010].iter().all(|&s| s > 0.7), "sustained spike {:?}", &scores[1000..1010]);
}

/// Ticks at which alerts fired (default thresholds) for one series scored with `params`.
fn fired(model: &Arc<Forecaster>, values: &[f64], params: ScoreParams) -> Vec<usize> {
    let mut s = Scorer::with_params(model.clone(), 120, params);
    let mut e = AlertEngine::new(Thresholds::default());
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        for sc in s.score_tick(&Tick::new(i as i64).with("upstream.app.latency_p50", *v)).unwrap() {
            if e.update(&sc).is_some_and(|c| c.transition == Transition::Fired) {
                out.push(i);
            }
        }
    }
    out
}

#[test]
fn slow_drift_is_caught_by_the_cusum_and_calm_noise_is_not() {
    let model = Arc::new(Forecaster::bundled().unwrap());
    // Latency with persistent (AR) noise, calm for 1500 ticks, then +60 % over 600 ticks, then held.
    let mut r = SplitMix64::new(11);
    let mut ar = 0.0;
    let v: Vec<f64> = (0..2400)
        .map(|i| {
            ar = 0.9 * ar + 0.02 * r.normal();
            let drift = 1.0 + 0.6 * ((i as f64 - 1500.0) / 600.0).clamp(0.0, 1.0);
            20.0 * drift * (ar + 0.04 * r.normal()).exp()
        })
        .collect();
    let with = fired(&model, &v, ScoreParams::default());
    assert!(with.iter().all(|&t| t >= 1500), "no alert on the calm part: {with:?}");
    assert!(with.iter().any(|&t| (1500..2160).contains(&t)), "the drift raises an alert: {with:?}");
    let without = fired(&model, &v, ScoreParams { drift_h: 0.0, ..ScoreParams::default() });
    assert!(without.is_empty(), "without the CUSUM the drift goes unnoticed: {without:?}");
}

#[test]
fn no_look_ahead() {
    let model = Arc::new(Forecaster::bundled().unwrap());
    let a = noise(11, 800, 50.0, 3.0);
    let mut b = a.clone();
    for (i, x) in b.iter_mut().enumerate().skip(500) {
        *x = 500.0 + i as f64; // wildly different future
    }
    let (sa, sb) = (run(&model, &a), run(&model, &b));
    assert_eq!(sa[..500], sb[..500], "scores before t=500 must not depend on later data");
    assert_ne!(sa[500..], sb[500..]);
}

fn sc(score: f64, t: i64) -> SeriesScore {
    SeriesScore {
        series: "s".into(),
        timestamp_ms: t,
        value: t as f64,
        predicted: Some(1.0),
        score,
        surprise: 0.0,
        level: 0.0,
        drift: 0.0,
    }
}

#[test]
fn alert_fires_after_for_ticks_escalates_and_resolves() {
    let mut e = AlertEngine::new(Thresholds { warning: 0.7, critical: 0.9, for_ticks: 3, resolve_ticks: 2 });
    let seq = [0.1, 0.8, 0.8, 0.2, 0.8, 0.8, 0.8, 0.95, 0.95, 0.95, 0.5, 0.8, 0.1, 0.1];
    let mut changes = Vec::new();
    for (t, s) in seq.iter().enumerate() {
        if let Some(c) = e.update(&sc(*s, t as i64)) {
            changes.push((t, c));
        }
    }
    let summary: Vec<(usize, Transition, Severity)> =
        changes.iter().map(|(t, c)| (*t, c.transition, c.alert.severity)).collect();
    assert_eq!(
        summary,
        [
            (6, Transition::Fired, Severity::Warning), // the broken run at t=1..2 did not fire
            (9, Transition::Escalated, Severity::Critical),
            (13, Transition::Resolved, Severity::Critical), // t=12,13 below warning
        ]
    );
    let resolved = &changes[2].1.alert;
    assert_eq!(resolved.state, AlertState::Resolved);
    assert_eq!((resolved.started_at, resolved.resolved_at), (6, Some(13)));
    assert_eq!(resolved.peak_score, 0.95);
    assert_eq!(changes[0].1.alert.id, resolved.id);
    assert!(e.active().is_empty());
}

#[test]
fn webhook_payload_has_alertmanager_shape() {
    let mut e = AlertEngine::new(Thresholds { for_ticks: 1, ..Default::default() });
    let a = e.update(&sc(0.95, 1_700_000_000_000)).unwrap().alert;
    let p = portico_anomaly::webhook_payload(&[a], "portico", "edge-1", "http://127.0.0.1:9901");
    assert_eq!(p["version"], "4");
    assert_eq!(p["status"], "firing");
    assert_eq!(p["receiver"], "portico");
    let al = &p["alerts"][0];
    assert_eq!(al["labels"]["alertname"], "PorticoAnomaly");
    assert_eq!(al["labels"]["severity"], "critical");
    assert_eq!(al["labels"]["instance"], "edge-1");
    assert_eq!(al["startsAt"], "2023-11-14T22:13:20.000Z");
    assert_eq!(al["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(al["fingerprint"].as_str().unwrap().len(), 16);
}

#[test]
fn score_csv_one_row_per_input_and_flags_anomaly() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    let output = dir.path().join("out.csv");
    let mut v = noise(3, 1500, 20.0, 1.0);
    for x in &mut v[1200..1206] {
        *x = 60.0;
    }
    let mut text = String::from("timestamp,value\n");
    for (i, x) in v.iter().enumerate() {
        text.push_str(&format!("{},{x}\n", 1_700_000_000_000i64 + i as i64 * 1000));
    }
    text.push_str("1800000000000,not-a-number\n");
    std::fs::write(&input, text).unwrap();
    let model = Forecaster::bundled().unwrap();
    let sum = score_csv(&input, &output, &model).unwrap();
    assert_eq!(sum.rows, 1501);
    assert_eq!(sum.skipped, 1);
    let out = std::fs::read_to_string(&output).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "timestamp,value,anomaly_score");
    assert_eq!(lines.len(), 1502);
    let scores: Vec<f64> = lines[1..].iter().map(|l| l.rsplit(',').next().unwrap().parse().unwrap()).collect();
    assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
    assert!((1200..1206).contains(&sum.max_row), "max at {}", sum.max_row);
    assert!(scores[1200] > 0.9);
    let high_normal = scores[100..1200].iter().filter(|&&s| s >= 0.7).count();
    assert!(high_normal <= 2, "{high_normal} false high scores");
    // Input columns are passed through unchanged.
    assert!(lines[1].starts_with(&format!("1700000000000,{}", v[0])));
}
