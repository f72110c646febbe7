//! [`Plugin`] (a loaded plugin version with its instance pool) and [`HttpStream`] (one request's context).

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use prometheus::{Histogram, IntCounter, IntGauge};
use wasmtime::{InstancePre, Store, Trap, TypedFunc, UpdateDeadline, WasmParams, WasmResults};

use crate::engine::{AbiVersion, CompiledModule, EngineShared, PluginEngine, EPOCH_TICK};
use crate::error::{FailureKind, HostTrap, PluginError, PluginFailure};
use crate::host::{copy_headers, ContextMap, HostState, MemLimiter, SelectInput, StreamSignal, StreamState};
use crate::services::HostServices;
use crate::types::abi;
use crate::types::{
    Candidate, CandidateList, CandidateSource, FailPolicy, FilterAction, HeaderMap, HttpCallResponse, RequestInfo,
    Resumption,
};

/// Everything needed to load one plugin version.
#[derive(Clone)]
pub struct PluginSpec {
    /// Plugin name: metrics/log label and default root_id/vm_id.
    pub name: String,
    /// Where the bytes came from (file path, URL): for logs only.
    pub source: String,
    /// Module bytes (wasm binary; WAT text only in this crate's tests, which enable wasmtime's `wat` feature).
    pub wasm: Vec<u8>,
    /// Plugin configuration (JSON or plain), readable as PLUGIN_CONFIGURATION and passed to `proxy_on_configure`.
    pub config: String,
    /// Root context id, answered verbatim as the `plugin_root_id` property: SDKs register their root context
    /// factories under it (the C++ SDK under `""` unless told otherwise) and build the root context the id
    /// names, so an empty id stays empty. [`PluginSpec::new`] sets it to the plugin's name.
    pub root_id: String,
    /// VM id: scope of shared data and queues; empty = `name`.
    pub vm_id: String,
    /// VM configuration, readable as VM_CONFIGURATION in `proxy_on_vm_start`.
    pub vm_config: String,
    /// What the proxy does when this plugin fails at request time.
    pub fail: FailPolicy,
    /// Linear memory cap per instance, bytes.
    pub memory_limit: usize,
    /// CPU time one callback may use (enforced with epoch interruption and the thread's CPU clock, ~1 ms
    /// granularity; see `CpuBudget` in this module).
    pub cpu_limit: Duration,
    /// Instances (VMs) in the pool; 0 = number of CPUs. Each serves one callback at a time.
    pub instances: usize,
    /// Instance recreations allowed per minute before the plugin is marked broken.
    pub max_restarts_per_minute: usize,
    /// How long a broken plugin rests before one instance is tried again; doubles each time it breaks again
    /// (up to 5 minutes). A crash loop is rate-limited, not final: a plugin that only timed out while the
    /// machine was starved of CPU comes back by itself.
    pub broken_cooloff: Duration,
}

impl std::fmt::Debug for PluginSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSpec")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("wasm_len", &self.wasm.len())
            .field("root_id", &self.root_id)
            .field("vm_id", &self.vm_id)
            .field("fail", &self.fail)
            .field("memory_limit", &self.memory_limit)
            .field("cpu_limit", &self.cpu_limit)
            .field("instances", &self.instances)
            .finish_non_exhaustive()
    }
}

impl PluginSpec {
    /// A spec with Portico's defaults: root id = name, fail closed, 64 MiB memory, 50 ms per callback, one
    /// instance per CPU.
    pub fn new(name: impl Into<String>, wasm: impl Into<Vec<u8>>) -> Self {
        let name = name.into();
        PluginSpec {
            root_id: name.clone(),
            name,
            source: String::new(),
            wasm: wasm.into(),
            config: String::new(),
            vm_id: String::new(),
            vm_config: String::new(),
            fail: FailPolicy::Closed,
            memory_limit: 64 << 20,
            cpu_limit: Duration::from_millis(50),
            instances: 0,
            max_restarts_per_minute: 10,
            broken_cooloff: Duration::from_secs(10),
        }
    }
}

/// Which context a callout belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CalloutOwner {
    pub slot: usize,
    pub generation: u64,
    pub context: u32,
}

enum GuestMetric {
    Counter(IntCounter),
    Gauge(IntGauge),
    Histogram(Histogram),
}

#[derive(Default)]
struct GuestMetrics {
    by_name: HashMap<(i32, String), u32>,
    list: Vec<GuestMetric>,
}

/// Plugin-wide state reachable from hostcalls (no reference to the instance pool, so no Arc cycle).
pub(crate) struct PluginCore {
    pub name: String,
    pub root_id: String,
    pub vm_id: String,
    pub config: Bytes,
    pub vm_config: Bytes,
    pub services: Arc<dyn HostServices>,
    pub engine: Arc<EngineShared>,
    pub plugin: Weak<Plugin>,
    pub callouts: Mutex<HashMap<u32, CalloutOwner>>,
    next_token: AtomicU32,
    guest_metrics: Mutex<GuestMetrics>,
    m_seconds: Histogram,
    m_restarts: IntCounter,
}

impl PluginCore {
    pub fn next_token(&self) -> u32 {
        self.next_token.fetch_add(1, Ordering::Relaxed).wrapping_add(1).max(1)
    }

    /// The metric's id, or the ABI status to answer: `BAD_ARGUMENT` for an unknown type or a name over
    /// [`crate::limits::MAX_METRIC_NAME`], `INTERNAL_FAILURE` once the plugin has defined
    /// [`crate::limits::MAX_METRICS_PER_PLUGIN`] (each is a series that lives as long as the process).
    pub fn define_metric(&self, t: i32, name: &str) -> Result<u32, i32> {
        use crate::limits::{MAX_METRICS_PER_PLUGIN, MAX_METRIC_NAME};
        let mut gm = self.guest_metrics.lock();
        if let Some(id) = gm.by_name.get(&(t, name.to_string())) {
            return Ok(*id);
        }
        if name.len() > MAX_METRIC_NAME {
            crate::limits::refused(
                &self.name,
                format_args!("proxy_define_metric refused: name of {} bytes, over {MAX_METRIC_NAME}", name.len()),
            );
            return Err(abi::BAD_ARGUMENT);
        }
        if gm.list.len() >= MAX_METRICS_PER_PLUGIN {
            crate::limits::refused(
                &self.name,
                format_args!(
                    "proxy_define_metric refused: the plugin already defined {MAX_METRICS_PER_PLUGIN} metrics"
                ),
            );
            return Err(abi::INTERNAL_FAILURE);
        }
        let labels = [self.name.as_str(), name];
        let m = &self.engine.metrics;
        let metric = match t {
            abi::METRIC_COUNTER => GuestMetric::Counter(m.guest_counter.with_label_values(&labels)),
            abi::METRIC_GAUGE => GuestMetric::Gauge(m.guest_gauge.with_label_values(&labels)),
            abi::METRIC_HISTOGRAM => GuestMetric::Histogram(m.guest_histogram.with_label_values(&labels)),
            _ => return Err(abi::BAD_ARGUMENT),
        };
        gm.list.push(metric);
        let id = u32::try_from(gm.list.len()).map_err(|_| abi::INTERNAL_FAILURE)?;
        gm.by_name.insert((t, name.to_string()), id);
        Ok(id)
    }

