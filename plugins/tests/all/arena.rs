//! Portico's extensions to the memory protocol. The return arena (`portico_set_return_arena`): values
//! hostcalls return land in a region the guest registered instead of memory from its allocator, laid out from
//! the start of the region in each callback; what does not fit goes through the allocator as the ABI says. The
//! select version slot (`portico_set_select_version_slot`): the candidate set's version written where the
//! guest asked before each pick. Guests that never register either (SDK plugins) are covered by every other
//! test.

use crate::support::*;
use portico_plugins::{Candidate, FilterAction};
use std::time::Duration;

const ARENA_IMPORT: &str =
    r#"(import "env" "portico_set_return_arena" (func $set_arena (param i32 i32) (result i32)))"#;
const SLOT_IMPORT: &str =
    r#"(import "env" "portico_set_select_version_slot" (func $set_slot (param i32) (result i32)))"#;

/// Registers a 64-byte arena at 32768 in `proxy_on_vm_start`, then checks where returned values land: the
/// prelude's allocator bumps `$heap`, so an unchanged `$heap` means no guest allocation. Traps on any surprise.
const ARENA: &str = r#"
  (data (i32.const 1024) ":path")
  (data (i32.const 1040) "x-long")
  (data (i32.const 1056) ":status")
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (if (call $set_arena (i32.const 32768) (i32.const 64)) (then unreachable))
    (i32.const 1))
  (func $get (param $map i32) (param $key i32) (param $len i32) (result i32)
    (if (call $get_hdr (local.get $map) (local.get $key) (local.get $len) (i32.const 100) (i32.const 104))
      (then unreachable))
    (call $ret_ptr))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $heap0 i32)
    (local.set $heap0 (global.get $heap))
    ;; Two values in one callback: one after the other in the arena (8-aligned), both readable.
    (if (i32.ne (call $get (i32.const 0) (i32.const 1024) (i32.const 5)) (i32.const 32768)) (then unreachable))
    (if (i32.ne (call $get (i32.const 0) (i32.const 1024) (i32.const 5)) (i32.const 32776)) (then unreachable))
    (if (i32.ne (i32.load8_u (i32.const 32769)) (i32.const 115)) (then unreachable))
    (if (i32.ne (global.get $heap) (local.get $heap0)) (then unreachable))
    ;; 100 bytes do not fit in what is left: the allocator is called, as the ABI says.
    (if (i32.ne (call $get (i32.const 0) (i32.const 1040) (i32.const 6)) (local.get $heap0)) (then unreachable))
    (if (i32.eq (global.get $heap) (local.get $heap0)) (then unreachable))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    ;; A new callback starts at the beginning of the arena again.
    (if (i32.ne (call $get (i32.const 2) (i32.const 1056) (i32.const 7)) (i32.const 32768)) (then unreachable))
    (i32.const 0))
"#;

#[test]
fn returned_values_land_in_the_registered_arena_without_guest_allocations() {
    let e = engine();
    let text = wat_imports(ARENA_IMPORT, ARENA);
    let (p, _) = load(&e, spec("arena", text)).unwrap();
    for _ in 0..3 {
        let (info, mut h) = request("/short");
        h.push(("x-long".to_string(), "v".repeat(100)));
        let mut s = p.new_stream(info).unwrap();
        assert_eq!(s.on_request_headers(&mut h, true).unwrap(), FilterAction::Continue);
        let mut resp = vec![(":status".to_string(), "200".to_string())];
        assert_eq!(s.on_response_headers(&mut resp, true).unwrap(), FilterAction::Continue);
    }
}

/// Registers a select version slot at 2048 in `proxy_on_vm_start`; each pick compares it with the
/// `portico.upstream.candidates_version` property and selects "a:1" only when they agree (traps otherwise).
const VERSION_SLOT: &str = r#"
  (data (i32.const 1024) "portico\00upstream\00candidates_version")
  (data (i32.const 1080) "portico\00upstream\00selected")
  (data (i32.const 1120) "a:1")
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (if (call $set_slot (i32.const 2048)) (then unreachable))
    (i32.const 1))
  (func (export "portico_on_upstream_select") (param i32 i32) (result i32)
    (if (call $get_prop (i32.const 1024) (i32.const 35) (i32.const 100) (i32.const 104)) (then unreachable))
    (if (i32.ne (call $ret_len) (i32.const 8)) (then unreachable))
    (if (i64.ne (i64.load (call $ret_ptr)) (i64.load (i32.const 2048))) (then unreachable))
    (drop (call $set_prop (i32.const 1080) (i32.const 25) (i32.const 1120) (i32.const 3)))
    (i32.const 0))
"#;

fn candidates(addresses: &[&str]) -> Vec<Candidate> {
    let one = |address: &&str| Candidate {
        address: address.to_string(),
        weight: 1,
        active_requests: 0,
        latency: Duration::from_millis(1),
        ejected: false,
    };
    addresses.iter().map(one).collect()
}

#[test]
fn the_select_version_slot_holds_each_picks_candidates_version() {
    let e = engine();
    let text = wat_imports(SLOT_IMPORT, VERSION_SLOT);
    let (p, _) = load(&e, spec("slot", text)).unwrap();
    // Different sets and groups have different versions: each pick must find its own in the slot.
    let sets = [("g", vec!["a:1", "b:2"]), ("g", vec!["a:1", "c:3"]), ("h", vec!["a:1", "c:3"]), ("g", vec!["a:1"])];
    for (group, set) in sets {
        let (info, mut h) = request("/");
        let mut s = p.new_stream(info).unwrap();
        let chosen = s.select_endpoint(&mut h, group, &candidates(&set), 0, None).unwrap();
        assert_eq!(chosen.as_deref(), Some("a:1"), "{group} {set:?}");
    }
}

#[test]
fn a_place_registered_outside_memory_is_a_bad_pointer() {
    let e = engine();
    let registrations = [
        ("portico_set_return_arena", ARENA_IMPORT, "(call $set_arena (i32.const 0x7fff0000) (i32.const 64))"),
        ("portico_set_select_version_slot", SLOT_IMPORT, "(call $set_slot (i32.const 0x7fff0000))"),
    ];
    for (name, import, call) in registrations {
        let start =
            format!(r#"(func (export "proxy_on_vm_start") (param i32 i32) (result i32) (drop {call}) (i32.const 1))"#);
        let err = load(&e, spec("outside", wat_imports(import, &start))).unwrap_err();
        assert!(chain(&err).contains(name), "{}", chain(&err));
    }
}
