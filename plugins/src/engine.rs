//! [`PluginEngine`]: the shared wasmtime engine, epoch ticker, compile cache, shared data, queues and metrics.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Module};

use crate::host;
use crate::plugin::Plugin;

/// How often the background thread advances the epoch; CPU deadlines are counted in these ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Compiled modules kept by content hash; old plugin versions fall out after this many distinct modules.
const MODULE_CACHE_CAPACITY: usize = 32;

/// A compiled, ABI-checked module, cheap to clone. Produced by [`PluginEngine::compile`].
#[derive(Clone)]
pub struct CompiledModule {
    pub(crate) module: Module,
    pub(crate) sha256: [u8; 32],
    pub(crate) abi: AbiVersion,
}

impl CompiledModule {
    /// Hex sha256 of the module bytes, for logs and the admin API.
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The ABI version the module declared through its marker export.
    pub fn abi_version(&self) -> AbiVersion {
        self.abi
    }
}

impl std::fmt::Debug for CompiledModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledModule").field("sha256", &self.sha256_hex()).field("abi", &self.abi).finish()
    }
}

/// proxy-wasm ABI version declared by a module's `proxy_abi_version_*` export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbiVersion {
    /// `proxy_abi_version_0_2_0` (Go SDKs): identical to 0.2.1 minus `proxy_get_log_level`.
    V0_2_0,
    /// `proxy_abi_version_0_2_1` (Rust, C++, AssemblyScript SDKs).
    V0_2_1,
}

/// Prometheus families shared by all plugins (label `plugin` distinguishes them).
pub(crate) struct EngineMetrics {
    pub callbacks: IntCounterVec,
    pub failures: IntCounterVec,
    pub restarts: IntCounterVec,
    pub callback_seconds: HistogramVec,
    pub guest_counter: IntCounterVec,
    pub guest_gauge: IntGaugeVec,
    pub guest_histogram: HistogramVec,
}

impl EngineMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let callbacks = IntCounterVec::new(
            Opts::new(
                "portico_plugin_callbacks_total",
                "proxy-wasm callbacks run per plugin and instance (one counter per instance, so that workers do \
                 not share one atomic: sum by plugin for the plugin's total)",
            ),
            &["plugin", "instance"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new("portico_plugin_failures_total", "plugin callback failures by kind (trap, timeout, ...)"),
            &["plugin", "kind"],
        )?;
        let restarts = IntCounterVec::new(
            Opts::new("portico_plugin_instance_restarts_total", "plugin instances recreated after a failure"),
            &["plugin"],
        )?;
        let callback_seconds = HistogramVec::new(
            HistogramOpts::new(
                "portico_plugin_callback_seconds",
                "wall time of plugin callbacks, timed for a random sample of 1 in 8 of them (the clock reads cost \
                 more than short callbacks); _count is about 1/8 of portico_plugin_callbacks_total, which counts \
                 every callback",
            )
            .buckets(vec![
                0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.0025, 0.005, 0.01, 0.05,
                0.1,
            ]),
            &["plugin"],
        )?;
        let guest_counter = IntCounterVec::new(
            Opts::new("portico_plugin_counter", "counters defined by plugins (proxy_define_metric)"),
            &["plugin", "name"],
        )?;
        let guest_gauge = IntGaugeVec::new(
            Opts::new("portico_plugin_gauge", "gauges defined by plugins (proxy_define_metric)"),
            &["plugin", "name"],
        )?;
        let guest_histogram = HistogramVec::new(
            HistogramOpts::new("portico_plugin_histogram", "histograms defined by plugins (proxy_define_metric)")
                .buckets(prometheus::exponential_buckets(1.0, 4.0, 12)?),
            &["plugin", "name"],
        )?;
        registry.register(Box::new(callbacks.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(restarts.clone()))?;
        registry.register(Box::new(callback_seconds.clone()))?;
        registry.register(Box::new(guest_counter.clone()))?;
        registry.register(Box::new(guest_gauge.clone()))?;
        registry.register(Box::new(guest_histogram.clone()))?;
        Ok(EngineMetrics {
            callbacks,
            failures,
            restarts,
            callback_seconds,
            guest_counter,
            guest_gauge,
            guest_histogram,
        })
    }
}

/// A value in the vm_id-scoped shared key/value store.
struct SharedValue {
    value: Vec<u8>,
    cas: u32,
}

/// Who gets `proxy_on_queue_ready` for a queue.
#[derive(Clone)]
pub(crate) struct QueueOwner {
    pub plugin: Weak<Plugin>,
    pub slot: usize,
    pub generation: u64,
    pub root_context: u32,
}

pub(crate) struct SharedQueue {
    pub vm_id: String,
    pub name: String,
    pub items: VecDeque<Vec<u8>>,
    /// Bytes in `items`.
    pub bytes: usize,
    pub owner: Option<QueueOwner>,
}

