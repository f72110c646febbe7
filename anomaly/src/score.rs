//! Scoring many series tick by tick (the live detector) and one series row by row (`portico anomaly score`),
//! both with the same per-series detector ([`SeriesDetector`]), so what an evaluation rates is what runs.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{AnomalyError, Result};
use crate::model::Forecaster;
use crate::sample::Tick;
use crate::series::{DetectorKit, DetectorParams, SeriesDetector};
use crate::time::parse_timestamp;

/// One series' score for one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesScore {
    /// Series name.
    pub series: String,
    /// Tick timestamp (unix ms).
    pub timestamp_ms: i64,
    /// Observed value.
    pub value: f64,
    /// What the series was expected to do (raw units), once forecasts exist.
    pub predicted: Option<f64>,
    /// Anomaly score in [0, 1); 0 during warmup. High where an anomaly starts, decaying while it lasts.
    pub score: f64,
    /// The score without that decay: how strong the deviation is now (what alerts compare with thresholds).
    #[serde(default)]
    pub strength: f64,
    /// Signed residual in usual errors (diagnostic).
    pub residual: f64,
    /// Residual over the series' own tail: what the score is made of (diagnostic).
    pub evidence: f64,
    /// Whether the value belongs to an anomalous event (the ensemble is not learning it).
    #[serde(default)]
    pub in_event: bool,
}

/// The smallest change that matters for a live series, by the kind its name ends with: an error ratio must
/// move by a percentage point, a latency by a millisecond, a CPU share by a percentage point. Without it a
/// series that is flat at zero would call its first single error an anomaly.
pub fn kind_floor(series: &str) -> f64 {
    let kind = series.rsplit('.').next().unwrap_or("");
    match kind {
        "error_ratio" => 0.01,
        k if k.starts_with("latency") => 1.0,
        "cpu" => 1.0,
        "qps" | "active_connections" | "active_requests" => 1.0,
        _ => 0.0,
    }
}

/// Streaming scorer over any number of series; one [`Scorer::score_tick`] call per tick.
#[derive(Debug)]
pub struct Scorer {
    kit: DetectorKit,
    tracks: HashMap<String, SeriesDetector>,
}

impl Scorer {
    /// Scorer with default tuning; series score 0 for their first `warmup` ticks.
    pub fn new(model: Arc<Forecaster>, warmup: u32) -> Result<Self> {
        Self::with_params(model, DetectorParams { warmup, ..DetectorParams::default() })
    }

    /// Scorer with explicit tuning.
    pub fn with_params(model: Arc<Forecaster>, params: DetectorParams) -> Result<Self> {
        Ok(Scorer { kit: DetectorKit::new(&model, params)?, tracks: HashMap::new() })
    }

    /// Number of series seen.
    pub fn series_count(&self) -> usize {
        self.tracks.len()
    }

    /// Scores every finite value of `tick`. A score at tick *t* depends only on ticks ≤ *t*.
    pub fn score_tick(&mut self, tick: &Tick) -> Result<Vec<SeriesScore>> {
        let mut out = Vec::with_capacity(tick.values.len());
        for (name, &value) in &tick.values {
            if !value.is_finite() {
                continue;
            }
            let detector = match self.tracks.get_mut(name) {
                Some(d) => d,
                None => self.tracks.entry(name.clone()).or_insert_with(|| self.kit.series(None, kind_floor(name))),
            };
            let v = detector.observe(value);
            out.push(SeriesScore {
                series: name.clone(),
                timestamp_ms: tick.timestamp_ms,
                value,
                predicted: v.expected,
                score: v.score,
                strength: v.strength,
                residual: v.residual,
                evidence: v.evidence,
                in_event: v.in_event,
            });
        }
        Ok(out)
    }
}

/// Warmup (rows scored 0) of [`score_csv`] and [`score_series`].
pub const CSV_WARMUP: u32 = 50;

/// A day's length in rows for a series sampled every `interval_ms`, when it is a whole number of rows.
pub fn day_rows(interval_ms: i64) -> Option<usize> {
    (interval_ms > 0 && 86_400_000 % interval_ms == 0).then(|| (86_400_000 / interval_ms) as usize)
}

/// The median step of the first timestamps, unix ms.
fn interval_of(timestamps: &[i64]) -> Option<i64> {
    let mut steps: Vec<i64> = timestamps.windows(2).map(|w| w[1] - w[0]).filter(|d| *d > 0).collect();
    steps.sort_unstable();
    steps.get(steps.len() / 2).copied()
}

/// Scores one series given as values in row order (`None` = missing, scored 0), exactly as [`score_csv`]
/// scores the rows of a file: the same detector, warmup and tuning, no look-ahead. `interval_ms` is the
/// sampling interval when known. Evaluation harnesses call this, so what they rate is what
/// `portico anomaly score` writes.
pub fn score_series(kit: &DetectorKit, values: &[Option<f64>], interval_ms: Option<i64>) -> Vec<f64> {
    let mut d = kit.series(interval_ms.and_then(day_rows), 0.0);
    values
        .iter()
        .map(|v| match v.filter(|v| v.is_finite()) {
            Some(v) => d.observe(v).score,
            None => d.skip().score,
        })
        .collect()
}

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
    /// Rows scoring at or above 0.5, where the detector opens an event.
    pub rows_in_events: usize,
    /// The sampling interval read from the timestamps, ms (`None` without a timestamp column).
    pub interval_ms: Option<i64>,
}

