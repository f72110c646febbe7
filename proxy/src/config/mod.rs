//! Configuration: the file as written ([`file`]), then validated once into the typed [`Config`] the rest of
//! Portico reads. Nothing downstream re-parses strings.

pub mod duration;
pub mod file;

use file::{EndpointFile, FileConfig, ListenerMode};
use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

pub use file::{HealthCheckFile, OutlierFile, PoolFile, RetryBudgetFile, TlsFile, UpstreamProtocol};

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
    /// The file as parsed, served (redacted) by `GET /config`.
    pub source: FileConfig,
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
    /// TLS files, if terminating TLS.
    pub tls: Option<TlsFile>,
    /// Connection cap.
    pub max_connections: usize,
    /// Request-head deadline.
    pub header_read_timeout: Duration,
    /// Request-head size cap.
    pub max_header_bytes: usize,
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
    /// Endpoints with weights.
    pub endpoints: Vec<EndpointConfig>,
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
    config.path = Some(path.to_path_buf());
    Ok(config)
}

/// Parses and validates config text. All problems are returned together.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigIssue>> {
    let source: FileConfig = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|span| line_of(text, span.start));
        vec![ConfigIssue { key: "file".into(), line, message: e.message().trim().to_string() }]
    })?;
    Validator { text, issues: Vec::new() }.validate(source)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |prefix| prefix.matches('\n').count()) + 1
}

struct Validator<'a> {
    text: &'a str,
    issues: Vec<ConfigIssue>,
}

impl Validator<'_> {
    fn issue<T>(&mut self, key: impl Into<String>, spanned: Option<&Spanned<T>>, message: impl Into<String>) {
        let line = spanned.filter(|s| s.span().end > 0).map(|s| line_of(self.text, s.span().start));
        self.issues.push(ConfigIssue { key: key.into(), line, message: message.into() });
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
        let listeners = self.listeners(&source, &upstream_names);
        if !self.issues.is_empty() {
            return Err(self.issues);
        }
        match admin {
            Some(admin) => Ok(Config { path: None, admin, listeners, upstreams, source }),
            None => Err(self.issues),
        }
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
            if up.endpoints.is_empty() {
                self.issue(format!("{key}.endpoints"), Some(&up.name), "needs at least one endpoint");
            }
            let mut endpoints = Vec::new();
            for (j, ep) in up.endpoints.iter().enumerate() {
                let (address, weight) = match ep {
                    EndpointFile::Address(a) => (a.clone(), 1),
                    EndpointFile::Weighted { address, weight } => (address.clone(), *weight),
                };
                if !(1..=1000).contains(&weight) {
                    self.issue(format!("{key}.endpoints[{j}].weight"), Some(&up.name), "weight must be 1..=1000");
                }
                match resolve(&address) {
                    Ok(resolved) => endpoints.push(EndpointConfig { name: address, address: resolved, weight }),
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

    fn listeners(&mut self, source: &FileConfig, upstreams: &HashSet<&str>) -> Vec<ListenerConfig> {
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
                self.issue(format!("{key}.tls"), Some(&l.name), "TLS on a forward-proxy listener is not supported");
            }
            if l.max_connections == 0 {
                self.issue(format!("{key}.max_connections"), Some(&l.name), "must be at least 1");
            }
            if let Some(listen) = listen {
                out.push(ListenerConfig {
                    name: l.name.get_ref().clone(),
                    listen,
                    upstream: l.upstream.as_ref().map(|u| u.get_ref().clone()),
                    mode: l.mode,
                    connect_ports: l.connect_ports.clone(),
                    tls: l.tls.clone(),
                    max_connections: l.max_connections,
                    header_read_timeout: l.header_read_timeout.0,
                    max_header_bytes: usize::try_from(l.max_header_bytes.0).unwrap_or(usize::MAX).max(8192),
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
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"
upstream = "app"

[[upstream]]
name = "app"
endpoints = ["127.0.0.1:1", { address = "127.0.0.1:2", weight = 3 }]
connect_timeout = "250ms"
health_check = { path = "/health", interval = "5s" }
outlier_detection = { consecutive_5xx = 5, base_ejection_time = "30s", max_ejection_percent = 50 }
"#;

    #[test]
    fn a_good_file_validates() -> Result<(), String> {
        let config = parse(GOOD).map_err(|e| format!("{e:?}"))?;
        assert_eq!(config.upstreams[0].endpoints[1].weight, 3);
        assert_eq!(config.upstreams[0].connect_timeout, Duration::from_millis(250));
        assert_eq!(config.listeners[0].upstream.as_deref(), Some("app"));
        Ok(())
    }

    #[test]
    fn unknown_keys_name_key_and_line() {
        let text = GOOD.replace("connect_timeout", "conect_timeout");
        let issues = parse(&text).err().unwrap_or_default();
        assert_eq!(issues.len(), 1);
        assert!(issues[0].message.contains("conect_timeout"), "{issues:?}");
        assert_eq!(issues[0].line, Some(13));
    }

    #[test]
    fn bad_duration_names_line() {
        let issues = parse(&GOOD.replace("\"250ms\"", "\"250\"")).err().unwrap_or_default();
        assert_eq!(issues[0].line, Some(13), "{issues:?}");
        assert!(issues[0].message.contains("no unit"));
    }

    #[test]
    fn unknown_upstream_reference_names_line() {
        let issues = parse(&GOOD.replace("upstream = \"app\"", "upstream = \"nope\"")).err().unwrap_or_default();
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].key, "listener[0].upstream");
        assert_eq!(issues[0].line, Some(8));
    }

    #[test]
    fn public_admin_needs_token() {
        let issues =
            parse(&GOOD.replace("listen = \"127.0.0.1:0\"\n\n[[listener]]", "listen = \"0.0.0.0:0\"\n\n[[listener]]"))
                .err()
                .unwrap_or_default();
        assert!(issues.iter().any(|i| i.key == "admin.listen"), "{issues:?}");
    }
}