/// State shared by every plugin created from one engine. Owns the epoch ticker: it stops when the last
/// plugin and the engine handle are gone.
pub(crate) struct EngineShared {
    pub engine: Engine,
    pub linker: host::HostLinker,
    pub registry: Registry,
    pub metrics: EngineMetrics,
    cache: Mutex<VecDeque<CompiledModule>>,
    shared_data: Mutex<SharedData>,
    next_cas: AtomicU32,
    pub queues: Mutex<HashMap<u32, SharedQueue>>,
    next_queue: AtomicU32,
    stop: Arc<AtomicBool>,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for EngineShared {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.ticker.lock().take() {
            let _ = handle.join();
        }
    }
}

/// Result of a shared-data write.
pub(crate) enum SetShared {
    Ok,
    CasMismatch,
    /// The key or value alone is over its cap.
    TooLarge,
    /// The store is full (keys or bytes).
    Full,
}

/// Shared data with its size, kept under [`crate::limits`].
#[derive(Default)]
struct SharedData {
    map: HashMap<(String, String), SharedValue>,
    /// Key and value bytes held.
    bytes: usize,
}

/// Result of a queue write.
pub(crate) enum Enqueue {
    /// Queued; the owner to notify, if any.
    Ok(Option<QueueOwner>),
    NotFound,
    /// The entry alone is over the queue's byte cap.
    TooLarge,
    /// The queue holds its cap of entries or bytes.
    Full,
}

impl EngineShared {
    pub fn get_shared(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        let data = self.shared_data.lock();
        data.map.get(&(vm_id.to_string(), key.to_string())).map(|v| (v.value.clone(), v.cas))
    }

    /// CAS write per the spec: `cas == 0` writes unconditionally, otherwise it must equal the stored token.
    pub fn set_shared(&self, vm_id: &str, key: &str, value: Vec<u8>, cas: u32) -> SetShared {
        use crate::limits::{MAX_SHARED_DATA_BYTES, MAX_SHARED_DATA_KEY, MAX_SHARED_DATA_KEYS, MAX_SHARED_DATA_VALUE};
        if key.len() > MAX_SHARED_DATA_KEY || value.len() > MAX_SHARED_DATA_VALUE {
            return SetShared::TooLarge;
        }
        let mut data = self.shared_data.lock();
        let k = (vm_id.to_string(), key.to_string());
        if cas != 0 {
            match data.map.get(&k) {
                Some(existing) if existing.cas == cas => {}
                _ => return SetShared::CasMismatch,
            }
        }
        let old = data.map.get(&k).map(|v| k.1.len() + v.value.len());
        let bytes = data.bytes - old.unwrap_or(0) + key.len() + value.len();
        if (old.is_none() && data.map.len() >= MAX_SHARED_DATA_KEYS) || bytes > MAX_SHARED_DATA_BYTES {
            return SetShared::Full;
        }
        data.bytes = bytes;
        let mut next = self.next_cas.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if next == 0 {
            next = self.next_cas.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        }
        data.map.insert(k, SharedValue { value, cas: next });
        SetShared::Ok
    }

    /// The queue's id; `None` when the name is too long or there are [`crate::limits::MAX_QUEUES`] already.
    pub fn register_queue(&self, vm_id: &str, name: &str, owner: QueueOwner) -> Option<u32> {
        let mut queues = self.queues.lock();
        if let Some((id, q)) = queues.iter_mut().find(|(_, q)| q.vm_id == vm_id && q.name == name) {
            q.owner = Some(owner);
            return Some(*id);
        }
        if name.len() > crate::limits::MAX_QUEUE_NAME || queues.len() >= crate::limits::MAX_QUEUES {
            return None;
        }
        let id = self.next_queue.fetch_add(1, Ordering::Relaxed) + 1;
        queues.insert(
            id,
            SharedQueue {
                vm_id: vm_id.to_string(),
                name: name.to_string(),
                items: VecDeque::new(),
                bytes: 0,
                owner: Some(owner),
            },
        );
        Some(id)
    }

    /// Appends to a queue within its caps.
    pub fn enqueue(&self, id: u32, value: Vec<u8>) -> Enqueue {
        use crate::limits::{MAX_QUEUE_BYTES, MAX_QUEUE_ENTRIES};
        let mut queues = self.queues.lock();
        let Some(q) = queues.get_mut(&id) else { return Enqueue::NotFound };
        if value.len() > MAX_QUEUE_BYTES {
            return Enqueue::TooLarge;
        }
        if q.items.len() >= MAX_QUEUE_ENTRIES || q.bytes + value.len() > MAX_QUEUE_BYTES {
            return Enqueue::Full;
        }
        q.bytes += value.len();
        q.items.push_back(value);
        Enqueue::Ok(q.owner.clone())
    }

    /// Takes the oldest entry of a queue: `Err(())` for an unknown queue, `Ok(None)` when it is empty.
    pub fn dequeue(&self, id: u32) -> Result<Option<Vec<u8>>, ()> {
        let mut queues = self.queues.lock();
        let q = queues.get_mut(&id).ok_or(())?;
        let item = q.items.pop_front();
        if let Some(item) = &item {
            q.bytes -= item.len();
        }
        Ok(item)
    }

