//! Incidents: one fault, many symptoms, one action.
//!
//! A slow endpoint moves its own latency, its upstream's and its listener's latency quantiles, the request rate
//! and the CPU: ten alerts for one cause. Acting on each would run a remediation ten times, on whichever series
//! fired first. So alerts that fire within `window` of each other and share a scope (the same endpoint, its
//! upstream, a listener routing to that upstream, or the host, which every scope shares) are grouped into one
//! incident, and the incident names a **probable cause**: the member at the most specific level (endpoint over
//! upstream over listener over host), and among those the one that moved first, then furthest. The rest are its
//! symptoms.
//!
//! An incident **settles** `settle` after it opened: members that fire a tick or two after the first (an
//! endpoint's series often cross a tick after the upstream's) can still become the cause until then. Hooks and
//! webhooks act on settled incidents, once each.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::alert::{Alert, AlertChange, AlertState, Severity, Transition};

/// What a series describes, from its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "level", rename_all = "lowercase")]
pub enum Scope {
    /// The whole process or host (`process.cpu`, `host.cpu`, `proxy.active_connections`).
    Host,
    /// `listener.<name>.<metric>`.
    Listener {
        /// Listener name.
        listener: String,
    },
    /// `upstream.<name>.<metric>`.
    Upstream {
        /// Upstream name.
        upstream: String,
    },
    /// `endpoint.<upstream>.<address>.<metric>`.
    Endpoint {
        /// Upstream name.
        upstream: String,
        /// Endpoint address.
        endpoint: String,
    },
}

impl Scope {
    /// Reads the scope from a series name; anything unrecognised is host-wide.
    pub fn of(series: &str) -> Scope {
        let Some((head, rest)) = series.split_once('.') else { return Scope::Host };
        let Some((inner, _metric)) = rest.rsplit_once('.') else { return Scope::Host };
        match head {
            "listener" => Scope::Listener { listener: inner.to_string() },
            "upstream" => Scope::Upstream { upstream: inner.to_string() },
            "endpoint" => match inner.split_once('.') {
                Some((upstream, endpoint)) => {
                    Scope::Endpoint { upstream: upstream.to_string(), endpoint: endpoint.to_string() }
                }
                None => Scope::Upstream { upstream: inner.to_string() },
            },
            _ => Scope::Host,
        }
    }

    /// How specific: endpoint 3, upstream 2, listener 1, host 0.
    pub fn rank(&self) -> u8 {
        match self {
            Scope::Endpoint { .. } => 3,
            Scope::Upstream { .. } => 2,
            Scope::Listener { .. } => 1,
            Scope::Host => 0,
        }
    }

    fn upstream(&self) -> Option<&str> {
        match self {
            Scope::Endpoint { upstream, .. } | Scope::Upstream { upstream } => Some(upstream),
            _ => None,
        }
    }
}

/// Which upstreams each listener routes to, so a listener's symptoms join its upstream's incident. An empty
/// topology relates every listener to every upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Listener name → upstream names it can send requests to.
    pub routes: BTreeMap<String, BTreeSet<String>>,
}

impl Topology {
    /// Whether two scopes can be two faces of one fault.
    pub fn related(&self, a: &Scope, b: &Scope) -> bool {
        match (a, b) {
            (Scope::Host, _) | (_, Scope::Host) => true,
            (Scope::Listener { listener: x }, Scope::Listener { listener: y }) => x == y,
            (Scope::Listener { listener }, other) | (other, Scope::Listener { listener }) => {
                match (self.routes.get(listener), other.upstream()) {
                    (Some(upstreams), Some(u)) => upstreams.contains(u),
                    _ => true,
                }
            }
            _ => a.upstream() == b.upstream(),
        }
    }
}

/// One alert inside an incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// What the series describes.
    pub scope: Scope,
    /// The alert (its `started_at` is when the series began to move).
    pub alert: Alert,
}

/// Whether an incident is ongoing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IncidentState {
    /// At least one member is firing.
    Open,
    /// Every member resolved.
    Resolved,
}

/// A group of alerts with one probable cause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// `inc-<n>-<opened_at>`, unique in the process.
    pub id: String,
    /// Open or resolved.
    pub state: IncidentState,
    /// The highest severity of any member.
    pub severity: Severity,
    /// The probable cause.
    pub cause: Member,
    /// Everything else that moved with it.
    pub symptoms: Vec<Member>,
    /// Unix ms of the first member's firing.
    pub opened_at: i64,
    /// Unix ms when the cause was settled and hooks could act (`None` until then).
    pub settled_at: Option<i64>,
    /// Unix ms when the last member resolved.
    pub resolved_at: Option<i64>,
    /// Unix ms of the latest member's firing (grouping is relative to it).
    #[serde(skip)]
    last_joined: i64,
}

