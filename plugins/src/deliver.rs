//! Work that reaches an instance outside a stream's own phases: callout answers (`proxy_on_http_call_response`),
//! queue notifications (`proxy_on_queue_ready`), ticks (`proxy_on_tick`), and the deletion of a stream dropped
//! on a thread that does not own its instance.
//!
//! Such work runs at once when the calling thread can reach the instance (it owns it, or the instance is
//! shared) and is not inside a callback (never re-entrantly into a store). Otherwise it waits in the slot's
//! inbox for a thread that can: the owner runs it after its next callback on the instance, from its ticker
//! ([`Plugin::run_ticks`]), or while one of its streams waits for a resumption ([`crate::HttpStream::resumed`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::callout::{CalloutSink, HttpCallResponse};
use crate::error::PluginFailure;
use crate::instance::{in_callback, Slot};
use crate::pool::{Pending, Plugin, Reach};
use crate::shared::QueueSink;
use crate::worker;

/// How soon a ticker looks again at a shared instance that was in use when it looked for its next tick.
const BUSY_RETRY: Duration = Duration::from_millis(20);

/// What a plugin version's tickers wait on besides their next tick: it wakes them when there is something new
/// to look at (mail for an instance, a tick period set or changed, an instance changing hands, the version
/// dropped). A ticker that only slept until its next tick, or polled, would wake a loaded proxy's threads
/// hundreds of times a second for plugins that never tick. It holds no reference to the plugin, so a ticker
/// waiting on it does not keep a dropped version alive.
#[derive(Clone, Debug)]
pub struct WorkSignal(Arc<Notify>);

impl WorkSignal {
    /// Resolves at the first wake-up after it is enabled ([`Notified::enable`]) or first polled: make and
    /// enable it before running [`Plugin::run_ticks`], so that a wake-up during the run is not lost.
    pub fn notified(&self) -> Notified<'_> {
        self.0.notified()
    }
}

impl Plugin {
    /// What this version's tickers wait on (see [`WorkSignal`]).
    pub fn work_signal(&self) -> WorkSignal {
        WorkSignal(self.core.tickers.clone())
    }

    /// Deliver an HTTP callout result (`None` = failed/timed out: the guest sees 0 headers) by running
    /// `proxy_on_http_call_response(root context, token, ...)` with the context that made the call effective.
    /// Usually called through [`crate::CalloutResponder::complete`]. Unknown tokens (stream already gone) are
    /// ignored. From a thread that cannot reach the instance, the answer is left for its owner.
    pub fn on_http_call_response(&self, token: u32, response: Option<HttpCallResponse>) -> Result<(), PluginFailure> {
        let Some(owner) = self.core.callouts.lock().remove(&token) else { return Ok(()) };
        let work = Pending::Callout { token, generation: owner.generation, context: owner.context, response };
        self.deliver(owner.slot, work)
    }

    /// Runs `work` on slot `i` now if this thread can, else leaves it in the slot's inbox.
    pub(crate) fn deliver(&self, i: usize, work: Pending) -> Result<(), PluginFailure> {
        if in_callback() {
            self.post(i, work);
            return Ok(());
        }
        match self.with_slot(i, work, |slot, work| self.run(i, slot, work)) {
            Ok(r) => {
                self.dispatch_slot(i);
                r
            }
            Err(work) => {
                self.post(i, work);
                Ok(())
            }
        }
    }

    /// Leaves `work` in slot `i`'s inbox and wakes a stream of the instance waiting for a resumption, and the
    /// version's tickers when the inbox was empty (a plugin that enqueues on every request wakes them once per
    /// delivery, not once per item).
    pub(crate) fn post(&self, i: usize, work: Pending) {
        let cell = &self.slots[i];
        cell.inbox.lock().push(work);
        let first = !cell.has_mail.swap(true, Ordering::AcqRel);
        cell.mail.notify_one();
        if first {
            self.core.tickers.notify_waiters();
        }
    }

    /// Runs the work waiting in slot `i`'s inbox, if this thread can reach the instance and is not inside a
    /// callback. A load of a flag on the slot's own cache line when there is none, so it runs after every
    /// stream callback.
    #[inline]
    pub(crate) fn dispatch_slot(&self, i: usize) {
        if self.slots[i].has_mail.load(Ordering::Acquire) {
            self.dispatch_mail(i);
        }
    }

