//! How unusual a residual is, on two time scales, each judged against the series' own tail.
//!
//! One row's residual catches what is sudden (a spike, a jump). A shift of three usual errors hides in the noise
//! of any one row but not in the mean of several: the sum of the last `k` residuals over √k stays near the
//! noise for noise and grows with √k for a shift. Each channel keeps a [`TailSketch`] of its own past sizes,
//! and its evidence is its current size over a high quantile of those (never below a floor): 1 means "as
//! large as the largest this series usually does".

use std::collections::VecDeque;

use crate::spread::TailSketch;

/// One channel: the residuals of the last `k` rows and the tail of their scaled sums.
#[derive(Debug, Clone)]
pub struct Channel {
    k: usize,
    recent: VecDeque<f64>,
    tail: TailSketch,
    quantile: f64,
    floor: f64,
}

impl Channel {
    /// A channel over `k` rows whose tail forgets with `half_life` rows and is read at `quantile`, never below
    /// `floor`.
    pub fn new(k: usize, half_life: f64, quantile: f64, floor: f64) -> Self {
        let k = k.max(1);
        Channel { k, recent: VecDeque::with_capacity(k), tail: TailSketch::new(half_life), quantile, floor }
    }

    /// The channel's statistic if `r` were the next residual: the scaled sum of it and the `k − 1` before.
    fn statistic(&self, r: f64) -> f64 {
        let skip = self.recent.len().saturating_sub(self.k - 1);
        let sum: f64 = self.recent.iter().skip(skip).sum::<f64>() + r;
        sum.abs() / (self.recent.len().min(self.k - 1) as f64 + 1.0).sqrt()
    }

    /// Evidence of residual `r`, without learning it.
    pub fn evidence(&self, r: f64) -> f64 {
        self.statistic(r) / self.floor.max(self.tail.quantile(self.quantile))
    }

    /// Takes `r` as the next residual; its statistic joins the tail when `learn_tail`.
    pub fn push(&mut self, r: f64, learn_tail: bool) {
        if learn_tail {
            self.tail.update(self.statistic(r));
        }
        if self.recent.len() == self.k {
            self.recent.pop_front();
        }
        self.recent.push_back(r);
    }

    /// Forgets the recent residuals (after a regime change they describe the old regime).
    pub fn clear(&mut self) {
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SplitMix64;

    #[test]
    fn a_small_shift_shows_in_the_long_channel_only() {
        let mut rng = SplitMix64::new(3);
        let mut point = Channel::new(1, 2000.0, 0.999, 3.0);
        let mut long = Channel::new(8, 2000.0, 0.999, 3.0);
        for _ in 0..5000 {
            let r = rng.normal();
            point.push(r, true);
            long.push(r, true);
        }
        let (mut p, mut l) = (0.0f64, 0.0f64);
        for _ in 0..8 {
            let r = 2.5 + rng.normal() * 0.3;
            p = p.max(point.evidence(r));
            l = l.max(long.evidence(r));
            point.push(r, false);
            long.push(r, false);
        }
        assert!(p < 1.0, "one row of 2.5 is within a Gaussian's tail: {p}");
        assert!(l > 1.5, "eight rows of 2.5 are not: {l}");
    }
}
