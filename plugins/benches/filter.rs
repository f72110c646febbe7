//! Cost of a header-adding filter per request through the wasm host: a stream opened, the request and response
//! header callbacks, and the stream closed (proxy_on_done, proxy_on_delete). `add_header` is the C test plugin
//! (it reads the `request.path` property, adds a request and a response header and bumps a counter);
//! `noop` is a WAT module whose header callbacks return Continue, so the difference is the guest's own work.
//! Headers: a typical browser request (10 headers) and a small response (5).
//!
//! `nice -n 10 cargo bench -p portico-plugins --bench filter -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use portico_plugins::{DefaultHostServices, Plugin, PluginEngine, PluginSpec, RequestInfo};

const ADD_HEADER: &[u8] = include_bytes!("../tests/data/add_header.wasm");

const NOOP: &str = r#"(module
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32) (global.get $heap))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0)))"#;

fn request_headers() -> Vec<(String, String)> {
    [
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
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn response_headers() -> Vec<(String, String)> {
    [
        (":status", "200"),
        ("content-type", "application/json"),
        ("content-length", "512"),
        ("server", "app"),
        ("date", "Thu, 26 Nov 2026 12:00:00 GMT"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn bench(c: &mut Criterion) {
    let engine = PluginEngine::new().unwrap();
    let mut group = c.benchmark_group("header_filter_per_request");
    for (name, bytes) in [("noop", NOOP.as_bytes().to_vec()), ("add_header", ADD_HEADER.to_vec())] {
        let mut spec = PluginSpec::new(format!("bench-{name}"), bytes);
        spec.config = "bench".into();
        spec.instances = 1;
        let plugin = Plugin::load(&engine, spec, Arc::new(DefaultHostServices)).unwrap();
        let (req, resp) = (request_headers(), response_headers());
        group.bench_function(name, |b| {
            b.iter(|| {
                let (mut h, mut r) = (req.clone(), resp.clone());
                let info =
                    RequestInfo { path: "/api/v1/items?page=2".into(), method: "GET".into(), ..RequestInfo::default() };
                let mut s = plugin.new_stream(info).unwrap();
                s.on_request_headers(&mut h, false).unwrap();
                s.on_response_headers(&mut r, false).unwrap();
                (h, r)
            })
        });
        // The headers' clone alone, to subtract.
        group.bench_function(format!("{name}_clone_only"), |b| b.iter(|| (req.clone(), resp.clone())));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
