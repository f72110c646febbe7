//! What a series should do next: an ensemble of forecasters, weighted by how well each has done on this series.
//!
//! No single forecaster fits every series an operator watches. The LSTM learned Portico's own sub-second
//! series; a daily traffic curve is forecast best by yesterday at the same time; a counter by its last value
//! plus its rate; a noisy stationary gauge by a smooth mean. So each series runs all of them side by side, each
//! member keeps its own error statistics ([`Spread`] for the usual size, an exponentially weighted mean square
//! error for its weight), and the ensemble's residual is the members' standardised residuals weighted by
//! inverse squared MSE: a member contributes in proportion to how well it has forecast *this* series so far,
//! measured as the series streams. A member that forecasts badly fades out instead of raising alarms.
//!
//! Seasonal members join when a cycle is known: a day in rows when the series carries timestamps, or a cycle
//! found in the values ([`period::detect`]). A joining member's statistics are replayed over the stored
//! history, so it is judged on the same footing as members that were there from the start.

pub mod lstm;
pub mod period;

use std::collections::VecDeque;
use std::sync::Arc;

use crate::spread::Spread;
use lstm::{LstmCell, LstmMember};

/// Rows of history kept for seasonal members and cycle detection.
pub const HISTORY: usize = 4096;

/// Memory, in rows, of each member's error statistics.
const ERROR_MEMORY: f64 = 200.0;
/// Errors beyond this many MAEs are clipped before they teach the statistics.
const WINSOR: f64 = 5.0;
/// Errors a member must have made before it is trusted with a weight.
const MIN_ERRORS: u64 = 20;

/// How one member forecasts.
#[derive(Debug, Clone)]
enum Kind {
    /// The last value (a random walk).
    Last,
    /// An exponentially weighted mean of the values.
    Mean { alpha: f64, level: Option<f64> },
    /// Holt's linear trend: a level plus a rate (counters, trends).
    Trend { level: Option<f64>, slope: f64 },
    /// The value one cycle ago (`delta == false`), or the last value plus the change one cycle ago.
    Seasonal { period: usize, delta: bool },
    /// The bundled LSTM.
    Lstm(Box<LstmMember>),
}

/// One forecaster with its error statistics.
#[derive(Debug, Clone)]
struct Member {
    kind: Kind,
    next: Option<f64>,
    spread: Spread,
    mse: f64,
    errors: u64,
}

impl Member {
    fn new(kind: Kind) -> Self {
        Member { kind, next: None, spread: Spread::new(ERROR_MEMORY, WINSOR), mse: 0.0, errors: 0 }
    }

    /// The squared error is folded in whole: a member that is usually exact but badly wrong at every edge
    /// of a square wave must lose its weight. Anomalies do not distort it, because values inside an event are
    /// never learned.
    fn learn_error(&mut self, err: f64, floor: f64) {
        if !err.is_finite() {
            return;
        }
        self.errors += 1;
        let alpha = 1.0 / (self.errors as f64).min(ERROR_MEMORY);
        self.mse += alpha * (err * err - self.mse);
        self.spread.update(err, floor);
    }
}

/// The ensemble's view of one value before it is learned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judgement {
    /// What the ensemble expected (weighted forecast), raw units.
    pub expected: f64,
    /// The weighted standardised residual: how many usual errors the value lies from the forecasts.
    pub residual: f64,
}

/// Names of the members, for reports of what each contributes.
pub const MEMBERS: &[&str] = &["last", "mean", "smooth", "trend", "lstm", "seasonal", "seasonal_delta"];

/// Which members run; for measuring what each adds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Members {
    /// The LSTM.
    pub lstm: bool,
    /// Seasonal members.
    pub seasonal: bool,
    /// Last value, means and trend.
    pub simple: bool,
    /// How sharply weights fall with a member's MSE relative to the best member's: a member with `1 + 1/s`
    /// times the best MSE gets `1/e` of its weight.
    pub sharpness: f64,
}

