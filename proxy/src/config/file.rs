//! The configuration file exactly as written: plain serde structs with `deny_unknown_fields`.
//!
//! Key names here are Portico's public contract. Values that can be checked alone (durations, addresses) are
//! parsed while deserialising, so the TOML parser reports them with their line; cross-references are kept
//! `Spanned` so validation can name the line too.

use super::duration::{ByteSize, HumanDuration};
pub use super::endpoints::{DnsFile, EndpointEntryFile, EndpointFile};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The admin API; defaults to 127.0.0.1:9901.
    #[serde(default)]
    pub admin: AdminFile,
    /// Where clients connect.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerFile>,
    /// Groups of endpoints requests are sent to.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamFile>,
    /// WebAssembly plugins (proxy-wasm ABI) that listeners chain as filters.
    #[serde(default, rename = "plugin", skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginFile>,
    /// Self-watching anomaly detection: sampling, model, thresholds, webhooks and remediation hooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<portico_anomaly::AnomalyConfig>,
    /// The DNS servers endpoint discovery asks (default: the system's resolver configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsFile>,
    /// Membership in a Raft cluster that shares configuration and plugins (node-local, never replicated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterFile>,
    /// OpenTelemetry traces over OTLP/HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<super::telemetry::TelemetryFile>,
}

/// `[cluster]`: this node's place in a cluster. Like `[admin]` it is node-local: the replicated configuration
/// is the rest of the file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// This node's id, unique in the cluster, at least 1.
    pub node_id: u64,
    /// Address for Raft and node-to-node traffic; peers dial it, so it must be this node's reachable address.
    pub listen: Spanned<String>,
    /// The other founding nodes: id (as a string key) to cluster address.
    #[serde(default)]
    pub peers: std::collections::BTreeMap<String, String>,
    /// Where the Raft log, vote and snapshots live (relative to the config file).
    pub data_dir: PathBuf,
    /// Leader heartbeat period.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval: HumanDuration,
    /// Base election timeout: a follower that hears no leader for this long starts an election.
    #[serde(default = "default_election")]
    pub election_timeout: HumanDuration,
    /// Shared secret: peers without it are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// How long an admin write waits to commit before it is answered 503.
    #[serde(default = "default_write_timeout")]
    pub write_timeout: HumanDuration,
    /// Listeners on an unspecified address (0.0.0.0 or ::) bind this node's address instead, so one shared
    /// configuration can serve nodes that each listen on their own IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_address: Option<std::net::IpAddr>,
    /// Argument vector run when this node's leadership is confirmed by a quorum.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_become_leader: Vec<String>,
    /// Argument vector run when this node stops being a confirmed leader.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_lose_leadership: Vec<String>,
    /// Time limit for each leader hook.
    #[serde(default = "default_hook_timeout")]
    pub hook_timeout: HumanDuration,
    /// Set on a node added to a running cluster: it waits to be added through `POST /cluster/members` instead of
    /// forming a cluster with `peers`.
    #[serde(default)]
    pub join: bool,
    /// Enables `POST /cluster/isolate`, which cuts this node off from its peers (for failure tests only).
    #[serde(default)]
    pub fault_injection: bool,
}

fn default_heartbeat() -> HumanDuration {
    HumanDuration(std::time::Duration::from_millis(100))
}

fn default_election() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(1))
}

fn default_write_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(5))
}

fn default_hook_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(10))
}

/// What a request meets when its plugin is broken (trapped, timed out, crash-looping).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Answer 503: the safe choice for auth-like filters that must not be skipped.
    #[default]
    Closed,
    /// Skip the plugin: for filters whose absence only loses a feature.
    Open,
}

/// `[[plugin]]`: one proxy-wasm module and its settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginFile {
    /// Unique name; listeners refer to it in `filters`, metrics and logs carry it.
    pub name: Spanned<String>,
    /// A path to a `.wasm` file (relative to the config file), or `builtin:NAME` for a bundled module.
    pub wasm: Spanned<String>,
    /// Plugin configuration: a string handed over as is, or a table handed over as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<toml::Value>,
    /// The root context id the module registered (SDKs key their root contexts by it); defaults to `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_id: Option<String>,
    /// VM configuration handed to `proxy_on_vm_start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_config: Option<String>,
    /// `closed` (a broken plugin answers 503) or `open` (the request skips it).
    #[serde(default)]
    pub fail: FailMode,
    /// Linear memory cap per instance.
    #[serde(default = "default_plugin_memory")]
    pub memory_limit: ByteSize,
    /// CPU time one callback may take before it is interrupted.
    #[serde(default = "default_plugin_cpu")]
    pub cpu_limit: HumanDuration,
    /// How long a request or response paused in its headers waits for the plugin to resume it.
    #[serde(default = "default_pause_timeout")]
    pub pause_timeout: HumanDuration,
    /// Wasm instances (VMs) serving this plugin in parallel; 0 = one per CPU. State a plugin keeps in its VM
    /// (a round-robin position, a cache) is per instance.
    #[serde(default)]
    pub instances: usize,
    /// How a module uploaded with `PUT /plugins/{name}?rollout=PERCENT` meets the traffic, step by step, and
    /// when it is rolled back by itself (see `config::rollout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<super::rollout::RolloutFile>,
}