/// Rows read before the detector starts, to learn the sampling interval from their timestamps.
const INTERVAL_ROWS: usize = 16;

/// Streams `input` (`-` for standard input; CSV with a header, a `value` column — else the second column — and a `timestamp` column —
/// else the first, when it reads as one) through the detector with no look-ahead and writes every row
/// unchanged plus an `anomaly_score` column to `output` (`-` for standard output).
///
/// The score of row *t* never depends on later values. The first rows (warmup) score 0. Fields are split on
/// commas (no quoting), matching what Portico and most monitoring exports write.
pub fn score_csv(input: &Path, output: &Path, model: &Arc<Forecaster>) -> Result<ScoreSummary> {
    score_csv_with(
        input,
        output,
        &DetectorKit::new(model, DetectorParams { warmup: CSV_WARMUP, ..Default::default() })?,
    )
}

/// [`score_csv`] with an explicit kit (members and tuning).
pub fn score_csv_with(input: &Path, output: &Path, kit: &DetectorKit) -> Result<ScoreSummary> {
    let reader: Box<dyn std::io::Read> = if input == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(input).map_err(|e| AnomalyError::io(input, e))?)
    };
    let mut lines = BufReader::with_capacity(1 << 16, reader).lines();
    let header = lines
        .next()
        .ok_or_else(|| AnomalyError::Data(format!("{}: empty file", input.display())))?
        .map_err(|e| AnomalyError::io(input, e))?;
    let header = header.trim_end_matches('\r').to_string();
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let vcol = cols.iter().position(|c| *c == "value").or(if cols.len() >= 2 { Some(1) } else { None });
    let vcol = vcol.ok_or_else(|| AnomalyError::Data(format!("{}: need a `value` column", input.display())))?;
    let tcol = cols.iter().position(|c| c.eq_ignore_ascii_case("timestamp")).or((vcol != 0).then_some(0));
    let out: Box<dyn Write> = if output == Path::new("-") {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(output).map_err(|e| AnomalyError::io(output, e))?)
    };
    let mut w = BufWriter::with_capacity(1 << 16, out);
    let werr = |e| AnomalyError::io(output, e);
    writeln!(w, "{header},anomaly_score").map_err(werr)?;
    let mut sum =
        ScoreSummary { rows: 0, skipped: 0, max_score: 0.0, max_row: 0, rows_in_events: 0, interval_ms: None };
    let mut pending: Vec<(String, Option<f64>)> = Vec::with_capacity(INTERVAL_ROWS);
    let mut stamps = Vec::with_capacity(INTERVAL_ROWS);
    let mut detector: Option<SeriesDetector> = None;
    let mut emit = |d: &mut SeriesDetector, line: &str, value: Option<f64>, sum: &mut ScoreSummary| -> Result<()> {
        let score = match value {
            Some(v) => d.observe(v).score,
            None => {
                sum.skipped += 1;
                d.skip().score
            }
        };
        writeln!(w, "{line},{score:.6}").map_err(werr)?;
        if score > sum.max_score {
            sum.max_score = score;
            sum.max_row = sum.rows;
        }
        sum.rows_in_events += usize::from(score >= 0.5);
        sum.rows += 1;
        Ok(())
    };
    for line in lines {
        let line = line.map_err(|e| AnomalyError::io(input, e))?;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.split(',');
        let value = fields.clone().nth(vcol).and_then(|v| v.trim().parse::<f64>().ok()).filter(|v| v.is_finite());
        match &mut detector {
            Some(d) => emit(d, line, value, &mut sum)?,
            None => {
                if let Some(t) = tcol.and_then(|c| fields.nth(c)).and_then(parse_timestamp) {
                    stamps.push(t);
                }
                pending.push((line.to_string(), value));
                if pending.len() == INTERVAL_ROWS {
                    sum.interval_ms = interval_of(&stamps);
                    let mut d = kit.series(sum.interval_ms.and_then(day_rows), 0.0);
                    for (line, value) in pending.drain(..) {
                        emit(&mut d, &line, value, &mut sum)?;
                    }
                    detector = Some(d);
                }
            }
        }
    }
    if detector.is_none() {
        sum.interval_ms = interval_of(&stamps);
        let mut d = kit.series(sum.interval_ms.and_then(day_rows), 0.0);
        for (line, value) in pending.drain(..) {
            emit(&mut d, &line, value, &mut sum)?;
        }
    }
    w.flush().map_err(werr)?;
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_floors() {
        assert_eq!(kind_floor("upstream.app.error_ratio"), 0.01);
        assert_eq!(kind_floor("listener.web.latency_p99"), 1.0);
        assert_eq!(kind_floor("process.cpu"), 1.0);
        assert_eq!(kind_floor("value"), 0.0);
        assert_eq!(day_rows(300_000), Some(288));
        assert_eq!(day_rows(7_000), None);
    }
}
