//! What the two bundled plugins cost one request, driven as the proxy drives them: a stream opened on
//! `builtin:router` and on `builtin:balancer` (one set of request facts shared), the request headers through
//! the router (the balancer has no request headers callback, so the host skips it), the routed group read, an
//! endpoint picked (3 candidates, round robin, the request headers readable), `on_log`, both streams closed.
//! The request's head is lent to each callback and read in place, as the proxy lends it.
//!
//! - `router_and_balancer`: the bench thread is a declared worker owning its instances (the proxy's default:
//!   one instance per worker), so no callback takes a lock.
//! - `router_and_balancer_shared`: the same with fewer instances than workers, so instances are shared and
//!   every callback locks its instance.
//! - `native_only`: the caller's own work in the loop (the facts made), to subtract.
//!
//! `CARGO_PROFILE_BENCH_LTO=false nice -n 10 cargo bench -p portico-plugins --bench chain -- --warm-up-time 1 \
//!    --measurement-time 3`
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use portico_plugins::{
    builtin, enter_worker, Candidate, CandidateList, CandidateSource, DefaultHostServices, Plugin, PluginEngine,
    PluginSpec, RequestFacts, RequestInfo, TrafficDirection,
};

fn load(engine: &PluginEngine, name: &str, wasm: &str, config: &str) -> Arc<Plugin> {
    let mut spec = PluginSpec::new(name, builtin(wasm).unwrap());
    spec.config = config.to_string();
    spec.instances = 1;
    Plugin::load(engine, spec, Arc::new(DefaultHostServices)).unwrap()
}

/// The head of a `curl`/`wrk`-like request, which the proxy lends the plugins in place.
fn head() -> portico_plugins::Head {
    let request = http::Request::get("/").header("host", "127.0.0.1:18084").header("user-agent", "wrk").body(());
    Box::new(request.unwrap().into_parts().0)
}

/// What the proxy hands a request's chain: its id and addresses (the facts behind `request.id`,
/// `source.address`, ...), made once per request and shared by the plugins.
fn facts(id: &str) -> Arc<dyn RequestFacts> {
    Arc::new(RequestInfo {
        request_id: id.to_string(),
        protocol: "HTTP/1.1",
        source_address: Some(SocketAddr::from(([127, 0, 0, 1], 40000))),
        destination_address: Some(SocketAddr::from(([127, 0, 0, 1], 18084))),
        start_time: Some(SystemTime::UNIX_EPOCH),
        direction: TrafficDirection::Inbound,
        properties: Vec::new(),
    })
}

fn candidates() -> Arc<dyn CandidateSource> {
    Arc::new(CandidateList::new(
        (0..3)
            .map(|i| Candidate {
                address: format!("127.0.0.1:{}", 18080 + i),
                weight: 1,
                active_requests: 0,
                latency: Duration::from_millis(1),
                ejected: false,
            })
            .collect(),
    ))
}

fn bench(c: &mut Criterion) {
    let engine = PluginEngine::new().unwrap();
    let candidates = candidates();
    let mut group = c.benchmark_group("chain_per_request");
    for (name, workers) in [("router_and_balancer", 1), ("router_and_balancer_shared", 2)] {
        // One instance each: with one worker the bench thread owns it, with two they share it.
        enter_worker(0, workers);
        let router =
            load(&engine, "router", "router", r#"{"routes": [{"match": {"path_prefix": "/"}, "upstream": "origin"}]}"#);
        let balancer = load(&engine, "lb", "balancer", r#"{"policy": "round_robin"}"#);
        // The proxy opens streams through each worker's handle on a plugin version, made once.
        let (router, balancer) = (router.handle(), balancer.handle());
        group.bench_function(name, |b| {
            let mut h = head();
            b.iter(|| {
                let facts = facts("b1f2c3d4e5f60718");
                let mut streams = [router.new_stream(facts.clone()).unwrap(), balancer.new_stream(facts).unwrap()];
                for s in &mut streams {
                    s.on_request_head(&mut h, true).unwrap();
                }
                let group = streams[0].routed_upstream().unwrap().to_string();
                let chosen = streams[1].select_endpoint_for(&mut h, &group, &candidates, 0, None).unwrap().unwrap();
                for s in &mut streams {
                    s.on_log().unwrap();
                }
                chosen
            })
        });
    }
    group.bench_function("native_only", |b| b.iter(|| facts("b1f2c3d4e5f60718")));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
