//! Portico as a member of a cluster: the glue between [`portico_cluster`] (Raft) and the running proxy.
//!
//! The replicated configuration is the config file without its node-local tables (`[admin]` and `[cluster]`:
//! each node keeps its own). File-sourced plugins travel as module bytes, so every node runs the same modules
//! whatever its disk holds. Admin writes become cluster commands: validated here first (a bad file or module is
//! refused before anything is proposed), committed through the leader, and then applied by every node —
//! including this one — through the same hot-reload path as a local reload. Progressive rollouts are
//! replicated the same way ([`rollout`]).

pub mod rollout;

use crate::config::{self, Config, ConfigIssue, PluginSource};
use crate::server::{Server, ServerError};
use portico_cluster::{Applied, Cluster, ClusterError, ClusterState, Command, Module, Proposal};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// Node-local tables: never replicated, always this node's own.
const LOCAL_TABLES: [&str; 2] = ["admin", "cluster"];

/// This node's link to its cluster.
#[derive(Debug)]
pub struct ClusterLink {
    /// The Raft member.
    pub cluster: Arc<Cluster>,
    /// This node's `[admin]` and `[cluster]` tables, put back into every replicated configuration.
    local: toml::Table,
    /// The local config file (the bootstrap, and what `POST /config/reload` proposes).
    path: Option<PathBuf>,
    /// The validated `[cluster]` of this node.
    settings: config::ClusterConfig,
    /// Highest log index whose state this node's proxy has applied (or refused).
    applied: watch::Sender<u64>,
    /// The cluster configuration this node could not run, while it still runs an older one.
    refused: parking_lot::Mutex<Option<Refusal>>,
    /// Cluster gauges in `/metrics`, registered when the server starts.
    gauges: std::sync::OnceLock<ClusterGauges>,
}

/// A committed configuration this node refused (a port taken here, a certificate missing here): the rest of
/// the cluster runs it, this node keeps serving its previous one. Shown by `GET /cluster` and
/// `portico_cluster_config_refused`, because a node that silently runs an older configuration than its peers
/// is what an operator most needs to hear about.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refusal {
    /// The log index of the state that carried the configuration.
    pub index: u64,
    /// Why this node could not run it.
    pub reason: String,
}

/// `portico_cluster_*` gauges, refreshed at each scrape from the Raft metrics.
#[derive(Debug)]
struct ClusterGauges {
    leader: prometheus::IntGauge,
    term: prometheus::IntGauge,
    applied: prometheus::IntGauge,
    refused: prometheus::IntGauge,
    lag: prometheus::IntGaugeVec,
}

/// The configuration text with the node-local tables removed.
pub fn shared_text(text: &str) -> Result<String, Vec<ConfigIssue>> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| issue("file", e.message()))?;
    for key in LOCAL_TABLES {
        table.remove(key);
    }
    toml::to_string(&table).map_err(|e| issue("file", &e.to_string()))
}

fn issue(key: &str, message: &str) -> Vec<ConfigIssue> {
    vec![ConfigIssue { key: key.into(), line: None, message: message.trim().to_string() }]
}

/// Reads the module bytes of every file-sourced plugin, so they can be replicated with the configuration.
pub async fn modules_of(config: &Config) -> Result<BTreeMap<String, Module>, Vec<ConfigIssue>> {
    let mut modules = BTreeMap::new();
    for plugin in &config.plugins {
        match &plugin.source {
            PluginSource::File(path) => {
                let bytes = tokio::fs::read(path).await.map_err(|e| {
                    issue(&format!("plugin {}", plugin.name), &format!("cannot read {}: {e}", path.display()))
                })?;
                modules.insert(plugin.name.clone(), Module::new(bytes));
            }
            PluginSource::Replicated(module) => {
                modules.insert(plugin.name.clone(), module.as_ref().clone());
            }
            PluginSource::Builtin(_) => {}
        }
    }
    Ok(modules)
}

/// The proposal that replaces the shared configuration with `config` (whose file text is `text`), with the
/// modules of its file-sourced plugins.
pub async fn set_config_proposal(config: &Config, text: &str) -> Result<Proposal, Vec<ConfigIssue>> {
    let modules = modules_of(config).await?;
    let command = Command::SetConfig {
        config: shared_text(text)?,
        modules: modules.iter().map(|(name, m)| (name.clone(), m.sha256.clone())).collect(),
    };
    Ok(Proposal { command, modules: modules.into_values().collect() })
}

