//! Scenario generator, trainer and evaluator for the bundled model.
//!
//! Generates proxy-like series (request rate with "daily" and minute seasonality, heavy-tailed
//! latency quantiles, error ratio, CPU, connections) with labelled injected faults, trains the
//! forecaster on fault-free scenarios, and evaluates precision / recall / detection delay on
//! held-back scenarios generated with a different seed.
//!
//! ```text
//! cargo run --release -p portico-anomaly --example gen_scenarios -- all --out /tmp/scen --model models/portico-lstm.safetensors
//! cargo run -p portico-anomaly --example gen_scenarios -- gen --out /tmp/scen        # CSVs only
//! cargo run -p portico-anomaly --example gen_scenarios -- eval --model models/portico-lstm.safetensors [--drift-h 0]
//! ```
//! Data is synthetic, pending recordings of Portico under scripted load.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use portico_anomaly::alert::{AlertEngine, Transition};
use portico_anomaly::config::Thresholds;
use portico_anomaly::model::SplitMix64;
use portico_anomaly::score::{ScoreParams, Scorer};
use portico_anomaly::{Forecaster, Tick, TrainOptions};

const SERIES: &[&str] = &[
    "listener.web.qps",
    "upstream.app.latency_p50",
    "upstream.app.latency_p99",
    "upstream.app.error_ratio",
    "process.cpu",
    "host.cpu",
    "proxy.active_connections",
];

#[derive(Clone, Debug)]
struct Fault {
    kind: &'static str,
    start: usize,
    end: usize,
    series: Vec<&'static str>,
}

struct Scenario {
    values: BTreeMap<&'static str, Vec<f64>>,
    faults: Vec<Fault>,
    len: usize,
}

const KINDS: &[&str] =
    &["latency_spike", "error_burst", "cpu_saturation", "traffic_drop", "traffic_surge", "slow_drift"];

fn affected(kind: &str) -> Vec<&'static str> {
    match kind {
        "latency_spike" => vec!["upstream.app.latency_p50", "upstream.app.latency_p99", "proxy.active_connections"],
        "error_burst" => vec!["upstream.app.error_ratio"],
        "cpu_saturation" => vec!["process.cpu", "host.cpu", "upstream.app.latency_p99", "upstream.app.latency_p50"],
        "traffic_drop" | "traffic_surge" => {
            vec!["listener.web.qps", "process.cpu", "host.cpu", "proxy.active_connections"]
        }
        _ => vec!["upstream.app.latency_p99", "upstream.app.latency_p50"],
    }
}

