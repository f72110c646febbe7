//! The corpus generator: a base shape, a noise model and a list of anomalies per series, all drawn from a seed.
//!
//! Every magnitude is drawn relative to the series' own noise or level, and some are drawn small on purpose: a
//! corpus of only obvious anomalies would reward a detector that fires on anything. Benign one-point outliers
//! and missing rows are left unlabelled, as real data has them.

use super::{CorpusSeries, Label};
use crate::model::SplitMix64;

/// Families in the order series are dealt out (series `i` gets `FAMILIES[i % len]`, so every family is
/// represented in any corpus of a dozen series or more).
const FAMILIES: &[&str] =
    &["daily", "daily_clean", "square", "flat", "mean_reverting", "wandering", "trend", "counter", "sparse", "latency"];

/// Intervals, seconds; five minutes is the most common in operations data, so it is drawn most often.
const INTERVALS: &[i64] = &[1, 10, 60, 300, 300, 300, 600, 900, 3600];

/// Generates `count` labelled series from `seed`. The same arguments always give the same corpus.
pub fn generate(seed: u64, count: usize) -> Vec<CorpusSeries> {
    (0..count)
        .map(|i| {
            let mut rng = SplitMix64::new(
                seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93),
            );
            let family = FAMILIES[i % FAMILIES.len()];
            one(&mut rng, family, format!("{family}-{seed}-{i:03}"))
        })
        .collect()
}

/// Random draws beyond the ones [`SplitMix64`] offers.
trait Draw {
    fn uniform(&mut self, lo: f64, hi: f64) -> f64;
    fn log_uniform(&mut self, lo: f64, hi: f64) -> f64;
    fn chance(&mut self, p: f64) -> bool;
    fn student_t3(&mut self) -> f64;
    fn poisson(&mut self, lambda: f64) -> f64;
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T;
}

impl Draw for SplitMix64 {
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }
    fn log_uniform(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + (hi.ln() - lo.ln()) * self.next_f64()).exp()
    }
    fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }
    /// Student's t with 3 degrees of freedom, scaled to unit variance: heavy tails, as latencies and traffic have.
    fn student_t3(&mut self) -> f64 {
        let chi2: f64 = (0..3).map(|_| self.normal().powi(2)).sum();
        self.normal() / (chi2 / 3.0).sqrt().max(1e-6) / 3f64.sqrt()
    }
    fn poisson(&mut self, lambda: f64) -> f64 {
        if lambda <= 0.0 {
            return 0.0;
        }
        if lambda > 50.0 {
            return (lambda + lambda.sqrt() * self.normal()).round().max(0.0);
        }
        let limit = (-lambda).exp();
        let (mut k, mut p) = (0.0, self.next_f64());
        while p > limit {
            k += 1.0;
            p *= self.next_f64();
        }
        k
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// How values are observed around the clean signal.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Noise {
    None,
    Gaussian,
    Heavy,
    Multiplicative,
    Poisson,
}

/// A series under construction: the clean level and seasonal parts kept apart, so anomalies can act on either.
struct Draft {
    len: usize,
    level: Vec<f64>,
    seasonal: Vec<f64>,
    /// Noise scale per row (a variance change multiplies a stretch of it).
    sigma: Vec<f64>,
    noise: Noise,
    /// Values are clamped at zero (rates, latencies, counts, percentages).
    nonnegative: bool,
    /// Upper clamp (100 for percentages).
    ceiling: Option<f64>,
    /// Values are rounded to this step, as many exporters do.
    quantum: Option<f64>,
    /// Rows whose value is forced after noise (stuck values, outages): (row, value).
    forced: Vec<Option<f64>>,
    /// Added after noise (spikes, dips).
    added: Vec<f64>,
    labels: Vec<Label>,
    /// Typical size of "one noise unit" for drawing anomaly magnitudes (noise scale, or a share of the level
    /// for clean series).
    unit: f64,
    /// Rows per seasonal period, when there is one.
    period: Option<usize>,
}

