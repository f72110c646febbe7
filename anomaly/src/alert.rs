//! Alerts: the per-series state machine over the detector's events (fire when an event lasts `for_ticks`,
//! resolve after `resolve_ticks` outside one) and the JSON shapes the proxy serves or posts (our own and Alertmanager's webhook format).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::config::Thresholds;
use crate::incident::Incident;
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
    /// Consecutive ticks inside an event.
    event_ticks: u32,
    /// Unix ms of the event's first tick: when the series started to move.
    onset: i64,
    /// Highest strength of the current event.
    peak: f64,
    /// Consecutive ticks outside any event.
    quiet: u32,
    active: Option<Alert>,
}

/// Per-series state machine over the detector's events.
///
/// The detector decides when a series leaves its normal (an event) and how strongly (the strength); the
/// engine decides when that is worth an alert: the event has lasted `for_ticks` ticks (a one-tick blip never
/// alerts) and its strength reached `warning` (`critical` escalates). The alert resolves after `resolve_ticks`
/// ticks outside any event — when the series came back, or when the detector accepted its new level as normal.
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
        if s.in_event {
            if st.event_ticks == 0 {
                st.onset = s.timestamp_ms;
                st.peak = 0.0;
            }
            st.event_ticks = st.event_ticks.saturating_add(1);
            st.peak = st.peak.max(s.strength);
            st.quiet = 0;
        } else {
            st.event_ticks = 0;
            st.quiet = st.quiet.saturating_add(1);
        }
        let severity = |peak: f64| {
            if peak >= th.critical {
                Some(Severity::Critical)
            } else if peak >= th.warning {
                Some(Severity::Warning)
            } else {
                None
            }
        };
        match &mut st.active {
            None => {
                if st.event_ticks < th.for_ticks {
                    return None;
                }
                let severity = severity(st.peak)?;
                let alert = Alert {
                    id: format!("{}@{}", s.series, st.onset),
                    series: s.series.clone(),
                    severity,
                    state: AlertState::Firing,
                    score: s.strength,
                    peak_score: st.peak,
                    value: s.value,
                    predicted: s.predicted,
                    started_at: st.onset,
                    resolved_at: None,
                };
                st.active = Some(alert.clone());
                Some(AlertChange { transition: Transition::Fired, alert })
            }
            Some(a) => {
                a.score = s.strength;
                a.peak_score = a.peak_score.max(st.peak);
                a.value = s.value;
                a.predicted = s.predicted;
                if st.quiet >= th.resolve_ticks {
                    a.state = AlertState::Resolved;
                    a.resolved_at = Some(s.timestamp_ms);
                    let alert = a.clone();
                    st.active = None;
                    return Some(AlertChange { transition: Transition::Resolved, alert });
                }
                if a.severity == Severity::Warning && severity(a.peak_score) == Some(Severity::Critical) {
                    a.severity = Severity::Critical;
                    return Some(AlertChange { transition: Transition::Escalated, alert: a.clone() });
                }
                None
            }
        }
    }
}

pub use crate::time::rfc3339;

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
    let items: Vec<serde_json::Value> = alerts.iter().map(|a| alert_item(a, instance, external_url, &[])).collect();
    let common_labels = if alerts.len() == 1 {
        items[0]["labels"].clone()
    } else {
        serde_json::json!({ "alertname": ALERT_NAME, "instance": instance })
    };
    let group = Group {
        key: format!("{{}}:{{alertname=\"{ALERT_NAME}\"}}"),
        labels: serde_json::json!({ "alertname": ALERT_NAME }),
        common_labels,
        common_annotations: serde_json::json!({}),
    };
    envelope(alerts, items, receiver, external_url, group)
}

/// One Alertmanager group for one incident: every member alert, labelled with the incident and its role
/// (`cause` or `symptom`), grouped by the incident id so a receiver sees one notification per fault.
pub fn incident_payload(incident: &Incident, receiver: &str, instance: &str, external_url: &str) -> serde_json::Value {
    let alerts = incident.alerts();
    let items: Vec<serde_json::Value> = alerts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let role = if i == 0 { "cause" } else { "symptom" };
            alert_item(a, instance, external_url, &[("incident", &incident.id), ("role", role)])
        })
        .collect();
    let symptoms: Vec<&str> = incident.symptoms.iter().map(|m| m.alert.series.as_str()).collect();
    let group = Group {
        key: format!("{{}}:{{alertname=\"{ALERT_NAME}\",incident=\"{}\"}}", incident.id),
        labels: serde_json::json!({ "alertname": ALERT_NAME, "incident": incident.id }),
        common_labels: serde_json::json!({ "alertname": ALERT_NAME, "instance": instance, "incident": incident.id }),
        common_annotations: serde_json::json!({
            "summary": format!("Incident {}: probable cause {}", incident.id, incident.cause.alert.series),
            "cause": incident.cause.alert.series,
            "symptoms": symptoms.join(","),
        }),
    };
    envelope(&alerts, items, receiver, external_url, group)
}

fn alert_item(a: &Alert, instance: &str, external_url: &str, extra: &[(&str, &str)]) -> serde_json::Value {
    let mut labels: BTreeMap<String, String> = BTreeMap::from([
        ("alertname".into(), ALERT_NAME.into()),
        ("series".into(), a.series.clone()),
        ("severity".into(), a.severity.as_str().into()),
        ("instance".into(), instance.into()),
    ]);
    for (k, v) in extra {
        labels.insert((*k).into(), (*v).into());
    }
    let predicted = a.predicted.map(|p| format!("{p:.4}")).unwrap_or_else(|| "n/a".into());
    serde_json::json!({
        "status": match a.state { AlertState::Firing => "firing", AlertState::Resolved => "resolved" },
        "labels": labels,
        "annotations": {
            "summary": format!("Anomaly on {} ({})", a.series, a.severity.as_str()),
            "description": format!("{} = {:.4}, expected {}, strength {:.3} (peak {:.3})",
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
}

/// How a payload's alerts are grouped, in Alertmanager's terms.
struct Group {
    key: String,
    labels: serde_json::Value,
    common_labels: serde_json::Value,
    common_annotations: serde_json::Value,
}

fn envelope(
    alerts: &[Alert],
    items: Vec<serde_json::Value>,
    receiver: &str,
    external_url: &str,
    group: Group,
) -> serde_json::Value {
    let firing = alerts.iter().any(|a| a.state == AlertState::Firing);
    serde_json::json!({
        "version": "4",
        "groupKey": group.key,
        "truncatedAlerts": 0,
        "status": if firing { "firing" } else { "resolved" },
        "receiver": receiver,
        "groupLabels": group.labels,
        "commonLabels": group.common_labels,
        "commonAnnotations": group.common_annotations,
        "externalURL": external_url,
        "alerts": items,
    })
}
