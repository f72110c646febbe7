//! What the two bundled plugins cost one request, driven as the proxy drives them: a stream opened on
//! `builtin:router` and on `builtin:balancer` (one `RequestInfo` shared), the request headers run through both,
//! the routed group read, an endpoint picked (3 candidates, round robin), `on_log`, and both streams closed.
//! `native_only` is the caller's own work in the loop (the header list and the `RequestInfo`), to subtract.
//!
//! `CARGO_TARGET_DIR=/work/target-plugins CARGO_PROFILE_BENCH_LTO=false CARGO_PROFILE_BENCH_CODEGEN_UNITS=16 \
//!    nice -n 10 cargo bench -p portico-plugins --bench chain -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use portico_plugins::{
    builtin, Candidate, CandidateList, CandidateSource, DefaultHostServices, Plugin, PluginEngine, PluginSpec,
    RequestInfo, TrafficDirection,
};

fn load(engine: &PluginEngine, name: &str, wasm: &str, config: &str) -> Arc<Plugin> {
    let mut spec = PluginSpec::new(name, builtin(wasm).unwrap());
    spec.config = config.to_string();
    spec.instances = 1;
    Plugin::load(engine, spec, Arc::new(DefaultHostServices)).unwrap()
}

/// The list the proxy hands the plugins for a `curl`/`wrk`-like request.
fn headers() -> Vec<(String, String)> {
    [(":method", "GET"), (":path", "/"), (":authority", "127.0.0.1:18084"), (":scheme", "http"), ("user-agent", "wrk")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn info() -> Arc<RequestInfo> {
    Arc::new(RequestInfo {
        method: "GET".into(),
        path: "/".into(),
        authority: "127.0.0.1:18084".into(),
        scheme: "http".into(),
        protocol: "HTTP/1.1".into(),
        request_id: "b1f2c3d4e5f60718".into(),
        source_address: Some(SocketAddr::from(([127, 0, 0, 1], 40000))),
        destination_address: Some(SocketAddr::from(([127, 0, 0, 1], 18084))),
        start_time: SystemTime::now(),
        direction: TrafficDirection::Inbound,
        properties: Vec::new(),
    })
}

fn bench(c: &mut Criterion) {
    let engine = PluginEngine::new().unwrap();
    let router =
        load(&engine, "router", "router", r#"{"routes": [{"match": {"path_prefix": "/"}, "upstream": "origin"}]}"#);
    let balancer = load(&engine, "lb", "balancer", r#"{"policy": "round_robin"}"#);
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
    let template = headers();
    let mut group = c.benchmark_group("chain_per_request");
    group.bench_function("router_and_balancer", |b| {
        let mut h = template.clone();
        b.iter(|| {
            h.clone_from(&template);
            let info = info();
            let mut streams = [router.new_stream(info.clone()).unwrap(), balancer.new_stream(info).unwrap()];
            for s in &mut streams {
                s.on_request_headers(&mut h, true).unwrap();
            }
            let group = streams[0].routed_upstream().unwrap().unwrap();
            let chosen = streams[1].select_endpoint_from(&group, &candidates, 0, None).unwrap().unwrap();
            for s in &mut streams {
                s.on_log().unwrap();
            }
            chosen
        })
    });
    group.bench_function("native_only", |b| {
        let mut h = template.clone();
        b.iter(|| {
            h.clone_from(&template);
            info()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
