//! Request-path behaviour through WAT guests: header maps, local responses, properties, shared data, metrics,
//! callouts with pause/resume, ticks, queues and the upstream selection extension.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use portico_plugins::{Candidate, FilterAction, HttpCallResponse, Resumption};

/// A candidate of weight 1, idle, answering in 3 ms.
fn cand(address: &str) -> Candidate {
    Candidate {
        address: address.into(),
        weight: 1,
        active_requests: 0,
        latency: Duration::from_millis(3),
        ejected: false,
    }
}

#[test]
fn header_add_replace_remove_visible_to_host() {
    let e = engine();
    let body = r#"
      (data (i32.const 1024) "x-added")
      (data (i32.const 1040) "yes")
      (data (i32.const 1056) ":path")
      (data (i32.const 1072) "/rewritten")
      (data (i32.const 1088) "X-Remove")
      (data (i32.const 1104) "x-resp")
      (data (i32.const 1120) "a\0d\0ax-injected: 1")
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        ;; CR/LF in a value is refused with BAD_ARGUMENT (2) instead of reaching the wire
        (if (i32.ne (call $add_hdr (i32.const 0) (i32.const 1024) (i32.const 7) (i32.const 1120) (i32.const 16))
              (i32.const 2)) (then unreachable))
        (if (call $add_hdr (i32.const 0) (i32.const 1024) (i32.const 7) (i32.const 1040) (i32.const 3)) (then unreachable))
        (if (call $replace_hdr (i32.const 0) (i32.const 1056) (i32.const 5) (i32.const 1072) (i32.const 10)) (then unreachable))
        (if (call $remove_hdr (i32.const 0) (i32.const 1088) (i32.const 8)) (then unreachable))
        (i32.const 0))
      (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
        (if (call $add_hdr (i32.const 2) (i32.const 1104) (i32.const 6) (i32.const 1040) (i32.const 3)) (then unreachable))
        (i32.const 0))
    "#;
    let (p, _) = load(&e, spec("hdr", wat(body))).unwrap();
    let (info, mut h) = request("/orig");
    h.push(("x-remove".into(), "a".into()));
    h.push(("x-remove".into(), "b".into()));
    let mut s = p.new_stream(info).unwrap();
    assert_eq!(s.on_request_headers(&mut h, false).unwrap(), FilterAction::Continue);
    assert_eq!(header(&h, "x-added"), Some("yes"));
    assert_eq!(h.iter().filter(|(k, _)| k == "x-added").count(), 1);
    assert_eq!(header(&h, ":path"), Some("/rewritten"));
    assert_eq!(h.iter().filter(|(k, _)| k == ":path").count(), 1);
    assert!(header(&h, "x-remove").is_none());
    let mut resp = vec![(":status".to_string(), "200".to_string())];
    assert_eq!(s.on_response_headers(&mut resp, false).unwrap(), FilterAction::Continue);
    assert_eq!(header(&resp, "x-resp"), Some("yes"));
    s.on_log().unwrap();
}

#[test]
fn send_local_response_becomes_local_response() {
    let e = engine();
    let body = r#"
      (data (i32.const 1024) "denied")
      (data (i32.const 1040) "\01\00\00\00\05\00\00\00\04\00\00\00x-why\00test\00")
      (data (i32.const 1088) "blocked by test")
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (if (call $send_local (i32.const 403) (i32.const 1088) (i32.const 15) (i32.const 1024) (i32.const 6)
              (i32.const 1040) (i32.const 23) (i32.const -1)) (then unreachable))
        (i32.const 1))
    "#;
    let (p, _) = load(&e, spec("deny", wat(body))).unwrap();
    let (info, mut h) = request("/");
    let mut s = p.new_stream(info).unwrap();
    match s.on_request_headers(&mut h, true).unwrap() {
        FilterAction::LocalResponse(r) => {
            assert_eq!(r.status, 403);
            assert_eq!(r.body, Bytes::from_static(b"denied"));
            assert_eq!(r.headers, vec![("x-why".to_string(), "test".to_string())]);
            assert_eq!(r.grpc_status, None);
            assert_eq!(r.details, "blocked by test");
        }
        other => panic!("expected local response, got {other:?}"),
    }
}