impl ClusterLink {
    /// Links a started cluster member to the local configuration it was started from.
    pub fn new(cluster: Arc<Cluster>, local_text: &str, local: &Config) -> Result<ClusterLink, Vec<ConfigIssue>> {
        let table: toml::Table = local_text.parse().map_err(|e: toml::de::Error| issue("file", e.message()))?;
        let local_tables = table.into_iter().filter(|(k, _)| LOCAL_TABLES.contains(&k.as_str())).collect();
        let settings = local.cluster.clone().ok_or_else(|| issue("cluster", "missing [cluster] table"))?;
        Ok(ClusterLink {
            cluster,
            local: local_tables,
            path: local.path.clone(),
            settings,
            applied: watch::channel(0).0,
            refused: parking_lot::Mutex::new(None),
            gauges: std::sync::OnceLock::new(),
        })
    }

    /// Registers the `portico_cluster_*` gauges in the server's registry.
    pub fn register(&self, registry: &prometheus::Registry) -> Result<(), prometheus::Error> {
        let gauge = |name: &str, help: &str| -> Result<prometheus::IntGauge, prometheus::Error> {
            let g = prometheus::IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let lag = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "portico_cluster_replication_lag_entries",
                "On the leader: log entries each member is behind.",
            ),
            &["node"],
        )?;
        registry.register(Box::new(lag.clone()))?;
        let gauges = ClusterGauges {
            leader: gauge(
                "portico_cluster_leader",
                "1 when this node is the leader and a quorum confirmed it recently.",
            )?,
            term: gauge("portico_cluster_term", "Current Raft term.")?,
            applied: gauge("portico_cluster_applied_index", "Last log index applied to this node's state.")?,
            refused: gauge(
                "portico_cluster_config_refused",
                "1 while this node could not run the cluster's configuration and serves an older one.",
            )?,
            lag,
        };
        let _ = self.gauges.set(gauges);
        Ok(())
    }

    /// Refreshes the cluster gauges before a scrape.
    pub fn export_gauges(&self) {
        let Some(g) = self.gauges.get() else { return };
        let status = self.cluster.status();
        g.leader.set(i64::from(status.leader_confirmed));
        g.term.set(i64::try_from(status.term).unwrap_or(i64::MAX));
        g.applied.set(status.applied_index.and_then(|i| i64::try_from(i).ok()).unwrap_or(0));
        g.refused.set(i64::from(self.refused.lock().is_some()));
        g.lag.reset();
        for member in &status.members {
            if let Some(lag) = member.lag {
                g.lag.with_label_values(&[&member.node_id.to_string()]).set(i64::try_from(lag).unwrap_or(i64::MAX));
            }
        }
    }

    /// The cluster configuration this node refused, while it runs an older one.
    pub fn refusal(&self) -> Option<Refusal> {
        self.refused.lock().clone()
    }

    fn record(&self, index: u64, outcome: Result<(), String>) {
        *self.refused.lock() = outcome.err().map(|reason| Refusal { index, reason });
    }

    /// Whether `POST /cluster/isolate` is allowed on this node.
    pub fn fault_injection(&self) -> bool {
        self.settings.fault_injection
    }

    /// The configuration this node should run for `state`, or `None` while the cluster has none yet.
    pub fn compose(&self, state: &ClusterState) -> Result<Option<Config>, Vec<ConfigIssue>> {
        let Some(shared) = &state.config else { return Ok(None) };
        self.compose_text(shared, state).map(Some)
    }

    fn compose_text(&self, shared: &str, state: &ClusterState) -> Result<Config, Vec<ConfigIssue>> {
        let mut table: toml::Table =
            shared.parse().map_err(|e: toml::de::Error| issue("cluster config", e.message()))?;
        for key in LOCAL_TABLES {
            table.remove(key);
        }
        table.extend(self.local.clone());
        let text = toml::to_string(&table).map_err(|e| issue("cluster config", &e.to_string()))?;
        let mut config = config::parse(&text)?;
        let base = self.path.as_ref().and_then(|p| p.parent().map(|d| d.to_path_buf())).unwrap_or_default();
        for plugin in &mut config.plugins {
            if let Some(versions) = state.plugins.get(&plugin.name) {
                plugin.source = PluginSource::Replicated(Arc::new(versions.current.clone()));
            } else if let PluginSource::File(file) = &mut plugin.source {
                if file.is_relative() {
                    *file = base.join(&*file);
                }
            }
        }
        config::rebase_listener_files(&mut config.listeners, &base);
        if let Some(ip) = self.settings.bind_address {
            for listener in &mut config.listeners {
                if listener.listen.ip().is_unspecified() {
                    listener.listen = SocketAddr::new(ip, listener.listen.port());
                }
            }
        }
        config.cluster = Some(self.settings.clone());
        config.path = self.path.clone();
        Ok(config)
    }

    /// Commits `command` and waits (briefly) until this node's proxy has applied the result, so the caller
    /// sees its own write.
    pub async fn write(&self, proposal: Proposal) -> Result<Applied, ClusterError> {
        let applied = self.cluster.propose(proposal).await?;
        let mut rx = self.applied.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|i| *i >= applied.index)).await;
        Ok(applied)
    }

    /// Validates configuration text as this node would run it, including starting its plugins, and proposes
    /// it. Nothing is proposed if anything fails.
    pub async fn propose_config(&self, server: &Server, text: &str) -> Result<Applied, ServerError> {
        let shared = shared_text(text).map_err(ServerError::Config)?;
        let mut config = self.compose_text(&shared, &ClusterState::default()).map_err(ServerError::Config)?;
        config.path = self.path.clone();
        server.check_plugins(&config).await?;
        let proposal = set_config_proposal(&config, text).await.map_err(ServerError::Config)?;
        self.write(proposal).await.map_err(ServerError::Cluster)
    }

    /// Proposes the local config file (`POST /config/reload` and SIGHUP on a cluster member).
    pub async fn propose_file(&self, server: &Server) -> Result<Applied, ServerError> {
        let path = self.path.clone().ok_or(ServerError::NoFile)?;
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| ServerError::Config(issue(&path.display().to_string(), &format!("cannot read: {e}"))))?;
        self.propose_config(server, &text).await
    }
}