impl Incident {
    /// Every member, cause first.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        std::iter::once(&self.cause).chain(&self.symptoms)
    }

    /// Every member's alert, cause first.
    pub fn alerts(&self) -> Vec<Alert> {
        self.members().map(|m| m.alert.clone()).collect()
    }

    /// The member that should be named the cause: most specific scope, then earliest onset, then strongest.
    fn elect(&mut self) {
        let best = self
            .symptoms
            .iter()
            .enumerate()
            .filter(|(_, m)| outranks(m, &self.cause))
            .fold(None::<(usize, &Member)>, |acc, (i, m)| match acc {
                Some((_, b)) if !outranks(m, b) => acc,
                _ => Some((i, m)),
            })
            .map(|(i, _)| i);
        if let Some(i) = best {
            std::mem::swap(&mut self.cause, &mut self.symptoms[i]);
        }
    }
}

fn outranks(a: &Member, b: &Member) -> bool {
    (a.scope.rank(), std::cmp::Reverse(a.alert.started_at)) > (b.scope.rank(), std::cmp::Reverse(b.alert.started_at))
        || (a.scope.rank() == b.scope.rank()
            && a.alert.started_at == b.alert.started_at
            && a.alert.peak_score > b.alert.peak_score)
}

/// What happened to an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IncidentTransition {
    /// A first alert opened it.
    Opened,
    /// Another alert joined it.
    Grew,
    /// Its cause is decided; hooks and webhooks act now.
    Settled,
    /// Every member resolved.
    Resolved,
}

/// An incident after a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentChange {
    /// What changed.
    pub transition: IncidentTransition,
    /// The incident after it.
    pub incident: Incident,
}

/// Groups alert changes into incidents.
#[derive(Debug)]
pub struct IncidentEngine {
    window_ms: i64,
    settle_ms: i64,
    topology: Topology,
    open: Vec<Incident>,
    next: u64,
}

impl IncidentEngine {
    /// Alerts firing within `window_ms` of an incident's latest member join it; its cause settles after
    /// `settle_ms`.
    pub fn new(window_ms: i64, settle_ms: i64, topology: Topology) -> Self {
        IncidentEngine { window_ms, settle_ms, topology, open: Vec::new(), next: 1 }
    }

    /// Replaces the listener → upstream map (after a reload).
    pub fn set_topology(&mut self, topology: Topology) {
        self.topology = topology;
    }

    /// Open incidents, oldest first.
    pub fn open(&self) -> &[Incident] {
        &self.open
    }

    /// Folds one alert change (at tick `now_ms`) in.
    pub fn on_alert(&mut self, change: &AlertChange, now_ms: i64) -> Vec<IncidentChange> {
        let alert = &change.alert;
        let scope = Scope::of(&alert.series);
        match change.transition {
            Transition::Fired => {
                let member = Member { scope, alert: alert.clone() };
                let home = self.open.iter_mut().find(|inc| {
                    now_ms - inc.last_joined <= self.window_ms
                        && inc.members().any(|m| self.topology.related(&m.scope, &member.scope))
                });
                match home {
                    Some(inc) => {
                        inc.severity = inc.severity.max(alert.severity);
                        inc.last_joined = now_ms;
                        inc.symptoms.push(member);
                        if inc.settled_at.is_none() {
                            inc.elect();
                        }
                        vec![IncidentChange { transition: IncidentTransition::Grew, incident: inc.clone() }]
                    }
                    None => {
                        let incident = Incident {
                            id: format!("inc-{}-{now_ms}", self.next),
                            state: IncidentState::Open,
                            severity: alert.severity,
                            cause: member,
                            symptoms: Vec::new(),
                            opened_at: now_ms,
                            settled_at: None,
                            resolved_at: None,
                            last_joined: now_ms,
                        };
                        self.next += 1;
                        self.open.push(incident.clone());
                        vec![IncidentChange { transition: IncidentTransition::Opened, incident }]
                    }
                }
            }
            Transition::Escalated | Transition::Resolved => {
                let Some(pos) = self.open.iter().position(|inc| inc.members().any(|m| m.alert.id == alert.id)) else {
                    return Vec::new();
                };
                let inc = &mut self.open[pos];
                for m in std::iter::once(&mut inc.cause).chain(inc.symptoms.iter_mut()) {
                    if m.alert.id == alert.id {
                        m.alert = alert.clone();
                    }
                }
                inc.severity = inc.severity.max(alert.severity);
                if inc.members().all(|m| m.alert.state == AlertState::Resolved) {
                    let mut done = self.open.remove(pos);
                    done.state = IncidentState::Resolved;
                    done.resolved_at = Some(now_ms);
                    return vec![IncidentChange { transition: IncidentTransition::Resolved, incident: done }];
                }
                Vec::new()
            }
        }
    }