    pub fn increment_metric(&self, id: u32, delta: i64) -> i32 {
        let gm = self.guest_metrics.lock();
        match gm.list.get((id as usize).wrapping_sub(1)) {
            None => abi::NOT_FOUND,
            Some(GuestMetric::Counter(c)) => match u64::try_from(delta) {
                Ok(d) => {
                    c.inc_by(d);
                    abi::OK
                }
                Err(_) => abi::BAD_ARGUMENT,
            },
            Some(GuestMetric::Gauge(g)) => {
                g.add(delta);
                abi::OK
            }
            Some(GuestMetric::Histogram(_)) => abi::BAD_ARGUMENT,
        }
    }

    pub fn record_metric(&self, id: u32, value: u64) -> i32 {
        let gm = self.guest_metrics.lock();
        match gm.list.get((id as usize).wrapping_sub(1)) {
            None => abi::NOT_FOUND,
            Some(GuestMetric::Counter(c)) => {
                // Counters only move forward: recording a lower value is refused.
                match value.checked_sub(c.get()) {
                    Some(d) => {
                        c.inc_by(d);
                        abi::OK
                    }
                    None => abi::BAD_ARGUMENT,
                }
            }
            Some(GuestMetric::Gauge(g)) => {
                g.set(i64::try_from(value).unwrap_or(i64::MAX));
                abi::OK
            }
            Some(GuestMetric::Histogram(h)) => {
                h.observe(value as f64);
                abi::OK
            }
        }
    }

    pub fn get_metric(&self, id: u32) -> Result<u64, i32> {
        let gm = self.guest_metrics.lock();
        match gm.list.get((id as usize).wrapping_sub(1)) {
            None => Err(abi::NOT_FOUND),
            Some(GuestMetric::Counter(c)) => Ok(c.get()),
            Some(GuestMetric::Gauge(g)) => Ok(g.get() as u64),
            Some(GuestMetric::Histogram(_)) => Err(abi::BAD_ARGUMENT),
        }
    }

    fn failure(&self, kind: FailureKind, message: impl Into<String>) -> PluginFailure {
        PluginFailure { plugin: self.name.clone(), kind, message: message.into() }
    }

    fn classify(&self, callback: &str, e: &wasmtime::Error) -> PluginFailure {
        let kind = if let Some(t) = e.downcast_ref::<HostTrap>() {
            match t {
                HostTrap::BadPointer(_) => FailureKind::BadPointer,
                HostTrap::MemoryLimit { .. } => FailureKind::Memory,
                HostTrap::Exit(_) => FailureKind::Trap,
            }
        } else if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            FailureKind::Timeout
        } else {
            FailureKind::Trap
        };
        let detail = match kind {
            FailureKind::Timeout => "exceeded its CPU deadline".to_string(),
            _ => {
                let root = e.root_cause().to_string();
                let top = e.to_string();
                if root == top {
                    top
                } else {
                    format!("{top}: {root}")
                }
            }
        };
        self.failure(kind, format!("{callback}: {detail}"))
    }
}

/// `proxy_on_http_call_response(context, token, headers, body_size, trailers)`.
type CalloutCb = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// Exports of one instance, resolved once.
struct Exports {
    on_context_create: Option<TypedFunc<(i32, i32), ()>>,
    on_vm_start: Option<TypedFunc<(i32, i32), i32>>,
    on_configure: Option<TypedFunc<(i32, i32), i32>>,
    on_tick: Option<TypedFunc<i32, ()>>,
    on_request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_request_trailers: Option<TypedFunc<(i32, i32), i32>>,
    on_response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_response_trailers: Option<TypedFunc<(i32, i32), i32>>,
    on_done: Option<TypedFunc<i32, i32>>,
    on_log: Option<TypedFunc<i32, ()>>,
    on_delete: Option<TypedFunc<i32, ()>>,
    on_http_call_response: Option<CalloutCb>,
    on_queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    on_upstream_select: Option<TypedFunc<(i32, i32), i32>>,
}

