//! The `[anomaly]` configuration table, with its own small duration parser so the crate does not
//! pull in a date/time dependency just to read "250ms".

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::alert::Severity;
use crate::error::{AnomalyError, Result};

/// Parse "250ms", "1s", "5m", "6h" or compounds like "1m30s" into a [`Duration`].
///
/// Kept deliberately tiny: operators write these by hand in TOML, and one unambiguous grammar
/// (integer + unit, repeated) avoids surprises such as "1.5" meaning seconds or minutes.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let s = text.trim();
    if s.is_empty() {
        return Err(AnomalyError::Config("empty duration".into()));
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total = Duration::ZERO;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(AnomalyError::Config(format!("duration {text:?}: expected a number at offset {start}")));
        }
        let n: u64 =
            s[start..i].parse().map_err(|_| AnomalyError::Config(format!("duration {text:?}: number too large")))?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let part = match &s[ustart..i] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "" => return Err(AnomalyError::Config(format!("duration {text:?}: missing unit (ms, s, m, h)"))),
            other => {
                return Err(AnomalyError::Config(format!(
                    "duration {text:?}: unknown unit {other:?} (use ms, s, m, h)"
                )))
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// Format a duration back into the grammar [`parse_duration`] accepts, so configs round-trip.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0ms".into()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A duration that (de)serialises as a human string ("10s"), used for every duration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The wrapped duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(HumanDuration).map_err(de::Error::custom)
    }
}

/// How much history the in-memory ring keeps: a tick count, or a duration divided by `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    /// Exactly this many ticks.
    Ticks(u64),
    /// As many ticks as fit in this span at the configured interval.
    Span(Duration),
}

impl Serialize for History {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            History::Ticks(n) => s.serialize_u64(*n),
            History::Span(d) => s.serialize_str(&format_duration(*d)),
        }
    }
}

impl<'de> Deserialize<'de> for History {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = History;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a tick count (integer) or a duration string like \"6h\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<History, E> {
                Ok(History::Ticks(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<History, E> {
                u64::try_from(v).map(History::Ticks).map_err(|_| E::custom("history must not be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<History, E> {
                parse_duration(v).map(History::Span).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Strength thresholds and hysteresis for turning the detector's events into alerts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Strength an event must reach to alert as a warning (0.5 is where the detector opens an event).
    pub warning: f64,
    /// Strength that makes the alert critical.
    pub critical: f64,
    /// Ticks an event must last before it alerts; filters one-tick blips.
    pub for_ticks: u32,
    /// Ticks outside any event before a firing alert resolves; avoids flapping.
    pub resolve_ticks: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { warning: 0.7, critical: 0.9, for_ticks: 3, resolve_ticks: 5 }
    }
}

/// Which member of an incident a hook's match is tried on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookRole {
    /// Only the incident's probable cause (the default: act on the fault, not on its symptoms).
    #[default]
    Cause,
    /// Any member: the hook runs (once per incident) when any alert of the incident matches.
    Any,
}

/// Which incidents a hook reacts to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookMatch {
    /// Minimum severity: `warning` matches warning and critical alerts, `critical` only critical.
    #[serde(default)]
    pub severity: Option<Severity>,
    /// Glob over the series name where `*` matches any run of characters (including dots).
    #[serde(default)]
    pub series: Option<String>,
    /// Whether the match is tried on the incident's cause only (default) or on any of its members.
    #[serde(default)]
    pub role: HookRole,
}

/// How alerts are grouped into incidents.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentConfig {
    /// Alerts firing within this of an incident's latest member, in a related scope, join it.
    pub window: HumanDuration,
    /// After this long an incident's cause is decided and hooks and webhooks act on it.
    pub settle: HumanDuration,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        IncidentConfig { window: HumanDuration(Duration::from_secs(10)), settle: HumanDuration(Duration::from_secs(3)) }
    }
}

/// One `[[anomaly.hook]]` entry: a remediation command run when a matching alert fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// Name shown in the audit log and used for the per-hook cooldown.
    pub name: String,
    /// Which alerts trigger the hook; an empty match triggers on every firing alert.
    #[serde(default)]
    pub on: HookMatch,
    /// Program and arguments, executed directly (never through a shell) so alert data cannot inject commands.
    pub exec: Vec<String>,
    /// The process group is killed after this long.
    #[serde(default = "default_hook_timeout")]
    pub timeout: HumanDuration,
    /// Minimum time between two starts of this hook, so a flapping series cannot hammer the fleet.
    #[serde(default = "default_hook_cooldown")]
    pub cooldown: HumanDuration,
    /// Record what would have run without running it; for trying a hook in production safely.
    #[serde(default)]
    pub dry_run: bool,
}

fn default_hook_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_hook_cooldown() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

