//! [`PluginEngine`]: the wasmtime engine (Cranelift, epoch interruption) every plugin shares, with its epoch
//! ticker, compile cache, linker, metric families, and the shared data and queues plugins see.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{JoinHandle, Thread};

use parking_lot::Mutex;
use prometheus::Registry;
use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Module};

use crate::budget::EPOCH_TICK;
use crate::error::PluginError;
use crate::linker::{self, HostLinker};
use crate::metrics::EngineMetrics;
use crate::module::{detect_abi, CompiledModule};
use crate::shared::SharedState;

/// Compiled modules kept by content hash; old plugin versions fall out after this many distinct modules.
const MODULE_CACHE_CAPACITY: usize = 32;

/// State shared by every plugin created from one engine. Owns the epoch ticker: it stops when the last
/// plugin and the engine handle are gone.
pub(crate) struct EngineShared {
    pub engine: Engine,
    pub linker: HostLinker,
    pub registry: Registry,
    pub metrics: Arc<EngineMetrics>,
    pub shared: Arc<SharedState>,
    cache: Mutex<VecDeque<CompiledModule>>,
    ticking: Arc<Ticking>,
    ticker_thread: Thread,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

/// What the epoch ticker reads: whether to stop, and how many plugins are loaded. With none loaded no guest
/// code can run, so there is no deadline to keep, and the ticker sleeps until a plugin is loaded instead of
/// waking a thousand times a second (a Portico without plugins was woken ~900 times a second while idle).
#[derive(Debug, Default)]
struct Ticking {
    stop: AtomicBool,
    plugins: AtomicUsize,
    /// Epochs advanced so far.
    ticks: AtomicU64,
}

impl Drop for EngineShared {
    fn drop(&mut self) {
        self.ticking.stop.store(true, Ordering::Release);
        self.ticker_thread.unpark();
        if let Some(handle) = self.ticker.lock().take() {
            let _ = handle.join();
        }
    }
}

/// A loaded plugin's hold on the engine: keeps it alive, and the epoch ticker running, while the plugin is.
/// Made before the plugin's first instance, so every guest call runs under a ticking deadline.
pub(crate) struct EngineUse(Arc<EngineShared>);

impl EngineUse {
    pub(crate) fn new(shared: &Arc<EngineShared>) -> Self {
        if shared.ticking.plugins.fetch_add(1, Ordering::AcqRel) == 0 {
            shared.ticker_thread.unpark();
        }
        EngineUse(shared.clone())
    }
}

impl Drop for EngineUse {
    fn drop(&mut self) {
        self.0.ticking.plugins.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One wasmtime engine (Cranelift, epoch interruption) shared by all plugins, plus process-wide plugin state:
/// module compile cache, shared key/value data (scoped by vm_id), shared queues and the Prometheus registry.
///
/// Cloning is cheap (an `Arc`). A background thread advances the epoch every millisecond while any plugin is
/// loaded, so per-callback CPU deadlines work, and sleeps while none is; it stops when the engine and every
/// plugin loaded from it are dropped.
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
    pub fn new() -> Result<Self, PluginError> {
        Self::with_registry(Registry::new())
    }

    /// Create the engine registering plugin metrics into an existing registry (e.g. the proxy's).
    pub fn with_registry(registry: Registry) -> Result<Self, PluginError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.max_wasm_stack(1 << 20);
        let engine = Engine::new(&config).map_err(engine_error("creating the wasm engine"))?;
        let linker = linker::build_linker(&engine).map_err(engine_error("linking host functions"))?;
        let metrics = EngineMetrics::new(&registry)
            .map_err(|e| PluginError::Engine { what: "registering plugin metrics", source: Box::new(e) })?;
        let ticking = Arc::new(Ticking::default());
        let ticker = {
            let engine = engine.clone();
            let ticking = ticking.clone();
            std::thread::Builder::new()
                .name("portico-wasm-epoch".into())
                .spawn(move || {
                    while !ticking.stop.load(Ordering::Acquire) {
                        // An unpark that comes before the park makes it return at once, so a plugin loaded
                        // between the load and the park is not missed.
                        if ticking.plugins.load(Ordering::Acquire) == 0 {
                            std::thread::park();
                            continue;
                        }
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                        ticking.ticks.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .map_err(|e| PluginError::Engine { what: "spawning the epoch thread", source: Box::new(e) })?
        };
        Ok(PluginEngine {
            shared: Arc::new(EngineShared {
                engine,
                linker,
                registry,
                metrics: Arc::new(metrics),
                shared: Arc::new(SharedState::default()),
                cache: Mutex::new(VecDeque::new()),
                ticking,
                ticker_thread: ticker.thread().clone(),
                ticker: Mutex::new(Some(ticker)),
            }),
        })
    }

    /// Registry holding `portico_plugin_*` metrics (callbacks, failures, restarts, callback time, and the
    /// counters/gauges/histograms plugins define). Gather it from the admin `/metrics` endpoint.
    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// How many times the epoch has advanced: about once a millisecond while any plugin is loaded, never
    /// while none is.
    pub fn epoch_ticks(&self) -> u64 {
        self.shared.ticking.ticks.load(Ordering::Relaxed)
    }

    /// Compile and ABI-check wasm module bytes.
    ///
    /// Blocking and CPU-heavy (Cranelift): call it from a dedicated thread or `tokio::task::spawn_blocking`,
    /// never on a tokio worker. Results are cached by sha256 of the bytes, so reloading an unchanged module
    /// is a hash and a lookup.
    pub fn compile(&self, plugin: &str, bytes: &[u8]) -> Result<CompiledModule, PluginError> {
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(hit) = self.shared.cache.lock().iter().find(|m| m.sha256 == sha256) {
            return Ok(hit.clone());
        }
        let module = Module::new(&self.shared.engine, bytes)
            .map_err(|e| PluginError::Compile { plugin: plugin.to_string(), source: e.into_boxed_dyn_error() })?;
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

/// Maps a wasmtime error of an engine set-up step to [`PluginError::Engine`].
fn engine_error(what: &'static str) -> impl FnOnce(wasmtime::Error) -> PluginError {
    move |e| PluginError::Engine { what, source: e.into_boxed_dyn_error() }
}
