//! The live state of one endpoint: health, ejection, drain, weight, load. It outlives config reloads that keep
//! the endpoint, so health history and ejections are not forgotten by a reload.

use super::per_lane::{Padded, PerLane};
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Counts the changes to any endpoint's availability or weight in the process (health flips, drains,
/// ejections, weights), for views of a group that keep what they derived from them until it moves (see
/// [`super::offered`]) rather than reading every endpoint of the group per request. Ejections that run out are
/// not counted: they are a time each view notes. Written only on such a change.
static CHANGES: AtomicU64 = AtomicU64::new(0);

/// The count of [`CHANGES`] so far: read it before reading endpoints, and derive again when it moved.
pub fn availability_changes() -> u64 {
    CHANGES.load(Ordering::Acquire)
}

fn changed() {
    CHANGES.fetch_add(1, Ordering::AcqRel);
}

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
    /// The requests in flight, on cache lines of their own: the one count every worker writes twice a request
    /// (the cap is documented as over all workers, which a per-lane count could not keep). Beside the fields
    /// every pick reads, each of those writes would take the other worker's copy of them away.
    slots: Padded<Slots>,
    /// Attempts, failed attempts (5xx or no answer) and answered attempts' summed latency, cumulative: the
    /// anomaly sampler differences them into this endpoint's own series, so an incident can name the one
    /// endpoint at fault instead of its whole upstream. With the latency average, kept per worker lane.
    traffic: PerLane<Traffic>,
    /// Failures in a row (passive outlier detection). An atomic outside `outlier`, so that the common case, a
    /// success when the streak is already 0, only reads it.
    streak: AtomicU32,
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

/// Requests in flight and those waiting for a slot under `pool.max_connections`.
#[derive(Debug, Default)]
struct Slots {
    /// Requests in flight, over all workers: also the count the cap applies to (see
    /// [`Endpoint::try_begin_request`]).
    active: AtomicUsize,
    /// Requests waiting for a slot under the cap; a finished request wakes one through `freed`.
    waiting: AtomicUsize,
    freed: Notify,
}

#[derive(Debug, Default)]
struct Traffic {
    attempts: AtomicU64,
    failures: AtomicU64,
    answers: AtomicU64,
    latency_us: AtomicU64,
    /// This lane's moving average of the time to response head, in µs (0 before its first answer).
    latency_ewma_us: AtomicU64,
}