/// The `[anomaly]` table. Unknown keys are rejected so typos surface at startup, not at 3 a.m.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyConfig {
    /// Master switch; lets operators keep the table but turn detection off.
    pub enabled: bool,
    /// Sampling period of ticks fed to the detector.
    pub interval: HumanDuration,
    /// Path to a `.safetensors` model (sidecar `.json` beside it); `None` uses the bundled model.
    pub model: Option<PathBuf>,
    /// In-memory ring size, in ticks or as a duration.
    pub history: History,
    /// Directory for rotated Arrow IPC files; `None` keeps history in memory only.
    pub store_dir: Option<PathBuf>,
    /// Total size cap for `store_dir`; the oldest files are deleted first.
    pub store_max_bytes: u64,
    /// Alert thresholds and hysteresis.
    pub thresholds: Thresholds,
    /// Ticks per series before scores are trusted (normalisers and error statistics need data).
    pub warmup: u32,
    /// How long a series may stay away from its old normal before its new level or spread becomes the normal
    /// (the alert then resolves).
    pub adapt: HumanDuration,
    /// Grouping of alerts into incidents.
    pub incidents: IncidentConfig,
    /// Alertmanager-compatible webhook receivers; the proxy posts [`crate::alert::webhook_payload`] to them.
    pub webhooks: Vec<String>,
    /// Remediation hooks.
    #[serde(rename = "hook")]
    pub hooks: Vec<HookConfig>,
    /// Upper bound on hook processes running at once across all hooks.
    pub max_concurrent_hooks: usize,
    /// Capacity of the submit channel; ticks beyond it are dropped and counted rather than blocking the proxy.
    pub queue: usize,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            enabled: true,
            interval: HumanDuration(Duration::from_secs(1)),
            model: None,
            history: History::Span(Duration::from_secs(6 * 3600)),
            store_dir: None,
            store_max_bytes: 256 * 1024 * 1024,
            thresholds: Thresholds::default(),
            warmup: 120,
            adapt: HumanDuration(Duration::from_secs(120)),
            incidents: IncidentConfig::default(),
            webhooks: Vec::new(),
            hooks: Vec::new(),
            max_concurrent_hooks: 2,
            queue: 64,
        }
    }
}

impl AnomalyConfig {
    /// Check cross-field invariants serde cannot express; call after deserialising.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(AnomalyError::Config(m));
        if self.interval.0.is_zero() {
            return bad("interval: must be greater than zero".into());
        }
        let t = &self.thresholds;
        if !(t.warning > 0.0 && t.warning <= 1.0 && t.critical > 0.0 && t.critical <= 1.0) {
            return bad("thresholds: warning and critical must be in (0, 1]".into());
        }
        if t.warning > t.critical {
            return bad(format!("thresholds: warning ({}) must not exceed critical ({})", t.warning, t.critical));
        }
        if t.for_ticks == 0 || t.resolve_ticks == 0 {
            return bad("thresholds: for_ticks and resolve_ticks must be at least 1".into());
        }
        if self.adapt_ticks() < 2 {
            return bad("adapt: must span at least two intervals".into());
        }
        if self.history_ticks() == 0 {
            return bad("history: must hold at least one tick".into());
        }
        if self.max_concurrent_hooks == 0 {
            return bad("max_concurrent_hooks: must be at least 1".into());
        }
        if self.queue == 0 {
            return bad("queue: must be at least 1".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, h) in self.hooks.iter().enumerate() {
            if h.name.trim().is_empty() {
                return bad(format!("hook[{i}].name: must not be empty"));
            }
            if !names.insert(h.name.as_str()) {
                return bad(format!("hook[{i}].name: duplicate hook name {:?}", h.name));
            }
            if h.exec.is_empty() || h.exec[0].is_empty() {
                return bad(format!("hook {:?}.exec: needs at least a program path", h.name));
            }
            if h.timeout.0.is_zero() {
                return bad(format!("hook {:?}.timeout: must be greater than zero", h.name));
            }
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            if !(w.starts_with("http://") || w.starts_with("https://")) {
                return bad(format!("webhooks[{i}]: {w:?} is not an http(s) URL"));
            }
        }
        Ok(())
    }

    /// `adapt` in ticks.
    pub fn adapt_ticks(&self) -> u32 {
        let ticks = self.adapt.0.as_millis() / self.interval.0.as_millis().max(1);
        u32::try_from(ticks).unwrap_or(u32::MAX)
    }

    /// Ring capacity in ticks, resolving a duration `history` against `interval`.
    pub fn history_ticks(&self) -> usize {
        match self.history {
            History::Ticks(n) => usize::try_from(n).unwrap_or(usize::MAX),
            History::Span(d) => {
                let iv = self.interval.0.as_millis().max(1);
                usize::try_from(d.as_millis() / iv).unwrap_or(usize::MAX)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("6h").unwrap(), Duration::from_secs(21600));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        for bad in ["", "10", "s", "1x", "1.5s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should fail");
        }
        for d in
            [Duration::from_millis(250), Duration::from_secs(7), Duration::from_secs(120), Duration::from_secs(7200)]
        {
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }

    #[test]
    fn history_ticks_uses_interval() {
        let mut c = AnomalyConfig { interval: HumanDuration(Duration::from_millis(250)), ..Default::default() };
        c.history = History::Span(Duration::from_secs(60));
        assert_eq!(c.history_ticks(), 240);
        c.history = History::Ticks(10);
        assert_eq!(c.history_ticks(), 10);
    }

    #[test]
    fn validate_rejects_inverted_thresholds() {
        let mut c = AnomalyConfig::default();
        c.validate().unwrap();
        c.thresholds.warning = 0.95;
        assert!(c.validate().unwrap_err().to_string().contains("warning"));
    }
}
