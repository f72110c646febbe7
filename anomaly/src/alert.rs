//! Alerts: the per-series state machine (fire after `for_ticks`, resolve after `resolve_ticks`)
//! and the JSON shapes the proxy serves or posts (our own and Alertmanager's webhook format).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::config::Thresholds;
use crate::score::SeriesScore;

/// How bad an anomaly is; ordered so `Critical > Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Score stayed above the warning threshold.
    Warning,
    /// Score stayed above the critical threshold.
    Critical,
}

impl Severity {
    /// Lower-case name, as used in labels and env vars.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Whether an alert is ongoing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// Still anomalous.
    Firing,
    /// Back to normal for `resolve_ticks` ticks.
    Resolved,
}

/// One anomaly on one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Unique id (`<series>@<started_at>`); stable across escalation and resolution.
    pub id: String,
    /// Series name.
    pub series: String,
    /// Current severity (may escalate from warning to critical while firing).
    pub severity: Severity,
    /// Firing or resolved.
    pub state: AlertState,
    /// Latest score (highest score while firing is in `peak_score`).
    pub score: f64,
    /// Highest score observed during the alert.
    pub peak_score: f64,
    /// Latest observed value.
    pub value: f64,
    /// Forecast for the latest tick, if any.
    pub predicted: Option<f64>,
    /// Unix ms of the tick that made it fire.
    pub started_at: i64,
    /// Unix ms of the tick that resolved it.
    pub resolved_at: Option<i64>,
}

/// What happened to an alert on this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transition {
    /// Newly firing.
    Fired,
    /// Already firing, severity raised to critical (hooks for critical run now).
    Escalated,
    /// Back to normal.
    Resolved,
}

/// An alert change emitted by [`AlertEngine::update`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertChange {
    /// What changed.
    pub transition: Transition,
    /// Alert after the change.
    pub alert: Alert,
}

#[derive(Debug, Default)]
struct SeriesAlertState {
    above_warn: u32,
    above_crit: u32,
    below: u32,
    active: Option<Alert>,
}

/// Per-series hysteresis state machine.
#[derive(Debug)]
pub struct AlertEngine {
    thresholds: Thresholds,
    series: HashMap<String, SeriesAlertState>,
}

impl AlertEngine {
    /// Engine with the given thresholds.
    pub fn new(thresholds: Thresholds) -> Self {
        AlertEngine { thresholds, series: HashMap::new() }
    }

    /// Currently firing alerts, sorted by series.
    pub fn active(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self.series.values().filter_map(|s| s.active.clone()).collect();
        v.sort_by(|a, b| a.series.cmp(&b.series));
        v
    }

    /// Feed one score; returns a change when an alert fires, escalates or resolves.
    pub fn update(&mut self, s: &SeriesScore) -> Option<AlertChange> {
        let th = &self.thresholds;
        let st = self.series.entry(s.series.clone()).or_default();
        st.above_warn = if s.score >= th.warning { st.above_warn + 1 } else { 0 };
        st.above_crit = if s.score >= th.critical { st.above_crit + 1 } else { 0 };
        match &mut st.active {
            None => {
                let severity = if st.above_crit >= th.for_ticks {
                    Severity::Critical
                } else if st.above_warn >= th.for_ticks {
                    Severity::Warning
                } else {
                    return None;
                };
                st.below = 0;
                let alert = Alert {
                    id: format!("{}@{}", s.series, s.timestamp_ms),
                    series: s.series.clone(),
                    severity,
                    state: AlertState::Firing,
                    score: s.score,
                    peak_score: s.score,
                    value: s.value,
                    predicted: s.predicted,
                    started_at: s.timestamp_ms,
                    resolved_at: None,
                };
                st.active = Some(alert.clone());
                Some(AlertChange { transition: Transition::Fired, alert })
            }
            Some(a) => {
                a.score = s.score;
                a.peak_score = a.peak_score.max(s.score);
                a.value = s.value;
                a.predicted = s.predicted;
                st.below = if s.score < th.warning { st.below + 1 } else { 0 };
                if st.below >= th.resolve_ticks {
                    a.state = AlertState::Resolved;
                    a.resolved_at = Some(s.timestamp_ms);
                    let alert = a.clone();
                    st.active = None;
                    st.below = 0;
                    return Some(AlertChange { transition: Transition::Resolved, alert });
                }
                if a.severity == Severity::Warning && st.above_crit >= th.for_ticks {
                    a.severity = Severity::Critical;
                    return Some(AlertChange { transition: Transition::Escalated, alert: a.clone() });
                }
                None
            }
        }
    }
}

/// Format unix milliseconds as RFC 3339 UTC (`2024-01-02T03:04:05.678Z`) without a date crate.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z", sod / 3600, sod % 3600 / 60, sod % 60)
}

/// FNV-1a 64-bit, used for Alertmanager-style label fingerprints (stable across restarts).
fn fnv1a(parts: &BTreeMap<String, String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in parts {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Alertmanager alert name used for every Portico anomaly.
pub const ALERT_NAME: &str = "PorticoAnomaly";

/// Build an Alertmanager webhook (version "4") payload for `alerts`.
///
/// Lets Portico post straight to any receiver that understands Alertmanager webhooks (Slack
/// bridges, PagerDuty adapters, an existing Alertmanager-driven workflow). `instance` identifies
/// this proxy; `external_url` is its admin URL (used for `externalURL`/`generatorURL`).
pub fn webhook_payload(alerts: &[Alert], receiver: &str, instance: &str, external_url: &str) -> serde_json::Value {
    let firing = alerts.iter().any(|a| a.state == AlertState::Firing);
    let items: Vec<serde_json::Value> = alerts
        .iter()
        .map(|a| {
            let labels: BTreeMap<String, String> = BTreeMap::from([
                ("alertname".into(), ALERT_NAME.into()),
                ("series".into(), a.series.clone()),
                ("severity".into(), a.severity.as_str().into()),
                ("instance".into(), instance.into()),
            ]);
            let predicted = a.predicted.map(|p| format!("{p:.4}")).unwrap_or_else(|| "n/a".into());
            serde_json::json!({
                "status": match a.state { AlertState::Firing => "firing", AlertState::Resolved => "resolved" },
                "labels": labels,
                "annotations": {
                    "summary": format!("Anomaly on {} ({})", a.series, a.severity.as_str()),
                    "description": format!("{} = {:.4}, forecast {}, score {:.3} (peak {:.3})",
                        a.series, a.value, predicted, a.score, a.peak_score),
                    "score": format!("{:.4}", a.score),
                    "value": format!("{}", a.value),
                    "predicted": predicted,
                    "alert_id": a.id,
                },
                "startsAt": rfc3339(a.started_at),
                "endsAt": a.resolved_at.map(rfc3339).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
                "generatorURL": format!("{}/anomaly/alerts", external_url.trim_end_matches('/')),
                "fingerprint": fnv1a(&labels),
            })
        })
        .collect();
    let common_labels = if alerts.len() == 1 {
        items[0]["labels"].clone()
    } else {
        serde_json::json!({ "alertname": ALERT_NAME, "instance": instance })
    };
    serde_json::json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{ALERT_NAME}\"}}"),
        "truncatedAlerts": 0,
        "status": if firing { "firing" } else { "resolved" },
        "receiver": receiver,
        "groupLabels": { "alertname": ALERT_NAME },
        "commonLabels": common_labels,
        "commonAnnotations": {},
        "externalURL": external_url,
        "alerts": items,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
    }
}
