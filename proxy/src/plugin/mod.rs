//! WebAssembly filters at run time: which plugin version each name points at, loading new versions off the
//! data path, hot swaps (admin upload, file change, reload) and rollback. The per-request side is [`chain`].
//!
//! Every `[[plugin]]` gets a [`PluginSlot`]: an atomically swappable pointer to the running version plus the
//! version before it. A request takes the current version once, when its filter chain starts, so a swap never
//! changes the plugin under an in-flight request; the old version is dropped when its last request ends.

pub mod body;
pub mod chain;
mod header_list;
pub mod rollout;
pub mod services;
mod spares;

use crate::config::{ByName, FailMode, PluginConfig, PluginSource};
use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;
use portico_plugins::{FailPolicy, Plugin, PluginEngine, PluginError, PluginHandle, PluginSpec};
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

/// Why a plugin version could not be started. The running version, if any, keeps serving. Messages are
/// complete on their own and keep their cause as `source()` too (see `ServerError`).
#[derive(Debug, thiserror::Error)]
pub enum PluginLoadError {
    /// The `.wasm` file could not be read.
    #[error("plugin {plugin}: cannot read {path}: {error}")]
    Read {
        /// The plugin.
        plugin: String,
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        error: std::io::Error,
    },
    /// `builtin:NAME` names no bundled module.
    #[error("plugin {plugin}: no bundled module named {name:?} (bundled: {available})")]
    UnknownBuiltin {
        /// The plugin.
        plugin: String,
        /// The name asked for.
        name: String,
        /// What exists.
        available: String,
    },
    /// Compilation, the ABI check, start-up or `proxy_on_configure` failed. The host's error keeps its causes
    /// as sources; this message is complete on its own, so it also carries them on one line.
    #[error("{}", with_causes(.0))]
    Host(#[from] PluginError),
    /// The loader thread died.
    #[error("plugin {0}: the loader thread failed")]
    Loader(String),
    /// No such plugin is configured.
    #[error("no plugin named {0:?}")]
    NotFound(String),
    /// Rollback asked for with no previous version.
    #[error("plugin {0}: there is no previous version to roll back to")]
    NoPrevious(String),
    /// A rollout action on a plugin that has no rollout.
    #[error("plugin {0}: no rollout has been started (upload with PUT /plugins/{0}?rollout=PERCENT)")]
    NoRollout(String),
    /// A rollout action that needs a running rollout.
    #[error("plugin {plugin}: the rollout is {state}, not running")]
    RolloutEnded {
        /// The plugin.
        plugin: String,
        /// The state it is in.
        state: &'static str,
    },
}

/// An error followed by its causes (`source()` chain), `: `-separated: for a message that must be complete on
/// its own (logs, the admin API, configuration issues) built from an error that keeps its causes as sources,
/// as `portico_plugins::PluginError` does.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Where a running version came from, for `GET /plugins` and the logs.
#[derive(Debug, Clone)]
pub struct VersionInfo {
    /// `file:/path`, `builtin:NAME` or `upload`.
    pub origin: String,
    /// sha256 of the module bytes.
    pub sha256: String,
    /// When it started serving.
    pub since: SystemTime,
}

/// One configured plugin: the running version and the one before it.
#[derive(Debug)]
pub struct PluginSlot {
    /// The configuration this slot was built from.
    pub config: PluginConfig,
    current: ArcSwap<Plugin>,
    /// Each worker lane's handle on the current version (see [`PluginSlot::handle`]); emptied by a swap.
    handles: Box<[LaneHandle]>,
    info: Mutex<VersionInfo>,
    previous: Mutex<Option<(Arc<Plugin>, VersionInfo)>>,
    /// The modification time of the configured file when the watcher last looked (file sources only). It
    /// belongs to the file, not to the running version: an upload or a rollback changes the version but not
    /// the file, so neither touches it, and the watcher swaps the file's module in only once the file itself
    /// changes again.
    file_seen: Mutex<Option<SystemTime>>,
    /// The latest rollout of a candidate beside the current version, running or ended (see [`rollout`]).
    rollout: ArcSwapOption<rollout::Rollout>,
    /// Whether `rollout` holds one: a request start reads this flag instead of loading the (almost always
    /// empty) `ArcSwapOption`, whose load walks arc-swap's debt list.
    has_rollout: std::sync::atomic::AtomicBool,
}

/// Lanes (`crate::listen::workers::lane`) that get a handle of their own; more workers than this share
/// handles, modulo.
const HANDLE_LANES: usize = 64;

/// One lane's handle, alone on its cache lines: only its own worker locks it, except for a swap.
#[repr(align(128))]
#[derive(Debug, Default)]
struct LaneHandle(Mutex<Option<Arc<PluginHandle>>>);

fn lane_handles() -> Box<[LaneHandle]> {
    (0..HANDLE_LANES).map(|_| LaneHandle::default()).collect()
}

/// The calling worker's handle in `handles`, made from `plugin()` if the lane has none.
fn lane_handle(handles: &[LaneHandle], plugin: impl FnOnce() -> Arc<Plugin>) -> Arc<PluginHandle> {
    let mut lane = handles[crate::listen::workers::lane() % HANDLE_LANES].0.lock();
    lane.get_or_insert_with(|| plugin().handle()).clone()
}

impl PluginSlot {
    /// The version new requests use.
    pub fn current(&self) -> Arc<Plugin> {
        self.current.load_full()
    }

