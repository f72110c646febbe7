//! [`PluginEngine`]: the wasmtime engine (Cranelift, epoch interruption) every plugin shares, with its epoch
//! ticker, compile cache, linker, metric families, and the shared data and queues plugins see.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::Registry;
use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Module};

use crate::budget::EpochClock;
use crate::error::PluginError;
use crate::linker::{self, HostLinker};
use crate::metrics::EngineMetrics;
use crate::module::{detect_abi, CompiledModule};
use crate::shared::SharedState;

/// Compiled modules kept by content hash; old plugin versions fall out after this many distinct modules.
const MODULE_CACHE_CAPACITY: usize = 32;

/// State shared by every plugin created from one engine. Owns the epoch clock's thread: it stops when the last
/// plugin and the engine handle are gone.
pub(crate) struct EngineShared {
    pub engine: Engine,
    pub linker: HostLinker,
    pub registry: Registry,
    pub metrics: Arc<EngineMetrics>,
    pub shared: Arc<SharedState>,
    /// The clock the plugins' CPU deadlines are counted by (see [`crate::budget`]).
    pub clock: Arc<EpochClock>,
    cache: Mutex<VecDeque<CompiledModule>>,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for EngineShared {
    fn drop(&mut self) {
        self.clock.stop();
        if let Some(handle) = self.ticker.lock().take() {
            let _ = handle.join();
        }
    }
}

/// A loaded plugin's hold on the engine: keeps it alive, and the epoch clock running, while the plugin is.
/// Made before the plugin's first instance, so every guest call runs under a ticking deadline.
pub(crate) struct EngineUse(Arc<EngineShared>);

impl EngineUse {
    pub(crate) fn new(shared: &Arc<EngineShared>) -> Self {
        shared.clock.plugin_loaded();
        EngineUse(shared.clone())
    }
}

impl Drop for EngineUse {
    fn drop(&mut self) {
        self.0.clock.plugin_dropped();
    }
}

/// One wasmtime engine (Cranelift, epoch interruption) shared by all plugins, plus process-wide plugin state:
/// module compile cache, shared key/value data (scoped by vm_id), shared queues and the Prometheus registry.
///
/// Cloning is cheap (an `Arc`). A background thread advances the epoch while any plugin is loaded, so
/// per-callback CPU deadlines work (see [`crate::budget`]), and sleeps while none is; it stops when the engine
/// and every plugin loaded from it are dropped.
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
        let clock = Arc::new(EpochClock::default());
        let ticker = {
            let engine = engine.clone();
            let clock = clock.clone();
            std::thread::Builder::new()
                .name("portico-wasm-epoch".into())
                .spawn(move || clock.run(&engine))
                .map_err(|e| PluginError::Engine { what: "spawning the epoch thread", source: Box::new(e) })?
        };
        Ok(PluginEngine {
            shared: Arc::new(EngineShared {
                engine,
                linker,
                registry,
                metrics: Arc::new(metrics),
                shared: Arc::new(SharedState::default()),
                clock,
                cache: Mutex::new(VecDeque::new()),
                ticker: Mutex::new(Some(ticker)),
            }),
        })
    }

    /// Registry holding `portico_plugin_*` metrics (callbacks, failures, restarts, callback time, and the
    /// counters/gauges/histograms plugins define). Gather it from the admin `/metrics` endpoint.
    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// How many times the epoch has advanced: every few milliseconds while any plugin is loaded and its
    /// callbacks run (see [`crate::budget`]), never while none is loaded, about once a second while none runs.
    pub fn epoch_ticks(&self) -> u64 {
        self.shared.clock.ticks()
    }

    /// Whether the epoch clock sleeps (no callback armed for a while; see [`crate::budget`]).
    pub fn epoch_clock_asleep(&self) -> bool {
        self.shared.clock.is_asleep()
    }

    /// For tests: how long the sleeping epoch clock waits before it looks again by itself (1 s). Made long,
    /// a test can tell the clock being woken by a callback from its own look.
    #[doc(hidden)]
    pub fn set_epoch_clock_look(&self, look: Duration) {
        self.shared.clock.set_look(look);
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
