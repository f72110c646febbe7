//! Worker threads and the instances they own.
//!
//! A proxy that serves each connection on one thread (thread-per-core) declares each of those threads with
//! [`enter_worker`]`(index, count)`. A plugin version with at least `count` instances then gives worker `index`
//! the instance in slot `index` for itself: the instance moves into the worker's thread-local table, and every
//! callback the worker runs on it reaches it there, without a lock, as proxy-wasm's C++ host (Envoy) and
//! ngx_wasm_module keep one VM per worker. With fewer instances than workers the instances stay shared and a
//! callback locks its instance (one VM for all workers when `instances = 1`, so the plugin's state is global).
//!
//! The table holds a weak reference to each instance's pool ([`SlotHome`]): an instance whose plugin version
//! is gone is dropped by [`forget_unloaded`]; one still in use when its thread ends is handed back to the pool.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;

use crate::instance::Slot;

thread_local! {
    /// `(index, count)` on a thread declared with [`enter_worker`].
    static WORKER: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
    /// This thread's token (see [`thread_token`]); 0 until first asked.
    static TOKEN: Cell<u64> = const { Cell::new(0) };
    /// The instances this thread owns.
    static OWNED: RefCell<Vec<Owned>> = const { RefCell::new(Vec::new()) };
}

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// Declares the calling thread as data-path worker `index` of `count`: the thread that runs every callback for
/// the streams it opens. Streams opened on a worker must stay on it (a current-thread runtime per worker does
/// that): used from another thread they fail with `FailureKind::Unavailable`. Plugin versions with at least
/// `count` instances give this worker one of its own (see the module docs); with fewer, it shares them.
pub fn enter_worker(index: usize, count: usize) {
    WORKER.with(|w| w.set(Some((index, count.max(1)))));
}

/// `(index, count)` if the calling thread is a declared worker.
pub(crate) fn worker() -> Option<(usize, usize)> {
    WORKER.with(Cell::get)
}

/// A number naming the calling thread, never 0 and never reused.
pub(crate) fn thread_token() -> u64 {
    TOKEN.with(|t| {
        if t.get() == 0 {
            t.set(NEXT_TOKEN.fetch_add(1, Ordering::Relaxed));
        }
        t.get()
    })
}

/// The pool an owned instance belongs to, which takes it back when its owner thread ends.
pub(crate) trait SlotHome: Send + Sync {
    /// The owner of `slot` is gone: make `state` the slot's shared instance again.
    fn release(&self, slot: usize, state: Slot);
}

/// One instance this thread owns. `Rc<RefCell<..>>` so that a callback runs without the table borrowed (a
/// table borrow across a callback would make any table access from inside it panic).
struct Owned {
    plugin: u64,
    home: Weak<dyn SlotHome>,
    slot: usize,
    cell: Rc<RefCell<Slot>>,
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(home) = self.home.upgrade() {
            if let Ok(mut state) = self.cell.try_borrow_mut() {
                home.release(self.slot, std::mem::take(&mut *state));
            }
        }
    }
}

/// The instance in `slot` of plugin version `plugin`, if this thread owns it.
pub(crate) fn owned(plugin: u64, slot: usize) -> Option<Rc<RefCell<Slot>>> {
    OWNED.with(|o| {
        let owned = o.try_borrow().ok()?;
        owned.iter().find(|e| e.plugin == plugin && e.slot == slot).map(|e| e.cell.clone())
    })
}

/// Takes `state` (the instance of `slot`, already marked as owned by this thread) into this thread's table.
pub(crate) fn adopt(plugin: u64, home: Weak<dyn SlotHome>, slot: usize, state: Slot) -> Rc<RefCell<Slot>> {
    let cell = Rc::new(RefCell::new(state));
    let entry = Owned { plugin, home, slot, cell: cell.clone() };
    OWNED.with(|o| match o.try_borrow_mut() {
        Ok(mut owned) => owned.push(entry),
        // Only reachable from inside a table access, which never adopts: hand the instance back.
        Err(_) => drop(entry),
    });
    cell
}