    /// The calling worker's handle on the current version, to open a request's stream through. A stream holds
    /// its plugin for as long as it lives; through the worker's own handle that costs a reference count only
    /// this worker touches, where `current()` would count on the plugin every worker shares (two atomic
    /// operations per request on a cache line bouncing between cores). A swap empties the handles, so the
    /// next request on each lane takes the new version.
    pub fn handle(&self) -> Arc<PluginHandle> {
        lane_handle(&self.handles, || self.current.load_full())
    }

    /// What `fail = "closed" | "open"` means for a request this plugin failed.
    pub fn fail_closed(&self) -> bool {
        self.config.fail == FailMode::Closed
    }

    /// The sha256 of the module the slot runs.
    pub fn sha256(&self) -> String {
        self.info.lock().sha256.clone()
    }

    /// A JSON description for the admin API.
    pub fn describe(&self) -> serde_json::Value {
        let current = self.current();
        let info = self.info.lock().clone();
        let previous = self.previous.lock().as_ref().map(|(_, i)| i.sha256.clone());
        serde_json::json!({
            "name": self.config.name,
            "origin": info.origin,
            "sha256": info.sha256,
            "abi": format!("{:?}", current.abi_version()),
            "since": unix_seconds(info.since),
            "fail": if self.fail_closed() { "closed" } else { "open" },
            "broken": current.is_broken(),
            "instances": current.instance_count(),
            "unknown_imports": current.unknown_imports(),
            "previous_sha256": previous,
            "rollout": self.rollout.load().as_ref().map(|r| r.state().name()),
        })
    }

    /// Swaps a new version in; a rollout running beside the old one ends (its candidate is dropped).
    fn swap(&self, plugin: Arc<Plugin>, info: VersionInfo) {
        self.end_rollout("another version was swapped in");
        self.swap_in(plugin, info);
    }

