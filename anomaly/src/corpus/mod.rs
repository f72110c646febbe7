//! A labelled corpus of univariate series for judging the detector on shapes it was not built around.
//!
//! The detector watches Portico's own series, but operators also feed it other data (`portico anomaly score`), and
//! a detector tuned on one kind of series does badly on the next. The corpus is generated from a seed: many
//! shapes (clean and noisy seasonality, square waves, flat lines, mean-reverting and wandering levels, trends,
//! counters with resets, sparse error counts), noise of several kinds (Gaussian, heavy-tailed, multiplicative,
//! Poisson, quantised, benign one-point outliers, missing rows) at intervals from 1 s to 1 h, and labelled
//! anomalies of many kinds (spikes, dips, level shifts, plateaus, variance changes, lost seasonality, stuck
//! values, drifts, bursts, outages, counter resets). Each label marks the row where the anomaly starts.
//!
//! On disk a corpus is a directory of `<name>.csv` files (`timestamp,value`, a missing value left empty) and one
//! `corpus.json` listing every file with its family, interval and labels: the shape the scorer in
//! [`crate::nab`] reads. Portico's own recordings join a corpus through [`from_recording`].

pub mod evaluate;
mod shapes;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{AnomalyError, Result};
use crate::time::{parse_timestamp, plain_datetime};

pub use shapes::generate;

/// One labelled anomaly: the row where it starts and what it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    /// 0-based data row (the CSV's header is not a row).
    pub row: usize,
    /// What was injected (`spike`, `level_shift`, …) or recorded (`latency_spike`, …).
    pub kind: String,
}

/// One series of a corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct CorpusSeries {
    /// File stem, unique in the corpus.
    pub name: String,
    /// Shape family (`daily`, `counter`, …, or `portico` for recordings), for per-family breakdowns.
    pub family: String,
    /// Sampling interval.
    pub interval_ms: i64,
    /// Timestamp of row 0, unix ms.
    pub start_ms: i64,
    /// One value per row; `None` is a missing sample.
    pub values: Vec<Option<f64>>,
    /// Labelled anomalies, by row.
    pub labels: Vec<Label>,
}

impl CorpusSeries {
    /// Timestamp of `row`, unix ms.
    pub fn timestamp(&self, row: usize) -> i64 {
        self.start_ms + self.interval_ms * row as i64
    }

    /// The series as CSV text: `timestamp,value`, timestamps as `YYYY-MM-DD HH:MM:SS`.
    pub fn to_csv(&self) -> String {
        let mut out = String::with_capacity(self.values.len() * 28 + 16);
        out.push_str("timestamp,value\n");
        for (i, v) in self.values.iter().enumerate() {
            let _ = match v {
                Some(v) => writeln!(out, "{},{}", plain_datetime(self.timestamp(i)), fmt_value(*v)),
                None => writeln!(out, "{},", plain_datetime(self.timestamp(i))),
            };
        }
        out
    }
}

/// Shortest text that reads back as the same f64, without a trailing `.0` on whole numbers.
fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    /// How the corpus was made (a command line, a seed).
    description: String,
    files: Vec<ManifestEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ManifestEntry {
    file: String,
    family: String,
    interval_s: f64,
    labels: Vec<Label>,
}

/// Name of the manifest inside a corpus directory.
pub const MANIFEST: &str = "corpus.json";

/// Writes `series` into `dir` (created if missing): one CSV per series plus [`MANIFEST`].
pub fn write(dir: &Path, description: &str, series: &[CorpusSeries]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| AnomalyError::io(dir, e))?;
    let mut files = Vec::with_capacity(series.len());
    for s in series {
        let file = format!("{}.csv", s.name);
        let path = dir.join(&file);
        std::fs::write(&path, s.to_csv()).map_err(|e| AnomalyError::io(&path, e))?;
        files.push(ManifestEntry {
            file,
            family: s.family.clone(),
            interval_s: s.interval_ms as f64 / 1000.0,
            labels: s.labels.clone(),
        });
    }
    let manifest = Manifest { description: description.to_string(), files };
    let path = dir.join(MANIFEST);
    std::fs::write(&path, serde_json::to_string_pretty(&manifest)?).map_err(|e| AnomalyError::io(&path, e))
}