fn one(rng: &mut SplitMix64, family: &str, name: String) -> CorpusSeries {
    let interval_s = *rng.pick(INTERVALS);
    let len = rng.log_uniform(1500.0, 14_000.0) as usize;
    let day = (86_400 / interval_s) as usize;
    // A day longer than a third of the series shows no cycle; such series get a shorter "business" cycle.
    let period = if day * 3 <= len { day } else { rng.uniform(40.0, 400.0) as usize };
    let mut d = base(rng, family, len, period);
    inject(rng, &mut d, family);
    let values = render(rng, &d);
    let start_ms = 1_767_225_600_000 + (rng.below(300) as i64) * 86_400_000; // 2026-01-01 + up to 300 days
    CorpusSeries {
        name,
        family: family.to_string(),
        interval_ms: interval_s * 1000,
        start_ms: start_ms - start_ms % (interval_s * 1000),
        values,
        labels: d.labels,
    }
}

fn draft(len: usize, level: f64, noise: Noise, sigma: f64) -> Draft {
    Draft {
        len,
        level: vec![level; len],
        seasonal: vec![0.0; len],
        sigma: vec![sigma; len],
        noise,
        nonnegative: true,
        ceiling: None,
        quantum: None,
        forced: vec![None; len],
        added: vec![0.0; len],
        labels: Vec::new(),
        unit: sigma,
        period: None,
    }
}

/// A smooth daily profile: one to three harmonics with random phases, peak-to-peak about 2.
fn profile(rng: &mut SplitMix64, len: usize, period: usize) -> Vec<f64> {
    let harmonics = 1 + rng.below(3);
    let parts: Vec<(f64, f64)> = (0..harmonics)
        .map(|h| (rng.uniform(0.0, std::f64::consts::TAU), 1.0 / (1.0 + h as f64 * rng.uniform(0.8, 2.5))))
        .collect();
    let weekly = rng.chance(0.4).then(|| rng.uniform(0.5, 0.9));
    (0..len)
        .map(|t| {
            let x = std::f64::consts::TAU * t as f64 / period as f64;
            let mut v: f64 = parts.iter().enumerate().map(|(h, (ph, a))| a * ((h as f64 + 1.0) * x + ph).sin()).sum();
            if let Some(w) = weekly {
                if (t / period) % 7 >= 5 {
                    v = v * w - (1.0 - w);
                }
            }
            v
        })
        .collect()
}

