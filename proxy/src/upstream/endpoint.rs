//! The live state of one endpoint: health, ejection, drain, weight, load. It outlives config reloads that keep
//! the endpoint, so health history and ejections are not forgotten by a reload.

use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Why an endpoint is or is not receiving traffic, as shown by `GET /upstreams`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointStatus {
    /// Takes traffic.
    Healthy,
    /// Failed active health checks.
    Unhealthy,
    /// Ejected by outlier detection for a while.
    Ejected,
    /// Taken out by an operator (admin API), e.g. a remediation script.
    Drained,
}

/// One endpoint of an upstream group.
#[derive(Debug)]
pub struct Endpoint {
    /// The address as configured.
    pub name: String,
    /// Where to connect.
    pub address: SocketAddr,
    /// `http://address`, built once for request URIs.
    pub authority: http::uri::Authority,
    weight: AtomicU32,
    healthy: AtomicBool,
    /// Discovered or registered while a health check is configured: unhealthy until its first probe passes,
    /// which alone makes it healthy (as Envoy does for new hosts), so it takes traffic one probe after it appeared.
    first_check_pending: AtomicBool,
    /// Left the group (its address disappeared, its registration ended): takes no new request, and connections
    /// it gives back are closed instead of pooled.
    retired: AtomicBool,
    /// Wakes the DNS entry it came from, so a connect failure re-resolves the name soon.
    rediscover: OnceLock<Arc<Notify>>,
    drained: AtomicBool,
    active: AtomicU32,
    latency_ewma_us: AtomicU64,
    /// Attempts, failed attempts (5xx or no answer) and answered attempts' summed latency, cumulative: the
    /// anomaly sampler differences them into this endpoint's own series, so an incident can name the one
    /// endpoint at fault instead of its whole upstream.
    traffic: Traffic,
    outlier: Mutex<OutlierState>,
    /// End of the current ejection, in nanoseconds after [`epoch`] (0: never ejected). An atomic, not part of
    /// `outlier`, because every pick reads it for every endpoint.
    ejected_until: AtomicU64,
    probe: Mutex<ProbeState>,
    /// This endpoint's share of the candidate-set version offered to balancing plugins (address hash; the
    /// weight is mixed in when the version is computed, since the admin API can change it).
    pub address_hash: u64,
    /// Idle HTTP/1 connections to it, per worker lane.
    pub idle: super::pool::IdleConnections,
}

#[derive(Debug, Default)]
struct Traffic {
    attempts: AtomicU64,
    failures: AtomicU64,
    answers: AtomicU64,
    latency_us: AtomicU64,
}

#[derive(Debug, Default)]
struct OutlierState {
    consecutive_failures: u32,
    times_ejected: u32,
}

#[derive(Debug, Default)]
struct ProbeState {
    successes: u32,
    failures: u32,
}

impl Endpoint {
    /// A new endpoint starts healthy, as nginx and HAProxy do, so traffic flows before the first probe.
    /// `lanes` is the number of connection-pool lanes (see [`crate::listen::workers::lanes`]).
    pub fn new(name: String, address: SocketAddr, weight: u32, lanes: usize) -> Result<Self, http::uri::InvalidUri> {
        let authority = address.to_string().parse()?;
        let address_hash = portico_plugins::address_hash(&name);
        Ok(Endpoint {
            name,
            address,
            authority,
            weight: AtomicU32::new(weight),
            healthy: AtomicBool::new(true),
            first_check_pending: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            rediscover: OnceLock::new(),
            drained: AtomicBool::new(false),
            active: AtomicU32::new(0),
            latency_ewma_us: AtomicU64::new(0),
            traffic: Traffic::default(),
            outlier: Mutex::new(OutlierState::default()),
            ejected_until: AtomicU64::new(0),
            address_hash,
            probe: Mutex::new(ProbeState::default()),
            idle: super::pool::IdleConnections::new(lanes),
        })
    }

    /// A discovered or registered endpoint in a group with a health check: it starts unhealthy, and its first
    /// passing probe makes it healthy.
    pub fn new_pending(
        name: String,
        address: SocketAddr,
        weight: u32,
        lanes: usize,
    ) -> Result<Self, http::uri::InvalidUri> {
        let endpoint = Endpoint::new(name, address, weight, lanes)?;
        endpoint.healthy.store(false, Ordering::Relaxed);
        endpoint.first_check_pending.store(true, Ordering::Relaxed);
        Ok(endpoint)
    }

    /// Whether it still waits for its first passing probe.
    pub fn awaiting_first_check(&self) -> bool {
        self.first_check_pending.load(Ordering::Relaxed)
    }

    /// Ties it to the DNS entry that found it (see [`Endpoint::note_connect_failure`]).
    pub fn set_rediscover(&self, notify: Arc<Notify>) {
        let _ = self.rediscover.set(notify);
    }

    /// A connect to it failed: the name it came from may have moved, so ask for an early re-resolution (the
    /// DNS entry rate-limits them).
    pub fn note_connect_failure(&self) {
        if let Some(notify) = self.rediscover.get() {
            notify.notify_one();
        }
    }

