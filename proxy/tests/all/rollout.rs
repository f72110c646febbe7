//! Progressive plugin rollout through a real Portico: `PUT /plugins/{name}?rollout=PERCENT` runs a candidate
//! beside the stable version; a candidate answering 503 is rolled back by its guards with failures only among
//! its share and none after (and the rollback reaches the anomaly hooks and webhooks); candidates trapping open
//! or slower are rolled back by the plugin-failure and latency guards; a good one is promoted through its steps
//! without a failed request; sticky clients keep one version and a request keeps its version for its whole life;
//! abort, pause and promote through the admin API; a reload ends a rollout; bad `rollout` tables are refused.

use crate::plugins::{marking_plugin, reqwest_put, wat_plugin};
use crate::support::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Answers every request itself with 503 and the body `candidate-refuses`.
pub(crate) fn refusing_plugin() -> Vec<u8> {
    wat_plugin(
        &["candidate-refuses"],
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $local (i32.const 503) (i32.const 0) (i32.const 0) (i32.const 1024) (i32.const 17)
      (i32.const 0) (i32.const 0) (i32.const -1)))
    (i32.const 1))"#,
    )
}

fn config(app: &TestUpstream, stable: &std::path::Path, rollout: &str) -> String {
    reverse_config(&quoted(&[app]), "").replace("upstream = \"app\"\n", "upstream = \"app\"\nfilters = [\"gate\"]\n")
        + &format!("\n[[plugin]]\nname = \"gate\"\nwasm = \"{}\"\nrollout = {{ {rollout} }}\n", stable.display())
}

async fn start(
    rollout: &str,
) -> Result<(TestUpstream, Portico, tempfile::TempDir), Box<dyn std::error::Error + Send + Sync>> {
    let app = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let stable = dir.path().join("gate.wasm");
    std::fs::write(&stable, marking_plugin("stable"))?;
    let p = Portico::start(&config(&app, &stable, rollout)).await;
    Ok((app, p, dir))
}

async fn rollout(p: &Portico) -> Result<serde_json::Value, String> {
    Ok(get(p.admin, "/plugins/gate/rollout").await?.json())
}

