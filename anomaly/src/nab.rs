//! Window-based scoring of a detector, as the Numenta Anomaly Benchmark paper describes it (Lavin & Ahmad,
//! "Evaluating Real-time Anomaly Detection Algorithms – the Numenta Anomaly Benchmark", 2015), implemented from
//! the paper's description.
//!
//! - Each labelled anomaly gets a window centred on it; a file's windows together span 10 % of its rows
//!   (each window `0.1 · rows / labels` long), and windows that overlap are merged.
//! - The first 15 % of a file (at most 750 rows) is a probation period where nothing is scored.
//! - A row whose score reaches the threshold is a detection. Only the first detection in a window counts, with
//!   the reward `σ(y) = 2 / (1 + e^{5y}) − 1` of its relative position `y` (−1 at the window's start, 0 at its
//!   end), scaled so the earliest detection earns `A_TP`. A window without a detection costs `A_FN`.
//! - A detection outside every window costs `A_FP · σ(y)` where `y` is its distance past the end of the window
//!   before it, in window lengths (so a late detection just after a window costs little), or `A_FP` in full when
//!   no window precedes it.
//! - The threshold is chosen per profile to maximise the corpus' total, and the total is normalised so that a
//!   detector that finds nothing scores 0 and one that finds every anomaly at its window's start scores 100.

use serde::{Deserialize, Serialize};

/// The weights of one application profile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Profile name, as the paper's tables give it.
    pub name: &'static str,
    /// Weight of a true positive.
    pub tp: f64,
    /// Weight of a false positive.
    pub fp: f64,
    /// Weight of a missed window.
    pub fn_: f64,
}

/// The paper's three profiles: standard, reward low false positives, reward low false negatives.
pub const PROFILES: [Profile; 3] = [
    Profile { name: "standard", tp: 1.0, fp: 0.11, fn_: 1.0 },
    Profile { name: "reward_low_fp", tp: 1.0, fp: 0.22, fn_: 1.0 },
    Profile { name: "reward_low_fn", tp: 1.0, fp: 0.11, fn_: 2.0 },
];

/// One scored file: its detector output and its labelled anomaly rows.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredFile {
    /// Detector score per row.
    pub scores: Vec<f64>,
    /// Rows of labelled anomalies.
    pub labels: Vec<usize>,
}

/// A window, inclusive row bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First row.
    pub start: usize,
    /// Last row.
    pub end: usize,
}

/// Rows scored nothing at the start of a file of `rows` rows.
pub fn probation(rows: usize) -> usize {
    ((0.15 * rows as f64).floor() as usize).min(750)
}

/// The windows of a file of `rows` rows with anomalies at `labels`, merged where they overlap.
pub fn windows(rows: usize, labels: &[usize]) -> Vec<Window> {
    if labels.is_empty() || rows == 0 {
        return Vec::new();
    }
    let width = ((0.1 * rows as f64) / labels.len() as f64) as usize;
    let mut sorted = labels.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<Window> = Vec::new();
    for l in sorted {
        let w = Window { start: l.saturating_sub(width / 2), end: (l + width / 2).min(rows - 1) };
        match out.last_mut() {
            Some(last) if w.start <= last.end => last.end = last.end.max(w.end),
            _ => out.push(w),
        }
    }
    out
}

/// The paper's scaled sigmoid.
fn sigma(y: f64) -> f64 {
    2.0 / (1.0 + (5.0 * y).exp()) - 1.0
}

/// What one row would add if it were a detection.
#[derive(Debug, Clone, Copy)]
enum Effect {
    /// Inside window `id`: its unweighted reward, in (0, 1].
    Inside { id: usize, reward: f64 },
    /// Outside every window: its unweighted (negative) cost.
    Outside { cost: f64 },
}

fn effects(file: &ScoredFile, first_id: usize) -> (Vec<(f64, Effect)>, usize) {
    let rows = file.scores.len();
    let wins = windows(rows, &file.labels);
    let max_tp = sigma(-1.0);
    let mut out = Vec::with_capacity(rows);
    let mut current = 0usize; // index of the first window not entirely before the row
    for (i, &score) in file.scores.iter().enumerate().skip(probation(rows)) {
        while current < wins.len() && wins[current].end < i {
            current += 1;
        }
        let effect = match wins.get(current) {
            Some(w) if w.start <= i => {
                let width = (w.end - w.start + 1) as f64;
                let y = -((w.end - i + 1) as f64) / width;
                Effect::Inside { id: first_id + current, reward: sigma(y) / max_tp }
            }
            _ => match current.checked_sub(1).map(|p| wins[p]) {
                Some(prev) => {
                    let width = (prev.end - prev.start + 1) as f64;
                    let y = (i - prev.end) as f64 / (width - 1.0).max(1.0);
                    Effect::Outside { cost: sigma(y) }
                }
                None => Effect::Outside { cost: -1.0 },
            },
        };
        if score.is_finite() {
            out.push((score, effect));
        }
    }
    (out, wins.len())
}

