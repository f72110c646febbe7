//! Robust running statistics: how big a series' forecast errors usually are, and how big its rare ones get.
//!
//! Two questions decide whether an error is anomalous, and they need different tools:
//! - **its size against the usual error** ([`Spread`]): a mean absolute error with exponential forgetting,
//!   winsorised so an anomaly does not teach the statistic to expect the next one, and floored by the series'
//!   own resolution so a noise-free series does not turn rounding into alarms;
//! - **how rare that size is for this series** ([`TailSketch`]): heavy-tailed series (latencies, traffic) see
//!   errors of ten usual sizes every day; a decayed log-scale histogram of past sizes gives their high
//!   quantiles in constant memory, so a series is judged against its own tail, not a Gaussian's.

/// Exponentially forgetting mean absolute error, winsorised and floored.
#[derive(Debug, Clone, PartialEq)]
pub struct Spread {
    n: u64,
    mae: f64,
    /// Rows of memory once warm.
    memory: f64,
    /// Errors beyond this many MAEs are compressed (logarithmically) before they are folded in.
    winsor: f64,
}

impl Spread {
    /// An empty statistic remembering about `memory` errors.
    pub fn new(memory: f64, winsor: f64) -> Self {
        Spread { n: 0, mae: 0.0, memory: memory.max(1.0), winsor }
    }

    /// Errors folded in.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// The mean absolute error, never below `floor`.
    pub fn value(&self, floor: f64) -> f64 {
        self.mae.max(floor)
    }

    /// Folds one error in (after it was judged). `floor` is the resolution below which errors are noise.
    pub fn update(&mut self, err: f64, floor: f64) {
        let mut a = err.abs();
        if !a.is_finite() {
            return;
        }
        self.n += 1;
        if self.n > 10 {
            a = compress(a, self.winsor * self.mae.max(floor));
        }
        let alpha = 1.0 / (self.n as f64).min(self.memory);
        self.mae += alpha * (a - self.mae);
    }

    /// Starts over from `mae` as if `weight` errors of that size had been seen: after a regime change the
    /// new spread holds at once.
    pub fn reset(&mut self, mae: f64, weight: u64) {
        self.mae = mae;
        self.n = weight.max(1);
    }
}

/// `a` up to `limit`, and beyond it only logarithmically more: one outlier moves the statistic little, while
/// errors that keep exceeding the limit still raise it (clipping alone would hold the spread of a series that
/// started flat at its first rows' value forever).
pub fn compress(a: f64, limit: f64) -> f64 {
    if a > limit && limit > 0.0 {
        limit * (1.0 + (a / limit).ln())
    } else {
        a
    }
}

/// Octaves covered by the sketch: 2⁻²⁰ … 2⁴⁰ in units of the usual error (a series that was flat has
/// a tiny usual error, so its first real move is millions of them).
const LOW_EXP: i32 = -20;
const OCTAVES: usize = 60;
/// Bins per octave (each ~19 % wide).
const PER_OCTAVE: usize = 4;
const BINS: usize = OCTAVES * PER_OCTAVE;

/// A decayed histogram of non-negative sizes on a log scale, for high quantiles in constant memory.
#[derive(Debug, Clone, PartialEq)]
pub struct TailSketch {
    bins: Vec<f64>,
    /// Weight of the next sample; grows instead of every bin shrinking (renormalised when large).
    weight: f64,
    total: f64,
    growth: f64,
    zeros: f64,
    n: u64,
}

impl TailSketch {
    /// An empty sketch whose samples lose half their weight after `half_life` newer ones.
    pub fn new(half_life: f64) -> Self {
        TailSketch {
            bins: vec![0.0; BINS],
            weight: 1.0,
            total: 0.0,
            growth: 2f64.powf(1.0 / half_life.max(1.0)),
            zeros: 0.0,
            n: 0,
        }
    }

    /// Samples seen.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// Adds one size.
    pub fn update(&mut self, a: f64) {
        if !a.is_finite() || a < 0.0 {
            return;
        }
        self.n += 1;
        match bin(a) {
            Some(i) => self.bins[i] += self.weight,
            None => self.zeros += self.weight,
        }
        self.total += self.weight;
        self.weight *= self.growth;
        if self.weight > 1e100 {
            let s = 1.0 / self.weight;
            self.bins.iter_mut().for_each(|b| *b *= s);
            self.zeros *= s;
            self.total *= s;
            self.weight = 1.0;
        }
    }

    /// The size exceeded by a share `1 − q` of the (weighted) samples; 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.total <= 0.0 {
            return 0.0;
        }
        let mut above = (1.0 - q.clamp(0.0, 1.0)) * self.total;
        for i in (0..BINS).rev() {
            let b = self.bins[i];
            if b >= above && b > 0.0 {
                // Log-linear inside the bin.
                let frac = 1.0 - above / b;
                return bin_low(i) * 2f64.powf(frac / PER_OCTAVE as f64);
            }
            above -= b;
        }
        0.0
    }
}

fn bin(a: f64) -> Option<usize> {
    if a <= 0.0 {
        return None;
    }
    let x = (a.log2() - f64::from(LOW_EXP)) * PER_OCTAVE as f64;
    if x < 0.0 {
        return None;
    }
    Some((x as usize).min(BINS - 1))
}

fn bin_low(i: usize) -> f64 {
    2f64.powf(f64::from(LOW_EXP) + i as f64 / PER_OCTAVE as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SplitMix64;

    #[test]
    fn spread_learns_the_usual_error_and_resists_outliers() {
        let mut s = Spread::new(200.0, 5.0);
        let mut rng = SplitMix64::new(1);
        for _ in 0..2000 {
            s.update(rng.normal(), 0.0);
        }
        assert!((s.value(0.0) - 0.8).abs() < 0.1, "{}", s.value(0.0));
        for _ in 0..5 {
            s.update(1000.0, 0.0);
        }
        assert!(s.value(0.0) < 1.6, "five outliers move it only a little: {}", s.value(0.0));
        // A statistic that started on a flat stretch still learns errors that keep coming.
        let mut flat = Spread::new(200.0, 5.0);
        for t in 0..3000 {
            flat.update(if t > 100 && t % 10 == 0 { 7.0 } else { 0.0 }, 1e-6);
        }
        assert!(flat.value(0.0) > 0.3, "{}", flat.value(0.0));
        assert_eq!(Spread::new(10.0, 5.0).value(0.25), 0.25);
    }

    #[test]
    fn tail_quantiles_follow_the_distribution() {
        let mut t = TailSketch::new(5000.0);
        let mut rng = SplitMix64::new(2);
        for _ in 0..20_000 {
            t.update(rng.normal().abs());
        }
        let q99 = t.quantile(0.99);
        assert!((2.3..2.9).contains(&q99), "|N(0,1)| q99 = 2.58, got {q99}");
        let q50 = t.quantile(0.5);
        assert!((0.55..0.8).contains(&q50), "median 0.67, got {q50}");
        // Old samples fade: after a long run of tens the tail is about ten.
        for _ in 0..50_000 {
            t.update(10.0);
        }
        let q = t.quantile(0.99);
        assert!((9.0..12.0).contains(&q), "{q}");
    }
}