/// Reads a corpus written by [`write`] (or by hand in the same shape).
pub fn read(dir: &Path) -> Result<Vec<CorpusSeries>> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| AnomalyError::io(&path, e))?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| AnomalyError::Data(format!("{}: {e}", path.display())))?;
    manifest
        .files
        .into_iter()
        .map(|entry| {
            let path = dir.join(&entry.file);
            let text = std::fs::read_to_string(&path).map_err(|e| AnomalyError::io(&path, e))?;
            let (start_ms, values) =
                parse_csv(&text).map_err(|m| AnomalyError::Data(format!("{}: {m}", path.display())))?;
            if let Some(l) = entry.labels.iter().find(|l| l.row >= values.len()) {
                return Err(AnomalyError::Data(format!("{}: label row {} past the end", path.display(), l.row)));
            }
            Ok(CorpusSeries {
                name: entry.file.trim_end_matches(".csv").to_string(),
                family: entry.family,
                interval_ms: (entry.interval_s * 1000.0).round() as i64,
                start_ms,
                values,
                labels: entry.labels,
            })
        })
        .collect()
}

/// The first timestamp and every value of a `timestamp,value` CSV.
fn parse_csv(text: &str) -> std::result::Result<(i64, Vec<Option<f64>>), String> {
    let mut lines = text.lines();
    lines.next().ok_or("empty file")?;
    let mut start = None;
    let mut values = Vec::new();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let (ts, value) = line.split_once(',').ok_or_else(|| format!("line {}: expected `timestamp,value`", i + 2))?;
        if start.is_none() {
            start = Some(parse_timestamp(ts).ok_or_else(|| format!("line {}: unreadable timestamp", i + 2))?);
        }
        values.push(value.trim().parse::<f64>().ok().filter(|v| v.is_finite()));
    }
    Ok((start.ok_or("no rows")?, values))
}

/// Portico's own recorded series (`portico anomaly record`) as corpus series: every series of every scenario
/// whose name starts with `prefix`, labelled at the start of each fault expected to move it.
pub fn from_recording(dir: &Path, prefix: &str) -> Result<Vec<CorpusSeries>> {
    let scenarios = crate::eval::load_recording(dir, prefix)?;
    let mut out = Vec::new();
    for sc in &scenarios {
        let interval_ms = median_step(&sc.table.timestamps);
        for (series, values) in &sc.table.columns {
            let labels: Vec<Label> = sc
                .faults
                .iter()
                .filter(|f| f.series.iter().any(|s| s == series))
                .map(|f| Label { row: f.start_tick, kind: f.kind.clone() })
                .filter(|l| l.row < values.len())
                .collect();
            out.push(CorpusSeries {
                name: format!("{}-{}", sc.name, series),
                family: "portico".into(),
                interval_ms,
                start_ms: sc.table.timestamps.first().copied().unwrap_or(0),
                values: values.iter().map(|v| v.filter(|v| v.is_finite())).collect(),
                labels,
            });
        }
    }
    Ok(out)
}

fn median_step(ts: &[i64]) -> i64 {
    let mut steps: Vec<i64> = ts.windows(2).map(|w| w[1] - w[0]).filter(|d| *d > 0).collect();
    steps.sort_unstable();
    steps.get(steps.len() / 2).copied().unwrap_or(1000)
}

/// Labels per family, for a report's breakdown.
pub fn families(series: &[CorpusSeries]) -> BTreeMap<String, (usize, usize)> {
    let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for s in series {
        let e = out.entry(s.family.clone()).or_default();
        e.0 += 1;
        e.1 += s.labels.len();
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_corpus_round_trips_through_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let series = generate(7, 12);
        write(dir.path(), "test", &series).unwrap();
        let back = read(dir.path()).unwrap();
        assert_eq!(back.len(), series.len());
        for (a, b) in series.iter().zip(&back) {
            assert_eq!(a.name, b.name);
            assert_eq!(a.labels, b.labels);
            assert_eq!(a.interval_ms, b.interval_ms);
            assert_eq!(a.start_ms, b.start_ms);
            assert_eq!(a.values.len(), b.values.len());
            for (x, y) in a.values.iter().zip(&b.values) {
                match (x, y) {
                    (Some(x), Some(y)) => assert!((x - y).abs() <= 1e-9 * x.abs().max(1.0), "{x} {y}"),
                    (None, None) => {}
                    other => panic!("{other:?}"),
                }
            }
        }
    }
}