/// What the applier remembers of the last state it put into the proxy.
#[derive(Default, PartialEq)]
struct AppliedShape {
    config: Option<String>,
    modules: BTreeMap<String, String>,
}

/// How often a node that refused the cluster's configuration tries it again: the cause is usually local and
/// fixed by hand (a port freed, a certificate put in place), and the node should then catch up by itself.
const RETRY_REFUSED: Duration = Duration::from_secs(5);

/// Follows the cluster state for the life of the server and applies each change through the hot-reload path.
/// A state this node cannot run (a certificate missing here, a port taken) is logged and recorded (see
/// [`Refusal`]), the running configuration keeps serving, and it is tried again every 5 s (`RETRY_REFUSED`) and on
/// the next change.
pub async fn follow(server: Weak<Server>, link: Arc<ClusterLink>) {
    let mut rx = link.cluster.subscribe();
    let mut last = AppliedShape::default();
    loop {
        let state = rx.borrow_and_update().clone();
        let Some(server) = server.upgrade() else { return };
        apply(&server, &link, &state, &mut last).await;
        link.applied.send_replace(state.applied_index);
        drop(server);
        let refused = link.refusal().is_some();
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(RETRY_REFUSED), if refused => last = AppliedShape::default(),
        }
    }
}

async fn apply(server: &Server, link: &Arc<ClusterLink>, state: &ClusterState, last: &mut AppliedShape) {
    rollout::settle(server, state).await;
    let shape = AppliedShape {
        config: state.config.clone(),
        modules: state.plugins.iter().map(|(k, v)| (k.clone(), v.current.sha256.clone())).collect(),
    };
    if shape != *last && shape.config.is_some() {
        let index = state.applied_index;
        match link.compose(state) {
            Ok(Some(config)) => match server.reload(config).await {
                Ok(()) => {
                    tracing::info!(index, "cluster configuration applied");
                    link.record(index, Ok(()));
                }
                Err(e) => {
                    tracing::error!(index, error = %e, "cluster configuration refused on this node; the running one keeps serving");
                    link.record(index, Err(e.to_string()));
                }
            },
            Ok(None) => {}
            Err(issues) => {
                tracing::error!(index, issues = ?issues, "cluster configuration does not validate on this node");
                let reason = issues.iter().map(|i| format!("{}: {}", i.key, i.message)).collect::<Vec<_>>().join("; ");
                link.record(index, Err(reason));
            }
        }
        *last = shape;
    }
    rollout::follow(server, link, state).await;
    apply_endpoint_overrides(server, state);
    apply_registrations(server, state);
}

