//! What `GET /upstreams` shows of discovery: each DNS entry's last answer and error, each registration's TTL.

use super::Discovery;
use crate::config::duration::format_duration;
use crate::upstream::Upstream;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

impl Discovery {
    /// `GET /upstreams` for one group: the group's own description plus what discovery knows (each DNS entry's
    /// last answer and error; each registration's TTL).
    pub fn describe(&self, upstream: &Upstream) -> serde_json::Value {
        let mut value = upstream.describe();
        let groups = self.groups.lock();
        let Some(state) = groups.get(upstream.name()) else { return value };
        let now = Instant::now();
        if let Some(endpoints) = value.get_mut("endpoints").and_then(|e| e.as_array_mut()) {
            for e in endpoints.iter_mut().filter(|e| e["source"] == "registered") {
                let address = e["address"].as_str().and_then(|a| a.parse::<SocketAddr>().ok());
                let Some(r) = address.and_then(|a| state.registered.get(&a)) else { continue };
                if let (Some(ttl), Some(deadline)) = (r.ttl, r.deadline()) {
                    e["ttl"] = format_duration(ttl).into();
                    e["expires_in_ms"] = (deadline.saturating_duration_since(now).as_millis() as u64).into();
                }
            }
        }
        let entries: Vec<_> = upstream
            .config
            .discovered
            .iter()
            .filter_map(|entry| state.dns.get(&entry.name).map(|s| (entry, s)))
            .map(|(entry, s)| {
                serde_json::json!({
                    "name": entry.name.to_string(),
                    "resolve": format_duration(entry.interval),
                    "addresses": s.addresses.iter().map(|(a, w)| serde_json::json!({ "address": a.to_string(), "weight": w })).collect::<Vec<_>>(),
                    "resolutions": s.resolutions,
                    "last_success_unix_ms": s.last_success.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map(|d| d.as_millis() as u64),
                    "error": s.error,
                })
            })
            .collect();
        value["discovery"] = serde_json::Value::Array(entries);
        value
    }
}
