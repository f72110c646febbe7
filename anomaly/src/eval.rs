//! Evaluating a model on labelled recordings: precision, recall and detection delay of the real
//! scorer and alert engine, so a model card's numbers come from the same code that runs in the proxy.
//!
//! A recording is a directory with one sub-directory of Arrow IPC files per scenario (as the detector's
//! `store_dir` writes them) and a `labels.csv` naming each injected fault: its scenario, kind, the tick
//! range it covered and the series it is expected to move.
//!
//! Definitions (the same as the generated-scenario evaluation before it): a fault is *detected* when an
//! alert fires on one of its series between its start and `grace` ticks after its end; the *delay* is
//! alert tick − fault start; an alert is *true* when it starts inside any fault window (+ grace) of its
//! scenario, otherwise *false*.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::alert::{AlertEngine, Transition};
use crate::config::Thresholds;
use crate::error::{AnomalyError, Result};
use crate::model::Forecaster;
use crate::sample::Tick;
use crate::score::Scorer;
use crate::series::DetectorParams;
use crate::store::{batches_to_table, list_ipc_files, read_ipc_file, SeriesTable};

/// Header of `labels.csv`; writer and reader share it so they cannot drift apart.
pub const LABELS_HEADER: &str = "scenario,kind,start_tick,end_tick,start_ms,end_ms,magnitude,series";

/// One injected fault: what, where (series) and when (ticks of its scenario, end exclusive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultLabel {
    /// Scenario (sub-directory) the fault belongs to.
    pub scenario: String,
    /// Fault kind, e.g. `latency_spike`, `slow_drift`.
    pub kind: String,
    /// First tick (row of the scenario's series) under the fault.
    pub start_tick: usize,
    /// First tick after the fault.
    pub end_tick: usize,
    /// Wall-clock start, unix ms (what the tick range was derived from).
    pub start_ms: i64,
    /// Wall-clock end, unix ms.
    pub end_ms: i64,
    /// Kind-specific size (extra ms, error fraction, rate factor, burner threads, drift factor).
    pub magnitude: f64,
    /// Series the fault is expected to move; alerts on these count as detections.
    pub series: Vec<String>,
}

impl FaultLabel {
    /// One CSV line (no newline) matching [`LABELS_HEADER`]; series are `;`-separated.
    pub fn to_csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{}",
            self.scenario,
            self.kind,
            self.start_tick,
            self.end_tick,
            self.start_ms,
            self.end_ms,
            self.magnitude,
            self.series.join(";")
        )
    }
}

/// Write `labels.csv`.
pub fn write_labels(path: &Path, labels: &[FaultLabel]) -> Result<()> {
    let mut text = String::from(LABELS_HEADER);
    text.push('\n');
    for l in labels {
        let _ = writeln!(text, "{}", l.to_csv());
    }
    std::fs::write(path, text).map_err(|e| AnomalyError::io(path, e))
}

/// Read `labels.csv` as written by [`write_labels`].
pub fn read_labels(path: &Path) -> Result<Vec<FaultLabel>> {
    let text = std::fs::read_to_string(path).map_err(|e| AnomalyError::io(path, e))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    match lines.next() {
        Some(h) if h.trim() == LABELS_HEADER => {}
        _ => return Err(AnomalyError::Data(format!("{}: header must be `{LABELS_HEADER}`", path.display()))),
    }
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        let bad = |what: &str| AnomalyError::Data(format!("{}:{}: {what}", path.display(), i + 2));
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() != 8 {
            return Err(bad("expected 8 fields"));
        }
        let num = |s: &str| s.parse::<i64>().map_err(|_| bad("not an integer"));
        let tick = |s: &str| s.parse::<usize>().map_err(|_| bad("not a tick index"));
        let label = FaultLabel {
            scenario: f[0].to_string(),
            kind: f[1].to_string(),
            start_tick: tick(f[2])?,
            end_tick: tick(f[3])?,
            start_ms: num(f[4])?,
            end_ms: num(f[5])?,
            magnitude: f[6].parse().map_err(|_| bad("magnitude is not a number"))?,
            series: f[7].split(';').filter(|s| !s.is_empty()).map(str::to_string).collect(),
        };
        if label.end_tick < label.start_tick {
            return Err(bad("end_tick before start_tick"));
        }
        out.push(label);
    }
    Ok(out)
}

