//! Service discovery: endpoints that come and go without a configuration push — names re-resolved through DNS
//! (A/AAAA, or SRV with ports and weights) and endpoints registered through the admin API.
//!
//! This module holds the dynamic part of each upstream group (the last addresses each DNS entry returned, the
//! registrations) and runs one resolution loop per DNS entry on the control runtime. It never touches the
//! data path: when a group's dynamic part changes it names the group on a channel, and the server rebuilds that
//! group ([`crate::server::Shared::refresh_upstream`]) from [`Discovery::members`], reusing the endpoints that
//! stay. A request keeps the group it started with, so in-flight requests on an address that left finish there.
//!
//! The rules, in one place:
//! - Every address an entry returns is an endpoint with the entry's weight (SRV: the record's port and weight,
//!   most preferred priority only). Addresses are matched by `ip:port`; the first source to list one wins
//!   (fixed endpoints, then DNS entries in file order, then registrations).
//! - A failed resolution (timeout, no such name, empty answer) keeps the entry's last known addresses and is
//!   reported in `GET /upstreams` and `portico_discovery_resolve_failing`.
//! - With a health check configured, a new address starts unhealthy and is probed at once; its first passing
//!   probe makes it healthy. Addresses that disappear leave the group (no new requests; in-flight ones finish;
//!   idle connections close), except that while every remaining endpoint is a newcomer still waiting for its
//!   first probe, the departing DNS addresses that still serve keep serving (`"leaving": true`), so a wholesale
//!   address change never leaves the group empty.
//! - A reload keeps what was discovered for entries that stay (and re-resolves them at once), and keeps the
//!   registrations of every group that keeps its name; a group or entry the reload removes forgets its state.

mod describe;
pub mod dns;
mod follow;
pub mod registry;
#[cfg(test)]
mod tests;

use crate::config::{Config, DnsConfig, DnsName, UpstreamConfig};
use crate::upstream::{Member, Origin, Upstream};
use parking_lot::Mutex;
use registry::{RegisterRequest, Registration};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

/// The dynamic state of every upstream group, and the DNS loops that feed it.
#[derive(Debug)]
pub struct Discovery {
    groups: Mutex<HashMap<String, GroupState>>,
    /// The resolver for the `[dns]` in force, rebuilt when it changes (an error if it could not be built).
    resolver: Mutex<Option<(DnsConfig, Result<dns::Resolver, String>)>>,
    changes: mpsc::UnboundedSender<String>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Standalone registration serials.
    serial: AtomicU64,
    /// Registrations come from the cluster's replicated state (kept when expired; see [`Discovery::sweep`]).
    replicated: AtomicBool,
    /// The cluster's drain and weight overrides, `(group, endpoint)` to `(drained, weight)`, for endpoints
    /// that join a group after the override was applied.
    overrides: Mutex<Overrides>,
    metrics: DiscoveryMetrics,
}

#[derive(Debug, Default)]
struct GroupState {
    dns: BTreeMap<DnsName, EntryState>,
    registered: BTreeMap<SocketAddr, Registration>,
}

#[derive(Debug)]
struct EntryState {
    addresses: Vec<(SocketAddr, u32)>,
    error: Option<String>,
    last_success: Option<SystemTime>,
    resolutions: u64,
    rediscover: Arc<Notify>,
}

impl EntryState {
    fn new() -> EntryState {
        EntryState {
            addresses: Vec::new(),
            error: None,
            last_success: None,
            resolutions: 0,
            rediscover: Arc::new(Notify::new()),
        }
    }
}

/// `portico_discovery_*` and `portico_registrations_*` metrics.
#[derive(Debug)]
struct DiscoveryMetrics {
    resolutions: prometheus::IntCounterVec,
    failing: prometheus::IntGaugeVec,
    expired: prometheus::IntCounterVec,
}

/// The cluster's operator overrides: `(group, endpoint)` to `(drained, weight)`.
pub type Overrides = BTreeMap<(String, String), (bool, Option<u32>)>;

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// A new endpoint.
    New,
    /// A heartbeat (its TTL restarts; its weight may have changed).
    Renewed,
}

/// A registration as the cluster replicates it: address, weight, TTL and the log index of its last renewal.
pub type ReplicatedRegistration = (SocketAddr, u32, Option<std::time::Duration>, u64);

