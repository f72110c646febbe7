//! `portico anomaly record`: training and evaluation data from Portico itself. Each scenario starts the demo
//! upstreams and a real [`Server`] on loopback with an `[anomaly]` table, drives it with a paced load
//! generator whose rate wanders like real traffic, injects faults on a seeded schedule, and stops. The series
//! are what the proxy's own sampler (`observe.rs` via `watch.rs`) produced and the detector stored; at the
//! end the recorder exports the store's history (the `/anomaly/series?format=arrow` export) to
//! `<scenario>/series.arrow` while the load is still running, so the recording does not end in a shutdown.
//! `labels.csv` says which fault ran when and which series it should move.
//!
//! Faults: `latency_spike` (one endpoint, gamma, turns slow), `error_burst` (every endpoint answers a share
//! of requests with 500), `cpu_saturation` (busy threads inside the proxy process), `traffic_drop` and
//! `traffic_surge` (the load generator's rate changes), `slow_drift` (every endpoint's latency rises
//! linearly for minutes, then snaps back).

use crate::config;
use crate::demo::upstreams::DemoUpstream;
use crate::server::Server;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use portico_anomaly::eval::{write_labels, FaultLabel};
use portico_anomaly::model::SplitMix64;
use portico_anomaly::sample::now_ms;
use rand::Rng;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a recording failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The scenario name is not one of [`SCENARIOS`] or `all`.
    #[error("unknown scenario {0:?}: use one of {SCENARIOS:?} or all")]
    UnknownScenario(String),
    /// Writing or reading the output failed.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        error: std::io::Error,
    },
    /// Starting the demo upstreams or the proxy failed.
    #[error("starting the recording setup: {0}")]
    Setup(String),
    /// The recorded series could not be read back.
    #[error("reading the recorded series: {0}")]
    Series(#[from] portico_anomaly::AnomalyError),
}

/// Scenario names: `calm` has no fault, `mixed` one of each kind in seeded order, the others one fault.
pub const SCENARIOS: &[&str] =
    &["calm", "mixed", "latency_spike", "error_burst", "cpu_saturation", "traffic_drop", "traffic_surge", "slow_drift"];

/// Fault kinds in the order `mixed` shuffles them.
const KINDS: &[&str] =
    &["latency_spike", "error_burst", "cpu_saturation", "traffic_drop", "traffic_surge", "slow_drift"];

/// What `all` records: two training scenarios, then two held-back ones with other seeds.
const ALL: &[(&str, &str)] =
    &[("train-calm", "calm"), ("train-mixed", "mixed"), ("eval-mixed-1", "mixed"), ("eval-mixed-2", "mixed")];

/// Knobs of a recording.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// Output directory (one sub-directory per scenario plus `labels.csv` and `summary.json`).
    pub out: PathBuf,
    /// A name from [`SCENARIOS`] or `all`.
    pub scenario: String,
    /// Length of each scenario.
    pub duration: Duration,
    /// The detector's sampling interval (`[anomaly] interval`).
    pub interval: Duration,
    /// Seed of the fault schedule and load shape; scenario *i* of `all` uses `seed + i`.
    pub seed: u64,
    /// Mean request rate before faults and wander.
    pub rate: f64,
    /// Client connections of the load generator.
    pub concurrency: usize,
}

/// One scenario of the output, as listed in `summary.json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecordedScenario {
    /// Directory name under `out`.
    pub name: String,
    /// Which schedule ran.
    pub kind: String,
    /// Seed used.
    pub seed: u64,
    /// Ticks recorded.
    pub ticks: usize,
    /// Series recorded.
    pub series: Vec<String>,
    /// Faults injected.
    pub faults: usize,
    /// Requests the load generator got answers to.
    pub requests: u64,
}

/// A fault on the schedule, in seconds from the scenario start.
#[derive(Debug, Clone)]
struct Planned {
    kind: &'static str,
    start: f64,
    end: f64,
    magnitude: f64,
}

