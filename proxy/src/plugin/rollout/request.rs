//! A request's part in a rollout: which version of a plugin under a rollout it meets (chosen once, when its
//! filter chain starts), and its outcome counted for the guards once its response head is decided.

use super::{Version, DRAWS};
use crate::config::rollout::Sticky;
use crate::plugin::chain::{failed, FilterChain};
use crate::plugin::PluginSlot;
use http::Response;
use portico_plugins::{Plugin, PluginFailure};
use std::hash::{Hash, Hasher};
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
        let guard = slot.rollout_guard()?;
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

/// A request's place in `0..DRAWS` when nothing keeps its client on one version.
pub(super) fn random_draw() -> u32 {
    (rand::random::<u64>() % DRAWS) as u32
}

/// The client's place in `0..DRAWS`, from its sticky key; `None` when the request does not carry it. The hash
/// is keyed with constants, so a client keeps its place for the life of the process.
pub(super) fn sticky_draw(key: &Sticky, parts: &http::request::Parts, peer: SocketAddr) -> Option<u32> {
    let mut hasher = std::hash::DefaultHasher::new();
    match key {
        Sticky::Header(name) => parts.headers.get(name)?.as_bytes().hash(&mut hasher),
        Sticky::Cookie(name) => cookie(&parts.headers, name)?.hash(&mut hasher),
        Sticky::SourceIp => peer.ip().hash(&mut hasher),
    }
    Some((hasher.finish() % DRAWS) as u32)
}

fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = http::Request::builder().uri("/");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).map(|r| r.into_parts().0).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn sticky_keys_give_one_place_per_client() {
        let peer: SocketAddr = ([127, 0, 0, 1], 9).into();
        let header = Sticky::Header(http::HeaderName::from_static("x-user"));
        let a = sticky_draw(&header, &parts(&[("x-user", "alice")]), peer);
        assert_eq!(a, sticky_draw(&header, &parts(&[("x-user", "alice")]), peer));
        assert!(a.is_some_and(|d| d < DRAWS as u32));
        assert_eq!(sticky_draw(&header, &parts(&[]), peer), None);
        let cookie = Sticky::Cookie("session".into());
        let c = sticky_draw(&cookie, &parts(&[("cookie", "a=1; session=abc")]), peer);
        assert_eq!(c, sticky_draw(&cookie, &parts(&[("cookie", "session=abc")]), peer));
        assert!(sticky_draw(&Sticky::SourceIp, &parts(&[]), peer).is_some());
    }
}
