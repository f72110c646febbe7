//! Running a detector over a corpus and rating it with the window-based rules of [`crate::nab`].
//!
//! Besides Portico's detector, two reference detectors run through the same harness so a corpus' scores can
//! be read against something: a running z-score (what a first attempt usually is) and its ablations, the
//! detector with a member of the ensemble left out, which is how each member's worth is measured.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::CorpusSeries;
use crate::error::{AnomalyError, Result};
use crate::forecast::Members;
use crate::model::Forecaster;
use crate::nab::{self, ProfileResult, ScoredFile};
use crate::score::score_series;
use crate::series::{DetectorKit, DetectorParams};

/// Which detector to rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Candidate {
    /// Portico's detector as `portico anomaly score` runs it.
    Portico,
    /// Portico's detector without the LSTM member.
    NoLstm,
    /// Portico's detector without the seasonal members.
    NoSeasonal,
    /// Portico's detector with the LSTM as its only member.
    LstmOnly,
    /// |z| of each value against the running mean and standard deviation of all earlier values.
    Zscore,
}

impl Candidate {
    /// Every candidate, Portico's first.
    pub const ALL: [Candidate; 5] =
        [Candidate::Portico, Candidate::NoLstm, Candidate::NoSeasonal, Candidate::LstmOnly, Candidate::Zscore];

    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            Candidate::Portico => "portico",
            Candidate::NoLstm => "no_lstm",
            Candidate::NoSeasonal => "no_seasonal",
            Candidate::LstmOnly => "lstm_only",
            Candidate::Zscore => "zscore",
        }
    }

    /// Reads the command-line spelling.
    pub fn parse(s: &str) -> Result<Self> {
        Candidate::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            AnomalyError::Config(format!("unknown detector {s:?} (portico, no_lstm, no_seasonal, lstm_only, zscore)"))
        })
    }
}

/// Scores of one detector on one corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusReport {
    /// The detector.
    pub detector: String,
    /// Series scored.
    pub files: usize,
    /// Rows scored.
    pub rows: usize,
    /// The three profiles.
    pub profiles: Vec<ProfileResult>,
    /// Per family: (windows detected at the standard profile's threshold, windows, false positives).
    pub families: BTreeMap<String, (usize, usize, usize)>,
    /// Per kind of anomaly: (labels whose window holds a detection at the standard threshold, labels).
    pub kinds: BTreeMap<String, (usize, usize)>,
    /// Rows per second of the scoring itself (both threads).
    pub rows_per_second: f64,
}

/// Scores every series of `corpus` with `candidate` and rates the result.
pub fn evaluate(
    corpus: &[CorpusSeries],
    model: &Arc<Forecaster>,
    candidate: Candidate,
    params: DetectorParams,
) -> Result<CorpusReport> {
    let members = match candidate {
        Candidate::NoLstm => Members { lstm: false, ..Members::default() },
        Candidate::NoSeasonal => Members { seasonal: false, ..Members::default() },
        Candidate::LstmOnly => Members { seasonal: false, simple: false, ..Members::default() },
        _ => Members::default(),
    };
    let members = Members { sharpness: params.ensemble_sharpness, ..members };
    let kit = DetectorKit { members, ..DetectorKit::new(model, params)? };
    let started = Instant::now();
    let scored: Vec<Vec<f64>> = std::thread::scope(|scope| {
        let halves = corpus.chunks(corpus.len().div_ceil(2).max(1));
        let handles: Vec<_> = halves
            .map(|part| {
                let kit = &kit;
                scope.spawn(move || {
                    part.iter()
                        .map(|s| match candidate {
                            Candidate::Zscore => zscore(&s.values),
                            _ => score_series(kit, &s.values, Some(s.interval_ms)),
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    if scored.len() != corpus.len() {
        return Err(AnomalyError::Data("a scoring thread failed".into()));
    }
    let files: Vec<ScoredFile> = corpus
        .iter()
        .zip(scored)
        .map(|(s, scores)| ScoredFile { scores, labels: s.labels.iter().map(|l| l.row).collect() })
        .collect();
    let profiles = nab::score_all(&files);
    let threshold = profiles[0].threshold;
    let mut families: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for (s, f) in corpus.iter().zip(&files) {
        let (hit, total, fps) = detections(f, threshold);
        let e = families.entry(s.family.clone()).or_default();
        e.0 += hit;
        e.1 += total;
        e.2 += fps;
    }
    let mut kinds: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (s, f) in corpus.iter().zip(&files) {
        let half = (0.1 * f.scores.len() as f64 / s.labels.len().max(1) as f64) as usize / 2;
        let start = nab::probation(f.scores.len());
        for l in &s.labels {
            let (lo, hi) = (l.row.saturating_sub(half).max(start), (l.row + half).min(f.scores.len() - 1));
            let e = kinds.entry(l.kind.clone()).or_default();
            e.0 += usize::from(lo <= hi && f.scores[lo..=hi].iter().any(|&x| x >= threshold));
            e.1 += 1;
        }
    }
    let rows = corpus.iter().map(|s| s.values.len()).sum();
    Ok(CorpusReport {
        detector: candidate.name().to_string(),
        files: corpus.len(),
        rows,
        profiles,
        families,
        kinds,
        rows_per_second: rows as f64 / elapsed.max(1e-9),
    })
}

/// (windows with a detection, windows, detections outside every window) of one file at `threshold`.
pub fn detections(f: &ScoredFile, threshold: f64) -> (usize, usize, usize) {
    let wins = nab::windows(f.scores.len(), &f.labels);
    let start = nab::probation(f.scores.len());
    let hit = wins.iter().filter(|w| f.scores[w.start.max(start)..=w.end].iter().any(|&s| s >= threshold)).count();
    let fps = (start..f.scores.len())
        .filter(|&i| f.scores[i] >= threshold && !wins.iter().any(|w| (w.start..=w.end).contains(&i)))
        .count();
    (hit, wins.len(), fps)
}

/// The running z-score reference: |x − mean| / std of every earlier value, mapped to [0, 1).
fn zscore(values: &[Option<f64>]) -> Vec<f64> {
    let (mut n, mut mean, mut m2) = (0f64, 0f64, 0f64);
    values
        .iter()
        .map(|v| {
            let Some(x) = *v else { return 0.0 };
            let score = if n >= 2.0 {
                let sd = (m2 / (n - 1.0)).sqrt().max(1e-9);
                let z = (x - mean).abs() / sd;
                z / (z + 3.0)
            } else {
                0.0
            };
            n += 1.0;
            let d = x - mean;
            mean += d / n;
            m2 += d * (x - mean);
            score
        })
        .collect()
}

/// The report as text: one line per profile, then the breakdown by family.
pub fn render(r: &CorpusReport) -> String {
    let mut out =
        format!("detector {} on {} series, {} rows ({:.0} rows/s)\n", r.detector, r.files, r.rows, r.rows_per_second);
    for p in &r.profiles {
        out.push_str(&format!(
            "  {:<14} {:6.1}   threshold {:.4}, {} of {} windows, {} false positives\n",
            p.profile, p.score, p.threshold, p.detected, p.windows, p.false_positives
        ));
    }
    out.push_str("  by family (standard threshold): detected/windows, false positives\n");
    for (family, (hit, total, fps)) in &r.families {
        out.push_str(&format!("    {family:<16} {hit:>4}/{total:<4} {fps:>5}\n"));
    }
    out.push_str("  by kind of anomaly: detected/labels\n");
    for (kind, (hit, total)) in &r.kinds {
        out.push_str(&format!("    {kind:<16} {hit:>4}/{total:<4}\n"));
    }
    out
}