    fn swap_in(&self, plugin: Arc<Plugin>, info: VersionInfo) {
        plugin.set_standby(false);
        let old = self.current.swap(plugin.clone());
        // Kept for a rollback, not serving: its ticks wait.
        old.set_standby(true);
        for lane in &*self.handles {
            *lane.0.lock() = None;
        }
        let old_info = std::mem::replace(&mut *self.info.lock(), info.clone());
        *self.previous.lock() = Some((old, old_info));
        tracing::info!(plugin = %self.config.name, sha256 = %info.sha256, origin = %info.origin, "plugin version swapped in");
    }
}

/// Callback failures counted so far, by plugin and kind (`trap`, `timeout`, `memory`, …), as the engine counts
/// them in `portico_plugin_failures_total`: `GET /plugins` shows them beside each version.
pub fn failure_counts(registry: &prometheus::Registry) -> HashMap<String, serde_json::Map<String, serde_json::Value>> {
    let mut counts: HashMap<String, serde_json::Map<String, serde_json::Value>> = HashMap::new();
    let families = registry.gather();
    let Some(family) = families.iter().find(|f| f.name() == "portico_plugin_failures_total") else { return counts };
    for metric in family.get_metric() {
        let label = |name: &str| metric.get_label().iter().find(|l| l.name() == name).map(|l| l.value().to_string());
        if let (Some(plugin), Some(kind)) = (label("plugin"), label("kind")) {
            let count = metric.get_counter().get_value() as u64;
            counts.entry(plugin).or_default().insert(kind, count.into());
        }
    }
    counts
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// All plugin slots and the engine that runs them.
pub struct PluginSet {
    engine: Arc<PluginEngine>,
    services: Arc<services::ProxyServices>,
    /// The data-path workers' runtimes: each owns its instances of a plugin, so each runs their ticks.
    workers: Vec<tokio::runtime::Handle>,
    /// Serialises version changes so two uploads cannot interleave (rollout drivers take it to promote).
    changing: Arc<tokio::sync::Mutex<()>>,
    rollout_reporting: rollout::Reporting,
}

impl std::fmt::Debug for PluginSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSet").finish_non_exhaustive()
    }
}

impl PluginSet {
    /// One wasmtime engine whose plugin metrics land in Portico's registry. `workers` are the data-path
    /// workers' runtimes (empty when connections are served on the calling runtime).
    pub fn new(
        registry: prometheus::Registry,
        services: Arc<services::ProxyServices>,
        workers: Vec<tokio::runtime::Handle>,
    ) -> Result<Self, PluginError> {
        let rollout_reporting = rollout::Reporting::register(&registry)
            .map_err(|e| PluginError::Engine { what: "registering rollout metrics", source: Box::new(e) })?;
        Ok(PluginSet {
            engine: Arc::new(PluginEngine::with_registry(registry)?),
            services,
            workers,
            changing: Arc::new(tokio::sync::Mutex::new(())),
            rollout_reporting,
        })
    }

    /// Builds the slots a configuration needs, reusing running ones whose configuration and module bytes are
    /// unchanged. Compiles on blocking threads. Any failure refuses the whole set and changes nothing.
    pub async fn build(
        &self,
        configs: &[PluginConfig],
        previous: &ByName<Arc<PluginSlot>>,
    ) -> Result<ByName<Arc<PluginSlot>>, PluginLoadError> {
        let _guard = self.changing.lock().await;
        let mut out = ByName::default();
        for config in configs {
            let (bytes, origin, modified) = read_module(config).await?;
            let sha = sha256_hex(&bytes);
            if let Some(old) = previous.get(&config.name) {
                if old.config == *config && old.info.lock().sha256 == sha {
                    out.insert(config.name.clone(), old.clone());
                    continue;
                }
            }
            let plugin = self.load(config, bytes).await?;
            let info = VersionInfo { origin, sha256: sha, since: SystemTime::now() };
            let slot = Arc::new(PluginSlot {
                config: config.clone(),
                current: ArcSwap::new(plugin.clone()),
                handles: lane_handles(),
                info: Mutex::new(info),
                previous: Mutex::new(previous.get(&config.name).map(|old| (old.current(), old.info.lock().clone()))),
                file_seen: Mutex::new(modified),
                rollout: ArcSwapOption::empty(),
                has_rollout: std::sync::atomic::AtomicBool::new(false),
            });
            self.spawn_tickers(&plugin);
            tracing::info!(plugin = %config.name, "plugin loaded");
            out.insert(config.name.clone(), slot);
        }
        Ok(out)
    }

