//! What the demo runs: its configuration, its remediation hook and the addresses it listens on.

use super::upstreams::DemoUpstream;

/// The example remediation scripts, embedded so the demo needs no checkout.
const REMEDIATION_LIB: &str = include_str!("../../../examples/remediation/lib.sh");
const DRAIN_ENDPOINT: &str = include_str!("../../../examples/remediation/drain-endpoint.sh");

/// A private directory for the demo's hook scripts and log file.
pub fn scratch_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("portico-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Writes the example drain hook; `None` when the tools it uses are missing.
pub fn write_hook(dir: &std::path::Path) -> std::io::Result<Option<std::path::PathBuf>> {
    let have = |tool: &str| {
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
    };
    if !(have("sh") && have("curl") && have("python3")) {
        return Ok(None);
    }
    std::fs::write(dir.join("lib.sh"), REMEDIATION_LIB)?;
    let script = dir.join("drain-endpoint.sh");
    std::fs::write(&script, DRAIN_ENDPOINT)?;
    Ok(Some(script))
}

/// The preferred address if it is free, else a free port on loopback (a concrete one: the hook needs to
/// know the admin port before the server starts).
pub fn free_or_ephemeral(preferred: &str) -> String {
    match std::net::TcpListener::bind(preferred) {
        Ok(_) => preferred.to_string(),
        Err(_) => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_or_else(|_| "127.0.0.1:0".to_string(), |a| a.to_string()),
    }
}

/// The demo's configuration text.
pub fn config(
    listen: &str,
    admin: &str,
    upstreams: &[DemoUpstream],
    warmup_ticks: u64,
    hook: Option<&std::path::Path>,
) -> String {
    let hook = hook.map_or(String::new(), |path| {
        format!(
            r#"
# One incident, one action: the hook runs once, for the incident's probable cause, when that is an endpoint's
# latency (the endpoint at fault rather than its whole upstream).
[[anomaly.hook]]
name = "drain-cause"
on = {{ severity = "critical", series = "endpoint.demo.*.latency" }}
exec = ["/bin/sh", "{}"]
timeout = "10s"
cooldown = "1m"
"#,
            path.display()
        )
    });
    let endpoints: Vec<String> = upstreams.iter().map(|u| format!("\"{}\"", u.address)).collect();
    format!(
        r#"
[admin]
listen = "{admin}"

[[listener]]
name = "web"
listen = "{listen}"
upstream = "demo"
filters = ["router", "lb"]

# Routing and balancing run as the bundled WebAssembly plugins. The demo shares the machine with its own load
# generator, so the per-callback CPU deadline gets headroom over the 10 ms default.
[[plugin]]
name = "router"
wasm = "builtin:router"
cpu_limit = "100ms"
config = {{ routes = [
  {{ match = {{ headers = {{ x-canary = "1" }} }}, upstream = "canary" }},
  {{ match = {{ path_prefix = "/" }}, upstream = "demo" }},
] }}

# Round robin keeps giving gamma its share when it turns slow, so the slowdown shows in latency and the
# remediation hook has something to fix. least_request would steer around gamma by itself.
[[plugin]]
name = "lb"
wasm = "builtin:balancer"
cpu_limit = "100ms"
config = {{ policy = "round_robin" }}

# Portico watches its own series; the demo shortens the warm-up to fit its run.
[anomaly]
interval = "1s"
warmup = {warmup_ticks}
{hook}

[[upstream]]
name = "canary"
endpoints = [{canary}]

[[upstream]]
name = "demo"
endpoints = [{}]
connect_timeout = "250ms"
request_timeout = "2s"
retries = 2
health_check = {{ path = "/health", interval = "1s", timeout = "500ms", unhealthy_threshold = 2, healthy_threshold = 2 }}
outlier_detection = {{ consecutive_5xx = 3, base_ejection_time = "2s", max_ejection_percent = 50 }}
"#,
        endpoints.join(", "),
        canary = endpoints.last().cloned().unwrap_or_default(),
    )
}
