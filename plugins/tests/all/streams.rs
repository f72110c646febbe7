//! When a stream's context is made and deleted: made by its first callback (or not at all when none reaches
//! it), deleted as soon as nothing can reach it again, or when it is dropped.
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

/// A new stream whose context its request headers callback made: its id is then fixed.
fn opened(plugin: &std::sync::Arc<portico_plugins::Plugin>) -> portico_plugins::HttpStream {
    let (info, mut headers) = request("/");
    let mut stream = plugin.new_stream(info).unwrap();
    assert_eq!(stream.on_request_headers(&mut headers, true).unwrap(), FilterAction::Continue);
    stream
}

#[test]
fn a_stream_nothing_can_reach_again_is_deleted_when_its_request_headers_callback_returns() {
    let engine = engine();
    // A plugin that only looks at request headers (the bundled router's shape): nothing after that callback
    // can name its stream, so its context goes at once, while the request is still running.
    let (plugin, _) = load(&engine, spec("router_like", wat(CONTINUE_ON_HEADERS))).unwrap();
    let (info, mut headers) = request("/");
    let mut first = plugin.new_stream(info).unwrap();
    assert_eq!(first.context_id(), 0, "no context before the first callback");
    assert_eq!(first.on_request_headers(&mut headers, true).unwrap(), FilterAction::Continue);
    assert_ne!(first.context_id(), 0);
    let second = opened(&plugin);
    assert!(same_slot(first.context_id(), second.context_id()), "the first context was not deleted");
    assert_ne!(first.context_id(), second.context_id(), "a reused slot gets a new id");
    // Its remaining phases have nothing to run and dropping it deletes nothing else.
    assert_eq!(first.on_response_headers(&mut headers, true).unwrap(), FilterAction::Continue);
    first.on_log().unwrap();
    drop(first);
    let third = opened(&plugin);
    assert!(same_slot(second.context_id(), third.context_id()) && second.context_id() != third.context_id());
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
        let first = opened(&plugin);
        let second = opened(&plugin);
        assert!(!same_slot(first.context_id(), second.context_id()), "{name}: deleted while reachable");
        let first_id = first.context_id();
        drop(first);
        let third = opened(&plugin);
        assert!(same_slot(third.context_id(), first_id), "{name}: dropping the stream did not delete it");
        drop((second, third));
    }
}

/// A plugin that logs "made" when a stream context is created and "gone" when one is deleted (the root
/// context is made with parent 0, streams with the root as parent: only theirs are logged), and continues
/// on request headers.
const LIFE: &str = r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "madegone")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 2048))
  (func (export "proxy_on_context_create") (param $ctx i32) (param $root i32)
    (if (i32.ne (local.get $root) (i32.const 0))
      (then (drop (call $log (i32.const 2) (i32.const 1024) (i32.const 4))))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_delete") (param $ctx i32)
    (drop (call $log (i32.const 2) (i32.const 1028) (i32.const 4)))))"#;

#[test]
fn a_stream_no_callback_reaches_makes_no_context_unless_its_plugin_sees_every_stream() {
    let engine = engine();
    // A balancer's shape: it takes part only in endpoint selection. A request answered before balancing
    // (or abandoned) never reaches it, and its stream makes no context: the next stream takes the slot a
    // first stream takes.
    let select = r#"(func (export "portico_on_upstream_select") (param i32 i32) (result i32) (i32.const 0))"#;
    let balancer = |tag: &str| {
        let (plugin, _) = load(&engine, spec(tag, wat(&format!("{CONTINUE_ON_HEADERS}\n{select}")))).unwrap();
        plugin
    };
    let first_id = opened(&balancer("fresh")).context_id();
    let plugin = balancer("balancer_like");
    let (info, _) = request("/");
    let unreached = plugin.new_stream(info).unwrap();
    let reached = opened(&plugin);
    assert_eq!(reached.context_id(), first_id, "the unreached stream took a context");
    drop((unreached, reached));

    // A plugin that sees streams being made and deleted meets every request's, reached or not.
    let (plugin, services) = load(&engine, spec("lifecycle", LIFE.to_string())).unwrap();
    let logged = || services.logs.lock().iter().map(|(_, m)| m.clone()).collect::<Vec<_>>().join(",");
    let (info, _) = request("/");
    let unreached = plugin.new_stream(info).unwrap();
    assert_eq!(logged(), "", "made before any callback needed it");
    drop(unreached);
    assert_eq!(logged(), "made,gone");
    drop(opened(&plugin));
    assert_eq!(logged(), "made,gone,made,gone");
}
