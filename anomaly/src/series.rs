//! One series, one value at a time: from forecast residuals to an anomaly score an operator can act on.
//!
//! The score answers "is this beyond anything this series usually does?", so it is scale-free and robust:
//! 1. **Residual.** The ensemble ([`crate::forecast`]) says how many usual errors the value lies from what was
//!    expected. The usual error is floored by the series' resolution (its smallest step, a share of its spread
//!    and level, and for live series a floor per kind such as 1 % for an error ratio), so a noise-free series
//!    does not turn a rounding error into an alarm and a zero error ratio stays quiet until errors appear.
//! 2. **Evidence.** The residual is divided by the series' own tail: the 99th percentile of its past residuals
//!    ([`TailSketch`]), never below a Gaussian-like floor. A latency series whose residuals reach eight usual
//!    errors every hour is judged against that, a clean one against the floor.
//! 3. **Events.** Evidence past `trigger` opens an event. While it lasts, the anomalous values are not learned:
//!    the ensemble is fed what it expected instead, so the score stays high for as long as the series stays
//!    away from its old pattern, and falls as soon as it returns. If the series has not returned after
//!    `adapt_rows`, the change is a new regime: the forecasters and spreads are rebased on the new level and
//!    spread, and the score falls — a level shift or variance change alerts once, then becomes the new normal.
//! 4. **Refractory.** For `refractory_rows` after an event the evidence is discounted (by `refractory_factor`,
//!    easing back to 1), so the aftershocks of one fault do not open a string of events.
//!
//! The score is `e / (e + trigger)` of the evidence `e`: 0.5 where an event opens, rising towards 1.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::evidence::Channel;
use crate::forecast::lstm::{LstmCell, LstmMember};
use crate::forecast::{Ensemble, Members};
use crate::model::Forecaster;

/// Tuning of [`SeriesDetector`]. The defaults were chosen on the development half of the generated corpus
/// (`portico anomaly corpus --seed 1`), never on the held-back half (see `models/portico-lstm.md`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorParams {
    /// Rows scored 0 at the start while the statistics fill.
    pub warmup: u32,
    /// Lower bound of the tail reference, in usual errors (about a Gaussian's 99th percentile).
    pub tail_floor: f64,
    /// Quantile of past residual sizes used as the tail reference.
    pub tail_quantile: f64,
    /// Half-life, in rows, of the tail sketch's memory.
    pub tail_half_life: f64,
    /// Rows the sustained channel sums (1 turns it off).
    pub sustain_rows: u32,
    /// How sharply the ensemble's weights favour its best member (see [`Members::sharpness`]).
    pub ensemble_sharpness: f64,
    /// Evidence at which an event opens (score 0.5).
    pub trigger: f64,
    /// Evidence under which a row counts as back to normal during an event.
    pub release: f64,
    /// Consecutive normal rows that close an event.
    pub calm_rows: u32,
    /// Rows after which a lasting event becomes the new regime.
    pub adapt_rows: u32,
    /// Rows after an event during which evidence is discounted.
    pub refractory_rows: u32,
    /// Divisor of the evidence right after an event (eases to 1 over `refractory_rows`).
    pub refractory_factor: f64,
    /// Per-row factor on the score inside an event: the score marks where an anomaly starts, and the
    /// event (not the score) says how long it lasts.
    pub event_decay: f64,
    /// The usual error is at least this share of the series' typical step between consecutive values.
    pub spread_floor: f64,
}

impl Default for DetectorParams {
    fn default() -> Self {
        DetectorParams {
            warmup: 50,
            tail_floor: 3.0,
            tail_quantile: 0.995,
            tail_half_life: 600.0,
            sustain_rows: 5,
            ensemble_sharpness: 8.0,
            trigger: 1.5,
            release: 0.8,
            calm_rows: 3,
            adapt_rows: 30,
            refractory_rows: 30,
            refractory_factor: 2.0,
            event_decay: 0.3,
            spread_floor: 0.3,
        }
    }
}

/// What one value amounted to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Anomaly score in [0, 1): high where an anomaly starts, decaying while its event lasts.
    pub score: f64,
    /// The score without the decay inside an event: how strong the deviation is now.
    pub strength: f64,
    /// What the series was expected to do, raw units (`None` before the first forecast).
    pub expected: Option<f64>,
    /// The standardised residual (usual errors from the expectation, signed).
    pub residual: f64,
    /// The evidence behind the score (residual over the series' tail reference).
    pub evidence: f64,
    /// Whether the value is part of an event.
    pub in_event: bool,
    /// Set on the row where a lasting event was accepted as the new normal.
    pub adapted: bool,
}

#[derive(Debug, Clone)]
struct Event {
    rows: u32,
    calm: u32,
    /// (observed, expected) per row of the event.
    seen: Vec<(f64, f64)>,
}

