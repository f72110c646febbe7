use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use portico_anomaly::config::HumanDuration;
use portico_anomaly::detector::AnomalyEvent;
use portico_anomaly::model::SplitMix64;
use portico_anomaly::store::read_ipc_stream;
use portico_anomaly::{
    AnomalyConfig, Detector, DetectorOptions, Forecaster, HookConfig, IncidentTransition, Outcome, Severity, Tick,
    Transition,
};

#[test]
fn end_to_end_spike_raises_alert_event_and_runs_hook() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen.json");
    let script = dir.path().join("hook.sh");
    std::fs::write(&script, format!("#!/bin/sh\ncat > {}\n", seen.display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = AnomalyConfig {
        warmup: 60,
        queue: 4096,
        hooks: vec![HookConfig {
            name: "log".into(),
            on: Default::default(),
            exec: vec![script.display().to_string()],
            timeout: HumanDuration(Duration::from_secs(5)),
            cooldown: HumanDuration(Duration::from_secs(60)),
            dry_run: false,
        }],
        ..Default::default()
    };
    let det = Detector::spawn(
        &cfg,
        Forecaster::bundled().unwrap(),
        DetectorOptions { runtime: Some(rt.handle().clone()), ..Default::default() },
    )
    .unwrap();
    let mut events = det.subscribe();
    let mut r = SplitMix64::new(1);
    let t0 = 1_700_000_000_000i64;
    for i in 0..500i64 {
        let spike = if (400..420).contains(&i) { 400.0 } else { 0.0 };
        let tick = Tick::new(t0 + i * 1000)
            .with("upstream.app.latency_p99", 40.0 + 2.0 * r.normal() + spike)
            .with("listener.web.qps", 900.0 + 30.0 * r.normal());
        assert!(det.submit(tick));
    }
    det.flush().unwrap();

    let mut fired = Vec::new();
    let mut score_events = 0;
    let mut settled = Vec::new();
    while let Ok(ev) = events.try_recv() {
        match ev {
            AnomalyEvent::Scores { .. } => score_events += 1,
            AnomalyEvent::Alert(ch) if ch.transition == Transition::Fired => fired.push(ch.alert),
            AnomalyEvent::Alert(_) => {}
            AnomalyEvent::Incident(ch) if ch.transition == IncidentTransition::Settled => settled.push(ch.incident),
            AnomalyEvent::Incident(_) => {}
        }
    }
    assert_eq!(score_events, 500);
    assert_eq!(fired.len(), 1, "{fired:?}");
    let a = &fired[0];
    assert_eq!(a.series, "upstream.app.latency_p99");
    assert!(a.started_at >= t0 + 400_000 && a.started_at <= t0 + 405_000, "started {}", a.started_at - t0);
    assert_eq!(a.severity, Severity::Critical);
    assert_eq!(settled.len(), 1, "{settled:?}");
    assert_eq!(settled[0].cause.alert.id, a.id);

    let stats = det.stats();
    assert_eq!((stats.ticks, stats.dropped, stats.series), (500, 0, 2));
    assert!(stats.mean_inference_us > 0.0);
    assert_eq!(det.scores().len(), 2);
    assert_eq!(det.alert_history().len(), 1);
    assert_eq!(det.export_json(t0 + 490_000).unwrap().as_array().unwrap().len(), 10);
    let batches = read_ipc_stream(&det.export_arrow(0).unwrap()).unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 500);

    // The hook ran on the tokio runtime with the alert (and its incident) on stdin.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !det.actions().iter().any(|r| r.outcome == Outcome::Ok) {
        assert!(std::time::Instant::now() < deadline, "the hook never finished: {:?}", det.actions());
        std::thread::sleep(Duration::from_millis(50));
    }
    let got: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&seen).unwrap()).unwrap();
    assert_eq!(got["id"], a.id.as_str());
    assert_eq!(got["incident"]["id"], settled[0].id.as_str());
    det.shutdown().unwrap();
}

#[test]
fn full_queue_drops_and_counts_instead_of_blocking() {
    let cfg = AnomalyConfig { queue: 1, ..Default::default() };
    let det = Detector::spawn(&cfg, Forecaster::bundled().unwrap(), DetectorOptions::default()).unwrap();
    let n = 2000;
    let accepted = (0..n).filter(|i| det.submit(Tick::new(*i).with("a", *i as f64))).count() as u64;
    det.flush().unwrap();
    let s = det.stats();
    assert_eq!(s.ticks, accepted);
    assert_eq!(s.ticks + s.dropped, n as u64);
    assert!(s.dropped > 0);
}

#[test]
fn hooks_without_runtime_are_a_config_error() {
    let cfg = AnomalyConfig {
        hooks: vec![HookConfig {
            name: "x".into(),
            on: Default::default(),
            exec: vec!["/bin/true".into()],
            timeout: HumanDuration(Duration::from_secs(1)),
            cooldown: HumanDuration(Duration::ZERO),
            dry_run: false,
        }],
        ..Default::default()
    };
    assert!(Detector::spawn(&cfg, Forecaster::bundled().unwrap(), DetectorOptions::default()).is_err());
}
