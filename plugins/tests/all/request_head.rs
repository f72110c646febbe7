//! A request head lent to a plugin (`http::request::Parts`, as the proxy lends it) reads and changes as the
//! plugin-visible header list does: the same values, pairs, sizes and properties; rewrites written back into
//! the head; a paused stream's changes applied when it resumes; endpoint selection reading the head.

use std::sync::Arc;
use std::time::Duration;

use crate::builtin_balancer::{balancer, endpoints};
use crate::support::*;
use http::request::Parts;
use portico_plugins::{CandidateList, CandidateSource, FilterAction, HttpCallResponse, RequestInfo};

/// GET /a/b?c=d with Host, a User-Agent and a repeated field.
fn sample() -> Box<Parts> {
    let request = http::Request::get("/a/b?c=d")
        .header("host", "example.com")
        .header("user-agent", "curl/8")
        .header("x-multi", "1")
        .header("x-multi", "2")
        .body(())
        .unwrap();
    Box::new(request.into_parts().0)
}

/// The list the proxy built for [`sample`] before heads were lent.
fn list() -> Vec<(String, String)> {
    [
        (":method", "GET"),
        (":path", "/a/b?c=d"),
        (":authority", "example.com"),
        (":scheme", "http"),
        ("user-agent", "curl/8"),
        ("x-multi", "1"),
        ("x-multi", "2"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Reads names (any case), the pairs, the size and properties, and sets each answer as a property `s_*` ("-"
/// when not found).
const READER: &str = r#"
  (data (i32.const 1024) ":method")
  (data (i32.const 1040) ":PATH")
  (data (i32.const 1056) ":authority")
  (data (i32.const 1072) ":scheme")
  (data (i32.const 1088) "User-Agent")
  (data (i32.const 1104) "host")
  (data (i32.const 1120) "x-multi")
  (data (i32.const 1136) "x-absent")
  (data (i32.const 1200) "s_method")
  (data (i32.const 1216) "s_path")
  (data (i32.const 1232) "s_authority")
  (data (i32.const 1248) "s_scheme")
  (data (i32.const 1264) "s_ua")
  (data (i32.const 1280) "s_host")
  (data (i32.const 1296) "s_multi")
  (data (i32.const 1312) "s_absent")
  (data (i32.const 1328) "s_pairs")
  (data (i32.const 1344) "s_query")
  (data (i32.const 1360) "s_size")
  (data (i32.const 1376) "s_uheader")
  (data (i32.const 1400) "request\00query")
  (data (i32.const 1420) "request\00headers\00user-agent")
  (data (i32.const 2000) "-")
  (func $see (param $n i32) (param $nl i32) (param $p i32) (param $pl i32)
    (if (call $get_hdr (i32.const 0) (local.get $n) (local.get $nl) (i32.const 100) (i32.const 104))
      (then (drop (call $set_prop (local.get $p) (local.get $pl) (i32.const 2000) (i32.const 1))))
      (else (drop (call $set_prop (local.get $p) (local.get $pl) (call $ret_ptr) (call $ret_len))))))
  (func $prop (param $n i32) (param $nl i32) (param $p i32) (param $pl i32)
    (if (call $get_prop (local.get $n) (local.get $nl) (i32.const 100) (i32.const 104))
      (then (drop (call $set_prop (local.get $p) (local.get $pl) (i32.const 2000) (i32.const 1))))
      (else (drop (call $set_prop (local.get $p) (local.get $pl) (call $ret_ptr) (call $ret_len))))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $see (i32.const 1024) (i32.const 7) (i32.const 1200) (i32.const 8))
    (call $see (i32.const 1040) (i32.const 5) (i32.const 1216) (i32.const 6))
    (call $see (i32.const 1056) (i32.const 10) (i32.const 1232) (i32.const 11))
    (call $see (i32.const 1072) (i32.const 7) (i32.const 1248) (i32.const 8))
    (call $see (i32.const 1088) (i32.const 10) (i32.const 1264) (i32.const 4))
    (call $see (i32.const 1104) (i32.const 4) (i32.const 1280) (i32.const 6))
    (call $see (i32.const 1120) (i32.const 7) (i32.const 1296) (i32.const 7))
    (call $see (i32.const 1136) (i32.const 8) (i32.const 1312) (i32.const 8))
    (if (call $get_pairs (i32.const 0) (i32.const 100) (i32.const 104)) (then unreachable))
    (drop (call $set_prop (i32.const 1328) (i32.const 7) (call $ret_ptr) (call $ret_len)))
    (if (call $get_size (i32.const 0) (i32.const 108)) (then unreachable))
    (drop (call $set_prop (i32.const 1360) (i32.const 6) (i32.const 108) (i32.const 4)))
    (call $prop (i32.const 1400) (i32.const 13) (i32.const 1344) (i32.const 7))
    (call $prop (i32.const 1420) (i32.const 26) (i32.const 1376) (i32.const 9))
    (i32.const 0))
  ;; A later callback keeps the stream (and the properties it set) until the request is logged.
  (func (export "proxy_on_log") (param i32))
"#;

const PAIRS_IMPORTS: &str = r#"
  (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_size" (func $get_size (param i32 i32) (result i32)))
"#;

const SEEN: [&str; 12] = [
    "s_method",
    "s_path",
    "s_authority",
    "s_scheme",
    "s_ua",
    "s_host",
    "s_multi",
    "s_absent",
    "s_pairs",
    "s_query",
    "s_size",
    "s_uheader",
];

#[test]
fn a_lent_head_reads_as_the_list_does() {
    let e = engine();
    let (p, _) = load(&e, spec("reader", wat_imports(PAIRS_IMPORTS, READER))).unwrap();
    let seen = |s: &mut portico_plugins::HttpStream| -> Vec<Option<Vec<u8>>> {
        SEEN.iter().map(|name| s.property(name).unwrap()).collect()
    };

    let mut from_list = p.new_stream(RequestInfo::default()).unwrap();
    let mut h = list();
    assert_eq!(from_list.on_request_headers(&mut h, true).unwrap(), FilterAction::Continue);
    let listed = seen(&mut from_list);

    let mut lent = p.new_stream(RequestInfo::default()).unwrap();
    let mut head = sample();
    assert_eq!(lent.on_request_head(&mut head, true).unwrap(), FilterAction::Continue);
    assert_eq!(seen(&mut lent), listed, "a lent head answers every read as the list does");
    assert!(!lent.data_changed(), "reading changes nothing");

    let text = |v: &Option<Vec<u8>>| String::from_utf8_lossy(v.as_deref().unwrap()).into_owned();
    assert_eq!(text(&listed[1]), "/a/b?c=d", "names match in any case");
    assert_eq!(text(&listed[3]), "http");
    assert_eq!(text(&listed[4]), "curl/8");
    assert_eq!(text(&listed[5]), "-", "Host is :authority, not a field of the list");
    assert_eq!(text(&listed[6]), "1", "a repeated field reads as its first value");
    assert_eq!(text(&listed[7]), "-");
    assert_eq!(listed[8].as_deref(), Some(&portico_plugins::serialize_map(&list())[..]));
    assert_eq!(text(&listed[9]), "c=d");
    // The head went back as it came.
    assert_eq!(head.uri, "/a/b?c=d");
    assert_eq!(head.headers.get("host").unwrap(), "example.com");
    assert_eq!(head.headers.get_all("x-multi").iter().count(), 2);
    assert_eq!(head.headers.len(), 4);
}

/// The pairs a lent head gives count its fields the same way however many it has (a few are walked, many are
/// looked up) and leave out every `Host` field, however many there are.
#[test]
fn a_lent_heads_pairs_leave_out_every_host_field_at_any_size() {
    let e = engine();
    let (p, _) = load(&e, spec("reader", wat_imports(PAIRS_IMPORTS, READER))).unwrap();
    for extra in [0, 3, 30] {
        let mut request = http::Request::get("/p").header("host", "a.example").header("accept", "*/*");
        let mut expected = vec![
            (":method".to_string(), "GET".to_string()),
            (":path".to_string(), "/p".to_string()),
            (":authority".to_string(), "a.example".to_string()),
            (":scheme".to_string(), "http".to_string()),
            ("accept".to_string(), "*/*".to_string()),
        ];
        for i in 0..extra {
            request = request.header(format!("x-f{i}"), i.to_string());
            expected.push((format!("x-f{i}"), i.to_string()));
        }
        // A second Host field, as a request that repeats it would carry it.
        request = request.header("host", "b.example");
        let mut head = Box::new(request.body(()).unwrap().into_parts().0);
        let mut s = p.new_stream(RequestInfo::default()).unwrap();
        assert_eq!(s.on_request_head(&mut head, true).unwrap(), FilterAction::Continue);
        let pairs = s.property("s_pairs").unwrap();
        assert_eq!(pairs.as_deref(), Some(&portico_plugins::serialize_map(&expected)[..]), "{extra} extra fields");
    }
}

#[test]
fn a_lent_head_takes_the_plugins_rewrites() {
    let e = engine();
    let body = r#"
      (data (i32.const 1024) "x-added")
      (data (i32.const 1040) "yes")
      (data (i32.const 1056) ":path")
      (data (i32.const 1072) "/rewritten?q=1")
      (data (i32.const 1088) "X-Multi")
      (data (i32.const 1104) ":method")
      (data (i32.const 1120) "PUT")
      (data (i32.const 1136) "x-bad")
      (data (i32.const 1152) "a\0d\0ax: 1")
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (if (i32.ne (call $add_hdr (i32.const 0) (i32.const 1136) (i32.const 5) (i32.const 1152) (i32.const 8))
              (i32.const 2)) (then unreachable))
        (if (call $add_hdr (i32.const 0) (i32.const 1024) (i32.const 7) (i32.const 1040) (i32.const 3)) (then unreachable))
        (if (call $replace_hdr (i32.const 0) (i32.const 1056) (i32.const 5) (i32.const 1072) (i32.const 14)) (then unreachable))
        (if (call $replace_hdr (i32.const 0) (i32.const 1104) (i32.const 7) (i32.const 1120) (i32.const 3)) (then unreachable))
        (if (call $remove_hdr (i32.const 0) (i32.const 1088) (i32.const 7)) (then unreachable))
        (i32.const 0))
    "#;
    let (p, _) = load(&e, spec("rewriter", wat(body))).unwrap();
    let mut s = p.new_stream(RequestInfo::default()).unwrap();
    let mut head = sample();
    assert_eq!(s.on_request_head(&mut head, true).unwrap(), FilterAction::Continue);
    assert!(s.data_changed());
    assert_eq!(head.method, http::Method::PUT);
    assert_eq!(head.uri, "/rewritten?q=1");
    assert_eq!(head.headers.get("x-added").unwrap(), "yes");
    assert!(head.headers.get("x-multi").is_none(), "removed in any case");
    assert!(head.headers.get("x-bad").is_none(), "a value with CR or LF never reaches the head");
    assert_eq!(head.headers.get("host").unwrap(), "example.com", ":authority writes Host back");
    assert_eq!(head.headers.get("user-agent").unwrap(), "curl/8");

    // The stream's next request reads its own head, not the list the last one left.
    let (p, _) = load(&e, spec("reader", wat_imports(PAIRS_IMPORTS, READER))).unwrap();
    let mut first = p.new_stream(RequestInfo::default()).unwrap();
    let mut rewritten =
        Box::new(http::Request::post("/other").header("host", "b.example").body(()).unwrap().into_parts().0);
    first.on_request_head(&mut rewritten, true).unwrap();
    drop(first);
    let mut second = p.new_stream(RequestInfo::default()).unwrap();
    let mut h = sample();
    second.on_request_head(&mut h, true).unwrap();
    assert_eq!(second.property("s_path").unwrap().as_deref(), Some(&b"/a/b?c=d"[..]));
    assert_eq!(second.property("s_authority").unwrap().as_deref(), Some(&b"example.com"[..]));
}

#[tokio::test]
async fn a_paused_stream_resumes_with_the_head_it_left() {
    let e = engine();
    let (p, services) = load(&e, spec("authz", wat(crate::http::CALLOUT))).unwrap();
    let mut s = p.new_stream(RequestInfo::default()).unwrap();
    // Answer the callout from another thread once it is made, as the proxy's client task would.
    let answer = std::thread::spawn(move || {
        for _ in 0..500 {
            if let Some(call) = services.calls.lock().pop() {
                let resp = HttpCallResponse {
                    headers: vec![(":status".into(), "200".into()), ("x-user".into(), "alice".into())],
                    ..Default::default()
                };
                call.responder.complete(Some(resp)).unwrap();
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    });
    let mut head = sample();
    let action = tokio::time::timeout(Duration::from_secs(10), s.run_request_head(&mut head, true)).await.unwrap();
    assert!(answer.join().unwrap(), "the plugin made its callout");
    assert_eq!(action.unwrap(), FilterAction::Continue);
    assert!(s.data_changed());
    assert_eq!(head.headers.get("x-user").unwrap(), "alice");
    assert_eq!(head.headers.get("x-auth").unwrap(), "ok");
    assert_eq!(head.uri, "/a/b?c=d");
    assert_eq!(head.headers.get("host").unwrap(), "example.com");
}

#[test]
fn endpoint_selection_reads_the_lent_head() {
    let p = balancer(r#"{"policy": "ring_hash", "hash_on": "header:x-user"}"#);
    let cands = endpoints(8);
    let source: Arc<dyn CandidateSource> = Arc::new(CandidateList::new(cands.clone()));
    for user in ["alice", "bob", "carol", "dave"] {
        let mut s = p.new_stream(RequestInfo::default()).unwrap();
        let mut h = list();
        h.push(("x-user".into(), user.into()));
        s.on_request_headers(&mut h, true).unwrap();
        let listed = s.select_endpoint(&mut h, "backend", &cands, 0, None).unwrap().unwrap();

        let mut s = p.new_stream(RequestInfo::default()).unwrap();
        let mut head = sample();
        head.headers.insert("x-user", user.parse().unwrap());
        s.on_request_head(&mut head, true).unwrap();
        let index = s.select_endpoint_for(&mut head, "backend", &source, 0, None).unwrap().unwrap();
        assert_eq!(cands[index].address, listed, "the same key picks the same endpoint for {user}");
        assert_eq!(head.headers.get("x-user").unwrap(), user, "the head went back to its owner");
    }
}
