//! `portico demo`: a self-contained show of the data path on loopback. Three demo upstreams, Portico in
//! front with health checks, retries, outlier detection and anomaly detection, a load generator, and a line of
//! live stats per second. In the full scenario one upstream crashes and comes back (no failed request), then
//! another turns slow: the detector opens one incident with that endpoint as its cause, the example hook
//! drains it, and latency recovers. Between the two, a faulty release of the router rolls out to a share of the
//! requests and is rolled back by its guards within seconds ([`rollout_act`]). The calm scenario runs the same setup with no fault, to check that nothing
//! is reported.

pub mod load;
pub mod record;
mod rollout_act;
mod setup;
mod story;
pub mod upstreams;

use crate::config;
use crate::server::Server;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use story::Story;
use upstreams::DemoUpstream;

/// Which acts the demo plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// A calm start, beta crashes and recovers, a faulty router release is rolled out and rolled back, gamma
    /// turns slow.
    Full,
    /// The same setup with no fault at all: the run should end with `incidents: 0`.
    Calm,
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(Scenario::Full),
            "calm" => Ok(Scenario::Calm),
            other => Err(format!("unknown scenario {other:?} (full or calm)")),
        }
    }
}

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How long the load runs.
    pub duration: Duration,
    /// Client connections.
    pub concurrency: usize,
    /// Which acts.
    pub scenario: Scenario,
    /// Where Portico's own log lines go (printed at the start), `None` when they go to the terminal.
    pub log_file: Option<std::path::PathBuf>,
}

