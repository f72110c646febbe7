//! OpenTelemetry traces through a real OTLP/HTTP receiver on loopback: a Python server decoding with the
//! official `opentelemetry-proto` package. Spans arrive parented as a tracing backend would draw them (the
//! client's span → Portico's server span → one client span per upstream attempt, the upstream seeing its
//! attempt's span as parent), with the HTTP semantic-convention attributes and Portico's own; a collector that
//! accepts connections and never answers costs no request anything.

use crate::support::*;
use parking_lot::Mutex;
use serde_json::Value;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The receiver process and the spans it printed.
struct Receiver {
    port: u16,
    spans: Arc<Mutex<Vec<Value>>>,
    _child: tokio::process::Child,
}

impl Receiver {
    async fn start() -> Result<Receiver, String> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/all/otlp_receiver.py");
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("python3 is needed for the OTLP receiver: {e}"))?;
        let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .map_err(|_| "the OTLP receiver did not start within 60 s")?
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let port = first.strip_prefix("listening ").and_then(|p| p.parse().ok()).ok_or_else(|| {
            format!("the OTLP receiver needs `opentelemetry-proto` from PyPI (scripts/setup.sh installs it): {first}")
        })?;
        let spans: Arc<Mutex<Vec<Value>>> = Arc::default();
        let store = spans.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(span) = serde_json::from_str(&line) {
                    store.lock().push(span);
                }
            }
        });
        Ok(Receiver { port, spans, _child: child })
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Value> {
        self.spans.lock().iter().filter(|s| s["trace_id"] == trace_id).cloned().collect()
    }
}

