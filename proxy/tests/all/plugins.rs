//! WebAssembly filters through a real Portico: a C plugin built with zig, header rewrites both ways, local
//! answers, fail-closed and fail-open traps, routing and endpoint choice by plugin, hot swap by upload, by
//! file change and by reload, refusal of bad modules, and rollback; body callbacks (rewrites both ways,
//! buffering across chunks, body-based local answers, traps, streaming past the buffer limit); an auth plugin
//! that pauses on an HTTP callout to another upstream group.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn c_plugin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/tests/data/add_header.wasm")
}

/// A hand-written proxy-wasm module: memory, allocator, ABI marker, the given strings at 1024, 1088, 1152, …
/// (64 bytes apart) and `body` (functions and exports).
pub(crate) fn wat_plugin(strings: &[&str], body: &str) -> Vec<u8> {
    let data: String =
        strings.iter().enumerate().map(|(i, s)| format!("(data (i32.const {}) \"{}\")\n", 1024 + 64 * i, s)).collect();
    let text = format!(
        r#"(module
  (import "env" "proxy_set_property" (func $set_prop (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_hdr (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buf (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buf (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $local (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call"
    (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_hdr (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_prop (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $set_tick (param i32) (result i32)))
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
  {data}
  {body}
)"#
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("test module does not assemble: {e}\n{text}"))
}

/// Adds `x-wat: <value>` to responses.
pub(crate) fn marking_plugin(value: &str) -> Vec<u8> {
    wat_plugin(
        &["x-wat", value],
        &format!(
            r#"(func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add_hdr (i32.const 2) (i32.const 1024) (i32.const 5) (i32.const 1088) (i32.const {})))
    (i32.const 0))"#,
            value.len()
        ),
    )
}

/// Adds `x-seen-id: <request.id as the plugin reads it>` to responses.
fn request_id_plugin() -> Vec<u8> {
    wat_plugin(
        &["request\\00id", "x-seen-id"],
        r#"(func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (if (i32.eqz (call $get_prop (i32.const 1024) (i32.const 10) (i32.const 100) (i32.const 104)))
      (then (drop (call $add_hdr (i32.const 2) (i32.const 1088) (i32.const 9)
        (i32.load (i32.const 100)) (i32.load (i32.const 104))))))
    (i32.const 0))"#,
    )
}

#[tokio::test]
async fn each_request_reads_its_own_facts_though_workers_reuse_them() -> TestResult {
    // A worker keeps a finished request's facts (its id, addresses) for the next one: every request must
    // still read its own, on connections old and new.
    let app = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let wasm = dir.path().join("ids.wasm");
    std::fs::write(&wasm, request_id_plugin())?;
    let plugins = format!("\n[[plugin]]\nname = \"ids\"\nwasm = \"{}\"\n", wasm.display());
    let p = Portico::start(&plugin_config(&[&app], &plugins, "\"ids\"")).await;
    let web = p.addr("web").await;
    for i in 0..24 {
        let id = format!("req-{i}");
        let answer = send(web, "GET", "/", &[("x-request-id", id.as_str())], "").await?;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("x-seen-id"), id, "request {i}");
    }
    Ok(())
}

/// Asks for a tick every 10 ms, when its instance starts (`at_start`) or when it answers its first request, and
/// counts them; responses carry `x-ticked: 1` once the instance that served them has ticked (`0` before).
fn ticking_plugin(at_start: bool) -> Vec<u8> {
    let ask = "(drop (call $set_tick (i32.const 10)))";
    let (on_start, on_answer) = if at_start { (ask, "") } else { ("", ask) };
    wat_plugin(
        &["x-ticked", "01"],
        &format!(
            r#"(global $ticks (mut i32) (i32.const 0))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    {on_start}
    (i32.const 1))
  (func (export "proxy_on_tick") (param i32)
    (global.set $ticks (i32.add (global.get $ticks) (i32.const 1))))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    {on_answer}
    (drop (call $add_hdr (i32.const 2) (i32.const 1024) (i32.const 8)
      (i32.add (i32.const 1088) (i32.ne (global.get $ticks) (i32.const 0))) (i32.const 1)))
    (i32.const 0))"#
        ),
    )
}

#[tokio::test]
async fn an_instance_that_asks_for_ticks_is_ticked_where_it_lives() -> TestResult {
    // The task that runs an instance's ticks sleeps until one is due or until it is told of new work. The
    // instances start when the plugin loads, shared; with one worker, the worker takes one over on its first
    // request (and its ticker must hear that it now has a tick to run); with none, requests use the shared
    // instance on the test's runtime. A period asked for while answering a request must reach the ticker too.
    let app = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    for (at_start, workers) in [(true, 1), (false, 1), (true, 0), (false, 0)] {
        let wasm = dir.path().join(format!("ticks-{at_start}.wasm"));
        std::fs::write(&wasm, ticking_plugin(at_start))?;
        let plugins = format!("\n[[plugin]]\nname = \"ticks\"\nwasm = \"{}\"\n", wasm.display());
        let p = Portico::start_with_workers(&plugin_config(&[&app], &plugins, "\"ticks\""), workers).await;
        let web = p.addr("web").await;
        let started = std::time::Instant::now();
        loop {
            let answer = get(web, "/").await?;
            assert_eq!(answer.status, 200);
            if answer.header("x-ticked") == "1" {
                break;
            }
            assert_eq!(answer.header("x-ticked"), "0");
            let case = format!("asked at start: {at_start}, {workers} worker(s)");
            assert!(started.elapsed() < Duration::from_secs(10), "{case}: the instance never ticked");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

fn trapping_plugin() -> Vec<u8> {
    wat_plugin(&[], r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) unreachable)"#)
}

fn plugin_config(upstreams: &[&TestUpstream], plugins: &str, filters: &str) -> String {
    reverse_config(&quoted(upstreams), "")
        .replace("upstream = \"app\"\n", &format!("upstream = \"app\"\nfilters = [{filters}]\n"))
        + plugins
}

#[tokio::test]
async fn a_c_plugin_rewrites_both_ways_and_answers_locally() -> TestResult {
    let app = TestUpstream::start("app").await;
    let plugins =
        format!("\n[[plugin]]\nname = \"hdr\"\nwasm = \"{}\"\nconfig = \"from-portico\"\n", c_plugin().display());
    let p = Portico::start(&plugin_config(&[&app], &plugins, "\"hdr\"")).await;
    let web = p.addr("web").await;

    let answer = get(web, "/hello?x=1").await?;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-portico-plugin"), "from-portico");
    assert_eq!(answer.json()["headers"]["x-portico-seen"], "/hello?x=1");

    let blocked = get(web, "/blocked/area").await?;
    assert_eq!(blocked.status, 403);
    assert_eq!(app.hits(), 1, "a local answer never reaches the upstream");
    assert!(!blocked.header("x-request-id").is_empty());

    let listed = get(p.admin, "/plugins").await?.json();
    assert_eq!(listed[0]["name"], "hdr");
    assert_eq!(listed[0]["sha256"].as_str().map(str::len), Some(64));
    Ok(())
}

#[tokio::test]
async fn a_trapping_plugin_fails_closed_or_open_and_portico_keeps_serving() -> TestResult {
    let app = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let trap = dir.path().join("trap.wasm");
    std::fs::write(&trap, trapping_plugin())?;
    let plugins = format!(
        "\n[[plugin]]\nname = \"strict\"\nwasm = \"{0}\"\n\n[[plugin]]\nname = \"lenient\"\nwasm = \"{0}\"\nfail = \"open\"\n",
        trap.display()
    );
    let config = plugin_config(&[&app], &plugins, "\"strict\"")
        + "\n[[listener]]\nname = \"open\"\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\nfilters = [\"lenient\"]\n";
    let p = Portico::start(&config).await;
    for _ in 0..5 {
        let closed = get(p.addr("web").await, "/").await?;
        assert_eq!(closed.status, 503);
        assert_eq!(closed.json()["error"], "plugin_failed");
        assert!(closed.json()["detail"].as_str().unwrap_or("").contains("strict"));
        let open = get(p.addr("open").await, "/kept/as/sent?q=1").await?;
        assert_eq!(open.status, 200, "fail = open skips the broken plugin");
        // The head lent to the plugin that trapped came back whole.
        assert_eq!(open.json()["path"], "/kept/as/sent?q=1");
        assert_eq!(open.json()["method"], "GET");
    }
    assert_eq!(app.hits(), 5);
    let metrics = String::from_utf8(get(p.admin, "/metrics").await?.body.to_vec())?;
    let failures =
        metrics.lines().find(|l| l.starts_with("portico_plugin_failures_total") && l.contains("strict")).unwrap_or("");
    assert!(failures.contains("trap"), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn plugins_choose_the_upstream_group_and_the_endpoint() -> TestResult {
    let (app, beta1, beta2) =
        (TestUpstream::start("app").await, TestUpstream::start("beta1").await, TestUpstream::start("beta2").await);
    let chosen = beta2.addr.to_string();
    let router = wat_plugin(
        &["portico.route.upstream", "beta"],
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $set_prop (i32.const 1024) (i32.const 22) (i32.const 1088) (i32.const 4)))
    (i32.const 0))"#,
    );
    let balancer = wat_plugin(
        &["portico.upstream.selected", &chosen],
        &format!(
            r#"(func (export "portico_on_upstream_select") (param i32 i32) (result i32)
    (drop (call $set_prop (i32.const 1024) (i32.const 25) (i32.const 1088) (i32.const {})))
    (i32.const 0))"#,
            chosen.len()
        ),
    );
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("router.wasm"), router)?;
    std::fs::write(dir.path().join("balancer.wasm"), balancer)?;
    let plugins = format!(
        "\n[[plugin]]\nname = \"router\"\nwasm = \"{0}/router.wasm\"\n\n[[plugin]]\nname = \"lb\"\nwasm = \"{0}/balancer.wasm\"\n\n[[upstream]]\nname = \"beta\"\nendpoints = [\"{1}\", \"{2}\"]\n",
        dir.path().display(),
        beta1.addr,
        beta2.addr
    );
    let p = Portico::start(&plugin_config(&[&app], &plugins, "\"router\", \"lb\"")).await;
    for _ in 0..10 {
        assert_eq!(get(p.addr("web").await, "/").await?.header("x-upstream"), "beta2");
    }
    assert_eq!((app.hits(), beta1.hits(), beta2.hits()), (0, 0, 10));
    Ok(())
}