/// Drops the instances this thread owns for plugin versions that are gone. The proxy's per-worker ticker calls
/// it; opening a stream on a version this thread does not own yet does too.
pub fn forget_unloaded() {
    let dead: Vec<Owned> = OWNED.with(|o| match o.try_borrow_mut() {
        Ok(mut owned) => {
            let (dead, live) = std::mem::take(&mut *owned).into_iter().partition(|e| e.home.strong_count() == 0);
            *owned = live;
            dead
        }
        Err(_) => Vec::new(),
    });
    // Dropped outside the table borrow: dropping an instance runs no guest code, but keep the table free.
    drop(dead);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use super::*;
    use crate::{DefaultHostServices, Plugin, PluginEngine, PluginSpec, RequestInfo};

    const WAT: &str = r#"(module
      (memory (export "memory") 1)
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0)))"#;

    fn load(instances: usize) -> Arc<Plugin> {
        let mut spec = PluginSpec::new("owned", WAT.as_bytes().to_vec());
        spec.instances = instances;
        Plugin::load(&PluginEngine::new().unwrap(), spec, Arc::new(DefaultHostServices)).unwrap()
    }

    /// How many instances this thread owns (live or not yet forgotten).
    fn owned_count() -> usize {
        OWNED.with(|o| o.borrow().len())
    }

    #[test]
    fn a_worker_owns_its_slot_and_hands_it_back_when_it_ends() {
        let p = load(2);
        let q = p.clone();
        std::thread::spawn(move || {
            enter_worker(1, 2);
            // The stream's first callback places it.
            let mut s = q.new_stream(RequestInfo::default()).unwrap();
            s.on_request_headers(&mut Vec::new(), true).unwrap();
            assert_eq!(s.slot, 1, "worker 1 of 2 takes slot 1");
            assert_eq!(q.slots[1].owner.load(Ordering::Relaxed), thread_token());
            assert_eq!(owned_count(), 1);
            assert!(q.slots[1].shared.lock().instance.is_none(), "the instance moved to the worker");
        })
        .join()
        .unwrap();
        assert_eq!(p.slots[1].owner.load(Ordering::Relaxed), 0, "shared again once its owner ended");
        assert!(p.slots[1].shared.lock().instance.is_some(), "with its instance");
    }

    #[test]
    fn a_dropped_version_is_forgotten() {
        std::thread::spawn(|| {
            enter_worker(0, 1);
            let p = load(1);
            p.new_stream(RequestInfo::default()).unwrap().on_request_headers(&mut Vec::new(), true).unwrap();
            assert_eq!(owned_count(), 1);
            drop(p);
            forget_unloaded();
            assert_eq!(owned_count(), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn more_workers_than_instances_share_them() {
        let p = load(1);
        let q = p.clone();
        std::thread::spawn(move || {
            enter_worker(0, 2);
            let mut s = q.new_stream(RequestInfo::default()).unwrap();
            s.on_request_headers(&mut Vec::new(), true).unwrap();
            assert_eq!(s.slot, 0);
            assert_eq!(q.slots[0].owner.load(Ordering::Relaxed), 0, "no worker owns the only instance");
            assert_eq!(owned_count(), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn other_threads_use_the_spare_slot_when_workers_own_the_rest() {
        let p = load(1);
        let q = p.clone();
        let (owned, release) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let worker = std::thread::spawn(move || {
            enter_worker(0, 1);
            q.new_stream(RequestInfo::default()).unwrap().on_request_headers(&mut Vec::new(), true).unwrap();
            owned.0.send(()).unwrap();
            release.1.recv().unwrap();
        });
        owned.1.recv().unwrap();
        let mut s = p.new_stream(RequestInfo::default()).unwrap();
        s.on_request_headers(&mut Vec::new(), true).unwrap();
        assert_eq!(s.slot, 1, "the spare slot, made on first use");
        release.0.send(()).unwrap();
        worker.join().unwrap();
    }
}