impl Discovery {
    /// Empty state; its metrics go into `registry`.
    pub fn new(registry: &prometheus::Registry) -> Result<Discovery, prometheus::Error> {
        let resolutions = prometheus::IntCounterVec::new(
            prometheus::Opts::new("portico_discovery_resolutions_total", "DNS resolutions of endpoint names."),
            &["upstream", "name", "result"],
        )?;
        let failing = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "portico_discovery_resolve_failing",
                "1 while the last resolution of an endpoint name failed (its last known addresses are kept).",
            ),
            &["upstream", "name"],
        )?;
        let expired = prometheus::IntCounterVec::new(
            prometheus::Opts::new("portico_registrations_expired_total", "Registrations whose TTL ran out."),
            &["upstream"],
        )?;
        registry.register(Box::new(resolutions.clone()))?;
        registry.register(Box::new(failing.clone()))?;
        registry.register(Box::new(expired.clone()))?;
        let (changes, receiver) = mpsc::unbounded_channel();
        Ok(Discovery {
            groups: Mutex::new(HashMap::new()),
            resolver: Mutex::new(None),
            changes,
            receiver: Mutex::new(Some(receiver)),
            tasks: Mutex::new(Vec::new()),
            serial: AtomicU64::new(0),
            replicated: AtomicBool::new(false),
            overrides: Mutex::new(BTreeMap::new()),
            metrics: DiscoveryMetrics { resolutions, failing, expired },
        })
    }

    /// The names of groups whose dynamic part changed, for the one task that rebuilds them (taken once).
    pub fn take_changes(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        self.receiver.lock().take()
    }

    fn changed(&self, group: &str) {
        let _ = self.changes.send(group.to_string());
    }

    /// Asks for `group` to be rebuilt (e.g. after a health check let a newcomer in).
    pub fn poke(&self, group: &str) {
        self.changed(group);
    }

    /// From now on registrations come from the cluster's replicated state.
    pub fn set_replicated(&self) {
        self.replicated.store(true, Ordering::Relaxed);
    }

    /// Remembers the cluster's endpoint overrides (see [`Discovery::apply_overrides`]).
    pub fn set_overrides(&self, overrides: Overrides) {
        *self.overrides.lock() = overrides;
    }

    /// Applies the remembered overrides to the endpoints of `upstream` (a rebuilt group: its newcomers get
    /// the operator's drain or weight too).
    pub fn apply_overrides(&self, upstream: &Upstream) {
        for ((group, endpoint), (drained, weight)) in self.overrides.lock().iter() {
            let Some(e) = (group == upstream.name()).then(|| upstream.endpoint(endpoint)).flatten() else { continue };
            e.set_drained(*drained);
            if let Some(w) = weight {
                e.set_weight(*w);
            }
        }
    }

    /// The member list `config`'s group should have now. `current` is the group as it runs (for the rule that
    /// keeps departing addresses while every newcomer awaits its first probe).
    pub fn members(&self, config: &UpstreamConfig, current: Option<&Upstream>) -> Vec<Member> {
        let mut out: Vec<Member> =
            config.endpoints.iter().map(|e| Member::fixed(e.name.clone(), e.address, e.weight)).collect();
        let mut seen: HashSet<String> = out.iter().map(|m| m.name.clone()).collect();
        let groups = self.groups.lock();
        if let Some(state) = groups.get(&config.name) {
            for entry in &config.discovered {
                let Some(found) = state.dns.get(&entry.name) else { continue };
                for (address, weight) in &found.addresses {
                    if seen.insert(address.to_string()) {
                        out.push(Member {
                            name: address.to_string(),
                            address: *address,
                            weight: *weight,
                            origin: Origin::Dns(entry.name.to_string()),
                            leaving: false,
                            rediscover: Some(found.rediscover.clone()),
                        });
                    }
                }
            }
            let now = Instant::now();
            for (address, r) in state.registered.iter().filter(|(_, r)| !r.expired(now)) {
                if seen.insert(address.to_string()) {
                    let mut member = Member::fixed(address.to_string(), *address, r.weight);
                    member.origin = Origin::Registered;
                    out.push(member);
                }
            }
        }
        drop(groups);
        if let Some(current) = current {
            hold_over(&mut out, current, config.health_check.is_some());
        }
        out
    }

    /// Resolves, once and concurrently, the DNS entries of `config` that have never resolved (a start, or a
    /// reload that adds names), before the groups are built: a name then takes traffic from the first request
    /// instead of after its loop's first answer. Bounded by `[dns] timeout`; a failure leaves the entry empty
    /// until its loop succeeds. Only adds state, so a reload that is then refused loses nothing.
    pub async fn prime(&self, config: &Config) {
        let pending: Vec<(String, crate::config::DiscoveredEntry)> = {
            let mut groups = self.groups.lock();
            let mut pending = Vec::new();
            for u in &config.upstreams {
                let group = groups.entry(u.name.clone()).or_default();
                for entry in &u.discovered {
                    let state = group.dns.entry(entry.name.clone()).or_insert_with(EntryState::new);
                    if state.last_success.is_none() {
                        pending.push((u.name.clone(), entry.clone()));
                    }
                }
            }
            pending
        };
        if pending.is_empty() {
            return;
        }
        let resolver = self.resolver_for(&config.dns).await;
        let lookups = pending.iter().map(|(group, entry)| {
            let resolver = &resolver;
            async move {
                let result = match resolver {
                    Ok(r) => r.lookup(&entry.name, entry.weight).await.map_err(|e| follow::error_text(&e)),
                    Err(e) => Err(e.clone()),
                };
                (group, entry, result)
            }
        });
        for (group, entry, result) in futures_util::future::join_all(lookups).await {
            self.record(group, &entry.name, result);
        }
    }

    /// Follows `config`: keeps the state of groups and entries that stay, forgets the rest, and restarts one
    /// resolution loop per DNS entry (each resolves at once).
    pub async fn start(self: &Arc<Self>, config: &Config) {
        let needed = config.upstreams.iter().any(|u| !u.discovered.is_empty());
        let resolver = if needed { Some(self.resolver_for(&config.dns).await) } else { None };
        let mut loops = Vec::new();
        {
            let mut groups = self.groups.lock();
            groups.retain(|name, _| config.upstreams.iter().any(|u| &u.name == name));
            for u in &config.upstreams {
                let group = groups.entry(u.name.clone()).or_default();
                group.dns.retain(|name, _| u.discovered.iter().any(|d| &d.name == name));
                for entry in &u.discovered {
                    let state = group.dns.entry(entry.name.clone()).or_insert_with(EntryState::new);
                    loops.push((u.name.clone(), entry.clone(), state.rediscover.clone()));
                }
            }
        }
        let mut tasks = self.tasks.lock();
        for task in tasks.drain(..) {
            task.abort();
        }
        let Some(resolver) = resolver else { return };
        for (group, entry, rediscover) in loops {
            let task = follow::spawn(Arc::downgrade(self), group, entry, resolver.clone(), rediscover);
            tasks.push(task);
        }
    }

    /// Stops the resolution loops (shutdown).
    pub fn stop(&self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }

    async fn resolver_for(&self, config: &DnsConfig) -> Result<dns::Resolver, String> {
        // A resolver that could not be built (no /etc/resolv.conf yet) is tried again at the next reload.
        if let Some((built_for, Ok(resolver))) = self.resolver.lock().as_ref() {
            if built_for == config {
                return Ok(resolver.clone());
            }
        }
        let wanted = config.clone();
        // Reading the system configuration is file I/O: off the async workers.
        let built = tokio::task::spawn_blocking(move || dns::Resolver::new(&wanted).map_err(|e| e.to_string()))
            .await
            .unwrap_or_else(|e| Err(format!("building the DNS resolver failed: {e}")));
        *self.resolver.lock() = Some((config.clone(), built.clone()));
        built
    }

    /// Records one resolution of `name` for `group`; a changed address set names the group for a rebuild.
    fn record(&self, group: &str, name: &DnsName, result: Result<Vec<(SocketAddr, u32)>, String>) {
        let label = name.to_string();
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.resolutions.with_label_values(&[group, &label, outcome]).inc();
        self.metrics.failing.with_label_values(&[group, &label]).set(i64::from(result.is_err()));
        let changed = {
            let mut groups = self.groups.lock();
            let Some(state) = groups.get_mut(group).and_then(|g| g.dns.get_mut(name)) else { return };
            state.resolutions += 1;
            match result {
                Ok(addresses) => {
                    if state.error.take().is_some() {
                        tracing::info!(upstream = group, name = %label, "name resolves again");
                    }
                    state.last_success = Some(SystemTime::now());
                    let changed = state.addresses != addresses;
                    if changed {
                        tracing::info!(upstream = group, name = %label, addresses = ?addresses, "name resolved to a new set");
                    }
                    state.addresses = addresses;
                    changed
                }
                Err(error) => {
                    if state.error.as_deref() != Some(error.as_str()) {
                        tracing::warn!(upstream = group, name = %label, error = %error, kept = state.addresses.len(), "resolution failed; keeping the last known addresses");
                    }
                    state.error = Some(error);
                    false
                }
            }
        };
        if changed {
            self.changed(group);
        }
    }

    /// Adds or renews a registration on this node (standalone). `None` when the group does not exist.
    pub fn register(&self, group: &str, request: &RegisterRequest) -> Option<Registered> {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed) + 1;
        let outcome = {
            let mut groups = self.groups.lock();
            let state = groups.get_mut(group)?;
            let now = Instant::now();
            let registration = Registration {
                address: request.address,
                weight: request.weight,
                ttl: request.ttl,
                serial,
                renewed: now,
                renewed_at: SystemTime::now(),
                expiry_noted: false,
            };
            match state.registered.insert(request.address, registration) {
                Some(old) if !old.expired(now) => Registered::Renewed,
                _ => Registered::New,
            }
        };
        self.changed(group);
        Some(outcome)
    }

    /// Ends a registration (standalone). `None` when the group does not exist, `Some(false)` when the address
    /// is not registered there.
    pub fn deregister(&self, group: &str, address: SocketAddr) -> Option<bool> {
        let removed = self.groups.lock().get_mut(group)?.registered.remove(&address).is_some();
        if removed {
            self.changed(group);
        }
        Some(removed)
    }

    /// Whether `address` is registered (and not expired) in `group`.
    pub fn is_registered(&self, group: &str, address: SocketAddr) -> bool {
        let groups = self.groups.lock();
        let registration = groups.get(group).and_then(|g| g.registered.get(&address));
        registration.is_some_and(|r| !r.expired(Instant::now()))
    }

    /// Replaces `group`'s registrations with the cluster's (on a cluster member). A registration whose serial
    /// this node already holds keeps its TTL clock; a new serial (a renewal) restarts it.
    pub fn replace_registrations(&self, group: &str, replicated: &[ReplicatedRegistration]) {
        let changed = {
            let mut groups = self.groups.lock();
            let Some(state) = groups.get_mut(group) else { return };
            let now = Instant::now();
            let mut next = BTreeMap::new();
            for &(address, weight, ttl, serial) in replicated {
                let kept = state.registered.get(&address).filter(|r| r.serial == serial && r.weight == weight);
                let registration = kept.cloned().unwrap_or(Registration {
                    address,
                    weight,
                    ttl,
                    serial,
                    renewed: now,
                    renewed_at: SystemTime::now(),
                    expiry_noted: false,
                });
                next.insert(address, registration);
            }
            let changed = next != state.registered;
            state.registered = next;
            changed
        };
        if changed {
            self.changed(group);
        }
    }

    /// Ends the registrations whose TTL ran out (run every second). A cluster member keeps them, expired, until
    /// the replicated state drops them, so a later replicated change does not bring them back.
    pub fn sweep(&self) {
        let now = Instant::now();
        let replicated = self.replicated.load(Ordering::Relaxed);
        let mut expired_in = Vec::new();
        for (name, state) in self.groups.lock().iter_mut() {
            let mut expired = 0;
            for (address, r) in state.registered.iter_mut().filter(|(_, r)| r.expired(now) && !r.expiry_noted) {
                r.expiry_noted = true;
                expired += 1;
                tracing::info!(upstream = %name, endpoint = %address, "registration expired: not renewed within its ttl");
            }
            if !replicated {
                state.registered.retain(|_, r| !r.expired(now));
            }
            if expired > 0 {
                expired_in.push((name.clone(), expired));
            }
        }
        for (name, count) in expired_in {
            self.metrics.expired.with_label_values(&[&name]).inc_by(count);
            self.changed(&name);
        }
    }

    /// On a cluster member: the registrations whose TTL ran out here, as `(group, address, serial)`, for the
    /// leader to remove from the replicated state (see [`crate::cluster::collect_expired`]).
    pub fn expired_replicated(&self) -> Vec<(String, SocketAddr, u64)> {
        let now = Instant::now();
        let groups = self.groups.lock();
        let expired = groups.iter().flat_map(|(name, state)| {
            state.registered.values().filter(|r| r.expired(now)).map(|r| (name.clone(), r.address, r.serial))
        });
        expired.collect()
    }
}

/// The "leaving" rule (see the module doc): while every member of `out` that could serve is a newcomer still
/// waiting for its first probe, DNS members of `current` that left and still serve stay, marked leaving.
fn hold_over(out: &mut Vec<Member>, current: &Upstream, health_checked: bool) {
    if !health_checked {
        return;
    }
    let now = Instant::now();
    let live = |m: &Member| current.endpoint(&m.name).filter(|e| e.address == m.address).cloned();
    let waiting = out.iter().any(|m| live(m).map_or(m.origin != Origin::Static, |e| e.awaiting_first_check()));
    let serving = out.iter().any(|m| live(m).is_some_and(|e| e.is_available(now)));
    if !waiting || serving {
        return;
    }
    let names: HashSet<String> = out.iter().map(|m| m.name.clone()).collect();
    for (endpoint, member) in current.endpoints.iter().zip(&current.members) {
        let from_dns = matches!(member.origin, Origin::Dns(_));
        if from_dns && !names.contains(&member.name) && endpoint.is_available(now) {
            out.push(Member { leaving: true, ..member.clone() });
        }
    }
}
