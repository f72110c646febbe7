//! A request's part in a rollout: which version of a plugin under a rollout it meets (chosen once, when its
//! filter chain starts), and its outcome counted for the guards once its response head is decided.

use super::Version;
use crate::plugin::chain::{failed, FilterChain};
use crate::plugin::PluginSlot;
use http::Response;
use portico_plugins::{Plugin, PluginFailure};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

impl FilterChain {
    /// Which version of `slot` this request meets when a rollout splits its traffic (`None`: the current one),
    /// remembered to count the request's outcome.
    pub(in crate::plugin) fn choose_version(
        &mut self,
        slot: &PluginSlot,
        parts: &http::request::Parts,
        peer: SocketAddr,
    ) -> Option<Version> {
        let guard = slot.rollout_guard();
        let rollout = guard.as_ref()?;
        let version = rollout.choose(parts, peer)?;
        self.rollouts.push((rollout.clone(), version));
        self.started.get_or_insert_with(Instant::now);
        Some(version)
    }

    /// Counts the request's answer (its status, and the time since the chain started) for the versions it met
    /// of plugins under a rollout. Called once the response head is decided; later calls count nothing.
    pub fn answered(&mut self, status: u16) {
        let Some(started) = self.started.take() else { return };
        let elapsed = started.elapsed();
        for (rollout, version) in self.rollouts.drain(..) {
            rollout.answered(version, status, elapsed);
        }
    }
}

/// [`failed`], counting the failure against the version of the plugin the request met if it is under a rollout.
pub(in crate::plugin) fn failed_counted(
    rollouts: &[(Arc<super::Rollout>, Version)],
    plugin: &Plugin,
    failure: &PluginFailure,
    request_id: &str,
) -> Option<Response<crate::body::ResponseBody>> {
    for (rollout, version) in rollouts {
        if rollout.plugin() == plugin.name() {
            rollout.plugin_failed(*version);
        }
    }
    failed(plugin, failure, request_id)
}