#[test]
fn body_read_and_rewrite() {
    let e = engine();
    let body = r#"
      (data (i32.const 1024) "HELLO")
      (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
        (if (i32.eqz (local.get $eos)) (then (return (i32.const 1))))
        ;; replace the first 5 bytes ("hello") with "HELLO"
        (if (call $get_buf (i32.const 0) (i32.const 0) (i32.const 5) (i32.const 100) (i32.const 104)) (then unreachable))
        (if (i32.ne (call $ret_len) (i32.const 5)) (then unreachable))
        (if (call $set_buf (i32.const 0) (i32.const 0) (i32.const 5) (i32.const 1024) (i32.const 5)) (then unreachable))
        (i32.const 0))
    "#;
    let text = wat_imports(
        r#"(import "env" "proxy_set_buffer_bytes" (func $set_buf (param i32 i32 i32 i32 i32) (result i32)))"#,
        body,
    );
    let (p, _) = load(&e, spec("body", text)).unwrap();
    assert!(p.handles_request_body(), "the export section names proxy_on_request_body");
    assert!(!p.handles_response_body(), "no proxy_on_response_body export");
    let (info, mut h) = request("/");
    let mut s = p.new_stream(info).unwrap();
    s.on_request_headers(&mut h, false).unwrap();
    let mut b = Bytes::from_static(b"hello");
    assert_eq!(s.on_request_body(&mut b, false).unwrap(), FilterAction::Pause);
    let mut b = Bytes::from_static(b"hello world");
    assert_eq!(s.on_request_body(&mut b, true).unwrap(), FilterAction::Continue);
    assert_eq!(b, Bytes::from_static(b"HELLO world"));
    assert_eq!(s.request_body().unwrap(), Bytes::from_static(b"HELLO world"), "the stream keeps the rewrite");
}

#[test]
fn properties_for_request_and_source() {
    let e = engine();
    let body = r#"
      (data (i32.const 1024) "request\00path")
      (data (i32.const 1040) "source\00address")
      (data (i32.const 1056) "plugin_name")
      (data (i32.const 1072) "x-path")
      (data (i32.const 1088) "x-src")
      (data (i32.const 1104) "x-name")
      (data (i32.const 1120) "request\00headers\00user-agent\00")
      (data (i32.const 1152) "x-ua")
      (data (i32.const 1168) "no\00such")
      (func $copy (param $p i32) (param $pl i32) (param $h i32) (param $hl i32)
        (if (call $get_prop (local.get $p) (local.get $pl) (i32.const 100) (i32.const 104)) (then unreachable))
        (if (call $add_hdr (i32.const 0) (local.get $h) (local.get $hl) (call $ret_ptr) (call $ret_len)) (then unreachable)))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $copy (i32.const 1024) (i32.const 12) (i32.const 1072) (i32.const 6))
        (call $copy (i32.const 1040) (i32.const 14) (i32.const 1088) (i32.const 5))
        (call $copy (i32.const 1056) (i32.const 11) (i32.const 1104) (i32.const 6))
        (call $copy (i32.const 1120) (i32.const 27) (i32.const 1152) (i32.const 4))
        (if (i32.ne (call $get_prop (i32.const 1168) (i32.const 7) (i32.const 100) (i32.const 104)) (i32.const 1))
          (then unreachable))
        (i32.const 0))
    "#;
    let (p, _) = load(&e, spec("props", wat(body))).unwrap();
    let (info, mut h) = request("/a/b?c=d");
    h.push(("user-agent".into(), "curl/8".into()));
    let mut s = p.new_stream(info).unwrap();
    s.on_request_headers(&mut h, true).unwrap();
    assert_eq!(header(&h, "x-path"), Some("/a/b?c=d"));
    assert_eq!(header(&h, "x-src"), Some("192.0.2.7:40000"));
    assert_eq!(header(&h, "x-name"), Some("props"));
    assert_eq!(header(&h, "x-ua"), Some("curl/8"));
}

