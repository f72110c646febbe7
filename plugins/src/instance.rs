//! One instance (VM): a wasmtime `Store` with the module instantiated in it, its exports resolved once, its root
//! context configured, and the stream contexts it serves. Every guest callback runs through [`invoke`], under
//! the callback's CPU budget, counted and classified.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{InstancePre, Store, TypedFunc, WasmParams, WasmResults};

use crate::budget::CpuBudget;
use crate::context::{StreamState, Streams, ROOT_CONTEXT};
use crate::error::{FailureKind, PluginError, PluginFailure};
use crate::store::{HostState, MemLimiter, PluginCore};

/// The limits an instance runs under.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Linear memory cap, bytes.
    pub memory: usize,
    /// CPU time one request-time callback may use.
    pub cpu: Duration,
    /// CPU time each start-up callback may use (`max(cpu, 1 s)`).
    pub start_cpu: Duration,
}

/// `proxy_on_http_call_response(context, token, headers, body_size, trailers)`.
type CalloutCb = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// Exports of one instance, resolved once.
pub(crate) struct Exports {
    pub on_context_create: Option<TypedFunc<(i32, i32), ()>>,
    pub on_vm_start: Option<TypedFunc<(i32, i32), i32>>,
    pub on_configure: Option<TypedFunc<(i32, i32), i32>>,
    pub on_tick: Option<TypedFunc<i32, ()>>,
    pub on_request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub on_request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub on_request_trailers: Option<TypedFunc<(i32, i32), i32>>,
    pub on_response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub on_response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub on_response_trailers: Option<TypedFunc<(i32, i32), i32>>,
    pub on_done: Option<TypedFunc<i32, i32>>,
    pub on_log: Option<TypedFunc<i32, ()>>,
    pub on_delete: Option<TypedFunc<i32, ()>>,
    pub on_http_call_response: Option<CalloutCb>,
    pub on_queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    pub on_upstream_select: Option<TypedFunc<(i32, i32), i32>>,
}

thread_local! {
    /// Non-zero while this thread runs a plugin callback: re-entrant deliveries are deferred.
    static IN_CALLBACK: Cell<u32> = const { Cell::new(0) };
}

/// Whether the calling thread is inside a plugin callback (a hostcall is running).
pub(crate) fn in_callback() -> bool {
    IN_CALLBACK.with(Cell::get) > 0
}

/// Where one instance of a pool lives, with its generation: bumped each time an instance is created there, so
/// that anything holding (slot, generation) can tell its instance was replaced.
#[derive(Default)]
pub(crate) struct Slot {
    pub instance: Option<Instance>,
    pub generation: u64,
}

/// One VM: a Store with its instance, root context and stream contexts.
pub(crate) struct Instance {
    pub store: Store<HostState>,
    pub f: Exports,
    pub cpu_limit: Duration,
    /// The root context's tick period and when it is next due.
    pub tick: Option<(Duration, Instant)>,
}

impl Instance {
    pub(crate) fn root(&self) -> u32 {
        self.store.data().root_context
    }

    /// Run the export `pick` selects under the per-callback CPU deadline; `Ok(None)` when the module does
    /// not export it (nothing runs, nothing is counted). The export is borrowed, not cloned: cloning a
    /// `TypedFunc` clones its registered type (atomic reference counts in wasmtime's type registry), which
    /// showed up at ~6 % of a request in `perf`.
    pub(crate) fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        name: &'static str,
        pick: fn(&Exports) -> Option<&TypedFunc<P, R>>,
        args: P,
    ) -> Result<Option<R>, PluginFailure> {
        let Instance { store, f, tick, cpu_limit, .. } = self;
        match pick(f) {
            Some(func) => invoke(store, tick, name, func, args, *cpu_limit).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) fn call_with_deadline<P: WasmParams, R: WasmResults>(
        &mut self,
        name: &'static str,
        f: &TypedFunc<P, R>,
        args: P,
        limit: Duration,
    ) -> Result<R, PluginFailure> {
        invoke(&mut self.store, &mut self.tick, name, f, args, limit)
    }

    /// Writes `bytes` at `at` in the guest's memory, for a place the guest registered (which was in memory
    /// then, and memory never shrinks: failing here means the instance is broken).
    pub(crate) fn write_guest(&mut self, at: u32, bytes: &[u8]) -> Result<(), PluginFailure> {
        let start = at as usize;
        let memory = self.store.data().memory;
        let place = memory.and_then(|m| m.data_mut(&mut self.store).get_mut(start..start.checked_add(bytes.len())?));
        match place {
            Some(place) => {
                place.copy_from_slice(bytes);
                Ok(())
            }
            None => {
                Err(self.store.data().core.failure(FailureKind::BadPointer, "a registered place is outside memory"))
            }
        }
    }

    pub(crate) fn stream(&mut self, ctx: u32) -> Result<&mut StreamState, PluginFailure> {
        // Split borrow: the plugin core is only needed (and only touched) when the context is gone.
        let HostState { streams, core, .. } = self.store.data_mut();
        streams.get_mut(ctx).ok_or_else(|| core.failure(FailureKind::Unavailable, "stream context is gone"))
    }
}

