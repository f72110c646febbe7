//! The hostcall boundary: a guest may pass any pointer and length. Each input is a program for one interpreter
//! module: `proxy_on_request_headers` and `proxy_on_response_headers` make up to 64 hostcalls with arguments drawn
//! from the input (pointers in and out of bounds, lengths small, huge and negative) over a memory image that is
//! also the input. The host must answer with a status or a trap of that one callback: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_plugins::{DefaultHostServices, FailPolicy, Plugin, PluginEngine, PluginSpec, RequestInfo};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Hostcalls that take guest pointers or lengths, with their arity (all `i32`).
const CALLS: &[(&str, usize)] = &[
    ("proxy_log", 3),
    ("proxy_get_header_map_value", 5),
    ("proxy_add_header_map_value", 5),
    ("proxy_replace_header_map_value", 5),
    ("proxy_remove_header_map_value", 3),
    ("proxy_get_header_map_pairs", 3),
    ("proxy_set_header_map_pairs", 3),
    ("proxy_get_header_map_size", 2),
    ("proxy_get_buffer_bytes", 5),
    ("proxy_set_buffer_bytes", 5),
    ("proxy_get_buffer_status", 3),
    ("proxy_get_property", 4),
    ("proxy_set_property", 4),
    ("proxy_get_shared_data", 5),
    ("proxy_set_shared_data", 5),
    ("proxy_register_shared_queue", 3),
    ("proxy_resolve_shared_queue", 5),
    ("proxy_enqueue_shared_queue", 3),
    ("proxy_dequeue_shared_queue", 3),
    ("proxy_define_metric", 4),
    ("proxy_get_metric", 2),
    ("proxy_send_local_response", 8),
    ("proxy_http_call", 10),
    ("proxy_call_foreign_function", 6),
    ("proxy_get_configuration", 2),
    ("proxy_get_status", 3),
    ("proxy_continue_stream", 1),
    ("proxy_close_stream", 1),
    ("proxy_set_effective_context", 1),
];

fn engine() -> &'static PluginEngine {
    static ENGINE: OnceLock<PluginEngine> = OnceLock::new();
    ENGINE.get_or_init(|| PluginEngine::new().unwrap_or_else(|e| panic!("engine: {e}")))
}

