//! Test scaffolding shared by every integration test: scripted upstream servers on 127.0.0.1:0, an
//! in-process Portico started from a config file, and small HTTP helpers.

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use portico::Server;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

pub mod dns;

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// `N` distinct ports free on 127.0.0.1 for a child process to bind. They are held all at once while picked:
/// picked one at a time, the kernel can hand a port just released out again, and a node once got the same port
/// for its admin API and its cluster address.
pub fn free_ports<const N: usize>() -> Result<[u16; N], std::io::Error> {
    let held = (0..N).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<Vec<_>, _>>()?;
    let mut ports = [0u16; N];
    for (port, listener) in ports.iter_mut().zip(&held) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// How a test upstream answers.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// 200 with a JSON echo of the request.
    Echo,
    /// This status for everything but `/health`.
    Status(u16),
    /// Echo after a delay.
    Delay(Duration),
    /// `/health` answers 503, everything else echoes.
    SickHealth,
    /// 200 with this many bytes of `x` (and its content-length).
    Large(usize),
}

/// A scripted upstream.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    behavior: Arc<Mutex<Behavior>>,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl TestUpstream {
    pub async fn start(name: &str) -> TestUpstream {
        Self::start_with(name, Behavior::Echo).await
    }

    pub async fn start_with(name: &str, behavior: Behavior) -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind test upstream");
        Self::serve(name, listener, behavior)
    }

    /// An upstream on `addr` (e.g. `"[::1]:0"`).
    pub async fn start_at(name: &str, addr: &str) -> TestUpstream {
        let listener = TcpListener::bind(addr).await.expect("bind test upstream");
        Self::serve(name, listener, Behavior::Echo)
    }

    /// Upstreams on 127.0.0.2, 127.0.0.3, … sharing one port, as the addresses one DNS name stands for.
    pub async fn on_one_port(names: &[&str]) -> (Vec<TestUpstream>, u16) {
        for _ in 0..50 {
            let first = TcpListener::bind("127.0.0.2:0").await.expect("bind test upstream");
            let port = first.local_addr().expect("local addr").port();
            let mut listeners = vec![first];
            for i in 1..names.len() {
                match TcpListener::bind(("127.0.0.".to_string() + &(2 + i).to_string(), port)).await {
                    Ok(l) => listeners.push(l),
                    Err(_) => break,
                }
            }
            if listeners.len() == names.len() {
                let upstreams = names.iter().zip(listeners).map(|(n, l)| Self::serve(n, l, Behavior::Echo)).collect();
                return (upstreams, port);
            }
        }
        panic!("no port free on 127.0.0.2..{}", 1 + names.len());
    }

    fn serve(name: &str, listener: TcpListener, behavior: Behavior) -> TestUpstream {
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let behavior = Arc::new(Mutex::new(behavior));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (label, h, b, c) = (name.to_string(), hits.clone(), behavior.clone(), conns.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (label, h, b) = (label.clone(), h.clone(), b.clone());
                let conn = tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (label, h, b) = (label.clone(), h.clone(), b.clone());
                        async move { Ok::<_, std::convert::Infallible>(answer(&label, &h, &b, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
                c.lock().push(conn.abort_handle());
            }
        });
        TestUpstream { addr, hits, behavior, task, conns }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.lock().len()
    }

    /// Connections accepted and not yet closed.
    pub fn open_connections(&self) -> usize {
        self.conns.lock().iter().filter(|c| !c.is_finished()).count()
    }

    pub fn set(&self, behavior: Behavior) {
        *self.behavior.lock() = behavior;
    }

    /// Dies like a crashed process: the socket closes and open connections are reset.
    pub fn kill(&self) {
        self.task.abort();
        for c in self.conns.lock().drain(..) {
            c.abort();
        }
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn answer(
    label: &str,
    hits: &AtomicUsize,
    behavior: &Mutex<Behavior>,
    req: Request<Incoming>,
) -> http::Response<Full<Bytes>> {
    let behavior = behavior.lock().clone();
    let is_health = req.uri().path() == "/health";
    if !is_health {
        hits.fetch_add(1, Ordering::SeqCst);
    }
    let status = match (&behavior, is_health) {
        (Behavior::SickHealth, true) => 503,
        (Behavior::Status(s), false) => *s,
        (Behavior::Delay(d), false) => {
            tokio::time::sleep(*d).await;
            200
        }
        _ => 200,
    };
    if let (Behavior::Large(n), false) = (&behavior, is_health) {
        return http::Response::builder()
            .header("x-upstream", label)
            .body(Full::new(Bytes::from(vec![b'x'; *n])))
            .expect("valid response");
    }
    let method = req.method().to_string();
    let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let version = format!("{:?}", req.version());
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let echo = serde_json::json!({
        "upstream": label, "method": method, "path": path, "version": version, "headers": headers,
        "body_len": body.len(), "body": String::from_utf8_lossy(&body),
    });
    http::Response::builder()
        .status(status)
        .header("x-upstream", label)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(echo.to_string())))
        .expect("valid response")
}

