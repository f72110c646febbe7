//! Real C plugins (plugins/guest/*.c, built by plugins/guest/build.sh with pinned Zig + wasi-libc) driven
//! through requests and responses: `add_header.c`, and `cpp_sdk_protocol.c`, which talks to the host as plugins
//! built with the proxy-wasm C++ SDK do (factories under a root id, `plugin_root_id`, root-addressed callouts).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use crate::support::*;
use portico_plugins::{FilterAction, HttpCallResponse, LogLevel, Plugin, PluginSpec, Resumption};

const WASM: &[u8] = include_bytes!("../data/add_header.wasm");
const CPP_PROTOCOL: &[u8] = include_bytes!("../data/cpp_sdk_protocol.wasm");

/// The C++-SDK-protocol guest as the plugin `name` with this root id and configuration.
fn load_cpp(name: &str, root_id: &str, config: &str) -> (Arc<Plugin>, Arc<TestServices>) {
    let mut sp = PluginSpec::new(name, CPP_PROTOCOL.to_vec());
    sp.root_id = root_id.to_string();
    sp.config = config.to_string();
    sp.instances = 1;
    let services = Arc::new(TestServices::default());
    let p = Plugin::load(&engine(), sp, services.clone()).unwrap();
    assert!(p.unknown_imports().is_empty(), "{:?}", p.unknown_imports());
    (p, services)
}

fn request_with(path: &str, extra: &[(&str, &str)]) -> (portico_plugins::RequestInfo, Vec<(String, String)>) {
    let (info, mut h) = request(path);
    h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    (info, h)
}

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

/// Registered under the empty root id, as C++ SDK plugins register by default: the host answers
/// `plugin_root_id` with Ok and an empty value, and the plugin's own root and stream contexts run. A local
/// reply followed by 4 (StopAllIterationAndWatermark) is a local reply.
#[test]
fn a_cpp_sdk_style_plugin_registered_under_the_empty_root_id_acts() {
    let (p, _) = load_cpp("deny", "", "bad-token  other\n");
    let (info, mut h) = request("/");
    let mut s = p.new_stream(info).unwrap();
    match s.on_request_headers(&mut h, true).unwrap() {
        FilterAction::LocalResponse(r) => {
            assert_eq!(r.status, 403);
            assert_eq!(&r.body[..], b"Access forbidden - token missing.\n");
            assert!(r.headers.is_empty(), "{:?}", r.headers);
        }
        other => panic!("expected the denylist's local reply, got {other:?}"),
    }
    let (info, mut h) = request_with("/", &[("user-token", "other")]);
    let mut s = p.new_stream(info).unwrap();
    assert!(matches!(s.on_request_headers(&mut h, true).unwrap(), FilterAction::LocalResponse(r) if r.status == 403));
    let (info, mut h) = request_with("/", &[("user-token", "good")]);
    let mut s = p.new_stream(info).unwrap();
    assert_eq!(s.on_request_headers(&mut h, true).unwrap(), FilterAction::Continue);
    let mut resp = vec![(":status".to_string(), "200".to_string())];
    assert_eq!(s.on_response_headers(&mut resp, true).unwrap(), FilterAction::Continue);
    assert_eq!(header(&resp, "x-cpp-root"), Some(""), "the stream came from the factory registered under \"\"");
}

/// A root id no factory is registered under gets the SDK's idle root: the plugin loads and does nothing, which
/// is what happened to every C++ plugin while the host answered `plugin_root_id` with the plugin's name.
#[test]
fn a_cpp_sdk_style_plugin_with_an_unregistered_root_id_does_nothing() {
    let (p, _) = load_cpp("deny", "deny", "");
    let (info, mut h) = request("/");
    let mut s = p.new_stream(info).unwrap();
    assert_eq!(s.on_request_headers(&mut h, true).unwrap(), FilterAction::Continue);
    let mut resp = vec![(":status".to_string(), "200".to_string())];
    s.on_response_headers(&mut resp, true).unwrap();
    assert_eq!(header(&resp, "x-cpp-root"), None);
}

/// The local-reply sample's `:status` pair among the extra headers is not a response header.
#[test]
fn a_local_reply_drops_pseudo_headers_from_its_extra_headers() {
    let (p, _) = load_cpp("reply", "reply", "");
    let (info, mut h) = request("/");
    let mut s = p.new_stream(info).unwrap();
    match s.on_request_headers(&mut h, true).unwrap() {
        FilterAction::LocalResponse(r) => {
            assert_eq!((r.status, &r.body[..]), (200, &b"Hello World"[..]));
            assert_eq!(r.headers, vec![("content-type".to_string(), "text/plain".to_string())]);
        }
        other => panic!("expected a local reply, got {other:?}"),
    }
}

/// A callout made from a stream is answered on the root context (the guest aborts on any other id, as the C++
/// SDK does), with the stream effective once the guest asks for it.
#[tokio::test]
async fn a_callout_answer_is_addressed_to_the_root_context() {
    let (p, services) = load_cpp("authz", "auth", "");
    let (info, mut h) = request("/private");
    let mut s = p.new_stream(info).unwrap();
    assert_eq!(s.on_request_headers(&mut h, true).unwrap(), FilterAction::Pause, "4 pauses");
    let call = services.calls.lock().pop().unwrap();
    assert_eq!(header(&call.headers, ":path"), Some("/check"));
    let answer = HttpCallResponse { headers: vec![(":status".into(), "204".into())], ..Default::default() };
    call.responder.complete(Some(answer)).unwrap();
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), s.resumed()).await.unwrap();
    assert!(matches!(r, Resumption::Continue), "{r:?}");
    assert_eq!(header(&s.request_headers().unwrap(), "x-auth-status"), Some("204"));
}