#[tokio::test]
async fn hot_swap_by_upload_file_change_and_reload_with_rollback() -> TestResult {
    let app = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let module = dir.path().join("mark.wasm");
    std::fs::write(&module, marking_plugin("one"))?;
    let plugins = format!("\n[[plugin]]\nname = \"mark\"\nwasm = \"{}\"\n", module.display());
    let p = Portico::start(&plugin_config(&[&app], &plugins, "\"mark\"")).await;
    let web = p.addr("web").await;
    assert_eq!(get(web, "/").await?.header("x-wat"), "one");

    // Upload: a module that starts cleanly is swapped in.
    let uploaded = reqwest_put(p.admin, "/plugins/mark", marking_plugin("two")).await?;
    assert_eq!(uploaded.status, 200, "{:?}", uploaded.body);
    assert_eq!(get(web, "/").await?.header("x-wat"), "two");

    // A module without the ABI marker is refused and "two" keeps serving.
    let refused = reqwest_put(p.admin, "/plugins/mark", wat::parse_str("(module)")?).await?;
    assert_eq!(refused.status, 422);
    assert!(String::from_utf8_lossy(&refused.body).contains("keeps serving"));
    assert_eq!(get(web, "/").await?.header("x-wat"), "two");

    // Rollback returns to the version before.
    assert_eq!(send(p.admin, "POST", "/plugins/mark/rollback", &[], "").await?.status, 200);
    assert_eq!(get(web, "/").await?.header("x-wat"), "one");

    // A changed file on disk is picked up without a reload.
    tokio::time::sleep(Duration::from_millis(1100)).await; // a new mtime even on coarse clocks
    std::fs::write(&module, marking_plugin("three"))?;
    let mut seen = String::new();
    for _ in 0..60 {
        seen = get(web, "/").await?.header("x-wat").to_string();
        if seen == "three" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, "three");

    // A reload naming a broken file is refused as a whole; the running plugin keeps serving.
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"not wasm at all")?;
    p.rewrite(&plugin_config(
        &[&app],
        &format!("\n[[plugin]]\nname = \"mark\"\nwasm = \"{}\"\n", broken.display()),
        "\"mark\"",
    ));
    let refused = send(p.admin, "POST", "/config/reload", &[], "").await?;
    assert_eq!(refused.status, 400);
    assert!(String::from_utf8_lossy(&refused.body).contains("mark"), "{:?}", refused.body);
    assert_eq!(get(web, "/").await?.header("x-wat"), "three");
    Ok(())
}