/// Runs the demo, printing to stdout.
pub async fn run(options: DemoOptions) -> Result<(), String> {
    let DemoOptions { duration, concurrency, scenario, log_file } = options;
    let mut upstreams = Vec::new();
    for (i, name) in ["alpha", "beta", "gamma"].iter().enumerate() {
        let latency = Duration::from_micros(200 + 100 * i as u64);
        upstreams.push(DemoUpstream::start(name, latency).await.map_err(|e| format!("demo upstream: {e}"))?);
    }
    let listen = setup::free_or_ephemeral("127.0.0.1:8080");
    let admin = setup::free_or_ephemeral("127.0.0.1:9901");
    let warmup = (duration.as_secs() / 4).clamp(5, 120);
    let scripts = setup::scratch_dir().map_err(|e| format!("demo scripts: {e}"))?;
    let hook = setup::write_hook(&scripts).map_err(|e| format!("demo scripts: {e}"))?;
    let text = setup::config(&listen, &admin, &upstreams, warmup, hook.as_deref());
    let config = config::parse(&text).map_err(|issues| format!("demo config: {issues:?}"))?;
    let server = Server::start(config, Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
    let admin_addr = crate::admin::serve_tcp(server.clone(), admin.parse().map_err(|_| "admin address")?)
        .await
        .map_err(|e| format!("admin API: {e}"))?;
    let bound = server.bound_addresses().await;
    let web = *bound.get("web").ok_or("demo listener did not start")?;
    println!("Portico demo: proxy on http://{web}, admin on http://{admin_addr}");
    println!("  live dashboard: http://{admin_addr}/dashboard   (or: curl http://{admin_addr}/anomaly/incidents)");
    if let Some(path) = &log_file {
        println!("  Portico's log: {} (--verbose prints it here instead)", path.display());
    }
    let names: BTreeMap<String, String> =
        upstreams.iter().map(|u| (u.address.to_string(), u.name.to_string())).collect();
    for u in &upstreams {
        println!("  upstream {:<6} {}", u.name, u.address);
    }
    println!("Plugins: router (builtin:router), lb (builtin:balancer, round_robin); anomaly detection warms up for {warmup}s.");
    match &hook {
        Some(_) => {
            println!("Remediation: the example drain-endpoint.sh hook drains an endpoint an incident names as cause.")
        }
        None => println!("Remediation: skipped (the example hook needs sh, curl and python3 on PATH)."),
    }
    let (fail_at, recover_at, slow_at) = (duration * 30 / 100, duration * 45 / 100, duration * 60 / 100);
    // Between beta's return and gamma's slowdown: the rollout meets full traffic, so its guards decide in a
    // second or two, and it is over before the latency act.
    let release_at = duration * 50 / 100;
    match scenario {
        Scenario::Full => println!(
            "Acts over {}s, {concurrency} connections: beta fails at {}s and recovers at {}s; router v2, which breaks /checkout, rolls out to {} % at {}s; gamma turns slow (+200 ms) at {}s.\n",
            duration.as_secs(),
            fail_at.as_secs(),
            recover_at.as_secs(),
            rollout_act::PERCENT,
            release_at.as_secs(),
            slow_at.as_secs()
        ),
        Scenario::Calm => {
            println!("Calm scenario over {}s, {concurrency} connections: no fault is injected.\n", duration.as_secs())
        }
    }
    let story = Arc::new(Story::new(names));
    if let Some(watch) = server.watch.lock().await.as_ref() {
        let mut events = watch.detector.subscribe();
        let story = story.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => story.on_event(&event),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
    println!("{:>5} {:>8} {:>9} {:>9} {:>7}  served by", "t(s)", "req/s", "p50(ms)", "p99(ms)", "errors");

    let recorder = Arc::new(load::Recorder::default());
    let until = Instant::now() + duration;
    let load = tokio::spawn(load::run(web, concurrency, until, recorder.clone()));
    let mut totals = load::Window::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let faults = scenario == Scenario::Full;
    let (mut failed, mut recovered, mut slowed, mut released) = (!faults, !faults, !faults, !faults);
    let mut act: Option<rollout_act::RolloutAct> = None;
    let mut calm_p99: Vec<f64> = Vec::new();
    let gamma = upstreams[2].address.to_string();
    while Instant::now() < until {
        tick.tick().await;
        let elapsed = story.elapsed();
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
            story.fault();
            println!("      -- gamma turns slow (+200 ms) --");
        }
        if !released && elapsed >= release_at {
            released = true;
            match rollout_act::RolloutAct::start(&server, elapsed).await {
                Ok(started) => {
                    act = Some(started);
                    println!(
                        "      -- router v2 rolls out to {} % of requests (it breaks /checkout) --",
                        rollout_act::PERCENT
                    );
                }
                Err(e) => println!("      -- router v2 could not be rolled out: {e} --"),
            }
        }
        if let Some(line) = act.as_mut().and_then(|a| a.before_window(elapsed)) {
            println!("{line}");
        }
        let mut w = recorder.take();
        let errors = w.errors + w.statuses.iter().filter(|(s, _)| **s >= 500).map(|(_, n)| n).sum::<u64>();
        if let Some(act) = act.as_mut() {
            act.window(errors);
        }
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
        if elapsed < fail_at || !faults {
            calm_p99.push(p99);
        }
        let drained = server
            .shared
            .snapshot
            .load()
            .upstreams
            .get("demo")
            .and_then(|u| u.endpoint(&gamma).map(|e| e.status(Instant::now())))
            == Some(crate::upstream::endpoint::EndpointStatus::Drained);
        if drained && story.awaiting_drain() {
            story.drained();
            println!("      -- gamma drained by the remediation hook --");
        }
        story.latency(p99, calm_p99.iter().cloned().fold(0.0, f64::max).max(1.0));
        totals.latencies_us.append(&mut w.latencies_us);
        for (k, v) in w.statuses {
            *totals.statuses.entry(k).or_default() += v;
        }
        totals.errors += w.errors;
    }
    let _ = load.await;
    // Let the detector finish the last ticks so the summary holds every incident.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let actions = match server.watch.lock().await.as_ref() {
        Some(watch) => watch.detector.actions(),
        None => Vec::new(),
    };
    let answered = totals.answered();
    let failed_requests =
        totals.errors + totals.statuses.iter().filter(|(s, _)| **s >= 500).map(|(_, n)| n).sum::<u64>();
    let by_release =
        act.as_ref().map_or(String::new(), |a| format!(" ({} by router v2 during its rollout)", a.failed()));
    println!(
        "\nSummary: {answered} requests, {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {failed_requests} failed{by_release}.",
        answered as f64 / duration.as_secs_f64().max(1.0),
        totals.percentile_ms(50.0),
        totals.percentile_ms(99.0)
    );
    println!("Dashboard was at http://{admin_addr}/dashboard.");
    if let Some(act) = &act {
        act.summary();
    }
    story.summary(faults, &actions);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&scripts);
    Ok(())
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
