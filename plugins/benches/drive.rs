//! A plain loop of requests through the plugin host, for counting instructions with callgrind: unlike
//! criterion's wall-clock figures, the count does not depend on what else the machine runs.
//!
//! Scenarios, driven as the `chain` and `filter` benches drive them:
//! * `chain`: a stream on `builtin:router` and one on `builtin:balancer`, request headers through both, the
//!   routed group read, an endpoint picked (3 candidates, round robin), `on_log`, both streams closed;
//! * `filter`: the C `add_header` test plugin, request and response headers, stream closed;
//! * `noop`: a WAT module whose header callbacks return Continue, same calls as `filter`;
//! * `chain_native`, `filter_native`: the caller's own part (header list refilled, request facts made).
//!
//! The thread is a declared worker that owns its instances ([`portico_plugins::enter_worker`]), as the proxy's
//! workers are by default. Only the requests inside `measured_requests` are counted (after 2,000 unmeasured
//! ones warm the instance). `bench/plugin_instructions.sh` builds this and runs it under callgrind:
//! instructions per request = the `Ir` total / the number of requests. Run directly (`drive chain 100000`), it
//! prints the CPU and wall time per request.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portico_plugins::{
    builtin, enter_worker, Candidate, CandidateList, CandidateSource, DefaultHostServices, Plugin, PluginEngine,
    PluginSpec, RequestFacts, RequestInfo, TrafficDirection,
};

const ADD_HEADER: &[u8] = include_bytes!("../tests/data/add_header.wasm");

const NOOP: &str = r#"(module
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32) (global.get $heap))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0)))"#;

/// Refills `dst` with `src`'s pairs in the strings `dst` already has, as the proxy builds a request's header
/// list (a `clone_from` of the whole list would allocate every string again: `(String, String)` clones anew).
fn refill(dst: &mut Vec<(String, String)>, src: &[(String, String)]) {
    dst.truncate(src.len());
    for ((dk, dv), (sk, sv)) in dst.iter_mut().zip(src) {
        dk.clear();
        dk.push_str(sk);
        dv.clear();
        dv.push_str(sv);
    }
    let n = dst.len();
    dst.extend_from_slice(&src[n..]);
}

