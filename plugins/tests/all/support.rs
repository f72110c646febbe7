//! Shared test helpers: a WAT prelude implementing the guest side of the ABI by hand, and recording services.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use portico_plugins::{
    HostServices, HttpCallRejected, HttpCallRequest, LogLevel, Plugin, PluginEngine, PluginError, PluginSpec,
    RequestInfo,
};

/// Wrap `body` in a module with the imports, a bump allocator, memory and the given ABI marker.
/// Scratch: 100 = returned pointer, 104 = returned size, 108 = extra out-param. Heap starts at 64 KiB.
pub fn wat_module(marker: Option<&str>, body: &str) -> String {
    let marker = marker.map(|m| format!("(func (export \"{m}\"))")).unwrap_or_default();
    format!(
        r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_hdr (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_hdr (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace_hdr (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove_hdr (param i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $send_local (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_prop (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property" (func $set_prop (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $inc_metric (param i32 i64) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buf (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $set_tick (param i32) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $reg_queue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $enqueue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $dequeue (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (func $alloc (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (global.get $heap) (local.get $n)) (i32.const 7)) (i32.const -8)))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow (i32.add (i32.shr_u (i32.sub (global.get $heap)
        (i32.mul (memory.size) (i32.const 65536))) (i32.const 16)) (i32.const 1))))))
    (local.get $p))
  (func $ret_ptr (result i32) (i32.load (i32.const 100)))
  (func $ret_len (result i32) (i32.load (i32.const 104)))
  (func (export "proxy_on_context_create") (param i32 i32))
  {marker}
  {body}
)"#
    )
}

/// Same with the 0.2.1 marker.
pub fn wat(body: &str) -> String {
    wat_module(Some("proxy_abi_version_0_2_1"), body)
}

/// Services that record logs and callouts for assertions.
#[derive(Default, Debug)]
pub struct TestServices {
    pub logs: Mutex<Vec<(LogLevel, String)>>,
    pub calls: Mutex<Vec<HttpCallRequest>>,
}

impl HostServices for TestServices {
    fn http_call(&self, request: HttpCallRequest) -> Result<(), HttpCallRejected> {
        if request.upstream != "auth" {
            return Err(HttpCallRejected::UnknownUpstream(request.upstream));
        }
        self.calls.lock().push(request);
        Ok(())
    }

    fn log(&self, _plugin: &str, level: LogLevel, message: &str) {
        self.logs.lock().push((level, message.to_string()));
    }

    fn log_level(&self) -> LogLevel {
        LogLevel::Trace
    }
}

pub fn engine() -> PluginEngine {
    PluginEngine::new().unwrap()
}

pub fn spec(name: &str, wasm: String) -> PluginSpec {
    let mut s = PluginSpec::new(name, wasm.into_bytes());
    s.instances = 1;
    s.cpu_limit = Duration::from_millis(30);
    s.memory_limit = 1 << 20;
    s
}

pub fn load(engine: &PluginEngine, spec: PluginSpec) -> Result<(Arc<Plugin>, Arc<TestServices>), PluginError> {
    let services = Arc::new(TestServices::default());
    let plugin = Plugin::load(engine, spec, services.clone())?;
    Ok((plugin, services))
}

pub fn request(path: &str) -> (RequestInfo, Vec<(String, String)>) {
    let info = RequestInfo { source_address: Some("192.0.2.7:40000".parse().unwrap()), ..RequestInfo::default() };
    let headers = vec![
        (":method".to_string(), "GET".to_string()),
        (":path".to_string(), path.to_string()),
        (":authority".to_string(), "example.com".to_string()),
        (":scheme".to_string(), "https".to_string()),
    ];
    (info, headers)
}

pub fn header<'a>(h: &'a [(String, String)], k: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

pub fn metrics_text(engine: &PluginEngine) -> String {
    prometheus::TextEncoder::new().encode_to_string(&engine.registry().gather()).unwrap()
}

/// [`wat`] with extra imports placed before the prelude's own (imports must precede definitions).
pub fn wat_imports(imports: &str, body: &str) -> String {
    wat(body).replacen("(module", &format!("(module\n{imports}"), 1)
}

/// An error and its causes, `: `-separated, as `anyhow` prints `{:#}`.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// An engine whose epoch clock, once asleep, looks again by itself only after 30 s (1 s in Portico): longer
/// than the 10 s any test here waits for a callback to be cut, so within a test only a callback wakes it, and
/// a clock that a callback failed to wake fails the test rather than hanging it.
pub fn engine_with_sleepy_clock() -> PluginEngine {
    let e = engine();
    e.set_epoch_clock_look(Duration::from_secs(30));
    e
}

/// Waits (up to 10 s) until the engine's epoch clock sleeps: no callback has run for its 20 quiet ticks.
pub fn assert_epoch_sleeps(engine: &PluginEngine) {
    let from = std::time::Instant::now();
    while !engine.epoch_clock_asleep() {
        assert!(from.elapsed() < Duration::from_secs(10), "the epoch clock still ticks with no callback running");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Asserts the engine's epoch clock ticks at its idle rate (at most one tick per 5 ms, and one more for a
/// wake-up): it ticks every millisecond only while a callback has run past its first tick, and ticking at
/// that rate for good would cost an idle proxy ~1,000 wake-ups a second.
pub fn assert_epoch_idles(engine: &PluginEngine) {
    let (from, ticks) = (std::time::Instant::now(), engine.epoch_ticks());
    std::thread::sleep(Duration::from_millis(200));
    let (took, ticked) = (from.elapsed(), engine.epoch_ticks() - ticks);
    let most = took.as_millis() as u64 / 5 + 2;
    assert!(ticked <= most, "{ticked} ticks in {took:?} (at most {most} at the idle rate)");
}