/// The faults of one scenario. `mixed` spends the first fifth calm (warm-up), then gives each kind a slot
/// (slow drift three) in seeded order; a fault fills the middle of its slot so calm stretches separate them.
fn plan(scenario: &str, duration: f64, rng: &mut SplitMix64) -> Vec<Planned> {
    let kinds: Vec<&'static str> = match scenario {
        "calm" => Vec::new(),
        "mixed" => {
            let mut k = KINDS.to_vec();
            for i in (1..k.len()).rev() {
                k.swap(i, rng.below(i + 1));
            }
            k
        }
        other => KINDS.iter().copied().filter(|k| *k == other).collect(),
    };
    let weight = |k: &str| if k == "slow_drift" { 3.0 } else { 1.0 };
    let warm = if scenario == "mixed" { 0.2 } else { 0.4 } * duration;
    let unit = (duration - warm) / kinds.iter().map(|k| weight(k)).sum::<f64>().max(1.0);
    let mut at = warm;
    let mut out = Vec::new();
    for kind in kinds {
        let slot = unit * weight(kind);
        let length = if kind == "slow_drift" { 0.8 } else { 0.4 + 0.2 * rng.next_f64() } * slot;
        let start = at + 0.1 * slot + (slot * 0.9 - length) * 0.3 * rng.next_f64();
        let m = rng.next_f64();
        let magnitude = match kind {
            "latency_spike" => 60.0 + 190.0 * m, // extra ms on gamma
            "error_burst" => 0.05 + 0.35 * m,    // share of requests answered 500
            "cpu_saturation" => 2.0,             // busy threads (2 cores)
            "traffic_drop" => 0.1 + 0.4 * m,     // rate factor
            "traffic_surge" => 2.0 + m,          // rate factor
            _ => 0.5 + 2.0 * m,                  // drift: latency +50..250 % at the end of the ramp
        };
        out.push(Planned { kind, start, end: start + length, magnitude });
        at += slot;
    }
    out
}

/// The series a fault is expected to move (listener `web`, upstream `demo`).
fn affected(kind: &str) -> Vec<String> {
    let lat = |qs: &[&str]| -> Vec<String> {
        ["listener.web", "upstream.demo"]
            .iter()
            .flat_map(|s| qs.iter().map(move |q| format!("{s}.latency_{q}")))
            .collect()
    };
    match kind {
        "latency_spike" => lat(&["p95", "p99"]),
        "error_burst" => vec!["listener.web.error_ratio".into(), "upstream.demo.error_ratio".into()],
        "cpu_saturation" => {
            let mut v = vec!["process.cpu".to_string(), "host.cpu".to_string()];
            v.extend(lat(&["p50", "p95", "p99"]));
            v
        }
        "traffic_drop" | "traffic_surge" => {
            vec!["listener.web.qps".into(), "upstream.demo.qps".into(), "process.cpu".into(), "host.cpu".into()]
        }
        _ => lat(&["p50", "p95", "p99"]),
    }
}

/// Records the scenario(s) into `opts.out`; blocks the calling task for `duration` per scenario.
pub async fn record(opts: &RecordOptions) -> Result<Vec<RecordedScenario>, RecordError> {
    let list: Vec<(String, String)> = if opts.scenario == "all" {
        ALL.iter().map(|(n, k)| (n.to_string(), k.to_string())).collect()
    } else if SCENARIOS.contains(&opts.scenario.as_str()) {
        vec![(opts.scenario.clone(), opts.scenario.clone())]
    } else {
        return Err(RecordError::UnknownScenario(opts.scenario.clone()));
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| RecordError::Io { path, error }
    };
    std::fs::create_dir_all(&opts.out).map_err(io(&opts.out))?;
    let mut labels = Vec::new();
    let mut done = Vec::new();
    for (i, (name, kind)) in list.iter().enumerate() {
        let seed = opts.seed.wrapping_add(i as u64);
        println!("recording {name} ({kind}, seed {seed}, {}s)", opts.duration.as_secs());
        let (scenario, mut faults) = record_one(opts, name, kind, seed).await?;
        labels.append(&mut faults);
        done.push(scenario);
        // Written after every scenario so an interrupted `all` keeps what it finished.
        write_labels(&opts.out.join("labels.csv"), &labels)?;
        let summary = serde_json::json!({
            "interval_ms": opts.interval.as_millis() as u64,
            "duration_s": opts.duration.as_secs_f64(),
            "rate": opts.rate,
            "concurrency": opts.concurrency,
            "scenarios": done,
        });
        let path = opts.out.join("summary.json");
        std::fs::write(&path, format!("{summary:#}\n")).map_err(io(&path))?;
    }
    Ok(done)
}

