//! Configuration: the file as written ([`file`](mod@file)), then validated once into the typed [`Config`] the rest of
//! Portico reads. Nothing downstream re-parses strings.

pub mod allow;
pub mod duration;
pub mod endpoints;
pub mod file;
pub mod keys;
pub mod paths;
pub mod rollout;
pub mod telemetry;

use file::{FileConfig, ListenerMode, PluginFile};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// HTTP/2's largest flow-control window (RFC 9113, section 6.9.1).
pub const H2_MAX_WINDOW: u64 = (1 << 31) - 1;

pub use endpoints::{DiscoveredEntry, DnsConfig, DnsName};

/// A map keyed by a configured name (upstream groups, plugins), looked up on every request: hashed with
/// foldhash rather than SipHash (~160 instructions a short name). The names come from the configuration, not
/// from clients, so a hasher that resists chosen keys buys nothing here.
pub type ByName<V> = std::collections::HashMap<String, V, foldhash::fast::RandomState>;
pub use file::{FailMode, HealthCheckFile, OutlierFile, PoolFile, RetryBudgetFile, TlsFile, UpstreamProtocol};

/// A configuration problem with the place it was found, so an operator can fix it without guessing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The key, e.g. `listener[0].upstream`.
    pub key: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the file was read from, for reloads.
    pub path: Option<PathBuf>,
    /// Admin API settings.
    pub admin: AdminConfig,
    /// Listeners, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// Upstream groups, in file order.
    pub upstreams: Vec<UpstreamConfig>,
    /// WebAssembly plugins.
    pub plugins: Vec<PluginConfig>,
    /// Anomaly detection, when the file has an `[anomaly]` table with `enabled = true` (the default).
    pub anomaly: Option<portico_anomaly::AnomalyConfig>,
    /// The file as parsed, served (redacted) by `GET /config`.
    pub source: FileConfig,
    /// Cluster membership, when the file has a `[cluster]` table.
    pub cluster: Option<ClusterConfig>,
    /// Trace export, when the file has a `[telemetry]` table.
    pub telemetry: Option<telemetry::TelemetryConfig>,
    /// The DNS servers endpoint discovery asks.
    pub dns: DnsConfig,
}

/// Validated `[cluster]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// What the cluster crate needs.
    pub settings: portico_cluster::ClusterSettings,
    /// Replaces unspecified listener addresses on this node.
    pub bind_address: Option<std::net::IpAddr>,
    /// Whether `POST /cluster/isolate` is enabled.
    pub fault_injection: bool,
}

/// Validated `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// TCP address.
    pub listen: SocketAddr,
    /// Bearer token for mutating calls.
    pub token: Option<String>,
    /// Optional Unix socket path.
    pub unix_socket: Option<PathBuf>,
}

/// Validated `[[listener]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Unique name.
    pub name: String,
    /// Bound address.
    pub listen: SocketAddr,
    /// Default upstream group; always set in reverse mode.
    pub upstream: Option<String>,
    /// Reverse or forward proxy.
    pub mode: ListenerMode,
    /// Ports CONNECT may reach.
    pub connect_ports: Vec<u16>,
    /// Destinations a forward listener may reach although refused by default.
    pub allow: Vec<allow::AllowEntry>,
    /// TLS files, if terminating TLS.
    pub tls: Option<TlsFile>,
    /// Connection cap.
    pub max_connections: usize,
    /// Request-head deadline.
    pub header_read_timeout: Duration,
    /// Closes a connection with no request in flight for this long.
    pub idle_timeout: Duration,
    /// How long a response body may wait for the client to take more of it.
    pub send_timeout: Duration,
    /// Request-head size cap.
    pub max_header_bytes: usize,
    /// Request-body size cap (`None`: unlimited).
    pub max_request_body: Option<u64>,
    /// Where answered requests are logged, and how.
    pub access_log: Option<AccessLogConfig>,
    /// Plugin names in request order.
    pub filters: Vec<String>,
    /// How request paths are resolved before plugins and the upstream see them (reverse listeners).
    pub paths: paths::PathRules,
    /// What becomes of request header fields whose name holds `_` (reverse listeners).
    pub underscores: paths::UnderscoreHeaders,
}

