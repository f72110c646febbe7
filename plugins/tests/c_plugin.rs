//! A real C plugin (plugins/guest/add_header.c, built by plugins/guest/build.sh with pinned Zig + wasi-libc)
//! driven through a request and a response.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use portico_plugins::{FilterAction, LogLevel, Plugin, PluginSpec};

const WASM: &[u8] = include_bytes!("data/add_header.wasm");

fn load_c(config: &str) -> (portico_plugins::PluginEngine, Arc<Plugin>, Arc<TestServices>) {
    let e = engine();
    let mut sp = PluginSpec::new("c-add-header", WASM.to_vec());
    sp.config = config.to_string();
    sp.instances = 2;
    let services = Arc::new(TestServices::default());
    let p = Plugin::load(&e, sp, services.clone()).unwrap();
    (e, p, services)
}

#[test]
fn c_plugin_adds_headers_logs_and_counts() {
    let (e, p, services) = load_c("v1");
    assert!(p.unknown_imports().is_empty(), "{:?}", p.unknown_imports());
    let (info, mut h) = request("/hello");
    let mut s = p.new_stream(info).unwrap();
    assert_eq!(s.on_request_headers(&mut h, true).unwrap(), FilterAction::Continue);
    assert_eq!(header(&h, "x-portico-seen"), Some("/hello"));
    let mut resp = vec![(":status".to_string(), "200".to_string()), ("content-length".into(), "0".into())];
    assert_eq!(s.on_response_headers(&mut resp, true).unwrap(), FilterAction::Continue);
    assert_eq!(header(&resp, "x-portico-plugin"), Some("v1"));
    s.on_log().unwrap();
    let ctx = s.context_id();
    drop(s);

    let logs = services.logs.lock().clone();
    assert!(logs.contains(&(LogLevel::Info, "configured with v1".to_string())), "{logs:?}");
    // printf + fflush in proxy_on_log arrives through WASI fd_write(stdout).
    assert!(logs.contains(&(LogLevel::Info, format!("request {ctx} done"))), "{logs:?}");
    assert!(metrics_text(&e).contains(r#"portico_plugin_counter{name="requests",plugin="c-add-header"} 1"#));
}

/// The host copies headers into header maps recycled from earlier streams and back only when the plugin
/// changed them: every copy must be exact (no header of an earlier, longer request left over).
#[test]
fn c_plugin_header_copies_are_exact_across_recycled_maps() {
    let (_e, p, _) = load_c("v1");
    for i in 0..8 {
        let (info, mut h) = request(&format!("/r/{i}"));
        if i % 2 == 0 {
            h.push(("cookie".into(), "secret=1".into()));
            h.push(("x-long".into(), "a".repeat(300)));
        }
        let sent = h.clone();
        let mut s = p.new_stream(info).unwrap();
        assert_eq!(s.on_request_headers(&mut h, true).unwrap(), FilterAction::Continue);
        assert!(s.data_changed());
        assert_eq!(h.len(), sent.len() + 1, "{h:?}");
        assert_eq!(&h[..sent.len()], &sent[..]);
        assert_eq!(header(&h, "x-portico-seen"), Some(format!("/r/{i}").as_str()));
        assert_eq!(s.request_headers().unwrap(), h);
        let mut resp = vec![(":status".to_string(), "200".to_string())];
        assert_eq!(s.on_response_headers(&mut resp, true).unwrap(), FilterAction::Continue);
        assert!(s.data_changed());
        assert_eq!(resp, vec![(":status".into(), "200".into()), ("x-portico-plugin".into(), "v1".into())]);
        assert_eq!(s.response_headers().unwrap(), resp);
        // The request map is still readable from the response phase.
        assert_eq!(s.request_headers().unwrap(), h);
    }
}

#[test]
fn c_plugin_blocks_with_local_json_response() {
    let (_e, p, _) = load_c("v2");
    let (info, mut h) = request("/blocked/area");
    let mut s = p.new_stream(info).unwrap();
    match s.on_request_headers(&mut h, true).unwrap() {
        FilterAction::LocalResponse(r) => {
            assert_eq!(r.status, 403);
            assert_eq!(&r.body[..], br#"{"error":"blocked by plugin"}"#);
            assert_eq!(r.headers, vec![("content-type".to_string(), "application/json".to_string())]);
            assert_eq!(r.details, "blocked");
        }
        other => panic!("expected local response, got {other:?}"),
    }
}

#[test]
fn c_plugin_refuses_empty_configuration() {
    let e = engine();
    let sp = PluginSpec::new("c-add-header", WASM.to_vec());
    let err = Plugin::load(&e, sp, Arc::new(TestServices::default())).unwrap_err();
    assert!(matches!(err, portico_plugins::PluginError::Configure { .. }), "{err}");
}

#[test]
fn c_plugin_many_requests_across_instances() {
    let (e, p, _) = load_c("v3");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let p = p.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let (info, mut h) = request(&format!("/r/{i}"));
                    let mut s = p.new_stream(info).unwrap();
                    assert_eq!(s.on_request_headers(&mut h, true).unwrap(), FilterAction::Continue);
                    assert_eq!(header(&h, "x-portico-seen"), Some(format!("/r/{i}").as_str()));
                    s.on_log().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(metrics_text(&e).contains(r#"portico_plugin_counter{name="requests",plugin="c-add-header"} 200"#));
}
