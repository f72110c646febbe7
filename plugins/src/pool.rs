//! [`Plugin`]: one loaded plugin version and its pool of instances, with the failure policy around them: a
//! failed instance is discarded and recreated on next use, a crash loop marks the plugin broken for a
//! cool-off.
//!
//! Each instance sits in a slot. A slot is either **owned** by one worker thread (see [`crate::worker`]): its
//! instance lives in that thread's table and callbacks reach it without a lock; or **shared**: its instance
//! stays in the slot's mutex and a callback locks it. Work for an owned instance that arrives on another
//! thread waits in the slot's inbox for the owner (`deliver.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use wasmtime::InstancePre;

use crate::callout::HttpCallResponse;
use crate::engine::{EngineUse, PluginEngine};
use crate::error::{with_causes, FailureKind, PluginError, PluginFailure};
use crate::instance::{Instance, Limits, Slot};
use crate::metrics::GuestMetrics;
use crate::module::{AbiVersion, Callbacks, CompiledModule};
use crate::services::HostServices;
use crate::spec::PluginSpec;
use crate::store::{HostState, PluginCore};
use crate::types::{FailPolicy, Resumption};
use crate::worker::{self, thread_token, SlotHome};

static NEXT_PLUGIN_ID: AtomicU64 = AtomicU64::new(1);

/// A value alone on its cache lines (128 bytes: two lines, for CPUs that fetch lines in pairs).
#[repr(align(128))]
pub(crate) struct CacheAligned<T>(T);

impl<T> std::ops::Deref for CacheAligned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Work for an instance that runs outside the stream phases, on a thread that can reach it.
pub(crate) enum Pending {
    QueueReady {
        generation: u64,
        root: u32,
        queue: u32,
    },
    Callout {
        token: u32,
        generation: u64,
        context: u32,
        response: Option<HttpCallResponse>,
    },
    /// A stream dropped on a thread that does not own its instance: its `proxy_on_done`/`proxy_on_delete`.
    Delete {
        generation: u64,
        context: u32,
        done: bool,
    },
}

/// One instance slot. Each on cache lines of its own: its owner reads `owner` and `has_mail` on every
/// callback, and a neighbour's writes would bounce those lines between cores.
#[derive(Default)]
pub(crate) struct SlotCell {
    /// The instance while the slot is shared (and before its owner adopts it).
    pub shared: Mutex<Slot>,
    /// The token of the thread that owns the slot ([`thread_token`]), 0 while it is shared.
    pub owner: AtomicU64,
    /// Work waiting for a thread that can reach the instance (see `deliver.rs`).
    pub inbox: Mutex<Vec<Pending>>,
    pub has_mail: AtomicBool,
    /// Woken when mail arrives, for streams of the instance waiting for a resumption.
    pub mail: tokio::sync::Notify,
}

/// How the calling thread reaches a slot's instance.
pub(crate) enum Reach {
    /// This thread owns it.
    Mine(std::rc::Rc<std::cell::RefCell<Slot>>),
    /// It is shared: lock it.
    Shared,
    /// Another thread owns it.
    Elsewhere,
}

