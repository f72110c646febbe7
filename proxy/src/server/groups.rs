//! The upstream groups in the snapshot: built from their members at a (re)load, rebuilt one at a time when
//! discovery changes a group's members, and the health checkers that follow the rebuilt groups.

use super::{ServerError, Shared, Snapshot};
use crate::config::{ByName, Config};
use crate::discovery::Discovery;
use crate::health;
use crate::upstream::{Rebuild, Upstream};
use std::sync::Arc;

impl Shared {
    /// Rebuilds group `name` from its current members (discovery and registrations changed them) when they
    /// differ from the ones it runs with, and swaps it into the snapshot; requests already under way keep the
    /// group they started with.
    pub async fn refresh_upstream(&self, name: &str) {
        let _writer = self.snapshot_writer.lock().await;
        let snapshot = self.snapshot.load_full();
        let Some(current) = snapshot.upstreams.get(name) else { return };
        let Some(config) = snapshot.config.upstreams.iter().find(|u| u.name == name) else { return };
        let members = self.discovery.members(config, Some(current));
        if !crate::upstream::members::differ(&members, &current.members) {
            return;
        }
        let rebuilt = match Upstream::new(config.clone(), members, Some(current), self.lanes(), Rebuild::Membership) {
            Ok(u) => Arc::new(u),
            Err(e) => {
                tracing::error!(upstream = name, error = %e, "membership change refused: an address is not a URI authority");
                return;
            }
        };
        self.discovery.apply_overrides(&rebuilt);
        let mut upstreams = snapshot.upstreams.clone();
        upstreams.insert(name.to_string(), rebuilt.clone());
        let lanes = self.lanes();
        self.snapshot.store(Arc::new(Snapshot::new(
            snapshot.config.clone(),
            upstreams,
            snapshot.plugins.clone(),
            lanes,
        )));
        rebuilt.commit();
        self.forget_endpoint_gauges(name, &rebuilt.departed_from(current));
        tracing::info!(upstream = name, endpoints = rebuilt.endpoints.len(), "upstream members changed");
    }

    /// Drops the per-endpoint series of endpoints that left a group, so `/metrics` does not report them forever.
    pub(super) fn forget_endpoint_gauges(&self, group: &str, names: &[String]) {
        let m = &self.metrics;
        for name in names {
            for gauge in [&m.endpoint_available, &m.endpoint_active, &m.endpoint_idle] {
                let _ = gauge.remove_label_values(&[group, name]);
            }
        }
    }
}

/// Starts one health checker per group with a health check. Each reads its group from the snapshot at every
/// round (membership changes rebuild it between reloads) and asks discovery for a rebuild when a health flipped
/// (a newcomer's first passing probe ends the "leaving" rule).
pub(super) fn spawn_health_checks(
    shared: &Arc<Shared>,
    upstreams: &ByName<Arc<Upstream>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (name, upstream) in upstreams {
        let Some(check) = upstream.config.health_check.clone() else { continue };
        let (weak, group) = (Arc::downgrade(shared), name.clone());
        let current = move || weak.upgrade().and_then(|s| s.snapshot.load().upstreams.get(&group).cloned());
        let (discovery, group) = (Arc::downgrade(&shared.discovery), name.clone());
        let on_change = move || {
            if let Some(d) = discovery.upgrade() {
                d.poke(&group);
            }
        };
        tasks.extend(health::spawn(check, current, on_change));
    }
    tasks
}

/// Builds every group of `config` from its members, reusing the endpoints of `previous`.
pub(super) fn build_upstreams(
    config: &Config,
    previous: Option<&ByName<Arc<Upstream>>>,
    lanes: usize,
    discovery: &Discovery,
) -> Result<ByName<Arc<Upstream>>, ServerError> {
    config
        .upstreams
        .iter()
        .map(|u| {
            let old = previous.and_then(|p| p.get(&u.name)).map(|a| a.as_ref());
            let members = discovery.members(u, old);
            Upstream::new(u.clone(), members, old, lanes, Rebuild::Load)
                .map(|up| (u.name.clone(), Arc::new(up)))
                .map_err(|_| ServerError::Endpoint(u.name.clone()))
        })
        .collect()
}