fn load(engine: &PluginEngine, name: &str, wasm: &[u8], config: &str) -> Arc<Plugin> {
    let mut spec = PluginSpec::new(name, wasm.to_vec());
    spec.config = config.to_string();
    spec.instances = 1;
    Plugin::load(engine, spec, Arc::new(DefaultHostServices)).unwrap()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The facts the proxy hands a request's chain, made once per request.
fn facts() -> Arc<dyn RequestFacts> {
    Arc::new(RequestInfo {
        request_id: "b1f2c3d4e5f60718".into(),
        protocol: "HTTP/1.1",
        source_address: Some(SocketAddr::from(([127, 0, 0, 1], 40000))),
        destination_address: Some(SocketAddr::from(([127, 0, 0, 1], 18084))),
        start_time: Some(SystemTime::UNIX_EPOCH),
        direction: TrafficDirection::Inbound,
        properties: Vec::new(),
    })
}

/// One request of a scenario; returns something derived from the answer so nothing is optimised away.
type Request = Box<dyn FnMut() -> usize>;

/// A header list as the ABI sees it.
type Headers = Vec<(String, String)>;

fn chain(engine: &PluginEngine) -> Request {
    let router = load(
        engine,
        "router",
        builtin("router").unwrap(),
        r#"{"routes": [{"match": {"path_prefix": "/"}, "upstream": "origin"}]}"#,
    );
    let balancer = load(engine, "lb", builtin("balancer").unwrap(), r#"{"policy": "round_robin"}"#);
    let candidates: Arc<dyn CandidateSource> = Arc::new(CandidateList::new(
        (0..3)
            .map(|i| Candidate {
                address: format!("127.0.0.1:{}", 18080 + i),
                weight: 1,
                active_requests: 0,
                latency: Duration::from_millis(1),
                ejected: false,
            })
            .collect(),
    ));
    let template = chain_headers();
    let (router, balancer) = (router.handle(), balancer.handle());
    let mut h = template.clone();
    Box::new(move || {
        refill(&mut h, &template);
        let facts = facts();
        let mut streams = [router.new_stream(facts.clone()).unwrap(), balancer.new_stream(facts).unwrap()];
        for s in &mut streams {
            s.on_request_headers(&mut h, true).unwrap();
        }
        let group = streams[0].routed_upstream().unwrap().to_string();
        let chosen = streams[1].select_endpoint_from(&mut h, &group, &candidates, 0, None).unwrap().unwrap();
        for s in &mut streams {
            s.on_log().unwrap();
        }
        chosen
    })
}

fn filter(engine: &PluginEngine, wasm: &[u8]) -> Request {
    let plugin = load(engine, "filter", wasm, "bench");
    let (req, resp) = filter_headers();
    let plugin = plugin.handle();
    let (mut h, mut r) = (req.clone(), resp.clone());
    Box::new(move || {
        refill(&mut h, &req);
        refill(&mut r, &resp);
        let mut s = plugin.new_stream(facts()).unwrap();
        s.on_request_headers(&mut h, false).unwrap();
        s.on_response_headers(&mut r, false).unwrap();
        h.len() + r.len()
    })
}

/// The header list of a `curl`/`wrk`-like request, as the proxy hands it to the chain.
fn chain_headers() -> Headers {
    pairs(&[
        (":method", "GET"),
        (":path", "/"),
        (":authority", "127.0.0.1:18084"),
        (":scheme", "http"),
        ("user-agent", "wrk"),
    ])
}

/// A typical browser request (10 headers) and a small response (5).
fn filter_headers() -> (Headers, Headers) {
    let req = pairs(&[
        (":method", "GET"),
        (":path", "/api/v1/items?page=2"),
        (":authority", "shop.example.com"),
        (":scheme", "https"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("cookie", "session=4f2a9c1e; theme=dark"),
        ("x-request-id", "b1f2c3d4e5f60718"),
    ]);
    let resp = pairs(&[
        (":status", "200"),
        ("content-type", "application/json"),
        ("content-length", "512"),
        ("server", "app"),
        ("date", "Thu, 26 Nov 2026 12:00:00 GMT"),
    ]);
    (req, resp)
}

/// The caller's own part of a scenario, to subtract: its header lists refilled and the request's facts made.
fn native(lists: Vec<Headers>) -> Request {
    let mut mine = lists.clone();
    Box::new(move || {
        let mut n = 0;
        for (dst, src) in mine.iter_mut().zip(&lists) {
            refill(dst, src);
            n += dst.len();
        }
        let facts = facts();
        n + usize::from(facts.request_id().is_some())
    })
}

/// The requests callgrind counts (`--toggle-collect='*measured_requests*'`).
#[inline(never)]
fn measured_requests(request: &mut Request, n: u64) -> usize {
    let mut sum = 0usize;
    for _ in 0..n {
        sum = sum.wrapping_add(request());
    }
    sum
}

fn main() {
    // `cargo bench` passes `--bench`; flags are ignored.
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let scenario = args.next().unwrap_or_else(|| "chain".to_string());
    let n: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    // The bench thread is a worker owning its instances, as each of the proxy's workers is by default.
    enter_worker(0, 1);
    let engine = PluginEngine::new().unwrap();
    let mut request = match scenario.as_str() {
        "chain" => chain(&engine),
        "filter" => filter(&engine, ADD_HEADER),
        "noop" => filter(&engine, NOOP.as_bytes()),
        "chain_native" => native(vec![chain_headers()]),
        "filter_native" => {
            let (req, resp) = filter_headers();
            native(vec![req, resp])
        }
        other => panic!("unknown scenario {other}: chain, filter, noop, chain_native or filter_native"),
    };
    std::hint::black_box(warm_up(&mut request));
    let (start, cpu) = (std::time::Instant::now(), thread_cpu());
    let sum = measured_requests(&mut request, n);
    let n32 = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    let (wall, cpu) = (start.elapsed() / n32, (thread_cpu() - cpu) / n32);
    // CPU time counts only while this thread ran: on a busy machine it is closer to the cost than the wall.
    println!("{scenario}: {n} requests, {cpu:?} CPU / {wall:?} wall each [{sum}]");
}

/// Unmeasured requests first: the instance's buffers grow and the guest's tables fill.
#[inline(never)]
fn warm_up(request: &mut Request) -> usize {
    let mut sum = 0usize;
    for _ in 0..2_000 {
        sum = sum.wrapping_add(request());
    }
    sum
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}