/// A loaded plugin version: compiled module, N instances with configured root contexts, failure policy.
///
/// Shared as `Arc<Plugin>` across threads. All methods are synchronous and each runs at most one short wasm
/// callback; none may be held across an `.await` (the API makes that impossible). Swapping in a new version =
/// loading a new `Plugin`; in-flight streams finish on the old one.
pub struct Plugin {
    pub(crate) core: Arc<PluginCore>,
    /// Keeps the engine alive, and its epoch ticker running, while the plugin is.
    _engine: EngineUse,
    /// Names this version in the workers' tables of owned instances.
    pub(crate) id: u64,
    me: Weak<Plugin>,
    module: CompiledModule,
    pre: InstancePre<HostState>,
    unknown_imports: Vec<String>,
    pub(crate) slots: Vec<CacheAligned<SlotCell>>,
    instances: usize,
    rr: AtomicUsize,
    fail: FailPolicy,
    limits: Limits,
    max_restarts: usize,
    restarts: Mutex<VecDeque<Instant>>,
    broken: AtomicBool,
    /// While broken: when to try again, and the rest to take if it breaks again.
    retry: Mutex<(Instant, Duration)>,
    pub(crate) callbacks: Callbacks,
    /// See [`PluginSpec::pause_timeout`].
    pub(crate) pause_timeout: Duration,
    /// Kept, not serving (a version kept for rollback) since then: its ticks stop a `pause_timeout` later
    /// (see [`Plugin::set_standby`]).
    pub(crate) standby: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.core.name)
            .field("module", &self.module)
            .field("instances", &self.instances)
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
        let instances = if spec.instances == 0 {
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
                clock: shared.clock.clone(),
                loaded: AtomicBool::new(false),
                tickers: Arc::default(),
                callout_sink: weak.clone(),
                queue_sink: weak.clone(),
                callouts: Mutex::new(HashMap::new()),
                next_token: AtomicU32::new(0),
                guest_metrics: GuestMetrics::default(),
                m_seconds,
                m_restarts,
            }),
            _engine: EngineUse::new(&shared),
            module: module.clone(),
            pre,
            unknown_imports: unknown,
            id: NEXT_PLUGIN_ID.fetch_add(1, Ordering::Relaxed),
            me: weak.clone(),
            // One more than asked: the last serves threads that are not workers when workers own the others.
            slots: (0..=instances).map(|_| CacheAligned(SlotCell::default())).collect(),
            instances,
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
            callbacks: Callbacks::of(&module.module),
            pause_timeout: spec.pause_timeout,
            standby: Mutex::new(None),
        });
        // Counted from here: the plugin's drop, even on a failed start, detaches it.
        plugin.core.shared.attach(&plugin.core.vm_id);
        for (i, cell) in plugin.slots.iter().take(instances).enumerate() {
            let mut slot = cell.shared.lock();
            slot.generation += 1;
            slot.instance = Some(plugin.instantiate(i, slot.generation)?);
        }
        tracing::info!(plugin = %plugin.core.name, source = %spec.source, sha256 = %module.sha256_hex(), abi = ?module.abi, instances, "plugin loaded");
        plugin.core.loaded.store(true, Ordering::Relaxed);
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

    /// Whether the plugin takes part in the request headers phase: it exports `proxy_on_request_headers`, or a
    /// later callback could read the request headers (the phase then keeps a copy). A proxy skips the phase,
    /// and building the header list, for plugins that do not.
    pub fn handles_request_headers(&self) -> bool {
        self.callbacks.request_headers || self.callbacks.keeps_request_maps()
    }

    /// Whether the module exports `portico_on_upstream_select`: only such plugins (and ones that chose an
    /// endpoint in their request headers callback, see [`HttpStream::preselected`]) take part in endpoint
    /// selection.
    pub fn selects_upstream(&self) -> bool {
        self.callbacks.upstream_select
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
        self.callbacks.response_side()
    }

    /// Number of instances in the pool.
    pub fn instance_count(&self) -> usize {
        self.instances
    }

    /// How the calling thread reaches slot `i`.
    pub(crate) fn reach(&self, i: usize) -> Reach {
        match self.slots[i].owner.load(Ordering::Acquire) {
            0 => Reach::Shared,
            owner if owner == thread_token() => match worker::owned(self.id, i) {
                Some(cell) => Reach::Mine(cell),
                None => Reach::Elsewhere,
            },
            _ => Reach::Elsewhere,
        }
    }

    /// Runs `f` on slot `i` from the calling thread: on the instance this thread owns, or under the slot's
    /// lock when it is shared. `Err(arg)` gives `arg` back when the slot is owned by another thread (or this
    /// thread is already inside it).
    pub(crate) fn with_slot<A, T>(&self, i: usize, arg: A, f: impl FnOnce(&mut Slot, A) -> T) -> Result<T, A> {
        match self.reach(i) {
            Reach::Mine(cell) => match cell.try_borrow_mut() {
                Ok(mut slot) => Ok(f(&mut slot, arg)),
                Err(_) => Err(arg),
            },
            Reach::Shared => {
                let cell = &self.slots[i];
                let mut slot = cell.shared.lock();
                // A worker may have adopted the slot between the check and the lock.
                if cell.owner.load(Ordering::Acquire) != 0 {
                    return Err(arg);
                }
                Ok(f(&mut slot, arg))
            }
            Reach::Elsewhere => Err(arg),
        }
    }

    /// The slot a new stream on this thread goes to. A worker of `count` on a version with at least `count`
    /// instances gets its own slot (adopted on its first stream); other threads pick a shared slot: their
    /// preferred one (a worker's index), else the next round robin, an idle one over a busy one, and the spare
    /// slot when workers own all the others.
    pub(crate) fn slot_for_new_stream(&self) -> usize {
        let worker = worker::worker();
        if let Some((index, count)) = worker {
            if count <= self.instances && index < self.instances {
                match self.slots[index].owner.load(Ordering::Acquire) {
                    owner if owner == thread_token() => return index,
                    0 if self.adopt(index) => return index,
                    _ => {}
                }
            }
        }
        let n = self.instances;
        let start = worker.map_or_else(|| self.rr.fetch_add(1, Ordering::Relaxed), |(index, _)| index);
        let shared = |i: &usize| self.slots[*i].owner.load(Ordering::Relaxed) == 0;
        let candidates = || (0..n).map(|k| (start + k) % n).filter(shared);
        candidates().find(|&i| self.slots[i].shared.try_lock().is_some()).or_else(|| candidates().next()).unwrap_or(n)
    }

    /// Makes this thread the owner of slot `i`, taking its instance into the thread's table; false when
    /// another thread took it first.
    fn adopt(&self, i: usize) -> bool {
        let me = thread_token();
        let cell = &self.slots[i];
        worker::forget_unloaded();
        let mut slot = cell.shared.lock();
        if cell.owner.load(Ordering::Acquire) != 0 {
            return false;
        }
        let state = std::mem::take(&mut *slot);
        cell.owner.store(me, Ordering::Release);
        drop(slot);
        let home: Weak<dyn SlotHome> = self.me.clone();
        worker::adopt(self.id, home, i, state);
        // Its ticks are this thread's ticker's now.
        self.core.tickers.notify_waiters();
        true
    }

    /// Drop a failed instance; wake streams paused on it so they fail instead of waiting forever.
    pub(crate) fn poison(&self, slot: &mut Slot, failure: &PluginFailure) {
        if let Some(inst) = slot.instance.take() {
            tracing::warn!(plugin = %self.core.name, kind = %failure.kind, error = %failure.message, "plugin instance failed; discarding it");
            for signal in inst.store.data().streams.signals() {
                signal.post(Resumption::Failed(failure.clone()));
            }
        }
    }

    /// Recreate a discarded instance, rate-limited; too many restarts mark the plugin broken.
    pub(crate) fn ensure_instance<'a>(&self, slot: &'a mut Slot, i: usize) -> Result<&'a mut Instance, PluginFailure> {
        if slot.instance.is_none() && slot.generation == 0 {
            // The spare slot's first instance, made on first use: not a restart.
            slot.generation = 1;
            slot.instance = Some(self.instantiate(i, 1).map_err(|e| self.unavailable(&e))?);
        }
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
                Err(e) => return Err(self.unavailable(&e)),
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

    /// A failed (re)start as the stream's failure, logged with its causes.
    fn unavailable(&self, e: &PluginError) -> PluginFailure {
        let text = with_causes(e);
        tracing::warn!(plugin = %self.core.name, error = %text, "recreating plugin instance failed");
        self.core.failure(FailureKind::Unavailable, text)
    }
}

impl SlotHome for Plugin {
    fn release(&self, slot: usize, state: Slot) {
        let cell = &self.slots[slot];
        let mut shared = cell.shared.lock();
        *shared = state;
        cell.owner.store(0, Ordering::Release);
        // Its ticks are the shared ticker's again.
        self.core.tickers.notify_waiters();
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        // The version's tickers end.
        self.core.tickers.notify_waiters();
        self.core.shared.detach(&self.core.vm_id);
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
