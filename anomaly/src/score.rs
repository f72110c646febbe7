//! From forecasts to anomaly scores in [0, 1].
//!
//! Each series gets two signals, both computed strictly from the past:
//! * **surprise**: the absolute forecast error (normalised units) compared with an adaptive
//!   threshold that learns that series' own error distribution online (EWMA mean/variance);
//!   catches sudden changes such as spikes, bursts and drops;
//! * **level**: how far the value sits from the series' slow, winsorised running mean; keeps a
//!   sustained fault (which the forecaster soon learns to predict) anomalous while it lasts;
//! * **drift**: a two-sided CUSUM of that same signed deviation (each tick clipped to ±`drift_clip`,
//!   minus an allowance `drift_k`); catches a slow drift, which the running mean follows closely enough
//!   that neither surprise nor level ever looks large, but whose deviation stays on one side for minutes.
//!
//! Each is mapped through a logistic curve and the score is the largest of the three.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{AnomalyError, Result};
use crate::model::{inverse_transform, transform, Forecaster, LstmState, OnlineNorm};
use crate::sample::Tick;

/// Tuning of the score mapping. Defaults were chosen on the generated evaluation scenarios
/// (see `models/portico-lstm.md`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreParams {
    /// EWMA weight for the error statistics (≈ 1 / memory in ticks).
    pub error_alpha: f64,
    /// Standardised surprise at which the surprise score is 0.5.
    pub surprise_center: f64,
    /// |z| of the value against its running baseline at which the level score is 0.5.
    pub level_center: f64,
    /// Logistic width (smaller = sharper transition).
    pub width: f64,
    /// Errors are winsorised to mean + `winsor_k` std before updating the statistics, so one
    /// anomaly does not teach the threshold to ignore the next.
    pub winsor_k: f64,
    /// CUSUM allowance: deviations (in std) up to this much per tick are treated as noise.
    #[serde(default = "default_drift_k")]
    pub drift_k: f64,
    /// CUSUM value at which the drift score is 0.5; 0 disables the drift component.
    #[serde(default = "default_drift_h")]
    pub drift_h: f64,
    /// Per-tick deviation is clipped to ±this before entering the CUSUM, so a short spike (which
    /// surprise already scores) cannot build a drift alert on its own.
    #[serde(default = "default_drift_clip")]
    pub drift_clip: f64,
    /// Ticks a series must have been seen before its CUSUM runs: a young baseline is too noisy.
    #[serde(default = "default_drift_min_ticks")]
    pub drift_min_ticks: u64,
}

fn default_drift_k() -> f64 {
    ScoreParams::default().drift_k
}
fn default_drift_h() -> f64 {
    ScoreParams::default().drift_h
}
fn default_drift_clip() -> f64 {
    ScoreParams::default().drift_clip
}
fn default_drift_min_ticks() -> u64 {
    ScoreParams::default().drift_min_ticks
}

impl Default for ScoreParams {
    fn default() -> Self {
        ScoreParams {
            error_alpha: 0.01,
            surprise_center: 5.0,
            level_center: 6.0,
            width: 0.8,
            winsor_k: 4.0,
            drift_k: 1.0,
            drift_h: 300.0,
            drift_clip: 3.0,
            drift_min_ticks: 300,
        }
    }
}

/// Two-sided CUSUM of a series' signed, standardised deviation from its running baseline.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cusum {
    up: f64,
    down: f64,
}

impl Cusum {
    /// Fold in one deviation `z` (std units); both sides are capped at `cap` so the statistic
    /// comes back down within `cap / k` ticks once the series settles.
    pub fn update(&mut self, z: f64, k: f64, clip: f64, cap: f64) {
        let z = z.clamp(-clip, clip);
        self.up = (self.up + z - k).clamp(0.0, cap);
        self.down = (self.down - z - k).clamp(0.0, cap);
    }

    /// The larger side.
    pub fn value(&self) -> f64 {
        self.up.max(self.down)
    }
}

fn logistic(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Online distribution of one series' absolute forecast errors.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveThreshold {
    n: u64,
    mean: f64,
    var: f64,
    alpha: f64,
    winsor_k: f64,
}

impl AdaptiveThreshold {
    /// Empty statistics with EWMA weight `alpha`.
    pub fn new(alpha: f64, winsor_k: f64) -> Self {
        AdaptiveThreshold { n: 0, mean: 0.0, var: 0.0, alpha, winsor_k }
    }

    /// Errors folded in so far.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// How many standard deviations `err` lies above the typical error.
    pub fn standardise(&self, err: f64) -> f64 {
        let std = self.var.sqrt().max(0.05 * self.mean.abs()).max(1e-3);
        (err - self.mean) / std
    }

    /// Fold in one error (call *after* scoring it).
    pub fn update(&mut self, err: f64) {
        self.n += 1;
        // Exact cumulative statistics until the EWMA window is reached, then exponential forgetting.
        let alpha = (1.0 / self.n as f64).max(self.alpha);
        let mut dev = err - self.mean;
        if self.n > 20 {
            let lim = self.winsor_k * self.var.sqrt().max(1e-3);
            dev = dev.min(lim);
        }
        self.mean += alpha * dev;
        self.var = (1.0 - alpha) * (self.var + alpha * dev * dev);
    }
}