#[test]
fn shared_data_cas_semantics() {
    let e = engine();
    let body = r#"
      (data (i32.const 1024) "k")
      (data (i32.const 1028) "v1v2v3v4")
      (data (i32.const 1040) "missing")
      (data (i32.const 1056) "x-cas")
      (data (i32.const 1072) "x-val")
      (func $digit (param $i i32) (param $s i32)
        (i32.store8 (i32.add (i32.const 1200) (local.get $i)) (i32.add (local.get $s) (i32.const 48))))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (local $cas i32)
        (call $digit (i32.const 0) (call $set_shared (i32.const 1024) (i32.const 1) (i32.const 1028) (i32.const 2) (i32.const 0)))
        (call $digit (i32.const 1) (call $get_shared (i32.const 1024) (i32.const 1) (i32.const 100) (i32.const 104) (i32.const 108)))
        (local.set $cas (i32.load (i32.const 108)))
        (call $digit (i32.const 2) (call $set_shared (i32.const 1024) (i32.const 1) (i32.const 1030) (i32.const 2)
          (i32.add (local.get $cas) (i32.const 1))))
        (call $digit (i32.const 3) (call $set_shared (i32.const 1024) (i32.const 1) (i32.const 1032) (i32.const 2) (local.get $cas)))
        (call $digit (i32.const 4) (call $set_shared (i32.const 1024) (i32.const 1) (i32.const 1034) (i32.const 2) (local.get $cas)))
        (call $digit (i32.const 5) (call $get_shared (i32.const 1040) (i32.const 7) (i32.const 100) (i32.const 104) (i32.const 108)))
        (drop (call $add_hdr (i32.const 0) (i32.const 1056) (i32.const 5) (i32.const 1200) (i32.const 6)))
        (if (call $get_shared (i32.const 1024) (i32.const 1) (i32.const 100) (i32.const 104) (i32.const 108)) (then unreachable))
        (drop (call $add_hdr (i32.const 0) (i32.const 1072) (i32.const 5) (call $ret_ptr) (call $ret_len)))
        (i32.const 0))
    "#;
    let (p, _) = load(&e, spec("cas", wat(body))).unwrap();
    let (info, mut h) = request("/");
    let mut s = p.new_stream(info).unwrap();
    s.on_request_headers(&mut h, true).unwrap();
    // set ok, get ok, wrong cas -> CAS_MISMATCH(8), right cas ok, stale cas -> 8, missing key -> NOT_FOUND(1)
    assert_eq!(header(&h, "x-cas"), Some("008081"));
    assert_eq!(header(&h, "x-val"), Some("v3"));
}

