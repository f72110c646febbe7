//! The scorer and the alert engine on shapes whose right answer is known: what must stay quiet, what must
//! alert once, and what the CSV scorer writes.

use std::sync::Arc;

use portico_anomaly::alert::{AlertEngine, AlertState, Transition};
use portico_anomaly::config::Thresholds;
use portico_anomaly::model::SplitMix64;
use portico_anomaly::score::Scorer;
use portico_anomaly::{score_csv, score_series, DetectorKit, DetectorParams, Forecaster, SeriesScore, Severity, Tick};

fn model() -> Arc<Forecaster> {
    Arc::new(Forecaster::bundled().unwrap())
}

/// Alert changes (tick, transition) for one series fed tick by tick through the live scorer and engine, with
/// the live defaults (`warmup = 120`, `adapt = "2m"` at 1 s ticks).
fn alerts(series: &str, values: &[f64]) -> Vec<(usize, Transition)> {
    let params = DetectorParams { warmup: 120, adapt_rows: 120, ..DetectorParams::default() };
    let mut scorer = Scorer::with_params(model(), params).unwrap();
    let mut engine = AlertEngine::new(Thresholds::default());
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        for s in scorer.score_tick(&Tick::new(i as i64 * 1000).with(series, *v)).unwrap() {
            if let Some(c) = engine.update(&s) {
                out.push((i, c.transition));
            }
        }
    }
    out
}

fn noise(seed: u64, n: usize, mean: f64, sd: f64) -> Vec<f64> {
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| mean + sd * r.normal()).collect()
}

#[test]
fn a_noise_free_cycle_and_a_flat_zero_raise_nothing() {
    let cycle: Vec<f64> = (0..4000).map(|t| 100.0 + 40.0 * (t as f64 * std::f64::consts::TAU / 120.0).sin()).collect();
    assert_eq!(alerts("upstream.app.qps", &cycle), vec![]);
    let zero = vec![0.0; 4000];
    assert_eq!(alerts("upstream.app.error_ratio", &zero), vec![]);
    // The CSV scorer agrees: nothing on either reaches the score where an event opens.
    let kit = DetectorKit::new(&model(), DetectorParams::default()).unwrap();
    for values in [&cycle, &zero] {
        let values: Vec<Option<f64>> = values.iter().map(|v| Some(*v)).collect();
        let max = score_series(&kit, &values, Some(60_000)).into_iter().fold(0.0, f64::max);
        assert!(max < 0.5, "max score {max}");
    }
}

#[test]
fn a_noisy_cycle_does_not_alert_every_cycle() {
    let mut r = SplitMix64::new(4);
    let cycle: Vec<f64> = (0..6000)
        .map(|t| {
            let busy = if t % 300 < 120 { 400.0 } else { 100.0 };
            busy + 10.0 * r.normal()
        })
        .collect();
    let fired = alerts("listener.web.qps", &cycle);
    assert!(fired.iter().filter(|(t, _)| *t > 1500).count() == 0, "once the cycle is learned: {fired:?}");
}

#[test]
fn a_level_shift_raises_one_alert_that_resolves() {
    let mut v = noise(9, 3000, 40.0, 2.0);
    for x in &mut v[1500..] {
        *x += 30.0;
    }
    let changes = alerts("upstream.app.latency_p99", &v);
    let fired: Vec<usize> = changes.iter().filter(|c| c.1 == Transition::Fired).map(|c| c.0).collect();
    assert_eq!(fired.len(), 1, "{changes:?}");
    assert!((1500..1510).contains(&fired[0]), "{changes:?}");
    let resolved: Vec<usize> = changes.iter().filter(|c| c.1 == Transition::Resolved).map(|c| c.0).collect();
    assert_eq!(resolved.len(), 1, "the new level became normal: {changes:?}");
    assert!(resolved[0] > fired[0]);
}

#[test]
fn errors_appearing_in_a_zero_error_ratio_alert() {
    let mut v = vec![0.0; 2000];
    let mut r = SplitMix64::new(2);
    for x in &mut v[1200..1260] {
        *x = 0.2 + 0.02 * r.normal();
    }
    let changes = alerts("upstream.app.error_ratio", &v);
    let fired: Vec<usize> = changes.iter().filter(|c| c.1 == Transition::Fired).map(|c| c.0).collect();
    assert_eq!(fired.len(), 1, "{changes:?}");
    assert!((1200..1210).contains(&fired[0]), "{changes:?}");
    // A single error among thousands of requests is not an anomaly of the ratio.
    let mut blip = vec![0.0; 2000];
    blip[1500] = 0.001;
    assert_eq!(alerts("upstream.app.error_ratio", &blip), vec![]);
}