    fn dispatch_mail(&self, i: usize) {
        let cell = &self.slots[i];
        if in_callback() || matches!(self.reach(i), Reach::Elsewhere) {
            return;
        }
        if !cell.has_mail.swap(false, Ordering::AcqRel) {
            return;
        }
        let work = std::mem::take(&mut *cell.inbox.lock());
        for w in work {
            if let Err(w) = self.with_slot(i, w, |slot, w| self.run(i, slot, w)) {
                // The slot changed hands meanwhile: its new owner runs it.
                self.post(i, w);
            }
        }
    }

    /// Run deferred work this thread can reach: `proxy_on_queue_ready` for enqueued items, callout results and
    /// stream deletions that arrived while a callback was running or on another thread. Runs by itself after
    /// every stream callback (for that stream's instance) and in [`Plugin::run_ticks`].
    pub fn dispatch_pending(&self) {
        for i in 0..self.slots.len() {
            self.dispatch_slot(i);
        }
    }

    fn run(&self, i: usize, slot: &mut Slot, work: Pending) -> Result<(), PluginFailure> {
        match work {
            Pending::Callout { token, generation, context, response } => {
                self.run_callout(slot, token, generation, context, response)
            }
            Pending::QueueReady { generation, root, queue } => {
                if slot.generation != generation {
                    return Ok(());
                }
                let Some(inst) = slot.instance.as_mut() else { return Ok(()) };
                if inst.f.on_queue_ready.is_none() {
                    return Ok(());
                }
                inst.store.data_mut().current = root;
                let args = (root as i32, queue as i32);
                let r = inst.call("proxy_on_queue_ready", |f| f.on_queue_ready.as_ref(), args).map(|_| ());
                if let Err(e) = &r {
                    self.poison(slot, e);
                }
                r
            }
            Pending::Delete { generation, context, done } => self.delete_stream(i, slot, generation, context, done),
        }
    }

    fn run_callout(
        &self,
        slot: &mut Slot,
        token: u32,
        generation: u64,
        context: u32,
        response: Option<HttpCallResponse>,
    ) -> Result<(), PluginFailure> {
        if slot.generation != generation {
            return Ok(());
        }
        let Some(inst) = slot.instance.as_mut() else { return Ok(()) };
        let root = inst.root();
        if context != root && !inst.store.data().streams.contains(context) {
            return Ok(());
        }
        if inst.f.on_http_call_response.is_none() {
            return Ok(());
        }
        let resp = response.unwrap_or_default();
        let (nh, nb, nt) = (resp.headers.len() as i32, resp.body.len() as i32, resp.trailers.len() as i32);
        let st = inst.store.data_mut();
        // Hostcalls act on the context that made the call (SDKs also switch to it themselves with
        // `proxy_set_effective_context`), but the callback is addressed to the root context, as proxy-wasm's
        // C++ host and Envoy do: the C++, Go and AssemblyScript SDKs look the token up on the root context
        // whose id they are given and abort on a stream context's id; the Rust SDK ignores the id.
        st.current = context;
        st.callout = Some(resp);
        let args = (root as i32, token as i32, nh, nb, nt);
        let r = inst.call("proxy_on_http_call_response", |f| f.on_http_call_response.as_ref(), args).map(|_| ());
        inst.store.data_mut().callout = None;
        if let Err(e) = &r {
            self.poison(slot, e);
        }
        r
    }

    /// The end of a stream in spec order: `proxy_on_done` (unless `on_log` ran it), `proxy_on_delete`, then its
    /// context is freed and its pending callouts forgotten.
    pub(crate) fn delete_stream(
        &self,
        i: usize,
        slot: &mut Slot,
        generation: u64,
        context: u32,
        run_done: bool,
    ) -> Result<(), PluginFailure> {
        if slot.generation != generation {
            return Ok(());
        }
        let Some(inst) = slot.instance.as_mut() else { return Ok(()) };
        let st = inst.store.data_mut();
        if !st.streams.contains(context) {
            return Ok(());
        }
        st.current = context;
        let mut r = Ok(());
        if run_done && self.callbacks.done {
            r = inst.call("proxy_on_done", |f| f.on_done.as_ref(), context as i32).map(|_| ());
        }
        if r.is_ok() && self.callbacks.delete {
            r = inst.call("proxy_on_delete", |f| f.on_delete.as_ref(), context as i32).map(|_| ());
        }
        let st = inst.store.data_mut();
        let called_out = st.streams.close(context);
        st.current = st.root_context;
        if called_out {
            self.core
                .callouts
                .lock()
                .retain(|_, o| !(o.slot == i && o.generation == generation && o.context == context));
        }
        if let Err(e) = &r {
            self.poison(slot, e);
        }
        r
    }

