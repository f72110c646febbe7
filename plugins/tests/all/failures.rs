//! Hostile guests: endless loops, memory bombs, bad pointers and traps fail the request, not the process; the
//! instance is recreated, and crash loops mark the plugin broken.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use crate::support::*;
use portico_plugins::{FailPolicy, FailureKind, FilterAction, Plugin};

pub(crate) const CHAOS: &str = r#"
  (data (i32.const 1024) "x-loop")
  (data (i32.const 1040) "x-grow")
  (data (i32.const 1056) "x-bad")
  (data (i32.const 1072) "x-trap")
  (data (i32.const 1088) "x-ok")
  (data (i32.const 1104) "1")
  (data (i32.const 1120) "x-deep")
  (func $deep (param $n i32) (result i32)
    (i32.add (call $deep (i32.add (local.get $n) (i32.const 1))) (i32.const 1)))
  (func $has (param $p i32) (param $n i32) (result i32)
    (i32.eqz (call $get_hdr (i32.const 0) (local.get $p) (local.get $n) (i32.const 100) (i32.const 104))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (call $has (i32.const 1024) (i32.const 6)) (then (loop $l (br $l))))
    ;; As an allocator does: a refused grow (-1, as the spec has it) ends in an abort.
    (if (call $has (i32.const 1040) (i32.const 6))
      (then (if (i32.eq (memory.grow (i32.const 1000)) (i32.const -1)) (then unreachable))))
    (if (call $has (i32.const 1056) (i32.const 5))
      (then (drop (call $log (i32.const 2) (i32.const 0x7fff0000) (i32.const 10)))))
    (if (call $has (i32.const 1072) (i32.const 6)) (then unreachable))
    (if (call $has (i32.const 1120) (i32.const 6)) (then (drop (call $deep (i32.const 0)))))
    (drop (call $add_hdr (i32.const 0) (i32.const 1088) (i32.const 4) (i32.const 1104) (i32.const 1)))
    (i32.const 0))
"#;

fn run(
    p: &std::sync::Arc<Plugin>,
    trigger: Option<&str>,
) -> Result<Vec<(String, String)>, portico_plugins::PluginFailure> {
    let (info, mut h) = request("/");
    if let Some(t) = trigger {
        h.push((t.to_string(), "1".to_string()));
    }
    let mut s = p.new_stream(info)?;
    assert_eq!(s.on_request_headers(&mut h, true)?, FilterAction::Continue);
    Ok(h)
}

fn assert_recovers(p: &std::sync::Arc<Plugin>) {
    let h = run(p, None).unwrap();
    assert_eq!(header(&h, "x-ok"), Some("1"));
}

