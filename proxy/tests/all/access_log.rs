//! Access logs: a line per answered request in the listener's file, written once the response has gone out
//! (bytes and duration whole), JSON or nginx's `combined`; files are reopened on reload (logrotate), and a file
//! Portico cannot write is refused with the reason.

use crate::support::*;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A reverse listener in front of `up` whose `access_log` lines go to `log` (`format`, when given).
fn logging_config(up: &TestUpstream, log: &Path, format: Option<&str>) -> String {
    let mut keys = format!("access_log = {:?}\n", log.display().to_string());
    if let Some(format) = format {
        keys.push_str(&format!("access_log_format = \"{format}\"\n"));
    }
    reverse_config(&quoted(&[up]), "").replacen("upstream = \"app\"\n", &format!("upstream = \"app\"\n{keys}"), 1)
}

/// The file's lines once it has at least `count` (the writer is a thread of its own), within 30 s.
async fn lines(path: &Path, count: usize) -> Vec<String> {
    let mut found = Vec::new();
    eventually(Duration::from_secs(30), || {
        found = std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect();
        found.len() >= count
    })
    .await;
    found
}

#[tokio::test]
async fn json_lines_tell_each_request_once_its_response_is_sent() -> TestResult {
    let up = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("access.log");
    let p = Portico::start(&logging_config(&up, &log, None)).await;
    let web = p.addr("web").await;
    let headers = [("user-agent", "probe/1 \"quoted\""), ("referer", "https://example.test/")];
    let first = send(web, "GET", "/hello?x=1", &headers, "").await?;
    assert_eq!(first.status, 200);
    up.set(Behavior::Large(3 * 1024 * 1024));
    let large = send(web, "GET", "/large", &[], "").await?;
    assert_eq!(large.body.len(), 3 * 1024 * 1024);
    up.set(Behavior::Status(503));
    assert_eq!(send(web, "POST", "/fail", &[], "body").await?.status, 503);

    let found = lines(&log, 3).await;
    assert_eq!(found.len(), 3, "{found:?}");
    let entries: Vec<serde_json::Value> =
        found.iter().map(|l| serde_json::from_str(l).unwrap_or(serde_json::Value::Null)).collect();
    let by_target = |t: &str| entries.iter().find(|e| e["target"] == t).cloned().unwrap_or_default();
    let hello = by_target("/hello?x=1");
    assert_eq!(hello["method"], "GET");
    assert_eq!(hello["status"], 200);
    assert_eq!(hello["listener"], "web");
    assert_eq!(hello["protocol"], "HTTP/1.1");
    assert_eq!(hello["user_agent"], "probe/1 \"quoted\"");
    assert_eq!(hello["referer"], "https://example.test/");
    assert_eq!(hello["upstream"], "app");
    assert_eq!(hello["endpoint"], up.addr.to_string());
    assert_eq!(hello["request_id"], first.header("x-request-id"));
    assert_eq!(hello["bytes_sent"], first.body.len());
    assert_eq!(hello["complete"], true);
    assert!(hello["duration_ms"].as_f64().is_some_and(|d| d > 0.0), "{hello}");
    assert!(hello["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{hello}");
    // A body streamed from the upstream is counted as it goes out.
    let large = by_target("/large");
    assert_eq!(large["bytes_sent"], 3 * 1024 * 1024, "{large}");
    assert_eq!(large["complete"], true);
    let fail = by_target("/fail");
    assert_eq!((fail["method"].as_str(), fail["status"].as_u64()), (Some("POST"), Some(503)), "{fail}");
    Ok(())
}

#[tokio::test]
async fn combined_lines_read_as_nginx_writes_them() -> TestResult {
    let up = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("access.log");
    let p = Portico::start(&logging_config(&up, &log, Some("combined"))).await;
    let web = p.addr("web").await;
    let answer = send(web, "GET", "/a%20b?q", &[("user-agent", "curl/8.5")], "").await?;
    let found = lines(&log, 1).await;
    let line = found.first().cloned().unwrap_or_default();
    let expected_tail = format!("\"GET /a%20b?q HTTP/1.1\" 200 {} \"-\" \"curl/8.5\"", answer.body.len());
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.ends_with(&expected_tail), "{line}\n{expected_tail}");
    assert!(line.contains(" +0000] "), "{line}");
    Ok(())
}