/// One recorded scenario with its faults.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledScenario {
    /// Scenario name (sub-directory of the recording).
    pub name: String,
    /// Its series, one row per tick.
    pub table: SeriesTable,
    /// Faults injected into it (empty for calm scenarios).
    pub faults: Vec<FaultLabel>,
}

/// Arrow files of one scenario directory, oldest first.
pub fn scenario_files(recording: &Path, scenario: &str) -> Result<Vec<PathBuf>> {
    list_ipc_files(&recording.join(scenario))
}

/// Load the scenarios of `recording` whose names start with `prefix` (all with `""`), sorted by name.
pub fn load_recording(recording: &Path, prefix: &str) -> Result<Vec<LabelledScenario>> {
    let labels = read_labels(&recording.join("labels.csv"))?;
    let mut names: Vec<String> = std::fs::read_dir(recording)
        .map_err(|e| AnomalyError::io(recording, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let mut batches = Vec::new();
        for f in scenario_files(recording, &name)? {
            batches.extend(read_ipc_file(&f)?);
        }
        if batches.is_empty() {
            continue;
        }
        let table = batches_to_table(&batches)?;
        let faults = labels.iter().filter(|l| l.scenario == name).cloned().collect();
        out.push(LabelledScenario { name, table, faults });
    }
    if out.is_empty() {
        return Err(AnomalyError::Data(format!("{}: no scenario starting with {prefix:?}", recording.display())));
    }
    Ok(out)
}

/// How alerts are raised during evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalOptions {
    /// Alert thresholds (the proxy's defaults unless a test says otherwise).
    pub thresholds: Thresholds,
    /// Ticks per series before scores count.
    pub warmup: u32,
    /// Ticks after a fault's end during which alerts still count as caused by it.
    pub grace: usize,
    /// Detector tuning (its `warmup` is replaced by the field above).
    pub params: DetectorParams,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { thresholds: Thresholds::default(), warmup: 120, grace: 60, params: DetectorParams::default() }
    }
}

/// Detected / total faults of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCount {
    /// Faults detected.
    pub detected: usize,
    /// Faults injected.
    pub total: usize,
}

/// Outcome of [`evaluate`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Scenarios evaluated.
    pub scenarios: usize,
    /// Ticks evaluated (all scenarios).
    pub ticks: usize,
    /// Alerts fired.
    pub alerts: usize,
    /// Alerts starting outside every fault window.
    pub false_alerts: usize,
    /// true alerts / alerts (1 when there were none).
    pub precision: f64,
    /// Faults injected.
    pub faults: usize,
    /// Faults detected.
    pub detected: usize,
    /// detected / faults.
    pub recall: f64,
    /// Median detection delay in ticks (`None` when nothing was detected).
    pub median_delay_ticks: Option<usize>,
    /// Largest detection delay in ticks.
    pub max_delay_ticks: Option<usize>,
    /// Ticks outside every fault window (after warmup): where false alerts can happen.
    pub normal_ticks: usize,
    /// Median spacing of ticks in ms (from the timestamps), to turn ticks into time.
    pub interval_ms: f64,
    /// False alerts per hour of normal data.
    pub false_alerts_per_hour: f64,
    /// Per fault kind.
    pub per_kind: BTreeMap<String, KindCount>,
    /// Every alert start: (scenario, tick, series), for inspection.
    pub alert_log: Vec<(String, usize, String)>,
}

