//! Self-watching: Portico samples its own series, the detector alerts when the upstream starts failing, the
//! remediation hook runs with the alert on stdin, the webhook receives Alertmanager JSON, and the admin API
//! serves scores, alerts, actions, the series (Arrow and JSON) and a live event stream.

use crate::metrics::check_with_promtool;
use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Records the bodies POSTed to it.
pub(crate) async fn webhook_receiver() -> Result<(std::net::SocketAddr, Arc<Mutex<Vec<String>>>), std::io::Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let store = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let store = store.clone();
                    async move {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        store.lock().push(String::from_utf8_lossy(&body).into_owned());
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok((addr, received))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_raises_an_alert_runs_the_hook_and_posts_the_webhook() -> TestResult {
    let app = TestUpstream::start("app").await;
    let (webhook, received) = webhook_receiver().await?;
    let dir = tempfile::tempdir()?;
    let hook_out = dir.path().join("alert.json");
    let script = dir.path().join("hook.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat > {}.tmp\necho >> {0}.tmp\necho \"$PORTICO_ALERT_SERIES\" >> {}.tmp\nmv {0}.tmp {0}\n",
            hook_out.display(),
            hook_out.display()
        ),
    )?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let config = reverse_config(&quoted(&[&app]), "retries = 0")
        + &format!(
            r#"
[anomaly]
interval = "50ms"
warmup = 30
webhooks = ["http://{webhook}/alerts"]
thresholds = {{ warning = 0.7, critical = 0.9, for_ticks = 2, resolve_ticks = 3 }}

[[anomaly.hook]]
name = "record"
on = {{ series = "*.error_ratio" }}
exec = ["{}"]
timeout = "5s"
cooldown = "1m"
"#,
            script.display()
        );
    let p = Portico::start(&config).await;
    let web = p.addr("web").await;

    // Steady traffic: the detector learns what normal looks like.
    let load = tokio::spawn(async move {
        loop {
            let _ = get(web, "/").await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    // 50 ticks of normal traffic (warmup is 30), then wait until the series is scored: a busy machine may lag.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut scores = serde_json::Value::Null;
    for _ in 0..600 {
        scores = get(p.admin, "/anomaly/scores").await?.json();
        if scores.get("upstream.app.error_ratio").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(scores.get("upstream.app.error_ratio").is_some(), "series are sampled: {scores}");

    // The upstream starts failing every request.
    app.set(Behavior::Status(500));
    let mut alert = serde_json::Value::Null;
    for _ in 0..600 {
        let alerts = get(p.admin, "/anomaly/alerts").await?.json();
        if let Some(found) =
            alerts["active"].as_array().and_then(|a| a.iter().find(|a| a["series"] == "upstream.app.error_ratio"))
        {
            alert = found.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alert.is_null(), "no alert on upstream.app.error_ratio within 30 s of the upstream failing");

    // One incident: the failing endpoint's error ratio is its cause, the upstream's and the listener's are
    // symptoms, and the hook ran once, for the cause, with the alert and its incident as JSON on stdin.
    let cause = format!("endpoint.app.{}.error_ratio", app.addr);
    let ran = eventually(Duration::from_secs(30), || hook_out.exists()).await;
    assert!(ran, "the remediation hook did not run");
    let written = std::fs::read_to_string(&hook_out)?;
    let (stdin_json, env_series) = written.trim_end().rsplit_once('\n').ok_or("no env line")?;
    let stdin: serde_json::Value = serde_json::from_str(stdin_json)?;
    assert_eq!(stdin["series"], cause.as_str(), "{written}");
    assert_eq!(env_series, cause, "{written}");
    let symptoms: Vec<&str> = stdin["incident"]["symptoms"]
        .as_array()
        .ok_or("symptoms")?
        .iter()
        .filter_map(|m| m["alert"]["series"].as_str())
        .collect();
    assert!(symptoms.contains(&"upstream.app.error_ratio"), "{symptoms:?}");
    let incidents = get(p.admin, "/anomaly/incidents").await?.json();
    let first = &incidents[0];
    assert_eq!(first["cause"]["alert"]["series"], cause.as_str(), "{incidents}");
    assert_eq!(first["cause"]["scope"]["level"], "endpoint", "{incidents}");
    assert!(first["opened_at"].is_i64() && first["id"].is_string(), "{incidents}");
    let mut actions = serde_json::Value::Null;
    for _ in 0..100 {
        actions = get(p.admin, "/anomaly/actions").await?.json();
        if actions[0]["hook"] == "record" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(actions[0]["hook"], "record", "the audit log records the run: {actions}");

    // The webhook got Alertmanager's format.
    let posted = eventually(Duration::from_secs(5), || !received.lock().is_empty()).await;
    assert!(posted, "no webhook post");
    let found = eventually(Duration::from_secs(5), || {
        received.lock().iter().any(|body| body.contains("\"series\":\"upstream.app.error_ratio\""))
    })
    .await;
    assert!(found, "no webhook for the upstream's series: {:?}", received.lock());
    let bodies = received.lock().clone();
    let body = bodies.iter().find(|b| b.contains("upstream.app.error_ratio")).ok_or("no payload")?;
    let payload: serde_json::Value = serde_json::from_str(body)?;
    assert_eq!(payload["version"], "4");
    assert_eq!(payload["status"], "firing");
    assert_eq!(payload["groupLabels"]["incident"], first["id"], "one group per incident");
    assert_eq!(payload["alerts"][0]["labels"]["series"], cause.as_str());
    assert_eq!(payload["alerts"][0]["labels"]["role"], "cause");

    // Scores are metrics; the series export reads as Arrow IPC and as JSON.
    let metrics = String::from_utf8(get(p.admin, "/metrics").await?.body.to_vec())?;
    check_with_promtool(&metrics)?;
    assert!(metrics.contains(r#"portico_anomaly_score{series="upstream.app.error_ratio"}"#), "{metrics}");
    let active = metrics
        .lines()
        .find_map(|l| l.strip_prefix("portico_anomaly_active "))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0);
    assert!(active >= 1, "portico_anomaly_active is {active}");
    let arrow = get(p.admin, "/anomaly/series?format=arrow").await?;
    assert_eq!(arrow.header("content-type"), "application/vnd.apache.arrow.stream");
    assert_eq!(&arrow.body[..4], &[0xff, 0xff, 0xff, 0xff], "Arrow IPC stream continuation marker");
    let rows = get(p.admin, "/anomaly/series?format=json").await?.json();
    assert!(rows.as_array().is_some_and(|r| r.len() > 20), "{rows}");
    load.abort();
    Ok(())
}

#[tokio::test]
async fn the_event_stream_sends_scores_as_server_sent_events() -> TestResult {
    let app = TestUpstream::start("app").await;
    let config = reverse_config(&quoted(&[&app]), "") + "\n[anomaly]\ninterval = \"50ms\"\n";
    let p = Portico::start(&config).await;
    let mut stream = tokio::net::TcpStream::connect(p.admin).await?;
    stream.write_all(format!("GET /anomaly/events HTTP/1.1\r\nHost: {}\r\n\r\n", p.admin).as_bytes()).await?;
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("event: scores") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
        assert!(n > 0, "stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("content-type: text/event-stream"), "{seen}");
    assert!(seen.contains("data: {\"type\":\"scores\""), "{seen}");
    Ok(())
}

/// Event streams outlive the admin API's idle timeout, so they are bounded: past 64 open ones the next is
/// refused (503) until one closes.
#[tokio::test]
async fn event_streams_are_bounded() -> TestResult {
    let app = TestUpstream::start("app").await;
    let config = reverse_config(&quoted(&[&app]), "") + "\n[anomaly]\ninterval = \"50ms\"\n";
    let p = Portico::start(&config).await;
    let open = |admin: std::net::SocketAddr| async move {
        let mut stream = tokio::net::TcpStream::connect(admin).await?;
        stream.write_all(format!("GET /anomaly/events HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes()).await?;
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await??;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((stream, String::from_utf8_lossy(&buf[..n]).into_owned()))
    };
    let mut streams = Vec::new();
    for i in 0..64 {
        let (stream, head) = open(p.admin).await?;
        assert!(head.starts_with("HTTP/1.1 200"), "stream {i}: {head}");
        streams.push(stream);
    }
    let (_, refused) = open(p.admin).await?;
    assert!(refused.starts_with("HTTP/1.1 503") && refused.contains("event streams"), "{refused}");
    // The admin API still answers everything else.
    assert_eq!(get(p.admin, "/healthz").await?.status, 200);
    // A stream that closes gives its place back once the server notices (at its next event).
    drop(streams.pop());
    let mut reopened = false;
    for _ in 0..50 {
        let (_, head) = open(p.admin).await?;
        if head.starts_with("HTTP/1.1 200") {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reopened, "the closed stream's place was not given back");
    Ok(())
}

#[tokio::test]
async fn without_an_anomaly_table_the_routes_say_so() -> TestResult {
    let app = TestUpstream::start("app").await;
    let p = Portico::start(&reverse_config(&quoted(&[&app]), "")).await;
    let answer = get(p.admin, "/anomaly/alerts").await?;
    assert_eq!(answer.status, 404);
    assert!(String::from_utf8_lossy(&answer.body).contains("[anomaly]"));
    Ok(())
}

#[tokio::test]
async fn the_shipped_drain_slowest_script_drains_the_slow_endpoint_through_the_admin_api() -> TestResult {
    let fast = TestUpstream::start("fast").await;
    let slow = TestUpstream::start_with("slow", Behavior::Delay(Duration::from_millis(80))).await;
    let p = Portico::start(&reverse_config(&quoted(&[&fast, &slow]), "")).await;
    for _ in 0..20 {
        get(p.addr("web").await, "/").await?;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/remediation/drain-slowest.sh");
    let admin = format!("http://{}", p.admin);
    let out = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new("sh")
            .arg(&script)
            .env("PORTICO_ADMIN_URL", admin)
            .env("PORTICO_ALERT_SERIES", "upstream.app.latency_p99")
            .env("PORTICO_ALERT_ID", "upstream.app.latency_p99@1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            std::io::Write::write_all(&mut stdin, br#"{"series":"upstream.app.latency_p99","severity":"critical"}"#)?;
        }
        child.wait_with_output()
    })
    .await??;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    let upstreams = get(p.admin, "/upstreams").await?.json();
    let status = |addr: String| {
        upstreams[0]["endpoints"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["address"] == addr.as_str()))
            .map(|e| e["status"].clone())
    };
    assert_eq!(status(slow.addr.to_string()), Some(serde_json::json!("drained")), "{said} {upstreams}");
    assert_eq!(status(fast.addr.to_string()), Some(serde_json::json!("healthy")));
    Ok(())
}

#[tokio::test]
async fn a_missing_or_corrupt_model_turns_detection_off_and_portico_keeps_proxying() -> TestResult {
    let app = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let corrupt = dir.path().join("corrupt.safetensors");
    std::fs::write(&corrupt, b"definitely not safetensors")?;
    std::fs::write(dir.path().join("corrupt.json"), b"{ not json")?;
    for model in [dir.path().join("missing.safetensors"), corrupt] {
        let config = reverse_config(&quoted(&[&app]), "") + &format!("\n[anomaly]\nmodel = \"{}\"\n", model.display());
        let p = Portico::start(&config).await;
        assert_eq!(get(p.addr("web").await, "/").await?.status, 200, "proxying goes on");
        let status = get(p.admin, "/anomaly/alerts").await?;
        assert_eq!(status.status, 503);
        let reason = String::from_utf8_lossy(&status.body).into_owned();
        assert!(
            reason.contains("failed to start")
                && reason.contains(&*model.file_stem().unwrap_or_default().to_string_lossy()),
            "{reason}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorder_drives_a_real_portico_and_writes_labelled_arrow_series() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = portico::demo::record::RecordOptions {
        out: dir.path().to_path_buf(),
        scenario: "error_burst".into(),
        duration: Duration::from_secs(5),
        interval: Duration::from_millis(100),
        seed: 3,
        rate: 150.0,
        concurrency: 8,
    };
    let done = portico::demo::record::record(&options).await?;
    assert_eq!(done.len(), 1);
    assert!(done[0].requests > 200, "the load generator ran: {done:?}");

    // The labels name the fault, its series and a tick range inside the recording.
    let labels = portico_anomaly::eval::read_labels(&dir.path().join("labels.csv"))?;
    assert_eq!(labels.len(), 1, "{labels:?}");
    let fault = &labels[0];
    assert_eq!((fault.scenario.as_str(), fault.kind.as_str()), ("error_burst", "error_burst"));
    assert!(fault.series.iter().any(|s| s == "upstream.demo.error_ratio"), "{fault:?}");
    assert!(fault.start_tick >= 10 && fault.start_tick + 5 < fault.end_tick, "{fault:?}");
    assert!(fault.end_tick <= done[0].ticks, "{fault:?} {done:?}");

    // The store's rotated Arrow IPC files load with the training loader, and the burst is in the series.
    let files = portico_anomaly::eval::scenario_files(dir.path(), "error_burst")?;
    assert!(!files.is_empty(), "no Arrow files written");
    let series = portico_anomaly::train::load_series(&files)?;
    assert!(series.iter().any(|(name, _)| name.ends_with(".upstream.demo.error_ratio")), "error ratio recorded");
    assert!(series.iter().any(|(name, _)| name.ends_with(".process.cpu")), "CPU is sampled too");

    // The evaluation's loader reads the same recording back with rows aligned to the label ticks (the
    // training loader drops a series' empty first rows), and the burst is where the labels say.
    let scenarios = portico_anomaly::eval::load_recording(dir.path(), "")?;
    assert_eq!(scenarios.len(), 1);
    assert_eq!(scenarios[0].table.timestamps.len(), done[0].ticks);
    let errors: Vec<f64> = scenarios[0]
        .table
        .columns
        .get("upstream.demo.error_ratio")
        .ok_or("no error ratio column")?
        .iter()
        .map(|v| v.unwrap_or(0.0))
        .collect();
    let mean = |r: std::ops::Range<usize>| errors[r.clone()].iter().sum::<f64>() / r.len().max(1) as f64;
    let (before, during) = (mean(2..fault.start_tick - 1), mean(fault.start_tick + 1..fault.end_tick - 1));
    assert!(before < 0.01 && during > 0.03, "error ratio before {before}, during {during}: {errors:?}");
    Ok(())
}