#[test]
fn guest_counter_visible_in_registry() {
    let e = engine();
    let body = r#"
      (global $hits (mut i32) (i32.const 0))
      (data (i32.const 1024) "hits")
      (func (export "proxy_on_configure") (param i32 i32) (result i32)
        (if (call $define_metric (i32.const 0) (i32.const 1024) (i32.const 4) (i32.const 108)) (then unreachable))
        (global.set $hits (i32.load (i32.const 108)))
        (i32.const 1))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (if (call $inc_metric (global.get $hits) (i64.const 1)) (then unreachable))
        ;; counters cannot go down: BAD_ARGUMENT (2)
        (if (i32.ne (call $inc_metric (global.get $hits) (i64.const -1)) (i32.const 2)) (then unreachable))
        (i32.const 0))
    "#;
    let mut sp = spec("metered", wat(body));
    sp.instances = 2;
    let (p, _) = load(&e, sp).unwrap();
    for _ in 0..3 {
        let (info, mut h) = request("/");
        let mut s = p.new_stream(info).unwrap();
        s.on_request_headers(&mut h, true).unwrap();
    }
    let text = metrics_text(&e);
    assert!(text.contains(r#"portico_plugin_counter{name="hits",plugin="metered"} 3"#), "{text}");
    // One callbacks counter per instance (workers never share one); both instances ran streams.
    for instance in 0..2 {
        let line = format!(r#"portico_plugin_callbacks_total{{instance="{instance}",plugin="metered"}}"#);
        assert!(text.contains(&line), "{text}");
    }
    assert!(text.contains(r#"portico_plugin_callback_seconds_count{plugin="metered"}"#), "{text}");
}

#[test]
fn upstream_selection_and_routing() {
    let e = engine();
    let body = r#"
      (data (i32.const 1024) "portico\00route\00upstream")
      (data (i32.const 1056) "blue")
      (data (i32.const 1072) "portico\00upstream\00selected")
      (data (i32.const 1104) "10.0.0.2:80")
      (data (i32.const 1120) "portico\00upstream\00candidates")
      (data (i32.const 1152) "evil:1")
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (if (call $set_prop (i32.const 1024) (i32.const 22) (i32.const 1056) (i32.const 4)) (then unreachable))
        (i32.const 0))
      (func (export "portico_on_upstream_select") (param $ctx i32) (param $attempt i32) (result i32)
        (local $p i32) (local $i i32)
        (if (i32.eqz (local.get $attempt)) (then
          (drop (call $set_prop (i32.const 1072) (i32.const 25) (i32.const 1104) (i32.const 11)))
          (return (i32.const 0))))
        (if (i32.eq (local.get $attempt) (i32.const 1)) (then
          ;; pick the first candidate line's address
          (if (call $get_prop (i32.const 1120) (i32.const 27) (i32.const 100) (i32.const 104)) (then unreachable))
          (local.set $p (call $ret_ptr))
          (block $done (loop $scan
            (br_if $done (i32.eq (i32.load8_u (i32.add (local.get $p) (local.get $i))) (i32.const 32)))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $scan)))
          (drop (call $set_prop (i32.const 1072) (i32.const 25) (local.get $p) (local.get $i)))
          (return (i32.const 0))))
        (drop (call $set_prop (i32.const 1072) (i32.const 25) (i32.const 1152) (i32.const 6)))
        (i32.const 0))
    "#;
    let (p, _) = load(&e, spec("lb", wat(body))).unwrap();
    let (info, mut h) = request("/");
    let mut s = p.new_stream(info).unwrap();
    s.on_request_headers(&mut h, true).unwrap();
    assert_eq!(s.routed_upstream(), Some("blue"));
    let all = [cand("10.0.0.1:80"), cand("10.0.0.2:80"), cand("10.0.0.3:80")];
    assert_eq!(s.select_endpoint(&mut h, "blue", &all, 0, None).unwrap().as_deref(), Some("10.0.0.2:80"));
    let retry = [cand("10.0.0.3:80"), cand("10.0.0.1:80")];
    assert_eq!(
        s.select_endpoint(&mut h, "blue", &retry, 1, Some("10.0.0.2:80")).unwrap().as_deref(),
        Some("10.0.0.3:80")
    );
    // A choice outside the candidate list is ignored (native balancing decides).
    assert_eq!(s.select_endpoint(&mut h, "blue", &retry, 2, Some("10.0.0.3:80")).unwrap(), None);
}

/// A balancer that only picks (no context life callbacks, nothing on the response side) has its context closed
/// with each pick, in the same visit; a retry opens another. One that exports `proxy_on_delete` keeps its
/// context until the stream is dropped, the same one across attempts.
#[test]
fn a_pick_only_context_closes_with_its_pick_and_a_retry_opens_another() {
    let e = engine();
    let picks = r#"
      (data (i32.const 1072) "portico\00upstream\00selected")
      (data (i32.const 1104) "10.0.0.2:80")
      (data (i32.const 1120) "10.0.0.1:80")
      (func (export "portico_on_upstream_select") (param $ctx i32) (param $attempt i32) (result i32)
        (if (i32.eqz (local.get $attempt))
          (then (drop (call $set_prop (i32.const 1072) (i32.const 25) (i32.const 1104) (i32.const 11))))
          (else (drop (call $set_prop (i32.const 1072) (i32.const 25) (i32.const 1120) (i32.const 11)))))
        (i32.const 0))
    "#;
    let all = [cand("10.0.0.1:80"), cand("10.0.0.2:80")];
    for (deletes, name) in [(false, "picks"), (true, "picks-and-deletes")] {
        let body = if deletes {
            format!("{picks} (func (export \"proxy_on_delete\") (param i32))")
        } else {
            picks.to_string()
        };
        // The prelude's `proxy_on_context_create` would show the guest a context's life: this module has none.
        let module = wat(&body).replace(r#"(func (export "proxy_on_context_create") (param i32 i32))"#, "");
        let (p, _) = load(&e, spec(name, module)).unwrap();
        let (info, mut h) = request("/");
        let mut s = p.new_stream(info).unwrap();
        assert_eq!(s.select_endpoint(&mut h, "blue", &all, 0, None).unwrap().as_deref(), Some("10.0.0.2:80"));
        let first = s.context_id();
        assert_eq!(first == 0, !deletes, "{name}: context after the first pick");
        let retried = s.select_endpoint(&mut h, "blue", &all, 1, Some("10.0.0.2:80")).unwrap();
        assert_eq!(retried.as_deref(), Some("10.0.0.1:80"), "{name}: the retry's pick");
        assert_eq!(s.context_id(), first, "{name}: context after the retry");
        drop(s);
        // Every context of the instance is gone: a new stream gets the first slot again.
        let (info, mut h) = request("/");
        let mut t = p.new_stream(info).unwrap();
        t.select_endpoint(&mut h, "blue", &all, 0, None).unwrap();
        if deletes {
            assert_eq!(t.context_id() & 0xFFFF, first & 0xFFFF, "{name}: the dropped stream's slot is reused");
        }
    }
}

#[test]
fn candidate_loads_are_properties_by_address() {
    let e = engine();
    // Selects 10.0.0.2:80 only if 10.0.0.1:80's latency reads 3000 µs, 10.0.0.2:80's load reads 7 and a
    // non-candidate's load is not found; anything else selects 10.0.0.1:80.
    let body = r#"
      (data (i32.const 1024) "portico\00upstream\00latency_us\0010.0.0.1:80")
      (data (i32.const 1088) "portico\00upstream\00active_requests\0010.0.0.2:80")
      (data (i32.const 1152) "portico\00upstream\00active_requests\0010.0.0.9:80")
      (data (i32.const 1216) "portico\00upstream\00selected")
      (data (i32.const 1248) "10.0.0.1:80")
      (data (i32.const 1264) "10.0.0.2:80")
      (func $int (param $path i32) (param $len i32) (result i64)
        (if (call $get_prop (local.get $path) (local.get $len) (i32.const 100) (i32.const 104))
          (then (return (i64.const -1))))
        (if (i32.ne (call $ret_len) (i32.const 8)) (then (return (i64.const -2))))
        (i64.load (call $ret_ptr)))
      (func (export "portico_on_upstream_select") (param i32 i32) (result i32)
        (local $pick i32)
        (local.set $pick (i32.const 1248))
        (if (i32.and
              (i32.and (i64.eq (call $int (i32.const 1024) (i32.const 39)) (i64.const 3000))
                       (i64.eq (call $int (i32.const 1088) (i32.const 44)) (i64.const 7)))
              (i64.eq (call $int (i32.const 1152) (i32.const 44)) (i64.const -1)))
          (then (local.set $pick (i32.const 1264))))
        (drop (call $set_prop (i32.const 1216) (i32.const 25) (local.get $pick) (i32.const 11)))
        (i32.const 0))
    "#;
    let (p, _) = load(&e, spec("loads", wat(body))).unwrap();
    let loaded = |a: &str, active: u32, latency_ms: u64| Candidate {
        active_requests: active,
        latency: Duration::from_millis(latency_ms),
        ..cand(a)
    };
    let (info, mut h) = request("/");
    let mut s = p.new_stream(info).unwrap();
    s.on_request_headers(&mut h, true).unwrap();
    let all = [loaded("10.0.0.1:80", 0, 3), loaded("10.0.0.2:80", 7, 1)];
    assert_eq!(s.select_endpoint(&mut h, "g", &all, 0, None).unwrap().as_deref(), Some("10.0.0.2:80"));
    let other = [loaded("10.0.0.1:80", 0, 4), loaded("10.0.0.2:80", 7, 1)];
    assert_eq!(
        s.select_endpoint(&mut h, "g", &other, 0, None).unwrap().as_deref(),
        Some("10.0.0.1:80"),
        "loads are read"
    );
}

/// Header callbacks of C++ SDK plugins return Envoy's FilterHeadersStatus: 2 (ContinueAndEndStream) goes on,
/// 3, 4 and anything larger stop like 1; body callbacks go on only with 0.
#[test]
fn envoy_filter_status_values_continue_or_pause_as_envoy_reads_them() {
    let e = engine();
    // Both callbacks return the first byte of the request path after the slash, as a number ('0' = 0).
    let body = r#"
      (data (i32.const 1024) "request\00path")
      (func $digit (result i32)
        (if (call $get_prop (i32.const 1024) (i32.const 12) (i32.const 100) (i32.const 104)) (then unreachable))
        (i32.sub (i32.load8_u (i32.add (call $ret_ptr) (i32.const 1))) (i32.const 48)))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (call $digit))
      (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (call $digit))
    "#;
    let (p, _) = load(&e, spec("status", wat(body))).unwrap();
    for (path, headers, body) in [
        ("/0", FilterAction::Continue, FilterAction::Continue),
        ("/1", FilterAction::Pause, FilterAction::Pause),
        ("/2", FilterAction::Continue, FilterAction::Pause),
        ("/3", FilterAction::Pause, FilterAction::Pause),
        ("/4", FilterAction::Pause, FilterAction::Pause),
        ("/9", FilterAction::Pause, FilterAction::Pause),
    ] {
        let (info, mut h) = request(path);
        let mut s = p.new_stream(info).unwrap();
        assert_eq!(s.on_request_headers(&mut h, false).unwrap(), headers, "headers returning {path}");
        let mut chunk = Bytes::from_static(b"x");
        assert_eq!(s.on_request_body(&mut chunk, true).unwrap(), body, "body returning {path}");
    }
}

pub(crate) const CALLOUT: &str = r#"
  (data (i32.const 1024) "auth")
  (data (i32.const 1100) "\03\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\06\00\00\00\0a\00\00\00\04\00\00\00:method\00GET\00:path\00/check\00:authority\00auth\00")
  (data (i32.const 1200) "x-auth")
  (data (i32.const 1216) "ok")
  (data (i32.const 1232) "x-user")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (call $http_call (i32.const 1024) (i32.const 4) (i32.const 1100) (i32.const 69) (i32.const 0) (i32.const 0)
          (i32.const 0) (i32.const 0) (i32.const 500) (i32.const 108)) (then unreachable))
    (i32.const 1))
  (func (export "proxy_on_http_call_response") (param $ctx i32) (param $token i32) (param $nh i32) (param $body i32) (param $nt i32)
    (if (i32.eqz (local.get $nh)) (then
      (drop (call $send_local (i32.const 503) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
              (i32.const 0) (i32.const -1)))
      (return)))
    (if (call $get_hdr (i32.const 6) (i32.const 1232) (i32.const 6) (i32.const 100) (i32.const 104)) (then unreachable))
    (drop (call $replace_hdr (i32.const 0) (i32.const 1232) (i32.const 6) (call $ret_ptr) (call $ret_len)))
    (drop (call $replace_hdr (i32.const 0) (i32.const 1200) (i32.const 6) (i32.const 1216) (i32.const 2)))
    (drop (call $continue (i32.const 0))))