impl Default for Members {
    fn default() -> Self {
        Members { lstm: true, seasonal: true, simple: true, sharpness: 8.0 }
    }
}

/// The ensemble of one series.
#[derive(Debug, Clone)]
pub struct Ensemble {
    members: Vec<Member>,
    /// The usual error of the weighted forecast.
    spread: Spread,
    /// How sharply weights fall with a member's MSE relative to the best member's.
    sharpness: f64,
    history: VecDeque<f64>,
    cell: Option<Arc<LstmCell>>,
    which: Members,
    rows: u64,
    /// Periods already given members.
    periods: Vec<usize>,
    next_detection: u64,
}

impl Ensemble {
    /// An ensemble with the simple members and, when `cell` is given, the LSTM. `day` is the length of a day in
    /// rows when the series' interval is known.
    pub fn new(
        cell: Option<Arc<LstmCell>>,
        lstm_member: Option<LstmMember>,
        which: Members,
        day: Option<usize>,
    ) -> Self {
        let mut members = Vec::new();
        if which.simple {
            members.push(Member::new(Kind::Last));
            members.push(Member::new(Kind::Mean { alpha: 0.05, level: None }));
            members.push(Member::new(Kind::Mean { alpha: 0.3, level: None }));
            members.push(Member::new(Kind::Trend { level: None, slope: 0.0 }));
        }
        if let (true, Some(m)) = (which.lstm, lstm_member) {
            members.push(Member::new(Kind::Lstm(Box::new(m))));
        }
        let mut e = Ensemble {
            members,
            spread: Spread::new(ERROR_MEMORY, WINSOR),
            sharpness: which.sharpness,
            history: VecDeque::with_capacity(HISTORY),
            cell,
            which,
            rows: 0,
            periods: Vec::new(),
            next_detection: 256,
        };
        if let Some(day) = day.filter(|d| (4..=HISTORY / 3).contains(d)) {
            e.add_period(day);
        }
        e
    }

    /// Values fed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Cycles the seasonal members follow.
    pub fn periods(&self) -> &[usize] {
        &self.periods
    }

    /// The value `back` rows before the next one (1 = the last fed), if still held.
    fn past(&self, back: usize) -> Option<f64> {
        let n = self.history.len();
        (back >= 1 && back <= n).then(|| self.history[n - back]).filter(|v| v.is_finite())
    }

    fn seasonal_forecast(&self, period: usize, delta: bool) -> Option<f64> {
        let then = self.past(period)?;
        if !delta {
            return Some(then);
        }
        Some(self.past(1)? + then - self.past(period + 1)?)
    }

    /// The weighted forecast of the next value: members weighted by `exp(−β (mse / best mse − 1))`, so the
    /// best member leads and members nearly as good share, while one that is much worse (the last value at
    /// the edges of a square wave) drops out entirely. Members still learning share a fallback.
    pub fn expected(&self, floor: f64) -> Option<f64> {
        let trusted = || self.members.iter().filter(|m| m.next.is_some() && m.errors >= MIN_ERRORS);
        let best = trusted().map(|m| m.mse).fold(f64::INFINITY, f64::min).max(floor * floor).max(f64::MIN_POSITIVE);
        let (mut total_w, mut expected) = (0.0, 0.0);
        for m in trusted() {
            let w = (-self.sharpness * (m.mse.max(floor * floor) / best - 1.0)).exp();
            total_w += w;
            expected += w * m.next.unwrap_or(0.0);
        }
        if total_w > 0.0 {
            Some(expected / total_w)
        } else {
            self.members.iter().find_map(|m| m.next)
        }
    }

    /// Judges `x` against the weighted forecast, in units of the ensemble's own usual error.
    pub fn judge(&self, x: f64, floor: f64) -> Option<Judgement> {
        let expected = self.expected(floor)?;
        Some(Judgement { expected, residual: (x - expected) / self.spread.value(floor) })
    }

