//! The guards of a rollout: what each version's requests did (counted on the data path, lock-free), gathered
//! five times a second into a window both versions share, and the tests that decide whether the candidate is worse.
//!
//! **Error ratio: a one-sided two-proportion z-test against a margin.** The question is not "do the two
//! versions differ" but "is the candidate's error ratio more than `max_error_ratio` above the stable one's",
//! so the null hypothesis is `p_candidate - p_stable <= max_error_ratio` and it is rejected when
//! `z = (p̂_c - p̂_s - margin) / sqrt(p̂_c(1-p̂_c)/n_c + p̂_s(1-p̂_s)/n_s)` exceeds [`Z_CRITICAL`]. With a
//! non-zero margin the null is not "equal proportions", so the variance is not pooled (a Wald statistic).
//! The proportions are Agresti–Caffo adjusted (one error and one success added to each sample): the plain
//! estimate has zero variance when a sample is all errors or none, which would make a single failed request of
//! a candidate "infinitely significant"; with the adjustment one failure out of one request is not enough,
//! while three failures out of three against a clean stable version are (z ≈ 4). The test runs five times a second
//! on an overlapping window, so it is looked at many times per step; the critical value is that of α = 0.0002
//! rather than 0.05 to keep the chance of rolling back a candidate that is as good as the stable version small
//! over a whole rollout. Fisher's exact test would be exact on small samples but tests equality, not a margin,
//! and costs a sum over the hypergeometric distribution at every look; the adjusted z-test is cheap and behaves
//! on small samples. Plugin failures (traps, timeouts, memory) are tested the same way on their own, so a
//! candidate failing open (which answers no 5xx) is caught too.
//!
//! **Latency: p99 against p99 plus `max_latency_increase`**, once both versions have [`MIN_LATENCY_SAMPLES`]
//! requests in the window (a p99 of fewer is the maximum of a handful).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One-sided critical value of the standard normal for α = 0.0002 (α = 0.001 when the guards looked once a
/// second; five looks a second, five times fewer false alarms per look).
pub const Z_CRITICAL: f64 = 3.54;
/// Requests each version needs in the window before their p99 latencies are compared: with fewer than a
/// hundred, a p99 is the slowest request, and a candidate's first requests (a new instance on each worker)
/// are looked at within a fraction of a second.
pub const MIN_LATENCY_SAMPLES: u64 = 100;
/// Latency histogram buckets: bucket `i` holds latencies up to `FIRST_BOUND_US * GROWTH^(i+1)` (100 µs to
/// about 12 s in 20 % steps: a p99 is known to within 20 %).
const LATENCY_BUCKETS: usize = 64;
const FIRST_BOUND_US: f64 = 100.0;
const GROWTH: f64 = 1.2;

/// What one version's requests did since the window last took them: written by every worker.
#[derive(Debug)]
pub struct Tally {
    requests: AtomicU64,
    errors: AtomicU64,
    failures: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Tally {
    /// A request answered with `status` after `elapsed` (5xx, local errors included, count as errors).
    pub fn answered(&self, status: u16, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency[bucket_of(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    /// A plugin callback of this version failed (trap, timeout, memory, ...).
    pub fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// What was counted since the last [`Tally::take`], leaving it.
    pub fn peek(&self) -> Sample {
        Sample {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            latency: std::array::from_fn(|i| self.latency[i].load(Ordering::Relaxed)),
        }
    }

    /// Takes what was counted since the last call.
    pub fn take(&self) -> Sample {
        Sample {
            requests: self.requests.swap(0, Ordering::Relaxed),
            errors: self.errors.swap(0, Ordering::Relaxed),
            failures: self.failures.swap(0, Ordering::Relaxed),
            latency: std::array::from_fn(|i| self.latency[i].swap(0, Ordering::Relaxed)),
        }
    }
}

fn bucket_of(elapsed: Duration) -> usize {
    let us = elapsed.as_secs_f64() * 1e6;
    if us <= FIRST_BOUND_US {
        return 0;
    }
    // Bucket i covers (FIRST * GROWTH^i, FIRST * GROWTH^(i+1)].
    let i = ((us / FIRST_BOUND_US).ln() / GROWTH.ln()).floor() as usize;
    i.min(LATENCY_BUCKETS - 1)
}

fn bucket_bound(i: usize) -> Duration {
    Duration::from_secs_f64(FIRST_BOUND_US * GROWTH.powi(i as i32 + 1) / 1e6)
}

/// One version's counts over some time.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Requests answered.
    pub requests: u64,
    /// Of which 5xx.
    pub errors: u64,
    /// Plugin callback failures.
    pub failures: u64,
    latency: [u64; LATENCY_BUCKETS],
}

impl Default for Sample {
    fn default() -> Self {
        Sample { requests: 0, errors: 0, failures: 0, latency: [0; LATENCY_BUCKETS] }
    }
}

impl Sample {
    /// Adds another sample's counts.
    pub fn add(&mut self, other: &Sample) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.failures += other.failures;
        for (mine, theirs) in self.latency.iter_mut().zip(other.latency.iter()) {
            *mine += theirs;
        }
    }

    /// The 99th percentile latency (the upper bound of its histogram bucket), if there are requests.
    pub fn p99(&self) -> Option<Duration> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = total.saturating_mul(99).div_ceil(100);
        let mut seen = 0;
        for (i, count) in self.latency.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(bucket_bound(i));
            }
        }
        Some(bucket_bound(LATENCY_BUCKETS - 1))
    }

    /// The figures the admin API shows.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests,
            "errors": self.errors,
            "error_ratio": ratio(self.errors, self.requests),
            "plugin_failures": self.failures,
            "p99_ms": self.p99().map(|d| d.as_secs_f64() * 1000.0),
        })
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The one-sided z statistic of "the candidate's proportion exceeds the stable one's by more than `margin`"
/// (see the module documentation), Agresti–Caffo adjusted.
pub fn excess_z(candidate: (u64, u64), stable: (u64, u64), margin: f64) -> f64 {
    let adjusted = |(hits, n): (u64, u64)| {
        let n = n as f64 + 2.0;
        let p = (hits as f64 + 1.0) / n;
        (p, p * (1.0 - p) / n)
    };
    let (pc, vc) = adjusted(candidate);
    let (ps, vs) = adjusted(stable);
    (pc - ps - margin) / (vc + vs).sqrt()
}