#[tokio::test]
async fn a_response_the_client_leaves_is_logged_incomplete() -> TestResult {
    let up = TestUpstream::start_with("app", Behavior::Large(64 * 1024 * 1024)).await;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("access.log");
    let p = Portico::start(&logging_config(&up, &log, None)).await;
    let web = p.addr("web").await;
    let mut stream = TcpStream::connect(web).await?;
    stream.write_all(format!("GET /big HTTP/1.1\r\nHost: {web}\r\n\r\n").as_bytes()).await?;
    let mut some = vec![0u8; 64 * 1024];
    let _ = stream.read_exact(&mut some).await?;
    drop(stream);
    let found = lines(&log, 1).await;
    let entry: serde_json::Value = serde_json::from_str(found.first().map_or("", String::as_str))?;
    assert_eq!(entry["complete"], false, "{entry}");
    assert!(entry["bytes_sent"].as_u64().is_some_and(|b| b < 64 * 1024 * 1024), "{entry}");
    Ok(())
}

#[tokio::test]
async fn a_reload_reopens_the_file_logrotate_moved() -> TestResult {
    let up = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("access.log");
    let p = Portico::start(&logging_config(&up, &log, None)).await;
    let web = p.addr("web").await;
    send(web, "GET", "/before", &[], "").await?;
    assert_eq!(lines(&log, 1).await.len(), 1);
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated)?;
    assert_eq!(send(p.admin, "POST", "/config/reload", &[], "").await?.status, 200);
    send(web, "GET", "/after", &[], "").await?;
    let fresh = lines(&log, 1).await;
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert!(fresh[0].contains("\"/after\""), "{fresh:?}");
    let old = std::fs::read_to_string(&rotated)?;
    assert!(old.contains("\"/before\"") && !old.contains("\"/after\""), "{old}");
    // Rotated again, and the reload refused (a typo in the file): the log is reopened all the same.
    std::fs::rename(&log, dir.path().join("access.log.2"))?;
    p.rewrite("this is not toml [");
    assert_ne!(send(p.admin, "POST", "/config/reload", &[], "").await?.status, 200);
    send(web, "GET", "/refused-reload", &[], "").await?;
    let fresh = lines(&log, 1).await;
    assert!(fresh.len() == 1 && fresh[0].contains("\"/refused-reload\""), "{fresh:?}");
    Ok(())
}

/// A response the client takes nothing of is given up at `send_timeout`, and its line is written then, while
/// the client still holds the connection.
#[tokio::test]
async fn a_response_given_up_by_the_send_timeout_is_logged_then() -> TestResult {
    let up = TestUpstream::start_with("app", Behavior::Large(64 * 1024 * 1024)).await;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("access.log");
    let config = logging_config(&up, &log, None).replacen(
        "upstream = \"app\"\n",
        "upstream = \"app\"\nsend_timeout = \"1s\"\n",
        1,
    );
    let p = Portico::start(&config).await;
    let web = p.addr("web").await;
    let mut stream = TcpStream::connect(web).await?;
    stream.write_all(format!("GET /stalled HTTP/1.1\r\nHost: {web}\r\n\r\n").as_bytes()).await?;
    let found = lines(&log, 1).await;
    let entry: serde_json::Value = serde_json::from_str(found.first().map_or("", String::as_str))?;
    assert_eq!((entry["target"].as_str(), entry["complete"].as_bool()), (Some("/stalled"), Some(false)), "{entry}");
    assert!(entry["duration_ms"].as_f64().is_some_and(|d| d < 20_000.0), "{entry}");
    drop(stream);
    Ok(())
}