fn base(rng: &mut SplitMix64, family: &str, len: usize, period: usize) -> Draft {
    let level = rng.log_uniform(0.5, 5e5);
    match family {
        "daily" | "daily_clean" => {
            let amp = level * rng.uniform(0.15, 0.45);
            let clean = family == "daily_clean";
            let noise =
                if clean { Noise::None } else { *rng.pick(&[Noise::Gaussian, Noise::Heavy, Noise::Multiplicative]) };
            // Additive noise is in the series' units; multiplicative noise is a share of the value.
            let relative = if clean { 0.0 } else { rng.log_uniform(0.03, 0.5) };
            let sigma = if noise == Noise::Multiplicative { relative * amp / level } else { relative * amp };
            let mut d = draft(len, level, noise, sigma);
            d.seasonal = profile(rng, len, period).into_iter().map(|p| p * amp).collect();
            d.unit = if clean { amp * 0.1 } else { relative * amp };
            d.period = Some(period);
            if clean && rng.chance(0.3) {
                d.quantum = Some(10f64.powi((amp.log10().floor() as i32) - 2));
            }
            d
        }
        "square" => {
            let amp = level * rng.uniform(0.2, 0.8);
            let duty = rng.uniform(0.3, 0.7);
            let noisy = rng.chance(0.5);
            let sigma = if noisy { amp * rng.log_uniform(0.02, 0.2) } else { 0.0 };
            let mut d = draft(len, level, if noisy { Noise::Gaussian } else { Noise::None }, sigma);
            d.seasonal =
                (0..len).map(|t| if (t % period) as f64 / (period as f64) < duty { amp } else { 0.0 }).collect();
            d.unit = if noisy { sigma } else { amp * 0.2 };
            d.period = Some(period);
            d
        }
        "flat" => {
            let noisy = rng.chance(0.6);
            let sigma = if noisy { level * rng.log_uniform(0.002, 0.05) } else { 0.0 };
            let mut d = draft(len, level, if noisy { Noise::Gaussian } else { Noise::None }, sigma);
            d.unit = if noisy { sigma } else { level * 0.1 };
            if rng.chance(0.5) {
                d.quantum = Some(if noisy { sigma * rng.uniform(0.3, 2.0) } else { 1.0 });
            }
            d
        }
        "mean_reverting" => {
            // Temperature-like: an AR(1) around a level, slow or fast.
            let phi = 1.0 - rng.log_uniform(0.002, 0.1);
            let spread = level * rng.uniform(0.02, 0.2);
            let mut d = draft(len, level, Noise::Gaussian, spread * rng.uniform(0.05, 0.3));
            let innovation = spread * (1.0 - phi * phi).sqrt();
            let mut x = 0.0;
            for t in 0..len {
                x = phi * x + innovation * rng.normal();
                d.level[t] = level + x;
            }
            d.unit = d.sigma[0].max(innovation);
            d.nonnegative = rng.chance(0.5);
            d
        }
        "wandering" => {
            // A random walk held inside a band: CPU of a busy host, a queue length.
            let band = level * rng.uniform(0.1, 0.6);
            let step = band * rng.log_uniform(0.005, 0.05);
            let mut d = draft(len, level, *rng.pick(&[Noise::Gaussian, Noise::Heavy]), step * rng.uniform(0.5, 3.0));
            let mut x = 0.0f64;
            for t in 0..len {
                x += step * rng.normal();
                if x.abs() > band {
                    x = x.signum() * (2.0 * band - x.abs());
                }
                d.level[t] = level + x;
            }
            d.unit = d.sigma[0].max(step);
            if rng.chance(0.5) {
                d.level.iter_mut().for_each(|v| *v = *v / (level + band) * 90.0);
                d.sigma.iter_mut().for_each(|s| *s = *s / (level + band) * 90.0);
                d.unit = d.unit / (level + band) * 90.0;
                d.ceiling = Some(100.0);
                d.quantum = Some(*rng.pick(&[0.01, 0.1, 1.0]));
            }
            d
        }
        "trend" => {
            let slope = level * rng.uniform(-0.5, 1.5) / len as f64;
            let sigma = level * rng.log_uniform(0.005, 0.05);
            let mut d = draft(len, level, Noise::Gaussian, sigma);
            for t in 0..len {
                d.level[t] = level + slope * t as f64;
            }
            d.nonnegative = false;
            d
        }
        "counter" => {
            // A cumulative counter (bytes sent) whose rate follows the day, read every interval.
            let rate = rng.log_uniform(5.0, 5000.0);
            let shape = profile(rng, len, period);
            let mut d = draft(len, 0.0, Noise::None, 0.0);
            let mut total = rng.uniform(0.0, 1e6);
            for (level, s) in d.level.iter_mut().zip(&shape) {
                total += rng.poisson(rate * (1.0 + 0.4 * s));
                *level = total;
            }
            d.unit = rate * 5.0;
            d.period = Some(period);
            d
        }
        "sparse" => {
            // Error counts of a healthy service: mostly zero, a few here and there.
            let lambda = rng.log_uniform(0.005, 0.5);
            let mut d = draft(len, lambda, Noise::Poisson, 0.0);
            d.unit = (lambda.sqrt() * 3.0).max(1.0);
            d
        }
        _ => {
            // "latency": a heavy-tailed positive series around a diurnal base, with Poisson-like request counts
            // behind it.
            let amp = level * rng.uniform(0.0, 0.3);
            let mut d = draft(len, level, Noise::Multiplicative, rng.uniform(0.05, 0.4));
            d.seasonal = profile(rng, len, period).into_iter().map(|p| p * amp).collect();
            d.unit = level * d.sigma[0];
            d.period = (amp > 0.0).then_some(period);
            if rng.chance(0.5) {
                d.noise = Noise::Poisson;
                let scale = rng.log_uniform(5.0, 300.0) / level;
                d.level.iter_mut().for_each(|v| *v *= scale);
                d.seasonal.iter_mut().for_each(|v| *v *= scale);
                d.unit = (level * scale).sqrt() * 2.0;
            }
            d
        }
    }
}