/// Run one callback under the CPU deadline, recording metrics and classifying failures. A free function over
/// the instance's parts so the callee can be borrowed from the instance's exports while the store is mutated.
pub(crate) fn invoke<P: WasmParams, R: WasmResults>(
    store: &mut Store<HostState>,
    tick: &mut Option<(Duration, Instant)>,
    name: &'static str,
    f: &TypedFunc<P, R>,
    args: P,
    limit: Duration,
) -> Result<R, PluginFailure> {
    arm_budget(store, limit);
    let st = store.data_mut();
    if let Some(arena) = st.arena.as_mut() {
        // Values returned into the arena live until the callback that asked for them returns.
        arena.used = 0;
    }
    let start = st.sample_timing().then(Instant::now);
    st.limiter.refused = None;
    IN_CALLBACK.with(|c| c.set(c.get() + 1));
    let r = f.call(&mut *store, args);
    IN_CALLBACK.with(|c| c.set(c.get().saturating_sub(1)));
    end_budget(store);
    let st = store.data();
    // Borrowed, not cloned: an `Arc` clone per callback is two atomic operations on a cache line every
    // worker thread running this plugin shares.
    let core = &st.core;
    st.callbacks.inc();
    if let Some(start) = start {
        core.m_seconds.observe(start.elapsed().as_secs_f64());
    }
    // Apply tick period changes made during the callback.
    match (st.tick_period, *tick) {
        (None, None) => {}
        (Some(p), Some((old, _))) if old == p => {}
        (period, _) => {
            *tick = period.map(|p| (p, Instant::now() + p));
            // The thread's ticker sleeps until the next tick it knew of.
            core.tickers.notify_waiters();
        }
    }
    r.map_err(|e| {
        let refused = st.limiter.refused.map(|desired| (st.limiter.limit, desired));
        let failure = core.classify(name, &e, refused);
        if core.loaded.load(std::sync::atomic::Ordering::Relaxed) {
            core.metrics.failures.with_label_values(&[core.name.as_str(), failure.kind.as_str()]).inc();
        }
        failure
    })
}