    /// Takes it out of the group for good: in-flight requests finish, idle connections close now.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.idle.retire();
    }

    /// Whether it left the group.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Current weight (the admin API may change it at run time).
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Changes the weight; 0 is refused by the caller.
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
    }

    /// Takes the endpoint out of (or back into) rotation by operator decision.
    pub fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::Relaxed);
    }

    /// Whether the balancer may pick it now.
    pub fn is_available(&self, now: Instant) -> bool {
        self.status(now) == EndpointStatus::Healthy
    }

    /// The reason it does or does not take traffic.
    pub fn status(&self, now: Instant) -> EndpointStatus {
        if self.drained.load(Ordering::Relaxed) {
            EndpointStatus::Drained
        } else if !self.healthy.load(Ordering::Relaxed) {
            EndpointStatus::Unhealthy
        } else if self.is_ejected(now) {
            EndpointStatus::Ejected
        } else {
            EndpointStatus::Healthy
        }
    }

    /// Each reason to keep it out of rotation on its own (`status` names only the first): an operator sees a
    /// drained endpoint that is also failing its health checks. (healthy by the checks, ejected, drained)
    pub fn conditions(&self, now: Instant) -> (bool, bool, bool) {
        (self.healthy.load(Ordering::Relaxed), self.is_ejected(now), self.drained.load(Ordering::Relaxed))
    }

    /// Requests in flight right now.
    pub fn active_requests(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Marks a request as started; the guard ends it when dropped, however the request ends.
    pub fn begin_request(self: &Arc<Self>) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveRequest { endpoint: self.clone() }
    }

    /// Smoothed time to response head, in microseconds (0 before the first response).
    pub fn latency_ewma_us(&self) -> u64 {
        self.latency_ewma_us.load(Ordering::Relaxed)
    }

    /// Cumulative (attempts, failed attempts, answers, summed answer latency in µs).
    pub fn traffic(&self) -> (u64, u64, u64, u64) {
        let t = &self.traffic;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (load(&t.attempts), load(&t.failures), load(&t.answers), load(&t.latency_us))
    }

    /// Counts one attempt that ended with an answer (`failed` for a 5xx) or without one (`failed`).
    pub fn count_attempt(&self, failed: bool) {
        self.traffic.attempts.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.traffic.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Folds one observed latency into the moving average (alpha 0.2) and the cumulative sum.
    pub fn record_latency(&self, latency: Duration) {
        let sample = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.traffic.answers.fetch_add(1, Ordering::Relaxed);
        self.traffic.latency_us.fetch_add(sample, Ordering::Relaxed);
        let old = self.latency_ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { (old * 4 + sample) / 5 };
        self.latency_ewma_us.store(new, Ordering::Relaxed);
    }

    /// Records an active probe result; returns the new health when it flipped.
    pub fn record_probe(&self, ok: bool, healthy_threshold: u32, unhealthy_threshold: u32) -> Option<bool> {
        let mut probe = self.probe.lock();
        let healthy = self.healthy.load(Ordering::Relaxed);
        if ok && self.first_check_pending.swap(false, Ordering::Relaxed) {
            probe.failures = 0;
            probe.successes = 1;
            self.healthy.store(true, Ordering::Relaxed);
            return Some(true);
        }
        if ok {
            probe.failures = 0;
            probe.successes = probe.successes.saturating_add(1);
            if !healthy && probe.successes >= healthy_threshold {
                self.healthy.store(true, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            probe.successes = 0;
            probe.failures = probe.failures.saturating_add(1);
            if healthy && probe.failures >= unhealthy_threshold {
                self.healthy.store(false, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }

    /// Records a passive success (any non-5xx answer): resets the failure streak.
    pub fn record_success(&self) {
        let mut outlier = self.outlier.lock();
        if outlier.consecutive_failures != 0 {
            outlier.consecutive_failures = 0;
        }
    }

    /// Records a passive failure; returns the failure streak length.
    pub fn record_failure(&self) -> u32 {
        let mut outlier = self.outlier.lock();
        outlier.consecutive_failures = outlier.consecutive_failures.saturating_add(1);
        outlier.consecutive_failures
    }

    /// Ejects for `base × times ejected` (capped); returns how long.
    pub fn eject(&self, now: Instant, base: Duration, max: Duration) -> Duration {
        let mut outlier = self.outlier.lock();
        outlier.times_ejected = outlier.times_ejected.saturating_add(1);
        outlier.consecutive_failures = 0;
        let duration = base.saturating_mul(outlier.times_ejected).min(max);
        self.ejected_until.store(since_epoch(now + duration), Ordering::Relaxed);
        duration
    }

    /// Whether an ejection is in force.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > since_epoch(now)
    }
}

/// Counts a request as active on its endpoint until dropped.
#[derive(Debug)]
pub struct ActiveRequest {
    endpoint: Arc<Endpoint>,
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.endpoint.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A fixed instant early in the process, so instants fit in an atomic as nanoseconds after it.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds from [`epoch`] to `at` (at least 1, so 0 can mean "never").
fn since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX).max(1)
}