/// One series' score for one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesScore {
    /// Series name.
    pub series: String,
    /// Tick timestamp (unix ms).
    pub timestamp_ms: i64,
    /// Observed value.
    pub value: f64,
    /// What the model forecast for this tick (raw units), if it had a forecast.
    pub predicted: Option<f64>,
    /// Anomaly score in [0, 1]; 0 during warmup.
    pub score: f64,
    /// Standardised forecast surprise (diagnostic).
    pub surprise: f64,
    /// |z| of the value against the running baseline (diagnostic).
    pub level: f64,
    /// CUSUM of the signed deviation from the baseline (diagnostic; 0 while too young).
    #[serde(default)]
    pub drift: f64,
}

#[derive(Debug)]
struct Track {
    norm: OnlineNorm,
    state: LstmState,
    /// Forecast for the next value: (normalised, raw).
    forecast: Option<(f64, f64)>,
    errors: AdaptiveThreshold,
    cusum: Cusum,
    seen: u64,
}

/// Streaming scorer over any number of series; one [`Scorer::score_tick`] call per tick.
#[derive(Debug)]
pub struct Scorer {
    model: Arc<Forecaster>,
    params: ScoreParams,
    warmup: u64,
    tracks: HashMap<String, Track>,
}

impl Scorer {
    /// Scorer with default [`ScoreParams`]; series score 0 for their first `warmup` ticks.
    pub fn new(model: Arc<Forecaster>, warmup: u32) -> Self {
        Self::with_params(model, warmup, ScoreParams::default())
    }

    /// Scorer with explicit tuning.
    pub fn with_params(model: Arc<Forecaster>, warmup: u32, params: ScoreParams) -> Self {
        Scorer { model, params, warmup: u64::from(warmup), tracks: HashMap::new() }
    }

    /// Number of series seen.
    pub fn series_count(&self) -> usize {
        self.tracks.len()
    }

    /// Score every finite value of `tick`, then advance the model one step for those series.
    ///
    /// Scores at tick *t* depend only on ticks ≤ *t*: statistics are updated after use and the
    /// forecast for *t* was made at *t − 1*.
    pub fn score_tick(&mut self, tick: &Tick) -> Result<Vec<SeriesScore>> {
        let p = self.params;
        let mut out = Vec::with_capacity(tick.values.len());
        let mut inputs: Vec<(String, f32)> = Vec::with_capacity(tick.values.len());
        for (name, &value) in &tick.values {
            if !value.is_finite() {
                continue;
            }
            let model = &self.model;
            let tr = self.tracks.entry(name.clone()).or_insert_with(|| Track {
                norm: OnlineNorm::new(model.meta().normalisation),
                state: model.zero_state(),
                forecast: None,
                errors: AdaptiveThreshold::new(p.error_alpha, p.winsor_k),
                cusum: Cusum::default(),
                seen: 0,
            });
            let y = transform(value);
            let z = tr.norm.normalize(y);
            let mut s = SeriesScore {
                series: name.clone(),
                timestamp_ms: tick.timestamp_ms,
                value,
                predicted: tr.forecast.map(|f| f.1),
                score: 0.0,
                surprise: 0.0,
                level: if tr.norm.count() > 1 { z.abs() } else { 0.0 },
                drift: 0.0,
            };
            if p.drift_h > 0.0 && tr.seen >= p.drift_min_ticks.max(self.warmup) {
                tr.cusum.update(z, p.drift_k, p.drift_clip, 1.5 * p.drift_h);
                s.drift = tr.cusum.value();
            }
            if let Some((fz, _)) = tr.forecast {
                let err = (z - fz).abs();
                s.surprise = tr.errors.standardise(err);
                if tr.seen >= self.warmup {
                    let surprise = logistic((s.surprise - p.surprise_center) / p.width);
                    let level = logistic((s.level - p.level_center) / p.width);
                    // Same steepness as the others relative to the centre: 0.5 at h, ~0.92 at 1.3 h.
                    let drift = if p.drift_h > 0.0 {
                        logistic((s.drift / p.drift_h - 1.0) * p.level_center / p.width)
                    } else {
                        0.0
                    };
                    s.score = surprise.max(level).max(drift).clamp(0.0, 1.0);
                }
                tr.errors.update(err);
            }
            tr.seen += 1;
            tr.norm.update(y);
            inputs.push((name.clone(), tr.norm.normalize(y) as f32));
            out.push(s);
        }
        // One batched LSTM step for all series present in this tick.
        let names: Vec<&String> = inputs.iter().map(|(n, _)| n).collect();
        let mut states: Vec<(f32, LstmState)> = inputs
            .iter()
            .map(|(n, x)| (*x, self.tracks.get_mut(n).map(|t| std::mem::take(&mut t.state)).unwrap_or_default()))
            .collect();
        let mut batch: Vec<(f32, &mut LstmState)> = states.iter_mut().map(|(x, s)| (*x, s)).collect();
        let preds = self.model.step(&mut batch)?;
        for ((name, (_, st)), fz) in names.into_iter().zip(states).zip(preds) {
            if let Some(tr) = self.tracks.get_mut(name) {
                tr.state = st;
                let fz = f64::from(fz);
                tr.forecast = Some((fz, inverse_transform(tr.norm.denormalize(fz))));
            }
        }
        Ok(out)
    }
}