impl Instance {
    /// Instantiates the module in a new store and starts it: `_initialize` (then `main`) or `_start`,
    /// `proxy_on_context_create(root, 0)`, `proxy_on_vm_start`, `proxy_on_configure`. Any failure refuses the
    /// instance with a [`PluginError`].
    pub(crate) fn new(
        pre: &InstancePre<HostState>,
        core: &Arc<PluginCore>,
        limits: Limits,
        slot: usize,
        generation: u64,
    ) -> Result<Instance, PluginError> {
        let plugin = || core.name.clone();
        let state = HostState {
            limiter: MemLimiter { limit: limits.memory, refused: None, instantiated: false },
            core: core.clone(),
            memory: None,
            alloc: None,
            slot,
            generation,
            root_context: ROOT_CONTEXT,
            current: ROOT_CONTEXT,
            streams: Streams::default(),
            root_properties: HashMap::new(),
            callout: None,
            tick_period: None,
            // Any non-zero seed; per slot and generation so instances do not sample in lockstep.
            timing_rng: 0x9E37_79B9_7F4A_7C15 ^ ((slot as u64) << 32) ^ generation,
            exit_code: None,
            callbacks: core.metrics.callbacks.with_label_values(&[core.name.as_str(), &slot.to_string()]),
            scratch_key: String::new(),
            scratch_path: Vec::new(),
            scratch_value: Vec::new(),
            scratch_out: Vec::new(),
            last_error_log: None,
            cpu_budget: CpuBudget::default(),
            arena: None,
            select_version_slot: None,
            metric_handles: Vec::new(),
        };
        let mut store = Store::new(pre.module().engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|mut store| {
            let HostState { cpu_budget, core, .. } = store.data_mut();
            Ok(cpu_budget.on_deadline(&core.clock))
        });
        arm_budget(&mut store, limits.start_cpu);
        let instantiated = pre.instantiate(&mut store);
        end_budget(&mut store);
        let instance = instantiated
            .map_err(|e| PluginError::Instantiate { plugin: plugin(), source: e.into_boxed_dyn_error() })?;
        let export_err = |export: &str, message: &str, source: Option<wasmtime::Error>| PluginError::Export {
            plugin: plugin(),
            export: export.to_string(),
            message: message.to_string(),
            source: source.map(wasmtime::Error::into_boxed_dyn_error),
        };
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| export_err("memory", "module must export its linear memory as \"memory\"", None))?;
        store.data_mut().memory = Some(memory);
        store.data_mut().limiter.instantiated = true;
        macro_rules! opt {
            ($name:expr) => {
                match instance.get_func(&mut store, $name) {
                    None => None,
                    Some(f) => Some(f.typed(&store).map_err(|e| export_err($name, "wrong signature", Some(e)))?),
                }
            };
        }
        let alloc: Option<TypedFunc<i32, i32>> = match opt!("proxy_on_memory_allocate") {
            Some(f) => Some(f),
            None => opt!("malloc"),
        };
        if alloc.is_none() {
            return Err(export_err(
                "proxy_on_memory_allocate",
                "module exports neither proxy_on_memory_allocate nor malloc",
                None,
            ));
        }
        store.data_mut().alloc = alloc.map(Arc::new);
        let f = Exports {
            on_context_create: opt!("proxy_on_context_create"),
            on_vm_start: opt!("proxy_on_vm_start"),
            on_configure: opt!("proxy_on_configure"),
            on_tick: opt!("proxy_on_tick"),
            on_request_headers: opt!("proxy_on_request_headers"),
            on_request_body: opt!("proxy_on_request_body"),
            on_request_trailers: opt!("proxy_on_request_trailers"),
            on_response_headers: opt!("proxy_on_response_headers"),
            on_response_body: opt!("proxy_on_response_body"),
            on_response_trailers: opt!("proxy_on_response_trailers"),
            on_done: opt!("proxy_on_done"),
            on_log: opt!("proxy_on_log"),
            on_delete: opt!("proxy_on_delete"),
            on_http_call_response: opt!("proxy_on_http_call_response"),
            on_queue_ready: opt!("proxy_on_queue_ready"),
            on_upstream_select: opt!("portico_on_upstream_select"),
        };
        // Spec: `_initialize` then `main(0, 0)` if both are exported; otherwise `_start`.
        let initialize: Option<TypedFunc<(), ()>> = opt!("_initialize");
        let main: Option<TypedFunc<(i32, i32), i32>> = if initialize.is_some() { opt!("main") } else { None };
        let start = match initialize {
            Some(f) => Some(f),
            None => opt!("_start"),
        };
        let mut inst = Instance { store, f, cpu_limit: limits.cpu, tick: None };
        let ticks = limits.start_cpu;
        let start_err = |f: PluginFailure| PluginError::Start {
            plugin: plugin(),
            message: "a start-up callback failed".into(),
            source: Some(Box::new(f)),
        };
        if let Some(start) = start {
            if let Err(e) = inst.call_with_deadline("_initialize/_start", &start, (), ticks) {
                // `proc_exit(0)` at the end of a WASI command's `_start` is a normal exit.
                if inst.store.data().exit_code != Some(0) {
                    return Err(start_err(e));
                }
            }
        }
        if let Some(main) = main {
            inst.call_with_deadline("main", &main, (0, 0), ticks).map_err(start_err)?;
        }
        let root = inst.root() as i32;
        if let Some(occ) = inst.f.on_context_create.clone() {
            inst.call_with_deadline("proxy_on_context_create", &occ, (root, 0), ticks).map_err(start_err)?;
        }
        if let Some(f) = inst.f.on_vm_start.clone() {
            let ok = inst
                .call_with_deadline("proxy_on_vm_start", &f, (root, core.vm_config.len() as i32), ticks)
                .map_err(start_err)?;
            if ok == 0 {
                return Err(PluginError::Start {
                    plugin: plugin(),
                    message: "proxy_on_vm_start returned false".into(),
                    source: None,
                });
            }
        }
        if let Some(f) = inst.f.on_configure.clone() {
            inst.store.data_mut().last_error_log = None;
            let ok = inst
                .call_with_deadline("proxy_on_configure", &f, (root, core.config.len() as i32), ticks)
                .map_err(|e| PluginError::Configure {
                    plugin: plugin(),
                    message: "proxy_on_configure failed".into(),
                    source: Some(Box::new(e)),
                })?;
            if ok == 0 {
                let message = match inst.store.data_mut().last_error_log.take() {
                    Some(log) => format!("proxy_on_configure returned false: {log}"),
                    None => "proxy_on_configure returned false".into(),
                };
                return Err(PluginError::Configure { plugin: plugin(), message, source: None });
            }
        }
        Ok(inst)
    }
}

/// Arms a fresh CPU budget for the next callback run in `store` (see [`crate::budget`]).
fn arm_budget(store: &mut Store<HostState>, limit: Duration) {
    store.data_mut().cpu_budget = CpuBudget::new(limit);
    store.set_epoch_deadline(1);
    // After the deadline is set: the clock then either sees this callback armed, or was told before it
    // read the epoch for this deadline (see `EpochClock::sleep`).
    store.data().core.clock.armed();
}

/// The callback armed by [`arm_budget`] returned: it is no longer counted.
#[inline]
fn end_budget(store: &mut Store<HostState>) {
    let HostState { cpu_budget, core, .. } = store.data_mut();
    cpu_budget.end(&core.clock);
}