/// One module for every input (compiled once, then taken from the engine's cache): it reads the plugin
/// configuration (the input) into memory, copies its first 4 KiB to address 0 as the memory image, and on each
/// header callback interprets it as a program: an op byte picks a hostcall, and each argument takes three
/// bytes, the first choosing its kind: an in-bounds pointer, a small length or id, a value near `i32::MAX`, or a
/// negative one.
fn module() -> &'static [u8] {
    static MODULE: OnceLock<Vec<u8>> = OnceLock::new();
    MODULE.get_or_init(|| {
        let n = CALLS.len();
        let get_buffer = CALLS.iter().position(|(name, _)| *name == "proxy_get_buffer_bytes").unwrap_or(0);
        let mut imports = String::new();
        for (i, (name, arity)) in CALLS.iter().enumerate() {
            let params = "i32 ".repeat(*arity);
            imports.push_str(&format!("(import \"env\" \"{name}\" (func $f{i} (param {params}) (result i32)))\n"));
        }
        let mut dispatch = String::from("(block $next\n");
        for i in (0..n).rev() {
            dispatch.push_str(&format!("(block $c{i}\n"));
        }
        let labels: String = (0..n).map(|i| format!(" $c{i}")).collect();
        dispatch.push_str(&format!("(br_table{labels} (local.get $op))\n"));
        for (i, (_, arity)) in CALLS.iter().enumerate() {
            let args = " (call $arg)".repeat(*arity);
            dispatch.push_str(&format!(")\n(drop (call $f{i}{args})) (br $next)\n"));
        }
        dispatch.push_str(")\n");
        let text = format!(
            r#"(module
{imports}
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (global $prog (mut i32) (i32.const 0))
  (global $len (mut i32) (i32.const 0))
  (global $cur (mut i32) (i32.const 0))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow (i32.add (i32.shr_u (i32.sub (global.get $heap)
        (i32.mul (memory.size) (i32.const 65536))) (i32.const 16)) (i32.const 1))))))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32) (param $size i32) (result i32)
    (if (i32.eqz (call $f{get_buffer} (i32.const 7) (i32.const 0) (local.get $size) (i32.const 100) (i32.const 104)))
      (then
        (global.set $prog (i32.load (i32.const 100)))
        (global.set $len (i32.load (i32.const 104)))
        (memory.copy (i32.const 0) (global.get $prog)
          (select (global.get $len) (i32.const 4096) (i32.lt_u (global.get $len) (i32.const 4096))))))
    (i32.const 1))
  (func $arg (result i32)
    (local $b0 i32) (local $b1 i32) (local $b2 i32)
    (if (i32.gt_u (i32.add (global.get $cur) (i32.const 3)) (i32.add (global.get $prog) (global.get $len)))
      (then (return (i32.const 0))))
    (local.set $b0 (i32.load8_u (global.get $cur)))
    (local.set $b1 (i32.load8_u (i32.add (global.get $cur) (i32.const 1))))
    (local.set $b2 (i32.load8_u (i32.add (global.get $cur) (i32.const 2))))
    (global.set $cur (i32.add (global.get $cur) (i32.const 3)))
    (block $small (block $huge (block $negative (block $pointer
      (br_table $pointer $small $huge $negative (i32.and (local.get $b0) (i32.const 3))))
      (return (i32.or (i32.shl (local.get $b1) (i32.const 8)) (local.get $b2))))
      (return (i32.sub (i32.const -1) (local.get $b2))))
      (return (i32.sub (i32.const 2147483647) (local.get $b2))))
    (local.get $b2))
  (func $run
    (local $op i32) (local $steps i32)
    (global.set $cur (global.get $prog))
    (block $exit (loop $top
      (br_if $exit (i32.ge_u (global.get $cur) (i32.add (global.get $prog) (global.get $len))))
      (br_if $exit (i32.ge_u (local.get $steps) (i32.const 64)))
      (local.set $steps (i32.add (local.get $steps) (i32.const 1)))
      (local.set $op (i32.rem_u (i32.load8_u (global.get $cur)) (i32.const {n})))
      (global.set $cur (i32.add (global.get $cur) (i32.const 1)))
      {dispatch}
      (br $top))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (call $run) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (call $run) (i32.const 0)))"#
        );
        wat::parse_str(&text).unwrap_or_else(|e| panic!("the interpreter module does not assemble: {e}\n{text}"))
    })
}

fuzz_target!(|data: &[u8]| {
    // The configuration is a string: seven bits of each input byte.
    let program: String = data.iter().map(|b| char::from(b & 0x7f)).collect();
    let mut spec = PluginSpec::new("fuzz", module().to_vec());
    spec.config = program;
    spec.instances = 1;
    spec.memory_limit = 1 << 20;
    spec.cpu_limit = Duration::from_millis(200);
    spec.fail = FailPolicy::Open;
    let Ok(plugin) = Plugin::load(engine(), spec, Arc::new(DefaultHostServices)) else { return };
    let Ok(mut stream) = plugin.new_stream(RequestInfo::default()) else { return };
    // The authority, like the method and path, is a pseudo-header plugins read from the request's headers.
    let mut headers = vec![
        (":method".to_string(), "GET".to_string()),
        (":path".to_string(), "/".to_string()),
        (":authority".to_string(), "example.com".to_string()),
    ];
    let _ = stream.on_request_headers(&mut headers, false);
    let mut response = vec![(":status".to_string(), "200".to_string())];
    let _ = stream.on_response_headers(&mut response, false);
});
