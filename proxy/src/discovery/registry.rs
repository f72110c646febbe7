//! Endpoints that register themselves through the admin API, Consul-style: `POST` adds or renews one, `DELETE`
//! removes it, and a registration with a `ttl` ends by itself unless renewed within it (each `POST` is the
//! heartbeat).
//!
//! The TTL is counted on each node from the moment it applied the last registration: on a standalone node that is
//! when the `POST` was answered; in a cluster, when the replicated registration reached the node, so the nodes
//! expire it within a replication delay of each other.

use crate::config::endpoints::parse_ttl;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

/// One registration.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// Where to connect.
    pub address: SocketAddr,
    /// Share of traffic, 1..=1000.
    pub weight: u32,
    /// Ends unless renewed within this.
    pub ttl: Option<Duration>,
    /// Which renewal this is: in a cluster, the log index of the command that carried it (a node restarts the
    /// TTL only for a renewal it has not seen); standalone, a counter.
    pub serial: u64,
    /// When this node applied the last renewal (the TTL counts from here).
    pub renewed: Instant,
    /// The same moment in wall time, for `GET /upstreams`.
    pub renewed_at: SystemTime,
    /// Its expiry has been counted and logged.
    pub expiry_noted: bool,
}

impl Registration {
    /// When it ends, if it has a TTL.
    pub fn deadline(&self) -> Option<Instant> {
        self.ttl.map(|ttl| self.renewed + ttl)
    }

    /// Whether its TTL has run out.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| d <= now)
    }
}

/// A registration request as `POST /upstreams/{name}/endpoints` receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRequest {
    /// `ip:port`.
    pub address: SocketAddr,
    /// 1..=1000, default 1.
    pub weight: u32,
    /// At least 1s, if given.
    pub ttl: Option<Duration>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    address: String,
    #[serde(default)]
    weight: Option<u64>,
    #[serde(default)]
    ttl: Option<String>,
}

impl RegisterRequest {
    /// Parses and checks a request body; the error says what is wrong, for a 400.
    pub fn parse(body: &[u8]) -> Result<RegisterRequest, String> {
        let body: Body = serde_json::from_slice(body)
            .map_err(|e| format!("body must be {{\"address\": \"ip:port\", \"weight\": N, \"ttl\": \"30s\"}} ({e})"))?;
        let address: SocketAddr = body
            .address
            .parse()
            .map_err(|_| format!("address {:?} must be ip:port (an IP address, not a name)", body.address))?;
        if address.port() == 0 || address.ip().is_unspecified() || address.ip().is_multicast() {
            return Err(format!("address {address} cannot be connected to"));
        }
        let weight = body.weight.unwrap_or(1);
        let weight = u32::try_from(weight).ok().filter(|w| (1..=1000).contains(w)).ok_or("weight must be 1..=1000")?;
        let ttl = body.ttl.as_deref().map(parse_ttl).transpose()?;
        Ok(RegisterRequest { address, weight, ttl })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_bodies_are_checked() {
        let ok = RegisterRequest::parse(br#"{"address": "127.0.0.1:8080", "weight": 5, "ttl": "30s"}"#);
        assert_eq!(
            ok,
            Ok(RegisterRequest {
                address: SocketAddr::from(([127, 0, 0, 1], 8080)),
                weight: 5,
                ttl: Some(Duration::from_secs(30))
            })
        );
        let plain = RegisterRequest::parse(br#"{"address": "[::1]:80"}"#);
        assert!(plain.is_ok_and(|r| r.weight == 1 && r.ttl.is_none()));
        let refused = |body: &str| RegisterRequest::parse(body.as_bytes()).err().unwrap_or_default();
        assert!(refused(r#"{"address": "app.internal:80"}"#).contains("not a name"));
        assert!(refused(r#"{"address": "127.0.0.1:0"}"#).contains("cannot be connected"));
        assert!(refused(r#"{"address": "0.0.0.0:80"}"#).contains("cannot be connected"));
        assert!(refused(r#"{"address": "127.0.0.1:80", "weight": 0}"#).contains("1..=1000"));
        assert!(refused(r#"{"address": "127.0.0.1:80", "weight": 5000000000}"#).contains("1..=1000"));
        assert!(refused(r#"{"address": "127.0.0.1:80", "ttl": "10ms"}"#).contains("shorter than 1s"));
        assert!(refused(r#"{"address": "127.0.0.1:80", "ttl": "30"}"#).contains("no unit"));
        assert!(refused(r#"{"address": "127.0.0.1:80", "tll": "30s"}"#).contains("tll"));
        assert!(refused("not json").contains("body must be"));
    }
}