    /// Earliest time an instance this thread can reach wants `proxy_on_tick` (None = no timer set). A shared
    /// instance in use on another thread is looked at again in [`BUSY_RETRY`].
    pub fn next_tick_deadline(&self) -> Option<Instant> {
        let due = (0..self.slots.len()).filter_map(|i| self.tick_due(i)).min();
        match self.ticks_stop() {
            // Ticking until then, and woken then to stop.
            Some(stop) if stop > Instant::now() => due.map(|at| at.min(stop)),
            Some(_) => None,
            None => due,
        }
    }

    /// When a version on standby stops ticking: a `pause_timeout` after it stopped serving, so that its own
    /// streams still in flight, paused until a tick resumes them, are resumed or have failed by then.
    fn ticks_stop(&self) -> Option<Instant> {
        self.standby.lock().map(|since| since + self.pause_timeout)
    }

    /// Puts a version that no longer serves (kept for rollback, a candidate rolled back) on standby, or back:
    /// its `proxy_on_tick` stops once its streams in flight had their chance (see [`Plugin::next_tick_deadline`]).
    /// A replaced version's ticks went on for as long as it was kept: a plugin's own work done twice, or a bad
    /// version's burning CPU after it was replaced.
    pub fn set_standby(&self, standby: bool) {
        {
            let mut since = self.standby.lock();
            match (standby, *since) {
                (true, None) => *since = Some(Instant::now()),
                (false, _) => *since = None,
                (true, Some(_)) => {}
            }
        }
        self.core.tickers.notify_waiters();
    }

    fn tick_due(&self, i: usize) -> Option<Instant> {
        let at = |slot: &Slot| slot.instance.as_ref().and_then(|inst| inst.tick).map(|(_, at)| at);
        match self.reach(i) {
            Reach::Mine(cell) => at(&*cell.try_borrow().ok()?),
            Reach::Shared => match self.slots[i].shared.try_lock() {
                Some(slot) => at(&slot),
                None => Some(Instant::now() + BUSY_RETRY),
            },
            Reach::Elsewhere => None,
        }
    }

    /// Run `proxy_on_tick` on every instance this thread can reach whose period elapsed (its own, and the
    /// shared ones), plus its deferred work. Drive this from a task on every thread that owns instances (each
    /// worker) and one more for the shared ones: run it, then sleep until [`Plugin::next_tick_deadline`] or
    /// until the [`Plugin::work_signal`] wakes it. Returns how many ticks ran; failures discard the instance
    /// like request failures.
    pub fn run_ticks(&self) -> usize {
        let now = Instant::now();
        let mut ran = 0;
        let standby = self.ticks_stop().is_some_and(|stop| stop <= now);
        for i in 0..self.slots.len() {
            if !standby && matches!(self.with_slot(i, (), |slot, ()| self.tick(slot, now)), Ok(true)) {
                ran += 1;
            }
            self.dispatch_slot(i);
        }
        worker::forget_unloaded();
        ran
    }

    /// Runs the slot's tick if due; whether it ran.
    fn tick(&self, slot: &mut Slot, now: Instant) -> bool {
        let Some(inst) = slot.instance.as_mut() else { return false };
        let Some((period, at)) = inst.tick else { return false };
        if at > now {
            return false;
        }
        inst.tick = Some((period, (at + period).max(now)));
        if inst.f.on_tick.is_none() {
            return false;
        }
        let root = inst.root();
        inst.store.data_mut().current = root;
        if let Err(e) = inst.call("proxy_on_tick", |f| f.on_tick.as_ref(), root as i32) {
            self.poison(slot, &e);
        }
        true
    }
}

impl CalloutSink for Plugin {
    fn on_http_call_response(&self, token: u32, response: Option<HttpCallResponse>) -> Result<(), PluginFailure> {
        Plugin::on_http_call_response(self, token, response)
    }
}

impl QueueSink for Plugin {
    fn queue_ready(&self, slot: usize, generation: u64, root: u32, queue: u32) {
        // Always deferred: it is scheduled from inside `proxy_enqueue_shared_queue`.
        self.post(slot, Pending::QueueReady { generation, root, queue });
    }
}