fn generate(seed: u64, len: usize, n_faults: usize) -> Scenario {
    let mut r = SplitMix64::new(seed);
    let base_qps = 100.0 + 1900.0 * r.next_f64();
    let day = 1800.0 + 3600.0 * r.next_f64(); // compressed "day" so scenarios show the cycle
    let phase = std::f64::consts::TAU * r.next_f64();
    let lat_base = 2.0 + 40.0 * r.next_f64(); // ms
    let err_base = 0.0005 + 0.01 * r.next_f64();
    let bg_cpu = 5.0 + 15.0 * r.next_f64();
    let cpu_per_req = 0.01 + 0.03 * r.next_f64();

    // Non-overlapping faults with normal gaps between them; first 800 ticks stay clean (warmup).
    let mut faults = Vec::new();
    let mut t = 800 + r.below(400);
    for _ in 0..n_faults {
        let kind = KINDS[r.below(KINDS.len())];
        let dur = match kind {
            "slow_drift" => 600 + r.below(300),
            "error_burst" => 20 + r.below(70),
            "latency_spike" => 30 + r.below(90),
            _ => 60 + r.below(140),
        };
        if t + dur + 300 >= len {
            break;
        }
        faults.push(Fault { kind, start: t, end: t + dur, series: affected(kind) });
        t += dur + 600 + r.below(900);
    }
    let mag: Vec<f64> = faults.iter().map(|_| r.next_f64()).collect();

    let mut v: BTreeMap<&'static str, Vec<f64>> = SERIES.iter().map(|s| (*s, Vec::with_capacity(len))).collect();
    let mut lat_ar = 0.0f64;
    let mut qps_ar = 0.0f64;
    for i in 0..len {
        let tf = i as f64;
        let seasonal = 1.0 + 0.35 * (std::f64::consts::TAU * tf / day + phase).sin();
        let minute = 1.0 + 0.06 * (std::f64::consts::TAU * tf / 60.0).sin();
        qps_ar = 0.9 * qps_ar + 0.03 * r.normal();
        let mut qps_mult = 1.0;
        let mut lat_mult = 1.0;
        let mut err_add = 0.0;
        let mut cpu_sat = false;
        for (f, m) in faults.iter().zip(&mag) {
            if i < f.start || i >= f.end {
                continue;
            }
            match f.kind {
                "latency_spike" => lat_mult *= 1.5 + 6.0 * m,
                "error_burst" => err_add += 0.01 + 0.25 * m,
                "cpu_saturation" => cpu_sat = true,
                "traffic_drop" => qps_mult *= 0.1 + 0.6 * m,
                "traffic_surge" => qps_mult *= 1.5 + 3.0 * m,
                _ => lat_mult *= 1.0 + (0.5 + 2.0 * m) * ((i - f.start) as f64 / 600.0).min(1.0),
            }
        }
        let mean_qps = base_qps * seasonal * minute * (1.0 + qps_ar) * qps_mult;
        let qps = (mean_qps + mean_qps.sqrt() * r.normal()).max(0.0);
        lat_ar = 0.95 * lat_ar + 0.05 * r.normal();
        let load = (qps / base_qps).max(0.05);
        let mut lat = lat_base * (1.0 + 0.15 * (load - 1.0)).max(0.5) * (lat_ar * 0.5).exp() * lat_mult;
        if cpu_sat {
            lat *= 2.0;
        }
        let p50 = lat * (0.08 * r.normal()).exp();
        // Heavy tail: lognormal noise plus rare single-tick outliers that are *normal* behaviour.
        let mut p99 = lat * 4.0 * (0.25 * r.normal()).exp();
        if r.next_f64() < 0.004 {
            p99 *= 1.5 + 2.0 * r.next_f64();
        }
        let errs = (err_base * qps + (err_base * qps).sqrt() * r.normal()).max(0.0);
        let err_ratio = if qps > 0.0 { (errs / qps + err_add).min(1.0) } else { err_add };
        let mut pcpu = (2.0 + cpu_per_req * qps * (1.0 + 0.05 * r.normal())).clamp(0.0, 100.0);
        if cpu_sat {
            pcpu = 96.0 + 4.0 * r.next_f64();
        }
        let hcpu = (bg_cpu + pcpu / 2.0 + 2.0 * r.normal()).clamp(0.0, 100.0);
        let conns = (qps * (p50 / 1000.0) * 20.0 + 10.0 + 3.0 * r.normal()).max(0.0);
        for (name, val) in [
            ("listener.web.qps", qps),
            ("upstream.app.latency_p50", p50),
            ("upstream.app.latency_p99", p99),
            ("upstream.app.error_ratio", err_ratio),
            ("process.cpu", pcpu),
            ("host.cpu", hcpu),
            ("proxy.active_connections", conns.round()),
        ] {
            if let Some(col) = v.get_mut(name) {
                col.push(val);
            }
        }
    }
    Scenario { values: v, faults, len }
}

