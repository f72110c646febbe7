//! Progressive rollout of a plugin version: a module uploaded with `PUT /plugins/{name}?rollout=PERCENT` runs as
//! the **candidate** beside the slot's **stable** version and meets a share of the requests, step by step
//! (`rollout.steps`, each for `step_interval`), while the guards ([`guard`]) compare the two versions once a
//! second over the same window. A breach rolls back at once (the candidate's share goes to 0; it stays loaded,
//! for inspection, until the next version change); passing the last step (100 %) promotes the candidate to
//! stable. Any other version change of the slot (an upload, a file change, a rollback) ends the rollout. A
//! rollback is logged as a warning and told through [`Reporting::rolled_back`], which the anomaly watcher turns
//! into an alert for its hooks and webhooks (`crate::watch`).
//!
//! A request takes its version once, when its filter chain starts ([`Rollout::choose`]), and keeps it for every
//! phase: the chain holds the chosen version's stream.
//!
//! On a cluster member every node runs its own copy of the cluster's rollout, and the decisions are the
//! cluster's: the guards only judge ([`Rollout::judge`]) and `crate::cluster::rollout` proposes what they found.

pub mod guard;
pub mod metrics;
pub mod request;
mod start;

pub use start::running;

use super::{lane_handle, lane_handles, LaneHandle, VersionInfo};
use crate::config::rollout::{RolloutConfig, Sticky};
use guard::{Limits, Sample, Tally};
use metrics::{RolloutMetrics, VersionCounters};
use parking_lot::Mutex;
use portico_plugins::{Plugin, PluginHandle};
use request::{random_draw, sticky_draw};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often the guards look. Until the rollback every request in the candidate's share fails, so the time to
/// the first look that can tell is what a bad release costs: five looks a second keep a candidate failing
/// everything at 5 % to a fifth of a second of that share. A look is a few hundred additions under one lock.
pub const TICK: Duration = Duration::from_millis(200);
/// The window the guards judge, in ticks: 30 s (it also restarts with each step: a step is judged on its own
/// traffic).
const WINDOW_TICKS: usize = 150;
/// Stable requests the window needs to be the comparison; with fewer (at 100 %, or at very low traffic) the
/// stable version's figures over the whole rollout are used.
const MIN_STABLE_REQUESTS: u64 = 20;
/// Shares are kept in hundredths of a percent.
const SHARE_SCALE: f64 = 100.0;
/// Places a request can draw: a share of `s` hundredths of a percent takes places below `s`.
const DRAWS: u64 = 10_000;

/// Which version of a plugin a request meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The slot's running version.
    Stable = 0,
    /// The rollout's new module.
    Candidate = 1,
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Stepping through its shares under the guards.
    Running,
    /// The candidate became the stable version.
    Promoted,
    /// A guard tripped; the candidate meets no request.
    RolledBack,
    /// Stopped through the admin API or by another version change; the candidate meets no request.
    Aborted,
}

impl State {
    /// The name the admin API and the metrics use.
    pub fn name(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Promoted => "promoted",
            State::RolledBack => "rolled_back",
            State::Aborted => "aborted",
        }
    }
}

/// What the driver does after a tick.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Keep watching.
    Continue,
    /// The last step passed: promote the candidate.
    Promote,
    /// The rollout has ended.
    Done,
}

/// What the guards found at a tick.
#[derive(Debug, PartialEq)]
pub enum Judgement {
    /// The rollout is not running.
    Ended,
    /// A guard tripped: the reason.
    Breach(String),
    /// Nothing to do yet.
    Hold,
    /// The current step (its index) has lasted its interval under the guards; `last` when it is the last one.
    StepDue {
        /// Index of the step that passed.
        step: usize,
        /// Whether it was the last step (passing it promotes).
        last: bool,
    },
}

/// A rollout that rolled back, as told to whoever raises alerts for it (the anomaly hooks and webhooks).
#[derive(Debug, Clone)]
pub struct RolledBack {
    /// The plugin.
    pub plugin: String,
    /// Why: the guard that tripped, with its figures.
    pub reason: String,
    /// The candidate's module.
    pub candidate_sha256: String,
    /// The stable version's module.
    pub stable_sha256: String,
    /// The candidate's error ratio in the window the guards judged.
    pub candidate_error_ratio: f64,
    /// When.
    pub at: SystemTime,
}

