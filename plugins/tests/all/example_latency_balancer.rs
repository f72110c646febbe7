//! The user-written example in examples/plugins/latency_balancer.c (built by plugins/builtin/build.sh into
//! examples/plugins/out/) steers traffic away from a slow endpoint.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::support::TestServices;
use portico_plugins::{Candidate, Plugin, PluginError, PluginSpec, RequestInfo};

const WASM: &[u8] = include_bytes!("../../../examples/plugins/out/latency_balancer.wasm");
/// The same plugin in Zig (examples/plugins/latency_balancer.zig), also built by plugins/builtin/build.sh.
const WASM_ZIG: &[u8] = include_bytes!("../../../examples/plugins/out/latency_balancer_zig.wasm");

fn load(config: &str) -> Result<Arc<Plugin>, PluginError> {
    load_wasm(WASM, config)
}

fn load_wasm(wasm: &[u8], config: &str) -> Result<Arc<Plugin>, PluginError> {
    let mut spec = PluginSpec::new("latency", wasm.to_vec());
    spec.config = config.to_string();
    spec.instances = 1;
    Plugin::load(&crate::support::engine(), spec, Arc::new(TestServices::default()))
}

fn cand(address: &str, latency_ms: u64) -> Candidate {
    Candidate {
        address: address.into(),
        weight: 1,
        active_requests: 0,
        latency: Duration::from_millis(latency_ms),
        ejected: false,
    }
}

#[test]
fn avoids_the_high_latency_endpoint() {
    avoids_slow(&load(r#"{"explore": 5}"#).unwrap());
}

#[test]
fn zig_version_avoids_the_high_latency_endpoint() {
    let p = load_wasm(WASM_ZIG, "").unwrap();
    assert!(p.unknown_imports().is_empty(), "{:?}", p.unknown_imports());
    avoids_slow(&p);
}

fn avoids_slow(p: &Arc<Plugin>) {
    let cands = [cand("10.0.0.1:80", 400), cand("10.0.0.2:80", 12), cand("10.0.0.3:80", 15)];
    let mut c: HashMap<String, usize> = HashMap::new();
    for _ in 0..2000 {
        let mut s = p.new_stream(RequestInfo::default()).unwrap();
        let addr = s.select_endpoint(&mut Vec::new(), "backend", &cands, 0, None).unwrap().unwrap();
        *c.entry(addr).or_default() += 1;
    }
    let slow = c.get("10.0.0.1:80").copied().unwrap_or(0);
    assert!(slow < 100, "slow endpoint got {slow} of 2000: {c:?}");
    assert!(c["10.0.0.2:80"] > 1500, "fastest endpoint gets most: {c:?}");
    assert!(slow > 0, "a little exploration reaches every endpoint: {c:?}");

    // Retries avoid the endpoint that just failed.
    let mut s = p.new_stream(RequestInfo::default()).unwrap();
    let mut h = Vec::new();
    let first = s.select_endpoint(&mut h, "backend", &cands, 0, None).unwrap().unwrap();
    let second = s.select_endpoint(&mut h, "backend", &cands, 1, Some(&first)).unwrap().unwrap();
    assert_ne!(first, second);
}

#[test]
fn refuses_a_bad_explore_value() {
    let err = load(r#"{"explore": 500}"#).unwrap_err();
    assert!(err.to_string().contains("explore must be an integer percent"), "{err}");
}