#[derive(Debug, Default)]
struct OutlierState {
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
            slots: Padded::default(),
            traffic: PerLane::new(lanes),
            streak: AtomicU32::new(0),
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
        if self.weight.swap(weight, Ordering::Relaxed) != weight {
            changed();
        }
    }

    /// Takes the endpoint out of (or back into) rotation by operator decision.
    pub fn set_drained(&self, drained: bool) {
        if self.drained.swap(drained, Ordering::Relaxed) != drained {
            changed();
        }
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
        u32::try_from(self.slots.0.active.load(Ordering::Relaxed)).unwrap_or(u32::MAX)
    }

    /// Takes one of the `limit` request slots if one is free. Whoever took it gives it back with
    /// [`Endpoint::release`] however the request ends (the group's [`super::held::ActiveRequest`] does).
    pub(super) fn try_begin_request(&self, limit: usize) -> bool {
        // Counted up only below the cap, never past it and back (a count briefly past the cap could turn away a
        // waiter that a request ending meanwhile did not wake). SeqCst pairs with `release`: a request that
        // counts itself waiting and then finds the cap reached, and one that ends and then looks for waiters,
        // cannot both miss the other.
        let slots = &self.slots.0;
        let mut active = slots.active.load(Ordering::SeqCst);
        while active < limit {
            match slots.active.compare_exchange_weak(active, active + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return true,
                Err(now) => active = now,
            }
        }
        false
    }

    /// Takes a request slot, waiting up to `wait` for one of the `limit` slots when all are taken.
    pub(super) async fn begin_request(&self, limit: usize, wait: Duration) -> bool {
        if self.try_begin_request(limit) {
            return true;
        }
        let slots = &self.slots.0;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = slots.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            slots.waiting.fetch_add(1, Ordering::SeqCst);
            let started = self.try_begin_request(limit);
            let woken = !started && tokio::time::timeout_at(deadline, freed).await.is_ok();
            slots.waiting.fetch_sub(1, Ordering::SeqCst);
            if !woken {
                // Started, or out of time: one last try then.
                return started || self.try_begin_request(limit);
            }
        }
    }

    /// Gives a slot back, and wakes a request waiting for one.
    pub(super) fn release(&self) {
        let slots = &self.slots.0;
        slots.active.fetch_sub(1, Ordering::SeqCst);
        if slots.waiting.load(Ordering::SeqCst) > 0 {
            slots.freed.notify_one();
        }
    }

    /// Smoothed time to response head, in microseconds (0 before the first response): the mean of the
    /// lanes' averages that have one.
    pub fn latency_ewma_us(&self) -> u64 {
        let (sum, lanes) = self
            .traffic
            .iter()
            .map(|t| t.latency_ewma_us.load(Ordering::Relaxed))
            .filter(|ewma| *ewma > 0)
            .fold((0u64, 0u64), |(sum, n), ewma| (sum.saturating_add(ewma), n + 1));
        sum.checked_div(lanes).unwrap_or(0)
    }

    /// Cumulative (attempts, failed attempts, answers, summed answer latency in µs), over all lanes.
    pub fn traffic(&self) -> (u64, u64, u64, u64) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.traffic.iter().fold((0, 0, 0, 0), |(a, f, n, l), t| {
            (a + load(&t.attempts), f + load(&t.failures), n + load(&t.answers), l.saturating_add(load(&t.latency_us)))
        })
    }

    /// Counts one attempt that ended with an answer (`failed` for a 5xx) or without one (`failed`).
    pub fn count_attempt(&self, failed: bool) {
        let traffic = self.traffic.mine();
        traffic.attempts.fetch_add(1, Ordering::Relaxed);
        if failed {
            traffic.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Folds one observed latency into this lane's moving average (alpha 0.2) and the cumulative sum.
    pub fn record_latency(&self, latency: Duration) {
        let sample = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let traffic = self.traffic.mine();
        traffic.answers.fetch_add(1, Ordering::Relaxed);
        traffic.latency_us.fetch_add(sample, Ordering::Relaxed);
        // At least 1, since 0 means "no answer yet".
        let old = traffic.latency_ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { old.saturating_mul(4).saturating_add(sample) / 5 };
        traffic.latency_ewma_us.store(new.max(1), Ordering::Relaxed);
    }

    /// Records an active probe result; returns the new health when it flipped.
    pub fn record_probe(&self, ok: bool, healthy_threshold: u32, unhealthy_threshold: u32) -> Option<bool> {
        let mut probe = self.probe.lock();
        let healthy = self.healthy.load(Ordering::Relaxed);
        let flip = |to: bool| {
            self.healthy.store(to, Ordering::Relaxed);
            changed();
            Some(to)
        };
        if ok && self.first_check_pending.swap(false, Ordering::Relaxed) {
            probe.failures = 0;
            probe.successes = 1;
            return flip(true);
        }
        if ok {
            probe.failures = 0;
            probe.successes = probe.successes.saturating_add(1);
            if !healthy && probe.successes >= healthy_threshold {
                return flip(true);
            }
        } else {
            probe.successes = 0;
            probe.failures = probe.failures.saturating_add(1);
            if healthy && probe.failures >= unhealthy_threshold {
                return flip(false);
            }
        }
        None
    }

    /// Records a passive success (any non-5xx answer): resets the failure streak.
    pub fn record_success(&self) {
        if self.streak.load(Ordering::Relaxed) != 0 {
            self.streak.store(0, Ordering::Relaxed);
        }
    }

    /// Records a passive failure; returns the failure streak length.
    pub fn record_failure(&self) -> u32 {
        self.streak.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    }

    /// Ejects for `base × times ejected` (capped); returns how long.
    pub fn eject(&self, now: Instant, base: Duration, max: Duration) -> Duration {
        let mut outlier = self.outlier.lock();
        outlier.times_ejected = outlier.times_ejected.saturating_add(1);
        self.streak.store(0, Ordering::Relaxed);
        let duration = base.saturating_mul(outlier.times_ejected).min(max);
        self.ejected_until.store(since_epoch(now + duration), Ordering::Relaxed);
        changed();
        duration
    }

    /// When the ejection in force at `now` ends (as [`since_epoch`] counts), `None` when there is none. An
    /// endpoint never ejected (0) is answered without reading the time since the epoch (a subtraction of two
    /// clock readings and a 128-bit conversion, ~80 instructions).
    pub fn ejection_ends(&self, now: Instant) -> Option<u64> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        (until != 0 && until > since_epoch(now)).then_some(until)
    }

    /// Whether an ejection is in force (asked several times a request: every availability check of the native
    /// and the plugins' balancing).
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejection_ends(now).is_some()
    }
}

/// A fixed instant early in the process, so instants fit in an atomic as nanoseconds after it.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds from [`epoch`] to `at` (at least 1, so 0 can mean "never"): how ejections are kept.
pub fn since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Arc<Endpoint> {
        Arc::new(Endpoint::new("e".into(), ([127, 0, 0, 1], 1000).into(), 1, 2).expect("endpoint"))
    }

    /// The cap counts requests in flight; a request beyond it waits and takes the first slot given back, or
    /// gives up when its wait is over.
    #[tokio::test(start_paused = true)]
    async fn requests_beyond_the_cap_wait_for_a_slot_or_give_up() {
        let e = endpoint();
        assert!(e.try_begin_request(2) && e.begin_request(2, Duration::from_secs(1)).await);
        assert!(!e.try_begin_request(2), "a third beyond the cap of 2");
        assert_eq!(e.active_requests(), 2, "a refused start leaves no count behind");

        let waiter = {
            let e = e.clone();
            tokio::spawn(async move { e.begin_request(2, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished());
        e.release();
        assert_eq!(waiter.await.ok(), Some(true), "woken by the slot given back");
        assert_eq!(e.active_requests(), 2, "the waiter holds the slot it was given");

        let started = tokio::time::Instant::now();
        assert!(!e.begin_request(2, Duration::from_secs(1)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        e.release();
        assert_eq!(e.active_requests(), 1);
    }

    /// Traffic counted on different lanes adds up; the latency average is the mean of the lanes that have one.
    #[test]
    fn traffic_and_latency_add_up_over_lanes() {
        let e = endpoint();
        e.count_attempt(false);
        e.count_attempt(true);
        e.record_latency(Duration::from_micros(300));
        let other = e.clone();
        let lane_1 = std::thread::spawn(move || {
            crate::listen::workers::set_lane_for_test(1);
            other.count_attempt(false);
            other.record_latency(Duration::from_micros(100));
        });
        assert!(lane_1.join().is_ok());
        assert_eq!(e.traffic(), (3, 1, 2, 400));
        assert_eq!(e.latency_ewma_us(), 200);
    }

    #[test]
    fn a_success_ends_the_failure_streak() {
        let e = endpoint();
        assert_eq!((e.record_failure(), e.record_failure()), (1, 2));
        e.record_success();
        assert_eq!(e.record_failure(), 1);
    }
}