/// Where rollouts report: their metrics, and their rollbacks to whoever raises alerts.
#[derive(Debug, Clone)]
pub struct Reporting {
    metrics: RolloutMetrics,
    events: tokio::sync::broadcast::Sender<RolledBack>,
}

impl Reporting {
    /// Registers the rollout metrics in `registry`.
    pub fn register(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        Ok(Reporting { metrics: RolloutMetrics::register(registry)?, events: tokio::sync::broadcast::channel(16).0 })
    }

    /// Rollbacks as they happen.
    pub fn rolled_back(&self) -> tokio::sync::broadcast::Receiver<RolledBack> {
        self.events.subscribe()
    }
}

/// A rollout of one plugin: the candidate version, its share and the guards' figures.
#[derive(Debug)]
pub struct Rollout {
    plugin: String,
    config: RolloutConfig,
    steps: Vec<f64>,
    candidate: Arc<Plugin>,
    handles: Box<[LaneHandle]>,
    candidate_info: VersionInfo,
    stable_sha256: String,
    /// On a cluster member, the log index of the entry that started the rollout: its decisions are the cluster's
    /// (see `crate::cluster::rollout`), and this node's guards only report. `None` on a single node.
    serial: Option<u64>,
    /// The candidate's share in hundredths of a percent; 0 once the rollout has ended.
    share: AtomicU32,
    tallies: [Tally; 2],
    counters: [VersionCounters; 2],
    metrics: RolloutMetrics,
    events: tokio::sync::broadcast::Sender<RolledBack>,
    status: Mutex<Status>,
}

#[derive(Debug)]
struct Status {
    state: State,
    paused: bool,
    step: usize,
    /// Time spent in this step while not paused.
    step_elapsed: Duration,
    reason: Option<String>,
    started: SystemTime,
    ended: Option<SystemTime>,
    /// Per-tick samples of this step, newest last: `[stable, candidate]`.
    window: VecDeque<[Sample; 2]>,
    /// Both versions over the whole rollout.
    totals: [Sample; 2],
    /// The figures the guards last judged.
    judged: [Sample; 2],
}

impl Rollout {
    /// A running rollout of `candidate` beside the stable version whose module hashes to `stable_sha256`.
    pub(super) fn new(
        plugin: &str,
        config: RolloutConfig,
        steps: Vec<f64>,
        candidate: Arc<Plugin>,
        candidate_info: VersionInfo,
        stable_sha256: String,
        reporting: Reporting,
    ) -> Rollout {
        let Reporting { metrics, events } = reporting;
        let first = steps.first().copied().unwrap_or(100.0);
        let rollout = Rollout {
            plugin: plugin.to_string(),
            counters: [metrics.version(plugin, "stable"), metrics.version(plugin, "candidate")],
            config,
            steps,
            candidate,
            handles: lane_handles(),
            candidate_info,
            stable_sha256,
            serial: None,
            share: AtomicU32::new(scaled(first)),
            tallies: [Tally::default(), Tally::default()],
            metrics,
            events,
            status: Mutex::new(Status {
                state: State::Running,
                paused: false,
                step: 0,
                step_elapsed: Duration::ZERO,
                reason: None,
                started: SystemTime::now(),
                ended: None,
                window: VecDeque::new(),
                totals: [Sample::default(), Sample::default()],
                judged: [Sample::default(), Sample::default()],
            }),
        };
        rollout.metrics.publish(plugin, first, State::Running.name());
        rollout
    }

    /// Marks the rollout as this node's copy of the cluster's rollout `serial` (see [`Rollout::serial`]).
    pub(super) fn replicating(mut self, serial: Option<u64>) -> Rollout {
        self.serial = serial;
        self
    }

    /// The version a request meets, or `None` when the rollout no longer splits the traffic (the slot's
    /// current version serves). Sticky rollouts hash the client's key, so a client keeps its version and, as
    /// the share grows, clients already on the candidate stay on it; a request without the key is drawn.
    pub fn choose(&self, parts: &http::request::Parts, peer: SocketAddr) -> Option<Version> {
        let share = self.share.load(Ordering::Relaxed);
        if share == 0 {
            return None;
        }
        let draw = match &self.config.sticky {
            Some(key) => sticky_draw(key, parts, peer).unwrap_or_else(random_draw),
            None => random_draw(),
        };
        Some(if draw < share { Version::Candidate } else { Version::Stable })
    }