/// PUT with a binary body.
pub(crate) async fn reqwest_put(addr: std::net::SocketAddr, path: &str, body: Vec<u8>) -> Result<Answer, String> {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = http::Request::put(path)
        .header("host", addr.to_string())
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Answer { status: parts.status, headers: parts.headers, body })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swaps_under_concurrent_load_fail_no_request() -> TestResult {
    let app = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let module = dir.path().join("mark.wasm");
    std::fs::write(&module, marking_plugin("v0"))?;
    let plugins = format!("\n[[plugin]]\nname = \"mark\"\nwasm = \"{}\"\n", module.display());
    let p = Portico::start(&plugin_config(&[&app], &plugins, "\"mark\"")).await;
    let web = p.addr("web").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(std::collections::BTreeSet::<String>::new()));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, seen) = (stop.clone(), seen.clone());
        workers.push(tokio::spawn(async move {
            let mut failed = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match get(web, "/").await {
                    Ok(a) if a.status == 200 => {
                        seen.lock().insert(a.header("x-wat").to_string());
                    }
                    other => {
                        eprintln!("failed during swap: {other:?}");
                        failed += 1;
                    }
                }
            }
            failed
        }));
    }
    // Each version is swapped in only once the one before has served requests, so every swap happens under
    // load however slow the machine is.
    for version in 1..=6 {
        let before = format!("v{}", version - 1);
        assert!(eventually(Duration::from_secs(60), || seen.lock().contains(&before)).await, "{before} never served");
        let swapped = reqwest_put(p.admin, "/plugins/mark", marking_plugin(&format!("v{version}"))).await?;
        assert_eq!(swapped.status, 200);
    }
    assert!(eventually(Duration::from_secs(60), || seen.lock().contains("v6")).await, "v6 never served");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        assert_eq!(w.await?, 0, "requests failed while plugins were swapped");
    }
    let versions = seen.lock().clone();
    assert!(versions.contains("v0") && versions.contains("v6"), "served by {versions:?}");
    Ok(())
}