const SERVER: u64 = 2;
const CLIENT: u64 = 3;
const ERROR: u64 = 2;
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_parented_and_with_http_attributes() -> TestResult {
    let receiver = Receiver::start().await?;
    let (good, bad) = (TestUpstream::start("good").await, TestUpstream::start_with("bad", Behavior::Status(503)).await);
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"
upstream = "app"
filters = ["lb"]

[[upstream]]
name = "app"
endpoints = ["{}", "{}"]
retries = 1

[[plugin]]
name = "lb"
wasm = "builtin:balancer"
config = {{ policy = "round_robin" }}

[telemetry]
otlp_endpoint = "http://127.0.0.1:{}"
service_name = "portico-test"
sample_ratio = 1.0
"#,
        good.addr, bad.addr, receiver.port
    );
    let p = Portico::start(&config).await;
    let web = p.addr("web").await;

    // A caller that decided not to sample: Portico records nothing and tells the upstream so.
    let unsampled = "5bf92f3577b34da6a3ce929d0e0e4736";
    let answer =
        send(web, "GET", "/quiet", &[("traceparent", &format!("00-{unsampled}-{CALLER_SPAN}-00"))], "").await?;
    assert_eq!(answer.status, 200);
    assert!(answer.json()["headers"]["traceparent"].as_str().is_some_and(|t| t.ends_with("-00")), "{answer:?}");

    // Sampled callers; round robin sends some first to the endpoint that answers 503, and those are retried.
    let mut seen_upstream = Vec::new();
    for i in 0..4 {
        let trace_id = format!("4bf92f3577b34da6a3ce929d0e0e47{i:02}");
        let parent = format!("00-{trace_id}-{CALLER_SPAN}-01");
        let answer =
            send(web, "GET", "/x/../traced?user=secret", &[("traceparent", &parent), ("host", "test.local")], "")
                .await?;
        assert_eq!(answer.status, 200, "{answer:?}");
        let upstream_saw = answer.json()["headers"]["traceparent"].as_str().unwrap_or_default().to_string();
        seen_upstream.push((trace_id, upstream_saw));
    }

    let all_arrived = eventually(Duration::from_secs(60), || {
        seen_upstream.iter().all(|(trace_id, _)| receiver.of_trace(trace_id).iter().any(|s| s["kind"] == SERVER))
    })
    .await;
    assert!(all_arrived, "spans of every traced request reach the receiver: {:?}", receiver.spans.lock());

    let mut retried = 0;
    for (trace_id, upstream_saw) in &seen_upstream {
        let spans = receiver.of_trace(trace_id);
        let servers: Vec<&Value> = spans.iter().filter(|s| s["kind"] == SERVER).collect();
        assert_eq!(servers.len(), 1, "one server span per request: {spans:?}");
        let server = servers[0];
        assert_eq!(server["parent_span_id"], CALLER_SPAN, "child of the caller's span: {server}");
        assert_eq!(server["name"], "GET");
        assert_eq!(server["resource"]["service.name"], "portico-test");
        let a = &server["attributes"];
        assert_eq!(a["http.request.method"], "GET", "{server}");
        assert_eq!(a["url.path"], "/x/../traced", "the path as received, without the query: {server}");
        assert_eq!(a["url.scheme"], "http");
        assert_eq!(a["http.response.status_code"], 200);
        assert_eq!(a["server.address"], "test.local");
        assert_eq!(a["client.address"], "127.0.0.1");
        assert_eq!(a["portico.listener"], "web");
        assert_eq!(a["portico.upstream"], "app");
        assert_eq!(a["portico.endpoint"], good.addr.to_string());
        assert_eq!(a["portico.plugins"], serde_json::json!(["lb"]));
        assert_eq!(a["portico.plugins.picked_endpoint"], true, "the balancer plugin picked: {server}");

        let mut attempts: Vec<&Value> = spans.iter().filter(|s| s["kind"] == CLIENT).collect();
        attempts.sort_by_key(|s| s["start"].as_u64());
        assert!(!attempts.is_empty(), "a span per upstream attempt: {spans:?}");
        assert_eq!(a["portico.retries"], attempts.len() as u64 - 1, "{server}");
        for attempt in &attempts {
            assert_eq!(attempt["parent_span_id"], server["span_id"], "attempts are children of the server span");
            assert!(
                attempt["start"].as_u64() >= server["start"].as_u64()
                    && attempt["end"].as_u64() <= server["end"].as_u64()
            );
        }
        let last = attempts[attempts.len() - 1];
        assert_eq!(last["attributes"]["http.response.status_code"], 200);
        assert_eq!(last["attributes"]["portico.endpoint"], good.addr.to_string());
        let sent = format!("http://{}/traced", good.addr);
        assert_eq!(last["attributes"]["url.full"], sent, "the path sent upstream, resolved, without the query");
        let expected = format!("00-{trace_id}-{}-01", last["span_id"].as_str().unwrap_or_default());
        assert_eq!(upstream_saw, &expected, "the upstream's parent is its attempt's span");
        if attempts.len() == 2 {
            retried += 1;
            let first = &attempts[0];
            assert_eq!(first["attributes"]["http.response.status_code"], 503);
            assert_eq!(first["attributes"]["server.port"], bad.addr.port());
            assert_eq!(first["attributes"]["error.type"], "503");
            assert_eq!(first["status"], ERROR);
            assert_eq!(last["attributes"]["http.request.resend_count"], 1);
        }
    }
    assert!(retried >= 1, "round robin sent at least one request to the failing endpoint first");
    // The unsampled request finished before the sampled ones, whose spans are all in: it would be too.
    assert!(receiver.of_trace(unsampled).is_empty(), "an unsampled request is not recorded");

    let metrics = String::from_utf8(get(p.admin, "/metrics").await?.body.to_vec())?;
    assert!(metric(&metrics, "portico_telemetry_spans_exported_total") >= 8.0, "{metrics}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_fails_no_request() -> TestResult {
    // Accepts connections and holds them without a word, like a hung collector.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hole_addr = hole.local_addr()?;
    let held: Arc<Mutex<Vec<tokio::net::TcpStream>>> = Arc::default();
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = hole.accept().await {
            keep.lock().push(stream);
        }
    });
    let app = TestUpstream::start("app").await;
    let config = reverse_config(&quoted(&[&app]), "")
        + &format!("\n[telemetry]\notlp_endpoint = \"http://{hole_addr}\"\nsample_ratio = 1.0\n");
    let p = Portico::start(&config).await;
    let web = p.addr("web").await;

    let mut failed = Vec::new();
    for i in 0..200 {
        match get(web, "/").await {
            Ok(answer) if answer.status == 200 => {}
            other => failed.push((i, format!("{other:?}"))),
        }
    }
    assert!(failed.is_empty(), "requests failed while the collector hung: {failed:?}");

    // The exporter did try, gave up on the post, and counted the spans it dropped.
    let counted = eventually_metrics(p.admin, Duration::from_secs(60), |m| {
        metric(m, "portico_telemetry_export_failures_total") >= 1.0
            && metric(m, r#"portico_telemetry_spans_dropped_total{reason="export_failed"}"#) >= 1.0
    })
    .await;
    assert!(counted, "the failed export is counted");
    assert!(!held.lock().is_empty(), "the exporter connected to the collector");
    Ok(())
}

/// The value of one sample line of a Prometheus exposition (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn eventually_metrics(admin: std::net::SocketAddr, limit: Duration, cond: impl Fn(&str) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if let Ok(answer) = get(admin, "/metrics").await {
            if cond(&String::from_utf8_lossy(&answer.body)) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