    pub fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.queues.lock().iter().find(|(_, q)| q.vm_id == vm_id && q.name == name).map(|(id, _)| *id)
    }
}

/// One wasmtime engine (Cranelift, epoch interruption) shared by all plugins, plus process-wide plugin state:
/// module compile cache, shared key/value data (scoped by vm_id), shared queues and the Prometheus registry.
///
/// Cloning is cheap (an `Arc`). A background thread advances the epoch every millisecond so per-callback CPU
/// deadlines work; it stops when the engine and every plugin loaded from it are dropped.
#[derive(Clone)]
pub struct PluginEngine {
    pub(crate) shared: Arc<EngineShared>,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine").finish_non_exhaustive()
    }
}

impl PluginEngine {
    /// Create the engine with a fresh Prometheus registry. Call once at startup.
    pub fn new() -> Result<Self, crate::PluginError> {
        Self::with_registry(Registry::new())
    }

    /// Create the engine registering plugin metrics into an existing registry (e.g. the proxy's).
    pub fn with_registry(registry: Registry) -> Result<Self, crate::PluginError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.max_wasm_stack(1 << 20);
        let engine = Engine::new(&config).map_err(|e| crate::PluginError::InvalidSpec(format!("engine: {e}")))?;
        let linker = host::build_linker(&engine)
            .map_err(|e| crate::PluginError::InvalidSpec(format!("linking host functions: {e}")))?;
        let metrics = EngineMetrics::new(&registry)
            .map_err(|e| crate::PluginError::InvalidSpec(format!("registering metrics: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("portico-wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| crate::PluginError::InvalidSpec(format!("spawning epoch thread: {e}")))?
        };
        Ok(PluginEngine {
            shared: Arc::new(EngineShared {
                engine,
                linker,
                registry,
                metrics,
                cache: Mutex::new(VecDeque::new()),
                shared_data: Mutex::new(SharedData::default()),
                next_cas: AtomicU32::new(0),
                queues: Mutex::new(HashMap::new()),
                next_queue: AtomicU32::new(0),
                stop,
                ticker: Mutex::new(Some(ticker)),
            }),
        })
    }

    /// Registry holding `portico_plugin_*` metrics (callbacks, failures, restarts, callback time, and the
    /// counters/gauges/histograms plugins define). Gather it from the admin `/metrics` endpoint.
    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// Compile and ABI-check wasm module bytes.
    ///
    /// Blocking and CPU-heavy (Cranelift): call it from a dedicated thread or `tokio::task::spawn_blocking`,
    /// never on a tokio worker. Results are cached by sha256 of the bytes, so reloading an unchanged module
    /// is a hash and a lookup.
    pub fn compile(&self, plugin: &str, bytes: &[u8]) -> Result<CompiledModule, crate::PluginError> {
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(hit) = self.shared.cache.lock().iter().find(|m| m.sha256 == sha256) {
            return Ok(hit.clone());
        }
        let module = Module::new(&self.shared.engine, bytes)
            .map_err(|e| crate::PluginError::Compile { plugin: plugin.to_string(), message: format!("{e:#}") })?;
        let abi = detect_abi(plugin, &module)?;
        let compiled = CompiledModule { module, sha256, abi };
        let mut cache = self.shared.cache.lock();
        if !cache.iter().any(|m| m.sha256 == sha256) {
            if cache.len() >= MODULE_CACHE_CAPACITY {
                cache.pop_front();
            }
            cache.push_back(compiled.clone());
        }
        Ok(compiled)
    }
}

fn detect_abi(plugin: &str, module: &Module) -> Result<AbiVersion, crate::PluginError> {
    let mut found_010 = false;
    let mut other = None;
    for export in module.exports() {
        match export.name() {
            "proxy_abi_version_0_2_1" => return Ok(AbiVersion::V0_2_1),
            "proxy_abi_version_0_2_0" => return Ok(AbiVersion::V0_2_0),
            "proxy_abi_version_0_1_0" => found_010 = true,
            n if n.starts_with("proxy_abi_version_") => other = Some(n.to_string()),
            _ => {}
        }
    }
    let message = if found_010 {
        "module declares proxy-wasm ABI 0.1.0 (proxy_abi_version_0_1_0), which Portico does not support; \
         rebuild it with a current SDK (ABI 0.2.0 or 0.2.1)"
            .to_string()
    } else if let Some(name) = other {
        format!("module declares unknown proxy-wasm ABI version {name}; supported: 0.2.0, 0.2.1")
    } else {
        "missing proxy-wasm ABI version marker: module must export proxy_abi_version_0_2_1 or \
         proxy_abi_version_0_2_0 (is this a proxy-wasm plugin?)"
            .to_string()
    };
    Err(crate::PluginError::AbiVersion { plugin: plugin.to_string(), message })
}