async fn record_one(
    opts: &RecordOptions,
    name: &str,
    kind: &str,
    seed: u64,
) -> Result<(RecordedScenario, Vec<FaultLabel>), RecordError> {
    let dir = opts.out.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|error| RecordError::Io { path: dir.clone(), error })?;
    }
    let mut rng = SplitMix64::new(seed);
    let schedule = plan(kind, opts.duration.as_secs_f64(), &mut rng);
    let mut upstreams = Vec::new();
    for (i, n) in ["alpha", "beta", "gamma"].iter().enumerate() {
        let base = Duration::from_micros(1_500 + 700 * i as u64);
        let u = DemoUpstream::start(n, base).await.map_err(|e| RecordError::Setup(format!("upstream {n}: {e}")))?;
        u.jitter_us.store(1_500, Ordering::Relaxed);
        upstreams.push(u);
    }
    let bases: Vec<u64> = (0..3).map(|i| 1_500 + 700 * i + 750).collect(); // base + mean jitter, µs
    let text = record_config(opts.interval, &upstreams);
    let config = config::parse(&text).map_err(|issues| RecordError::Setup(format!("config: {issues:?}")))?;
    let server = Server::start(config, Duration::from_secs(2)).await.map_err(|e| RecordError::Setup(e.to_string()))?;
    let web = *server.bound_addresses().await.get("web").ok_or(RecordError::Setup("listener web".into()))?;

    let rate = Arc::new(AtomicU64::new(opts.rate.to_bits()));
    let answered = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + opts.duration;
    let stop_load = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(paced_load(web, opts.concurrency, stop_load.clone(), rate.clone(), answered.clone()));
    let burn_stop = Arc::new(AtomicBool::new(true));
    let mut burners: Vec<std::thread::JoinHandle<()>> = Vec::new();
    let mut labels: Vec<FaultLabel> = Vec::new();
    let mut open: Vec<Option<usize>> = vec![None; schedule.len()];
    // Load shape: a slow wave, a faster one, and an AR(1) wobble, all seeded.
    let (period, phase) = (90.0 + 120.0 * rng.next_f64(), std::f64::consts::TAU * rng.next_f64());
    let mut wobble = 0.0f64;
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    while Instant::now() < until {
        ticker.tick().await;
        let t = start.elapsed().as_secs_f64();
        wobble = 0.995 * wobble + 0.01 * (rng.next_f64() * 2.0 - 1.0);
        let shape = 1.0
            + 0.2 * (std::f64::consts::TAU * t / period + phase).sin()
            + 0.05 * (std::f64::consts::TAU * t / 13.0).sin()
            + wobble;
        let (mut factor, mut spike_ms, mut errors, mut drift, mut burn) = (1.0, 0.0, 0.0, 0.0, 0usize);
        for (i, f) in schedule.iter().enumerate() {
            let active = t >= f.start && t < f.end;
            match (active, open[i]) {
                (true, None) => {
                    open[i] = Some(labels.len());
                    labels.push(FaultLabel {
                        scenario: name.to_string(),
                        kind: f.kind.to_string(),
                        start_tick: 0,
                        end_tick: 0,
                        start_ms: now_ms(),
                        end_ms: i64::MAX,
                        magnitude: f.magnitude,
                        series: affected(f.kind),
                    });
                    println!("  {t:6.1}s {} starts (magnitude {:.2})", f.kind, f.magnitude);
                }
                (false, Some(l)) if labels[l].end_ms == i64::MAX => {
                    labels[l].end_ms = now_ms();
                    println!("  {t:6.1}s {} ends", f.kind);
                }
                _ => {}
            }
            if !active {
                continue;
            }
            match f.kind {
                "latency_spike" => spike_ms = f.magnitude,
                "error_burst" => errors = f.magnitude,
                "cpu_saturation" => burn = f.magnitude as usize,
                "traffic_drop" | "traffic_surge" => factor = f.magnitude,
                _ => drift = f.magnitude * ((t - f.start) / (f.end - f.start)).min(1.0),
            }
        }
        rate.store((opts.rate * shape.max(0.2) * factor).to_bits(), Ordering::Relaxed);
        for (i, u) in upstreams.iter().enumerate() {
            let spike = if i == 2 { spike_ms * 1000.0 } else { 0.0 };
            u.extra_latency_us.store((spike + drift * bases[i] as f64) as u64, Ordering::Relaxed);
            u.error_per_mille.store((errors * 1000.0) as u64, Ordering::Relaxed);
        }
        if burn > 0 && burners.is_empty() {
            burn_stop.store(false, Ordering::Relaxed);
            burners = (0..burn).filter_map(|_| spawn_burner(burn_stop.clone())).collect();
        } else if burn == 0 && !burners.is_empty() {
            burn_stop.store(true, Ordering::Relaxed);
            for b in burners.drain(..) {
                let _ = tokio::task::spawn_blocking(move || b.join()).await;
            }
        }
    }
    burn_stop.store(true, Ordering::Relaxed);
    for b in burners.drain(..) {
        let _ = tokio::task::spawn_blocking(move || b.join()).await;
    }
    let end = now_ms();
    for l in &mut labels {
        l.end_ms = l.end_ms.min(end);
    }
    // Export the detector's in-memory history (what `/anomaly/series?format=arrow` serves) while the load still
    // runs, so the recording ends with normal traffic rather than with the shutdown, then stop everything.
    let detector = server.watch.lock().await.as_ref().map(|w| w.detector.clone());
    let detector = detector.ok_or_else(|| RecordError::Setup("anomaly detection did not start".into()))?;
    let path = dir.join("series.arrow");
    let writing = path.clone();
    let table = tokio::task::spawn_blocking(move || -> Result<_, portico_anomaly::AnomalyError> {
        detector.flush()?;
        let batches = portico_anomaly::store::read_ipc_stream(&detector.export_arrow(0)?)?;
        std::fs::create_dir_all(&dir).map_err(|e| portico_anomaly::AnomalyError::io(&dir, e))?;
        portico_anomaly::store::write_ipc_file(&writing, &batches)?;
        portico_anomaly::store::batches_to_table(&batches)
    })
    .await
    .map_err(|e| RecordError::Setup(format!("export thread: {e}")))??;
    stop_load.store(true, Ordering::Relaxed);
    let _ = load.await;
    server.shutdown().await;
    let tick_at = |ms: i64| table.timestamps.iter().position(|&t| t >= ms).unwrap_or(table.timestamps.len());
    for l in &mut labels {
        l.start_tick = tick_at(l.start_ms);
        l.end_tick = tick_at(l.end_ms).max(l.start_tick);
    }
    let scenario = RecordedScenario {
        name: name.to_string(),
        kind: kind.to_string(),
        seed,
        ticks: table.timestamps.len(),
        series: table.columns.keys().cloned().collect(),
        faults: labels.len(),
        requests: answered.load(Ordering::Relaxed),
    };
    println!("  {} ticks of {} series, {} requests", scenario.ticks, scenario.series.len(), scenario.requests);
    Ok((scenario, labels))
}

