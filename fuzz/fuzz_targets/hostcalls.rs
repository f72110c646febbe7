//! The hostcall boundary: a guest may pass any pointer and length. Each input becomes a module whose
//! `proxy_on_request_headers` and `proxy_on_response_headers` make a sequence of hostcalls with arguments drawn
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

/// An argument: an in-bounds pointer, a small length or id, a value near `i32::MAX`, or a negative one.
fn arg(b: &[u8]) -> i32 {
    let (kind, hi, lo) = (b[0] % 4, i32::from(b[1]), i32::from(b[2]));
    match kind {
        0 => (hi << 8) | lo,
        1 => lo,
        2 => i32::MAX - lo,
        _ => -lo - 1,
    }
}

fn module(data: &[u8]) -> Option<String> {
    let (image, ops) = data.split_at(data.len().min(512));
    let image: String = image.iter().map(|b| format!("\\{b:02x}")).collect();
    let mut imports = String::new();
    for (i, (name, arity)) in CALLS.iter().enumerate() {
        let params = "i32 ".repeat(*arity);
        imports.push_str(&format!("(import \"env\" \"{name}\" (func $f{i} (param {params}) (result i32)))\n"));
    }
    let mut calls = String::new();
    let mut rest = ops;
    for _ in 0..24 {
        let Some((&which, tail)) = rest.split_first() else { break };
        let (i, (_, arity)) = (usize::from(which) % CALLS.len(), CALLS[usize::from(which) % CALLS.len()]);
        if tail.len() < arity * 3 {
            break;
        }
        let args: String = tail[..arity * 3].chunks(3).map(|c| format!(" (i32.const {})", arg(c))).collect();
        calls.push_str(&format!("(drop (call $f{i}{args}))\n"));
        rest = &tail[arity * 3..];
    }
    if calls.is_empty() {
        return None;
    }
    Some(format!(
        r#"(module
{imports}
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (data (i32.const 0) "{image}")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    {calls}
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    {calls}
    (i32.const 0)))"#
    ))
}

fuzz_target!(|data: &[u8]| {
    let Some(text) = module(data) else { return };
    let Ok(wasm) = wat::parse_str(&text) else { return };
    let mut spec = PluginSpec::new("fuzz", wasm);
    spec.instances = 1;
    spec.memory_limit = 1 << 20;
    spec.cpu_limit = Duration::from_millis(200);
    spec.fail = FailPolicy::Open;
    let Ok(plugin) = Plugin::load(engine(), spec, Arc::new(DefaultHostServices)) else { return };
    let info = RequestInfo { authority: "example.com".into(), ..RequestInfo::default() };
    let Ok(mut stream) = plugin.new_stream(info) else { return };
    let mut headers = vec![(":method".to_string(), "GET".to_string()), (":path".to_string(), "/".to_string())];
    let _ = stream.on_request_headers(&mut headers, false);
    let mut response = vec![(":status".to_string(), "200".to_string())];
    let _ = stream.on_response_headers(&mut response, false);
});