// ---- body callbacks ----

/// A module whose body callback (`proxy_on_request_body` or `proxy_on_response_body`) waits for the whole body
/// (PAUSE until end of stream) and then replaces it with `replacement`.
fn body_replacing_plugin(callback: &str, buffer: u32, replacement: &str) -> Vec<u8> {
    wat_plugin(
        &[replacement],
        &format!(
            r#"(func (export "{callback}") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (if (i32.eqz (local.get $eos)) (then (return (i32.const 1))))
    (if (call $set_buf (i32.const {buffer}) (i32.const 0) (local.get $size) (i32.const 1024) (i32.const {len}))
      (then unreachable))
    (i32.const 0))"#,
            len = replacement.len()
        ),
    )
}

/// Writes `module` into `dir` and returns a `[[plugin]]` table for it.
fn plugin_table(dir: &Path, name: &str, module: Vec<u8>, extra: &str) -> String {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, module).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    format!("\n[[plugin]]\nname = \"{name}\"\nwasm = \"{}\"\n{extra}", path.display())
}

/// A second listener in front of `app` with its own filters.
fn listener_table(name: &str, filters: &str) -> String {
    format!("\n[[listener]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\nfilters = [{filters}]\n")
}

#[tokio::test]
async fn a_request_body_rewrite_reaches_the_upstream_with_its_new_length() -> TestResult {
    let app = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let new_body = "a much longer body chosen by the plugin";
    let plugins = plugin_table(dir.path(), "rewrite", body_replacing_plugin("proxy_on_request_body", 0, new_body), "");
    let p = Portico::start(&plugin_config(&[&app], &plugins, "\"rewrite\"")).await;
    let answer = send(p.addr("web").await, "POST", "/upload", &[], "hello").await?;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let echo = answer.json();
    assert_eq!(echo["body"], new_body);
    assert_eq!(echo["body_len"], new_body.len());
    assert_eq!(echo["headers"]["content-length"], new_body.len().to_string());
    Ok(())
}

#[tokio::test]
async fn a_response_body_rewrite_reaches_the_client_with_its_new_length() -> TestResult {
    let app = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let new_body = "short";
    let plugins = plugin_table(dir.path(), "rewrite", body_replacing_plugin("proxy_on_response_body", 1, new_body), "");
    let p = Portico::start(&plugin_config(&[&app], &plugins, "\"rewrite\"")).await;
    let answer = get(p.addr("web").await, "/").await?;
    assert_eq!(answer.status, 200);
    assert_eq!(&answer.body[..], new_body.as_bytes());
    assert_eq!(answer.header("content-length"), new_body.len().to_string());
    assert_eq!(app.hits(), 1);
    Ok(())
}