/// A thread that spins until `stop`: CPU saturation inside the proxy process, off the tokio workers.
fn spawn_burner(stop: Arc<AtomicBool>) -> Option<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("portico-record-burn".into())
        .spawn(move || {
            let mut x = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for i in 0..10_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
                }
            }
        })
        .ok()
}

/// Open-loop load: each connection sends at `rate / concurrency` with exponential gaps (Poisson arrivals),
/// re-reading the rate every request, and reconnects now and then like real clients.
async fn paced_load(
    target: SocketAddr,
    concurrency: usize,
    stop: Arc<AtomicBool>,
    rate: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
) {
    let workers = (0..concurrency.max(1)).map(|_| {
        let (rate, answered, stop) = (rate.clone(), answered.clone(), stop.clone());
        tokio::spawn(async move {
            let per = concurrency.max(1) as f64;
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let Ok(stream) = tokio::net::TcpStream::connect(target).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
                    continue;
                };
                tokio::spawn(conn);
                let reuse = rand::thread_rng().gen_range(20..200);
                for _ in 0..reuse {
                    let r = f64::from_bits(rate.load(Ordering::Relaxed)).max(0.1) / per;
                    let u: f64 = rand::thread_rng().gen_range(1e-6..1.0);
                    next += Duration::from_secs_f64((-u.ln() / r).min(5.0));
                    let now = Instant::now();
                    if next > now {
                        tokio::time::sleep_until(next.into()).await;
                    } else if now - next > Duration::from_secs(1) {
                        next = now; // fell far behind (slow answers): do not fire a catch-up burst
                    }
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(request) = http::Request::get("/").header("host", "demo.local").body(Empty::<Bytes>::new())
                    else {
                        return;
                    };
                    match sender.send_request(request).await {
                        Ok(response) => {
                            let _ = response.into_body().collect().await;
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => break,
                    }
                }
            }
        })
    });
    futures_util::future::join_all(workers).await;
}

fn record_config(interval: Duration, upstreams: &[DemoUpstream]) -> String {
    let endpoints: Vec<String> = upstreams.iter().map(|u| format!("\"{}\"", u.address)).collect();
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"
upstream = "demo"

# The detector runs as in production; the recorder exports its store's history as Arrow IPC at the end.
[anomaly]
interval = "{}ms"

[[upstream]]
name = "demo"
endpoints = [{}]
retries = 0
health_check = {{ path = "/health", interval = "1s", timeout = "500ms", unhealthy_threshold = 3, healthy_threshold = 2 }}
"#,
        interval.as_millis().max(1),
        endpoints.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_schedules_every_kind_once_without_overlap_after_the_warm_up() {
        let mut rng = SplitMix64::new(7);
        let p = plan("mixed", 360.0, &mut rng);
        let mut kinds: Vec<&str> = p.iter().map(|f| f.kind).collect();
        kinds.sort_unstable();
        let mut want = KINDS.to_vec();
        want.sort_unstable();
        assert_eq!(kinds, want);
        let mut spans: Vec<(f64, f64)> = p.iter().map(|f| (f.start, f.end)).collect();
        spans.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(spans[0].0 >= 72.0, "warm-up stays calm: {spans:?}");
        for w in spans.windows(2) {
            assert!(w[0].1 + 5.0 < w[1].0, "calm between faults: {spans:?}");
        }
        assert!(spans.iter().all(|s| s.1 <= 360.0 && s.0 < s.1));
        assert!(plan("calm", 360.0, &mut rng).is_empty());
    }
}