fn write_csv(path: &Path, s: &Scenario, with_labels: bool) {
    let mut out = String::from("timestamp");
    for name in SERIES {
        out.push(',');
        out.push_str(name);
    }
    if with_labels {
        out.push_str(",label,fault");
    }
    out.push('\n');
    for i in 0..s.len {
        write!(out, "{}", 1_700_000_000_000i64 + i as i64 * 1000).unwrap();
        for name in SERIES {
            write!(out, ",{:.6}", s.values[name][i]).unwrap();
        }
        if with_labels {
            let f = s.faults.iter().find(|f| i >= f.start && i < f.end);
            write!(out, ",{},{}", u8::from(f.is_some()), f.map(|f| f.kind).unwrap_or("")).unwrap();
        }
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

#[derive(Default, Debug)]
struct Eval {
    alerts: usize,
    true_alerts: usize,
    faults: usize,
    detected: usize,
    delays: Vec<usize>,
    per_kind: BTreeMap<&'static str, (usize, usize)>,
    normal_ticks: usize,
    false_alerts: usize,
}

const GRACE: usize = 60;

fn evaluate(model: &Arc<Forecaster>, scenarios: &[Scenario], warmup: u32, params: ScoreParams) -> Eval {
    let mut ev = Eval::default();
    for s in scenarios {
        let mut scorer = Scorer::with_params(model.clone(), warmup, params);
        let mut engine = AlertEngine::new(Thresholds::default());
        let mut starts: Vec<(usize, String)> = Vec::new();
        for i in 0..s.len {
            let mut tick = Tick::new(i as i64);
            for name in SERIES {
                tick.set(*name, s.values[name][i]);
            }
            for sc in scorer.score_tick(&tick).unwrap() {
                if let Some(ch) = engine.update(&sc) {
                    if ch.transition == Transition::Fired {
                        starts.push((i, ch.alert.series.clone()));
                    }
                }
            }
        }
        let in_fault = |i: usize| s.faults.iter().any(|f| i >= f.start && i < f.end + GRACE);
        ev.normal_ticks += (warmup as usize..s.len).filter(|&i| !in_fault(i)).count();
        for (i, _) in &starts {
            ev.alerts += 1;
            if in_fault(*i) {
                ev.true_alerts += 1;
            } else {
                ev.false_alerts += 1;
            }
        }
        for f in &s.faults {
            ev.faults += 1;
            let hit = starts
                .iter()
                .filter(|(i, ser)| *i >= f.start && *i < f.end + GRACE && f.series.contains(&ser.as_str()))
                .map(|(i, _)| *i)
                .min();
            let e = ev.per_kind.entry(f.kind).or_default();
            e.1 += 1;
            if let Some(i) = hit {
                ev.detected += 1;
                e.0 += 1;
                ev.delays.push(i - f.start);
            }
        }
    }
    ev
}

fn median(v: &[usize]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_unstable();
    v[v.len() / 2] as f64
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = args.first().cloned().unwrap_or_else(|| "all".into());
    let get = |flag: &str, default: &str| -> String {
        args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.into())
    };
    let out = PathBuf::from(get("--out", "/tmp/portico-scenarios"));
    let model_path = PathBuf::from(get("--model", "models/portico-lstm.safetensors"));
    let epochs: usize = get("--epochs", "12").parse().unwrap();
    let n_train: u64 = get("--train-scenarios", "12").parse().unwrap();
    let n_eval: u64 = get("--eval-scenarios", "10").parse().unwrap();
    let len: usize = get("--len", "7200").parse().unwrap();
    let train_seed = 1_000u64;
    let eval_seed = 9_000u64;

    std::fs::create_dir_all(out.join("train")).unwrap();
    std::fs::create_dir_all(out.join("eval")).unwrap();
    let train_sc: Vec<Scenario> = (0..n_train).map(|i| generate(train_seed + i, len, 0)).collect();
    let eval_sc: Vec<Scenario> = (0..n_eval).map(|i| generate(eval_seed + i, len, 6)).collect();
    let mut train_files = Vec::new();
    for (i, s) in train_sc.iter().enumerate() {
        let p = out.join("train").join(format!("normal-{i:02}.csv"));
        write_csv(&p, s, false);
        train_files.push(p);
    }
    for (i, s) in eval_sc.iter().enumerate() {
        write_csv(&out.join("eval").join(format!("scenario-{i:02}.csv")), s, true);
        // Univariate file for score_csv demos: the p99 latency with labels.
        let mut u = String::from("timestamp,value,label\n");
        for t in 0..s.len {
            let lab =
                s.faults.iter().any(|f| t >= f.start && t < f.end && f.series.contains(&"upstream.app.latency_p99"));
            writeln!(u, "{},{:.6},{}", t, s.values["upstream.app.latency_p99"][t], u8::from(lab)).unwrap();
        }
        std::fs::write(out.join("eval").join(format!("scenario-{i:02}-latency_p99.csv")), u).unwrap();
    }
    println!("wrote {} training and {} evaluation scenarios to {}", train_sc.len(), eval_sc.len(), out.display());
    if cmd == "gen" {
        return;
    }
    let mut params = ScoreParams::default();
    params.drift_h = get("--drift-h", &params.drift_h.to_string()).parse().unwrap();
    params.drift_k = get("--drift-k", &params.drift_k.to_string()).parse().unwrap();
    if cmd == "eval" {
        // Score an existing model on the held-back scenarios without training (e.g. to compare scoring tunings).
        let model = Arc::new(Forecaster::load(&model_path).unwrap());
        let ev = evaluate(&model, &eval_sc, 120, params);
        let fa_per_hour = ev.false_alerts as f64 / (ev.normal_ticks as f64 / 3600.0);
        println!(
            "precision {:.3} ({} alerts, {} false, {fa_per_hour:.2}/h) recall {:.3} ({}/{}) median delay {} per kind {:?}",
            ev.true_alerts as f64 / ev.alerts.max(1) as f64,
            ev.alerts,
            ev.false_alerts,
            ev.detected as f64 / ev.faults.max(1) as f64,
            ev.detected,
            ev.faults,
            median(&ev.delays),
            ev.per_kind
        );
        return;
    }

    let opts = TrainOptions {
        epochs,
        description: format!(
            "Synthetic proxy-like series from examples/gen_scenarios.rs: {n_train} fault-free scenarios x {len} ticks x {} series (seeds {train_seed}..), pending recordings of Portico under scripted load",
            SERIES.len()
        ),
        ..TrainOptions::default()
    };
    let (mut model, report) = portico_anomaly::train(&train_files, &opts, &mut |p| {
        println!("epoch {}/{} train {:.4} val {:.4}", p.epoch, p.epochs, p.train_loss, p.val_loss);
    })
    .unwrap();
    println!("{report:?}");

    let warmup = 120;
    let arc = Arc::new(model.clone());
    let ev = evaluate(&arc, &eval_sc, warmup, params);
    let untrained = Arc::new(Forecaster::untrained(opts.hidden, opts.window, opts.seed).unwrap());
    let ev_untrained = evaluate(&untrained, &eval_sc, warmup, params);
    let precision = ev.true_alerts as f64 / ev.alerts.max(1) as f64;
    let recall = ev.detected as f64 / ev.faults.max(1) as f64;
    let fa_per_hour = ev.false_alerts as f64 / (ev.normal_ticks as f64 / 3600.0);
    let per_kind: serde_json::Map<String, serde_json::Value> =
        ev.per_kind.iter().map(|(k, (d, n))| (k.to_string(), serde_json::json!({"detected": d, "total": n}))).collect();
    let metrics = serde_json::json!({
        "eval_data": format!("{n_eval} held-back synthetic scenarios (seeds {eval_seed}..), {len} ticks each, {} labelled faults", ev.faults),
        "thresholds": {"warning": 0.7, "critical": 0.9, "for_ticks": 3, "resolve_ticks": 5, "warmup": warmup},
        "precision": precision,
        "recall": recall,
        "alerts": ev.alerts,
        "false_alerts_per_hour_normal": fa_per_hour,
        "median_detection_delay_ticks": median(&ev.delays),
        "max_detection_delay_ticks": ev.delays.iter().max().copied().unwrap_or(0),
        "per_fault_kind": per_kind,
        "untrained_network": {
            "precision": ev_untrained.true_alerts as f64 / ev_untrained.alerts.max(1) as f64,
            "recall": ev_untrained.detected as f64 / ev_untrained.faults.max(1) as f64,
        },
    });
    println!("{}", serde_json::to_string_pretty(&metrics).unwrap());
    model.meta_mut().metrics = metrics.clone();
    if cmd == "all" {
        model.save(&model_path).unwrap();
        println!("saved {}", model_path.display());
    }
    std::fs::write(out.join("metrics.json"), serde_json::to_string_pretty(&metrics).unwrap()).unwrap();
}