    /// Compiles and starts `bytes` as `config` would run them, then drops the result: a cluster member checks an
    /// upload this way before proposing it.
    pub async fn check(&self, config: &PluginConfig, bytes: Vec<u8>) -> Result<(), PluginLoadError> {
        self.load(config, bytes).await.map(drop)
    }

    /// Compiles and starts a new version of `slot` from `bytes` and swaps it in when it started cleanly.
    pub async fn upload(&self, slot: &PluginSlot, bytes: Vec<u8>) -> Result<(), PluginLoadError> {
        let _guard = self.changing.lock().await;
        let sha = sha256_hex(&bytes);
        let plugin = self.load(&slot.config, bytes).await?;
        self.spawn_tickers(&plugin);
        slot.swap(plugin, VersionInfo { origin: "upload".into(), sha256: sha, since: SystemTime::now() });
        Ok(())
    }

    /// Goes back to the version before the current one (which becomes the new "previous").
    pub async fn rollback(&self, slot: &PluginSlot) -> Result<(), PluginLoadError> {
        let _guard = self.changing.lock().await;
        let Some((plugin, info)) = slot.previous.lock().take() else {
            return Err(PluginLoadError::NoPrevious(slot.config.name.clone()));
        };
        // Its tickers are still there (they end only when the version is dropped), on standby: the swap
        // wakes them.
        slot.swap(plugin, VersionInfo { since: SystemTime::now(), ..info });
        Ok(())
    }

    /// Reloads file-sourced plugins whose file changed on disk (its modification time moved since the watcher
    /// last looked): the file's module replaces whatever runs, an upload included, unless it is that very
    /// module. A module that fails to start is logged and the running version keeps serving.
    pub async fn reload_changed_files(&self, slots: &ByName<Arc<PluginSlot>>) {
        for slot in slots.values() {
            let PluginSource::File(path) = &slot.config.source else { continue };
            let seen = *slot.file_seen.lock();
            let modified = tokio::fs::metadata(path).await.and_then(|m| m.modified()).ok();
            if modified.is_none() || modified == seen {
                continue;
            }
            let _guard = self.changing.lock().await;
            let outcome = async {
                let (bytes, origin, modified) = read_module(&slot.config).await?;
                *slot.file_seen.lock() = modified;
                let sha = sha256_hex(&bytes);
                if slot.info.lock().sha256 == sha {
                    return Ok(());
                }
                let plugin = self.load(&slot.config, bytes).await?;
                self.spawn_tickers(&plugin);
                slot.swap(plugin, VersionInfo { origin, sha256: sha, since: SystemTime::now() });
                Ok::<(), PluginLoadError>(())
            }
            .await;
            if let Err(e) = outcome {
                // Remember the bad file's time so it is not retried every poll; a new write retries.
                *slot.file_seen.lock() = modified;
                tracing::error!(plugin = %slot.config.name, error = %e, "changed plugin file refused; the running version keeps serving");
            }
        }
    }

    async fn load(&self, config: &PluginConfig, bytes: Vec<u8>) -> Result<Arc<Plugin>, PluginLoadError> {
        let mut spec = PluginSpec::new(config.name.clone(), bytes);
        spec.source = match &config.source {
            PluginSource::File(p) => p.display().to_string(),
            PluginSource::Builtin(n) => format!("builtin:{n}"),
            PluginSource::Replicated(m) => format!("cluster:{}", m.sha256),
        };
        spec.config = config.configuration.clone();
        spec.root_id = config.root_id.clone();
        spec.vm_config = config.vm_config.clone();
        spec.fail = match config.fail {
            FailMode::Closed => FailPolicy::Closed,
            FailMode::Open => FailPolicy::Open,
        };
        spec.memory_limit = config.memory_limit;
        spec.cpu_limit = config.cpu_limit;
        spec.pause_timeout = config.pause_timeout;
        spec.instances = config.instances;
        let engine = self.engine.clone();
        let services: Arc<dyn portico_plugins::HostServices> = self.services.clone();
        let name = config.name.clone();
        // Compilation is CPU-heavy: never on a tokio worker.
        tokio::task::spawn_blocking(move || Plugin::load(&engine, spec, services))
            .await
            .map_err(|_| PluginLoadError::Loader(name))?
            .map_err(PluginLoadError::Host)
    }
}

