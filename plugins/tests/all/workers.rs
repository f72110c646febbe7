//! Instances owned by worker threads (`enter_worker`), as the proxy runs them by default: callbacks reach them
//! without a lock, and work that arrives on another thread (a callout answered elsewhere, a stream dropped
//! elsewhere) waits for the owner instead of touching the instance.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use portico_plugins::{enter_worker, FailureKind, FilterAction, HttpCallResponse, Plugin, Resumption};

/// Runs `f` on a new thread declared as worker 0 of 1, inside a current-thread runtime (as a proxy worker).
fn on_worker<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        enter_worker(0, 1);
        f()
    })
    .join()
    .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn a_callout_answered_on_another_thread_resumes_a_stream_on_its_worker() {
    let e = engine();
    let (p, services) = load(&e, spec("authz", wat(crate::http::CALLOUT))).unwrap();
    let user = on_worker(move || {
        runtime().block_on(async move {
            let (info, mut h) = request("/private");
            let mut s = p.new_stream(info).unwrap();
            assert_eq!(s.on_request_headers(&mut h, true).unwrap(), FilterAction::Pause);
            let call = services.calls.lock().pop().unwrap();
            // Answered from a thread that cannot reach the worker's instance: the answer waits in its inbox,
            // and the paused stream runs it on its worker.
            let answer = std::thread::spawn(move || {
                let resp = HttpCallResponse {
                    headers: vec![(":status".into(), "200".into()), ("x-user".into(), "alice".into())],
                    ..Default::default()
                };
                call.responder.complete(Some(resp)).unwrap();
            });
            let r = tokio::time::timeout(Duration::from_secs(10), s.resumed()).await.unwrap();
            answer.join().unwrap();
            assert!(matches!(r, Resumption::Continue), "{r:?}");
            header(&s.request_headers().unwrap(), "x-user").map(str::to_string)
        })
    });
    assert_eq!(user.as_deref(), Some("alice"));
}

/// Logs `deleted` in `proxy_on_delete`.
const LOGS_DELETE: &str = r#"
  (data (i32.const 1024) "deleted")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_delete") (param i32) (drop (call $log (i32.const 2) (i32.const 1024) (i32.const 7))))
"#;

#[test]
fn a_stream_used_off_its_worker_fails_and_its_owner_deletes_it() {
    let e = engine();
    let (p, services) = load(&e, spec("owned", wat(LOGS_DELETE))).unwrap();
    let (to_main, from_worker) = std::sync::mpsc::channel();
    let (to_worker, from_main) = std::sync::mpsc::channel::<()>();
    let q = p.clone();
    let worker = std::thread::spawn(move || {
        enter_worker(0, 1);
        // Its context is made in the worker's own instance by its first callback.
        let (info, mut h) = request("/");
        let mut s = q.new_stream(info).unwrap();
        s.on_request_headers(&mut h, true).unwrap();
        to_main.send(s).unwrap();
        from_main.recv().unwrap();
        // The drop on the other thread left the deletion here.
        q.dispatch_pending();
    });
    let mut s = from_worker.recv().unwrap();
    let (_, mut h) = request("/");
    let err = s.on_request_trailers(&mut h).unwrap_err();
    assert_eq!(err.kind, FailureKind::Unavailable, "{err}");
    assert_eq!(header(&h, ":path"), Some("/"), "the caller's headers are untouched");
    // The drop leaves the deletion in the instance's inbox and wakes the version's tickers (the owner's among
    // them), which sleep until a tick is due or they are told of work.
    let signal = p.work_signal();
    let mut woken = std::pin::pin!(signal.notified());
    woken.as_mut().enable();
    drop(s);
    let heard = runtime().block_on(async { tokio::time::timeout(Duration::from_secs(10), woken).await });
    assert!(heard.is_ok(), "the drop did not wake the tickers");
    assert!(services.logs.lock().is_empty(), "not deleted off its worker");
    to_worker.send(()).unwrap();
    worker.join().unwrap();
    assert_eq!(services.logs.lock().iter().filter(|(_, m)| m == "deleted").count(), 1);
}

#[test]
fn ticks_run_on_the_worker_that_owns_the_instance() {
    let e = engine();
    let body = r#"
      (data (i32.const 1024) "tick")
      (func (export "proxy_on_configure") (param i32 i32) (result i32)
        (drop (call $set_tick (i32.const 1)))
        (i32.const 1))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
      (func (export "proxy_on_tick") (param i32) (drop (call $log (i32.const 2) (i32.const 1024) (i32.const 4))))
    "#;
    let (p, services) = load(&e, spec("ticker", wat(body))).unwrap();
    let (owned, ticked) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
    let q = p.clone();
    let worker = std::thread::spawn(move || {
        enter_worker(0, 1);
        let (info, mut h) = request("/");
        q.new_stream(info).unwrap().on_request_headers(&mut h, true).unwrap();
        owned.0.send(()).unwrap();
        ticked.1.recv().unwrap();
        std::thread::sleep(Duration::from_millis(3));
        q.run_ticks()
    });
    owned.1.recv().unwrap();
    std::thread::sleep(Duration::from_millis(3));
    assert_eq!(p.run_ticks(), 0, "another thread does not tick the worker's instance");
    assert!(p.next_tick_deadline().is_none(), "nor sees its timer");
    ticked.0.send(()).unwrap();
    assert_eq!(worker.join().unwrap(), 1, "its owner does");
    assert_eq!(services.logs.lock().len(), 1);
}

#[test]
fn a_trap_on_a_worker_recreates_its_instance_there() {
    let e = engine();
    let (p, _) = load(&e, spec("trappy", wat(crate::failures::CHAOS))).unwrap();
    let q: Arc<Plugin> = p.clone();
    let kinds = on_worker(move || {
        let mut kinds = Vec::new();
        for trigger in [None, Some("x-trap"), None, None] {
            let (info, mut h) = request("/");
            if let Some(t) = trigger {
                h.push((t.to_string(), "1".to_string()));
            }
            let mut s = q.new_stream(info).unwrap();
            kinds.push(s.on_request_headers(&mut h, true).map_err(|f| f.kind).map(|_| header(&h, "x-ok").is_some()));
        }
        kinds
    });
    assert_eq!(kinds, vec![Ok(true), Err(FailureKind::Trap), Ok(true), Ok(true)]);
    assert!(metrics_text(&e).contains(r#"portico_plugin_instance_restarts_total{plugin="trappy"} 1"#));
}
