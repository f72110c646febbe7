//! Finding a series' cycle from its own history, for the seasonal members of the ensemble.
//!
//! A timestamped series offers one candidate for free (a day, in rows); a series read without timestamps, or
//! one with a shorter cycle (a batch job every 40 minutes), needs the cycle found in the values. The
//! autocorrelation of a cyclic series rises again after its first dip, at the cycle's length; a random walk's
//! or a trend's only decays, so requiring a dip and a rise keeps wandering series from getting a cycle they do
//! not have.

/// The lag in `min_lag..=max_lag` at which `values` correlate best with themselves after a dip, with that
/// correlation; `None` when no lag rises to `min_acf` after a dip of at least 0.1.
pub fn detect(values: &[f64], min_lag: usize, max_lag: usize, min_acf: f64) -> Option<(usize, f64)> {
    let n = values.len();
    let max_lag = max_lag.min(n / 2);
    if n < 8 || min_lag >= max_lag {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let centred: Vec<f64> = values.iter().map(|v| v - mean).collect();
    let var: f64 = centred.iter().map(|v| v * v).sum();
    if var <= f64::EPSILON * n as f64 * mean.abs().max(1.0) {
        return None;
    }
    // Normalised by the overlap so long lags are not penalised for having fewer terms.
    let acf: Vec<f64> = (0..=max_lag + 1)
        .map(|l| {
            let m = n - l;
            let s: f64 = centred[..m].iter().zip(&centred[l..]).map(|(a, b)| a * b).sum();
            s / var * n as f64 / m as f64
        })
        .collect();
    let mut lowest = f64::INFINITY;
    let mut best: Option<(usize, f64)> = None;
    for l in 1..=max_lag {
        lowest = lowest.min(acf[l]);
        if l < min_lag || acf[l] < min_acf || acf[l] < acf[l - 1] || acf[l] < acf[l + 1] || acf[l] - lowest < 0.1 {
            continue;
        }
        // A multiple of a cycle correlates about as well as the cycle itself: keep the first unless a later
        // one is clearly better.
        match best {
            Some((_, b)) if acf[l] <= b + 0.05 => {}
            _ => best = Some((l, acf[l])),
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SplitMix64;

    #[test]
    fn finds_a_noisy_cycle_and_not_a_walk() {
        let mut rng = SplitMix64::new(5);
        let cyclic: Vec<f64> =
            (0..2000).map(|t| (t as f64 * std::f64::consts::TAU / 137.0).sin() + 0.5 * rng.normal()).collect();
        let (lag, acf) = detect(&cyclic, 4, 800, 0.3).expect("a cycle");
        assert!((136..=138).contains(&lag), "{lag} {acf}");

        let mut x = 0.0;
        let walk: Vec<f64> = (0..2000)
            .map(|_| {
                x += rng.normal();
                x
            })
            .collect();
        assert_eq!(detect(&walk, 4, 800, 0.3), None);
        assert_eq!(detect(&[3.0; 100], 4, 40, 0.3), None);
    }

    #[test]
    fn a_square_wave_gets_its_period() {
        let square: Vec<f64> = (0..3000).map(|t| if t % 288 < 100 { 10.0 } else { 2.0 }).collect();
        assert_eq!(detect(&square, 4, 1200, 0.3).map(|p| p.0), Some(288));
    }
}