/// A listener's access log (see [`crate::access_log`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// The file lines are appended to (relative to the config file).
    pub path: PathBuf,
    /// How each line is written.
    pub format: AccessLogFormat,
}

/// The form of an access log's lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// One JSON object a line with every field.
    #[default]
    Json,
    /// nginx's and Apache's `combined` format.
    Combined,
}

/// Where a plugin's module comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// A `.wasm` file on disk (watched for changes).
    File(PathBuf),
    /// A module bundled in the binary, by name.
    Builtin(String),
    /// A module replicated by the cluster (the same bytes on every node, whatever each node's disk holds).
    Replicated(std::sync::Arc<portico_cluster::Module>),
}

/// Validated `[[plugin]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// Unique name.
    pub name: String,
    /// The module.
    pub source: PluginSource,
    /// Configuration bytes handed to `proxy_on_configure` (a TOML table becomes JSON).
    pub configuration: String,
    /// Root context id.
    pub root_id: String,
    /// VM configuration handed to `proxy_on_vm_start`.
    pub vm_config: String,
    /// What a request meets when the plugin is broken.
    pub fail: FailMode,
    /// Linear memory cap per instance, bytes.
    pub memory_limit: usize,
    /// CPU deadline per callback.
    pub cpu_limit: Duration,
    /// How long a stream paused in its headers waits to be resumed.
    pub pause_timeout: Duration,
    /// Instances in the pool (0 = one per CPU).
    pub instances: usize,
    /// How an upload with `?rollout=PERCENT` proceeds (the defaults when the table is absent).
    pub rollout: rollout::RolloutConfig,
}

impl PartialEq for TlsFile {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert
            && self.key == other.key
            && self.sni.len() == other.sni.len()
            && self.sni.iter().zip(&other.sni).all(|(a, b)| a.cert == b.cert && a.key == b.key)
    }
}

/// Validated `[[upstream]]`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Unique name.
    pub name: String,
    /// Endpoints with fixed addresses (literal, or resolved once at load), with weights.
    pub endpoints: Vec<EndpointConfig>,
    /// Names followed at run time by [`crate::discovery`].
    pub discovered: Vec<DiscoveredEntry>,
    /// Wire protocol to the endpoints.
    pub protocol: UpstreamProtocol,
    /// TCP connect deadline.
    pub connect_timeout: Duration,
    /// Response-head deadline per attempt.
    pub request_timeout: Duration,
    /// Extra attempts allowed.
    pub retries: u32,
    /// Retry budget.
    pub retry_budget: RetryBudgetFile,
    /// Pool limits.
    pub pool: PoolFile,
    /// Active health check.
    pub health_check: Option<HealthCheckFile>,
    /// Passive outlier detection.
    pub outlier_detection: Option<OutlierFile>,
}

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// The address as written (shown in the admin API and metrics).
    pub name: String,
    /// Resolved socket address.
    pub address: SocketAddr,
    /// Relative share of traffic.
    pub weight: u32,
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigIssue>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigIssue { key: path.display().to_string(), line: None, message: format!("cannot read: {e}") }]
    })?;
    let mut config = parse(&text)?;
    // Plugin paths are relative to the file that names them, like nginx's `include`.
    let base = path.parent().unwrap_or(Path::new("."));
    for plugin in &mut config.plugins {
        if let PluginSource::File(file) = &mut plugin.source {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
    }
    rebase_listener_files(&mut config.listeners, base);
    if let Some(cluster) = &mut config.cluster {
        if cluster.settings.data_dir.is_relative() {
            cluster.settings.data_dir = base.join(&cluster.settings.data_dir);
        }
    }
    config.path = Some(path.to_path_buf());
    Ok(config)
}

/// Makes the files listeners name (access logs) relative to `base`, the directory of the file that names them,
/// as plugin paths are. A cluster member composing its configuration from the cluster's text does the same.
pub fn rebase_listener_files(listeners: &mut [ListenerConfig], base: &Path) {
    for listener in listeners {
        if let Some(log) = &mut listener.access_log {
            if log.path.is_relative() {
                log.path = base.join(&log.path);
            }
        }
    }
}