/// The outcome for one profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileResult {
    /// Profile name.
    pub profile: String,
    /// Normalised score: 0 for a detector that finds nothing, 100 for a perfect one.
    pub score: f64,
    /// The threshold that maximised it (scores at or above it are detections).
    pub threshold: f64,
    /// Windows with a detection at that threshold.
    pub detected: usize,
    /// Windows in the corpus.
    pub windows: usize,
    /// Detections outside every window at that threshold.
    pub false_positives: usize,
}

/// Scores `files` under `profile`, choosing the best threshold by an exact sweep over every score value.
pub fn score(files: &[ScoredFile], profile: &Profile) -> ProfileResult {
    let mut rows: Vec<(f64, Effect)> = Vec::new();
    let mut windows_total = 0;
    for f in files {
        let (e, w) = effects(f, windows_total);
        rows.extend(e);
        windows_total += w;
    }
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let null = -profile.fn_ * windows_total as f64;
    let mut total = null;
    let mut best = (total, f64::INFINITY, 0usize, 0usize);
    let mut reward: Vec<Option<f64>> = vec![None; windows_total];
    let (mut detected, mut fps) = (0usize, 0usize);
    let mut i = 0;
    while i < rows.len() {
        let threshold = rows[i].0;
        while i < rows.len() && rows[i].0 == threshold {
            match rows[i].1 {
                Effect::Inside { id, reward: r } => match reward[id] {
                    None => {
                        total += profile.fn_ + profile.tp * r;
                        reward[id] = Some(r);
                        detected += 1;
                    }
                    Some(old) if r > old => {
                        total += profile.tp * (r - old);
                        reward[id] = Some(r);
                    }
                    Some(_) => {}
                },
                Effect::Outside { cost } => {
                    total += profile.fp * cost;
                    fps += 1;
                }
            }
            i += 1;
        }
        if total > best.0 {
            best = (total, threshold, detected, fps);
        }
    }
    let perfect = profile.tp * windows_total as f64;
    let normalised = if windows_total == 0 { 0.0 } else { 100.0 * (best.0 - null) / (perfect - null) };
    ProfileResult {
        profile: profile.name.to_string(),
        score: normalised,
        threshold: best.1,
        detected: best.2,
        windows: windows_total,
        false_positives: best.3,
    }
}

/// All three profiles.
pub fn score_all(files: &[ScoredFile]) -> Vec<ProfileResult> {
    PROFILES.iter().map(|p| score(files, p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(rows: usize, labels: &[usize], detections: &[usize]) -> ScoredFile {
        let mut scores = vec![0.0; rows];
        for &d in detections {
            scores[d] = 1.0;
        }
        ScoredFile { scores, labels: labels.to_vec() }
    }

    #[test]
    fn windows_span_a_tenth_and_merge() {
        assert_eq!(windows(1000, &[500]), vec![Window { start: 450, end: 550 }]);
        assert_eq!(windows(1000, &[500, 520]), vec![Window { start: 475, end: 545 }]);
        assert_eq!(windows(1000, &[995]), vec![Window { start: 945, end: 999 }]);
        assert_eq!(probation(1000), 150);
        assert_eq!(probation(100_000), 750);
    }

    #[test]
    fn perfect_null_and_early_beat_late() {
        let st = &PROFILES[0];
        let perfect = score(&[file(1000, &[500], &[450])], st);
        assert!((perfect.score - 100.0).abs() < 1e-9, "{perfect:?}");
        let null = score(&[file(1000, &[500], &[])], st);
        assert_eq!(null.score, 0.0);
        let late = score(&[file(1000, &[500], &[540])], st);
        let early = score(&[file(1000, &[500], &[470])], st);
        assert!(early.score > late.score && late.score > 0.0, "{early:?} {late:?}");
    }

    #[test]
    fn false_positives_cost_by_profile_and_distance() {
        // One detection in the window and one far outside: the standard profile loses 0.11 of 2 (5.5 points).
        let f = file(1000, &[500], &[450, 900]);
        let st = score(std::slice::from_ref(&f), &PROFILES[0]);
        let fp_cost = 0.11 * sigma(350.0 / 100.0);
        assert!((st.score - 100.0 * (2.0 + fp_cost) / 2.0).abs() < 1e-9, "{st:?}");
        // A detection before any window costs A_FP in full; in probation it costs nothing.
        let before = score(&[file(1000, &[500], &[450, 300])], &PROFILES[1]);
        assert!((before.score - 100.0 * (2.0 - 0.22) / 2.0).abs() < 1e-9, "{before:?}");
        let probation_row = score(&[file(1000, &[500], &[450, 100])], &PROFILES[1]);
        assert!((probation_row.score - 100.0).abs() < 1e-9);
    }

    #[test]
    fn the_sweep_finds_the_best_threshold() {
        // A high score in the window, a middling one outside: the best threshold keeps only the first.
        let mut f = file(1000, &[500], &[]);
        f.scores[480] = 0.9;
        f.scores[800] = 0.5;
        let r = score(&[f], &PROFILES[0]);
        assert_eq!(r.threshold, 0.9);
        assert_eq!((r.detected, r.false_positives), (1, 0));
    }
}