"#;

#[tokio::test]
async fn http_callout_pauses_then_resumes_with_modified_headers() {
    let e = engine();
    let (p, services) = load(&e, spec("authz", wat(CALLOUT))).unwrap();
    let (info, mut h) = request("/private");
    let mut s = p.new_stream(info).unwrap();
    assert_eq!(s.on_request_headers(&mut h, true).unwrap(), FilterAction::Pause);
    let call = services.calls.lock().pop().unwrap();
    assert_eq!(call.upstream, "auth");
    assert_eq!(call.timeout, Duration::from_millis(500));
    assert_eq!(header(&call.headers, ":path"), Some("/check"));
    // Complete from another thread, as the proxy's client task would.
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        let resp = HttpCallResponse {
            headers: vec![(":status".into(), "200".into()), ("x-user".into(), "alice".into())],
            ..Default::default()
        };
        call.responder.complete(Some(resp)).unwrap();
    });
    let r = tokio::time::timeout(Duration::from_secs(5), s.resumed()).await.unwrap();
    t.join().unwrap();
    assert!(matches!(r, Resumption::Continue), "{r:?}");
    let h = s.request_headers().unwrap();
    assert_eq!(header(&h, "x-user"), Some("alice"));
    assert_eq!(header(&h, "x-auth"), Some("ok"));
}