/// Replay every scenario through a fresh [`Scorer`] and [`AlertEngine`] and score the alerts against
/// the labels. Deterministic for a model and data.
pub fn evaluate(model: &Arc<Forecaster>, scenarios: &[LabelledScenario], opts: &EvalOptions) -> Result<EvalReport> {
    let mut r = EvalReport { scenarios: scenarios.len(), ..EvalReport::default() };
    let mut delays = Vec::new();
    let mut gaps = Vec::new();
    for s in scenarios {
        let mut scorer = Scorer::with_params(model.clone(), DetectorParams { warmup: opts.warmup, ..opts.params })?;
        let mut engine = AlertEngine::new(opts.thresholds.clone());
        let mut starts: Vec<(usize, String)> = Vec::new();
        let ts = &s.table.timestamps;
        gaps.extend(ts.windows(2).map(|w| (w[1] - w[0]) as f64));
        for (i, &t) in ts.iter().enumerate() {
            let mut tick = Tick::new(t);
            for (name, col) in &s.table.columns {
                if let Some(Some(v)) = col.get(i) {
                    tick.set(name.clone(), *v);
                }
            }
            for sc in scorer.score_tick(&tick)? {
                if let Some(ch) = engine.update(&sc) {
                    if ch.transition == Transition::Fired {
                        starts.push((i, ch.alert.series.clone()));
                    }
                }
            }
        }
        let in_fault = |i: usize| s.faults.iter().any(|f| i >= f.start_tick && i < f.end_tick + opts.grace);
        r.ticks += ts.len();
        r.normal_ticks += (opts.warmup as usize..ts.len()).filter(|&i| !in_fault(i)).count();
        for (i, series) in &starts {
            r.alerts += 1;
            if !in_fault(*i) {
                r.false_alerts += 1;
            }
            r.alert_log.push((s.name.clone(), *i, series.clone()));
        }
        for f in &s.faults {
            r.faults += 1;
            let hit = starts
                .iter()
                .filter(|(i, ser)| *i >= f.start_tick && *i < f.end_tick + opts.grace && f.series.contains(ser))
                .map(|(i, _)| *i)
                .min();
            let k = r.per_kind.entry(f.kind.clone()).or_default();
            k.total += 1;
            if let Some(i) = hit {
                k.detected += 1;
                r.detected += 1;
                delays.push(i - f.start_tick);
            }
        }
    }
    r.precision = if r.alerts == 0 { 1.0 } else { (r.alerts - r.false_alerts) as f64 / r.alerts as f64 };
    r.recall = if r.faults == 0 { 0.0 } else { r.detected as f64 / r.faults as f64 };
    delays.sort_unstable();
    r.median_delay_ticks = delays.get(delays.len() / 2).copied();
    r.max_delay_ticks = delays.last().copied();
    gaps.sort_by(f64::total_cmp);
    r.interval_ms = gaps.get(gaps.len() / 2).copied().unwrap_or(0.0);
    let hours = r.normal_ticks as f64 * r.interval_ms / 3_600_000.0;
    r.false_alerts_per_hour = if hours > 0.0 { r.false_alerts as f64 / hours } else { 0.0 };
    Ok(r)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn labels_round_trip_and_reject_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("labels.csv");
        let l = FaultLabel {
            scenario: "eval-mixed-1".into(),
            kind: "error_burst".into(),
            start_tick: 10,
            end_tick: 20,
            start_ms: 1000,
            end_ms: 3500,
            magnitude: 0.25,
            series: vec!["upstream.demo.error_ratio".into(), "listener.web.error_ratio".into()],
        };
        write_labels(&p, std::slice::from_ref(&l)).unwrap();
        assert_eq!(read_labels(&p).unwrap(), vec![l]);
        std::fs::write(&p, format!("{LABELS_HEADER}\ns,k,9,3,0,0,1,a\n")).unwrap();
        assert!(read_labels(&p).unwrap_err().to_string().contains("end_tick"));
    }

    #[test]
    fn a_step_is_detected_and_the_calm_part_raises_nothing() {
        let mut table = SeriesTable::default();
        let mut col = Vec::new();
        for i in 0..900usize {
            table.timestamps.push(i as i64 * 250);
            let noise = ((i * 7919) % 17) as f64 / 17.0;
            col.push(Some(if (600..660).contains(&i) { 400.0 } else { 50.0 + 5.0 * noise }));
        }
        table.columns.insert("upstream.demo.latency_p99".into(), col);
        let fault = FaultLabel {
            scenario: "s".into(),
            kind: "latency_spike".into(),
            start_tick: 600,
            end_tick: 660,
            start_ms: 0,
            end_ms: 0,
            magnitude: 8.0,
            series: vec!["upstream.demo.latency_p99".into()],
        };
        let s = LabelledScenario { name: "s".into(), table, faults: vec![fault] };
        let model = Arc::new(Forecaster::bundled().unwrap());
        let r = evaluate(&model, &[s], &EvalOptions::default()).unwrap();
        assert_eq!((r.detected, r.faults), (1, 1), "{r:?}");
        assert_eq!(r.false_alerts, 0, "{r:?}");
        assert!(r.median_delay_ticks.unwrap() <= 3, "{r:?}");
        assert_eq!(r.interval_ms, 250.0);
    }
}