fn default_plugin_memory() -> ByteSize {
    ByteSize(32 * 1024 * 1024)
}
fn default_pause_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}
fn default_plugin_cpu() -> HumanDuration {
    HumanDuration(std::time::Duration::from_millis(10))
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// TCP address of the admin API.
    #[serde(default = "default_admin_listen")]
    pub listen: Spanned<String>,
    /// Bearer token for mutating calls; required when `listen` is not loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The same admin API on a Unix socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix_socket: Option<PathBuf>,
}

impl Default for AdminFile {
    fn default() -> Self {
        AdminFile { listen: default_admin_listen(), token: None, unix_socket: None }
    }
}

fn default_admin_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9901".to_string())
}

/// Reverse proxy or forward proxy.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// Requests go to the listener's upstream group.
    #[default]
    Reverse,
    /// Absolute-form requests and CONNECT tunnels go where the client asks.
    Forward,
}

/// `[[listener]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    /// Unique name, used in metrics and logs.
    pub name: Spanned<String>,
    /// Socket address to bind.
    pub listen: Spanned<String>,
    /// Default upstream group (reverse mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Spanned<String>>,
    /// reverse (default) or forward.
    #[serde(default)]
    pub mode: ListenerMode,
    /// Ports CONNECT may reach in forward mode.
    #[serde(default = "default_connect_ports")]
    pub connect_ports: Vec<u16>,
    /// Forward mode: loopback/link-local destinations (`ip:port`, `ip/prefix`, `ip`) that are permitted anyway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Spanned<String>>,
    /// TLS termination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFile>,
    /// Open connections accepted at once; further ones wait in the kernel backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time a client has to send a complete request head (slowloris guard).
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout: HumanDuration,
    /// A connection with no request in flight for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// A response body the client takes nothing of for this long is cut off and its upstream connection
    /// released (nginx's `send_timeout`: the time between two successive writes, not for the whole response).
    #[serde(default = "default_send_timeout")]
    pub send_timeout: HumanDuration,
    /// Largest request head accepted; larger gets 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// Largest request body passed on (nginx's `client_max_body_size`); larger gets 413. Unset: no limit
    /// (bodies stream, so a large one costs Portico no memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body: Option<ByteSize>,
    /// A file each answered request is logged to, one line each (nginx's `access_log`); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<PathBuf>,
    /// `json` (default: every field, one object a line) or `combined` (nginx's and Apache's format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_format: Option<Spanned<super::AccessLogFormat>>,
    /// Plugin chain, by plugin name: requests meet them in this order, responses in reverse.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Spanned<String>>,
    /// Reverse mode: resolve `.`/`..` segments and percent-encodings of request paths (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize_path: Option<Spanned<bool>>,
    /// Reverse mode: merge runs of `/` in request paths (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_slashes: Option<Spanned<bool>>,
    /// Reverse mode: `%2F` / `%5C` in request paths are `keep` (default), `reject` or `unescape`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escaped_slashes: Option<Spanned<super::paths::EscapedSlashes>>,
    /// Reverse mode: request header fields whose name holds `_` are `drop`ped (default), `reject`ed or `keep`t.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underscores_in_headers: Option<Spanned<super::paths::UnderscoreHeaders>>,
}

fn default_connect_ports() -> Vec<u16> {
    vec![443]
}
fn default_max_connections() -> usize {
    10_000
}
fn default_send_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(60))
}
fn default_header_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(10))
}
fn default_max_header_bytes() -> ByteSize {
    ByteSize(64 * 1024)
}

/// `tls = { cert = "...", key = "...", sni = [{ cert, key }] }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// PEM certificate chain served when no SNI certificate matches.
    pub cert: PathBuf,
    /// PEM private key for `cert`.
    pub key: PathBuf,
    /// More certificates, each chosen when the client's SNI name is valid for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<CertFile>,
}

/// One certificate and key pair.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Protocol spoken to an upstream's endpoints.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    H2,
}