    /// Settles incidents whose settling time has passed (call once per tick).
    pub fn tick(&mut self, now_ms: i64) -> Vec<IncidentChange> {
        let mut out = Vec::new();
        for inc in &mut self.open {
            if inc.settled_at.is_none() && now_ms - inc.opened_at >= self.settle_ms {
                inc.settled_at = Some(now_ms);
                out.push(IncidentChange { transition: IncidentTransition::Settled, incident: inc.clone() });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(series: &str, started_at: i64, peak: f64) -> Alert {
        Alert {
            id: format!("{series}@{started_at}"),
            series: series.into(),
            severity: Severity::Warning,
            state: AlertState::Firing,
            score: peak,
            peak_score: peak,
            value: 1.0,
            predicted: None,
            started_at,
            resolved_at: None,
        }
    }

    fn fired(series: &str, started_at: i64, peak: f64) -> AlertChange {
        AlertChange { transition: Transition::Fired, alert: alert(series, started_at, peak) }
    }

    #[test]
    fn scopes_are_read_from_names() {
        assert_eq!(Scope::of("process.cpu"), Scope::Host);
        assert_eq!(Scope::of("listener.web.qps"), Scope::Listener { listener: "web".into() });
        assert_eq!(Scope::of("upstream.demo.latency_p99"), Scope::Upstream { upstream: "demo".into() });
        assert_eq!(
            Scope::of("endpoint.demo.127.0.0.1:9003.latency"),
            Scope::Endpoint { upstream: "demo".into(), endpoint: "127.0.0.1:9003".into() }
        );
    }

    #[test]
    fn one_slow_endpoint_is_one_incident_with_the_endpoint_as_cause() {
        let mut e = IncidentEngine::new(10_000, 3_000, Topology::default());
        let mut changes = Vec::new();
        changes.extend(e.on_alert(&fired("listener.web.latency_p99", 1_000, 0.95), 3_000));
        changes.extend(e.on_alert(&fired("upstream.demo.latency_p99", 1_000, 0.97), 3_000));
        changes.extend(e.on_alert(&fired("process.cpu", 2_000, 0.8), 4_000));
        changes.extend(e.on_alert(&fired("endpoint.demo.127.0.0.1:9003.latency", 2_000, 0.99), 5_000));
        assert!(e.tick(5_000).is_empty(), "not settled yet");
        let settled = e.tick(6_000);
        assert_eq!(settled.len(), 1);
        let inc = &settled[0].incident;
        assert_eq!(inc.cause.alert.series, "endpoint.demo.127.0.0.1:9003.latency");
        assert_eq!(inc.symptoms.len(), 3);
        assert_eq!(changes.iter().filter(|c| c.transition == IncidentTransition::Opened).count(), 1);
        // Once settled the cause stays, even if a more specific series joins late.
        e.on_alert(&fired("endpoint.demo.127.0.0.1:9001.latency", 500, 0.99), 7_000);
        assert_eq!(e.open()[0].cause.alert.series, "endpoint.demo.127.0.0.1:9003.latency");
    }

    #[test]
    fn unrelated_or_distant_alerts_open_their_own_incidents() {
        let topology = Topology { routes: BTreeMap::from([("web".into(), BTreeSet::from(["a".to_string()]))]) };
        let mut e = IncidentEngine::new(10_000, 0, topology);
        e.on_alert(&fired("upstream.a.error_ratio", 0, 0.9), 1_000);
        e.on_alert(&fired("upstream.b.error_ratio", 0, 0.9), 1_000);
        e.on_alert(&fired("listener.web.error_ratio", 0, 0.9), 2_000);
        e.on_alert(&fired("upstream.a.latency_p99", 0, 0.9), 60_000);
        let open = e.open();
        assert_eq!(open.len(), 3, "{open:#?}");
        assert_eq!(open[0].symptoms.len(), 1, "the listener routes to a, not b");
    }

    #[test]
    fn an_incident_resolves_when_every_member_has() {
        let mut e = IncidentEngine::new(10_000, 0, Topology::default());
        e.on_alert(&fired("upstream.a.qps", 0, 0.9), 0);
        e.on_alert(&fired("listener.web.qps", 0, 0.9), 0);
        let mut resolved = alert("upstream.a.qps", 0, 0.9);
        resolved.state = AlertState::Resolved;
        let done = e.on_alert(&AlertChange { transition: Transition::Resolved, alert: resolved.clone() }, 9_000);
        assert!(done.is_empty());
        let mut other = alert("listener.web.qps", 0, 0.9);
        other.state = AlertState::Resolved;
        let done = e.on_alert(&AlertChange { transition: Transition::Resolved, alert: other }, 9_500);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].incident.state, IncidentState::Resolved);
        assert!(e.open().is_empty());
    }
}