/// POSTs `chunks` with chunked encoding, one write each with a pause between, on a fresh connection; returns
/// the status and the body of the answer.
async fn chunked_post(addr: std::net::SocketAddr, chunks: &[&str]) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let head = "POST /chunks HTTP/1.1\r\nhost: test.local\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
    for chunk in chunks.iter().map(|c| format!("{:x}\r\n{c}\r\n", c.len())).chain(["0\r\n\r\n".to_string()]) {
        tokio::time::sleep(Duration::from_millis(60)).await;
        stream.write_all(chunk.as_bytes()).await.map_err(|e| e.to_string())?;
    }
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no response head in {text:?}"))?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad head {head:?}"))?;
    Ok((status, body.to_string()))
}

#[tokio::test]
async fn a_pausing_plugin_sees_the_buffer_grow_chunk_by_chunk() -> TestResult {
    let app = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    // PAUSE until the end; every call before it must see a strictly larger buffer (else trap -> 503). At the
    // end it prepends the number of calls it got, as a digit.
    let module = wat_plugin(
        &[],
        r#"(global $calls (mut i32) (i32.const 0))
  (global $last (mut i32) (i32.const 0))
  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (if (i32.eqz (local.get $eos)) (then
      (if (i32.le_s (local.get $size) (global.get $last)) (then unreachable))
      (global.set $last (local.get $size))
      (return (i32.const 1))))
    (i32.store8 (i32.const 2000) (i32.add (i32.const 48) (global.get $calls)))
    (if (call $set_buf (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 2000) (i32.const 1)) (then unreachable))
    (global.set $calls (i32.const 0))
    (global.set $last (i32.const 0))
    (i32.const 0))"#,
    );
    let plugins = plugin_table(dir.path(), "buffer", module, "");
    let p = Portico::start(&plugin_config(&[&app], &plugins, "\"buffer\"")).await;
    let (status, body) = chunked_post(p.addr("web").await, &["one-", "two-", "three"]).await?;
    assert_eq!(status, 200, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body)?;
    let seen = echo["body"].as_str().unwrap_or_default();
    assert!(seen.ends_with("one-two-three") && seen.len() == 14, "upstream saw {seen:?}");
    let calls = seen.as_bytes()[0] - b'0';
    assert!(calls >= 3, "the plugin was called {calls} times for three chunks");
    assert_eq!(echo["headers"]["content-length"], "14");
    assert!(echo["headers"]["transfer-encoding"].is_null(), "{echo}");
    Ok(())
}