/// Parses and validates config text. All problems are returned together, each with its key and line: a value
/// serde refuses is blanked out (see [`keys`]) and the rest read again, then everything that parsed is validated.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigIssue>> {
    let index = keys::KeyIndex::parse(text).unwrap_or_default();
    let mut issues = Vec::new();
    let mut blanked: Vec<String> = Vec::new();
    let mut readable = text.to_string();
    let source = loop {
        let error = match toml::from_str::<FileConfig>(&readable) {
            Ok(source) => break Some(source),
            Err(error) => error,
        };
        let offset = error.span().map(|span| span.start);
        let message = error.message().trim().to_string();
        // A required key blanked for an earlier problem is missing now: that is the same problem.
        if blanked.iter().any(|key| message.contains(&format!("missing field `{}`", last_segment(key)))) {
            break None;
        }
        let key = offset.and_then(|o| index.name_at(o)).unwrap_or_else(|| "file".into());
        issues.push(ConfigIssue { key, line: offset.map(|o| line_of(text, o)), message });
        match offset.and_then(|o| index.key_at(o)) {
            Some(entry) if !blanked.contains(&entry.path) => {
                blanked.push(entry.path.clone());
                keys::blank(&mut readable, entry);
            }
            _ => break None,
        }
    };
    let validated = source.map(|source| Validator { text, index: &index, issues: Vec::new() }.validate(source));
    match validated {
        Some(Ok(config)) if issues.is_empty() => Ok(config),
        Some(Ok(_)) | None => Err(issues),
        Some(Err(more)) => {
            // What validation says of a key that was blanked (a default stood in for it) is not news.
            issues.extend(more.into_iter().filter(|i| !blanked.contains(&i.key)));
            issues.sort_by_key(|i| i.line.unwrap_or(usize::MAX));
            Err(issues)
        }
    }
}

fn last_segment(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |prefix| prefix.matches('\n').count()) + 1
}

struct Validator<'a> {
    text: &'a str,
    index: &'a keys::KeyIndex,
    issues: Vec<ConfigIssue>,
}