    /// The calling worker's handle on the candidate (see `PluginSlot::handle`).
    pub fn candidate_handle(&self) -> Arc<PluginHandle> {
        lane_handle(&self.handles, || self.candidate.clone())
    }

    /// A request through `version` was answered `status` after `elapsed`.
    pub fn answered(&self, version: Version, status: u16, elapsed: Duration) {
        self.tallies[version as usize].answered(status, elapsed);
        let counters = &self.counters[version as usize];
        counters.requests.inc();
        if status >= 500 {
            counters.failures.inc();
        }
        counters.latency.observe(elapsed.as_secs_f64());
    }

    /// A plugin callback of `version` failed.
    pub fn plugin_failed(&self, version: Version) {
        self.tallies[version as usize].failed();
    }

    /// The plugin this rollout belongs to.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The candidate module.
    pub(super) fn candidate(&self) -> (Arc<Plugin>, VersionInfo) {
        (self.candidate.clone(), VersionInfo { since: SystemTime::now(), ..self.candidate_info.clone() })
    }

    /// The state it is in.
    pub fn state(&self) -> State {
        self.status.lock().state
    }

    /// One look of the guards, `elapsed` after the previous one, on a single node: rolls back on a breach, and
    /// moves to the next step once this one has lasted its interval.
    pub fn tick(&self, elapsed: Duration) -> Action {
        match self.judge(elapsed) {
            Judgement::Ended => Action::Done,
            Judgement::Breach(reason) => {
                self.finish(State::RolledBack, reason);
                Action::Done
            }
            Judgement::Hold => Action::Continue,
            Judgement::StepDue { last: true, .. } => Action::Promote,
            Judgement::StepDue { step, last: false } => {
                self.set_step(step + 1);
                Action::Continue
            }
        }
    }

    /// One look of the guards, `elapsed` after the previous one: gathers both versions' counts into the window
    /// and says whether a guard tripped or the step has lasted its interval, changing nothing else.
    pub fn judge(&self, elapsed: Duration) -> Judgement {
        let samples = [self.tallies[0].take(), self.tallies[1].take()];
        let mut status = self.status.lock();
        if status.state != State::Running {
            return Judgement::Ended;
        }
        for (total, sample) in status.totals.iter_mut().zip(&samples) {
            total.add(sample);
        }
        status.window.push_back(samples);
        if status.window.len() > WINDOW_TICKS {
            status.window.pop_front();
        }
        let mut judged = [Sample::default(), Sample::default()];
        for tick in &status.window {
            judged[0].add(&tick[0]);
            judged[1].add(&tick[1]);
        }
        if judged[0].requests < MIN_STABLE_REQUESTS {
            judged[0] = status.totals[0].clone();
        }
        let limits = Limits {
            max_error_ratio: self.config.max_error_ratio,
            max_latency_increase: self.config.max_latency_increase,
        };
        let breach = guard::breach(&judged[0], &judged[1], limits);
        status.judged = judged;
        if let Some(reason) = breach {
            return Judgement::Breach(reason);
        }
        if status.paused {
            return Judgement::Hold;
        }
        status.step_elapsed += elapsed;
        if status.step_elapsed < self.config.step_interval {
            return Judgement::Hold;
        }
        Judgement::StepDue { step: status.step, last: status.step + 1 >= self.steps.len() }
    }

    /// Moves a running rollout to step `step` (an index; past the last one, the last), restarting the step's
    /// window and interval; nothing when it is there already.
    pub fn set_step(&self, step: usize) {
        let mut status = self.status.lock();
        let step = step.min(self.steps.len().saturating_sub(1));
        if status.state != State::Running || status.step == step {
            return;
        }
        status.step = step;
        status.step_elapsed = Duration::ZERO;
        status.window.clear();
        let percent = self.steps.get(step).copied().unwrap_or(100.0);
        self.share.store(scaled(percent), Ordering::Relaxed);
        self.metrics.publish(&self.plugin, percent, State::Running.name());
        tracing::info!(plugin = %self.plugin, percent, step = step + 1, "rollout: the candidate passed its step and meets more requests");
    }

    /// On a cluster member, the log index of the entry that started this rollout.
    pub fn serial(&self) -> Option<u64> {
        self.serial
    }

    /// The candidate module's sha256.
    pub fn candidate_sha256(&self) -> &str {
        &self.candidate_info.sha256
    }