/// How often the leader looks for registrations whose TTL ran out.
const COLLECT_EXPIRED: Duration = Duration::from_secs(1);

/// On the confirmed leader, removes from the replicated state the registrations whose TTL ran out (every node
/// already stopped using them; this keeps the state from growing with services that left without a `DELETE`).
/// Each removal names the renewal it saw expire, so a heartbeat that got in first wins.
pub async fn collect_expired(server: Weak<Server>, link: Arc<ClusterLink>) {
    let mut tick = tokio::time::interval(COLLECT_EXPIRED);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(server) = server.upgrade() else { return };
        if !link.cluster.status().leader_confirmed {
            continue;
        }
        for (upstream, address, serial) in server.shared.discovery.expired_replicated() {
            let change = portico_cluster::RegistrationChange::Expire { serial };
            let command = Command::Registration { upstream, address: address.to_string(), change };
            if let Err(e) = link.cluster.propose(Proposal::plain(command)).await {
                tracing::debug!(error = %e, "removing an expired registration failed; the next round tries again");
                break;
            }
        }
    }
}

/// Hands the replicated registrations to discovery, which rebuilds the groups whose registrations changed.
fn apply_registrations(server: &Server, state: &ClusterState) {
    let discovery = &server.shared.discovery;
    discovery.set_replicated();
    let empty = BTreeMap::new();
    for group in &server.shared.snapshot.load().config.upstreams {
        let registered = state.registrations.get(&group.name).unwrap_or(&empty);
        let list: Vec<_> = registered
            .iter()
            .filter_map(|(address, r)| {
                let address = address.parse().ok()?;
                Some((address, r.weight, r.ttl_ms.map(Duration::from_millis), r.serial))
            })
            .collect();
        discovery.replace_registrations(&group.name, &list);
    }
}

/// Applies the operators' drain and weight changes. Endpoints that appear later (discovery, registrations)
/// get theirs when their group is rebuilt (see [`crate::server::Shared::refresh_upstream`]).
pub fn apply_endpoint_overrides(server: &Server, state: &ClusterState) {
    let remembered = state
        .endpoints
        .iter()
        .filter_map(|(key, o)| {
            key.split_once('/').map(|(u, e)| ((u.to_string(), e.to_string()), (o.drained, o.weight)))
        })
        .collect();
    server.shared.discovery.set_overrides(remembered);
    let snapshot = server.shared.snapshot.load();
    for (key, o) in &state.endpoints {
        let Some((upstream, endpoint)) = key.split_once('/') else { continue };
        let Some(ep) = snapshot.upstreams.get(upstream).and_then(|u| u.endpoint(endpoint)) else { continue };
        ep.set_drained(o.drained);
        if let Some(w) = o.weight {
            ep.set_weight(w);
        }
    }
}

/// Starts the cluster member described by `config` (read from `text`), then the proxy on the cluster's last
/// known configuration (or the local file when the cluster has none yet), and keeps the two in step.
pub async fn start_member(
    config: Config,
    text: &str,
    grace: Duration,
    workers: usize,
) -> Result<Arc<Server>, ServerError> {
    let settings = config.cluster.clone().ok_or(ServerError::NoFile)?;
    let bootstrap = set_config_proposal(&config, text).await.map_err(ServerError::Config)?;
    let cluster = Cluster::start(settings.settings.clone(), Some(bootstrap)).await?;
    let link = Arc::new(ClusterLink::new(cluster.clone(), text, &config).map_err(ServerError::Config)?);
    let local = || {
        shared_text(text)
            .and_then(|shared| link.compose_text(&shared, &ClusterState::default()))
            .unwrap_or(config.clone())
    };
    let initial = match link.compose(&cluster.state()) {
        Ok(Some(replicated)) => {
            tracing::info!(
                index = cluster.state().applied_index,
                "starting from the cluster's last known configuration"
            );
            replicated
        }
        Ok(None) => local(),
        Err(issues) => {
            tracing::error!(issues = ?issues, "the cluster's configuration does not validate here; starting from the local file");
            local()
        }
    };
    let server = Server::start_with_workers(initial, grace, workers).await?;
    link.register(&server.shared.metrics.registry)?;
    server.attach_cluster(link);
    Ok(server)
}