/// The detector of one series.
#[derive(Debug, Clone)]
pub struct SeriesDetector {
    params: DetectorParams,
    ensemble: Ensemble,
    /// Evidence channels: one row, and `sustain_rows` rows.
    channels: [Channel; 2],
    rows: u64,
    last: Option<f64>,
    /// Smallest step between two different consecutive values: the series' resolution.
    quantum: f64,
    /// Non-zero steps seen; the smallest means nothing until there have been a few.
    steps: u32,
    mean: Option<f64>,
    /// Mean size of a step between consecutive values: the scale a change is judged on when the
    /// forecasts are exact.
    deviation: f64,
    last_for_step: Option<f64>,
    abs_floor: f64,
    event: Option<Event>,
    since_event: u32,
    /// After a regime change: how far the new level lies from the old, and for how many more rows a return to
    /// the old level counts as a return rather than a new anomaly (a plateau's end).
    previous: Option<(f64, u32)>,
}

/// Shared inputs for building series detectors.
#[derive(Debug, Clone)]
pub struct DetectorKit {
    /// The LSTM (weights copied out of candle) and its model, when the LSTM member runs.
    pub lstm: Option<(Arc<LstmCell>, Arc<Forecaster>)>,
    /// Members to run.
    pub members: Members,
    /// Tuning.
    pub params: DetectorParams,
}

impl DetectorKit {
    /// A kit with the LSTM of `model` and every member.
    pub fn new(model: &Arc<Forecaster>, params: DetectorParams) -> crate::Result<Self> {
        let members = Members { sharpness: params.ensemble_sharpness, ..Members::default() };
        Ok(DetectorKit { lstm: Some((Arc::new(LstmCell::new(model)?), model.clone())), members, params })
    }

    /// A detector for one series. `day` is a day's length in rows when known; `abs_floor` the smallest change
    /// that matters for this kind of series (0 when unknown).
    pub fn series(&self, day: Option<usize>, abs_floor: f64) -> SeriesDetector {
        let (cell, member) = match &self.lstm {
            Some((cell, model)) if self.members.lstm => (Some(cell.clone()), Some(LstmMember::new(model))),
            _ => (None, None),
        };
        SeriesDetector {
            params: self.params,
            ensemble: Ensemble::new(cell, member, self.members, day),
            channels: [1, self.params.sustain_rows as usize].map(|k| {
                Channel::new(k, self.params.tail_half_life, self.params.tail_quantile, self.params.tail_floor)
            }),
            rows: 0,
            last: None,
            quantum: f64::INFINITY,
            steps: 0,
            mean: None,
            deviation: 0.0,
            last_for_step: None,
            abs_floor,
            event: None,
            since_event: u32::MAX,
            previous: None,
        }
    }
}

impl SeriesDetector {
    /// Values seen.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The smallest error that counts, raw units.
    fn floor(&self) -> f64 {
        let q = if self.steps >= 10 { 0.5 * self.quantum } else { 0.0 };
        let level = self.mean.map_or(0.0, f64::abs);
        q.max(self.params.spread_floor * self.deviation).max(1e-4 * level).max(self.abs_floor).max(1e-12)
    }

    /// A missing value: nothing is learned, the score is 0.
    pub fn skip(&mut self) -> Verdict {
        self.ensemble.skip();
        Verdict {
            score: 0.0,
            strength: 0.0,
            expected: None,
            residual: 0.0,
            evidence: 0.0,
            in_event: self.event.is_some(),
            adapted: false,
        }
    }

