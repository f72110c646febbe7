//! Issue 15, parts 7 to 9: admin bodies and plugin state are bounded, accept loops back off when descriptors
//! run out, `portico check` reports every problem with its key and line, and filters on a forward listener are
//! refused.

use crate::support::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_portico");

#[tokio::test]
async fn admin_routes_refuse_large_bodies() -> TestResult {
    let up = TestUpstream::start("app").await;
    let p = Portico::start(&reverse_config(&quoted(&[&up]), "")).await;
    let ep = up.addr.to_string();
    let path = format!("/upstreams/app/endpoints/{ep}/weight");
    let big = format!("{{\"weight\": 5, \"pad\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    assert_eq!(send(p.admin, "PUT", &path, &[], &big).await?.status, 413);
    // Chunked, without a length to refuse up front: refused once 1 MiB has been read.
    let mut stream = TcpStream::connect(p.admin).await?;
    let head =
        format!("PUT {path} HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n", p.admin);
    stream.write_all(head.as_bytes()).await?;
    let chunk = vec![b'x'; 64 * 1024];
    let mut reply = Vec::new();
    for _ in 0..40 {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    use tokio::io::AsyncReadExt;
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut reply)).await;
    assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 413"), "{}", String::from_utf8_lossy(&reply));
    // A small body still works.
    assert_eq!(send(p.admin, "PUT", &path, &[], "{\"weight\": 5}").await?.status, 200);
    Ok(())
}

/// A module whose `proxy_on_request_headers` runs `body` (which leaves an ABI status in `$s`) and answers with
/// status 400 + that status, so the test sees what the host told the guest.
fn status_plugin(body: &str) -> Result<Vec<u8>, wat::Error> {
    wat::parse_str(format!(
        r#"(module
  (import "env" "proxy_register_shared_queue" (func $reg (param i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $enq (param i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $local (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (data (i32.const 1024) "q")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $i i32) (local $s i32)
    {body}
    (drop (call $local (i32.add (i32.const 400) (local.get $s))
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)))
    (i32.const 1)))"#
    ))
}

/// Portico with `module` as the filter of its listener; the answer to one request.
async fn answer_through(module: Vec<u8>) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    let up = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let wasm = dir.path().join("caps.wasm");
    std::fs::write(&wasm, module)?;
    let config = reverse_config(&quoted(&[&up]), "")
        .replace("upstream = \"app\"\n", "upstream = \"app\"\nfilters = [\"caps\"]\n")
        + &format!(
            "\n[[plugin]]\nname = \"caps\"\nwasm = \"{}\"\ncpu_limit = \"20s\"\ninstances = 1\n",
            wasm.display()
        );
    let p = Portico::start(&config).await;
    Ok(get(p.addr("web").await, "/caps").await?)
}

/// A plugin that fills a shared queue: the queue stops at its cap and the guest gets INTERNAL_FAILURE (10).
#[tokio::test]
async fn a_plugin_cannot_grow_a_shared_queue_without_bound() -> TestResult {
    let module = status_plugin(
        r#"(local.set $s (call $reg (i32.const 1024) (i32.const 1) (i32.const 512)))
    (if (i32.eqz (local.get $s)) (then
      (block $done (loop $next
        (local.set $s (call $enq (i32.load (i32.const 512)) (i32.const 1024) (i32.const 1)))
        (br_if $done (local.get $s))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $next (i32.lt_u (local.get $i) (i32.const 20000)))))))"#,
    )?;
    let answer = answer_through(module).await?;
    assert_eq!(answer.status, 410, "the 10,001st entry must fail with INTERNAL_FAILURE: {answer:?}");
    Ok(())
}

