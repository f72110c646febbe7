//! `portico demo`: a self-contained show of the data path on loopback. Three demo upstreams, Portico in
//! front with health checks, retries and outlier detection, a load generator, and a line of live stats per
//! second. A third of the way in, one upstream fails; two thirds in, it recovers — and the client sees no
//! failed request.

pub mod load;
pub mod record;
pub mod upstreams;

use crate::config;
use crate::server::Server;
use std::sync::Arc;
use std::time::{Duration, Instant};
use upstreams::DemoUpstream;

/// The example remediation scripts, embedded so the demo needs no checkout.
const REMEDIATION_LIB: &str = include_str!("../../../examples/remediation/lib.sh");
const DRAIN_SLOWEST: &str = include_str!("../../../examples/remediation/drain-slowest.sh");

/// When things happened in the latency-fault act, for the closing timeline.
#[derive(Debug, Default)]
struct Timeline {
    fault: Option<Duration>,
    detected: Option<(Duration, String)>,
    drained: Option<Duration>,
    recovered: Option<Duration>,
}

/// Runs the demo for `duration` with `concurrency` client connections, printing to stdout.
///
/// Acts: calm (the detector warms up), beta crashes and comes back (failover, zero failed requests), then
/// gamma turns slow: the detector flags the latency, the example hook drains gamma through the admin API, and
/// latency recovers. The run ends with a summary and that timeline.
pub async fn run(duration: Duration, concurrency: usize) -> Result<(), String> {
    let mut upstreams = Vec::new();
    for (i, name) in ["alpha", "beta", "gamma"].iter().enumerate() {
        let latency = Duration::from_micros(200 + 100 * i as u64);
        upstreams.push(DemoUpstream::start(name, latency).await.map_err(|e| format!("demo upstream: {e}"))?);
    }
    let listen = free_or_ephemeral("127.0.0.1:8080");
    let admin = free_or_ephemeral("127.0.0.1:9901");
    let warmup = (duration.as_secs() / 4).clamp(5, 120);
    let scripts = tempfile_dir().map_err(|e| format!("demo scripts: {e}"))?;
    let hook = write_hook(&scripts).map_err(|e| format!("demo scripts: {e}"))?;
    let text = demo_config(&listen, &admin, &upstreams, warmup, hook.as_deref());
    let config = config::parse(&text).map_err(|issues| format!("demo config: {issues:?}"))?;
    let server = Server::start(config, Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
    let admin_addr = crate::admin::serve_tcp(server.clone(), admin.parse().map_err(|_| "admin address")?)
        .await
        .map_err(|e| format!("admin API: {e}"))?;
    let bound = server.bound_addresses().await;
    let web = *bound.get("web").ok_or("demo listener did not start")?;
    println!("Portico demo: proxy on http://{web}, admin on http://{admin_addr} (try: curl http://{web}/ or curl http://{admin_addr}/upstreams)");
    for u in &upstreams {
        println!("  upstream {:<6} {}", u.name, u.address);
    }
    println!("Plugins: router (builtin:router), lb (builtin:balancer, round_robin); anomaly detection: bundled LSTM, warm-up {warmup}s.");
    match &hook {
        Some(_) => println!("Remediation: the example drain-slowest.sh hook runs on critical upstream latency alerts."),
        None => println!("Remediation: skipped (the example hook needs sh, curl and python3 on PATH)."),
    }
    let (fail_at, recover_at, slow_at) = (duration * 30 / 100, duration * 45 / 100, duration * 60 / 100);
    println!(
        "Acts over {}s, {concurrency} connections: beta fails at {}s and recovers at {}s; gamma turns slow (+200 ms) at {}s.\n",
        duration.as_secs(),
        fail_at.as_secs(),
        recover_at.as_secs(),
        slow_at.as_secs()
    );
    let start = Instant::now();
    let timeline = Arc::new(parking_lot::Mutex::new(Timeline::default()));
    if let Some(watch) = server.watch.lock().await.as_ref() {
        let mut events = watch.detector.subscribe();
        let timeline = timeline.clone();
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                if let portico_anomaly::AnomalyEvent::Alert(change) = event {
                    println!(
                        "      !! anomaly {:?}: {} {} (score {:.2}, value {:.2}, expected {})",
                        change.transition,
                        change.alert.series,
                        change.alert.severity.as_str(),
                        change.alert.score,
                        change.alert.value,
                        change.alert.predicted.map_or("-".to_string(), |p| format!("{p:.2}"))
                    );
                    let mut t = timeline.lock();
                    if t.fault.is_some() && t.detected.is_none() && change.alert.series.contains("latency") {
                        t.detected = Some((start.elapsed(), change.alert.series.clone()));
                    }
                }
            }
        });
    }
    println!("{:>5} {:>8} {:>9} {:>9} {:>7}  served by", "t(s)", "req/s", "p50(ms)", "p99(ms)", "errors");

    let recorder = Arc::new(load::Recorder::default());
    let until = start + duration;
    let load = tokio::spawn(load::run(web, concurrency, until, recorder.clone()));
    let mut totals = load::Window::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut failed, mut recovered, mut slowed) = (false, false, false);
    let mut calm_p99: Vec<f64> = Vec::new();
    let gamma = upstreams[2].address.to_string();
    while Instant::now() < until {
        tick.tick().await;
        let elapsed = start.elapsed();
        if !failed && elapsed >= fail_at {
            failed = true;
            upstreams[1].set_down(true);
            println!("      -- beta goes down --");
        }
        if !recovered && elapsed >= recover_at {
            recovered = true;
            upstreams[1].set_down(false);
            println!("      -- beta is back --");
        }
        if !slowed && elapsed >= slow_at {
            slowed = true;
            upstreams[2].extra_latency_us.store(200_000, std::sync::atomic::Ordering::Relaxed);
            timeline.lock().fault = Some(elapsed);
            println!("      -- gamma turns slow (+200 ms) --");
        }
        let mut w = recorder.take();
        let errors = w.errors + w.statuses.iter().filter(|(s, _)| **s >= 500).map(|(_, n)| n).sum::<u64>();
        let served: Vec<String> = w.by_upstream.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let p99 = w.percentile_ms(99.0);
        println!(
            "{:>5} {:>8} {:>9.2} {:>9.2} {:>7}  {}",
            elapsed.as_secs(),
            w.answered(),
            w.percentile_ms(50.0),
            p99,
            errors,
            served.join(" ")
        );
        if !failed {
            calm_p99.push(p99);
        }
        {
            let drained = server
                .shared
                .snapshot
                .load()
                .upstreams
                .get("demo")
                .and_then(|u| u.endpoint(&gamma).map(|e| e.status(std::time::Instant::now())))
                == Some(crate::upstream::endpoint::EndpointStatus::Drained);
            let mut t = timeline.lock();
            if t.fault.is_some() && t.drained.is_none() && drained {
                t.drained = Some(elapsed);
                println!("      -- gamma drained by the remediation hook --");
            }
            let baseline = calm_p99.iter().cloned().fold(0.0, f64::max).max(1.0);
            if t.drained.is_some() && t.recovered.is_none() && p99 <= 2.0 * baseline {
                t.recovered = Some(elapsed);
            }
        }
        totals.latencies_us.append(&mut w.latencies_us);
        for (k, v) in w.statuses {
            *totals.statuses.entry(k).or_default() += v;
        }
        totals.errors += w.errors;
    }
    let _ = load.await;
    let answered = totals.answered();
    let failed_requests =
        totals.errors + totals.statuses.iter().filter(|(s, _)| **s >= 500).map(|(_, n)| n).sum::<u64>();
    println!(
        "\nSummary: {answered} requests, {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {failed_requests} failed.",
        answered as f64 / duration.as_secs_f64().max(1.0),
        totals.percentile_ms(50.0),
        totals.percentile_ms(99.0)
    );
    {
        let t = timeline.lock();
        let at = |d: Option<Duration>| d.map_or("—".to_string(), |d| format!("{:.0}s", d.as_secs_f64()));
        println!("Latency fault timeline:");
        println!("  fault injected   {}", at(t.fault));
        match &t.detected {
            Some((d, series)) => println!("  detected         {:.0}s  ({series})", d.as_secs_f64()),
            None => println!("  detected         —  (not within this run; try --duration 90s)"),
        }
        println!("  endpoint drained {}", at(t.drained));
        println!("  recovered        {}", at(t.recovered));
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&scripts);
    Ok(())
}

