//! When a stream's context is deleted: as soon as nothing can reach it again, or when it is dropped.
#![allow(clippy::unwrap_used)]

use crate::support::*;
use portico_plugins::FilterAction;

const CONTINUE_ON_HEADERS: &str = r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))"#;

/// Whether two live streams' context ids name the same slot (ids carry the slot index in their low 16 bits):
/// then the first one's context was already deleted and its slot reused.
fn same_slot(a: u32, b: u32) -> bool {
    (a ^ b) & 0xffff == 0
}

#[test]
fn a_stream_nothing_can_reach_again_is_deleted_when_its_request_headers_callback_returns() {
    let engine = engine();
    // A plugin that only looks at request headers (the bundled router's shape): nothing after that callback
    // can name its stream, so its context goes at once, while the request is still running.
    let (plugin, _) = load(&engine, spec("router_like", wat(CONTINUE_ON_HEADERS))).unwrap();
    let (info, mut headers) = request("/");
    let mut first = plugin.new_stream(info.clone()).unwrap();
    assert_eq!(first.on_request_headers(&mut headers, true).unwrap(), FilterAction::Continue);
    let second = plugin.new_stream(info.clone()).unwrap();
    assert!(same_slot(first.context_id(), second.context_id()), "the first context was not deleted");
    assert_ne!(first.context_id(), second.context_id(), "a reused slot gets a new id");
    // Its remaining phases have nothing to run and dropping it deletes nothing else.
    assert_eq!(first.on_response_headers(&mut headers, true).unwrap(), FilterAction::Continue);
    first.on_log().unwrap();
    drop(first);
    let third = plugin.new_stream(info).unwrap();
    assert!(!same_slot(second.context_id(), third.context_id()), "the second stream is still live");
}

#[test]
fn a_stream_a_later_callback_could_reach_lives_until_it_is_dropped() {
    let engine = engine();
    let later = [
        ("logs", r#"(func (export "proxy_on_log") (param i32))"#),
        ("selects", r#"(func (export "portico_on_upstream_select") (param i32 i32) (result i32) (i32.const 0))"#),
        ("ticks", r#"(func (export "proxy_on_tick") (param i32))"#),
        ("reads_bodies", r#"(func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (i32.const 0))"#),
    ];
    for (name, extra) in later {
        let (plugin, _) = load(&engine, spec(name, wat(&format!("{CONTINUE_ON_HEADERS}\n{extra}")))).unwrap();
        let (info, mut headers) = request("/");
        let mut first = plugin.new_stream(info.clone()).unwrap();
        assert_eq!(first.on_request_headers(&mut headers, true).unwrap(), FilterAction::Continue);
        let second = plugin.new_stream(info.clone()).unwrap();
        assert!(!same_slot(first.context_id(), second.context_id()), "{name}: deleted while reachable");
        let first_id = first.context_id();
        drop(first);
        let third = plugin.new_stream(info).unwrap();
        assert!(same_slot(third.context_id(), first_id), "{name}: dropping the stream did not delete it");
        drop((second, third));
    }
}