/// A guest metric name over 256 bytes is refused with BAD_ARGUMENT (2), and so is the 1,001st metric name
/// (INTERNAL_FAILURE, 10): each would be a Prometheus series for the life of the process.
#[tokio::test]
async fn a_plugin_cannot_define_metrics_without_bound() -> TestResult {
    let long_name =
        status_plugin("(local.set $s (call $define (i32.const 0) (i32.const 2048) (i32.const 300) (i32.const 512)))")?;
    assert_eq!(answer_through(long_name).await?.status, 402);
    // Names "m" followed by three letters from the counter: distinct for 17,576 metrics.
    let many = status_plugin(
        r#"(i32.store8 (i32.const 2048) (i32.const 109))
    (block $done (loop $next
      (i32.store8 (i32.const 2049) (i32.add (i32.const 97) (i32.rem_u (local.get $i) (i32.const 26))))
      (i32.store8 (i32.const 2050) (i32.add (i32.const 97) (i32.rem_u (i32.div_u (local.get $i) (i32.const 26)) (i32.const 26))))
      (i32.store8 (i32.const 2051) (i32.add (i32.const 97) (i32.div_u (local.get $i) (i32.const 676))))
      (local.set $s (call $define (i32.const 0) (i32.const 2048) (i32.const 4) (i32.const 512)))
      (br_if $done (local.get $s))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $i) (i32.const 5000)))))"#,
    )?;
    assert_eq!(answer_through(many).await?.status, 410);
    Ok(())
}

#[tokio::test]
async fn filters_on_a_forward_listener_are_refused() -> TestResult {
    let p = Portico::start(&forward_config(443, "")).await;
    let with_filters =
        forward_config(443, "filters = [\"lb\"]") + "\n[[plugin]]\nname = \"lb\"\nwasm = \"builtin:balancer\"\n";
    p.rewrite(&with_filters);
    let refused = send(p.admin, "POST", "/config/reload", &[], "").await?;
    assert_eq!(refused.status, 400);
    let body = String::from_utf8_lossy(&refused.body).into_owned();
    assert!(body.contains("listener[0].filters") && body.contains("reverse-proxy listeners only"), "{body}");
    Ok(())
}

#[test]
fn check_reports_every_problem_with_its_key_and_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\
         tls = { cert = \"/nonexistent/c.pem\", key = \"/nonexistent/k.pem\" }\nheader_read_timeout = \"5\"\n\n\
         [[upstream]]\nname = \"app\"\nendpoints = [\"127.0.0.1:9\"]\n",
    )?;
    let out = std::process::Command::new(BIN).args(["check", "-c"]).arg(&file).output()?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 9: listener[0].header_read_timeout: duration \"5\" has no unit"), "{stderr}");
    assert!(stderr.contains("line 8: listener[0].tls.cert: cannot read /nonexistent/c.pem"), "{stderr}");
    assert!(stderr.contains("line 8: listener[0].tls.key: cannot read /nonexistent/k.pem"), "{stderr}");
    Ok(())
}