#[tokio::test]
async fn a_body_inspecting_plugin_answers_locally() -> TestResult {
    let app = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    // A tiny WAF: at the end of the body, a 403 "rejected" if the body contains "evil".
    let module = wat_plugin(
        &["evil", "rejected"],
        r#"(func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (local $p i32) (local $n i32) (local $i i32)
    (if (i32.eqz (local.get $eos)) (then (return (i32.const 1))))
    (if (call $get_buf (i32.const 0) (i32.const 0) (local.get $size) (i32.const 100) (i32.const 104))
      (then (return (i32.const 0))))
    (local.set $p (i32.load (i32.const 100)))
    (local.set $n (i32.load (i32.const 104)))
    (block $done
      (loop $next
        (br_if $done (i32.gt_u (i32.add (local.get $i) (i32.const 4)) (local.get $n)))
        (if (i32.eq (i32.load (i32.add (local.get $p) (local.get $i))) (i32.load (i32.const 1024)))
          (then
            (drop (call $local (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 1088) (i32.const 8)
              (i32.const 0) (i32.const 0) (i32.const -1)))
            (return (i32.const 1))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0))"#,
    );
    let plugins = plugin_table(dir.path(), "waf", module, "");
    let p = Portico::start(&plugin_config(&[&app], &plugins, "\"waf\"")).await;
    let web = p.addr("web").await;
    let rejected = send(web, "POST", "/", &[], "some perfectly evil payload").await?;
    assert_eq!(rejected.status, 403);
    assert_eq!(&rejected.body[..], b"rejected");
    assert_eq!(app.hits(), 0, "a rejected body never reaches the upstream");
    let (status, _) = chunked_post(web, &["ev", "il"]).await?;
    assert_eq!(status, 403, "split across chunks, the buffered body still matches");
    let passed = send(web, "POST", "/", &[], "a good payload").await?;
    assert_eq!(passed.status, 200);
    assert_eq!(passed.json()["body"], "a good payload");
    assert_eq!(app.hits(), 1);
    Ok(())
}

#[tokio::test]
async fn a_trap_in_a_body_callback_fails_closed_or_open() -> TestResult {
    let app = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let trap =
        || wat_plugin(&[], r#"(func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) unreachable)"#);
    let plugins = plugin_table(dir.path(), "strict", trap(), "")
        + &plugin_table(dir.path(), "lenient", trap(), "fail = \"open\"\n");
    let config = plugin_config(&[&app], &plugins, "\"strict\"") + &listener_table("open", "\"lenient\"");
    let p = Portico::start(&config).await;
    for _ in 0..3 {
        let closed = send(p.addr("web").await, "POST", "/", &[], "original body").await?;
        assert_eq!(closed.status, 503);
        assert_eq!(closed.json()["error"], "plugin_failed");
        assert!(closed.json()["detail"].as_str().unwrap_or("").contains("strict"), "{:?}", closed.body);
        let open = send(p.addr("open").await, "POST", "/", &[], "original body").await?;
        assert_eq!(open.status, 200, "fail = open skips the broken plugin");
        assert_eq!(open.json()["body"], "original body");
    }
    assert_eq!(app.hits(), 3);
    Ok(())
}

#[tokio::test]
async fn large_responses_stream_past_header_only_and_continuing_body_plugins() -> TestResult {
    let size = 2 << 20; // twice the plugins' body buffer limit
    let app = TestUpstream::start_with("app", Behavior::Large(size)).await;
    let dir = tempfile::tempdir()?;
    // Lets every chunk through at once and appends "!" to the last one.
    let appending = wat_plugin(
        &["!"],
        r#"(func (export "proxy_on_response_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (if (local.get $eos)
      (then (if (call $set_buf (i32.const 1) (local.get $size) (i32.const 0) (i32.const 1024) (i32.const 1))
        (then unreachable))))
    (i32.const 0))"#,
    );
    let plugins = plugin_table(dir.path(), "mark", marking_plugin("seen"), "")
        + &plugin_table(dir.path(), "append", appending, "");
    let config = plugin_config(&[&app], &plugins, "\"mark\"") + &listener_table("bodies", "\"append\", \"mark\"");
    let p = Portico::start(&config).await;

    let plain = get(p.addr("web").await, "/big").await?;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("x-wat"), "seen");
    assert_eq!(plain.header("content-length"), size.to_string(), "a header-only plugin leaves the body alone");
    assert_eq!(plain.body.len(), size);

    let filtered = get(p.addr("bodies").await, "/big").await?;
    assert_eq!(filtered.status, 200);
    assert_eq!(filtered.header("x-wat"), "seen");
    assert_eq!(filtered.header("content-length"), "", "a streamed, filtered body has no length up front");
    assert_eq!(filtered.body.len(), size + 1);
    assert!(filtered.body.ends_with(b"x!") && filtered.body[..size].iter().all(|b| *b == b'x'));
    Ok(())
}