    /// Ends a running rollout in `state`; `false` if it had already ended.
    pub fn finish(&self, state: State, reason: impl Into<String>) -> bool {
        let mut status = self.status.lock();
        if status.state != State::Running {
            return false;
        }
        self.end(&mut status, state, reason.into());
        true
    }

    fn end(&self, status: &mut Status, state: State, reason: String) {
        self.share.store(0, Ordering::Relaxed);
        if state != State::Promoted {
            // Kept for inspection, serving nothing: its ticks stop.
            self.candidate.set_standby(true);
        }
        status.state = state;
        status.ended = Some(SystemTime::now());
        let percent = if state == State::Promoted { 100.0 } else { 0.0 };
        self.metrics.publish(&self.plugin, percent, state.name());
        if state == State::RolledBack {
            let judged = &status.judged[1];
            // Nobody listening (no anomaly detection) is not an error: the log line and the state remain.
            let _ = self.events.send(RolledBack {
                plugin: self.plugin.clone(),
                reason: reason.clone(),
                candidate_sha256: self.candidate_info.sha256.clone(),
                stable_sha256: self.stable_sha256.clone(),
                candidate_error_ratio: if judged.requests == 0 {
                    0.0
                } else {
                    judged.errors as f64 / judged.requests as f64
                },
                at: SystemTime::now(),
            });
        }
        match state {
            State::RolledBack => tracing::warn!(
                alert = "rollout_rolled_back",
                plugin = %self.plugin,
                candidate_sha256 = %self.candidate_info.sha256,
                stable_sha256 = %self.stable_sha256,
                reason = %reason,
                "rollout rolled back: the candidate meets no more requests and stays loaded for inspection"
            ),
            _ => tracing::info!(plugin = %self.plugin, state = state.name(), reason = %reason, "rollout ended"),
        }
        status.reason = Some(reason);
    }

    /// Whether stepping is paused.
    pub fn paused(&self) -> bool {
        self.status.lock().paused
    }

    /// Stops (`true`) or resumes stepping. The guards keep watching a paused rollout.
    pub fn pause(&self, paused: bool) -> Result<(), State> {
        let mut status = self.status.lock();
        if status.state != State::Running {
            return Err(status.state);
        }
        status.paused = paused;
        tracing::info!(plugin = %self.plugin, paused, "rollout paused or resumed through the admin API");
        Ok(())
    }

    /// The admin API's view.
    pub fn describe(&self) -> serde_json::Value {
        let status = self.status.lock();
        let percent = match status.state {
            State::Running => self.steps.get(status.step).copied().unwrap_or(100.0),
            State::Promoted => 100.0,
            _ => 0.0,
        };
        // The whole rollout: what the guards gathered plus what was counted since their last look (requests that
        // end after a rollback or promotion are counted too, so the totals are exact once they have ended).
        let total = |v: usize| {
            let mut sample = status.totals[v].clone();
            sample.add(&self.tallies[v].peek());
            sample
        };
        let since = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        serde_json::json!({
            "plugin": self.plugin,
            "state": status.state.name(),
            "paused": status.paused,
            "percent": percent,
            "step": status.step + 1,
            "steps": self.steps,
            "step_interval_ms": self.config.step_interval.as_millis() as u64,
            "step_elapsed_ms": status.step_elapsed.as_millis() as u64,
            "stable_sha256": self.stable_sha256,
            "candidate_sha256": self.candidate_info.sha256,
            "reason": status.reason,
            "started": since(status.started),
            "ended": status.ended.map(since),
            "replicated": self.serial.is_some(),
            "sticky": self.config.sticky.as_ref().map(sticky_name),
            "guards": {
                "max_error_ratio": self.config.max_error_ratio,
                "max_latency_increase_ms": self.config.max_latency_increase.as_secs_f64() * 1000.0,
                "window_seconds": status.window.len() as f64 * TICK.as_secs_f64(),
                "stable": status.judged[0].describe(),
                "candidate": status.judged[1].describe(),
            },
            "totals": { "stable": total(0).describe(), "candidate": total(1).describe() },
        })
    }
}

fn scaled(percent: f64) -> u32 {
    (percent * SHARE_SCALE).round().clamp(0.0, DRAWS as f64) as u32
}

fn sticky_name(key: &Sticky) -> String {
    match key {
        Sticky::Header(name) => format!("header:{name}"),
        Sticky::Cookie(name) => format!("cookie:{name}"),
        Sticky::SourceIp => "source_ip".into(),
    }
}