/// Score one series given as values in row order (`None` = missing or unreadable, scored 0), exactly as
/// [`score_csv`] scores the rows of a file: the same scorer, warmup and tuning, no look-ahead. Evaluation
/// harnesses call this, so what they rate is what `portico anomaly score` writes.
pub fn score_series(model: &Arc<Forecaster>, values: &[Option<f64>]) -> Result<Vec<f64>> {
    let mut scorer = Scorer::with_params(model.clone(), CSV_WARMUP, ScoreParams::default());
    values
        .iter()
        .enumerate()
        .map(|(i, v)| match v.filter(|v| v.is_finite()) {
            Some(v) => Ok(scorer.score_tick(&Tick::new(i as i64).with("value", v))?.first().map_or(0.0, |s| s.score)),
            None => Ok(0.0),
        })
        .collect()
}

/// Warmup (rows scored 0) of [`score_csv`] and [`score_series`].
pub const CSV_WARMUP: u32 = 60;

/// Result of [`score_csv`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreSummary {
    /// Data rows read (= rows written).
    pub rows: usize,
    /// Rows whose value was missing or unparsable (scored 0).
    pub skipped: usize,
    /// Highest score seen.
    pub max_score: f64,
    /// Row index (0-based, data rows) of the highest score.
    pub max_row: usize,
    /// Rows scoring at or above 0.7 (the default warning threshold).
    pub rows_above_warning: usize,
}

/// Stream `input` (CSV with a header and a `value` column, else the second column) through the
/// model with no look-ahead and write every row unchanged plus an `anomaly_score` column.
///
/// Rows are processed one at a time; the score of row *t* never depends on later rows. The first
/// rows (warmup) score 0. Fields are split on commas (no quoting), matching what Portico exports.
pub fn score_csv(input: &Path, output: &Path, model: &Forecaster) -> Result<ScoreSummary> {
    score_csv_with(input, output, model, CSV_WARMUP, ScoreParams::default())
}

/// [`score_csv`] with explicit warmup and tuning.
pub fn score_csv_with(
    input: &Path,
    output: &Path,
    model: &Forecaster,
    warmup: u32,
    params: ScoreParams,
) -> Result<ScoreSummary> {
    let f = std::fs::File::open(input).map_err(|e| AnomalyError::io(input, e))?;
    let mut lines = BufReader::new(f).lines();
    let header = lines
        .next()
        .ok_or_else(|| AnomalyError::Data(format!("{}: empty file", input.display())))?
        .map_err(|e| AnomalyError::io(input, e))?;
    let header = header.trim_end_matches('\r').to_string();
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let vcol = cols.iter().position(|c| *c == "value").or(if cols.len() >= 2 { Some(1) } else { None });
    let vcol = vcol.ok_or_else(|| AnomalyError::Data(format!("{}: need a `value` column", input.display())))?;
    let out = std::fs::File::create(output).map_err(|e| AnomalyError::io(output, e))?;
    let mut w = BufWriter::new(out);
    let werr = |e| AnomalyError::io(output, e);
    writeln!(w, "{header},anomaly_score").map_err(werr)?;
    let mut scorer = Scorer::with_params(Arc::new(model.clone()), warmup, params);
    let mut sum = ScoreSummary { rows: 0, skipped: 0, max_score: 0.0, max_row: 0, rows_above_warning: 0 };
    for (i, line) in lines.enumerate() {
        let line = line.map_err(|e| AnomalyError::io(input, e))?;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let value = line.split(',').nth(vcol).and_then(|v| v.trim().parse::<f64>().ok()).filter(|v| v.is_finite());
        let score = match value {
            Some(v) => {
                let t = Tick::new(i as i64).with("value", v);
                scorer.score_tick(&t)?.first().map(|s| s.score).unwrap_or(0.0)
            }
            None => {
                sum.skipped += 1;
                0.0
            }
        };
        writeln!(w, "{line},{score:.6}").map_err(werr)?;
        if score > sum.max_score {
            sum.max_score = score;
            sum.max_row = sum.rows;
        }
        if score >= 0.7 {
            sum.rows_above_warning += 1;
        }
        sum.rows += 1;
    }
    w.flush().map_err(werr)?;
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_threshold_learns_scale() {
        let mut t = AdaptiveThreshold::new(0.01, 4.0);
        for i in 0..2000 {
            t.update(if i % 2 == 0 { 0.5 } else { 1.5 });
        }
        assert!(t.standardise(1.0).abs() < 0.5);
        assert!(t.standardise(6.0) > 4.0);
    }
}