#[test]
fn endless_loop_times_out_and_instance_is_recreated() {
    let e = engine_with_sleepy_clock();
    let mut sp = spec("loop", wat(CHAOS));
    sp.cpu_limit = Duration::from_millis(20);
    let (p, _) = load(&e, sp).unwrap();
    assert_recovers(&p);
    // The loop starts on a clock asleep after a quiet spell: arming its deadline wakes it.
    assert_epoch_sleeps(&e);
    let start = Instant::now();
    let err = run(&p, Some("x-loop")).unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.kind, FailureKind::Timeout, "{err}");
    // The loop is endless: any end is the deadline's. The budget counts CPU time, so on a busy machine the
    // wall-clock time can be several times the budget; the bound only catches a deadline that never fires.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(took >= Duration::from_millis(15), "took {took:?}");
    assert_recovers(&p);
    // The loop was counted from its first tick; counting ended with it, and the clock slowed down again.
    assert_epoch_idles(&e);
    let text = metrics_text(&e);
    assert!(text.contains(r#"portico_plugin_failures_total{kind="timeout",plugin="loop"} 1"#), "{text}");
    assert!(text.contains(r#"portico_plugin_instance_restarts_total{plugin="loop"} 1"#), "{text}");
}

#[test]
fn unbounded_recursion_is_a_trap_not_a_crash() {
    let e = engine();
    let mut sp = spec("deep", wat(CHAOS));
    sp.cpu_limit = Duration::from_secs(2);
    let (p, _) = load(&e, sp).unwrap();
    let err = run(&p, Some("x-deep")).unwrap_err();
    assert_eq!(err.kind, FailureKind::Trap, "{err}");
    assert!(err.message.contains("stack"), "{err}");
    assert_recovers(&p);
}

/// A grow past `memory_limit` returns -1 to the guest (the wasm spec's refusal, which a garbage collector can
/// answer by collecting); the abort that follows in the same callback is counted as a memory failure.
#[test]
fn memory_grow_beyond_limit_is_a_memory_failure() {
    let e = engine();
    let (p, _) = load(&e, spec("bomb", wat(CHAOS))).unwrap();
    let err = run(&p, Some("x-grow")).unwrap_err();
    assert_eq!(err.kind, FailureKind::Memory, "{err}");
    assert!(err.message.contains("memory limit"), "{err}");
    assert_recovers(&p);
}

#[test]
fn out_of_bounds_pointer_is_a_bad_pointer_failure() {
    let e = engine();
    let (p, _) = load(&e, spec("oob", wat(CHAOS))).unwrap();
    let err = run(&p, Some("x-bad")).unwrap_err();
    assert_eq!(err.kind, FailureKind::BadPointer, "{err}");
    assert!(err.message.contains("proxy_log"), "{err}");
    assert_recovers(&p);
}

#[test]
fn trap_fails_request_and_streams_on_dead_instance_fail_cleanly() {
    let e = engine();
    // A response headers callback keeps each stream's context after its request headers callback.
    let keeps = r#"(func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))"#;
    let mut sp = spec("trappy", wat(&format!("{CHAOS}\n{keeps}")));
    sp.fail = FailPolicy::Open;
    let (p, _) = load(&e, sp).unwrap();
    assert_eq!(p.fail_policy(), FailPolicy::Open);
    // A stream whose context lived on the (single) instance before the crash loses it; one no callback had
    // reached yet makes its context on the new instance.
    let (info, mut h_other) = request("/");
    let mut other = p.new_stream(info).unwrap();
    assert_eq!(other.on_request_headers(&mut h_other, true).unwrap(), FilterAction::Continue);
    let (info, mut h_late) = request("/");
    let mut late = p.new_stream(info).unwrap();
    let err = run(&p, Some("x-trap")).unwrap_err();
    assert_eq!(err.kind, FailureKind::Trap);
    let mut answer = vec![(":status".to_string(), "200".to_string())];
    let err = other.on_response_headers(&mut answer, true).unwrap_err();
    assert_eq!(err.kind, FailureKind::Unavailable);
    assert_eq!(header(&answer, ":status"), Some("200"), "caller's headers survive a failure");
    assert_eq!(late.on_request_headers(&mut h_late, true).unwrap(), FilterAction::Continue);
    assert_recovers(&p);
}

#[test]
fn crash_loop_marks_plugin_broken() {
    let e = engine();
    let mut sp = spec("crashy", wat(CHAOS));
    sp.max_restarts_per_minute = 2;
    let (p, _) = load(&e, sp).unwrap();
    for _ in 0..3 {
        assert_eq!(run(&p, Some("x-trap")).unwrap_err().kind, FailureKind::Trap);
    }
    let err = run(&p, None).unwrap_err();
    assert_eq!(err.kind, FailureKind::Unavailable);
    assert!(p.is_broken());
    // A new version loads fine and serves.
    let (p2, _) = load(&e, spec("crashy", wat(CHAOS))).unwrap();
    assert!(!p2.is_broken());
    assert_recovers(&p2);
}

#[test]
fn a_broken_plugin_is_tried_again_after_its_cool_off() {
    let e = engine();
    let mut sp = spec("crashy", wat(CHAOS));
    sp.max_restarts_per_minute = 2;
    sp.broken_cooloff = std::time::Duration::from_millis(200);
    let (p, _) = load(&e, sp).unwrap();
    for _ in 0..3 {
        assert_eq!(run(&p, Some("x-trap")).unwrap_err().kind, FailureKind::Trap);
    }
    assert_eq!(run(&p, None).unwrap_err().kind, FailureKind::Unavailable);
    assert!(p.is_broken());
    std::thread::sleep(std::time::Duration::from_millis(250));
    // The cool-off is over: a fresh instance serves well-behaved requests again.
    assert_recovers(&p);
    assert!(!p.is_broken());
    // Breaking again rests twice as long: 250 ms later it is still broken.
    for _ in 0..3 {
        let _ = run(&p, Some("x-trap"));
    }
    assert!(run(&p, None).is_err());
    std::thread::sleep(std::time::Duration::from_millis(250));
    assert_eq!(run(&p, None).unwrap_err().kind, FailureKind::Unavailable);
    assert!(p.is_broken());
}

#[test]
fn one_instance_timing_out_does_not_affect_process() {
    // Several instances: a loop in one does not block streams on others.
    let e = engine();
    let mut sp = spec("pool", wat(CHAOS));
    sp.instances = 3;
    sp.cpu_limit = Duration::from_millis(10);
    let (p, _) = load(&e, sp).unwrap();
    let threads: Vec<_> = (0..3)
        .map(|i| {
            let p = p.clone();
            std::thread::spawn(move || {
                if i == 0 {
                    assert_eq!(run(&p, Some("x-loop")).unwrap_err().kind, FailureKind::Timeout);
                } else {
                    for _ in 0..20 {
                        assert_recovers(&p);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Services whose `proxy_log` sleeps: the callback's thread is off the CPU for a while, as when a machine is
/// starved of CPU by other processes.
struct Stalling(Duration);

impl portico_plugins::HostServices for Stalling {
    fn log(&self, _plugin: &str, _level: portico_plugins::LogLevel, _message: &str) {
        std::thread::sleep(self.0);
    }
}

#[test]
fn the_deadline_counts_cpu_time_not_time_off_the_cpu() {
    // Logs (the host stalls 80 ms), spins a little, then adds `x-ok: 1`; with `x-loop` it then loops forever.
    let body = r#"
      (data (i32.const 1024) "stall")
      (data (i32.const 1040) "x-ok")
      (data (i32.const 1056) "1")
      (data (i32.const 1072) "x-loop")
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (local $i i32)
        (drop (call $log (i32.const 2) (i32.const 1024) (i32.const 5)))
        (loop $spin
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $spin (i32.lt_u (local.get $i) (i32.const 100000))))
        (drop (call $add_hdr (i32.const 0) (i32.const 1040) (i32.const 4) (i32.const 1056) (i32.const 1)))
        (if (i32.eqz (call $get_hdr (i32.const 0) (i32.const 1072) (i32.const 6) (i32.const 100) (i32.const 104)))
          (then (loop $l (br $l))))
        (i32.const 0))
    "#;
    let mut sp = spec("stall", wat(body));
    sp.cpu_limit = Duration::from_millis(20);
    let p = Plugin::load(&engine(), sp, std::sync::Arc::new(Stalling(Duration::from_millis(80)))).unwrap();
    // 80 ms off the CPU inside a 20 ms budget: the callback completes.
    let h = run(&p, None).unwrap();
    assert_eq!(header(&h, "x-ok"), Some("1"));
    // Spinning on the CPU still runs out of budget.
    let start = Instant::now();
    assert_eq!(run(&p, Some("x-loop")).unwrap_err().kind, FailureKind::Timeout);
    assert!(start.elapsed() >= Duration::from_millis(95), "the stall did not count: {:?}", start.elapsed());
}
