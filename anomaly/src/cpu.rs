//! Process and host CPU utilisation from `/proc`, without libc calls.
//!
//! Both percentages are computed from deltas between two reads. The process figure is
//! expressed like `top` (100 % = one fully busy core) by scaling with the host's jiffy total,
//! which avoids needing `sysconf(_SC_CLK_TCK)` (and therefore `unsafe`).

use std::path::PathBuf;

use crate::error::{AnomalyError, Result};

/// Aggregate host CPU times from the first `cpu` line of `/proc/stat`, in jiffies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostTimes {
    /// Sum of all time columns.
    pub total: u64,
    /// idle + iowait: time the CPUs were not doing work.
    pub idle: u64,
    /// Number of `cpuN` lines, i.e. logical CPUs.
    pub cpus: u32,
}

/// Parse `/proc/stat` text. Public so it can be unit tested with fixed input.
pub fn parse_proc_stat(text: &str) -> Result<HostTimes> {
    let mut out = HostTimes::default();
    let mut seen_total = false;
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let Some(label) = it.next() else { continue };
        if label == "cpu" {
            let nums: Vec<u64> = it.filter_map(|s| s.parse().ok()).collect();
            if nums.len() < 4 {
                return Err(AnomalyError::Data("/proc/stat: short cpu line".into()));
            }
            // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
            // already counted in user/nice, so only the first 8 columns are summed.
            out.total = nums.iter().take(8).sum();
            out.idle = nums[3] + nums.get(4).copied().unwrap_or(0);
            seen_total = true;
        } else if label.starts_with("cpu") {
            out.cpus += 1;
        }
    }
    if !seen_total {
        return Err(AnomalyError::Data("/proc/stat: no aggregate cpu line".into()));
    }
    out.cpus = out.cpus.max(1);
    Ok(out)
}

/// Parse utime + stime (jiffies) from `/proc/<pid>/stat`; robust to spaces and parens in `comm`.
pub fn parse_self_stat(text: &str) -> Result<u64> {
    let close = text.rfind(')').ok_or_else(|| AnomalyError::Data("/proc/self/stat: no ')'".into()))?;
    let fields: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    // fields[0] is field 3 (state); utime is field 14, stime field 15.
    let get = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| AnomalyError::Data(format!("/proc/self/stat: field {} missing", i + 3)))
    };
    Ok(get(11)? + get(12)?)
}

/// One CPU reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuUsage {
    /// Process CPU, 100 = one core busy (can exceed 100 on multi-core hosts).
    pub process: f64,
    /// Host CPU busy fraction across all cores, 0..=100.
    pub host: f64,
}

/// Stateful sampler: remembers the previous read to compute deltas.
#[derive(Debug)]
pub struct CpuSampler {
    proc_stat: PathBuf,
    self_stat: PathBuf,
    prev: Option<(HostTimes, u64)>,
}

impl Default for CpuSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuSampler {
    /// Sampler over the real `/proc/stat` and `/proc/self/stat`.
    pub fn new() -> Self {
        Self::with_paths("/proc/stat", "/proc/self/stat")
    }

    /// Sampler over other files; lets tests (or a sidecar watching another pid) reuse the logic.
    pub fn with_paths(proc_stat: impl Into<PathBuf>, self_stat: impl Into<PathBuf>) -> Self {
        CpuSampler { proc_stat: proc_stat.into(), self_stat: self_stat.into(), prev: None }
    }

    /// Read both files; returns `None` on the first call (no delta yet) or when no jiffies elapsed.
    pub fn sample(&mut self) -> Result<Option<CpuUsage>> {
        let host_text = std::fs::read_to_string(&self.proc_stat).map_err(|e| AnomalyError::io(&self.proc_stat, e))?;
        let self_text = std::fs::read_to_string(&self.self_stat).map_err(|e| AnomalyError::io(&self.self_stat, e))?;
        let host = parse_proc_stat(&host_text)?;
        let proc_jiffies = parse_self_stat(&self_text)?;
        let prev = self.prev.replace((host, proc_jiffies));
        let Some((ph, pp)) = prev else { return Ok(None) };
        Ok(usage_between(ph, pp, host, proc_jiffies))
    }
}

/// Compute usage between two reads; `None` when the host counter did not advance.
pub fn usage_between(prev_host: HostTimes, prev_proc: u64, host: HostTimes, proc_jiffies: u64) -> Option<CpuUsage> {
    let dt = host.total.checked_sub(prev_host.total)?;
    if dt == 0 {
        return None;
    }
    let didle = host.idle.saturating_sub(prev_host.idle).min(dt);
    let dproc = proc_jiffies.saturating_sub(prev_proc);
    let host_pct = 100.0 * (dt - didle) as f64 / dt as f64;
    // dt covers all CPUs; per-core wall jiffies = dt / cpus.
    let process_pct = 100.0 * dproc as f64 * f64::from(host.cpus) / dt as f64;
    Some(CpuUsage { process: process_pct, host: host_pct })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const STAT_A: &str =
        "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 50 0 50 400 0 0 0 0 0 0\ncpu1 50 0 50 400 0 0 0 0 0 0\nintr 1\n";
    const STAT_B: &str =
        "cpu  200 0 200 1000 0 0 0 0 0 0\ncpu0 100 0 100 500 0 0 0 0 0 0\ncpu1 100 0 100 500 0 0 0 0 0 0\n";

    #[test]
    fn parses_and_computes_deltas() {
        let a = parse_proc_stat(STAT_A).unwrap();
        assert_eq!(a, HostTimes { total: 1000, idle: 800, cpus: 2 });
        let b = parse_proc_stat(STAT_B).unwrap();
        let pa = parse_self_stat("42 (my (weird) proc) S 1 1 1 0 -1 0 0 0 0 0 10 5 0 0 20 0 1 0 1 1 1").unwrap();
        assert_eq!(pa, 15);
        // 400 host jiffies elapsed over 2 cpus (200 per core); process used 100 -> 50 % of a core.
        let u = usage_between(a, pa, b, pa + 100).unwrap();
        assert!((u.host - 50.0).abs() < 1e-9, "{u:?}");
        assert!((u.process - 50.0).abs() < 1e-9, "{u:?}");
        assert!(usage_between(a, 0, a, 0).is_none());
    }

    #[test]
    fn real_proc_is_readable() {
        let mut s = CpuSampler::new();
        assert!(s.sample().unwrap().is_none());
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        std::thread::sleep(std::time::Duration::from_millis(30));
        if let Some(u) = s.sample().unwrap() {
            assert!((0.0..=100.0).contains(&u.host), "{u:?}");
            assert!(u.process >= 0.0, "{u:?}");
        }
    }
}