#[test]
fn no_look_ahead() {
    let kit = DetectorKit::new(&model(), DetectorParams::default()).unwrap();
    let a: Vec<Option<f64>> = noise(11, 800, 50.0, 3.0).into_iter().map(Some).collect();
    let mut b = a.clone();
    for (i, x) in b.iter_mut().enumerate().skip(500) {
        *x = Some(500.0 + i as f64);
    }
    let (sa, sb) = (score_series(&kit, &a, None), score_series(&kit, &b, None));
    assert_eq!(sa[..500], sb[..500], "scores before row 500 must not depend on later rows");
    assert_ne!(sa[500..], sb[500..]);
}

fn sc(strength: f64, in_event: bool, t: i64) -> SeriesScore {
    SeriesScore {
        series: "s".into(),
        timestamp_ms: t,
        value: t as f64,
        predicted: Some(1.0),
        score: strength,
        strength,
        residual: 0.0,
        evidence: 0.0,
        in_event,
    }
}

#[test]
fn an_alert_fires_after_for_ticks_of_an_event_escalates_and_resolves() {
    let mut e = AlertEngine::new(Thresholds { warning: 0.7, critical: 0.9, for_ticks: 3, resolve_ticks: 2 });
    // A two-tick event, a weak event, then a strong one that escalates and ends.
    let seq = [
        (0.1, false),
        (0.8, true),
        (0.8, true),
        (0.1, false),
        (0.55, true),
        (0.55, true),
        (0.55, true),
        (0.2, false),
        (0.8, true),
        (0.8, true),
        (0.8, true),
        (0.95, true),
        (0.3, false),
        (0.1, false),
    ];
    let mut changes = Vec::new();
    for (t, (s, ev)) in seq.iter().enumerate() {
        if let Some(c) = e.update(&sc(*s, *ev, t as i64)) {
            changes.push((t, c));
        }
    }
    let summary: Vec<(usize, Transition, Severity)> =
        changes.iter().map(|(t, c)| (*t, c.transition, c.alert.severity)).collect();
    assert_eq!(
        summary,
        [
            (10, Transition::Fired, Severity::Warning),
            (11, Transition::Escalated, Severity::Critical),
            (13, Transition::Resolved, Severity::Critical),
        ]
    );
    let resolved = &changes[2].1.alert;
    assert_eq!(resolved.state, AlertState::Resolved);
    assert_eq!((resolved.started_at, resolved.resolved_at), (8, Some(13)), "started when the event began");
    assert_eq!(resolved.peak_score, 0.95);
    assert!(e.active().is_empty());
}

#[test]
fn webhook_payload_has_alertmanager_shape() {
    let mut e = AlertEngine::new(Thresholds { for_ticks: 1, ..Default::default() });
    let a = e.update(&sc(0.95, true, 1_700_000_000_000)).unwrap().alert;
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
fn score_csv_writes_one_row_per_input_and_marks_where_the_anomaly_starts() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    let output = dir.path().join("out.csv");
    let mut v = noise(3, 1500, 20.0, 1.0);
    for x in &mut v[1200..1206] {
        *x = 60.0;
    }
    let mut text = String::from("timestamp,value\n");
    for (i, x) in v.iter().enumerate() {
        text.push_str(&format!(
            "{},{x}\n",
            portico_anomaly::time::plain_datetime(1_700_000_000_000 + i as i64 * 300_000)
        ));
    }
    text.push_str("2030-01-01 00:00:00,not-a-number\n");
    std::fs::write(&input, text).unwrap();
    let sum = score_csv(&input, &output, &model()).unwrap();
    assert_eq!(sum.rows, 1501);
    assert_eq!(sum.skipped, 1);
    assert_eq!(sum.interval_ms, Some(300_000));
    let out = std::fs::read_to_string(&output).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "timestamp,value,anomaly_score");
    assert_eq!(lines.len(), 1502);
    let scores: Vec<f64> = lines[1..].iter().map(|l| l.rsplit(',').next().unwrap().parse().unwrap()).collect();
    assert!(scores.iter().all(|s| (0.0..1.0).contains(s)));
    assert_eq!(sum.max_row, 1200);
    assert!(scores[1200] > 0.8, "{}", scores[1200]);
    let high_normal = scores[100..1200].iter().filter(|&&s| s >= 0.5).count();
    assert!(high_normal <= 2, "{high_normal} false high scores");
    assert!(lines[1].starts_with("2023-11-14 22:13:20,"), "input columns pass through: {}", lines[1]);
}
