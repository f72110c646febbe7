//! Upstream groups: their endpoints, connection pool, balancer, retry budget and passive outlier detection.

pub mod balance;
pub mod endpoint;
pub mod h1;
pub mod held;
pub mod members;
pub mod offered;
pub mod per_lane;
pub mod pool;
pub mod retry;

use crate::body::UpstreamBody;
use crate::config::{UpstreamConfig, UpstreamProtocol};
use crate::h1::head::Added;
use crate::metrics::Metrics;
use balance::{Balancer, SmoothWeightedRoundRobin};
use endpoint::{Endpoint, EndpointStatus};
pub use members::{Member, Origin, Rebuild};
use parking_lot::Mutex;
use per_lane::PerLane;
use pool::{ClientSettings, ConnectionChoice, SendError, UpstreamClient};
use retry::RetryBudget;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// One upstream group at run time. Its member list is fixed: a change (a reload, a DNS answer, a registration)
/// builds a new group that reuses the endpoints that stay, and a request keeps the group it started with.
#[derive(Debug)]
pub struct Upstream {
    /// Its validated config.
    pub config: UpstreamConfig,
    /// Endpoints: the configuration's fixed ones in order, then discovered, then registered ones.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Where each endpoint comes from, in the same order.
    pub members: Vec<Member>,
    /// Endpoints that left the group while requests were in flight on them, shown until those finish.
    departing: Mutex<Vec<Arc<Endpoint>>>,
    /// Woken when the member list changed, so the health checker probes new members at once. The same one
    /// across rebuilds of the group.
    pub membership: Arc<Notify>,
    /// Endpoint index by configured address, for mapping a plugin's choice back to its endpoint (on every
    /// plugin-balanced request, so a fast hash ([`portico_plugins::AddressHasher`]) rather than SipHash: the
    /// keys are the operator's).
    by_name: Arc<portico_plugins::AddressMap<usize>>,
    /// The group as offered to balancing plugins, one handle per worker lane (see [`offered`]).
    offered: PerLane<Arc<offered::Offered>>,
    /// For HTTP/2 upstreams, the pooled clients, one per pool lane; empty for HTTP/1, whose idle connections
    /// live in each endpoint (see [`pool`]).
    h2_clients: Arc<[UpstreamClient]>,
    client_settings: ClientSettings,
    balancer: Box<dyn Balancer>,
    budget: Arc<RetryBudget>,
}

/// Why a request could not get a connection slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolExhausted;

impl Upstream {
    /// Builds the group from `members`, reusing endpoint state and the pools from `previous` (the same group
    /// before a reload or a membership change) so health history, ejections and warm connections survive.
    /// `lanes` is the number of connection pools: one per data-path worker plus one for the control plane.
    /// Endpoints of `previous` that are not reused depart: call [`Upstream::commit`] once this group serves.
    pub fn new(
        config: UpstreamConfig,
        members: Vec<Member>,
        previous: Option<&Upstream>,
        lanes: usize,
        rebuild: Rebuild,
    ) -> Result<Self, http::uri::InvalidUri> {
        let lanes = lanes.max(1);
        let before: Vec<(Arc<Endpoint>, Option<&Member>)> =
            previous.map(|p| p.endpoints.iter().cloned().zip(p.members.iter().map(Some)).collect()).unwrap_or_default();
        let pending = config.health_check.is_some();
        let (endpoints, mut departing) = members::reconcile(&members, &before, pending, rebuild, lanes)?;
        if let Some(p) = previous {
            departing.extend(p.departing.lock().iter().filter(|e| e.active_requests() > 0).cloned());
        }
        let client_settings = ClientSettings::of(&config);
        let h2_clients = match previous {
            _ if client_settings.protocol != UpstreamProtocol::H2 => Arc::from([]),
            Some(p) if p.client_settings == client_settings && p.h2_clients.len() == lanes => p.h2_clients.clone(),
            _ => (0..lanes).map(|_| client_settings.build_h2()).collect(),
        };
        // An address listed twice maps to its first entry, as a scan would find it.
        let mut by_name = portico_plugins::AddressMap::with_capacity_and_hasher(endpoints.len(), Default::default());
        for (i, e) in endpoints.iter().enumerate() {
            by_name.entry(e.name.clone()).or_insert(i);
        }
        let by_name = Arc::new(by_name);
        let listed: Arc<[Arc<Endpoint>]> = endpoints.iter().cloned().collect();
        let offered = PerLane::from_fn(lanes, || Arc::new(offered::Offered::new(listed.clone(), by_name.clone())));
        let same_budget = |p: &&Upstream| {
            p.config.retry_budget.percent == config.retry_budget.percent
                && p.config.retry_budget.min_per_second == config.retry_budget.min_per_second
        };
        let budget = previous.filter(same_budget).map(|p| p.budget.clone()).unwrap_or_else(|| {
            Arc::new(RetryBudget::new(config.retry_budget.percent, config.retry_budget.min_per_second, lanes))
        });
        Ok(Upstream {
            config,
            endpoints,
            members,
            departing: Mutex::new(departing),
            membership: previous.map(|p| p.membership.clone()).unwrap_or_default(),
            by_name,
            offered,
            h2_clients,
            client_settings,
            balancer: Box::new(SmoothWeightedRoundRobin::default()),
            budget,
        })
    }

