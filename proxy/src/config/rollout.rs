//! `rollout = { ... }` on a `[[plugin]]`: how a new module uploaded with `PUT /plugins/{name}?rollout=PERCENT`
//! meets the traffic (steps, how long each lasts, which requests go to it) and when it is rolled back by itself
//! (the guards). See [`crate::plugin::rollout`] for what runs it.

use super::duration::HumanDuration;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `rollout` as written in the file. Every key has a default, so `rollout = {}` is a valid table.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutFile {
    /// The candidate's share of requests at each step, in percent, increasing, ending at 100.
    #[serde(default = "default_steps")]
    pub steps: Vec<f64>,
    /// How long a step lasts with every guard passing before the next one starts.
    #[serde(default = "default_step_interval")]
    pub step_interval: HumanDuration,
    /// The increase of the candidate's error ratio over the stable version's that is still accepted.
    #[serde(default = "default_max_error_ratio")]
    pub max_error_ratio: f64,
    /// The increase of the candidate's p99 latency over the stable version's that is still accepted.
    #[serde(default = "default_max_latency_increase")]
    pub max_latency_increase: HumanDuration,
    /// `header:NAME`, `cookie:NAME` or `source_ip`: the requests of one client meet one version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<String>,
    /// Whether the anomaly detector also watches the candidate (not supported yet: refused when `true`).
    #[serde(default)]
    pub use_detector: bool,
}

impl Default for RolloutFile {
    fn default() -> Self {
        RolloutFile {
            steps: default_steps(),
            step_interval: default_step_interval(),
            max_error_ratio: default_max_error_ratio(),
            max_latency_increase: default_max_latency_increase(),
            sticky: None,
            use_detector: false,
        }
    }
}

fn default_steps() -> Vec<f64> {
    vec![5.0, 25.0, 50.0, 100.0]
}
fn default_step_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_max_error_ratio() -> f64 {
    0.02
}
fn default_max_latency_increase() -> HumanDuration {
    HumanDuration(Duration::from_millis(25))
}

/// Which part of a request decides its version when the rollout is sticky.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// The value of this request header (lower-case name).
    Header(http::HeaderName),
    /// The value of this cookie.
    Cookie(String),
    /// The client's IP address.
    SourceIp,
}

/// A validated `rollout` table.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    /// Shares in percent, increasing, the last one 100.
    pub steps: Vec<f64>,
    /// Time a step lasts.
    pub step_interval: Duration,
    /// Accepted increase of the error ratio (0..1).
    pub max_error_ratio: f64,
    /// Accepted increase of the p99 latency.
    pub max_latency_increase: Duration,
    /// What keeps a client on one version; `None` draws per request.
    pub sticky: Option<Sticky>,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        // The defaults are valid by construction.
        validate(&RolloutFile::default()).unwrap_or(RolloutConfig {
            steps: default_steps(),
            step_interval: default_step_interval().0,
            max_error_ratio: default_max_error_ratio(),
            max_latency_increase: default_max_latency_increase().0,
            sticky: None,
        })
    }
}

impl RolloutConfig {
    /// The steps when an upload asks for `first` percent to start with: `first`, then the configured steps
    /// above it (the last is always 100).
    pub fn starting_at(&self, first: f64) -> Vec<f64> {
        let mut steps = vec![first];
        steps.extend(self.steps.iter().copied().filter(|s| *s > first));
        steps
    }
}

/// Whether `percent` is a share a rollout can run at: more than 0, at most 100.
pub fn valid_percent(percent: f64) -> bool {
    percent.is_finite() && percent > 0.0 && percent <= 100.0
}

/// Checks a `rollout` table; the errors are `(key below rollout, message)`.
pub fn validate(file: &RolloutFile) -> Result<RolloutConfig, Vec<(&'static str, String)>> {
    let mut issues = Vec::new();
    if file.steps.is_empty() {
        issues.push(("steps", "needs at least one step (the last one 100)".to_string()));
    }
    if let Some(bad) = file.steps.iter().find(|s| !valid_percent(**s)) {
        issues.push(("steps", format!("{bad} is not a percentage in (0, 100]")));
    }
    if file.steps.windows(2).any(|w| w[0] >= w[1]) {
        issues.push(("steps", "must increase from one step to the next".to_string()));
    }
    if file.steps.last().is_some_and(|last| *last != 100.0) {
        issues.push(("steps", "the last step must be 100 (passing it promotes the candidate)".to_string()));
    }
    if file.step_interval.0 < Duration::from_secs(1) {
        issues.push(("step_interval", "must be at least 1s (a step is judged on several looks)".to_string()));
    }
    if !(file.max_error_ratio.is_finite() && (0.0..1.0).contains(&file.max_error_ratio)) {
        issues.push(("max_error_ratio", format!("{} is not a ratio in [0, 1)", file.max_error_ratio)));
    }
    let sticky = match file.sticky.as_deref() {
        None => None,
        Some("source_ip") => Some(Sticky::SourceIp),
        Some(other) => match other.split_once(':') {
            Some(("header", name)) => match http::HeaderName::from_bytes(name.trim().as_bytes()) {
                Ok(name) => Some(Sticky::Header(name)),
                Err(_) => {
                    issues.push(("sticky", format!("{name:?} is not a valid header name")));
                    None
                }
            },
            Some(("cookie", name)) if !name.trim().is_empty() => Some(Sticky::Cookie(name.trim().to_string())),
            _ => {
                issues.push(("sticky", format!("{other:?}: use header:NAME, cookie:NAME or source_ip")));
                None
            }
        },
    };
    if file.use_detector {
        issues.push((
            "use_detector",
            "the anomaly detector does not watch rollouts yet; leave it out (the error and latency guards run)"
                .to_string(),
        ));
    }
    if !issues.is_empty() {
        return Err(issues);
    }
    Ok(RolloutConfig {
        steps: file.steps.clone(),
        step_interval: file.step_interval.0,
        max_error_ratio: file.max_error_ratio,
        max_latency_increase: file.max_latency_increase.0,
        sticky,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_a_first_step_replaces_the_lower_ones() {
        let config = validate(&RolloutFile::default()).expect("defaults");
        assert_eq!(config.starting_at(20.0), vec![20.0, 25.0, 50.0, 100.0]);
        assert_eq!(config.starting_at(60.0), vec![60.0, 100.0]);
        assert_eq!(config.starting_at(100.0), vec![100.0]);
    }

    #[test]
    fn bad_tables_are_refused_with_their_key() {
        let file = RolloutFile {
            steps: vec![50.0, 10.0],
            step_interval: HumanDuration(Duration::from_millis(10)),
            max_error_ratio: 1.5,
            sticky: Some("query:x".into()),
            use_detector: true,
            ..RolloutFile::default()
        };
        let keys: Vec<_> = validate(&file).err().unwrap_or_default().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["steps", "steps", "step_interval", "max_error_ratio", "sticky", "use_detector"]);
        let sticky = RolloutFile { sticky: Some("cookie:session".into()), ..RolloutFile::default() };
        assert_eq!(validate(&sticky).map(|c| c.sticky), Ok(Some(Sticky::Cookie("session".into()))));
    }
}
