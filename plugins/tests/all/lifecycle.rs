//! Load-time behaviour: ABI markers, refusals, configuration, start functions, unknown imports.
#![allow(clippy::unwrap_used)]

use crate::support::*;
use portico_plugins::{AbiVersion, FailureKind, PluginError};

const CONFIGURE_NEEDS_Y: &str = r#"
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param $ctx i32) (param $size i32) (result i32)
    (if (i32.eqz (local.get $size)) (then (return (i32.const 0))))
    (if (call $get_buf (i32.const 7) (i32.const 0) (i32.const -1) (i32.const 100) (i32.const 104))
      (then (return (i32.const 0))))
    (if (i32.ne (call $ret_len) (local.get $size)) (then (return (i32.const 0))))
    (i32.eq (i32.load8_u (call $ret_ptr)) (i32.const 121)))
"#;

#[test]
fn missing_abi_marker_is_refused_with_clear_error() {
    let e = engine();
    let err = load(&e, spec("nomark", wat_module(None, ""))).unwrap_err();
    match err {
        PluginError::AbiVersion { plugin, message } => {
            assert_eq!(plugin, "nomark");
            assert!(message.contains("missing proxy-wasm ABI version marker"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn abi_0_1_0_refused_and_0_2_0_accepted() {
    let e = engine();
    let err = load(&e, spec("old", wat_module(Some("proxy_abi_version_0_1_0"), ""))).unwrap_err();
    assert!(matches!(&err, PluginError::AbiVersion { message, .. } if message.contains("0.1.0")), "{err}");
    let (p, _) = load(&e, spec("go", wat_module(Some("proxy_abi_version_0_2_0"), ""))).unwrap();
    assert_eq!(p.abi_version(), AbiVersion::V0_2_0);
    let (p, _) = load(&e, spec("rust", wat("")).clone()).unwrap();
    assert_eq!(p.abi_version(), AbiVersion::V0_2_1);
}

/// The epoch ticker (the CPU deadline's clock) runs while a plugin is loaded and its callbacks run, and sleeps
/// while none is loaded (it woke an idle Portico without plugins ~900 times a second) or none has run for a
/// while (200 times a second with plugins). Ticks seen after the last plugin goes are at most the one already
/// under way.
#[test]
fn the_epoch_ticks_only_while_a_plugin_is_loaded_and_called() {
    let e = engine_with_sleepy_clock();
    std::thread::sleep(std::time::Duration::from_millis(30));
    assert_eq!(e.epoch_ticks(), 0, "no plugin, no ticks");
    let body = r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))"#;
    let (p, _) = load(&e, spec("ticking", wat(body))).unwrap();
    let started = std::time::Instant::now();
    while e.epoch_ticks() < 3 {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the epoch advances while a plugin is loaded");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_epoch_idles(&e);
    assert_epoch_sleeps(&e);
    // A request's callbacks wake it.
    let asleep = e.epoch_ticks();
    let (info, mut h) = request("/");
    let mut s = p.new_stream(info).unwrap();
    s.on_request_headers(&mut h, true).unwrap();
    drop(s);
    let started = std::time::Instant::now();
    while e.epoch_ticks() < asleep + 3 {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the epoch advances once a callback ran");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_epoch_sleeps(&e);
    drop(p);
    let at_drop = e.epoch_ticks();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(e.epoch_ticks() <= at_drop + 1, "ticks after the last plugin went: {} -> {}", at_drop, e.epoch_ticks());
}

/// The first plugin of a fresh engine, whose ticker was asleep, is still held to the start-up deadline: an
/// endless `proxy_on_configure` is cut and the load refused.
#[test]
fn an_endless_configure_on_a_fresh_engine_is_cut_by_the_deadline() {
    let e = engine();
    let body = r#"(func (export "proxy_on_configure") (param i32 i32) (result i32) (loop $l (br $l)) (i32.const 1))"#;
    let err = load(&e, spec("spin", wat(body))).unwrap_err();
    let cause = std::error::Error::source(&err).map(|c| c.to_string()).unwrap_or_default();
    assert!(cause.contains("exceeded its CPU deadline"), "{err:?}");
}

#[test]
fn garbage_bytes_fail_to_compile() {
    let e = engine();
    let mut s = spec("junk", String::new());
    s.wasm = b"\0asm\x01\0\0\0garbage".to_vec();
    assert!(matches!(load(&e, s).unwrap_err(), PluginError::Compile { .. }));
}

#[test]
fn configure_reads_plugin_configuration_and_false_refuses() {
    let e = engine();
    let mut good = spec("cfg", wat(CONFIGURE_NEEDS_Y));
    good.config = "yes".into();
    good.instances = 2;
    let (p, _) = load(&e, good).unwrap();
    assert_eq!(p.instance_count(), 2);

    let mut bad = spec("cfg", wat(CONFIGURE_NEEDS_Y));
    bad.config = "no".into();
    let err = load(&e, bad).unwrap_err();
    assert!(matches!(&err, PluginError::Configure { message, .. } if message.contains("returned false")), "{err}");
    assert!(err.to_string().contains("configuration rejected"));
}

#[test]
fn trap_in_start_function_is_refused() {
    let e = engine();
    let err = load(&e, spec("boom", wat(r#"(func (export "_initialize") unreachable)"#))).unwrap_err();
    assert!(matches!(err, PluginError::Start { .. }), "{err}");
}

#[test]
fn missing_allocator_is_refused() {
    let e = engine();
    let text = wat("").replace("(export \"proxy_on_memory_allocate\")", "");
    let err = load(&e, spec("noalloc", text)).unwrap_err();
    assert!(matches!(&err, PluginError::Export { export, .. } if export == "proxy_on_memory_allocate"), "{err}");
}

#[test]
fn memory_limit_below_initial_memory_is_refused() {
    let e = engine();
    let mut s = spec("tiny", wat(""));
    s.memory_limit = 64 * 1024; // module wants 2 pages
    let err = load(&e, s).unwrap_err();
    assert!(matches!(err, PluginError::Instantiate { .. }), "{err}");
}

#[test]
fn unknown_imports_instantiate_and_trap_when_called() {
    let e = engine();
    let text = wat_imports(
        r#"(import "env" "proxy_future_thing" (func $future (param i32) (result i32)))"#,
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (call $future (i32.const 1)))"#,
    );
    let (p, _) = load(&e, spec("future", text)).unwrap();
    assert_eq!(p.unknown_imports(), ["env.proxy_future_thing".to_string()]);
    let (info, mut h) = request("/");
    let mut s = p.new_stream(info).unwrap();
    let err = s.on_request_headers(&mut h, true).unwrap_err();
    assert_eq!(err.kind, FailureKind::Trap);
}

#[test]
fn compile_cache_returns_same_module_for_same_bytes() {
    let e = engine();
    let a = e.compile("x", wat("").as_bytes()).unwrap();
    let b = e.compile("x", wat("").as_bytes()).unwrap();
    assert_eq!(a.sha256_hex(), b.sha256_hex());
    assert_eq!(a.sha256_hex().len(), 64);
}

#[test]
fn wasi_command_start_with_proc_exit_zero_is_normal_exit() {
    let e = engine();
    let imports = r#"(import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))"#;
    let ok = wat_imports(imports, r#"(func (export "_start") (call $exit (i32.const 0)))"#);
    load(&e, spec("cmd", ok)).unwrap();
    let bad = wat_imports(imports, r#"(func (export "_start") (call $exit (i32.const 3)))"#);
    let err = load(&e, spec("cmd", bad)).unwrap_err();
    assert!(matches!(&err, PluginError::Start { .. }), "{err}");
    assert!(chain(&err).contains("proc_exit(3)"), "{}", chain(&err));
}

#[test]
fn wasi_fd_write_to_stderr_is_logged_as_error_during_initialize() {
    let e = engine();
    let imports =
        r#"(import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))"#;
    let body = r#"
      (data (i32.const 2000) "hello from init\n")
      (func (export "_initialize")
        (i32.store (i32.const 3000) (i32.const 2000))
        (i32.store (i32.const 3004) (i32.const 16))
        (if (call $fd_write (i32.const 2) (i32.const 3000) (i32.const 1) (i32.const 3008)) (then unreachable))
        (if (i32.ne (i32.load (i32.const 3008)) (i32.const 16)) (then unreachable))
        ;; fd 5 is not open
        (if (i32.ne (call $fd_write (i32.const 5) (i32.const 3000) (i32.const 1) (i32.const 3008)) (i32.const 8))
          (then unreachable)))
    "#;
    let (_p, services) = load(&e, spec("wasi", wat_imports(imports, body))).unwrap();
    let logs = services.logs.lock().clone();
    assert_eq!(logs, vec![(portico_plugins::LogLevel::Error, "hello from init".to_string())]);
}

#[test]
fn initialize_then_main_run_before_context_creation() {
    let e = engine();
    // _initialize stores 1, main must see it and store 2, on_configure requires 2.
    let body = r#"
      (global $stage (mut i32) (i32.const 0))
      (func (export "_initialize") (global.set $stage (i32.const 1)))
      (func (export "main") (param i32 i32) (result i32)
        (if (i32.ne (global.get $stage) (i32.const 1)) (then unreachable))
        (global.set $stage (i32.const 2))
        (i32.const 0))
      (func (export "proxy_on_configure") (param i32 i32) (result i32)
        (i32.eq (global.get $stage) (i32.const 2)))
    "#;
    load(&e, spec("main", wat(body))).unwrap();
}

/// Each refusal keeps what caused it as its `source()` and does not repeat it in its own message, so the error
/// printed with its chain (as `portico` does) names every cause exactly once.
#[test]
fn refusals_keep_their_causes_and_print_each_once() {
    use std::error::Error as _;
    let e = engine();
    let mut junk = spec("junk", String::new());
    junk.wasm = b"\0asm\x01\0\0\0garbage".to_vec();
    let mistyped = wat("").replace(
        r#"(func (export "proxy_on_context_create") (param i32 i32))"#,
        r#"(func (export "proxy_on_context_create") (param i32))"#,
    );
    let mut tiny = spec("tiny", wat(""));
    tiny.memory_limit = 64 * 1024;
    let trapping_configure = wat(r#"(func (export "proxy_on_configure") (param i32 i32) (result i32) unreachable)"#);
    let refusals = [
        load(&e, junk).unwrap_err(),
        load(&e, spec("mistyped", mistyped)).unwrap_err(),
        load(&e, tiny).unwrap_err(),
        load(&e, spec("boom", wat(r#"(func (export "_initialize") unreachable)"#))).unwrap_err(),
        load(&e, spec("cfg", trapping_configure)).unwrap_err(),
        portico_plugins::router_upstreams("nope").unwrap_err(),
    ];
    for err in &refusals {
        let cause = err.source().unwrap_or_else(|| panic!("{err:?} lost its cause"));
        let (top, cause) = (err.to_string(), cause.to_string());
        assert!(!top.contains(&cause), "the message repeats its cause: {top} / {cause}");
        assert_eq!(chain(err).matches(&cause).count(), 1, "{}", chain(err));
    }
    assert!(matches!(&refusals[0], PluginError::Compile { .. }), "{}", refusals[0]);
    assert!(matches!(&refusals[1], PluginError::Export { export, .. } if export == "proxy_on_context_create"));
    assert!(matches!(&refusals[2], PluginError::Instantiate { .. }), "{}", refusals[2]);
    assert!(chain(&refusals[3]).contains("unreachable"), "{}", chain(&refusals[3]));
    assert!(matches!(&refusals[4], PluginError::Configure { .. }), "{}", refusals[4]);
    assert!(chain(&refusals[5]).contains("expected"), "serde's reason: {}", chain(&refusals[5]));
}