/// Polls the rollout until `cond` holds, for at most 120 s (only a hang takes that long).
async fn wait_rollout(
    p: &Portico,
    mut cond: impl FnMut(&serde_json::Value) -> bool,
) -> Result<serde_json::Value, String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = rollout(p).await?;
        if cond(&seen) {
            return Ok(seen);
        }
        if Instant::now() > deadline {
            return Err(format!("rollout never reached the expected state: {seen}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One answer as a client saw it: status, `x-wat` mark, body, and when its request was sent.
type Seen = (u16, String, String, Instant);

/// Clients sending requests to `addr` until `stop`, recording every answer.
fn load(
    addr: std::net::SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<Seen>>>, Vec<tokio::task::JoinHandle<()>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let tasks = (0..clients)
        .map(|_| {
            let (seen, stop) = (seen.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let answer = get(addr, "/").await;
                    let entry = match answer {
                        Ok(a) => (
                            a.status.as_u16(),
                            a.header("x-wat").to_string(),
                            String::from_utf8_lossy(&a.body).into_owned(),
                            sent,
                        ),
                        Err(e) => (0, String::new(), e, sent),
                    };
                    seen.lock().map(|mut s| s.push(entry)).ok();
                }
            })
        })
        .collect();
    (seen, tasks)
}

fn taken(seen: &Arc<Mutex<Vec<Seen>>>) -> Vec<Seen> {
    seen.lock().map(|s| s.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_answering_503_is_rolled_back_with_failures_only_in_its_share() -> TestResult {
    refusing_candidate_is_rolled_back(20).await
}

/// The issue's figure of merit: a candidate failing every request it meets at 5 % (printed for
/// `bench/RESULTS.md`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_answering_503_at_5_percent_is_rolled_back_with_failures_only_in_its_share() -> TestResult {
    refusing_candidate_is_rolled_back(5).await
}

async fn refusing_candidate_is_rolled_back(percent: u32) -> TestResult {
    let (_app, p, _dir) = start("steps = [50, 100], step_interval = \"1h\"").await?;
    let web = p.addr("web").await;
    assert_eq!(get(web, "/").await?.header("x-wat"), "stable");

    let stop = Arc::new(AtomicBool::new(false));
    let (seen, tasks) = load(web, 4, stop.clone());
    // Some traffic on the stable version first, as a running service has.
    let warm = Instant::now();
    while taken(&seen).len() < 100 && warm.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let put = reqwest_put(p.admin, &format!("/plugins/gate?rollout={percent}"), refusing_plugin()).await?;
    assert_eq!(put.status, 200, "{:?}", put.body);
    assert_eq!(put.json()["state"], "running");
    assert_eq!(put.json()["percent"], f64::from(percent), "the query's share replaces the first step");
    let ended = wait_rollout(&p, |r| r["state"] != "running").await?;
    let rolled_back_after = started.elapsed();
    assert_eq!(ended["state"], "rolled_back", "{ended}");
    assert_eq!(ended["percent"], 0.0);
    assert!(ended["reason"].as_str().is_some_and(|r| r.contains("error ratio")), "{ended}");

    // Once the state says rolled back, no request sent after that meets the candidate.
    let cutoff = Instant::now();
    let sent_after = |seen: &[Seen]| seen.iter().filter(|s| s.3 > cutoff).count();
    let deadline = Instant::now() + Duration::from_secs(120);
    while sent_after(&taken(&seen)) < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    let seen = taken(&seen);
    let after: Vec<_> = seen.iter().filter(|s| s.3 > cutoff).collect();
    assert!(after.len() >= 200, "{} answers after the rollback", after.len());
    assert!(
        after.iter().all(|s| s.0 == 200 && s.1 == "stable"),
        "answers after the rollback: {:?}",
        after.iter().filter(|s| s.0 != 200).take(5).collect::<Vec<_>>()
    );
    // Every failure came from the candidate, every success from the stable version.
    let failed: Vec<_> = seen.iter().filter(|s| s.0 != 200).collect();
    assert!(
        failed.iter().all(|s| s.0 == 503 && s.2 == "candidate-refuses"),
        "{:?}",
        failed.iter().take(5).collect::<Vec<_>>()
    );
    assert!(seen.iter().filter(|s| s.0 == 200).all(|s| s.1 == "stable"));
    let figures = rollout(&p).await?;
    assert_eq!(figures["totals"]["candidate"]["requests"].as_u64(), Some(failed.len() as u64), "{figures}");
    let during: Vec<_> = seen.iter().filter(|s| s.3 >= started && s.3 <= cutoff).collect();
    println!(
        "rollout at {percent} %: rolled back {:.2} s after the upload; {} of {} requests failed in that time ({:.1} %); reason: {}",
        rolled_back_after.as_secs_f64(),
        failed.len(),
        during.len(),
        100.0 * failed.len() as f64 / during.len().max(1) as f64,
        figures["reason"],
    );
    // The candidate stays loaded for inspection; the metrics tell the state.
    let metrics = String::from_utf8_lossy(&get(p.admin, "/metrics").await?.body).into_owned();
    assert!(metrics.contains("portico_plugin_rollout_state{plugin=\"gate\",state=\"rolled_back\"} 1"), "{metrics}");
    assert!(metrics.contains("portico_plugin_rollout_percent{plugin=\"gate\"} 0"));
    assert!(metrics.contains("portico_plugin_version_failures_total{plugin=\"gate\",version=\"candidate\"}"));
    crate::metrics::check_with_promtool(&metrics)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_candidate_is_promoted_through_its_steps_without_a_failed_request() -> TestResult {
    // A generous latency margin: this machine is busy, and the test is about the steps, not latency.
    let (_app, p, _dir) =
        start("steps = [10, 50, 100], step_interval = \"1s\", max_latency_increase = \"10s\"").await?;
    let web = p.addr("web").await;
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, tasks) = load(web, 4, stop.clone());
    let put = reqwest_put(p.admin, "/plugins/gate?rollout=10", marking_plugin("candidate")).await?;
    assert_eq!(put.status, 200, "{:?}", put.body);
    let candidate_sha = put.json()["candidate_sha256"].as_str().unwrap_or_default().to_string();
    let mut percents = Vec::new();
    let done = wait_rollout(&p, |r| {
        percents.push(r["percent"].as_f64().unwrap_or(-1.0));
        r["state"] != "running"
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    let done = done?;
    assert_eq!(done["state"], "promoted", "{done}");
    assert_eq!(done["step"], 3);
    let seen = taken(&seen);
    let failed: Vec<_> = seen.iter().filter(|s| s.0 != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        seen.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    assert!(seen.iter().any(|s| s.1 == "candidate") && seen.iter().any(|s| s.1 == "stable"));
    // The candidate now serves every request as the stable version.
    for _ in 0..20 {
        assert_eq!(get(web, "/").await?.header("x-wat"), "candidate");
    }
    let listed = get(p.admin, "/plugins").await?.json();
    assert_eq!(listed[0]["sha256"], candidate_sha.as_str(), "{listed}");
    println!("promoted through {:?} % in {} requests", dedup(&percents), seen.len());
    Ok(())
}

fn dedup(values: &[f64]) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::new();
    for v in values {
        if out.last() != Some(v) {
            out.push(*v);
        }
    }
    out
}

#[tokio::test]
async fn sticky_clients_keep_one_version() -> TestResult {
    let (_app, p, _dir) = start("steps = [50, 100], step_interval = \"1h\", sticky = \"header:x-user\"").await?;
    let web = p.addr("web").await;
    let put = reqwest_put(p.admin, "/plugins/gate?rollout=50", marking_plugin("candidate")).await?;
    assert_eq!(put.status, 200, "{:?}", put.body);
    assert_eq!(put.json()["sticky"], "header:x-user");
    let mut versions = std::collections::HashMap::new();
    for round in 0..5 {
        for user in 0..20 {
            let name = format!("user-{user}");
            let answer = send(web, "GET", "/", &[("x-user", &name)], "").await?;
            assert_eq!(answer.status, 200);
            let mark = answer.header("x-wat").to_string();
            let first = versions.entry(name.clone()).or_insert_with(|| mark.clone());
            assert_eq!(*first, mark, "{name} switched version in round {round}");
        }
    }
    let candidates = versions.values().filter(|v| *v == "candidate").count();
    assert!(candidates > 0 && candidates < 20, "both versions meet clients at 50 %: {versions:?}");
    Ok(())
}

#[tokio::test]
async fn a_rollout_is_aborted_paused_and_promoted_through_the_api() -> TestResult {
    let (_app, p, _dir) = start("steps = [50, 100], step_interval = \"1h\"").await?;
    let web = p.addr("web").await;
    assert_eq!(get(p.admin, "/plugins/gate/rollout").await?.status, 404);
    assert_eq!(reqwest_put(p.admin, "/plugins/gate?rollout=0", marking_plugin("x")).await?.status, 400);
    assert_eq!(reqwest_put(p.admin, "/plugins/gate?rollout=50", b"not wasm".to_vec()).await?.status, 422);
    assert_eq!(get(p.admin, "/plugins/gate/rollout").await?.status, 404, "a refused module starts nothing");

    let put = reqwest_put(p.admin, "/plugins/gate?rollout=50", marking_plugin("first")).await?;
    assert_eq!(put.status, 200, "{:?}", put.body);
    let stable_sha = put.json()["stable_sha256"].clone();
    let aborted = send(p.admin, "POST", "/plugins/gate/rollout/abort", &[], "").await?;
    assert_eq!(aborted.status, 200);
    assert_eq!(aborted.json()["state"], "aborted");
    assert_eq!(aborted.json()["reason"], "aborted through the admin API");
    for _ in 0..20 {
        assert_eq!(get(web, "/").await?.header("x-wat"), "stable");
    }
    assert_eq!(send(p.admin, "POST", "/plugins/gate/rollout/promote", &[], "").await?.status, 409);

    let put = reqwest_put(p.admin, "/plugins/gate?rollout=50", marking_plugin("second")).await?;
    let candidate_sha = put.json()["candidate_sha256"].clone();
    let paused = send(p.admin, "POST", "/plugins/gate/rollout/pause", &[], "").await?.json();
    assert_eq!((paused["state"].as_str(), paused["paused"].as_bool()), (Some("running"), Some(true)));
    let promoted = send(p.admin, "POST", "/plugins/gate/rollout/promote", &[], "").await?.json();
    assert_eq!(promoted["state"], "promoted");
    assert_eq!(promoted["percent"], 100.0);
    for _ in 0..20 {
        assert_eq!(get(web, "/").await?.header("x-wat"), "second");
    }
    let listed = get(p.admin, "/plugins").await?.json();
    assert_eq!(listed[0]["sha256"], candidate_sha);
    assert_eq!(listed[0]["previous_sha256"], stable_sha, "the old stable version stays for rollback");

    // A plain upload behaves as before and ends nothing it should not: no rollout runs beside it.
    assert_eq!(reqwest_put(p.admin, "/plugins/gate", marking_plugin("third")).await?.status, 200);
    assert_eq!(get(web, "/").await?.header("x-wat"), "third");
    assert_eq!(get(p.admin, "/plugins/gate/rollout").await?.status, 404);

    // A reload that changes the plugin's configuration rebuilds it from its file and ends a running rollout.
    let put = reqwest_put(p.admin, "/plugins/gate?rollout=50", marking_plugin("fourth")).await?;
    assert_eq!(put.json()["state"], "running");
    let text = std::fs::read_to_string(&p.config_path)?.replace("rollout = {", "instances = 1\nrollout = {");
    p.rewrite(&text);
    assert_eq!(send(p.admin, "POST", "/config/reload", &[], "").await?.status, 200);
    assert_eq!(get(p.admin, "/plugins/gate/rollout").await?.status, 404);
    for _ in 0..20 {
        assert_eq!(get(web, "/").await?.header("x-wat"), "stable");
    }
    let metrics = String::from_utf8_lossy(&get(p.admin, "/metrics").await?.body).into_owned();
    assert!(metrics.contains("portico_plugin_rollout_state{plugin=\"gate\",state=\"aborted\"} 1"), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn bad_rollout_tables_are_refused_with_their_key() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("portico.toml");
    let text = config_text("steps = [50, 20], max_error_ratio = 2, sticky = \"query:x\", use_detector = true");
    std::fs::write(&path, text)?;
    let issues = portico::config::load(&path).err().unwrap_or_default();
    let keys: Vec<_> = issues.iter().map(|i| i.key.clone()).collect();
    for key in ["steps", "max_error_ratio", "sticky", "use_detector"] {
        assert!(keys.contains(&format!("plugin[0].rollout.{key}")), "{key} not among {keys:?}");
    }
    std::fs::write(&path, config_text("step_count = 3"))?;
    assert!(portico::config::load(&path).is_err(), "unknown keys are refused");
    Ok(())
}

fn config_text(rollout: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\
         filters = [\"gate\"]\n\n[[upstream]]\nname = \"app\"\nendpoints = [\"127.0.0.1:9\"]\n\n[[plugin]]\nname = \"gate\"\n\
         wasm = \"gate.wasm\"\nrollout = {{ {rollout} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_runs_the_anomaly_hooks_and_posts_the_webhook() -> TestResult {
    let app = TestUpstream::start("app").await;
    let (webhook, received) = crate::anomaly::webhook_receiver().await?;
    let dir = tempfile::tempdir()?;
    let stable = dir.path().join("gate.wasm");
    std::fs::write(&stable, marking_plugin("stable"))?;
    let hook_out = dir.path().join("alert.json");
    let script = dir.path().join("hook.sh");
    std::fs::write(&script, format!("#!/bin/sh\ncat > {0}.tmp\nmv {0}.tmp {0}\n", hook_out.display()))?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let config = config(&app, &stable, "step_interval = \"1h\"")
        + &format!(
            "\n[anomaly]\nwebhooks = [\"http://{webhook}/alerts\"]\n\n[[anomaly.hook]]\nname = \"on-rollback\"\n\
             on = {{ series = \"plugin.*.rollout\" }}\nexec = [\"{}\"]\ntimeout = \"5s\"\n",
            script.display()
        );
    let p = Portico::start(&config).await;
    let web = p.addr("web").await;
    let put = reqwest_put(p.admin, "/plugins/gate?rollout=50", refusing_plugin()).await?;
    assert_eq!(put.status, 200, "{:?}", put.body);
    let stop = Arc::new(AtomicBool::new(false));
    let (_seen, tasks) = load(web, 2, stop.clone());
    let ended = wait_rollout(&p, |r| r["state"] != "running").await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    assert_eq!(ended?["state"], "rolled_back");

    let posted =
        eventually(Duration::from_secs(60), || received.lock().iter().any(|body| body.contains("rollout_rolled_back")))
            .await;
    assert!(posted, "no webhook for the rollback: {:?}", received.lock());
    let body = received.lock().iter().find(|b| b.contains("rollout_rolled_back")).cloned().unwrap_or_default();
    let payload: serde_json::Value = serde_json::from_str(&body)?;
    let alert = &payload["alerts"][0];
    assert_eq!(alert["labels"]["alertname"], "rollout_rolled_back");
    assert_eq!(alert["labels"]["plugin"], "gate");
    assert_eq!(alert["labels"]["series"], "plugin.gate.rollout");
    assert_eq!(alert["annotations"]["candidate_sha256"], put.json()["candidate_sha256"]);
    assert!(alert["annotations"]["description"].as_str().is_some_and(|d| d.contains("error ratio")), "{alert}");

    assert!(eventually(Duration::from_secs(60), || hook_out.exists()).await, "the hook did not run");
    let hooked: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&hook_out)?)?;
    assert_eq!(hooked["series"], "plugin.gate.rollout", "{hooked}");
    assert_eq!(hooked["severity"], "critical");
    Ok(())
}

/// Traps in its request headers callback.
fn trapping_plugin() -> Vec<u8> {
    wat_plugin(&[], r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) unreachable)"#)
}

/// Spins for about 10^8 loop iterations (tens of milliseconds or more) on every request, then lets it through.
fn slow_plugin() -> Vec<u8> {
    wat_plugin(
        &[],
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $i i32)
    (local.set $i (i32.const 100000000))
    (block $done (loop $spin
      (br_if $done (i32.eqz (local.get $i)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br $spin)))
    (i32.const 0))"#,
    )
}

/// Runs `clients` clients against the rollout until it ends; returns its final state and every answer.
async fn until_ended(
    p: &Portico,
    clients: usize,
) -> Result<(serde_json::Value, Vec<Seen>), Box<dyn std::error::Error + Send + Sync>> {
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, tasks) = load(p.addr("web").await, clients, stop.clone());
    let ended = wait_rollout(p, |r| r["state"] != "running").await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    Ok((ended?, taken(&seen)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_trapping_open_is_rolled_back_for_its_plugin_failures() -> TestResult {
    // Failing open, the trapping candidate answers no 5xx: only the plugin-failure guard can see it.
    let (_app, p, _dir) = start("step_interval = \"1h\"").await?;
    let text = std::fs::read_to_string(&p.config_path)?.replace("rollout = {", "fail = \"open\"\nrollout = {");
    p.rewrite(&text);
    assert_eq!(send(p.admin, "POST", "/config/reload", &[], "").await?.status, 200);
    let put = reqwest_put(p.admin, "/plugins/gate?rollout=50", trapping_plugin()).await?;
    assert_eq!(put.status, 200, "{:?}", put.body);
    let (ended, seen) = until_ended(&p, 2).await?;
    assert_eq!(ended["state"], "rolled_back", "{ended}");
    assert!(ended["reason"].as_str().is_some_and(|r| r.starts_with("plugin failures")), "{ended}");
    assert!(ended["guards"]["candidate"]["plugin_failures"].as_u64() > Some(0), "{ended}");
    assert!(seen.iter().all(|s| s.0 == 200), "failing open, no request failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slower_candidate_is_rolled_back_by_the_latency_guard() -> TestResult {
    let (_app, p, _dir) = start("step_interval = \"1h\", max_latency_increase = \"20ms\"").await?;
    let text = std::fs::read_to_string(&p.config_path)?.replace("rollout = {", "cpu_limit = \"10s\"\nrollout = {");
    p.rewrite(&text);
    assert_eq!(send(p.admin, "POST", "/config/reload", &[], "").await?.status, 200);
    let put = reqwest_put(p.admin, "/plugins/gate?rollout=50", slow_plugin()).await?;
    assert_eq!(put.status, 200, "{:?}", put.body);
    let (ended, seen) = until_ended(&p, 2).await?;
    assert_eq!(ended["state"], "rolled_back", "{ended}");
    assert!(ended["reason"].as_str().is_some_and(|r| r.starts_with("p99 latency")), "{ended}");
    assert!(seen.iter().all(|s| s.0 == 200), "a slow candidate fails no request");
    println!("latency guard: {}", ended["reason"]);
    Ok(())
}

#[tokio::test]
async fn a_request_keeps_its_version_when_the_rollout_ends_under_it() -> TestResult {
    let (app, p, _dir) = start("steps = [100], step_interval = \"1h\"").await?;
    let web = p.addr("web").await;
    let put = reqwest_put(p.admin, "/plugins/gate?rollout=100", marking_plugin("candidate")).await?;
    assert_eq!(put.status, 200, "{:?}", put.body);
    // A request meets the candidate (100 %) in its request phase and waits at the upstream...
    app.set(Behavior::Delay(Duration::from_secs(5)));
    let in_flight = tokio::spawn(async move { get(web, "/").await });
    assert!(eventually(Duration::from_secs(60), || app.hits() == 1).await);
    // ...while the rollout is aborted: new requests meet the stable version,
    let aborted = send(p.admin, "POST", "/plugins/gate/rollout/abort", &[], "").await?;
    assert_eq!(aborted.json()["state"], "aborted");
    assert!(!in_flight.is_finished(), "the abort came after the response; nothing was tested");
    // but the one in flight finishes its response phase on the candidate.
    let answer = in_flight.await??;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-wat"), "candidate");
    app.set(Behavior::Echo);
    assert_eq!(get(web, "/").await?.header("x-wat"), "stable");
    Ok(())
}

#[tokio::test]
async fn rollout_writes_need_the_admin_token() -> TestResult {
    let app = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let stable = dir.path().join("gate.wasm");
    std::fs::write(&stable, marking_plugin("stable"))?;
    let text = config(&app, &stable, "").replace("[admin]\n", "[admin]\ntoken = \"s3cret\"\n");
    let p = Portico::start(&text).await;
    assert_eq!(reqwest_put(p.admin, "/plugins/gate?rollout=50", marking_plugin("c")).await?.status, 401);
    for action in ["promote", "abort", "pause", "resume"] {
        let path = format!("/plugins/gate/rollout/{action}");
        assert_eq!(send(p.admin, "POST", &path, &[], "").await?.status, 401, "{action}");
        let answer = send(p.admin, "POST", &path, &[("authorization", "Bearer s3cret")], "").await?;
        assert_eq!(answer.status, 404, "{action} with the token reaches the route: {:?}", answer.body);
    }
    Ok(())
}