/// CPU time (user + system, in clock ticks) a process has used, from `/proc/PID/stat`.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// With its file descriptors exhausted, a real Portico backs off in its accept loops (listener and admin) instead
/// of spinning, says so, and serves again once descriptors are free.
#[tokio::test]
async fn accept_loops_back_off_when_descriptors_run_out() -> TestResult {
    let up = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let port = || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port());
    let (admin, web) = (port()?, port()?);
    let config = dir.path().join("portico.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:{web}\"\n\
             upstream = \"app\"\nheader_read_timeout = \"60s\"\n\n[[upstream]]\nname = \"app\"\nendpoints = [\"{}\"]\n",
            up.addr
        ),
    )?;
    let log = dir.path().join("portico.log");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n 64 && exec {BIN} --log-level warn run --workers 1 -c {}", config.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let (admin, web) = (SocketAddr::from(([127, 0, 0, 1], admin)), SocketAddr::from(([127, 0, 0, 1], web)));
    let result = async {
        assert!(
            eventually_served(admin, "/healthz").await,
            "portico did not start: {}",
            std::fs::read_to_string(&log)?
        );
        // Idle connections until accept fails for want of descriptors.
        let mut held = Vec::new();
        for _ in 0..100 {
            held.push(TcpStream::connect(web).await?);
        }
        held.push(TcpStream::connect(admin).await?);
        let said = async {
            for _ in 0..600 {
                if std::fs::read_to_string(&log).is_ok_and(|l| l.contains("out of file descriptors")) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        };
        assert!(said.await, "no back-off logged: {}", std::fs::read_to_string(&log)?);
        // Spinning would burn a core: over 3 s of exhaustion, a backing-off process uses a small fraction of one.
        let before = cpu_ticks(child.id()).ok_or("no /proc stat")?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let used = cpu_ticks(child.id()).ok_or("no /proc stat")? - before;
        assert!(used < 50, "{used} ticks of CPU in 3 s while out of descriptors: the accept loop spins");
        drop(held);
        assert!(eventually_served(web, "/again").await, "no recovery once descriptors are free");
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// A bump allocator from 4 KiB on, the ABI marker and an empty context callback: what a test module needs to
/// load.
const BUMP_ALLOCATOR: &str = r#"  (global $heap (mut i32) (i32.const 4096))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))"#;

/// A plugin that pauses a request in its headers and never resumes it (no callout, no tick) has failed it
/// once `pause_timeout` passes: answered by its `fail` policy, 503 when closed, passed on when open. Before,
/// the request and its connection were held for as long as the client waited.
#[tokio::test]
async fn a_pause_nobody_resumes_fails_by_the_plugins_policy() -> TestResult {
    let module = wat::parse_str(format!(
        r#"(module
  (memory (export "memory") 1)
{BUMP_ALLOCATOR}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 1)))"#
    ))?;
    let up = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let wasm = dir.path().join("pause.wasm");
    std::fs::write(&wasm, module)?;
    for (fail, expected) in [("closed", 503), ("open", 200)] {
        let config = reverse_config(&quoted(&[&up]), "")
            .replace("upstream = \"app\"\n", "upstream = \"app\"\nfilters = [\"pauser\"]\n")
            + &format!(
                "\n[[plugin]]\nname = \"pauser\"\nwasm = \"{}\"\nfail = \"{fail}\"\npause_timeout = \"1s\"\n",
                wasm.display()
            );
        let p = Portico::start(&config).await;
        let started = std::time::Instant::now();
        let answer = send(p.addr("web").await, "GET", "/paused", &[], "").await?;
        assert_eq!(answer.status, expected, "fail = {fail}: {:?}", answer.body);
        assert!(started.elapsed() < Duration::from_secs(20), "fail = {fail}: {:?}", started.elapsed());
    }
    Ok(())
}

/// A version that is replaced stops ticking while it is kept for a rollback (once its own paused streams had
/// a `pause_timeout` to be resumed), and ticks again once rolled back to: a probe's replaced version went on
/// burning CPU in its ticks for as long as it was kept.
#[tokio::test]
async fn a_replaced_version_does_not_tick_until_it_serves_again() -> TestResult {
    let ticking = wat::parse_str(format!(
        r#"(module
  (import "env" "proxy_set_tick_period_milliseconds" (func $period (param i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $inc (param i32 i64) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "ticks")
{BUMP_ALLOCATOR}
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $define (i32.const 0) (i32.const 1024) (i32.const 5) (i32.const 2048)))
    (drop (call $period (i32.const 10)))
    (i32.const 1))
  (func (export "proxy_on_tick") (param i32)
    (drop (call $inc (i32.load (i32.const 2048)) (i64.const 1)))))"#
    ))?;
    let quiet = wat::parse_str(
        r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32)))"#,
    )?;
    let up = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let wasm = dir.path().join("ticker.wasm");
    std::fs::write(&wasm, &ticking)?;
    let config = reverse_config(&quoted(&[&up]), "")
        .replace("upstream = \"app\"\n", "upstream = \"app\"\nfilters = [\"ticker\"]\n")
        + &format!(
            "\n[[plugin]]\nname = \"ticker\"\nwasm = \"{}\"\ninstances = 1\npause_timeout = \"1s\"\n",
            wasm.display()
        );
    let p = Portico::start(&config).await;
    let ticks = || async {
        let scrape = get(p.admin, "/metrics").await.map(|a| String::from_utf8_lossy(&a.body).into_owned());
        scrape.ok().and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("portico_plugin_counter{") && l.contains("name=\"ticks\""))
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        })
    };
    let mut counted = 0;
    for _ in 0..100 {
        counted = ticks().await.unwrap_or(0);
        if counted >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(counted >= 5, "the version ticks ({counted})");
    let client = put_bytes(p.admin, "/plugins/ticker", &quiet).await?;
    assert_eq!(client, 200);
    // Its ticks go on for a pause_timeout (1 s here), for its own streams still in flight, then stop.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after_swap = ticks().await.unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = ticks().await.unwrap_or(0);
    assert!(later <= after_swap + 2, "the replaced version went on ticking: {after_swap} -> {later}");
    let back = send(p.admin, "POST", "/plugins/ticker/rollback", &[], "").await?;
    assert_eq!(back.status, 200, "{:?}", back.body);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rolled = ticks().await.unwrap_or(0);
    assert!(rolled >= later + 5, "the version rolled back to ticks again: {later} -> {rolled}");
    Ok(())
}