/// Kinds that make sense for a family; each is drawn with the same chance.
fn kinds(family: &str, d: &Draft) -> Vec<&'static str> {
    let mut k = vec!["spike", "dip", "level_shift", "plateau"];
    match family {
        "counter" => return vec!["counter_reset", "rate_change", "counter_outage"],
        "sparse" => return vec!["burst", "burst", "spike"],
        _ => {}
    }
    if d.noise != Noise::None {
        k.extend(["variance_change", "stuck"]);
    }
    if d.period.is_some() && family != "latency" {
        k.push("lost_season");
    }
    if matches!(family, "daily" | "latency" | "wandering" | "mean_reverting") {
        k.extend(["drift", "outage"]);
    }
    k
}

fn inject(rng: &mut SplitMix64, d: &mut Draft, family: &str) {
    let n = *rng.pick(&[0usize, 1, 1, 1, 2, 2, 2, 3, 3, 4]);
    if n == 0 {
        return;
    }
    let kinds = kinds(family, d);
    // Onsets after the first 20 % (a detector's learning time) and apart from each other by a window each.
    let lo = d.len / 5;
    let span = d.len - lo - d.len / 30;
    let slot = span / n;
    for i in 0..n {
        let at = lo + i * slot + rng.below((slot * 3 / 4).max(1));
        let kind = *rng.pick(&kinds);
        let end = (at + (rng.log_uniform(0.005, 0.05) * d.len as f64) as usize + 3).min(d.len);
        apply(rng, d, kind, at, end);
        d.labels.push(Label { row: at, kind: kind.to_string() });
    }
}

/// Sign of a shift: down for half of them, except where down would leave the domain.
fn sign(rng: &mut SplitMix64) -> f64 {
    if rng.chance(0.5) {
        1.0
    } else {
        -1.0
    }
}

fn apply(rng: &mut SplitMix64, d: &mut Draft, kind: &str, at: usize, end: usize) {
    let unit = d.unit.max(1e-9);
    let mean_level = d.level[at].abs().max(unit);
    match kind {
        "spike" | "dip" => {
            let m = rng.log_uniform(4.0, 20.0) * unit;
            let width = 1 + rng.below(3);
            for t in at..(at + width).min(d.len) {
                d.added[t] += if kind == "spike" { m } else { -m.min(mean_level * 0.95) };
            }
        }
        "level_shift" | "plateau" => {
            let m = sign(rng) * (rng.log_uniform(3.0, 12.0) * unit).min(mean_level * 0.9);
            let stop = if kind == "plateau" { end } else { d.len };
            for t in at..stop {
                d.level[t] += m;
            }
        }
        "variance_change" => {
            let f = rng.uniform(3.0, 8.0);
            let stop = if rng.chance(0.5) { end.max(at + 30).min(d.len) } else { d.len };
            for t in at..stop {
                d.sigma[t] *= f;
            }
        }
        "lost_season" => {
            // The daily rise does not come: the seasonal part is held at its value for up to a period.
            let stop = (at + d.period.unwrap_or(100).max(20)).min(d.len);
            let held = d.seasonal[at];
            for t in at..stop {
                d.seasonal[t] = held;
            }
        }
        "stuck" => {
            let v = d.level[at] + d.seasonal[at];
            for t in at..end.max(at + 20).min(d.len) {
                d.forced[t] = Some(v);
            }
        }
        "drift" => {
            let total = sign(rng) * rng.log_uniform(6.0, 20.0) * unit;
            let ramp = (end - at).max(20);
            for t in at..d.len {
                d.level[t] += total * (((t - at) as f64) / ramp as f64).min(1.0);
            }
        }
        "outage" => {
            for t in at..end.max(at + 5).min(d.len) {
                d.forced[t] = Some(0.0);
            }
        }
        "burst" => {
            let f = rng.uniform(8.0, 40.0);
            for t in at..end.max(at + 10).min(d.len) {
                d.level[t] = (d.level[t] * f).max(3.0);
            }
        }
        "counter_reset" => {
            let drop = d.level[at];
            for t in at..d.len {
                d.level[t] -= drop;
            }
        }
        "rate_change" => {
            // The counter's rate steps by a factor: its slope changes from here on.
            let f = if rng.chance(0.5) { rng.uniform(2.5, 6.0) } else { rng.uniform(0.05, 0.3) };
            rescale_increments(d, at, d.len, f);
        }
        "counter_outage" => rescale_increments(d, at, end.max(at + 5).min(d.len), 0.0),
        _ => {}
    }
}

