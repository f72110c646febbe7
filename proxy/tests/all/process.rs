//! The real `portico` binary: `check` exit codes (plugins included), start-up errors printed once,
//! `run` with SIGHUP reload, SIGTERM graceful drain, JSON logs carrying the trace id, and `check --health` for
//! keepalived.

use crate::support::*;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_portico");

fn process_config(admin: u16, web: u16, endpoint: SocketAddr) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"

[[listener]]
name = "web"
listen = "127.0.0.1:{web}"
upstream = "app"

[[upstream]]
name = "app"
endpoints = ["{endpoint}"]
"#
    )
}

struct Running {
    child: Child,
    admin: SocketAddr,
    web: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn spawn_portico(
    config: &Path,
    admin: u16,
    web: u16,
    log: &Path,
) -> Result<Running, Box<dyn std::error::Error + Send + Sync>> {
    let child = Command::new(BIN)
        .args(["--log-format", "json", "--log-level", "debug", "run", "--grace", "5s", "-c"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    let running = Running {
        child,
        admin: SocketAddr::from(([127, 0, 0, 1], admin)),
        web: SocketAddr::from(([127, 0, 0, 1], web)),
    };
    for _ in 0..200 {
        if get(running.admin, "/healthz").await.is_ok_and(|a| a.status == 200) {
            return Ok(running);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!("portico did not come up: {}", std::fs::read_to_string(log).unwrap_or_default()).into())
}

fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).unwrap_or(0);
    // kill(1) rather than libc::kill: the workspace forbids unsafe code, tests included.
    let status = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{sig} {pid}");
}

#[test]
fn check_exits_zero_for_a_good_file_and_one_with_reasons_for_a_bad_one() -> TestResult {
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.toml");
    std::fs::write(&good, process_config(9901, 8080, "127.0.0.1:9".parse()?))?;
    let out = Command::new(BIN).args(["check", "-c"]).arg(&good).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        process_config(9901, 8080, "127.0.0.1:9".parse()?)
            .replace("upstream = \"app\"", "upstream = \"ap\"\nbogus = 1"),
    )?;
    let out = Command::new(BIN).args(["check", "-c"]).arg(&bad).output()?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bogus"), "{stderr}");
    assert!(stderr.contains("line"), "{stderr}");
    Ok(())
}

/// A module declaring proxy-wasm ABI 0.1.0, which `run` refuses.
fn abi_0_1_0_module() -> Result<Vec<u8>, wat::Error> {
    wat::parse_str(
        r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_1_0"))
             (func (export "malloc") (param i32) (result i32) (i32.const 0)))"#,
    )
}

/// `process_config` plus a `[[plugin]]` named `name` loading `wasm`, in front of the web listener.
fn config_with_plugin(dir: &Path, name: &str, wasm: &[u8], extra: &str) -> Result<std::path::PathBuf, std::io::Error> {
    let module = dir.join(format!("{name}.wasm"));
    std::fs::write(&module, wasm)?;
    let config = dir.join(format!("{name}.toml"));
    let [admin, web] = free_ports()?;
    let text = process_config(admin, web, "127.0.0.1:9".parse().map_err(std::io::Error::other)?)
        .replace("upstream = \"app\"\n", &format!("upstream = \"app\"\nfilters = [\"{name}\"]\n"))
        + &format!("\n[[plugin]]\nname = \"{name}\"\nwasm = \"{}\"\n{extra}", module.display());
    std::fs::write(&config, text)?;
    Ok(config)
}

#[test]
fn check_loads_every_plugin_and_refuses_what_run_refuses() -> TestResult {
    let dir = tempfile::tempdir()?;
    let c_plugin = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/tests/data/add_header.wasm"))?;
    let good = config_with_plugin(dir.path(), "hdr", &c_plugin, "config = \"v1\"\n")?;
    let out = Command::new(BIN).args(["check", "-c"]).arg(&good).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 plugins"), "{}", String::from_utf8_lossy(&out.stdout));

    // A module whose ABI `run` refuses.
    let old = config_with_plugin(dir.path(), "old", &abi_0_1_0_module()?, "")?;
    let out = Command::new(BIN).args(["check", "-c"]).arg(&old).output()?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("plugin old") && stderr.contains("ABI 0.1.0"), "{stderr}");

    // A module that refuses its configuration in proxy_on_configure (the C plugin wants a non-empty one).
    let unconfigured = config_with_plugin(dir.path(), "bare", &c_plugin, "")?;
    let out = Command::new(BIN).args(["check", "-c"]).arg(&unconfigured).output()?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("plugin bare: configuration rejected"), "{stderr}");
    Ok(())
}