/// PUT of binary bytes (the `send` helper takes text).
async fn put_bytes(addr: SocketAddr, path: &str, body: &[u8]) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    use tokio::io::AsyncReadExt;
    let mut stream = TcpStream::connect(addr).await?;
    let head =
        format!("PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut reply)).await??;
    let status = String::from_utf8_lossy(&reply).split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(status)
}

/// The series a plugin version defined leave `/metrics` once that version is gone (no longer serving nor kept
/// for a rollback): a probe's uploads, each defining 1,000 new names, grew `/metrics` to 76 MB for good.
#[tokio::test]
async fn a_gone_versions_metrics_leave_the_scrape() -> TestResult {
    let version = |name: &str| {
        wat::parse_str(format!(
            r#"(module
  (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "{name}")
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $define (i32.const 0) (i32.const 1024) (i32.const {len}) (i32.const 2048)))
    (i32.const 1)))"#,
            len = name.len()
        ))
    };
    let up = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let wasm = dir.path().join("metrics.wasm");
    std::fs::write(&wasm, version("first_series")?)?;
    let config = reverse_config(&quoted(&[&up]), "")
        .replace("upstream = \"app\"\n", "upstream = \"app\"\nfilters = [\"counting\"]\n")
        + &format!("\n[[plugin]]\nname = \"counting\"\nwasm = \"{}\"\n", wasm.display());
    let p = Portico::start(&config).await;
    let scrape = || async { get(p.admin, "/metrics").await.map(|a| String::from_utf8_lossy(&a.body).into_owned()) };
    assert!(scrape().await?.contains("name=\"first_series\""));
    assert_eq!(put_bytes(p.admin, "/plugins/counting", &version("second_series")?).await?, 200);
    // Kept for a rollback: its series stay.
    let text = scrape().await?;
    assert!(text.contains("name=\"first_series\"") && text.contains("name=\"second_series\""), "{text}");
    assert_eq!(put_bytes(p.admin, "/plugins/counting", &version("third_series")?).await?, 200);
    let mut text = String::new();
    for _ in 0..200 {
        text = scrape().await?;
        if !text.contains("name=\"first_series\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!text.contains("name=\"first_series\""), "the first version's series stayed");
    assert!(text.contains("name=\"second_series\"") && text.contains("name=\"third_series\""), "{text}");
    Ok(())
}

/// An upload refused because it fails to start does not add its failures to the running version's (the
/// counter is by plugin name): `GET /plugins` showed `timeout` and `memory` failures on a healthy version
/// after refused uploads.
#[tokio::test]
async fn a_refused_uploads_failures_are_not_the_running_versions() -> TestResult {
    let quiet = wat::parse_str(format!("(module (memory (export \"memory\") 1)\n{BUMP_ALLOCATOR})"))?;
    let trapping = wat::parse_str(format!(
        "(module (memory (export \"memory\") 1)\n{BUMP_ALLOCATOR}\n  (func (export \"proxy_on_vm_start\") (param i32 i32) (result i32) unreachable))"
    ))?;
    let up = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let wasm = dir.path().join("quiet.wasm");
    std::fs::write(&wasm, &quiet)?;
    let config = reverse_config(&quoted(&[&up]), "")
        .replace("upstream = \"app\"\n", "upstream = \"app\"\nfilters = [\"steady\"]\n")
        + &format!("\n[[plugin]]\nname = \"steady\"\nwasm = \"{}\"\n", wasm.display());
    let p = Portico::start(&config).await;
    assert_eq!(put_bytes(p.admin, "/plugins/steady", &trapping).await?, 422);
    let plugins = get(p.admin, "/plugins").await?.json();
    let steady = plugins.as_array().and_then(|all| all.iter().find(|p| p["name"] == "steady")).cloned();
    let failures = steady.map(|s| s["failures"].clone()).unwrap_or_default();
    assert!(failures.get("trap").is_none_or(|n| n == 0), "{failures}");
    Ok(())
}