impl Validator<'_> {
    /// Records a problem; its line is where the key is written, else the spanned value's (for a key that is
    /// missing, the nearest thing that is there).
    fn issue<T>(&mut self, key: impl Into<String>, spanned: Option<&Spanned<T>>, message: impl Into<String>) {
        let key = key.into();
        let spanned = spanned.filter(|s| s.span().end > 0).map(|s| s.span().start);
        let offset = self.index.offset_of(&key).or(spanned);
        let line = offset.map(|o| line_of(self.text, o));
        self.issues.push(ConfigIssue { key, line, message: message.into() });
    }

    /// A listener's path rules and `underscores_in_headers`; set on a forward listener they are refused, as a
    /// forward proxy passes requests on as its clients wrote them.
    fn request_rules(&mut self, key: &str, l: &file::ListenerFile) -> (paths::PathRules, paths::UnderscoreHeaders) {
        let rules = paths::PathRules::default();
        if l.mode == ListenerMode::Forward {
            let set = [
                ("normalize_path", l.normalize_path.is_some()),
                ("merge_slashes", l.merge_slashes.is_some()),
                ("escaped_slashes", l.escaped_slashes.is_some()),
                ("underscores_in_headers", l.underscores_in_headers.is_some()),
            ];
            for (name, _) in set.into_iter().filter(|(_, set)| *set) {
                self.issue::<()>(
                    format!("{key}.{name}"),
                    None,
                    "path and header rules are for reverse-proxy listeners: a forward proxy passes requests on as sent",
                );
            }
            return (rules, paths::UnderscoreHeaders::default());
        }
        let paths = paths::PathRules {
            normalize: l.normalize_path.as_ref().map_or(rules.normalize, |v| *v.get_ref()),
            merge_slashes: l.merge_slashes.as_ref().map_or(rules.merge_slashes, |v| *v.get_ref()),
            escaped_slashes: l.escaped_slashes.as_ref().map_or(rules.escaped_slashes, |v| *v.get_ref()),
        };
        (paths, l.underscores_in_headers.as_ref().map(|u| *u.get_ref()).unwrap_or_default())
    }

    /// The access log's settings; a format without a file is a mistake worth saying.
    fn access_log(&mut self, key: &str, l: &file::ListenerFile) -> Option<AccessLogConfig> {
        let format = l.access_log_format.as_ref().map(|f| *f.get_ref());
        match &l.access_log {
            Some(path) if path.as_os_str().is_empty() => {
                self.issue::<()>(format!("{key}.access_log"), None, "an empty path: name a file, or leave the key out");
                None
            }
            Some(path) => Some(AccessLogConfig { path: path.clone(), format: format.unwrap_or_default() }),
            None => {
                if let Some(f) = &l.access_log_format {
                    self.issue(
                        format!("{key}.access_log_format"),
                        Some(f),
                        "set without access_log, which names the file",
                    );
                }
                None
            }
        }
    }

    /// TLS files must be readable: found here, the problem has its key and line (the PEM contents are checked
    /// when the listener is built).
    fn tls_files(&mut self, key: &str, tls: &TlsFile) {
        let mut files = vec![(format!("{key}.tls.cert"), &tls.cert), (format!("{key}.tls.key"), &tls.key)];
        for (j, pair) in tls.sni.iter().enumerate() {
            files.push((format!("{key}.tls.sni[{j}].cert"), &pair.cert));
            files.push((format!("{key}.tls.sni[{j}].key"), &pair.key));
        }
        // A fuzzed file must not make the parser open arbitrary paths (a FIFO would block it).
        if cfg!(fuzzing) {
            return;
        }
        for (file_key, path) in files {
            if let Err(e) = std::fs::File::open(path) {
                self.issue::<()>(file_key, None, format!("cannot read {}: {e}", path.display()));
            }
        }
    }

    fn address(&mut self, key: &str, value: &Spanned<String>) -> Option<SocketAddr> {
        match resolve(value.get_ref()) {
            Ok(addr) => Some(addr),
            Err(message) => {
                self.issue(key, Some(value), message);
                None
            }
        }
    }

    fn validate(mut self, source: FileConfig) -> Result<Config, Vec<ConfigIssue>> {
        let admin = self.admin(&source);
        let upstreams = self.upstreams(&source);
        let upstream_names: HashSet<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
        let plugins = self.plugins(&source.plugins, &upstream_names);
        let plugin_names: HashSet<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
        let listeners = self.listeners(&source, &upstream_names, &plugin_names);
        let anomaly = source.anomaly.clone().filter(|a| a.enabled);
        let cluster = source.cluster.as_ref().and_then(|c| self.cluster(c));
        let dns = match source.dns.as_ref().map(endpoints::check_dns).transpose() {
            Ok(dns) => dns.unwrap_or(DnsConfig { servers: Vec::new(), timeout: endpoints::DEFAULT_DNS_TIMEOUT }),
            Err(message) => {
                self.issue::<()>("dns", None, message);
                DnsConfig::default()
            }
        };
        if let Some(a) = &anomaly {
            if let Err(e) = a.validate() {
                self.issue::<()>("anomaly", None, e.to_string());
            }
        }
        let telemetry = source.telemetry.as_ref().and_then(|t| {
            t.validate().map_err(|issues| issues.into_iter().for_each(|(k, m)| self.issue::<()>(k, None, m))).ok()
        });
        if !self.issues.is_empty() {
            return Err(self.issues);
        }
        match admin {
            Some(admin) => Ok(Config {
                path: None,
                admin,
                listeners,
                upstreams,
                plugins,
                anomaly,
                source,
                cluster,
                dns,
                telemetry,
            }),
            None => Err(self.issues),
        }
    }

    fn cluster(&mut self, c: &file::ClusterFile) -> Option<ClusterConfig> {
        let listen = self.address("cluster.listen", &c.listen)?;
        if listen.ip().is_unspecified() || listen.port() == 0 {
            self.issue(
                "cluster.listen",
                Some(&c.listen),
                "must be this node's reachable address and port: peers dial it",
            );
        }
        if c.node_id == 0 {
            self.issue::<()>("cluster.node_id", None, "must be at least 1");
        }
        let mut peers = std::collections::BTreeMap::new();
        for (id, addr) in &c.peers {
            match id.parse::<u64>() {
                Ok(0) | Err(_) => {
                    self.issue::<()>(format!("cluster.peers.{id}"), None, "a peer id must be a number ≥ 1")
                }
                Ok(n) if n == c.node_id => {
                    self.issue::<()>(format!("cluster.peers.{id}"), None, "must not list this node itself")
                }
                Ok(n) => match resolve(addr) {
                    Ok(_) => {
                        peers.insert(n, addr.clone());
                    }
                    Err(message) => self.issue::<()>(format!("cluster.peers.{id}"), None, message),
                },
            }
        }
        let heartbeat = c.heartbeat_interval.0;
        let election = c.election_timeout.0;
        if heartbeat.is_zero() || election < heartbeat * 5 {
            self.issue::<()>(
                "cluster.election_timeout",
                None,
                format!("must be at least 5 × heartbeat_interval ({heartbeat:?}); 10 × is the usual rule"),
            );
        }
        if c.token.as_deref() == Some("") {
            self.issue::<()>("cluster.token", None, "must not be empty");
        }
        Some(ClusterConfig {
            settings: portico_cluster::ClusterSettings {
                node_id: c.node_id,
                listen: c.listen.get_ref().clone(),
                peers,
                data_dir: c.data_dir.clone(),
                heartbeat_interval: heartbeat,
                election_timeout: election,
                token: c.token.clone(),
                write_timeout: c.write_timeout.0,
                on_become_leader: c.on_become_leader.clone(),
                on_lose_leadership: c.on_lose_leadership.clone(),
                hook_timeout: c.hook_timeout.0,
                join: c.join,
                snapshot_every: 500,
            },
            bind_address: c.bind_address,
            fault_injection: c.fault_injection,
        })
    }

    fn admin(&mut self, source: &FileConfig) -> Option<AdminConfig> {
        let listen = self.address("admin.listen", &source.admin.listen)?;
        if !listen.ip().is_loopback() && source.admin.token.is_none() {
            self.issue(
                "admin.listen",
                Some(&source.admin.listen),
                "a non-loopback admin address needs `token` so that nobody else can change the proxy",
            );
        }
        if source.admin.token.as_deref() == Some("") {
            self.issue::<()>("admin.token", None, "must not be empty");
        }
        Some(AdminConfig { listen, token: source.admin.token.clone(), unix_socket: source.admin.unix_socket.clone() })
    }

    fn upstreams(&mut self, source: &FileConfig) -> Vec<UpstreamConfig> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, up) in source.upstreams.iter().enumerate() {
            let key = format!("upstream[{i}]");
            if !seen.insert(up.name.get_ref().clone()) {
                self.issue(
                    format!("{key}.name"),
                    Some(&up.name),
                    format!("duplicate upstream name {:?}", up.name.get_ref()),
                );
            }
            // An empty list is a group that registrations fill (see the admin API).
            let mut endpoints = Vec::new();
            let mut discovered = Vec::new();
            for (j, ep) in up.endpoints.iter().enumerate() {
                match endpoints::check_entry(ep, resolve) {
                    Ok(endpoints::Checked::Fixed { name, address, weight }) => {
                        endpoints.push(EndpointConfig { name, address, weight })
                    }
                    Ok(endpoints::Checked::Discovered(entry)) => discovered.push(entry),
                    Err(message) => self.issue(format!("{key}.endpoints[{j}]"), Some(&up.name), message),
                }
            }
            if up.retries > 10 {
                self.issue(format!("{key}.retries"), Some(&up.name), "at most 10");
            }
            if up.retry_budget.percent > 100 {
                self.issue(format!("{key}.retry_budget.percent"), Some(&up.name), "at most 100");
            }
            if up.pool.max_connections == 0 {
                self.issue(format!("{key}.pool.max_connections"), Some(&up.name), "must be at least 1");
            }
            // HTTP/2 windows are 31-bit; a stream's cannot exceed the connection's its data counts against.
            let (stream, connection) = (up.pool.h2_stream_window.0, up.pool.h2_connection_window.0);
            // Below HTTP/2's initial 65,535 bytes a window cannot be set at all (only its updates held back).
            if !(65_535..=H2_MAX_WINDOW).contains(&stream) {
                let message =
                    format!("must be between 65535B (HTTP/2's initial window) and {H2_MAX_WINDOW}B (its largest)");
                self.issue(format!("{key}.pool.h2_stream_window"), Some(&up.name), message);
            } else if !(stream..=H2_MAX_WINDOW).contains(&connection) {
                let message = format!("must be at least h2_stream_window and at most {H2_MAX_WINDOW}B");
                self.issue(format!("{key}.pool.h2_connection_window"), Some(&up.name), message);
            }
            if let Some(hc) = &up.health_check {
                if hc.unhealthy_threshold == 0 || hc.healthy_threshold == 0 {
                    self.issue(format!("{key}.health_check"), Some(&up.name), "thresholds must be at least 1");
                }
                if hc.interval.0.is_zero() || hc.timeout.0.is_zero() {
                    self.issue(format!("{key}.health_check"), Some(&up.name), "interval and timeout must be positive");
                }
                if let Some(path) = &hc.path {
                    if !path.starts_with('/') {
                        self.issue(format!("{key}.health_check.path"), Some(&up.name), "must start with /");
                    }
                }
            }
            if let Some(od) = &up.outlier_detection {
                if od.consecutive_5xx == 0 {
                    self.issue(
                        format!("{key}.outlier_detection.consecutive_5xx"),
                        Some(&up.name),
                        "must be at least 1",
                    );
                }
                if od.max_ejection_percent > 100 {
                    self.issue(format!("{key}.outlier_detection.max_ejection_percent"), Some(&up.name), "at most 100");
                }
            }
            out.push(UpstreamConfig {
                name: up.name.get_ref().clone(),
                endpoints,
                discovered,
                protocol: up.protocol,
                connect_timeout: up.connect_timeout.0,
                request_timeout: up.request_timeout.0,
                retries: up.retries,
                retry_budget: up.retry_budget.clone(),
                pool: up.pool.clone(),
                health_check: up.health_check.clone(),
                outlier_detection: up.outlier_detection.clone(),
            });
        }
        out
    }

    fn plugins(&mut self, plugins: &[PluginFile], upstreams: &HashSet<&str>) -> Vec<PluginConfig> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, p) in plugins.iter().enumerate() {
            let key = format!("plugin[{i}]");
            let name = p.name.get_ref().clone();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                self.issue(format!("{key}.name"), Some(&p.name), "use letters, digits, '-', '_' and '.'");
            }
            if !seen.insert(name.clone()) {
                self.issue(format!("{key}.name"), Some(&p.name), format!("duplicate plugin name {name:?}"));
            }
            let wasm = p.wasm.get_ref();
            let source = match wasm.strip_prefix("builtin:") {
                Some("") => {
                    self.issue(format!("{key}.wasm"), Some(&p.wasm), "`builtin:` needs a module name");
                    continue;
                }
                Some(builtin) => PluginSource::Builtin(builtin.to_string()),
                None if wasm.is_empty() => {
                    self.issue(format!("{key}.wasm"), Some(&p.wasm), "needs a .wasm path or builtin:NAME");
                    continue;
                }
                None => PluginSource::File(PathBuf::from(wasm)),
            };
            let configuration = match &p.config {
                None => String::new(),
                Some(toml::Value::String(text)) => text.clone(),
                Some(value) => match serde_json::to_string(value) {
                    Ok(json) => json,
                    Err(e) => {
                        self.issue(format!("{key}.config"), Some(&p.name), format!("cannot be turned into JSON: {e}"));
                        continue;
                    }
                },
            };
            if let PluginSource::Builtin(builtin) = &source {
                if portico_plugins::builtin(builtin).is_none() {
                    self.issue(
                        format!("{key}.wasm"),
                        Some(&p.wasm),
                        format!(
                            "no bundled module {builtin:?} (bundled: {})",
                            portico_plugins::BUILTIN_NAMES.join(", ")
                        ),
                    );
                }
                // The router names upstream groups: refuse unknown ones here, with the line, not at request time.
                if builtin == "router" {
                    match portico_plugins::router_upstreams(&configuration) {
                        Ok(named) => {
                            for group in named.iter().filter(|g| !upstreams.contains(g.as_str())) {
                                self.issue(
                                    format!("{key}.config"),
                                    Some(&p.name),
                                    format!("the router names upstream {group:?}, which is not configured"),
                                );
                            }
                        }
                        Err(e) => self.issue(format!("{key}.config"), Some(&p.name), crate::plugin::with_causes(&e)),
                    }
                }
            }
            if p.memory_limit.0 < 64 * 1024 {
                self.issue(format!("{key}.memory_limit"), Some(&p.name), "at least 64KiB (one wasm page)");
            }
            if p.pause_timeout.0.is_zero() {
                self.issue(format!("{key}.pause_timeout"), Some(&p.name), "must be positive");
            }
            if p.cpu_limit.0.is_zero() {
                self.issue(format!("{key}.cpu_limit"), Some(&p.name), "must be positive");
            }
            let rollout = match p.rollout.as_ref().map(rollout::validate) {
                None => rollout::RolloutConfig::default(),
                Some(Ok(config)) => config,
                Some(Err(issues)) => {
                    for (field, message) in issues {
                        self.issue(format!("{key}.rollout.{field}"), Some(&p.name), message);
                    }
                    rollout::RolloutConfig::default()
                }
            };
            out.push(PluginConfig {
                root_id: p.root_id.clone().unwrap_or_else(|| name.clone()),
                name,
                source,
                configuration,
                vm_config: p.vm_config.clone().unwrap_or_default(),
                fail: p.fail,
                memory_limit: usize::try_from(p.memory_limit.0).unwrap_or(usize::MAX),
                cpu_limit: p.cpu_limit.0,
                pause_timeout: p.pause_timeout.0,
                instances: p.instances,
                rollout,
            });
        }
        out
    }

    fn listeners(
        &mut self,
        source: &FileConfig,
        upstreams: &HashSet<&str>,
        plugins: &HashSet<&str>,
    ) -> Vec<ListenerConfig> {
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        let mut out = Vec::new();
        for (i, l) in source.listeners.iter().enumerate() {
            let key = format!("listener[{i}]");
            if !names.insert(l.name.get_ref().clone()) {
                self.issue(
                    format!("{key}.name"),
                    Some(&l.name),
                    format!("duplicate listener name {:?}", l.name.get_ref()),
                );
            }
            let listen = self.address(&format!("{key}.listen"), &l.listen);
            if let Some(addr) = listen {
                if addr.port() != 0 && !addresses.insert(addr) {
                    self.issue(format!("{key}.listen"), Some(&l.listen), format!("{addr} is used by another listener"));
                }
            }
            match (&l.upstream, l.mode) {
                (Some(up), _) if !upstreams.contains(up.get_ref().as_str()) => {
                    self.issue(format!("{key}.upstream"), Some(up), format!("no upstream named {:?}", up.get_ref()));
                }
                (None, ListenerMode::Reverse) => {
                    self.issue(format!("{key}.upstream"), Some(&l.name), "a reverse-proxy listener needs an upstream");
                }
                _ => {}
            }
            if l.mode == ListenerMode::Forward && l.tls.is_some() {
                self.issue::<()>(format!("{key}.tls"), None, "TLS on a forward-proxy listener is not supported");
            }
            if let Some(tls) = &l.tls {
                self.tls_files(&key, tls);
            }
            let mut allow = Vec::new();
            if l.mode != ListenerMode::Forward && !l.allow.is_empty() {
                self.issue(format!("{key}.allow"), l.allow.first(), "allow is only for mode = \"forward\" listeners");
            }
            for entry in &l.allow {
                match allow::AllowEntry::parse(entry.get_ref()) {
                    Ok(a) => allow.push(a),
                    Err(message) => self.issue(format!("{key}.allow"), Some(entry), message),
                }
            }
            if l.idle_timeout.0.is_zero() {
                self.issue(format!("{key}.idle_timeout"), Some(&l.name), "must be more than zero");
            }
            if l.send_timeout.0.is_zero() {
                self.issue(format!("{key}.send_timeout"), Some(&l.name), "must be more than zero");
            }
            if l.max_connections == 0 {
                self.issue(format!("{key}.max_connections"), Some(&l.name), "must be at least 1");
            }
            if l.max_header_bytes.0 > crate::listen::guard::MAX_HEAD as u64 {
                self.issue(
                    format!("{key}.max_header_bytes"),
                    Some(&l.name),
                    "at most 128KiB: the smuggling guard checks request heads up to that size",
                );
            }
            // Refused rather than half applied: on a forward listener a filter could see absolute-form requests
            // but never what goes through a CONNECT tunnel (opaque bytes, usually TLS), so an auth or policy
            // filter there would look enforced and be bypassed by any client that tunnels.
            if l.mode == ListenerMode::Forward && !l.filters.is_empty() {
                self.issue(
                    format!("{key}.filters"),
                    l.filters.first(),
                    "filters run on reverse-proxy listeners only: a forward listener's CONNECT tunnels carry bytes \
                     no filter sees, so its filters would not apply to them",
                );
            }
            for filter in &l.filters {
                if !plugins.contains(filter.get_ref().as_str()) {
                    self.issue(
                        format!("{key}.filters"),
                        Some(filter),
                        format!("no [[plugin]] named {:?}", filter.get_ref()),
                    );
                }
            }
            let (paths, underscores) = self.request_rules(&key, l);
            if let Some(listen) = listen {
                out.push(ListenerConfig {
                    name: l.name.get_ref().clone(),
                    listen,
                    upstream: l.upstream.as_ref().map(|u| u.get_ref().clone()),
                    mode: l.mode,
                    connect_ports: l.connect_ports.clone(),
                    allow,
                    tls: l.tls.clone(),
                    max_connections: l.max_connections,
                    header_read_timeout: l.header_read_timeout.0,
                    idle_timeout: l.idle_timeout.0,
                    send_timeout: l.send_timeout.0,
                    max_header_bytes: usize::try_from(l.max_header_bytes.0).unwrap_or(usize::MAX).max(8192),
                    // 0 is no limit, as nginx reads `client_max_body_size 0`.
                    max_request_body: l.max_request_body.map(|b| b.0).filter(|&limit| limit > 0),
                    access_log: self.access_log(&key, l),
                    filters: l.filters.iter().map(|f| f.get_ref().clone()).collect(),
                    paths,
                    underscores,
                });
            }
        }
        out
    }
}

/// Resolves `host:port` once at load time; literal IPs need no lookup.
fn resolve(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    // Fuzzing sends no DNS queries: a name is simply not an address there.
    if cfg!(fuzzing) {
        return Err(format!("{text:?} is not an ip:port address (names are not resolved while fuzzing)"));
    }
    let mut addrs =
        text.to_socket_addrs().map_err(|e| format!("{text:?} is not a host:port address that resolves: {e}"))?;
    addrs.next().ok_or_else(|| format!("{text:?} resolved to no address"))
}

/// A copy of the file with secrets replaced, for `GET /config`.
pub fn redacted(source: &FileConfig) -> FileConfig {
    let mut copy = source.clone();
    if copy.admin.token.is_some() {
        copy.admin.token = Some("<redacted>".into());
    }
    if let Some(cluster) = &mut copy.cluster {
        if cluster.token.is_some() {
            cluster.token = Some("<redacted>".into());
        }
    }
    copy
}

#[cfg(test)]
mod tests;
