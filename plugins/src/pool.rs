//! [`Plugin`]: one loaded plugin version and its pool of instances (one per worker by default), with the
//! failure policy around them: a failed instance is discarded and recreated on next use, a crash loop marks the
//! plugin broken for a cool-off. Also the deliveries that arrive outside a stream's own callbacks: callout
//! answers, queue notifications, ticks.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use wasmtime::InstancePre;

use crate::callout::{CalloutSink, HttpCallResponse};
use crate::engine::{EngineShared, PluginEngine};
use crate::error::{FailureKind, PluginError, PluginFailure};
use crate::instance::{in_callback, Instance, Limits};
use crate::metrics::GuestMetrics;
use crate::module::{AbiVersion, Callbacks, CompiledModule};
use crate::services::HostServices;
use crate::shared::QueueSink;
use crate::spec::PluginSpec;
use crate::store::{HostState, PluginCore};
use crate::types::{FailPolicy, Resumption};

thread_local! {
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

/// A value alone on its cache lines (128 bytes: two lines, for CPUs that fetch lines in pairs).
#[repr(align(128))]
struct CacheAligned<T>(T);

impl<T> std::ops::Deref for CacheAligned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

pub(crate) struct Slot {
    pub instance: Option<Instance>,
    pub generation: u64,
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
    pub(crate) core: Arc<PluginCore>,
    /// Keeps the engine (and its epoch ticker) alive while the plugin is.
    _engine: Arc<EngineShared>,
    module: CompiledModule,
    pre: InstancePre<HostState>,
    unknown_imports: Vec<String>,
    /// One per instance, each on cache lines of its own: workers lock their own instance on every callback,
    /// and a lock word sharing a line with a neighbour's would bounce between their cores.
    slots: Vec<CacheAligned<Mutex<Slot>>>,
    rr: AtomicUsize,
    fail: FailPolicy,
    limits: Limits,
    max_restarts: usize,
    restarts: Mutex<VecDeque<Instant>>,
    broken: AtomicBool,
    /// While broken: when to try again, and the rest to take if it breaks again.
    retry: Mutex<(Instant, Duration)>,
    pending: Mutex<Vec<Pending>>,
    has_pending: AtomicBool,
    pub(crate) callbacks: Callbacks,
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
                    return Err(PluginError::Instantiate { plugin: name, source: e.into_boxed_dyn_error() });
                }
                tracing::warn!(plugin = %name, imports = ?unknown, "module imports functions Portico does not provide; they trap if called");
                let mut l = shared.linker.linker.clone();
                l.define_unknown_imports_as_traps(&module.module)
                    .and_then(|_| l.instantiate_pre(&module.module))
                    .map_err(|e| PluginError::Instantiate { plugin: name.clone(), source: e.into_boxed_dyn_error() })?
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
        let plugin = Arc::new_cyclic(|weak: &Weak<Plugin>| Plugin {
            core: Arc::new(PluginCore {
                name: spec.name.clone(),
                root_id: spec.root_id.clone(),
                vm_id,
                config: Bytes::from(spec.config.clone().into_bytes()),
                vm_config: Bytes::from(spec.vm_config.clone().into_bytes()),
                services,
                shared: shared.shared.clone(),
                metrics: shared.metrics.clone(),
                callout_sink: weak.clone(),
                queue_sink: weak.clone(),
                callouts: Mutex::new(HashMap::new()),
                next_token: AtomicU32::new(0),
                guest_metrics: GuestMetrics::default(),
                m_seconds,
                m_restarts,
            }),
            _engine: shared.clone(),
            module: module.clone(),
            pre,
            unknown_imports: unknown,
            slots: (0..n).map(|_| CacheAligned(Mutex::new(Slot { instance: None, generation: 0 }))).collect(),
            rr: AtomicUsize::new(0),
            fail: spec.fail,
            limits: Limits {
                memory: spec.memory_limit,
                cpu: spec.cpu_limit,
                start_cpu: spec.cpu_limit.max(Duration::from_secs(1)),
            },
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

    pub(crate) fn lock_slot(&self, i: usize) -> MutexGuard<'_, Slot> {
        self.slots[i % self.slots.len()].lock()
    }

    /// Drop a failed instance; wake streams paused on it so they fail instead of waiting forever.
    pub(crate) fn poison(&self, slot: &mut Slot, failure: &PluginFailure) {
        if let Some(inst) = slot.instance.take() {
            tracing::warn!(plugin = %self.core.name, kind = %failure.kind, error = %failure.message, "plugin instance failed; discarding it");
            for s in inst.store.data().streams.values() {
                s.signal.post(Resumption::Failed(failure.clone()));
            }
        }
    }

    /// Recreate a discarded instance, rate-limited; too many restarts mark the plugin broken.
    pub(crate) fn ensure_instance<'a>(&self, slot: &'a mut Slot, i: usize) -> Result<&'a mut Instance, PluginFailure> {
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

    /// A new [`PluginHandle`] on this version, for one worker thread to open its streams through.
    pub fn handle(self: &Arc<Self>) -> Arc<PluginHandle> {
        Arc::new(PluginHandle { plugin: self.clone() })
    }

    fn instantiate(&self, slot: usize, generation: u64) -> Result<Instance, PluginError> {
        Instance::new(&self.pre, &self.core, self.limits, slot, generation)
    }

    /// The instance slot a new stream goes to, locked: this thread's preferred one (see [`prefer_instance`]),
    /// else the next round robin; an idle one over a busy one.
    pub(crate) fn pick_slot(&self) -> (usize, MutexGuard<'_, Slot>) {
        let n = self.slots.len();
        let start = PREFERRED_INSTANCE.with(Cell::get).unwrap_or_else(|| self.rr.fetch_add(1, Ordering::Relaxed));
        (0..n)
            .find_map(|k| {
                let i = (start + k) % n;
                self.slots[i].try_lock().map(|g| (i, g))
            })
            .unwrap_or_else(|| (start % n, self.lock_slot(start)))
    }

    /// Deliver an HTTP callout result (`None` = failed/timed out: the guest sees 0 headers) by running
    /// `proxy_on_http_call_response(root context, token, ...)` with the context that made the call effective.
    /// Usually called through [`CalloutResponder::complete`]. Unknown tokens (stream already gone) are ignored.
    pub fn on_http_call_response(&self, token: u32, response: Option<HttpCallResponse>) -> Result<(), PluginFailure> {
        if in_callback() {
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

    fn defer(&self, p: Pending) {
        self.pending.lock().push(p);
        self.has_pending.store(true, Ordering::Release);
    }

    /// Run deferred work: `proxy_on_queue_ready` for enqueued items and callout results delivered while a
    /// callback was running. Called automatically after every stream callback and by [`Plugin::run_ticks`].
    pub fn dispatch_pending(&self) {
        // Load before swap: the swap is a write, and this runs after every stream callback on every worker;
        // writing the shared flag when there is nothing pending would bounce its cache line between cores.
        if in_callback() || !self.has_pending.load(Ordering::Acquire) || !self.has_pending.swap(false, Ordering::AcqRel)
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

impl CalloutSink for Plugin {
    fn on_http_call_response(&self, token: u32, response: Option<HttpCallResponse>) -> Result<(), PluginFailure> {
        Plugin::on_http_call_response(self, token, response)
    }
}

impl QueueSink for Plugin {
    fn queue_ready(&self, slot: usize, generation: u64, root: u32, queue: u32) {
        self.defer(Pending::QueueReady { slot, generation, root, queue });
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
    pub(crate) plugin: Arc<Plugin>,
}

impl PluginHandle {
    /// The plugin version this handle refers to.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }
}