/// The limits a rollout's guards hold the candidate to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Accepted increase of the error (and plugin failure) ratio.
    pub max_error_ratio: f64,
    /// Accepted increase of the p99 latency.
    pub max_latency_increase: Duration,
}

/// Why the candidate breaches its guards, if it does, given both versions' samples over the same window.
pub fn breach(stable: &Sample, candidate: &Sample, limits: Limits) -> Option<String> {
    if candidate.requests == 0 {
        return None;
    }
    let z = excess_z((candidate.errors, candidate.requests), (stable.errors, stable.requests), limits.max_error_ratio);
    if z > Z_CRITICAL {
        return Some(format!(
            "error ratio {:.4} ({} of {}) against the stable version's {:.4} ({} of {}): more than {} above it (z = {z:.1})",
            ratio(candidate.errors, candidate.requests),
            candidate.errors,
            candidate.requests,
            ratio(stable.errors, stable.requests),
            stable.errors,
            stable.requests,
            limits.max_error_ratio,
        ));
    }
    let z = excess_z(
        (candidate.failures.min(candidate.requests), candidate.requests),
        (stable.failures.min(stable.requests), stable.requests),
        limits.max_error_ratio,
    );
    if z > Z_CRITICAL {
        return Some(format!(
            "plugin failures (traps, timeouts) in {} of {} requests against the stable version's {} of {} (z = {z:.1})",
            candidate.failures, candidate.requests, stable.failures, stable.requests,
        ));
    }
    if candidate.requests >= MIN_LATENCY_SAMPLES && stable.requests >= MIN_LATENCY_SAMPLES {
        if let (Some(c), Some(s)) = (candidate.p99(), stable.p99()) {
            if c > s + limits.max_latency_increase {
                return Some(format!(
                    "p99 latency {:.1} ms against the stable version's {:.1} ms: more than {} ms above it",
                    c.as_secs_f64() * 1000.0,
                    s.as_secs_f64() * 1000.0,
                    limits.max_latency_increase.as_millis(),
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(requests: u64, errors: u64, latency: Duration) -> Sample {
        let tally = Tally::default();
        for i in 0..requests {
            tally.answered(if i < errors { 503 } else { 200 }, latency);
        }
        tally.take()
    }

    const LIMITS: Limits = Limits { max_error_ratio: 0.02, max_latency_increase: Duration::from_millis(25) };

    #[test]
    fn a_candidate_failing_every_request_breaches_after_a_few() {
        let stable = sample(40, 0, Duration::from_millis(2));
        assert_eq!(breach(&stable, &sample(1, 1, Duration::from_millis(2)), LIMITS), None, "one failure is noise");
        let reason = breach(&stable, &sample(3, 3, Duration::from_millis(2)), LIMITS);
        assert!(reason.as_deref().is_some_and(|r| r.starts_with("error ratio 1.0000 (3 of 3)")), "{reason:?}");
    }

    #[test]
    fn equal_error_ratios_and_small_increases_pass() {
        let stable = sample(10_000, 100, Duration::from_millis(2));
        assert_eq!(breach(&stable, &sample(2_500, 25, Duration::from_millis(2)), LIMITS), None);
        assert_eq!(breach(&stable, &sample(2_500, 60, Duration::from_millis(2)), LIMITS), None, "1.4 points up");
        assert!(breach(&stable, &sample(2_500, 200, Duration::from_millis(2)), LIMITS).is_some(), "7 points up");
    }

    #[test]
    fn a_slower_candidate_breaches_only_beyond_the_allowed_increase() {
        let stable = sample(100, 0, Duration::from_millis(2));
        assert_eq!(breach(&stable, &sample(100, 0, Duration::from_millis(20)), LIMITS), None);
        let slow = breach(&stable, &sample(100, 0, Duration::from_millis(80)), LIMITS);
        assert!(slow.as_deref().is_some_and(|r| r.starts_with("p99 latency")), "{slow:?}");
        assert_eq!(breach(&stable, &sample(10, 0, Duration::from_millis(80)), LIMITS), None, "too few to tell");
    }

    #[test]
    fn p99_lies_within_a_bucket_of_the_truth() {
        let mut s = sample(990, 0, Duration::from_millis(1));
        s.add(&sample(10, 0, Duration::from_millis(500)));
        let p99 = s.p99().unwrap_or_default();
        assert!(p99 >= Duration::from_millis(1) && p99 <= Duration::from_micros(1200), "{p99:?}");
    }
}