thread_local! {
    /// Non-zero while this thread runs a plugin callback: re-entrant deliveries are deferred.
    static IN_CALLBACK: Cell<u32> = const { Cell::new(0) };
    /// The instance this thread tries first for a new stream (see [`prefer_instance`]).
    static PREFERRED_INSTANCE: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Makes streams started on the calling thread try instance `index` (modulo the pool size) first, instead of
/// the next one round robin. A proxy that serves each connection on one worker thread calls this once per
/// worker: with as many instances as workers (the default), each worker then runs its own VM, so instance
/// locks are never contended and a VM's memory stays in one core's cache.
pub fn prefer_instance(index: usize) {
    PREFERRED_INSTANCE.with(|p| p.set(Some(index)));
}

/// One VM: a Store with its instance, root context and stream contexts.
struct Instance {
    store: Store<HostState>,
    f: Exports,
    next_context: u32,
    cpu_limit: Duration,
    tick: Option<(Duration, Instant)>,
}

impl Instance {
    fn root(&self) -> u32 {
        self.store.data().root_context
    }

    /// Run the export `pick` selects under the per-callback CPU deadline; `Ok(None)` when the module does
    /// not export it (nothing runs, nothing is counted). The export is borrowed, not cloned: cloning a
    /// `TypedFunc` clones its registered type (atomic reference counts in wasmtime's type registry), which
    /// showed up at ~6 % of a request in `perf`.
    fn call<P: WasmParams, R: WasmResults>(
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

    fn call_with_deadline<P: WasmParams, R: WasmResults>(
        &mut self,
        name: &'static str,
        f: &TypedFunc<P, R>,
        args: P,
        limit: Duration,
    ) -> Result<R, PluginFailure> {
        invoke(&mut self.store, &mut self.tick, name, f, args, limit)
    }

    fn stream(&mut self, ctx: u32) -> Result<&mut StreamState, PluginFailure> {
        // Split borrow: the plugin core is only needed (and only touched) when the context is gone.
        let HostState { streams, core, .. } = self.store.data_mut();
        streams.get_mut(&ctx).ok_or_else(|| core.failure(FailureKind::Unavailable, "stream context is gone"))
    }
}

/// Run one callback under the CPU deadline, recording metrics and classifying failures. A free function over
/// the instance's parts so the callee can be borrowed from the instance's exports while the store is mutated.
fn invoke<P: WasmParams, R: WasmResults>(
    store: &mut Store<HostState>,
    tick: &mut Option<(Duration, Instant)>,
    name: &'static str,
    f: &TypedFunc<P, R>,
    args: P,
    limit: Duration,
) -> Result<R, PluginFailure> {
    CpuBudget::start(store, limit);
    let start = store.data_mut().sample_timing().then(Instant::now);
    IN_CALLBACK.with(|c| c.set(c.get() + 1));
    let r = f.call(&mut *store, args);
    IN_CALLBACK.with(|c| c.set(c.get().saturating_sub(1)));
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
        (None, _) => *tick = None,
        (Some(p), Some((old, _))) if old == p => {}
        (Some(p), _) => *tick = Some((p, Instant::now() + p)),
    }
    r.map_err(|e| {
        let failure = core.classify(name, &e);
        core.engine.metrics.failures.with_label_values(&[core.name.as_str(), failure.kind.as_str()]).inc();
        failure
    })
}

/// A value alone on its cache lines (128 bytes: two lines, for CPUs that fetch lines in pairs).
#[repr(align(128))]
struct CacheAligned<T>(T);

impl<T> std::ops::Deref for CacheAligned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

struct Slot {
    instance: Option<Instance>,
    generation: u64,
}

enum Pending {
    QueueReady { slot: usize, generation: u64, root: u32, queue: u32 },
    Callout { token: u32, response: Option<HttpCallResponse> },
}

/// A loaded plugin version: compiled module, N instances with configured root contexts, failure policy.
///
/// Shared as `Arc<Plugin>` across tokio workers. All methods are synchronous and each runs at most one short
/// wasm callback under one instance's lock; none may be held across an `.await` (the API makes that
/// impossible). Swapping in a new version = loading a new `Plugin`; in-flight streams finish on the old one.
pub struct Plugin {
    core: Arc<PluginCore>,
    module: CompiledModule,
    pre: InstancePre<HostState>,
    unknown_imports: Vec<String>,
    /// One per instance, each on cache lines of its own: workers lock their own instance on every callback,
    /// and a lock word sharing a line with a neighbour's would bounce between their cores.
    slots: Vec<CacheAligned<Mutex<Slot>>>,
    rr: AtomicUsize,
    fail: FailPolicy,
    memory_limit: usize,
    cpu_limit: Duration,
    start_cpu_limit: Duration,
    max_restarts: usize,
    restarts: Mutex<VecDeque<Instant>>,
    broken: AtomicBool,
    /// While broken: when to try again, and the rest to take if it breaks again.
    retry: Mutex<(Instant, Duration)>,
    pending: Mutex<Vec<Pending>>,
    has_pending: AtomicBool,
    callbacks: Callbacks,
}

/// Which per-request callbacks the module exports, read once from its export section. The proxy skips what a
/// module cannot observe: bodies stream untouched through plugins that only look at headers, and a plugin with
/// no response-side callback costs nothing once its upstream is chosen. Each skipped callback is a wasm call,
/// a lock and a header copy fewer per request.
#[derive(Debug, Clone, Copy, Default)]
struct Callbacks {
    request_body: bool,
    response_body: bool,
    /// Any callback that runs once the response has begun and may read response headers or properties such
    /// as `upstream.address`: response headers, body or trailers, `proxy_on_done`, `proxy_on_log`,
    /// `proxy_on_delete`.
    response_side: bool,
    upstream_select: bool,
    done_or_log: bool,
}

impl Callbacks {
    fn of(module: &wasmtime::Module) -> Self {
        let exported = |name: &str| module.get_export(name).is_some_and(|e| e.func().is_some());
        let done_or_log = exported("proxy_on_done") || exported("proxy_on_log");
        Callbacks {
            request_body: exported("proxy_on_request_body"),
            response_body: exported("proxy_on_response_body"),
            response_side: done_or_log
                || exported("proxy_on_delete")
                || exported("proxy_on_response_headers")
                || exported("proxy_on_response_body")
                || exported("proxy_on_response_trailers"),
            upstream_select: exported("portico_on_upstream_select"),
            done_or_log,
        }
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.core.name)
            .field("module", &self.module)
            .field("instances", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// The CPU budget of the callback running in a store, and how it is enforced. Wasmtime's epoch deadline counts
/// wall-clock ticks: alone it would interrupt a callback whose thread was starved of CPU by other processes, or
/// that waited in a blocking hostcall, having itself used little CPU. So the epoch deadline is first set one
/// tick ahead. A callback shorter than that (nearly all) never hears of it; when it fires, the thread's CPU
/// clock is read, and from then on each time the deadline fires the CPU the callback used since that reading
/// is compared with its budget: it is interrupted once the budget is spent, else the deadline moves to the
/// earliest time the rest could be. The CPU spent before the first reading (under one tick) is not counted:
/// the budget is kept to within a tick, as the epoch's granularity allows.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuBudget {
    limit: Duration,
    /// The thread's CPU clock when counting began; `None` until the first deadline of the callback.
    counted_from: Option<Duration>,
}

impl CpuBudget {
    /// Arms the budget for the next callback run in `store`.
    fn start(store: &mut Store<HostState>, limit: Duration) {
        store.data_mut().cpu_budget = CpuBudget { limit, counted_from: None };
        store.set_epoch_deadline(1);
    }

    /// Wasmtime's epoch-deadline callback: interrupt (a [`Trap::Interrupt`], classified as a timeout) once the
    /// budget is spent, else extend the deadline.
    fn on_epoch_deadline(mut store: wasmtime::StoreContextMut<'_, HostState>) -> wasmtime::Result<UpdateDeadline> {
        let budget = &mut store.data_mut().cpu_budget;
        let now = thread_cpu_time();
        let Some(from) = budget.counted_from else {
            budget.counted_from = Some(now);
            return Ok(UpdateDeadline::Continue(ticks_for(budget.limit)));
        };
        let used = now.saturating_sub(from);
        if used >= budget.limit {
            return Ok(UpdateDeadline::Interrupt);
        }
        Ok(UpdateDeadline::Continue(ticks_for(budget.limit - used)))
    }
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`; a system call, so only read when an
/// epoch deadline fires).
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}

fn ticks_for(d: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos().max(1);
    u64::try_from(d.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX / 2).max(1) + 1
}

impl Plugin {
    /// Compile (cached by sha256), check the ABI marker, instantiate the pool and run
    /// `_initialize`/`_start`, `proxy_on_context_create(root, 0)`, `proxy_on_vm_start`, `proxy_on_configure`
    /// in every instance. Any failure refuses the version with a [`PluginError`].
    ///
    /// Blocking (compilation, instantiation): call from `spawn_blocking` or a dedicated thread.
    pub fn load(
        engine: &PluginEngine,
        spec: PluginSpec,
        services: Arc<dyn HostServices>,
    ) -> Result<Arc<Plugin>, PluginError> {
        let module = engine.compile(&spec.name, &spec.wasm)?;
        Self::load_compiled(engine, &module, spec, services)
    }

    /// Like [`Plugin::load`] with an already compiled module (`spec.wasm` is ignored).
    pub fn load_compiled(
        engine: &PluginEngine,
        module: &CompiledModule,
        spec: PluginSpec,
        services: Arc<dyn HostServices>,
    ) -> Result<Arc<Plugin>, PluginError> {
        if spec.name.is_empty() {
            return Err(PluginError::InvalidSpec("plugin name is empty".into()));
        }
        if spec.memory_limit == 0 || spec.cpu_limit.is_zero() {
            return Err(PluginError::InvalidSpec(format!(
                "plugin {}: memory_limit and cpu_limit must be > 0",
                spec.name
            )));
        }
        let shared = engine.shared.clone();
        let name = spec.name.clone();
        let unknown: Vec<String> = module
            .module
            .imports()
            .filter(|i| !shared.linker.provides(i.module(), i.name()))
            .map(|i| format!("{}.{}", i.module(), i.name()))
            .collect();
        let pre = match shared.linker.linker.instantiate_pre(&module.module) {
            Ok(pre) => pre,
            Err(e) => {
                if unknown.is_empty() {
                    return Err(PluginError::Instantiate { plugin: name, message: format!("{e}") });
                }
                tracing::warn!(plugin = %name, imports = ?unknown, "module imports functions Portico does not provide; they trap if called");
                let mut l = shared.linker.linker.clone();
                l.define_unknown_imports_as_traps(&module.module)
                    .and_then(|_| l.instantiate_pre(&module.module))
                    .map_err(|e| PluginError::Instantiate { plugin: name.clone(), message: format!("{e}") })?
            }
        };
        let n = if spec.instances == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            spec.instances
        };
        let labels = [spec.name.as_str()];
        let m = &shared.metrics;
        let (m_seconds, m_restarts) =
            (m.callback_seconds.with_label_values(&labels), m.restarts.with_label_values(&labels));
        let vm_id = if spec.vm_id.is_empty() { spec.name.clone() } else { spec.vm_id.clone() };
        let plugin = Arc::new_cyclic(|weak| Plugin {
            core: Arc::new(PluginCore {
                name: spec.name.clone(),
                root_id: spec.root_id.clone(),
                vm_id,
                config: Bytes::from(spec.config.clone().into_bytes()),
                vm_config: Bytes::from(spec.vm_config.clone().into_bytes()),
                services,
                engine: shared.clone(),
                plugin: weak.clone(),
                callouts: Mutex::new(HashMap::new()),
                next_token: AtomicU32::new(0),
                guest_metrics: Mutex::new(GuestMetrics::default()),
                m_seconds,
                m_restarts,
            }),
            module: module.clone(),
            pre,
            unknown_imports: unknown,
            slots: (0..n).map(|_| CacheAligned(Mutex::new(Slot { instance: None, generation: 0 }))).collect(),
            rr: AtomicUsize::new(0),
            fail: spec.fail,
            memory_limit: spec.memory_limit,
            cpu_limit: spec.cpu_limit,
            start_cpu_limit: spec.cpu_limit.max(Duration::from_secs(1)),
            max_restarts: spec.max_restarts_per_minute,
            restarts: Mutex::new(VecDeque::new()),
            broken: AtomicBool::new(false),
            retry: Mutex::new((Instant::now(), spec.broken_cooloff)),
            pending: Mutex::new(Vec::new()),
            has_pending: AtomicBool::new(false),
            callbacks: Callbacks::of(&module.module),
        });
        for i in 0..n {
            let mut slot = plugin.slots[i].lock();
            slot.generation += 1;
            let inst = plugin.instantiate(i, slot.generation)?;
            slot.instance = Some(inst);
        }
        tracing::info!(plugin = %plugin.core.name, source = %spec.source, sha256 = %module.sha256_hex(), abi = ?module.abi, instances = n, "plugin loaded");
        Ok(plugin)
    }

    fn instantiate(&self, slot: usize, generation: u64) -> Result<Instance, PluginError> {
        let core = &self.core;
        let plugin = || core.name.clone();
        let state = HostState {
            limiter: MemLimiter { limit: self.memory_limit },
            core: core.clone(),
            memory: None,
            alloc: None,
            slot,
            generation,
            root_context: 1,
            current: 1,
            streams: ContextMap::default(),
            spare_maps: Vec::new(),
            root_properties: HashMap::new(),
            callout: None,
            tick_period: None,
            // Any non-zero seed; per slot and generation so instances do not sample in lockstep.
            timing_rng: 0x9E37_79B9_7F4A_7C15 ^ ((slot as u64) << 32) ^ generation,
            exit_code: None,
            callbacks: core.engine.metrics.callbacks.with_label_values(&[core.name.as_str(), &slot.to_string()]),
            scratch_key: String::new(),
            scratch_value: Vec::new(),
            scratch_out: Vec::new(),
            last_error_log: None,
            cpu_budget: CpuBudget::default(),
        };
        let mut store = Store::new(&core.engine.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(CpuBudget::on_epoch_deadline);
        CpuBudget::start(&mut store, self.start_cpu_limit);
        let instance = self.pre.instantiate(&mut store).map_err(|e| PluginError::Instantiate {
            plugin: plugin(),
            message: match e.downcast_ref::<HostTrap>() {
                Some(t) => t.to_string(),
                None => format!("{e}"),
            },
        })?;
        let export_err = |export: &str, message: String| PluginError::Export {
            plugin: plugin(),
            export: export.to_string(),
            message,
        };
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| export_err("memory", "module must export its linear memory as \"memory\"".into()))?;
        store.data_mut().memory = Some(memory);
        macro_rules! opt {
            ($name:expr) => {
                match instance.get_func(&mut store, $name) {
                    None => None,
                    Some(f) => Some(f.typed(&store).map_err(|e| export_err($name, format!("{e}")))?),
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
                "module exports neither proxy_on_memory_allocate nor malloc".into(),
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
        let mut inst = Instance { store, f, next_context: 2, cpu_limit: self.cpu_limit, tick: None };
        let ticks = self.start_cpu_limit;
        let start_err = |f: PluginFailure| PluginError::Start { plugin: plugin(), message: f.message };
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
                });
            }
        }
        if let Some(f) = inst.f.on_configure.clone() {
            inst.store.data_mut().last_error_log = None;
            let ok = inst
                .call_with_deadline("proxy_on_configure", &f, (root, core.config.len() as i32), ticks)
                .map_err(|e| PluginError::Configure { plugin: plugin(), message: e.message })?;
            if ok == 0 {
                let message = match inst.store.data_mut().last_error_log.take() {
                    Some(log) => format!("proxy_on_configure returned false: {log}"),
                    None => "proxy_on_configure returned false".into(),
                };
                return Err(PluginError::Configure { plugin: plugin(), message });
            }
        }
        Ok(inst)
    }

    /// Plugin name from the spec.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// What to do when a callback fails: closed -> answer 503 JSON, open -> skip the plugin for this request.
    pub fn fail_policy(&self) -> FailPolicy {
        self.fail
    }

    /// ABI version the module declared.
    pub fn abi_version(&self) -> AbiVersion {
        self.module.abi
    }

    /// Hex sha256 of the module (for the admin API / reload logs).
    pub fn sha256_hex(&self) -> String {
        self.module.sha256_hex()
    }

    /// True after a crash loop: every stream fails (apply the fail policy) until a new version is loaded or the
    /// cool-off ends and a fresh instance starts cleanly.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Imports (`module.name`) the host does not provide; they were linked as traps. Empty for modules built
    /// with the known SDKs. Worth showing in the admin API next to the plugin.
    pub fn unknown_imports(&self) -> &[String] {
        &self.unknown_imports
    }

    /// Whether the module exports `proxy_on_request_body`. The proxy runs request bodies through
    /// [`HttpStream::on_request_body`] only for such plugins; for the others the body streams untouched.
    pub fn handles_request_body(&self) -> bool {
        self.callbacks.request_body
    }

    /// Whether the module exports `proxy_on_response_body` (see [`Plugin::handles_request_body`]).
    pub fn handles_response_body(&self) -> bool {
        self.callbacks.response_body
    }

    /// Whether the module exports any callback that runs after the upstream is chosen (response headers,
    /// body or trailers, `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`). When it does not, the proxy
    /// skips the response phases for it and does not tell it `upstream.address`: nothing could read them.
    pub fn handles_response(&self) -> bool {
        self.callbacks.response_side
    }

    /// Number of instances in the pool.
    pub fn instance_count(&self) -> usize {
        self.slots.len()
    }

    fn lock_slot(&self, i: usize) -> MutexGuard<'_, Slot> {
        self.slots[i % self.slots.len()].lock()
    }

    /// Drop a failed instance; wake streams paused on it so they fail instead of waiting forever.
    fn poison(&self, slot: &mut Slot, failure: &PluginFailure) {
        if let Some(inst) = slot.instance.take() {
            tracing::warn!(plugin = %self.core.name, kind = %failure.kind, error = %failure.message, "plugin instance failed; discarding it");
            for s in inst.store.data().streams.values() {
                s.signal.post(Resumption::Failed(failure.clone()));
            }
        }
    }

    /// Recreate a discarded instance, rate-limited; too many restarts mark the plugin broken.
    fn ensure_instance<'a>(&self, slot: &'a mut Slot, i: usize) -> Result<&'a mut Instance, PluginFailure> {
        if slot.instance.is_none() {
            let now = Instant::now();
            if self.is_broken() {
                let mut retry = self.retry.lock();
                if now < retry.0 {
                    return Err(self
                        .core
                        .failure(FailureKind::Unavailable, "plugin is broken after repeated failures"));
                }
                // Half-open: one more try. Breaking again rests twice as long.
                retry.1 = (retry.1 * 2).min(Duration::from_secs(300));
                self.restarts.lock().clear();
                self.broken.store(false, Ordering::Relaxed);
                tracing::warn!(plugin = %self.core.name, "broken plugin: cool-off over, trying a fresh instance");
            }
            {
                let mut r = self.restarts.lock();
                while r.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
                    r.pop_front();
                }
                if r.len() >= self.max_restarts {
                    let mut retry = self.retry.lock();
                    retry.0 = now + retry.1;
                    self.broken.store(true, Ordering::Relaxed);
                    tracing::error!(plugin = %self.core.name, restarts = r.len(), rest = ?retry.1, "plugin crash loop: marked broken; a new version, or the end of the cool-off, brings it back");
                    return Err(self
                        .core
                        .failure(FailureKind::Unavailable, "plugin is broken after repeated failures"));
                }
                r.push_back(now);
            }
            self.core.m_restarts.inc();
            slot.generation += 1;
            match self.instantiate(i, slot.generation) {
                Ok(inst) => slot.instance = Some(inst),
                Err(e) => {
                    tracing::warn!(plugin = %self.core.name, error = %e, "recreating plugin instance failed");
                    return Err(self.core.failure(FailureKind::Unavailable, e.to_string()));
                }
            }
        }
        slot.instance.as_mut().ok_or_else(|| self.core.failure(FailureKind::Unavailable, "no instance"))
    }

    /// Start a request: pick an instance (this thread's preferred one, see [`prefer_instance`], else round
    /// robin; an idle one over a busy one), create a stream context and run
    /// `proxy_on_context_create(ctx, root)`. An `Err` means "apply [`Plugin::fail_policy`]".
    ///
    /// `info` may be shared (`Arc`) by every plugin of a request's chain: it is never changed.
    pub fn new_stream(self: &Arc<Self>, info: impl Into<Arc<RequestInfo>>) -> Result<HttpStream, PluginFailure> {
        self.handle().new_stream(info)
    }

    /// A new [`PluginHandle`] on this version, for one worker thread to open its streams through.
    pub fn handle(self: &Arc<Self>) -> Arc<PluginHandle> {
        Arc::new(PluginHandle { plugin: self.clone() })
    }

    fn open_stream(&self, handle: &Arc<PluginHandle>, info: Arc<RequestInfo>) -> Result<HttpStream, PluginFailure> {
        let n = self.slots.len();
        let start = PREFERRED_INSTANCE.with(Cell::get).unwrap_or_else(|| self.rr.fetch_add(1, Ordering::Relaxed));
        let (i, mut slot) = (0..n)
            .find_map(|k| {
                let i = (start + k) % n;
                self.slots[i].try_lock().map(|g| (i, g))
            })
            .unwrap_or_else(|| (start % n, self.lock_slot(start)));
        let result = (|| -> Result<(u32, Arc<StreamSignal>), PluginFailure> {
            let inst = self.ensure_instance(&mut slot, i)?;
            let ctx = inst.next_context;
            inst.next_context = inst.next_context.checked_add(1).unwrap_or(2);
            let signal = Arc::new(StreamSignal::default());
            let root = inst.root();
            let st = inst.store.data_mut();
            st.streams.insert(ctx, StreamState::new(info, signal.clone()));
            st.current = ctx;
            inst.call("proxy_on_context_create", |f| f.on_context_create.as_ref(), (ctx as i32, root as i32))?;
            Ok((ctx, signal))
        })();
        let generation = slot.generation;
        match result {
            Ok((context, signal)) => Ok(HttpStream {
                handle: handle.clone(),
                slot: i,
                generation,
                context,
                signal,
                done: false,
                dead: false,
                changed: false,
            }),
            Err(e) => {
                if e.kind != FailureKind::Unavailable {
                    self.poison(&mut slot, &e);
                }
                Err(e)
            }
        }
    }

    /// Deliver an HTTP callout result (`None` = failed/timed out: the guest sees 0 headers) by running
    /// `proxy_on_http_call_response(root context, token, ...)` with the context that made the call effective.
    /// Usually called through [`CalloutResponder::complete`]. Unknown tokens (stream already gone) are ignored.
    pub fn on_http_call_response(&self, token: u32, response: Option<HttpCallResponse>) -> Result<(), PluginFailure> {
        if IN_CALLBACK.with(Cell::get) > 0 {
            self.defer(Pending::Callout { token, response });
            return Ok(());
        }
        let r = self.deliver_callout(token, response);
        self.dispatch_pending();
        r
    }

    fn deliver_callout(&self, token: u32, response: Option<HttpCallResponse>) -> Result<(), PluginFailure> {
        let Some(owner) = self.core.callouts.lock().remove(&token) else { return Ok(()) };
        let mut slot = self.lock_slot(owner.slot);
        if slot.generation != owner.generation {
            return Ok(());
        }
        let Some(inst) = slot.instance.as_mut() else { return Ok(()) };
        let root = inst.root();
        if owner.context != root && !inst.store.data().streams.contains_key(&owner.context) {
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
        st.current = owner.context;
        st.callout = Some(resp);
        let args = (root as i32, token as i32, nh, nb, nt);
        let r = inst.call("proxy_on_http_call_response", |f| f.on_http_call_response.as_ref(), args).map(|_| ());
        inst.store.data_mut().callout = None;
        if let Err(e) = &r {
            self.poison(&mut slot, e);
        }
        r
    }

    pub(crate) fn queue_ready(&self, slot: usize, generation: u64, root: u32, queue: u32) {
        self.defer(Pending::QueueReady { slot, generation, root, queue });
    }

    fn defer(&self, p: Pending) {
        self.pending.lock().push(p);
        self.has_pending.store(true, Ordering::Release);
    }

    /// Run deferred work: `proxy_on_queue_ready` for enqueued items and callout results delivered while a
    /// callback was running. Called automatically after every stream callback and by [`Plugin::run_ticks`].
    pub fn dispatch_pending(&self) {
        // Load before swap: the swap is a write, and this runs after every stream callback on every worker;
        // writing the shared flag when there is nothing pending would bounce its cache line between cores.
        if IN_CALLBACK.with(Cell::get) > 0
            || !self.has_pending.load(Ordering::Acquire)
            || !self.has_pending.swap(false, Ordering::AcqRel)
        {
            return;
        }
        let work = std::mem::take(&mut *self.pending.lock());
        for p in work {
            match p {
                Pending::Callout { token, response } => {
                    let _ = self.deliver_callout(token, response);
                }
                Pending::QueueReady { slot: i, generation, root, queue } => {
                    let mut slot = self.lock_slot(i);
                    if slot.generation != generation {
                        continue;
                    }
                    let Some(inst) = slot.instance.as_mut() else { continue };
                    if inst.f.on_queue_ready.is_none() {
                        continue;
                    }
                    inst.store.data_mut().current = root;
                    let args = (root as i32, queue as i32);
                    if let Err(e) = inst.call("proxy_on_queue_ready", |f| f.on_queue_ready.as_ref(), args) {
                        self.poison(&mut slot, &e);
                    }
                }
            }
        }
    }

    /// Earliest time an instance wants `proxy_on_tick` (None = no timer set). Busy instances are skipped.
    pub fn next_tick_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| s.try_lock().and_then(|s| s.instance.as_ref().and_then(|i| i.tick)).map(|(_, at)| at))
            .min()
    }

    /// Run `proxy_on_tick` on every instance whose period elapsed, plus pending deferred work. Drive this from
    /// one tokio task per plugin (sleep until [`Plugin::next_tick_deadline`], capped at e.g. 100 ms). Returns
    /// how many ticks ran; failures discard the instance like request failures.
    pub fn run_ticks(&self) -> usize {
        let mut ran = 0;
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let mut slot = self.lock_slot(i);
            let Some(inst) = slot.instance.as_mut() else { continue };
            let Some((period, at)) = inst.tick else { continue };
            if at > now {
                continue;
            }
            let next = (at + period).max(now);
            inst.tick = Some((period, next));
            if inst.f.on_tick.is_none() {
                continue;
            }
            let root = inst.root();
            inst.store.data_mut().current = root;
            ran += 1;
            if let Err(e) = inst.call("proxy_on_tick", |f| f.on_tick.as_ref(), root as i32) {
                self.poison(&mut slot, &e);
            }
        }
        self.has_pending.store(true, Ordering::Release);
        self.dispatch_pending();
        ran
    }
}

/// Handle for completing one HTTP callout. Dropping it without `complete` delivers a failure (0 headers).
pub struct CalloutResponder {
    plugin: Weak<Plugin>,
    token: u32,
    done: bool,
}

impl std::fmt::Debug for CalloutResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CalloutResponder").field("token", &self.token).finish()
    }
}

impl CalloutResponder {
    pub(crate) fn new(plugin: Weak<Plugin>, token: u32) -> Self {
        CalloutResponder { plugin, token, done: false }
    }

    /// Feed the result into the plugin (`None` = failed). Runs the guest callback synchronously; call it from
    /// the task that performed the request, not from inside [`HostServices::http_call`].
    /// A response body over [`crate::limits::MAX_HTTP_CALL_RESPONSE_BODY`] is delivered as a failed callout.
    pub fn complete(mut self, response: Option<HttpCallResponse>) -> Result<(), PluginFailure> {
        self.done = true;
        let limit = crate::limits::MAX_HTTP_CALL_RESPONSE_BODY;
        let response = match response {
            Some(r) if r.body.len() > limit => {
                tracing::warn!(
                    token = self.token,
                    body_bytes = r.body.len(),
                    "callout response body over {limit} bytes: delivered as a failed callout"
                );
                None
            }
            other => other,
        };
        match self.plugin.upgrade() {
            Some(p) => p.on_http_call_response(self.token, response),
            None => Ok(()),
        }
    }
}

impl Drop for CalloutResponder {
    fn drop(&mut self) {
        if !self.done {
            if let Some(p) = self.plugin.upgrade() {
                // Runs now, or deferred when dropped inside a hostcall (e.g. a refused http_call).
                if let Err(e) = p.on_http_call_response(self.token, None) {
                    tracing::debug!(plugin = %p.core.name, error = %e, "callout failure callback failed");
                }
            }
        }
    }
}

/// A reference to one plugin version that a single worker thread keeps for itself. Every stream holds a
/// reference to its plugin for as long as it lives; if those were references to the [`Plugin`] itself, every
/// request on every worker would increment and decrement the one reference count they all share, an atomic
/// operation on a cache line that moves between cores on each request. Streams opened through a handle count
/// on the handle instead, whose count only its own worker touches. The proxy keeps one handle per worker and
/// plugin version.
#[derive(Debug)]
pub struct PluginHandle {
    plugin: Arc<Plugin>,
}

impl PluginHandle {
    /// The plugin version this handle refers to.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// [`Plugin::new_stream`], counted on this handle.
    pub fn new_stream(self: &Arc<Self>, info: impl Into<Arc<RequestInfo>>) -> Result<HttpStream, PluginFailure> {
        self.plugin.open_stream(self, info.into())
    }
}

/// One request flowing through one plugin: a stream context in one instance.
///
/// Each method runs a single callback synchronously under the instance lock. Drop runs `proxy_on_done`
/// (unless [`HttpStream::on_log`] did) and `proxy_on_delete`.
pub struct HttpStream {
    handle: Arc<PluginHandle>,
    slot: usize,
    generation: u64,
    context: u32,
    signal: Arc<StreamSignal>,
    done: bool,
    dead: bool,
    /// The last phase wrote the plugin's changes into the caller's data (see [`HttpStream::data_changed`]).
    changed: bool,
}

impl std::fmt::Debug for HttpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpStream")
            .field("plugin", &self.handle.plugin.core.name)
            .field("context", &self.context)
            .finish()
    }
}

/// Load a phase's headers into the stream's copy (a spare map's buffers reused, no allocation once warm)
/// and clear its modified bit. The caller keeps its own map: most plugins only read headers, and then
/// [`unload_headers`] has nothing to do. Returns the number of headers (the callback's argument).
fn load_headers(spare: &mut Vec<HeaderMap>, map: &mut HeaderMap, modified: &mut u8, t: i32, from: &HeaderMap) -> usize {
    if map.capacity() == 0 {
        *map = spare.pop().unwrap_or_default();
    }
    copy_headers(map, from);
    *modified &= !(1 << t);
    from.len()
}

/// Give the plugin's changes back to the caller, only if a hostcall changed the map during the callback.
/// Returns whether it did.
fn unload_headers(map: &HeaderMap, modified: u8, t: i32, to: &mut HeaderMap) -> bool {
    let changed = modified & (1 << t) != 0;
    if changed {
        copy_headers(to, map);
    }
    changed
}

/// The callback a phase runs and how its return value reads.
struct PhaseCallback {
    /// The export's name, for failures.
    name: &'static str,
    /// The export, if the module has it.
    pick: fn(&Exports) -> Option<Cb<'_>>,
    /// Whether a returned value lets the stream go on: [`abi::headers_continue`] or [`abi::data_continue`].
    continues: fn(i32) -> bool,
}

/// A phase's callback, borrowed from the instance's exports (see [`Instance::call`] for why not cloned).
enum Cb<'a> {
    Three(&'a TypedFunc<(i32, i32, i32), i32>),
    Two(&'a TypedFunc<(i32, i32), i32>),
}

impl HttpStream {
    /// The plugin this stream runs in.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.handle.plugin
    }

    /// Context id given to the guest (unique within its instance).
    pub fn context_id(&self) -> u32 {
        self.context
    }

    fn with_instance<T>(
        &mut self,
        f: impl FnOnce(&mut Instance, u32) -> Result<T, PluginFailure>,
    ) -> Result<T, PluginFailure> {
        if self.dead {
            return Err(self
                .handle
                .plugin
                .core
                .failure(FailureKind::Unavailable, "stream's plugin instance failed earlier"));
        }
        // Borrowed, not cloned (an `Arc` clone is a contended atomic on the plugin shared by every worker).
        let plugin = &self.handle.plugin;
        let mut slot = plugin.lock_slot(self.slot);
        let same_generation = slot.generation == self.generation;
        let r = match slot.instance.as_mut() {
            Some(inst) if same_generation => {
                inst.store.data_mut().current = self.context;
                f(inst, self.context)
            }
            _ => Err(plugin.core.failure(FailureKind::Unavailable, "stream's plugin instance was recreated")),
        };
        if let Err(e) = &r {
            if e.kind != FailureKind::Unavailable {
                plugin.poison(&mut slot, e);
            }
        }
        drop(slot);
        plugin.dispatch_pending();
        if r.is_err() {
            self.dead = true;
        }
        r
    }

    /// Common path for header/body/trailer callbacks: load caller data into the context, run, copy back.
    fn phase<D>(
        &mut self,
        callback: PhaseCallback,
        data: &mut D,
        eos: bool,
        load: impl FnOnce(&mut Vec<HeaderMap>, &mut StreamState, &mut D) -> usize,
        unload: impl FnOnce(&mut StreamState, &mut D) -> bool,
    ) -> Result<FilterAction, PluginFailure> {
        let PhaseCallback { name, pick, continues } = callback;
        self.signal.state.lock().take();
        let mut changed = false;
        let r = self.with_instance(|inst, ctx| {
            let HostState { streams, spare_maps, core, .. } = inst.store.data_mut();
            let Some(s) = streams.get_mut(&ctx) else {
                return Err(core.failure(FailureKind::Unavailable, "stream context is gone"));
            };
            let n = load(spare_maps, s, data);
            s.in_band = true;
            s.local_response = None;
            s.close = false;
            s.continued = false;
            let Instance { store, f, tick, cpu_limit, .. } = &mut *inst;
            let r = match pick(f) {
                Some(Cb::Three(f)) => invoke(store, tick, name, f, (ctx as i32, n as i32, i32::from(eos)), *cpu_limit),
                Some(Cb::Two(f)) => invoke(store, tick, name, f, (ctx as i32, n as i32), *cpu_limit),
                None => Ok(abi::ACTION_CONTINUE),
            };
            let s = inst.stream(ctx)?;
            s.in_band = false;
            changed = unload(s, data);
            let action = r?;
            Ok(if let Some(resp) = s.local_response.take() {
                FilterAction::LocalResponse(resp)
            } else if s.close {
                FilterAction::Close
            } else if continues(action) || s.continued {
                FilterAction::Continue
            } else {
                FilterAction::Pause
            })
        });
        self.changed = changed;
        r
    }

    /// Whether the last header, body or trailer phase wrote the plugin's changes into the caller's data (for
    /// headers: a map hostcall changed them; `run_*_headers` also after a resumption re-read them). When no
    /// plugin of a chain changed the headers, the proxy keeps its own request or response as it was instead
    /// of rebuilding it from the list.
    pub fn data_changed(&self) -> bool {
        self.changed
    }

    /// `proxy_on_request_headers`. `headers` must include `:method`, `:path`, `:authority`, `:scheme`; the
    /// plugin's changes (including `:path`/`:authority` rewrites) are written back into it.
    pub fn on_request_headers(
        &mut self,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> Result<FilterAction, PluginFailure> {
        self.phase(
            PhaseCallback {
                name: "proxy_on_request_headers",
                pick: |f| f.on_request_headers.as_ref().map(Cb::Three),
                continues: abi::headers_continue,
            },
            headers,
            end_of_stream,
            |st, s, h| load_headers(st, &mut s.request_headers, &mut s.modified, abi::MAP_REQUEST_HEADERS, h),
            |s, h| unload_headers(&s.request_headers, s.modified, abi::MAP_REQUEST_HEADERS, h),
        )
    }

    /// `proxy_on_request_body` with the body buffered so far. `Pause` without end_of_stream = buffer more and
    /// call again; modifications (`proxy_set_buffer_bytes`) are written back into `body`.
    pub fn on_request_body(&mut self, body: &mut Bytes, end_of_stream: bool) -> Result<FilterAction, PluginFailure> {
        self.phase(
            PhaseCallback {
                name: "proxy_on_request_body",
                pick: |f| f.on_request_body.as_ref().map(Cb::Three),
                continues: abi::data_continue,
            },
            body,
            end_of_stream,
            |_, s, b| {
                s.request_body = b.clone();
                s.request_eos = end_of_stream;
                b.len()
            },
            |s, b| {
                b.clone_from(&s.request_body);
                true
            },
        )
    }

    /// `proxy_on_request_trailers`.
    pub fn on_request_trailers(&mut self, trailers: &mut HeaderMap) -> Result<FilterAction, PluginFailure> {
        self.phase(
            PhaseCallback {
                name: "proxy_on_request_trailers",
                pick: |f| f.on_request_trailers.as_ref().map(Cb::Two),
                continues: abi::data_continue,
            },
            trailers,
            true,
            |st, s, t| load_headers(st, &mut s.request_trailers, &mut s.modified, abi::MAP_REQUEST_TRAILERS, t),
            |s, t| unload_headers(&s.request_trailers, s.modified, abi::MAP_REQUEST_TRAILERS, t),
        )
    }

    /// `proxy_on_response_headers`; `headers` must include `:status`.
    pub fn on_response_headers(
        &mut self,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> Result<FilterAction, PluginFailure> {
        self.phase(
            PhaseCallback {
                name: "proxy_on_response_headers",
                pick: |f| f.on_response_headers.as_ref().map(Cb::Three),
                continues: abi::headers_continue,
            },
            headers,
            end_of_stream,
            |st, s, h| load_headers(st, &mut s.response_headers, &mut s.modified, abi::MAP_RESPONSE_HEADERS, h),
            |s, h| unload_headers(&s.response_headers, s.modified, abi::MAP_RESPONSE_HEADERS, h),
        )
    }

    /// `proxy_on_response_body` with the body buffered so far (see [`HttpStream::on_request_body`]).
    pub fn on_response_body(&mut self, body: &mut Bytes, end_of_stream: bool) -> Result<FilterAction, PluginFailure> {
        self.phase(
            PhaseCallback {
                name: "proxy_on_response_body",
                pick: |f| f.on_response_body.as_ref().map(Cb::Three),
                continues: abi::data_continue,
            },
            body,
            end_of_stream,
            |_, s, b| {
                s.response_body = b.clone();
                s.response_eos = end_of_stream;
                b.len()
            },
            |s, b| {
                b.clone_from(&s.response_body);
                true
            },
        )
    }

    /// `proxy_on_response_trailers`.
    pub fn on_response_trailers(&mut self, trailers: &mut HeaderMap) -> Result<FilterAction, PluginFailure> {
        self.phase(
            PhaseCallback {
                name: "proxy_on_response_trailers",
                pick: |f| f.on_response_trailers.as_ref().map(Cb::Two),
                continues: abi::data_continue,
            },
            trailers,
            true,
            |st, s, t| load_headers(st, &mut s.response_trailers, &mut s.modified, abi::MAP_RESPONSE_TRAILERS, t),
            |s, t| unload_headers(&s.response_trailers, s.modified, abi::MAP_RESPONSE_TRAILERS, t),
        )
    }

    /// End of the stream in spec order: `proxy_on_done` then `proxy_on_log` (headers still readable).
    /// Call it after the response is sent, before dropping the stream (Drop then only runs `proxy_on_delete`).
    pub fn on_log(&mut self) -> Result<(), PluginFailure> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        if !self.handle.plugin.callbacks.done_or_log {
            return Ok(());
        }
        self.with_instance(|inst, ctx| {
            inst.call("proxy_on_done", |f| f.on_done.as_ref(), ctx as i32)?;
            inst.call("proxy_on_log", |f| f.on_log.as_ref(), ctx as i32)?;
            Ok(())
        })
    }

    /// Wait until a paused stream is resumed by an out-of-band callback (`proxy_continue_stream`,
    /// `proxy_send_local_response`, `proxy_close_stream` from `on_http_call_response`, a tick or a queue).
    /// Holds no lock; wrap it in `tokio::time::timeout` to bound the pause.
    pub async fn resumed(&self) -> Resumption {
        loop {
            let notified = self.signal.notify.notified();
            if let Some(r) = self.signal.state.lock().take() {
                return r;
            }
            notified.await;
        }
    }

    /// Non-blocking check for a resumption posted since the last callback.
    pub fn try_resumed(&self) -> Option<Resumption> {
        self.signal.state.lock().take()
    }

    /// Current request headers as the plugin left them (re-read after a resumption).
    pub fn request_headers(&mut self) -> Result<HeaderMap, PluginFailure> {
        self.with_instance(|inst, ctx| Ok(inst.stream(ctx)?.request_headers.clone()))
    }

    /// Current response headers as the plugin left them.
    pub fn response_headers(&mut self) -> Result<HeaderMap, PluginFailure> {
        self.with_instance(|inst, ctx| Ok(inst.stream(ctx)?.response_headers.clone()))
    }

    /// The request body as the plugin left it: re-read after a body callback that paused at end of stream was
    /// resumed, since the plugin may have replaced it (`proxy_set_buffer_bytes`) from another callback.
    pub fn request_body(&mut self) -> Result<Bytes, PluginFailure> {
        self.with_instance(|inst, ctx| Ok(inst.stream(ctx)?.request_body.clone()))
    }

    /// The response body as the plugin left it (see [`HttpStream::request_body`]).
    pub fn response_body(&mut self) -> Result<Bytes, PluginFailure> {
        self.with_instance(|inst, ctx| Ok(inst.stream(ctx)?.response_body.clone()))
    }

    /// Request headers callback plus, on `Pause`, waiting for the resumption; returns Continue (with `headers`
    /// refreshed), LocalResponse or Close — never Pause.
    pub async fn run_request_headers(
        &mut self,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> Result<FilterAction, PluginFailure> {
        let action = self.on_request_headers(headers, end_of_stream)?;
        self.finish_pause(action, headers, true).await
    }

    /// Response-side twin of [`HttpStream::run_request_headers`].
    pub async fn run_response_headers(
        &mut self,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> Result<FilterAction, PluginFailure> {
        let action = self.on_response_headers(headers, end_of_stream)?;
        self.finish_pause(action, headers, false).await
    }

    async fn finish_pause(
        &mut self,
        action: FilterAction,
        headers: &mut HeaderMap,
        request: bool,
    ) -> Result<FilterAction, PluginFailure> {
        if action != FilterAction::Pause {
            return Ok(action);
        }
        match self.resumed().await {
            Resumption::Continue => {
                *headers = if request { self.request_headers()? } else { self.response_headers()? };
                self.changed = true;
                Ok(FilterAction::Continue)
            }
            Resumption::LocalResponse(r) => Ok(FilterAction::LocalResponse(r)),
            Resumption::Close => Ok(FilterAction::Close),
            Resumption::Failed(f) => Err(f),
        }
    }

    /// Set a property for this stream (e.g. `upstream.address` once connected, or any custom name), readable by
    /// the plugin through `proxy_get_property`. `name` is dotted (`upstream.address`).
    pub fn set_property(&mut self, name: &str, value: impl Into<Vec<u8>>) -> Result<(), PluginFailure> {
        let value = value.into();
        self.with_instance(|inst, ctx| {
            inst.stream(ctx)?.properties.insert(name.to_string(), value);
            Ok(())
        })
    }

    /// Read a custom property the plugin set on this stream with `proxy_set_property` (e.g. a value it wants
    /// logged), or one the host set with [`HttpStream::set_property`]. Built-in attributes are not returned.
    pub fn property(&mut self, name: &str) -> Result<Option<Vec<u8>>, PluginFailure> {
        self.with_instance(|inst, ctx| Ok(inst.stream(ctx)?.properties.get(name).cloned()))
    }

    /// Upstream group the plugin chose with `proxy_set_property("portico.route.upstream", group)`; call after
    /// the request headers phase and before routing.
    pub fn routed_upstream(&mut self) -> Result<Option<String>, PluginFailure> {
        self.with_instance(|inst, ctx| Ok(inst.stream(ctx)?.routed_upstream.clone()))
    }

    /// Ask the plugin to pick an endpoint of `group` (Portico extension `portico_on_upstream_select`). `attempt`
    /// is 0 first, then 1, 2, ... on retries with `failed` = the address that just failed. Returns the chosen
    /// address if the plugin set `portico.upstream.selected` to one of `candidates` (in this callback, or in
    /// request headers for attempt 0); `None` = no decision, use native balancing.
    pub fn select_endpoint(
        &mut self,
        group: &str,
        candidates: &[Candidate],
        attempt: u32,
        failed: Option<&str>,
    ) -> Result<Option<String>, PluginFailure> {
        let source: Arc<dyn CandidateSource> = Arc::new(CandidateList::new(candidates.to_vec()));
        self.select_endpoint_from(group, &source, attempt, failed)
    }

    /// [`HttpStream::select_endpoint`] with candidates produced on demand: the list is built and encoded only
    /// if the plugin reads `portico.upstream.candidates` (see [`CandidateSource`]).
    pub fn select_endpoint_from(
        &mut self,
        group: &str,
        candidates: &Arc<dyn CandidateSource>,
        attempt: u32,
        failed: Option<&str>,
    ) -> Result<Option<String>, PluginFailure> {
        let selects = self.handle.plugin.callbacks.upstream_select;
        self.with_instance(|inst, ctx| {
            let s = inst.stream(ctx)?;
            // The candidates are only readable during `portico_on_upstream_select`: a module without it can
            // only have chosen in its request headers callback.
            if selects {
                s.select = Some(SelectInput {
                    group: group.to_string(),
                    source: candidates.clone(),
                    failed: failed.map(str::to_string),
                });
            }
            let preselected = if attempt == 0 { s.selected_upstream.take() } else { None };
            s.selected_upstream = None;
            let r = if selects {
                inst.stream(ctx)?.in_band = true;
                let args = (ctx as i32, attempt as i32);
                let r = inst.call("portico_on_upstream_select", |f| f.on_upstream_select.as_ref(), args);
                inst.stream(ctx)?.in_band = false;
                r.map(|_| ())
            } else {
                Ok(())
            };
            let s = inst.stream(ctx)?;
            s.select = None;
            r?;
            if s.selected_upstream.is_none() {
                s.selected_upstream = preselected;
            }
            Ok(match s.selected_upstream.clone() {
                Some(addr) if candidates.contains(&addr) => Some(addr),
                Some(addr) => {
                    let core = &inst.store.data().core;
                    tracing::warn!(plugin = %core.name, address = %addr, group, "plugin selected an address that is not a candidate; ignoring");
                    None
                }
                None => None,
            })
        })
    }
}

impl Drop for HttpStream {
    fn drop(&mut self) {
        if self.dead {
            return;
        }
        // Borrowed, not cloned (an `Arc` clone is a contended atomic on the plugin shared by every worker).
        let plugin = &self.handle.plugin;
        let mut slot = plugin.lock_slot(self.slot);
        if slot.generation != self.generation {
            return;
        }
        let Some(inst) = slot.instance.as_mut() else { return };
        let ctx = self.context;
        inst.store.data_mut().current = ctx;
        let mut r = Ok(());
        if !self.done {
            r = inst.call("proxy_on_done", |f| f.on_done.as_ref(), ctx as i32).map(|_| ());
        }
        if r.is_ok() {
            r = inst.call("proxy_on_delete", |f| f.on_delete.as_ref(), ctx as i32).map(|_| ());
        }
        let st = inst.store.data_mut();
        let called_out = st.streams.get(&ctx).is_some_and(|s| s.called_out);
        st.remove_stream(ctx);
        st.current = st.root_context;
        if called_out {
            let (s, g) = (self.slot, self.generation);
            plugin.core.callouts.lock().retain(|_, o| !(o.slot == s && o.generation == g && o.context == ctx));
        }
        if let Err(e) = r {
            plugin.poison(&mut slot, &e);
        }
    }
}
