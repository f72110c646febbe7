//! Cost of one endpoint pick per request through the wasm host, per `builtin:balancer` policy and endpoint
//! count: new_stream + on_request_headers + select_endpoint (+ drop, which runs proxy_on_done/on_delete).
//! The candidates come from one `CandidateList` per set, as the proxy offers its endpoints: fingerprinted once,
//! the list built only when the plugin reads it.
//!
//! `CARGO_TARGET_DIR=/work/target-plugins nice -n 10 cargo bench -p portico-plugins --bench pick -- \
//!    --warm-up-time 1 --measurement-time 2`
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use portico_plugins::{
    builtin, Candidate, CandidateList, CandidateSource, DefaultHostServices, Plugin, PluginEngine, PluginSpec,
    RequestInfo,
};

const POLICIES: &[(&str, &str)] = &[
    ("round_robin", r#"{"policy": "round_robin"}"#),
    ("weighted_round_robin", r#"{"policy": "weighted_round_robin"}"#),
    ("least_request", r#"{"policy": "least_request"}"#),
    ("random", r#"{"policy": "random"}"#),
    ("ring_hash", r#"{"policy": "ring_hash", "hash_on": "header:x-user"}"#),
    ("maglev", r#"{"policy": "maglev", "hash_on": "header:x-user"}"#),
];

fn candidates(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            address: format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256),
            weight: 1 + (i % 3) as u32,
            active_requests: (i % 7) as u32,
            latency: Duration::from_millis(5 + (i % 11) as u64),
            ejected: false,
        })
        .collect()
}

/// Baseline guests in WAT: `noop` only exports the callback; `read` also fetches the candidates property, so
/// the difference to the policies is the C code's own work.
fn baseline(read: bool) -> String {
    let body = if read {
        r#"(drop (call $get_prop (i32.const 200) (i32.const 27) (i32.const 100) (i32.const 104)))"#
    } else {
        ""
    };
    format!(
        r#"(module
  (import "env" "proxy_get_property" (func $get_prop (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 200) "portico\00upstream\00candidates")
  (global $heap (mut i32) (i32.const 65536))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    ;; reuse one scratch area (grown on demand): a baseline, not a real allocator
    (if (i32.gt_u (local.get $n) (i32.const 65536))
      (then (return (i32.const 0))))
    (global.get $heap))
  (func (export "portico_on_upstream_select") (param i32 i32) (result i32)
    {body}
    (i32.const 0)))"#
    )
}

fn bench(c: &mut Criterion) {
    let engine = PluginEngine::new().unwrap();
    let mut group = c.benchmark_group("baseline");
    for (name, read) in [("noop", false), ("read_candidates", true)] {
        let mut spec = PluginSpec::new(format!("bench-{name}"), baseline(read).into_bytes());
        spec.instances = 1;
        let plugin = Plugin::load(&engine, spec, Arc::new(DefaultHostServices)).unwrap();
        for n in [3usize, 100, 1000] {
            let cands: Arc<dyn CandidateSource> = Arc::new(CandidateList::new(candidates(n)));
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    let mut h = vec![(":path".to_string(), "/".to_string())];
                    let mut s = plugin.new_stream(RequestInfo::default()).unwrap();
                    s.on_request_headers(&mut h, true).unwrap();
                    s.select_endpoint_from(&mut h, "backend", &cands, 0, None).unwrap()
                })
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("pick");
    for (name, config) in POLICIES {
        let mut spec = PluginSpec::new(format!("bench-{name}"), builtin("balancer").unwrap());
        spec.config = config.to_string();
        spec.instances = 1;
        let plugin = Plugin::load(&engine, spec, Arc::new(DefaultHostServices)).unwrap();
        for n in [3usize, 100, 1000] {
            let cands: Arc<dyn CandidateSource> = Arc::new(CandidateList::new(candidates(n)));
            let mut k = 0u64;
            group.bench_with_input(BenchmarkId::new(*name, n), &n, |b, _| {
                b.iter(|| {
                    k += 1;
                    let mut h = vec![
                        (":method".to_string(), "GET".to_string()),
                        (":path".to_string(), "/".to_string()),
                        (":authority".to_string(), "example.com".to_string()),
                        ("x-user".to_string(), format!("user-{}", k % 10_000)),
                    ];
                    let mut s = plugin.new_stream(RequestInfo::default()).unwrap();
                    s.on_request_headers(&mut h, true).unwrap();
                    s.select_endpoint_from(&mut h, "backend", &cands, 0, None).unwrap().unwrap()
                })
            });
        }
    }
    group.finish();

    // Table rebuild cost: the candidate set alternates between two sets every request, so every pick rebuilds.
    let mut group = c.benchmark_group("rebuild");
    for (name, config) in &POLICIES[4..] {
        let mut spec = PluginSpec::new(format!("bench-rebuild-{name}"), builtin("balancer").unwrap());
        spec.config = config.to_string();
        spec.instances = 1;
        let plugin = Plugin::load(&engine, spec, Arc::new(DefaultHostServices)).unwrap();
        for n in [3usize, 100, 1000] {
            let all = candidates(n);
            let full: Arc<dyn CandidateSource> = Arc::new(CandidateList::new(all.clone()));
            let fewer: Arc<dyn CandidateSource> = Arc::new(CandidateList::new(all[1..].to_vec()));
            let mut k = 0u64;
            group.bench_with_input(BenchmarkId::new(*name, n), &n, |b, _| {
                b.iter(|| {
                    k += 1;
                    let mut h = vec![("x-user".to_string(), format!("user-{k}"))];
                    let mut s = plugin.new_stream(RequestInfo::default()).unwrap();
                    s.on_request_headers(&mut h, true).unwrap();
                    let cands = if k & 1 == 0 { &full } else { &fewer };
                    s.select_endpoint_from(&mut h, "backend", cands, 0, None).unwrap().unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