#[test]
fn a_start_up_error_is_one_line_without_a_backtrace() -> TestResult {
    let dir = tempfile::tempdir()?;
    let old = config_with_plugin(dir.path(), "old", &abi_0_1_0_module()?, "")?;
    let out = Command::new(BIN).args(["run", "-c"]).arg(&old).env("RUST_BACKTRACE", "1").output()?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("Error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("plugin old") && errors[0].contains("ABI 0.1.0"), "{stderr}");
    assert_eq!(stderr.matches("ABI 0.1.0").count(), 1, "the reason is printed once: {stderr}");
    assert!(!stderr.contains("Caused by"), "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn sighup_reloads_and_sigterm_drains_in_flight_requests() -> TestResult {
    let slow = TestUpstream::start_with("slow", Behavior::Delay(Duration::from_millis(1500))).await;
    let other = TestUpstream::start("other").await;
    let dir = tempfile::tempdir()?;
    let [admin, web] = free_ports()?;
    let config = dir.path().join("portico.toml");
    let log = dir.path().join("portico.log");
    std::fs::write(&config, process_config(admin, web, other.addr))?;
    let mut running = spawn_portico(&config, admin, web, &log).await?;

    // JSON logs carry the incoming trace id.
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    assert_eq!(send(running.web, "GET", "/", &[("traceparent", parent)], "").await?.header("x-upstream"), "other");

    // SIGHUP re-reads the file.
    std::fs::write(&config, process_config(admin, web, slow.addr))?;
    signal(&running.child, libc::SIGHUP);
    let switched = async {
        for _ in 0..100 {
            if slow.hits() > 0 {
                return true;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), get(running.web, "/probe")).await;
        }
        false
    };
    assert!(switched.await, "SIGHUP did not switch the upstream");

    // SIGTERM while a request is in flight: it completes, then the process exits 0. A kept-alive connection
    // with no request in flight is closed at once rather than holding the drain up to its grace period (5 s).
    let web_addr = running.web;
    let mut idle = tokio::net::TcpStream::connect(web_addr).await?;
    let idle_answer = raw_exchange(&mut idle, b"GET /idle HTTP/1.1\r\nHost: a\r\n\r\n").await?;
    assert!(idle_answer.starts_with("HTTP/1.1 200"), "{idle_answer}");
    let before = slow.hits();
    let in_flight = tokio::spawn(get(web_addr, "/in-flight"));
    // And one over HTTP/2 (h2c), whose connection is shut down with a GOAWAY.
    let tcp = tokio::net::TcpStream::connect(web_addr).await?;
    let (mut h2, h2_conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    let h2_conn = tokio::spawn(h2_conn);
    let h2_in_flight =
        tokio::spawn(h2.send_request(http::Request::get("http://a/h2-in-flight").body(Empty::<bytes::Bytes>::new())?));
    // The requests are in flight once the upstream has them (not after a guessed sleep).
    assert!(
        eventually(Duration::from_secs(30), || slow.hits() >= before + 2).await,
        "the requests reached the upstream"
    );
    signal(&running.child, libc::SIGTERM);
    let mut rest = [0u8; 64];
    let closed =
        tokio::time::timeout(Duration::from_secs(3), tokio::io::AsyncReadExt::read(&mut idle, &mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the idle connection stayed open after SIGTERM: {closed:?}");
    // Stopping, the HTTP/2 connection soon takes no new stream (a GOAWAY; streams the client opens before it
    // has read it may still be served, RFC 9113 §6.8) but finishes the one in flight. Without the GOAWAY new
    // streams would be served until the grace period ends.
    slow.set(Behavior::Echo);
    let refused = async {
        for i in 0..100 {
            let late = http::Request::get(format!("http://a/after-sigterm/{i}")).body(Empty::<bytes::Bytes>::new())?;
            let sent = async {
                h2.ready().await?;
                h2.send_request(late).await
            };
            if sent.await.is_err() {
                return Ok::<_, http::Error>(true);
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        Ok(false)
    };
    let refused = tokio::time::timeout(Duration::from_secs(3), refused).await;
    assert!(matches!(refused, Ok(Ok(true))), "the HTTP/2 connection kept taking streams after SIGTERM");
    let answer = in_flight.await??;
    assert_eq!(answer.status, 200);
    assert_eq!(h2_in_flight.await??.status(), 200, "the HTTP/2 request in flight completes");
    let ended = tokio::time::timeout(Duration::from_secs(3), h2_conn).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "the HTTP/2 connection ends cleanly once drained: {ended:?}");
    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = running.child.try_wait()? {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = exited.ok_or("portico did not exit after SIGTERM")?;
    assert!(status.success(), "exit status {status:?}");

    let logs = std::fs::read_to_string(&log)?;
    let line = logs
        .lines()
        .find(|l| l.contains("0af7651916cd43dd8448eb211c80319c"))
        .ok_or_else(|| format!("no log line carries the trace id:\n{logs}"))?;
    let parsed: serde_json::Value = serde_json::from_str(line)?;
    assert_eq!(parsed["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    Ok(())
}

#[tokio::test]
async fn check_health_reports_exit_status_for_keepalived() -> TestResult {
    let upstream = TestUpstream::start("a").await;
    let dir = tempfile::tempdir()?;
    let [admin, web] = free_ports()?;
    let config = dir.path().join("portico.toml");
    std::fs::write(&config, process_config(admin, web, upstream.addr))?;
    let running = spawn_portico(&config, admin, web, &dir.path().join("log")).await?;
    let url = format!("http://{}/healthz", running.admin);
    let up =
        tokio::task::spawn_blocking(move || Command::new(BIN).args(["check", "--health", &url]).status()).await??;
    assert!(up.success());
    drop(running);
    let url = format!("http://127.0.0.1:{admin}/healthz");
    let down =
        tokio::task::spawn_blocking(move || Command::new(BIN).args(["check", "--health", &url]).status()).await??;
    assert!(!down.success());
    Ok(())
}

#[test]
fn the_shipped_example_configurations_validate() -> TestResult {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for file in ["portico.toml", "cluster/node1.toml", "cluster/node2.toml", "cluster/node3.toml"] {
        let out = Command::new(BIN).args(["check", "-c"]).arg(examples.join(file)).output()?;
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

#[test]
fn anomaly_score_writes_one_scored_row_per_input_row() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.csv");
    let mut csv = String::from("timestamp,value\n");
    for i in 0..400 {
        let noise = ((i * 7919) % 13) as f64 / 13.0;
        let value = if (300..305).contains(&i) { 500.0 } else { 100.0 + 5.0 * noise };
        csv.push_str(&format!("{},{value}\n", 1_700_000_000 + i));
    }
    std::fs::write(&input, csv)?;
    let output = dir.path().join("out.csv");
    let out =
        Command::new(BIN).args(["anomaly", "score", "--input"]).arg(&input).arg("--output").arg(&output).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let scored = std::fs::read_to_string(&output)?;
    let mut lines = scored.lines();
    assert_eq!(lines.next(), Some("timestamp,value,anomaly_score"));
    let scores: Vec<f64> = lines.map(|l| l.rsplit(',').next().and_then(|s| s.parse().ok()).unwrap_or(-1.0)).collect();
    assert_eq!(scores.len(), 400, "one output row per input row");
    assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)), "scores in [0, 1]");
    let before = scores[200..300].iter().cloned().fold(0.0, f64::max);
    let spike = scores[300..306].iter().cloned().fold(0.0, f64::max);
    assert!(spike > 0.9 && before < 0.5, "spike scored {spike}, the calm before {before}");
    // The same through a pipe: `-` is standard input and output, and the summary moves to standard error.
    let mut child = Command::new(BIN)
        .args(["anomaly", "score", "--input", "-", "--output", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        child.stdin.take().ok_or("stdin")?.write_all(&std::fs::read(&input)?)?;
    }
    let piped = child.wait_with_output()?;
    assert!(piped.status.success(), "{}", String::from_utf8_lossy(&piped.stderr));
    assert_eq!(String::from_utf8(piped.stdout)?, scored, "the pipe writes exactly what the file got");
    assert!(String::from_utf8_lossy(&piped.stderr).contains("400 rows scored"));
    Ok(())
}

#[test]
fn anomaly_train_is_deterministic_for_a_seed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("series.csv");
    let mut csv = String::from("timestamp,listener.web.qps,upstream.app.latency_p99\n");
    for i in 0..3000 {
        let t = i as f64 / 30.0;
        csv.push_str(&format!("{i},{:.3},{:.3}\n", 500.0 + 80.0 * t.sin(), 20.0 + 3.0 * (t * 0.7).cos()));
    }
    std::fs::write(&data, csv)?;
    let mut models = Vec::new();
    for run in 0..2 {
        let out = dir.path().join(format!("model{run}.safetensors"));
        let result = Command::new(BIN)
            .args(["anomaly", "train", "--epochs", "2", "--seed", "7", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .output()?;
        let stdout = String::from_utf8_lossy(&result.stdout);
        assert!(result.status.success(), "{stdout}{}", String::from_utf8_lossy(&result.stderr));
        assert!(stdout.contains("validation loss"), "{stdout}");
        assert!(out.with_extension("json").exists(), "the JSON sidecar is written beside the weights");
        models.push(std::fs::read(&out)?);
    }
    assert_eq!(models[0], models[1], "same seed and data, same weights");
    Ok(())
}

#[test]
fn the_demo_runs_on_embedded_defaults_and_only_the_faulty_release_fails_requests_until_its_rollback() -> TestResult {
    let out =
        Command::new(BIN).args(["--log-level", "error", "demo", "--duration", "20s", "--concurrency", "4"]).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("beta goes down") && stdout.contains("gamma turns slow"), "{stdout}");
    let summary = stdout.lines().find(|l| l.starts_with("Summary:")).ok_or_else(|| format!("no summary:\n{stdout}"))?;
    // Beta's crash and gamma's slowdown fail no request; the faulty router release fails some of those it meets
    // before its guards roll it back by themselves, and none after.
    let failed = |text: &str| -> Option<u64> { text.split_whitespace().rev().find_map(|w| w.parse().ok()) };
    let (all, by_release) = summary
        .trim_end_matches(" by router v2 during its rollout).")
        .split_once(" failed (")
        .and_then(|(all, by)| Some((failed(all)?, by.parse::<u64>().ok()?)))
        .ok_or_else(|| format!("the summary does not count the release's failures: {summary}"))?;
    assert_eq!(all, by_release, "only the faulty release failed requests: {summary}");
    assert!(
        stdout.contains("router v2 rolls out to 10 %") && stdout.contains("router v2 rolled back by itself"),
        "{stdout}"
    );
    let rolled_back = stdout.lines().find(|l| l.trim_start().starts_with("rolled back ")).unwrap_or_default();
    assert!(rolled_back.contains("by itself"), "{stdout}");
    assert!(stdout.contains("; 0 after the rollback"), "{stdout}");
    assert!(stdout.contains("Latency fault timeline:"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("incidents: ")), "the summary counts incidents: {stdout}");
    // Portico's own log lines go to a file named at the start, not between the demo's table rows.
    let log = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Portico's log: "))
        .and_then(|l| l.split_whitespace().next())
        .ok_or_else(|| format!("no log file named:\n{stdout}"))?;
    assert!(std::path::Path::new(log).exists(), "{log}");
    assert!(!stdout.contains(" INFO ") && !stdout.contains(" WARN "), "{stdout}");
    Ok(())
}

/// Sends `raw` on `stream` and reads one answer (whatever arrives first).
async fn raw_exchange(stream: &mut tokio::net::TcpStream, raw: &[u8]) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(raw).await?;
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