    /// Folds the error each member made on `x` into its statistics (skipped for values judged anomalous, so
    /// an anomaly does not become the usual error).
    pub fn learn_errors(&mut self, x: f64, floor: f64) {
        if let Some(e) = self.expected(floor) {
            self.spread.update(x - e, floor);
        }
        for m in &mut self.members {
            if let Some(f) = m.next {
                m.learn_error(x - f, floor);
            }
        }
    }

    /// Feeds `x` (observed, or the expected value in place of an anomalous one) and makes the next forecasts.
    pub fn feed(&mut self, x: f64) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(x);
        self.rows += 1;
        self.advance_members(x);
        if self.rows >= self.next_detection {
            self.next_detection = self.rows * 2;
            self.detect_cycle();
        }
        self.refresh_seasonal();
    }

    /// A missing value: the history keeps its place, the members their state.
    pub fn skip(&mut self) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(f64::NAN);
        self.refresh_seasonal();
    }

    fn advance_members(&mut self, x: f64) {
        let cell = self.cell.clone();
        for m in &mut self.members {
            m.next = match &mut m.kind {
                Kind::Last => Some(x),
                Kind::Mean { alpha, level } => {
                    let l = level.map_or(x, |l| l + *alpha * (x - l));
                    *level = Some(l);
                    Some(l)
                }
                Kind::Trend { level, slope } => {
                    let (l, s) = match *level {
                        None => (x, 0.0),
                        Some(prev) => {
                            let l = 0.5 * x + 0.5 * (prev + *slope);
                            (l, 0.05 * (l - prev) + 0.95 * *slope)
                        }
                    };
                    *level = Some(l);
                    *slope = s;
                    Some(l + s)
                }
                Kind::Seasonal { .. } => m.next, // refreshed from the history below
                Kind::Lstm(member) => {
                    if let Some(cell) = &cell {
                        member.observe(cell, x);
                    }
                    member.forecast()
                }
            };
        }
    }

    fn refresh_seasonal(&mut self) {
        for i in 0..self.members.len() {
            if let Kind::Seasonal { period, delta } = self.members[i].kind {
                self.members[i].next = self.seasonal_forecast(period, delta);
            }
        }
    }

    fn detect_cycle(&mut self) {
        if !self.which.seasonal || self.periods.len() >= 2 {
            return;
        }
        let values: Vec<f64> = self.history.iter().copied().filter(|v| v.is_finite()).collect();
        if let Some((p, _)) = period::detect(&values, 4, values.len() / 3, 0.3) {
            if !self.periods.iter().any(|&q| q.abs_diff(p) <= q / 50 + 1) {
                self.add_period(p);
            }
        }
    }

    fn add_period(&mut self, period: usize) {
        if !self.which.seasonal {
            return;
        }
        self.periods.push(period);
        for delta in [false, true] {
            let mut m = Member::new(Kind::Seasonal { period, delta });
            // Replay: judge the member on the history it would have forecast.
            let h: Vec<f64> = self.history.iter().copied().collect();
            for t in (period + 1)..h.len() {
                let f = if delta { h[t - 1] + h[t - period] - h[t - period - 1] } else { h[t - period] };
                if f.is_finite() && h[t].is_finite() {
                    m.learn_error(h[t] - f, 0.0);
                }
            }
            self.members.push(m);
        }
        self.refresh_seasonal();
    }

    /// After a regime change: `recent` are the values observed since it began (the history holds the
    /// forecasts fed in their place), `offset` how far the new level lies from the old. The history is moved
    /// to the new level and the recent values put back, every member restarts from the new level, and each
    /// member's usual error becomes at least `spread`.
    pub fn rebase(&mut self, recent: &[f64], offset: f64, spread: f64) {
        let n = self.history.len();
        let k = recent.len().min(n);
        for (i, v) in self.history.iter_mut().enumerate() {
            if i < n - k {
                *v += offset;
            }
        }
        for (slot, v) in self.history.iter_mut().skip(n - k).zip(&recent[recent.len() - k..]) {
            *slot = *v;
        }
        let last = recent.last().copied().or_else(|| self.past(1));
        let mean = (!recent.is_empty()).then(|| recent.iter().sum::<f64>() / recent.len() as f64);
        for m in &mut self.members {
            match &mut m.kind {
                Kind::Last => m.next = last,
                Kind::Mean { alpha, level } => {
                    let start = if *alpha < 0.1 { mean } else { last };
                    *level = start;
                    m.next = start;
                }
                Kind::Trend { level, slope } => {
                    *level = last;
                    *slope = 0.0;
                    m.next = last;
                }
                Kind::Seasonal { .. } => {}
                Kind::Lstm(member) => {
                    if let Some(x) = last {
                        member.rebase(x);
                        m.next = member.forecast();
                    }
                }
            }
            if spread > m.spread.value(0.0) {
                m.spread.reset(spread, m.errors.min(ERROR_MEMORY as u64));
                m.mse = m.mse.max(spread * spread * 1.5);
            }
        }
        if spread > self.spread.value(0.0) {
            self.spread.reset(spread, self.spread.count().min(ERROR_MEMORY as u64));
        }
        self.refresh_seasonal();
    }

    /// Each member's name and current weight share, for diagnostics and ablation reports.
    pub fn weights(&self, floor: f64) -> Vec<(&'static str, f64)> {
        let trusted: Vec<&Member> =
            self.members.iter().filter(|m| m.next.is_some() && m.errors >= MIN_ERRORS).collect();
        let best =
            trusted.iter().map(|m| m.mse).fold(f64::INFINITY, f64::min).max(floor * floor).max(f64::MIN_POSITIVE);
        let ws: Vec<(&'static str, f64)> = trusted
            .iter()
            .map(|m| (member_name(&m.kind), (-self.sharpness * (m.mse.max(floor * floor) / best - 1.0)).exp()))
            .collect();
        let total: f64 = ws.iter().map(|w| w.1).sum();
        ws.into_iter().map(|(n, w)| (n, if total > 0.0 { w / total } else { 0.0 })).collect()
    }
}