    /// Judges `x`, then learns from it.
    pub fn observe(&mut self, x: f64) -> Verdict {
        let p = self.params;
        let floor = self.floor();
        let judged = self.ensemble.judge(x, floor);
        let mut v = Verdict {
            score: 0.0,
            strength: 0.0,
            expected: judged.map(|j| j.expected),
            residual: judged.map_or(0.0, |j| j.residual),
            evidence: 0.0,
            in_event: false,
            adapted: false,
        };
        let warm = self.rows >= u64::from(p.warmup);
        let r = v.residual;
        let mut evidence = self.channels.iter().map(|c| c.evidence(r)).fold(0.0, f64::max);
        if self.since_event < p.refractory_rows {
            let ease = f64::from(self.since_event) / f64::from(p.refractory_rows.max(1));
            evidence /= p.refractory_factor + (1.0 - p.refractory_factor) * ease;
        }
        v.evidence = evidence;
        let mut fed = x;
        let mut learn = true;
        let mut onset = false;
        let age = self.event.as_ref().map_or(0, |e| e.rows);
        let returning = self.event.is_none()
            && warm
            && evidence >= p.trigger
            && judged.is_some_and(|j| self.returned(x, j.expected, floor));
        if returning {
            evidence = 0.0;
            v.evidence = 0.0;
            learn = false;
        }
        match (&mut self.event, judged) {
            (Some(ev), Some(j)) => {
                ev.rows += 1;
                ev.seen.push((x, j.expected));
                ev.calm = if evidence < p.release { ev.calm + 1 } else { 0 };
                v.in_event = true;
                if ev.calm >= p.calm_rows {
                    self.event = None;
                    self.since_event = 0;
                } else if ev.rows >= p.adapt_rows {
                    self.adopt(floor);
                    v.adapted = true;
                } else {
                    fed = j.expected;
                    learn = false;
                }
            }
            (None, Some(j)) if warm && evidence >= p.trigger => {
                self.event = Some(Event { rows: 1, calm: 0, seen: vec![(x, j.expected)] });
                onset = true;
                v.in_event = true;
                fed = j.expected;
                learn = false;
            }
            _ => {}
        }
        if warm {
            v.strength = evidence / (evidence + p.trigger);
            v.score = v.strength * p.event_decay.powi(age.min(1000) as i32);
        }
        if learn {
            self.ensemble.learn_errors(x, floor);
        }
        // The tails learn normal rows, and each event once, by its onset: anomalies that keep recurring (a
        // batch job's spikes, the odd error in an error count) raise the bar for the next, while one event's
        // lasting rows cannot mask the next event.
        for c in &mut self.channels {
            c.push(r, learn || onset);
        }
        // The resolution and scale are learned from every value: a blip in a flat series is still a step.
        self.learn_scale(x);
        self.ensemble.feed(fed);
        self.rows += 1;
        self.since_event = self.since_event.saturating_add(1);
        if let Some((_, left)) = &mut self.previous {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.previous = None;
            }
        }
        v
    }

    /// The event lasted: its level and spread become the series' normal.
    fn adopt(&mut self, floor: f64) {
        let Some(ev) = self.event.take() else { return };
        let mut offsets: Vec<f64> = ev.seen.iter().map(|(x, e)| x - e).collect();
        offsets.sort_by(f64::total_cmp);
        let offset = offsets[offsets.len() / 2];
        let spread = ev.seen.iter().map(|(x, e)| (x - e - offset).abs()).sum::<f64>() / ev.seen.len() as f64;
        let recent: Vec<f64> = ev.seen.iter().map(|(x, _)| *x).collect();
        self.ensemble.rebase(&recent, offset, spread.max(floor));
        for c in &mut self.channels {
            c.clear();
        }
        self.since_event = 0;
        self.previous = Some((offset, self.params.adapt_rows.saturating_mul(10)));
    }

    /// Whether `x`, which the current regime finds anomalous, is the series going back to the regime before
    /// the last change; if so the forecasts move back with it.
    fn returned(&mut self, x: f64, expected: f64, floor: f64) -> bool {
        let Some((offset, _)) = self.previous else { return false };
        let Some(j) = self.ensemble.judge(x + offset, floor) else { return false };
        let back = self.channels[0].evidence(j.residual) < self.params.release && (x - expected) * offset < 0.0;
        if back {
            self.ensemble.rebase(&[x], -offset, 0.0);
            for c in &mut self.channels {
                c.clear();
            }
            self.previous = None;
        }
        back
    }

    fn learn_scale(&mut self, x: f64) {
        if let Some(last) = self.last {
            let step = (x - last).abs();
            if step > 0.0 {
                self.quantum = self.quantum.min(step);
                self.steps = self.steps.saturating_add(1);
            }
        }
        self.last = Some(x);
        let alpha = 1.0 / ((self.rows + 1) as f64).min(500.0);
        let m = self.mean.map_or(x, |m| m + alpha * (x - m));
        if let Some(last) = self.last_for_step {
            self.deviation += alpha * ((x - last).abs() - self.deviation);
        }
        self.last_for_step = Some(x);
        self.mean = Some(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::Members;
    use crate::model::SplitMix64;

    fn kit() -> DetectorKit {
        DetectorKit {
            lstm: None,
            members: Members { lstm: false, ..Members::default() },
            params: DetectorParams::default(),
        }
    }

    #[test]
    fn a_clean_cycle_and_a_flat_zero_raise_nothing() {
        let mut clean = kit().series(None, 0.0);
        let mut zero = kit().series(None, 0.0);
        for t in 0..3000 {
            let x = 50.0 + 20.0 * (t as f64 * std::f64::consts::TAU / 96.0).sin();
            let a = clean.observe(x);
            assert!(a.score < 0.5, "row {t}: {a:?}");
            let z = zero.observe(0.0);
            assert_eq!(z.score, 0.0);
        }
    }

    #[test]
    fn a_level_shift_opens_one_event_that_becomes_normal() {
        let mut d = kit().series(None, 0.0);
        let mut rng = SplitMix64::new(9);
        let mut high = Vec::new();
        let mut adapted = 0;
        for t in 0..2000 {
            let x = if t < 1000 { 10.0 } else { 30.0 } + rng.normal();
            let v = d.observe(x);
            if v.score >= 0.5 {
                high.push(t);
            }
            adapted += usize::from(v.adapted);
        }
        assert!(high.first().is_some_and(|&t| t == 1000), "{high:?}");
        assert!(high.iter().all(|&t| (1000..1000 + 40).contains(&t)), "{high:?}");
        assert_eq!(adapted, 1);
    }
}
