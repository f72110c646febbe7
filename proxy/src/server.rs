//! The running proxy: shared state every request reads (an `ArcSwap` snapshot), the set of listeners, health
//! checkers, reload and graceful shutdown. A reload builds everything new off to the side — parsing,
//! validation, TLS files, new sockets — and only swaps when all of it succeeded, so a bad file changes nothing.

use crate::body::RequestBody;
use crate::config::{self, ByName, Config, ConfigIssue};
use crate::discovery::Discovery;
use crate::listen::workers::{self, Workers};
use crate::listen::{self, ListenerHandle, ListenerRuntime};
use crate::metrics::Metrics;
use crate::plugin::services::ProxyServices;
use crate::plugin::{PluginLoadError, PluginSet, PluginSlot};
use crate::tls;
use crate::upstream::held::Handles;
use crate::upstream::Upstream;
use crate::watch::{Watch, WatchMetrics};

mod groups;
use arc_swap::ArcSwap;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why a start or reload was refused.
///
/// Each message is complete on its own (logs and the admin API print it alone), and its cause is also kept as
/// `source()`; a variant that only forwards another error is transparent. `portico run` prints the chain
/// leaving out causes the message already contains, so every cause appears once.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The file did not validate.
    #[error("invalid configuration:\n{}", .0.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n"))]
    Config(Vec<ConfigIssue>),
    /// A certificate or key could not be used.
    #[error("listener {listener}: {error}")]
    Tls {
        /// The listener.
        listener: String,
        /// The TLS problem.
        #[source]
        error: tls::TlsError,
    },
    /// A socket could not be bound.
    #[error("listener {listener}: cannot listen on {address}: {error}")]
    Bind {
        /// The listener.
        listener: String,
        /// The address.
        address: SocketAddr,
        /// The OS error.
        #[source]
        error: std::io::Error,
    },
    /// A listener's access log cannot be written.
    #[error("listener {listener}: {error}")]
    AccessLog {
        /// The listener.
        listener: String,
        /// Why.
        #[source]
        error: crate::access_log::AccessLogError,
    },
    /// An endpoint address could not be turned into a URI authority.
    #[error("upstream {0}: invalid endpoint address")]
    Endpoint(String),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A plugin could not be started; nothing was changed.
    #[error(transparent)]
    Plugin(#[from] PluginLoadError),
    /// The wasm engine could not be created.
    #[error("plugin engine: {}", crate::plugin::with_causes(.0))]
    Engine(#[from] portico_plugins::PluginError),
    /// The cluster refused or could not commit a change.
    #[error(transparent)]
    Cluster(#[from] portico_cluster::ClusterError),
    /// The data-path worker threads could not be started.
    #[error("starting worker threads: {0}")]
    Workers(#[source] std::io::Error),
    /// No config file to reload from.
    #[error("no configuration file to reload (started from an embedded configuration)")]
    NoFile,
}

/// Everything a request reads; replaced whole on reload.
#[derive(Debug)]
pub struct Snapshot {
    /// The configuration in force.
    pub config: Config,
    /// Upstream groups by name.
    pub upstreams: ByName<Arc<Upstream>>,
    /// WebAssembly plugins by name (each slot swaps versions on its own).
    pub plugins: ByName<Arc<PluginSlot>>,
    /// The same groups as `upstreams`, as requests hold them: one handle per worker lane.
    pub held: ByName<Handles>,
}

impl Snapshot {
    /// A snapshot of these groups and plugins, with a handle on each group for each of `lanes`.
    pub fn new(
        config: Config,
        upstreams: ByName<Arc<Upstream>>,
        plugins: ByName<Arc<PluginSlot>>,
        lanes: usize,
    ) -> Snapshot {
        let held = upstreams.iter().map(|(name, group)| (name.clone(), Handles::new(group, lanes))).collect();
        Snapshot { config, upstreams, plugins, held }
    }
}

/// State shared by all connections.
#[derive(Debug)]
pub struct Shared {
    /// The current snapshot.
    pub snapshot: ArcSwap<Snapshot>,
    /// Metrics.
    pub metrics: Metrics,
    /// Client for forward-proxy requests.
    pub forward_client: Client<HttpConnector, RequestBody>,
    /// Set once shutdown starts; `/readyz` turns 503.
    pub draining: AtomicBool,
    /// The wasm engine and plugin version management.
    pub plugins: PluginSet,
    /// Gauges for anomaly scores (registered once, whether or not detection is on).
    pub watch_metrics: WatchMetrics,
    /// The data-path worker threads client connections are served on; `None` serves them on the runtime
    /// that started the server.
    pub workers: Option<Workers>,
    /// Addresses Portico itself serves on (admin, listeners, as bound): forward listeners refuse them.
    pub own_addrs: parking_lot::RwLock<Vec<std::net::SocketAddr>>,
    /// The last minutes of traffic, for the dashboard (`GET /stats`).
    pub stats: crate::stats::StatsHistory,
    /// Trace export (`[telemetry]`).
    pub telemetry: crate::telemetry::Telemetry,
    /// Endpoints found by DNS and registered through the admin API.
    pub discovery: Arc<Discovery>,
    /// The access log writer every listener that logs shares.
    pub access_logs: crate::access_log::AccessLogs,
    /// Held by whoever replaces the snapshot (a reload, a membership change), so neither loses the other's work.
    snapshot_writer: tokio::sync::Mutex<()>,
}

impl Shared {
    /// Upstream pool lanes: one per worker, plus lane 0 for everything else.
    pub fn lanes(&self) -> usize {
        workers::lanes(self.workers.as_ref())
    }
}

/// The proxy with its listeners.
#[derive(Debug)]
pub struct Server {
    /// Shared request state.
    pub shared: Arc<Shared>,
    listeners: tokio::sync::Mutex<HashMap<SocketAddr, ListenerHandle>>,
    health: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Tasks that live as long as the server (plugin file watcher).
    background: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Anomaly detection, when configured.
    pub watch: tokio::sync::Mutex<Option<Watch>>,
    /// Why configured anomaly detection is not running, if it failed to start.
    pub watch_error: parking_lot::Mutex<Option<String>>,
    /// The cluster this node belongs to, when configured: admin writes go through it.
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::ClusterLink>>,
    /// Places for the admin API's open event streams (`/anomaly/events`), which outlive its idle timeout.
    pub event_streams: Arc<tokio::sync::Semaphore>,
    grace: Duration,
}

impl Server {
    /// Binds every listener and starts health checks, serving on one worker thread per core. Fails without
    /// side effects on any error.
    pub async fn start(config: Config, grace: Duration) -> Result<Arc<Server>, ServerError> {
        Self::start_with_workers(config, grace, workers::default_count()).await
    }

    /// [`Server::start`] with `workers` data-path threads (see [`crate::listen::workers`]); 0 serves client
    /// connections on the calling runtime instead.
    pub async fn start_with_workers(
        config: Config,
        grace: Duration,
        workers: usize,
    ) -> Result<Arc<Server>, ServerError> {
        let metrics = Metrics::new()?;
        let workers = match workers {
            0 => None,
            n => Some(Workers::start(n).map_err(ServerError::Workers)?),
        };
        let discovery = Arc::new(Discovery::new(&metrics.registry)?);
        discovery.prime(&config).await;
        let upstreams = groups::build_upstreams(&config, None, workers::lanes(workers.as_ref()), &discovery)?;
        let forward_client = {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            connector.set_connect_timeout(Some(Duration::from_secs(5)));
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector)
        };
        let watch_metrics = WatchMetrics::register(&metrics.registry)?;
        let telemetry = crate::telemetry::Telemetry::new(&metrics.registry)?;
        let access_logs = crate::access_log::AccessLogs::new(&metrics.registry)?;
        let services = Arc::new(ProxyServices::default());
        let worker_runtimes = workers.as_ref().map(|w| w.handles().to_vec()).unwrap_or_default();
        let plugins = PluginSet::new(metrics.registry.clone(), services.clone(), worker_runtimes)?;
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::new(config.clone(), ByName::default(), ByName::default(), 1)),
            metrics,
            forward_client,
            draining: AtomicBool::new(false),
            plugins,
            watch_metrics,
            workers,
            own_addrs: parking_lot::RwLock::new(Vec::new()),
            stats: crate::stats::StatsHistory::default(),
            telemetry,
            discovery,
            access_logs,
            snapshot_writer: tokio::sync::Mutex::new(()),
        });
        services.attach(Arc::downgrade(&shared));
        let plugin_slots = shared.plugins.build(&config.plugins, &ByName::default()).await?;
        let server = Arc::new(Server {
            shared,
            listeners: tokio::sync::Mutex::new(HashMap::new()),
            health: parking_lot::Mutex::new(Vec::new()),
            background: parking_lot::Mutex::new(Vec::new()),
            watch: tokio::sync::Mutex::new(None),
            watch_error: parking_lot::Mutex::new(None),
            cluster: std::sync::OnceLock::new(),
            event_streams: Arc::new(tokio::sync::Semaphore::new(crate::admin::MAX_EVENT_STREAMS)),
            grace,
        });
        let anomaly = config.anomaly.clone();
        let admin_url = format!("http://{}", config.admin.listen);
        server.apply(config, upstreams, plugin_slots).await?;
        server.watch_plugin_files();
        server.sweep_idle_connections();
        server.record_stats();
        server.follow_membership_changes();
        server.rewatch(anomaly, admin_url).await;
        Ok(server)
    }

    /// Makes this server follow a cluster: from now on admin writes are proposed to it, and every committed
    /// state is applied here through [`Server::reload`].
    pub fn attach_cluster(self: &Arc<Self>, link: Arc<crate::cluster::ClusterLink>) {
        if self.cluster.set(link.clone()).is_ok() {
            let task = tokio::spawn(crate::cluster::follow(Arc::downgrade(self), link.clone()));
            self.background.lock().push(task);
            let task = tokio::spawn(crate::cluster::collect_expired(Arc::downgrade(self), link));
            self.background.lock().push(task);
        }
    }

    /// Starts the plugins a configuration names, off to the side, and drops them: the check a cluster member
    /// makes before proposing, so a module that fails to start is refused before any node sees it.
    pub async fn check_plugins(&self, config: &Config) -> Result<(), ServerError> {
        let current = self.shared.snapshot.load().plugins.clone();
        self.shared.plugins.build(&config.plugins, &current).await.map(drop).map_err(ServerError::from)
    }

    /// Re-reads the file the server was started from. On a cluster member the file is validated and proposed to
    /// the cluster instead; it is applied here once committed, like on every other node.
    pub async fn reload_from_file(&self) -> Result<(), ServerError> {
        // Asked for a reload, the access logs are reopened whatever becomes of the configuration: logrotate's
        // `postrotate` reloads to have them reopened, and an unchanged or refused file must not leave the lines
        // going to the rotated one.
        self.shared.access_logs.reopen();
        if let Some(link) = self.cluster.get() {
            return link.propose_file(self).await.map(drop).map_err(|e| self.refused(e));
        }
        let path = self.shared.snapshot.load().config.path.clone().ok_or(ServerError::NoFile)?;
        let loaded = tokio::task::spawn_blocking(move || config::load(&path)).await;
        let config = match loaded {
            Ok(Ok(config)) => config,
            Ok(Err(issues)) => return Err(self.refused(ServerError::Config(issues))),
            Err(join) => {
                return Err(self.refused(ServerError::Config(vec![ConfigIssue {
                    key: "reload".into(),
                    line: None,
                    message: join.to_string(),
                }])))
            }
        };
        self.reload(config).await
    }

    /// Swaps in a new validated configuration; the running one keeps serving if anything fails.
    pub async fn reload(&self, config: Config) -> Result<(), ServerError> {
        let _writer = self.shared.snapshot_writer.lock().await;
        self.shared.discovery.prime(&config).await;
        let previous = self.shared.snapshot.load_full();
        let built =
            groups::build_upstreams(&config, Some(&previous.upstreams), self.shared.lanes(), &self.shared.discovery);
        let upstreams = match built {
            Ok(u) => u,
            Err(e) => return Err(self.refused(e)),
        };
        let plugins = match self.shared.plugins.build(&config.plugins, &previous.plugins).await {
            Ok(p) => p,
            Err(e) => return Err(self.refused(e.into())),
        };
        let anomaly = config.anomaly.clone();
        let admin_url = format!("http://{}", config.admin.listen);
        match self.apply(config, upstreams, plugins).await {
            Ok(()) => {
                self.rewatch(anomaly, admin_url).await;
                self.shared.metrics.reloads.with_label_values(&["ok"]).inc();
                tracing::info!("configuration reloaded");
                Ok(())
            }
            Err(e) => Err(self.refused(e)),
        }
    }

    /// Restarts anomaly detection when its configuration changed (a restart forgets what it learned, so an
    /// unchanged table keeps the running detector). A detector that fails to start is logged: the new
    /// configuration is already serving traffic.
    async fn rewatch(&self, anomaly: Option<portico_anomaly::AnomalyConfig>, admin_url: String) {
        let mut watch = self.watch.lock().await;
        if watch.as_ref().map(|w| &w.config) == anomaly.as_ref() {
            if let Some(running) = watch.as_ref() {
                running.detector.set_topology(crate::watch::topology(&self.shared.snapshot.load().config));
            }
            return;
        }
        if let Some(old) = watch.take() {
            old.stop().await;
        }
        *self.watch_error.lock() = None;
        if let Some(config) = anomaly {
            match Watch::start(&self.shared, config, admin_url).await {
                Ok(started) => *watch = Some(started),
                Err(e) => {
                    // Detection is a helper, not the job: a bad model never stops the proxy.
                    tracing::error!(error = %e, "anomaly detection is off; Portico keeps proxying");
                    *self.watch_error.lock() = Some(e.to_string());
                }
            }
        }
    }

    fn refused(&self, e: ServerError) -> ServerError {
        self.shared.metrics.reloads.with_label_values(&["refused"]).inc();
        tracing::error!(error = %e, "configuration refused; the running one keeps serving");
        e
    }

    async fn apply(
        &self,
        config: Config,
        upstreams: ByName<Arc<Upstream>>,
        plugins: ByName<Arc<PluginSlot>>,
    ) -> Result<(), ServerError> {
        let mut listeners = self.listeners.lock().await;
        // 1. Everything that can fail, with nothing changed yet.
        let mut runtimes = Vec::new();
        for l in &config.listeners {
            let acceptor = match &l.tls {
                Some(t) => {
                    Some(tls::acceptor(t).map_err(|error| ServerError::Tls { listener: l.name.clone(), error })?)
                }
                None => None,
            };
            let access_log = match &l.access_log {
                Some(log) => Some(
                    self.shared
                        .access_logs
                        .open(l, log)
                        .map_err(|error| ServerError::AccessLog { listener: l.name.clone(), error })?,
                ),
                None => None,
            };
            runtimes.push(ListenerRuntime { config: l.clone(), tls: acceptor, access_log });
        }
        let mut fresh = Vec::new();
        for runtime in &runtimes {
            let addr = runtime.config.listen;
            if existing(&listeners, &runtime.config).is_some() {
                continue;
            }
            match listen::bind(addr) {
                Ok(socket) => fresh.push((addr, socket)),
                Err(error) => {
                    return Err(ServerError::Bind { listener: runtime.config.name.clone(), address: addr, error })
                }
            }
        }
        // 2. Commit: new snapshot, listener slots, new sockets, removed listeners drained, health checkers,
        // discovery.
        let previous = self.shared.snapshot.load_full();
        // The access logs the configuration names are opened again (logrotate), the others closed.
        self.shared
            .access_logs
            .configured(config.listeners.iter().filter_map(|l| l.access_log.as_ref().map(|log| log.path.clone())));
        self.shared.discovery.start(&config).await;
        self.shared.telemetry.configure(config.telemetry.as_ref(), self.shared.forward_client.clone());
        let lanes = self.shared.lanes();
        self.shared.snapshot.store(Arc::new(Snapshot::new(config, upstreams.clone(), plugins, lanes)));
        // A plugin slot rebuilt (its configuration changed) or removed leaves its rollout behind: end it, so its
        // state says so and its candidate is dropped.
        let current = self.shared.snapshot.load();
        for (name, old) in &previous.plugins {
            if !current.plugins.get(name).is_some_and(|new| Arc::ptr_eq(new, old)) {
                old.end_rollout("the configuration was reloaded");
                // The version it served is kept for a rollback by the new slot (or dropped with a removed one).
                old.current().set_standby(true);
            }
        }
        drop(current);
        for (name, upstream) in &upstreams {
            upstream.commit();
            if let Some(old) = previous.upstreams.get(name) {
                self.shared.forget_endpoint_gauges(name, &upstream.departed_from(old));
            }
        }
        let mut keep = std::collections::HashSet::new();
        for runtime in runtimes {
            let addr = runtime.config.listen;
            if let Some(bound) = existing(&listeners, &runtime.config) {
                if let Some(handle) = listeners.get(&bound) {
                    handle.slot.store(Arc::new(runtime));
                }
                keep.insert(bound);
            } else if let Some(pos) = fresh.iter().position(|(a, _)| *a == addr) {
                let (_, socket) = fresh.swap_remove(pos);
                let handle = listen::spawn(self.shared.clone(), socket, runtime, self.grace)
                    .map_err(|error| ServerError::Bind { listener: String::new(), address: addr, error })?;
                tracing::info!(address = %handle.bound, "listening");
                keep.insert(handle.bound);
                self.shared.own_addrs.write().push(handle.bound);
                listeners.insert(handle.bound, handle);
            }
        }
        let removed: Vec<SocketAddr> = listeners.keys().filter(|a| !keep.contains(*a)).copied().collect();
        for addr in removed {
            if let Some(handle) = listeners.remove(&addr) {
                tracing::info!(address = %addr, "listener removed; draining");
                let grace = self.grace;
                tokio::spawn(handle.stop(grace));
            }
        }
        let mut health = self.health.lock();
        for task in health.drain(..) {
            task.abort();
        }
        health.extend(groups::spawn_health_checks(&self.shared, &upstreams));
        Ok(())
    }

    /// Rebuilds the groups discovery names (a DNS answer changed, a registration came or went, a newcomer
    /// passed its first probe), and ends expired registrations every second.
    fn follow_membership_changes(&self) {
        if let Some(mut changes) = self.shared.discovery.take_changes() {
            let shared = Arc::downgrade(&self.shared);
            let task = tokio::spawn(async move {
                while let Some(first) = changes.recv().await {
                    // Several changes at once (every entry of a group resolving after a reload) rebuild once.
                    let mut names = std::collections::BTreeSet::from([first]);
                    while let Ok(more) = changes.try_recv() {
                        names.insert(more);
                    }
                    let Some(shared) = shared.upgrade() else { return };
                    for name in names {
                        shared.refresh_upstream(&name).await;
                    }
                }
            });
            self.background.lock().push(task);
        }
        self.every(Duration::from_secs(1), |shared| async move { shared.discovery.sweep() });
    }

    /// Closes idle upstream connections past their pool's `idle_timeout`, every second, so they go away even
    /// when no request comes to find them stale.
    fn sweep_idle_connections(&self) {
        self.every(Duration::from_secs(1), |shared| async move {
            for upstream in shared.snapshot.load().upstreams.values() {
                upstream.sweep_idle_connections();
            }
        });
    }

    /// Takes a point of the dashboard's traffic history every [`crate::stats::PERIOD`], on a blocking thread.
    fn record_stats(&self) {
        self.every(crate::stats::PERIOD, |shared| async move {
            let _ = tokio::task::spawn_blocking(move || {
                let upstreams = shared.snapshot.load().upstreams.clone();
                shared.stats.sample(&shared.metrics, &upstreams);
            })
            .await;
        });
    }

    /// Polls file-sourced plugins for changes (every 2 s) and hot-swaps a changed module that starts cleanly.
    fn watch_plugin_files(&self) {
        self.every(Duration::from_secs(2), |shared| async move {
            let slots = shared.snapshot.load().plugins.clone();
            shared.plugins.reload_changed_files(&slots).await;
        });
    }

    /// Runs `job` every `period` on the control runtime (a late tick is delayed, not bunched up) until the
    /// server is dropped.
    fn every<F, Fut>(&self, period: Duration, job: F)
    where
        F: Fn(Arc<Shared>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let shared = Arc::downgrade(&self.shared);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = shared.upgrade() else { return };
                job(shared).await;
            }
        });
        self.background.lock().push(task);
    }

    /// Addresses actually bound, by listener name (useful with port 0).
    pub async fn bound_addresses(&self) -> HashMap<String, SocketAddr> {
        self.listeners.lock().await.values().map(|h| (h.slot.load().config.name.clone(), h.bound)).collect()
    }

    /// Stops accepting, lets in-flight requests finish (up to the grace period), then returns.
    pub async fn shutdown(&self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        let handles: Vec<ListenerHandle> = self.listeners.lock().await.drain().map(|(_, h)| h).collect();
        for h in &handles {
            h.signal_stop();
        }
        futures_util::future::join_all(handles.into_iter().map(|h| h.stop(self.grace))).await;
        for task in self.health.lock().drain(..).chain(self.background.lock().drain(..)) {
            task.abort();
        }
        self.shared.discovery.stop();
        if let Some(watch) = self.watch.lock().await.take() {
            watch.stop().await;
        }
        if let Some(link) = self.cluster.get() {
            link.cluster.shutdown().await;
        }
        // The last requests' lines are written before the process ends.
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.access_logs.close()).await;
    }
}

/// The running listener a config entry maps onto: same address, or for port 0 the same name and address.
fn existing(
    listeners: &HashMap<SocketAddr, ListenerHandle>,
    config: &crate::config::ListenerConfig,
) -> Option<SocketAddr> {
    listeners
        .values()
        .find(|h| {
            let current = h.slot.load();
            current.config.listen == config.listen && (config.listen.port() != 0 || current.config.name == config.name)
        })
        .map(|h| h.bound)
}