/// A private directory for the demo's hook scripts.
fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("portico-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Writes the example drain hook; `None` when the tools it uses are missing.
fn write_hook(dir: &std::path::Path) -> std::io::Result<Option<std::path::PathBuf>> {
    let have = |tool: &str| {
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
    };
    if !(have("sh") && have("curl") && have("python3")) {
        return Ok(None);
    }
    std::fs::write(dir.join("lib.sh"), REMEDIATION_LIB)?;
    let script = dir.join("drain-slowest.sh");
    std::fs::write(&script, DRAIN_SLOWEST)?;
    Ok(Some(script))
}

/// The preferred address if it is free, else a free port on loopback (a concrete one: the hook needs to
/// know the admin port before the server starts).
fn free_or_ephemeral(preferred: &str) -> String {
    match std::net::TcpListener::bind(preferred) {
        Ok(_) => preferred.to_string(),
        Err(_) => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_or_else(|_| "127.0.0.1:0".to_string(), |a| a.to_string()),
    }
}

fn demo_config(
    listen: &str,
    admin: &str,
    upstreams: &[DemoUpstream],
    warmup_ticks: u64,
    hook: Option<&std::path::Path>,
) -> String {
    let hook = hook.map_or(String::new(), |path| {
        format!(
            r#"
[[anomaly.hook]]
name = "drain-slowest"
on = {{ severity = "critical", series = "upstream.demo.latency_*" }}
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
# generator, so the per-callback deadline (wall-clock) gets headroom over the 10 ms default.
[[plugin]]
name = "router"
wasm = "builtin:router"
cpu_limit = "100ms"
config = {{ routes = [
  {{ match = {{ headers = {{ x-canary = "1" }} }}, upstream = "canary" }},
  {{ match = {{ path_prefix = "/" }}, upstream = "demo" }},
] }}

# Round robin keeps giving gamma its share when it turns slow, so the slowdown shows in latency and the
# remediation hook has something to fix. least_request would steer around gamma by itself (it gets well under
# 1 % of requests once slow), and the detector would rightly see nothing.
[[plugin]]
name = "lb"
wasm = "builtin:balancer"
cpu_limit = "100ms"
config = {{ policy = "round_robin" }}

# Portico watches its own series with the bundled LSTM; the demo shortens the warm-up to fit its run.
# The demo's series are young and noisy (everything shares one machine), so its thresholds are lower than
# the defaults (warning 0.7, critical 0.9, for 3 ticks).
[anomaly]
interval = "1s"
warmup = {warmup_ticks}
thresholds = {{ warning = 0.4, critical = 0.5, for_ticks = 2, resolve_ticks = 5 }}
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

/// `portico check --health URL`: GET the URL, succeed on 2xx (for keepalived's `vrrp_script`).
pub async fn probe_health(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let authority = uri.authority().ok_or_else(|| format!("{url}: no host"))?.to_string();
    let stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(&authority))
        .await
        .map_err(|_| format!("{authority}: connect timed out"))?
        .map_err(|e| format!("{authority}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = http::Request::get(path)
        .header("host", authority.as_str())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(2), sender.send_request(request))
        .await
        .map_err(|_| "health check timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        println!("healthy ({})", response.status());
        Ok(())
    } else {
        Err(format!("unhealthy: {}", response.status()))
    }
}