/// An in-process Portico started from a config file (so reloads re-read it).
pub struct Portico {
    pub server: Arc<Server>,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl Portico {
    pub async fn start(config: &str) -> Portico {
        Self::start_with_workers(config, portico::listen::workers::default_count()).await
    }

    /// With `workers` data-path threads (0: connections are served on the test's runtime).
    pub async fn start_with_workers(config: &str, workers: usize) -> Portico {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("portico.toml");
        std::fs::write(&config_path, config).expect("write config");
        let parsed = portico::config::load(&config_path).unwrap_or_else(|e| panic!("config: {e:?}"));
        let admin_addr = parsed.admin.listen;
        let server = Server::start_with_workers(parsed, Duration::from_secs(5), workers).await.expect("start portico");
        let admin = portico::admin::serve_tcp(server.clone(), admin_addr).await.expect("admin");
        Portico { server, admin, dir, config_path }
    }

    pub async fn addr(&self, listener: &str) -> SocketAddr {
        *self.server.bound_addresses().await.get(listener).expect("listener bound")
    }

    pub fn rewrite(&self, config: &str) {
        std::fs::write(&self.config_path, config).expect("rewrite config");
    }
}

/// A simple answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// One request on a fresh HTTP/1.1 connection.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Answer, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    // The address as the host, as every HTTP client sends it (the admin API, without a token, answers only to
    // a loopback name); a caller may send another.
    let mut builder = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        builder = builder.header("host", addr.to_string());
    }
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder.body(Full::new(Bytes::from(body.to_string()))).map_err(|e| e.to_string())?;
    // Longer than any wait the server may take on purpose (the cluster tests' write timeout is 30 s).
    let response = tokio::time::timeout(Duration::from_secs(60), sender.send_request(request))
        .await
        .map_err(|_| format!("{method} {path} on {addr}: no answer within 60 s"))?
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Answer { status: parts.status, headers: parts.headers, body })
}

pub async fn get(addr: SocketAddr, path: &str) -> Result<Answer, String> {
    send(addr, "GET", path, &[], "").await
}

/// Waits until `cond` holds, polling, for at most `limit`.
pub async fn eventually<F: FnMut() -> bool>(limit: Duration, mut cond: F) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// Config with one listener in front of the given upstream endpoints; `extra` goes into the upstream table.
pub fn reverse_config(endpoints: &[String], extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"
upstream = "app"

[[upstream]]
name = "app"
endpoints = [{}]
{extra}
"#,
        endpoints.join(", ")
    )
}

pub fn quoted(upstreams: &[&TestUpstream]) -> Vec<String> {
    upstreams.iter().map(|u| format!("\"{}\"", u.addr)).collect()
}

/// Whether, within 30 s, the admin API reports every endpoint of every upstream group unhealthy. Tests wait on
/// this instead of sleeping for a few health-check intervals, which a busy machine can outlast.
pub async fn eventually_async_admin_all_unhealthy(admin: std::net::SocketAddr) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if let Ok(answer) = get(admin, "/upstreams").await {
            let groups = answer.json();
            let all = groups.as_array().is_some_and(|groups| {
                groups
                    .iter()
                    .all(|g| g["endpoints"].as_array().is_some_and(|e| e.iter().all(|e| e["status"] == "unhealthy")))
            });
            if all {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A forward-mode listener config: CONNECT limited to `connect_port`; `allow` is the listener's `allow` line (or "").
pub fn forward_config(connect_port: u16, allow: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "egress"
listen = "127.0.0.1:0"
mode = "forward"
connect_ports = [{connect_port}]
{allow}
"#
    )
}

/// Waits (up to 30 s, a bound only a hang reaches) for a GET on `addr` to be answered 200.
pub async fn eventually_served(addr: SocketAddr, path: &str) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if get(addr, path).await.is_ok_and(|a| a.status == 200) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
