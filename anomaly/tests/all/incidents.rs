//! One fault seen on several series is one incident, with the most specific series as its cause, and a hook
//! runs once for it.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use portico_anomaly::config::{HookMatch, HookRole, HumanDuration};
use portico_anomaly::model::SplitMix64;
use portico_anomaly::{
    AnomalyConfig, Detector, DetectorOptions, Forecaster, HookConfig, IncidentState, Outcome, Tick, Topology,
};

const ENDPOINT: &str = "endpoint.app.10.0.0.3:8080.latency";

fn hook(name: &str, script: &std::path::Path, on: HookMatch) -> HookConfig {
    HookConfig {
        name: name.into(),
        on,
        exec: vec![script.display().to_string()],
        timeout: HumanDuration(Duration::from_secs(10)),
        cooldown: HumanDuration(Duration::ZERO),
        dry_run: false,
    }
}

#[test]
fn a_slow_endpoint_is_one_incident_caused_by_the_endpoint_and_each_hook_runs_once() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs.log");
    let script = dir.path().join("hook.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$PORTICO_INCIDENT_ID $PORTICO_ALERT_SERIES $PORTICO_ALERT_ENDPOINT\" >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = AnomalyConfig {
        warmup: 60,
        queue: 4096,
        hooks: vec![
            // Matches the cause itself.
            hook("on-cause", &script, HookMatch { series: Some("endpoint.*".into()), ..Default::default() }),
            // Matches only a symptom: runs once anyway, because it asks for any member.
            hook(
                "on-any",
                &script,
                HookMatch { series: Some("listener.*".into()), role: HookRole::Any, ..Default::default() },
            ),
            // Matches only a symptom and asks for the cause: does not run.
            hook("on-symptom", &script, HookMatch { series: Some("listener.*".into()), ..Default::default() }),
        ],
        ..Default::default()
    };
    let options =
        DetectorOptions { runtime: Some(rt.handle().clone()), topology: Topology::default(), ..Default::default() };
    let det = Detector::spawn(&cfg, Forecaster::bundled().unwrap(), options).unwrap();
    let mut r = SplitMix64::new(7);
    let t0 = 1_700_000_000_000i64;
    for i in 0..700i64 {
        // The endpoint slows from tick 400; its upstream and listener follow a tick later; another upstream
        // stays calm throughout.
        let slow = |from: i64| if (from..520).contains(&i) { 200.0 } else { 0.0 };
        let tick = Tick::new(t0 + i * 1000)
            .with(ENDPOINT, 20.0 + r.normal() + slow(400))
            .with("upstream.app.latency_p99", 40.0 + 2.0 * r.normal() + slow(401))
            .with("listener.web.latency_p99", 45.0 + 2.0 * r.normal() + slow(401))
            .with("upstream.other.latency_p99", 30.0 + 2.0 * r.normal());
        assert!(det.submit(tick));
    }
    det.flush().unwrap();

    let incidents = det.incidents();
    assert_eq!(incidents.len(), 1, "{incidents:#?}");
    let inc = &incidents[0];
    assert_eq!(inc.cause.alert.series, ENDPOINT);
    let mut symptoms: Vec<&str> = inc.symptoms.iter().map(|m| m.alert.series.as_str()).collect();
    symptoms.sort_unstable();
    assert_eq!(symptoms, ["listener.web.latency_p99", "upstream.app.latency_p99"]);
    assert_eq!(inc.state, IncidentState::Resolved, "the endpoint recovered at tick 520");

    let deadline = Instant::now() + Duration::from_secs(60);
    while det.actions().iter().filter(|a| a.outcome == Outcome::Ok).count() < 2 {
        assert!(Instant::now() < deadline, "{:?}", det.actions());
        std::thread::sleep(Duration::from_millis(50));
    }
    let actions = det.actions();
    let hooks: Vec<&str> = actions.iter().map(|a| a.hook.as_str()).collect();
    assert_eq!(hooks.len(), 2, "{actions:?}");
    assert!(hooks.contains(&"on-cause") && hooks.contains(&"on-any"), "{hooks:?}");
    assert!(actions.iter().all(|a| a.incident_id.as_deref() == Some(inc.id.as_str())));
    let runs = std::fs::read_to_string(&log).unwrap();
    assert!(runs.contains(&format!("{} {ENDPOINT} 10.0.0.3:8080", inc.id)), "{runs}");
    assert!(runs.contains(&format!("{} listener.web.latency_p99", inc.id)), "{runs}");
    det.shutdown().unwrap();
}