/// Multiplies a counter's increments over `from..to` by `f`, keeping it continuous.
fn rescale_increments(d: &mut Draft, from: usize, to: usize, f: f64) {
    let steps: Vec<f64> = (from + 1..d.len).map(|t| d.level[t] - d.level[t - 1]).collect();
    for (k, t) in (from + 1..d.len).enumerate() {
        let step = if t < to { steps[k] * f } else { steps[k] };
        d.level[t] = d.level[t - 1] + step;
    }
}

fn render(rng: &mut SplitMix64, d: &Draft) -> Vec<Option<f64>> {
    let benign = rng.chance(0.4).then(|| rng.log_uniform(300.0, 3000.0));
    let missing = rng.chance(0.2).then(|| rng.log_uniform(0.001, 0.01));
    (0..d.len)
        .map(|t| {
            let clean = d.level[t] + d.seasonal[t];
            let mut v = match d.noise {
                Noise::None => clean,
                Noise::Gaussian => clean + d.sigma[t] * rng.normal(),
                Noise::Heavy => clean + d.sigma[t] * rng.student_t3(),
                Noise::Multiplicative => clean * (d.sigma[t] * rng.normal()).exp(),
                Noise::Poisson => rng.poisson(clean.max(0.0) * d.sigma[t].max(1.0)),
            };
            if let Some(f) = d.forced[t] {
                v = f;
            }
            v += d.added[t];
            if let Some(every) = benign {
                if rng.next_f64() * every < 1.0 && d.forced[t].is_none() {
                    v += sign(rng) * rng.uniform(2.0, 5.0) * d.unit;
                }
            }
            if d.nonnegative {
                v = v.max(0.0);
            }
            if let Some(c) = d.ceiling {
                v = v.min(c);
            }
            if let Some(q) = d.quantum {
                v = (v / q).round() * q;
                v = (v * 1e6).round() / 1e6;
            }
            if missing.is_some_and(|p| rng.next_f64() < p) {
                None
            } else {
                Some(v)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn generation_is_deterministic_and_covers_every_family() {
        let a = generate(3, 30);
        let b = generate(3, 30);
        assert_eq!(a, b);
        for f in FAMILIES {
            assert!(a.iter().any(|s| s.family == *f), "{f}");
        }
        for s in &a {
            assert!(s.values.len() >= 1500, "{}", s.name);
            for l in &s.labels {
                assert!(l.row >= s.values.len() / 5 && l.row < s.values.len(), "{} {l:?}", s.name);
            }
        }
        assert_ne!(generate(4, 30), a);
    }
}