/// Loads every plugin of a configuration as `portico run` would (read, compile, check the ABI, instantiate,
/// start, `proxy_on_configure`), one instance each, then drops them: what `portico check` does, as `nginx -t`
/// loads its modules. Returns every plugin's refusal, not only the first; an `Err` means the engine itself
/// could not start.
pub async fn check_all(configs: &[PluginConfig]) -> Result<Vec<PluginLoadError>, PluginError> {
    let set = PluginSet::new(prometheus::Registry::new(), Arc::new(services::ProxyServices::default()), Vec::new())?;
    let mut refused = Vec::new();
    for config in configs {
        let one = PluginConfig { instances: 1, ..config.clone() };
        let outcome = async { set.check(&one, read_module(&one).await?.0).await }.await;
        if let Err(e) = outcome {
            refused.push(e);
        }
    }
    Ok(refused)
}

/// The module bytes of a plugin, where they came from, and the file's modification time.
async fn read_module(config: &PluginConfig) -> Result<(Vec<u8>, String, Option<SystemTime>), PluginLoadError> {
    match &config.source {
        PluginSource::File(path) => {
            let read =
                |error| PluginLoadError::Read { plugin: config.name.clone(), path: path.display().to_string(), error };
            let modified = tokio::fs::metadata(path).await.and_then(|m| m.modified()).ok();
            let bytes = tokio::fs::read(path).await.map_err(read)?;
            Ok((bytes, format!("file:{}", path.display()), modified))
        }
        PluginSource::Replicated(module) => Ok((module.wasm.to_vec(), format!("cluster:{}", module.sha256), None)),
        PluginSource::Builtin(name) => match portico_plugins::builtin(name) {
            Some(bytes) => Ok((bytes.to_vec(), format!("builtin:{name}"), None)),
            None => Err(PluginLoadError::UnknownBuiltin {
                plugin: config.name.clone(),
                name: name.clone(),
                available: portico_plugins::BUILTIN_NAMES.join(", "),
            }),
        },
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl PluginSet {
    /// Drives `proxy_on_tick` and the work other threads left for a plugin version's instances (queue
    /// notifications, callouts answered elsewhere) until the version is dropped: one task on every worker,
    /// for the instances it owns, and one on the calling runtime for the shared ones. Runs wasm on a tokio
    /// thread like any callback: bounded by the plugin's CPU limit. Spawned once per version, when it is
    /// loaded to serve; they end when it is dropped (a version kept for rollback keeps its tickers, on standby:
    /// see [`Plugin::set_standby`]).
    fn spawn_tickers(&self, plugin: &Arc<Plugin>) {
        for worker in &self.workers {
            worker.spawn(ticker(Arc::downgrade(plugin), plugin.work_signal()));
        }
        tokio::spawn(ticker(Arc::downgrade(plugin), plugin.work_signal()));
    }
}

/// One thread's ticker for one plugin version (see [`PluginSet::spawn_tickers`]): it sleeps until the next
/// tick an instance it can reach asked for, or until the version's signal says there is new work (mail for an
/// instance, a tick period set, the version dropped). A plugin that never ticks costs no wake-ups.
async fn ticker(weak: Weak<Plugin>, signal: portico_plugins::WorkSignal) {
    loop {
        // Enabled before the run, so that work arriving during it wakes the sleep that follows.
        let woken = signal.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let next = {
            let Some(plugin) = weak.upgrade() else { break };
            plugin.run_ticks();
            plugin.next_tick_deadline()
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = woken => {}
                }
            }
            None => woken.await,
        }
    }
    // The version is gone: drop the instances of it this thread owned.
    portico_plugins::forget_unloaded();
}
