//! Cost of a header filter per request through the wasm host: a stream opened, the request and response
//! header callbacks, and the stream closed (`proxy_on_done`, `proxy_on_delete`). `add_header` is the C test
//! plugin (it reads the `request.path` property, adds a request and a response header and bumps a counter, as
//! an SDK-built plugin would, allocating every returned value in the guest); `noop` is a WAT module whose
//! header callbacks return Continue, so the difference is the guest's own work. Headers: a typical browser
//! request (10 headers) and a small response (5), refilled each request into reused buffers as the proxy does
//! (`*_copy_only` is that refill alone, to subtract). The bench thread is a declared worker owning the instance.
//!
//! `CARGO_PROFILE_BENCH_LTO=false nice -n 10 cargo bench -p portico-plugins --bench filter -- --warm-up-time 1 \
//!    --measurement-time 3`
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use portico_plugins::{enter_worker, DefaultHostServices, Plugin, PluginEngine, PluginSpec, RequestFacts, RequestInfo};

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

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn request_headers() -> Vec<(String, String)> {
    pairs(&[
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
    ])
}

fn response_headers() -> Vec<(String, String)> {
    pairs(&[
        (":status", "200"),
        ("content-type", "application/json"),
        ("content-length", "512"),
        ("server", "app"),
        ("date", "Thu, 26 Nov 2026 12:00:00 GMT"),
    ])
}

fn facts() -> Arc<dyn RequestFacts> {
    Arc::new(RequestInfo { request_id: "b1f2c3d4e5f60718".to_string(), ..RequestInfo::default() })
}

fn bench(c: &mut Criterion) {
    enter_worker(0, 1);
    let engine = PluginEngine::new().unwrap();
    let mut group = c.benchmark_group("header_filter_per_request");
    for (name, bytes) in [("noop", NOOP.as_bytes().to_vec()), ("add_header", ADD_HEADER.to_vec())] {
        let mut spec = PluginSpec::new(format!("bench-{name}"), bytes);
        spec.config = "bench".into();
        spec.instances = 1;
        // The proxy opens streams through each worker's handle on a plugin version, made once.
        let plugin = Plugin::load(&engine, spec, Arc::new(DefaultHostServices)).unwrap().handle();
        let (req, resp) = (request_headers(), response_headers());
        group.bench_function(name, |b| {
            let (mut h, mut r) = (req.clone(), resp.clone());
            b.iter(|| {
                refill(&mut h, &req);
                refill(&mut r, &resp);
                let mut s = plugin.new_stream(facts()).unwrap();
                s.on_request_headers(&mut h, false).unwrap();
                s.on_response_headers(&mut r, false).unwrap();
                h.len() + r.len()
            })
        });
        // The headers' refill and the facts alone, to subtract.
        group.bench_function(format!("{name}_copy_only"), |b| {
            let (mut h, mut r) = (req.clone(), resp.clone());
            b.iter(|| {
                refill(&mut h, &req);
                refill(&mut r, &resp);
                (facts(), h.len() + r.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
