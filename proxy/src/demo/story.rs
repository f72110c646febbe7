//! What the demo tells: incidents as they settle (once each, with their cause), the latency fault's timeline,
//! and the closing summary.

use portico_anomaly::{ActionRecord, AnomalyEvent, IncidentTransition};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One incident as the demo prints it.
#[derive(Debug, Clone)]
struct Told {
    id: String,
    at: Duration,
    cause: String,
    symptoms: Vec<String>,
    resolved: Option<Duration>,
}

#[derive(Debug, Default)]
struct Inner {
    fault: Option<Duration>,
    detected: Option<(Duration, String)>,
    drained: Option<Duration>,
    recovered: Option<Duration>,
    incidents: Vec<Told>,
}

/// The demo's narrator: fed the detector's events and the acts, it prints as things happen and sums up.
#[derive(Debug)]
pub struct Story {
    start: Instant,
    /// Endpoint address → demo upstream name, so causes read as "gamma" rather than a port.
    names: BTreeMap<String, String>,
    inner: parking_lot::Mutex<Inner>,
}

impl Story {
    /// A story starting now.
    pub fn new(names: BTreeMap<String, String>) -> Self {
        Story { start: Instant::now(), names, inner: parking_lot::Mutex::new(Inner::default()) }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn readable(&self, series: &str) -> String {
        match self.names.iter().find(|(addr, _)| series.contains(addr.as_str())) {
            Some((_, name)) => format!("{series} ({name})"),
            None => series.to_string(),
        }
    }

    /// Folds one detector event in, printing settled and resolved incidents.
    pub fn on_event(&self, event: &AnomalyEvent) {
        let AnomalyEvent::Incident(change) = event else { return };
        let inc = &change.incident;
        let now = self.elapsed();
        let mut inner = self.inner.lock();
        match change.transition {
            IncidentTransition::Settled => {
                let cause = self.readable(&inc.cause.alert.series);
                let symptoms: Vec<String> = inc.symptoms.iter().map(|m| m.alert.series.clone()).collect();
                println!(
                    "      !! incident {} ({}): probable cause {cause}; {} symptom{}{}",
                    inc.id,
                    inc.severity.as_str(),
                    symptoms.len(),
                    if symptoms.len() == 1 { "" } else { "s" },
                    if symptoms.is_empty() { String::new() } else { format!(": {}", symptoms.join(", ")) }
                );
                if inner.fault.is_some() && inner.detected.is_none() && inc.cause.alert.series.contains("latency") {
                    inner.detected = Some((now, cause.clone()));
                }
                inner.incidents.push(Told { id: inc.id.clone(), at: now, cause, symptoms, resolved: None });
            }
            IncidentTransition::Resolved => {
                if let Some(t) = inner.incidents.iter_mut().find(|t| t.id == inc.id) {
                    t.resolved = Some(now);
                    println!("      ok incident {} resolved", inc.id);
                }
            }
            IncidentTransition::Opened | IncidentTransition::Grew => {}
        }
    }

    /// The latency fault was injected now.
    pub fn fault(&self) {
        self.inner.lock().fault = Some(self.elapsed());
    }

    /// Whether the fault is on and the slow endpoint not yet drained.
    pub fn awaiting_drain(&self) -> bool {
        let inner = self.inner.lock();
        inner.fault.is_some() && inner.drained.is_none()
    }

    /// The slow endpoint was drained now.
    pub fn drained(&self) {
        self.inner.lock().drained = Some(self.elapsed());
    }

    /// Latency is back to `p99` against the calm `baseline`: recovered once drained and within twice of it.
    pub fn latency(&self, p99: f64, baseline: f64) {
        let mut inner = self.inner.lock();
        if inner.drained.is_some() && inner.recovered.is_none() && p99 <= 2.0 * baseline {
            inner.recovered = Some(self.elapsed());
        }
    }

    /// The closing lines: timeline (when there was a fault), incidents with their causes, hook runs.
    pub fn summary(&self, with_fault: bool, actions: &[ActionRecord]) {
        let inner = self.inner.lock();
        let at = |d: Option<Duration>| d.map_or("—".to_string(), |d| format!("{:.0}s", d.as_secs_f64()));
        if with_fault {
            println!("Latency fault timeline:");
            println!("  fault injected   {}", at(inner.fault));
            match &inner.detected {
                Some((d, cause)) => println!("  detected         {:.0}s  (cause {cause})", d.as_secs_f64()),
                None => println!("  detected         —  (not within this run; try --duration 90s)"),
            }
            println!("  endpoint drained {}", at(inner.drained));
            println!("  recovered        {}", at(inner.recovered));
        }
        println!("Incidents:");
        for t in &inner.incidents {
            println!(
                "  {} at {:.0}s, resolved {}: cause {}; symptoms: {}",
                t.id,
                t.at.as_secs_f64(),
                at(t.resolved),
                t.cause,
                if t.symptoms.is_empty() { "none".to_string() } else { t.symptoms.join(", ") }
            );
        }
        println!("Actions:");
        if actions.is_empty() {
            println!("  none");
        }
        for a in actions {
            let said = a.stdout_tail.trim();
            println!(
                "  {} for {} ({:?}){}",
                a.hook,
                a.incident_id.as_deref().unwrap_or(&a.alert_id),
                a.outcome,
                if said.is_empty() { String::new() } else { format!(": {said}") }
            );
        }
        println!("incidents: {}", inner.incidents.len());
    }
}