/// A connection that streamed a plugin-filtered body is idle again once the body has gone: its
/// `idle_timeout` closes it. (The filtered body once kept its request in flight for good.)
#[tokio::test]
async fn a_connection_is_idle_again_after_a_filtered_body() -> TestResult {
    use http_body_util::{BodyExt, Empty};
    let app = TestUpstream::start_with("app", Behavior::Large(256 * 1024)).await;
    let dir = tempfile::tempdir()?;
    let passing =
        wat_plugin(&[], r#"(func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) (i32.const 0))"#);
    let plugins = plugin_table(dir.path(), "pass", passing, "");
    let config = plugin_config(&[&app], &plugins, "")
        + &listener_table("bodies", "\"pass\"").replace("filters =", "idle_timeout = \"1s\"\nfilters =");
    let p = Portico::start(&config).await;
    let tcp = tokio::net::TcpStream::connect(p.addr("bodies").await).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    let conn = tokio::spawn(conn);
    let req = http::Request::get("/big").header("host", "a").body(Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(req).await?;
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-length").is_none(), "the body was streamed through the plugin");
    assert_eq!(response.into_body().collect().await?.to_bytes().len(), 256 * 1024);
    let closed = tokio::time::timeout(Duration::from_secs(20), conn).await;
    assert!(matches!(closed, Ok(Ok(Ok(())))), "the idle connection was not closed: {closed:?}");
    Ok(())
}

#[tokio::test]
async fn response_body_failures_and_oversized_bodies_get_json_errors() -> TestResult {
    let app = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let trap =
        wat_plugin(&[], r#"(func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) unreachable)"#);
    // PAUSE until the end of the body: holds all of it.
    let hoard = wat_plugin(
        &[],
        r#"(func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (i32.eqz (local.get 2)))"#,
    );
    let plugins = plugin_table(dir.path(), "trap", trap, "") + &plugin_table(dir.path(), "hoard", hoard, "");
    let config = plugin_config(&[&app], &plugins, "\"trap\"") + &listener_table("hoard", "\"hoard\"");
    let p = Portico::start(&config).await;

    let failed = get(p.addr("web").await, "/").await?;
    assert_eq!(failed.status, 503, "a trap before the response started fails it closed");
    assert_eq!(failed.json()["error"], "plugin_failed");
    assert_eq!(failed.header("content-type"), "application/json");

    let small = send(p.addr("hoard").await, "POST", "/", &[], "fits").await?;
    assert_eq!(small.status, 200);
    assert_eq!(small.json()["body"], "fits");
    let big = "y".repeat((1 << 20) + 1024);
    let refused = send(p.addr("hoard").await, "POST", "/", &[], &big).await?;
    assert_eq!(refused.status, 413);
    assert_eq!(refused.json()["error"], "payload_too_large");
    assert_eq!(app.hits(), 2, "the oversized body never reached the upstream");
    Ok(())
}

// ---- HTTP callouts ----

/// `pairs` in the proxy-wasm map encoding, written as a WAT string (`\xx` escapes) with its byte length.
fn wat_map(pairs: &[(&str, &str)]) -> (String, usize) {
    let mut bytes = (pairs.len() as u32).to_le_bytes().to_vec();
    for (k, v) in pairs {
        bytes.extend((k.len() as u32).to_le_bytes());
        bytes.extend((v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        bytes.extend(k.as_bytes());
        bytes.push(0);
        bytes.extend(v.as_bytes());
        bytes.push(0);
    }
    (bytes.iter().map(|b| format!("\\{b:02x}")).collect(), bytes.len())
}

#[tokio::test]
async fn an_auth_plugin_pauses_on_a_callout_and_continues_or_refuses() -> TestResult {
    let (app, auth) = (TestUpstream::start("app").await, TestUpstream::start("auth").await);
    let dir = tempfile::tempdir()?;
    let (map, map_len) = wat_map(&[(":method", "GET"), (":path", "/check"), (":authority", "auth")]);
    // Request headers: ask the "auth" upstream group and PAUSE. Callout answer: 200 continues the request,
    // anything else (or a failed call, with no headers) answers 401 "denied".
    let module = wat_plugin(
        &["auth", ":status", "200", "denied", &map],
        &format!(
            r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (call $http_call (i32.const 1024) (i32.const 4) (i32.const 1280) (i32.const {map_len}) (i32.const 0)
          (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 5000) (i32.const 200))
      (then unreachable))
    (i32.const 1))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
    (if (i32.and
          (i32.eqz (call $get_hdr (i32.const 6) (i32.const 1088) (i32.const 7) (i32.const 100) (i32.const 104)))
          (i32.and
            (i32.eq (i32.load (i32.const 104)) (i32.const 3))
            (i32.eq (i32.and (i32.load (i32.load (i32.const 100))) (i32.const 0xffffff))
                    (i32.and (i32.load (i32.const 1152)) (i32.const 0xffffff)))))
      (then (drop (call $continue (i32.const 0))))
      (else (drop (call $local (i32.const 401) (i32.const 0) (i32.const 0) (i32.const 1216) (i32.const 6)
              (i32.const 0) (i32.const 0) (i32.const -1))))))"#
        ),
    );
    let plugins = plugin_table(dir.path(), "authz", module, "")
        + &format!("\n[[upstream]]\nname = \"auth\"\nendpoints = [\"{}\"]\n", auth.addr);
    let p = Portico::start(&plugin_config(&[&app], &plugins, "\"authz\"")).await;
    let web = p.addr("web").await;

    let allowed = get(web, "/resource").await?;
    assert_eq!(allowed.status, 200, "{:?}", allowed.body);
    assert_eq!(allowed.header("x-upstream"), "app");
    assert_eq!((auth.hits(), app.hits()), (1, 1));

    auth.set(Behavior::Status(403));
    let denied = get(web, "/resource").await?;
    assert_eq!(denied.status, 401);
    assert_eq!(&denied.body[..], b"denied");
    assert_eq!((auth.hits(), app.hits()), (2, 1), "a refused request never reaches the app");

    // A 200 whose body is over the callout cap (limits::MAX_HTTP_CALL_RESPONSE_BODY, 1 MiB): the proxy stops
    // reading there and delivers a failed callout, with no headers, so the plugin refuses.
    auth.set(Behavior::Large(2 << 20));
    let oversized = get(web, "/resource").await?;
    assert_eq!(oversized.status, 401, "an answer over the callout cap is a failed callout");
    assert_eq!((auth.hits(), app.hits()), (3, 1));

    auth.kill();
    let unreachable = get(web, "/resource").await?;
    assert_eq!(unreachable.status, 401, "a failed callout (no headers) is refused too");
    assert_eq!(app.hits(), 1);
    Ok(())
}

#[tokio::test]
async fn a_trap_after_the_response_started_aborts_the_body_or_is_skipped() -> TestResult {
    let app = TestUpstream::start_with("app", Behavior::Large(2 << 20)).await;
    let dir = tempfile::tempdir()?;
    // Passes chunks on as they come, then traps on the last one: by then the headers are out.
    let late_trap = || {
        wat_plugin(
            &[],
            r#"(func (export "proxy_on_response_body") (param i32 i32 i32) (result i32)
    (if (local.get 2) (then unreachable))
    (i32.const 0))"#,
        )
    };
    let plugins = plugin_table(dir.path(), "strict", late_trap(), "")
        + &plugin_table(dir.path(), "lenient", late_trap(), "fail = \"open\"\n");
    let config = plugin_config(&[&app], &plugins, "\"strict\"") + &listener_table("open", "\"lenient\"");
    let p = Portico::start(&config).await;
    let aborted = get(p.addr("web").await, "/big").await;
    assert!(
        aborted.is_err(),
        "the client must see a broken body, not a clean short one: {:?}",
        aborted.as_ref().map(|a| (a.status, a.body.len()))
    );
    let skipped = get(p.addr("open").await, "/big").await?;
    assert_eq!(skipped.status, 200);
    assert_eq!(skipped.body.len(), 2 << 20);
    Ok(())
}

#[tokio::test]
async fn a_body_callback_paused_at_the_end_waits_for_a_callout_and_resumes() -> TestResult {
    let (app, audit) = (TestUpstream::start("app").await, TestUpstream::start("audit").await);
    let dir = tempfile::tempdir()?;
    let (map, map_len) = wat_map(&[(":method", "POST"), (":path", "/audit"), (":authority", "audit")]);
    // Buffers the whole request body; at its end, calls the "audit" group and pauses; the callout's answer
    // (whatever it is) resumes the request with proxy_continue_stream.
    let module = wat_plugin(
        &["audit", &map],
        &format!(
            r#"(func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (if (i32.eqz (local.get $eos)) (then (return (i32.const 1))))
    (if (call $http_call (i32.const 1024) (i32.const 5) (i32.const 1088) (i32.const {map_len}) (i32.const 0)
          (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 5000) (i32.const 200))
      (then unreachable))
    (i32.const 1))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
    (drop (call $continue (i32.const 0))))"#
        ),
    );
    let plugins = plugin_table(dir.path(), "audit", module, "")
        + &format!("\n[[upstream]]\nname = \"audit\"\nendpoints = [\"{}\"]\n", audit.addr);
    let p = Portico::start(&plugin_config(&[&app], &plugins, "\"audit\"")).await;
    let (status, body) = chunked_post(p.addr("web").await, &["first half, ", "second half"]).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("first half, second half"), "the upstream got the whole body: {body}");
    assert_eq!((audit.hits(), app.hits()), (1, 1), "the callout ran before the request went on");
    Ok(())
}

#[tokio::test]
async fn a_response_body_callback_can_replace_the_whole_answer() -> TestResult {
    let app = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    // At the end of the response body: answer 418 "teapot" instead.
    let module = wat_plugin(
        &["teapot"],
        r#"(func (export "proxy_on_response_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (if (i32.eqz (local.get $eos)) (then (return (i32.const 1))))
    (drop (call $local (i32.const 418) (i32.const 0) (i32.const 0) (i32.const 1024) (i32.const 6)
      (i32.const 0) (i32.const 0) (i32.const -1)))
    (i32.const 1))"#,
    );
    let plugins = plugin_table(dir.path(), "teapot", module, "");
    let p = Portico::start(&plugin_config(&[&app], &plugins, "\"teapot\"")).await;
    let answer = get(p.addr("web").await, "/").await?;
    assert_eq!(answer.status, 418, "{:?}", answer.body);
    assert_eq!(&answer.body[..], b"teapot");
    assert_eq!(answer.header("content-length"), "6");
    Ok(())
}