fn member_name(k: &Kind) -> &'static str {
    match k {
        Kind::Last => MEMBERS[0],
        Kind::Mean { alpha, .. } if *alpha < 0.1 => MEMBERS[1],
        Kind::Mean { .. } => MEMBERS[2],
        Kind::Trend { .. } => MEMBERS[3],
        Kind::Lstm(_) => MEMBERS[4],
        Kind::Seasonal { delta: false, .. } => MEMBERS[5],
        Kind::Seasonal { .. } => MEMBERS[6],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simple() -> Ensemble {
        Ensemble::new(None, None, Members { lstm: false, ..Members::default() }, None)
    }

    #[test]
    fn a_clean_cycle_is_forecast_exactly_once_found() {
        let mut e = simple();
        let wave = |t: usize| if t % 50 < 20 { 10.0 } else { 3.0 };
        for t in 0..1200 {
            let x = wave(t);
            e.learn_errors(x, 1e-6);
            e.feed(x);
        }
        assert_eq!(e.periods(), &[50]);
        let j = e.judge(wave(1200), 1e-6).expect("forecasts");
        assert!(j.residual.abs() < 1e-3, "{j:?}");
        let j = e.judge(wave(1200) + 5.0, 1e-6).expect("forecasts");
        assert!(j.residual > 100.0, "{j:?}");
    }

    #[test]
    fn a_counter_is_forecast_by_its_rate() {
        let mut e = simple();
        for t in 0..500 {
            let x = 1000.0 + 7.0 * t as f64;
            e.learn_errors(x, 0.5);
            e.feed(x);
        }
        let j = e.judge(1000.0 + 7.0 * 500.0, 0.5).expect("forecasts");
        assert!((j.expected - 4500.0).abs() < 1.0, "{j:?}");
    }
}