#[tokio::test]
async fn failed_callout_turns_into_local_response_via_run_request_headers() {
    let e = engine();
    let (p, services) = load(&e, spec("authz", wat(CALLOUT))).unwrap();
    let (info, mut h) = request("/private");
    let mut s = p.new_stream(info).unwrap();
    let services2 = services.clone();
    let t = std::thread::spawn(move || {
        for _ in 0..500 {
            if let Some(call) = services2.calls.lock().pop() {
                drop(call); // dropping the responder reports a failed callout
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("no callout made");
    });
    let action = tokio::time::timeout(Duration::from_secs(5), s.run_request_headers(&mut h, true)).await.unwrap();
    t.join().unwrap();
    match action.unwrap() {
        FilterAction::LocalResponse(r) => assert_eq!(r.status, 503),
        other => panic!("expected 503, got {other:?}"),
    }
}

#[test]
fn ticks_run_on_schedule() {
    let e = engine();
    let body = r#"
      (global $m (mut i32) (i32.const 0))
      (data (i32.const 1024) "ticks")
      (func (export "proxy_on_configure") (param i32 i32) (result i32)
        (if (call $define_metric (i32.const 0) (i32.const 1024) (i32.const 5) (i32.const 108)) (then unreachable))
        (global.set $m (i32.load (i32.const 108)))
        (drop (call $set_tick (i32.const 20)))
        (i32.const 1))
      (func (export "proxy_on_tick") (param i32)
        (drop (call $inc_metric (global.get $m) (i64.const 1))))
    "#;
    let (p, _) = load(&e, spec("ticker", wat(body))).unwrap();
    let first = p.next_tick_deadline().unwrap();
    if std::time::Instant::now() + Duration::from_millis(1) < first {
        assert_eq!(p.run_ticks(), 0, "not due yet");
    }
    std::thread::sleep(first.saturating_duration_since(std::time::Instant::now()) + Duration::from_millis(2));
    assert_eq!(p.run_ticks(), 1);
    assert!(p.next_tick_deadline().unwrap() > first);
    assert!(metrics_text(&e).contains(r#"portico_plugin_counter{name="ticks",plugin="ticker"} 1"#));
}

#[test]
fn shared_queue_enqueue_triggers_on_queue_ready() {
    let e = engine();
    let body = r#"
      (global $q (mut i32) (i32.const 0))
      (global $m (mut i32) (i32.const 0))
      (data (i32.const 1024) "q")
      (data (i32.const 1032) "item")
      (data (i32.const 1040) "dequeued")
      (func (export "proxy_on_configure") (param i32 i32) (result i32)
        (if (call $reg_queue (i32.const 1024) (i32.const 1) (i32.const 108)) (then unreachable))
        (global.set $q (i32.load (i32.const 108)))
        (if (call $define_metric (i32.const 0) (i32.const 1040) (i32.const 8) (i32.const 108)) (then unreachable))
        (global.set $m (i32.load (i32.const 108)))
        (i32.const 1))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (if (call $enqueue (global.get $q) (i32.const 1032) (i32.const 4)) (then unreachable))
        (if (call $enqueue (global.get $q) (i32.const 1032) (i32.const 4)) (then unreachable))
        (i32.const 0))
      (func (export "proxy_on_queue_ready") (param $ctx i32) (param $qid i32)
        (block $empty (loop $next
          (br_if $empty (call $dequeue (local.get $qid) (i32.const 100) (i32.const 104)))
          (if (i32.ne (call $ret_len) (i32.const 4)) (then unreachable))
          (drop (call $inc_metric (global.get $m) (i64.const 1)))
          (br $next))))
    "#;
    let (p, _) = load(&e, spec("queue", wat(body))).unwrap();
    let (info, mut h) = request("/");
    let mut s = p.new_stream(info).unwrap();
    s.on_request_headers(&mut h, true).unwrap();
    assert!(metrics_text(&e).contains(r#"portico_plugin_counter{name="dequeued",plugin="queue"} 2"#));
}

#[test]
fn api_types_are_thread_safe_and_futures_are_send() {
    fn is_send<T: Send>(_: &T) {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<portico_plugins::Plugin>();
    send_sync::<portico_plugins::PluginEngine>();
    let e = engine();
    let (p, _) = load(&e, spec("send", wat(CALLOUT))).unwrap();
    let (info, mut h) = request("/");
    let mut s = p.new_stream(info).unwrap();
    is_send(&s);
    let fut = s.run_request_headers(&mut h, true);
    is_send(&fut);
    drop(fut);
}

#[test]
fn tick_resumes_paused_stream_through_effective_context() {
    let e = engine();
    let body = r#"
      (global $paused (mut i32) (i32.const 0))
      (func (export "proxy_on_configure") (param i32 i32) (result i32)
        (drop (call $set_tick (i32.const 1)))
        (i32.const 1))
      (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
        (global.set $paused (local.get $ctx))
        (i32.const 1))
      (func (export "proxy_on_tick") (param i32)
        (if (i32.eqz (global.get $paused)) (then (return)))
        (if (call $set_ctx (global.get $paused)) (then unreachable))
        (if (call $continue (i32.const 0)) (then unreachable))
        (global.set $paused (i32.const 0)))
    "#;
    let text =
        wat_imports(r#"(import "env" "proxy_set_effective_context" (func $set_ctx (param i32) (result i32)))"#, body);
    let (p, _) = load(&e, spec("timer-resume", text)).unwrap();
    let (info, mut h) = request("/");
    let mut s = p.new_stream(info).unwrap();
    assert_eq!(s.on_request_headers(&mut h, true).unwrap(), FilterAction::Pause);
    assert!(s.try_resumed().is_none());
    std::thread::sleep(Duration::from_millis(3));
    assert_eq!(p.run_ticks(), 1);
    assert!(matches!(s.try_resumed(), Some(Resumption::Continue)));
}