    /// Called once this group is the one requests get: retires the endpoints that left (their idle connections
    /// close; in-flight requests finish), and wakes the health checker when new members wait for a first probe.
    pub fn commit(&self) {
        let mut departing = self.departing.lock();
        for e in departing.iter() {
            e.retire();
        }
        departing.retain(|e| e.active_requests() > 0);
        if self.endpoints.iter().any(|e| e.awaiting_first_check()) {
            self.membership.notify_one();
        }
    }

    /// Addresses of the endpoints that left the group (for dropping their metrics).
    pub fn departed_from(&self, previous: &Upstream) -> Vec<String> {
        let names: std::collections::HashSet<&str> = self.endpoints.iter().map(|e| e.name.as_str()).collect();
        previous.endpoints.iter().filter(|e| !names.contains(e.name.as_str())).map(|e| e.name.clone()).collect()
    }

    /// Sends one request to endpoint `index` and returns the response head. The request's head is borrowed
    /// (its URI origin-form: path and query), so a request that may be sent again keeps it without a copy; only
    /// HTTP/2, whose client takes a whole request, copies it. An HTTP/1 response body owns its connection and
    /// gives it back to the pool when it ends cleanly; HTTP/2 connections are shared.
    ///
    /// Connections are pooled per lane: a worker only reuses connections its own runtime drives (see
    /// [`crate::listen::workers`]), so the pool caps (`max_idle`) apply per worker.
    pub async fn send(
        &self,
        index: usize,
        head: &http::request::Parts,
        added: &[Added<'_>],
        body: crate::body::RequestBody,
        choice: ConnectionChoice,
    ) -> Result<http::Response<UpstreamBody>, SendError> {
        let endpoint = &self.endpoints[index];
        let sent = self.send_to(endpoint, head, added, body, choice).await;
        if sent.as_ref().is_err_and(SendError::is_connect) {
            endpoint.note_connect_failure();
        }
        sent
    }

    async fn send_to(
        &self,
        endpoint: &Arc<Endpoint>,
        head: &http::request::Parts,
        added: &[Added<'_>],
        body: crate::body::RequestBody,
        choice: ConnectionChoice,
    ) -> Result<http::Response<UpstreamBody>, SendError> {
        if self.client_settings.protocol == UpstreamProtocol::Http1 {
            return pool::send_http1(endpoint, &self.client_settings, head, added, body, choice).await;
        }
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(endpoint.authority.clone());
        uri.path_and_query = head.uri.path_and_query().cloned();
        let mut request = http::Request::new(body);
        *request.method_mut() = head.method.clone();
        *request.uri_mut() = http::Uri::from_parts(uri).unwrap_or_else(|_| head.uri.clone());
        *request.version_mut() = http::Version::HTTP_2;
        *request.headers_mut() = head.headers.clone();
        for field in added {
            field.apply(request.headers_mut());
        }
        let lanes = &self.h2_clients;
        let client = &lanes[crate::listen::workers::lane() % lanes.len()];
        Ok(client.request(request).await?.map(|body| UpstreamBody::Hyper(crate::body::HyperBody::new(body))))
    }

    /// Closes the idle HTTP/1 connections older than the pool's `idle_timeout` (run every second or so by the
    /// server, so idle connections do not outlive the timeout by much when no request comes to reuse them).
    pub fn sweep_idle_connections(&self) {
        for e in &self.endpoints {
            e.idle.sweep(self.client_settings.idle_timeout);
        }
        self.departing.lock().retain(|e| e.active_requests() > 0);
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Native choice among available endpoints, avoiding `exclude` when possible.
    pub fn pick(&self, exclude: &[usize]) -> Option<usize> {
        self.balancer.pick(&self.endpoints, exclude, crate::clock::now())
    }

    /// Whether any endpoint takes traffic.
    pub fn any_available(&self) -> bool {
        let now = crate::clock::now();
        self.endpoints.iter().any(|e| e.is_available(now))
    }

    /// Counts a first attempt towards the retry budget.
    pub fn note_attempt(&self) {
        self.budget.deposit();
    }

    /// Takes a retry from the budget.
    pub fn allow_retry(&self) -> bool {
        self.budget.withdraw(crate::clock::now())
    }

    /// Passive outlier detection: a non-5xx answer resets the endpoint's streak.
    pub fn report_success(&self, index: usize) {
        if let Some(e) = self.endpoints.get(index) {
            e.count_attempt(false);
            e.record_success();
        }
    }

    /// Passive outlier detection: a 5xx or connect failure. Ejects after `consecutive_5xx` in a row, for
    /// `base_ejection_time × times ejected`, unless that would eject more than `max_ejection_percent`.
    pub fn report_failure(&self, index: usize, metrics: &Metrics) {
        if let Some(e) = self.endpoints.get(index) {
            e.count_attempt(true);
        }
        let (Some(od), Some(endpoint)) = (&self.config.outlier_detection, self.endpoints.get(index)) else {
            return;
        };
        let streak = endpoint.record_failure();
        if streak < od.consecutive_5xx {
            return;
        }
        let now = Instant::now();
        if endpoint.is_ejected(now) {
            return;
        }
        let ejected = self.endpoints.iter().filter(|e| e.is_ejected(now)).count();
        let total = self.endpoints.len();
        if (ejected + 1) * 100 > od.max_ejection_percent as usize * total {
            tracing::warn!(upstream = %self.name(), endpoint = %endpoint.name, "not ejecting: max_ejection_percent reached");
            return;
        }
        let duration = endpoint.eject(now, od.base_ejection_time.0, od.max_ejection_time.0);
        metrics.ejections.with_label_values(&[self.name()]).inc();
        tracing::warn!(upstream = %self.name(), endpoint = %endpoint.name, ?duration, streak, "endpoint ejected");
    }

    /// A snapshot for `GET /upstreams`.
    pub fn describe(&self) -> serde_json::Value {
        let now = Instant::now();
        let endpoints: Vec<_> = self
            .endpoints
            .iter()
            .zip(&self.members)
            .map(|(e, m)| {
                let (healthy, ejected, drained) = e.conditions(now);
                let mut v = serde_json::json!({
                    "address": e.name,
                    "weight": e.weight(),
                    "status": e.status(now),
                    "healthy": healthy,
                    "ejected": ejected,
                    "drained": drained,
                    "active_requests": e.active_requests(),
                    "latency_ewma_ms": e.latency_ewma_us() as f64 / 1000.0,
                    "source": m.origin.kind(),
                });
                if let Origin::Dns(name) = &m.origin {
                    v["name"] = serde_json::Value::from(name.as_str());
                }
                if m.leaving {
                    v["leaving"] = serde_json::Value::Bool(true);
                }
                v
            })
            .collect();
        let draining: Vec<_> = self
            .departing
            .lock()
            .iter()
            .filter(|e| e.active_requests() > 0)
            .map(|e| serde_json::json!({ "address": e.name, "active_requests": e.active_requests() }))
            .collect();
        serde_json::json!({ "name": self.name(), "protocol": self.config.protocol, "endpoints": endpoints,
                            "draining": draining })
    }

    /// Refreshes the per-endpoint gauges before a scrape.
    pub fn export_gauges(&self, metrics: &Metrics) {
        let now = Instant::now();
        for e in &self.endpoints {
            let available = i64::from(e.status(now) == EndpointStatus::Healthy);
            metrics.endpoint_available.with_label_values(&[self.name(), &e.name]).set(available);
            metrics.endpoint_active.with_label_values(&[self.name(), &e.name]).set(i64::from(e.active_requests()));
            let idle = i64::try_from(e.idle.count()).unwrap_or(i64::MAX);
            metrics.endpoint_idle.with_label_values(&[self.name(), &e.name]).set(idle);
        }
    }

    /// Finds an endpoint by its configured address.
    pub fn endpoint(&self, name: &str) -> Option<&Arc<Endpoint>> {
        self.index_of(name).map(|i| &self.endpoints[i])
    }

    /// The index of the endpoint with this configured address.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The group as offered to balancing plugins: the calling worker's own handle on it.
    pub fn offered(&self) -> Arc<dyn portico_plugins::CandidateSource> {
        self.offered.mine().clone()
    }

    /// The per-attempt deadline for the response head.
    pub fn request_timeout(&self) -> Duration {
        self.config.request_timeout
    }
}