#[tokio::test]
async fn a_file_portico_cannot_write_is_refused_with_the_reason() -> TestResult {
    let up = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("access.log");
    let p = Portico::start(&logging_config(&up, &log, None)).await;
    // A directory that does not exist: the reload is refused and the running configuration keeps logging.
    let missing = dir.path().join("no-such-dir").join("access.log");
    p.rewrite(&logging_config(&up, &missing, None));
    let refused = send(p.admin, "POST", "/config/reload", &[], "").await?;
    assert!(refused.status.is_client_error() || refused.status.is_server_error(), "{:?}", refused.status);
    let reason = String::from_utf8_lossy(&refused.body).into_owned();
    assert!(reason.contains("access log") && reason.contains("no-such-dir"), "{reason}");
    send(p.addr("web").await, "GET", "/still", &[], "").await?;
    assert_eq!(lines(&log, 1).await.len(), 1);
    assert!(!missing.exists());
    // A format without a file is a configuration mistake, with its key.
    let config = reverse_config(&quoted(&[&up]), "").replacen(
        "upstream = \"app\"\n",
        "upstream = \"app\"\naccess_log_format = \"combined\"\n",
        1,
    );
    let path = dir.path().join("formatless.toml");
    std::fs::write(&path, config)?;
    let issues = format!("{:?}", portico::config::load(&path).expect_err("refused"));
    assert!(issues.contains("listener[0].access_log_format"), "{issues}");
    Ok(())
}

/// A request whose client goes away before the response head (here an HTTP/2 stream reset while the upstream
/// is slow) is logged with nginx's 499, "client closed request".
#[tokio::test]
async fn a_request_the_client_gave_up_on_is_logged_499() -> TestResult {
    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let up = TestUpstream::start_with("app", Behavior::Delay(Duration::from_secs(5))).await;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("access.log");
    let p = Portico::start(&logging_config(&up, &log, None)).await;
    let tcp = TcpStream::connect(p.addr("web").await).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let response = sender.send_request(http::Request::get("http://a/given-up").body(Empty::<Bytes>::new())?);
    // Dropping the response future resets the stream.
    let _ = tokio::time::timeout(Duration::from_millis(300), response).await;
    let found = lines(&log, 1).await;
    let entry: serde_json::Value = serde_json::from_str(found.first().map_or("", String::as_str))?;
    assert_eq!((entry["target"].as_str(), entry["status"].as_u64()), (Some("/given-up"), Some(499)), "{entry}");
    assert_eq!(entry["complete"], false);
    assert_eq!(entry["endpoint"], up.addr.to_string());
    Ok(())
}

/// The same over HTTP/1: the client closes its connection while the upstream is slow; the request is dropped
/// (its upstream exchange cancelled, as nginx does) and logged 499.
#[tokio::test]
async fn an_http1_client_that_closes_before_its_answer_is_logged_499() -> TestResult {
    let up = TestUpstream::start_with("app", Behavior::Delay(Duration::from_secs(5))).await;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("access.log");
    let p = Portico::start(&logging_config(&up, &log, None)).await;
    let web = p.addr("web").await;
    let mut stream = TcpStream::connect(web).await?;
    stream.write_all(format!("GET /left HTTP/1.1\r\nHost: {web}\r\n\r\n").as_bytes()).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);
    let found = lines(&log, 1).await;
    let entry: serde_json::Value = serde_json::from_str(found.first().map_or("", String::as_str))?;
    assert_eq!((entry["target"].as_str(), entry["status"].as_u64()), (Some("/left"), Some(499)), "{entry}");
    assert!(entry["duration_ms"].as_f64().is_some_and(|d| d < 4_000.0), "{entry}");
    Ok(())
}

/// `portico check` opens the access logs as `run` would (as `nginx -t` does): a file it cannot open fails the
/// check with the reason, instead of passing a configuration `run` refuses.
#[test]
fn check_refuses_an_access_log_that_cannot_be_opened() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("portico.toml");
    let text = reverse_config(&["\"127.0.0.1:9\"".to_string()], "").replacen(
        "upstream = \"app\"\n",
        "upstream = \"app\"\naccess_log = \"no-such-dir/access.log\"\n",
        1,
    );
    std::fs::write(&config, text)?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portico")).args(["check", "-c"]).arg(&config).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no-such-dir/access.log") && stderr.contains("No such file"), "{stderr}");
    Ok(())
}