/// `[[upstream]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// Unique name, referenced by listeners.
    pub name: Spanned<String>,
    /// `"host:port"`, `{ address = "host:port", weight = 3 }`, `{ address = "name:port", resolve = "30s" }` or
    /// `{ srv = "_http._tcp.name" }`; may be empty for a group filled by registrations.
    pub endpoints: Vec<EndpointFile>,
    /// http1 (default) or h2.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TCP connect deadline.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Deadline for the response head, per attempt.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// Extra attempts for idempotent requests on another endpoint.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Cap on retries relative to traffic, so a sick upstream is not hammered.
    #[serde(default)]
    pub retry_budget: RetryBudgetFile,
    /// Keep-alive pool limits, per endpoint.
    #[serde(default)]
    pub pool: PoolFile,
    /// Active health checking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckFile>,
    /// Passive ejection of failing endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierFile>,
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(1))
}
fn default_request_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(15))
}
fn default_retries() -> u32 {
    1
}

/// `retry_budget = { percent = 20, min_per_second = 10 }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetFile {
    /// Retries allowed as a percentage of requests.
    #[serde(default = "default_budget_percent")]
    pub percent: u32,
    /// Retries allowed each second regardless of traffic, so low-traffic upstreams can still retry.
    #[serde(default = "default_budget_min")]
    pub min_per_second: u32,
}

impl Default for RetryBudgetFile {
    fn default() -> Self {
        RetryBudgetFile { percent: default_budget_percent(), min_per_second: default_budget_min() }
    }
}
fn default_budget_percent() -> u32 {
    20
}
fn default_budget_min() -> u32 {
    10
}

/// `pool = { max_idle = 64, idle_timeout = "60s", max_connections = 1024 }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    /// Idle keep-alive connections kept per endpoint.
    #[serde(default = "default_max_idle")]
    pub max_idle: usize,
    /// Idle connections older than this are closed; keep it below the origin's own keep-alive timeout.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// Requests in flight per endpoint (each holds one HTTP/1 connection); more wait up to connect_timeout.
    #[serde(default = "default_max_conns")]
    pub max_connections: usize,
    /// HTTP/2 upstreams: the flow-control window each stream's answer gets, which is also the most of its
    /// data Portico holds unread for a client that reads slowly.
    #[serde(default = "default_h2_stream_window")]
    pub h2_stream_window: ByteSize,
    /// HTTP/2 upstreams: the window the connection's streams share. Unread data counts against it until read,
    /// so with [`PoolFile::h2_stream_window`] it sets how many stalled readers the connection carries (32 by
    /// default) before its other answers wait for their send timeout.
    #[serde(default = "default_h2_connection_window")]
    pub h2_connection_window: ByteSize,
}

impl Default for PoolFile {
    fn default() -> Self {
        PoolFile {
            max_idle: default_max_idle(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_conns(),
            h2_stream_window: default_h2_stream_window(),
            h2_connection_window: default_h2_connection_window(),
        }
    }
}
fn default_h2_stream_window() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_h2_connection_window() -> ByteSize {
    ByteSize(32 << 20)
}
fn default_max_idle() -> usize {
    64
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(60))
}
fn default_max_conns() -> usize {
    1024
}

/// `health_check = { path = "/health", interval = "5s", ... }`; without `path` it is a TCP connect check.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    /// HTTP GET path; a 2xx answer is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Time between probes.
    #[serde(default = "default_hc_interval")]
    pub interval: HumanDuration,
    /// Probe deadline.
    #[serde(default = "default_hc_timeout")]
    pub timeout: HumanDuration,
    /// Consecutive failures that mark an endpoint unhealthy.
    #[serde(default = "default_unhealthy")]
    pub unhealthy_threshold: u32,
    /// Consecutive successes that mark it healthy again.
    #[serde(default = "default_healthy")]
    pub healthy_threshold: u32,
}
fn default_hc_interval() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(5))
}
fn default_hc_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(2))
}
fn default_unhealthy() -> u32 {
    3
}
fn default_healthy() -> u32 {
    2
}

/// `outlier_detection = { consecutive_5xx = 5, base_ejection_time = "30s", max_ejection_percent = 50 }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierFile {
    /// Consecutive 5xx answers or connect failures that eject an endpoint.
    #[serde(default = "default_consecutive")]
    pub consecutive_5xx: u32,
    /// Ejection lasts this times the number of times the endpoint was ejected.
    #[serde(default = "default_base_ejection")]
    pub base_ejection_time: HumanDuration,
    /// Longest ejection.
    #[serde(default = "default_max_ejection")]
    pub max_ejection_time: HumanDuration,
    /// Never eject more than this share of the upstream's endpoints.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}
fn default_consecutive() -> u32 {
    5
}
fn default_base_ejection() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}
fn default_max_ejection() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(300))
}
fn default_max_ejection_percent() -> u32 {
    50
}
