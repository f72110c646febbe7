//! Endpoint entries and the `[dns]` table: how an upstream names its endpoints, and which DNS servers discovery
//! asks.
//!
//! An entry is a literal or a name resolved once at load (`"10.0.0.1:80"`, `{ address, weight }`), a name
//! re-resolved every `resolve` interval (`{ address = "app.internal:8080", resolve = "30s" }`), or an SRV name
//! whose records give ports and weights (`{ srv = "_http._tcp.app.internal" }`). The last two are followed at run
//! time by [`crate::discovery`]; validation only checks their shape, since a name that does not resolve yet is
//! not a configuration error.

use super::duration::{parse_duration, HumanDuration};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// How often an SRV entry is re-resolved when it does not say.
pub const DEFAULT_SRV_INTERVAL: Duration = Duration::from_secs(30);

/// Shortest `resolve` interval: shorter would turn discovery into a DNS load test.
pub const MIN_RESOLVE_INTERVAL: Duration = Duration::from_millis(100);

/// An endpoint entry in either of its spellings.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum EndpointFile {
    /// `"10.0.0.1:80"`, weight 1.
    Address(String),
    /// `{ address = "10.0.0.2:80", weight = 3 }`, `{ address = "app.internal:8080", resolve = "30s" }` or
    /// `{ srv = "_http._tcp.app.internal" }`.
    Entry(EndpointEntryFile),
}

/// The table form of an endpoint entry.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointEntryFile {
    /// `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// An SRV name (`_service._proto.name`); its records give targets, ports and weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srv: Option<String>,
    /// Relative share of traffic, 1..=1000 (not for `srv`: the records carry weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Re-resolve the name this often (and soon after a connect failure) instead of once at load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve: Option<HumanDuration>,
}

// Written by hand rather than `#[serde(untagged)]`, whose only error is "did not match any variant": a typo in a
// key or a bad `resolve` value is reported with its own message and line.
impl<'de> Deserialize<'de> for EndpointFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = EndpointFile;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"host:port\" or a table with `address` or `srv`")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<EndpointFile, E> {
                Ok(EndpointFile::Address(v.to_string()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EndpointFile, A::Error> {
                EndpointEntryFile::deserialize(de::value::MapAccessDeserializer::new(map)).map(EndpointFile::Entry)
            }
        }
        deserializer.deserialize_any(EntryVisitor)
    }
}

/// `[dns]`: the servers discovery asks. Without it, the system's resolver configuration (`/etc/resolv.conf`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsFile {
    /// `"ip"` or `"ip:port"` (port 53 by default), asked in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// Deadline of one query to one server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
}

/// Validated `[dns]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsConfig {
    /// Servers to ask; empty means the system's.
    pub servers: Vec<SocketAddr>,
    /// Per-query deadline.
    pub timeout: Duration,
}

/// Default per-query deadline: short, because a resolution that fails keeps the last known set anyway.
pub const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(2);

/// What a discovered entry resolves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DnsName {
    /// A and AAAA records of `host`, each address with `port`.
    Host {
        /// The DNS name.
        host: String,
        /// The port every address gets.
        port: u16,
    },
    /// SRV records of this name; each target's A/AAAA records, with the record's port and weight.
    Srv(String),
}

impl std::fmt::Display for DnsName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsName::Host { host, port } => write!(f, "{host}:{port}"),
            DnsName::Srv(name) => write!(f, "srv {name}"),
        }
    }
}

/// A validated discovered entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredEntry {
    /// What to resolve.
    pub name: DnsName,
    /// Weight of every address of a `Host` entry (SRV records carry their own).
    pub weight: u32,
    /// Time between resolutions.
    pub interval: Duration,
}

/// What one entry became after validation.
pub enum Checked {
    /// A literal address or a name resolved once, now.
    Fixed {
        /// The text as written.
        name: String,
        /// The address.
        address: SocketAddr,
        /// Its weight.
        weight: u32,
    },
    /// Followed at run time.
    Discovered(DiscoveredEntry),
}

/// Checks one entry; `resolve_once` turns a `host:port` into an address (the load-time lookup).
pub fn check_entry(
    entry: &EndpointFile,
    resolve_once: impl Fn(&str) -> Result<SocketAddr, String>,
) -> Result<Checked, String> {
    let table = match entry {
        EndpointFile::Address(text) => {
            return resolve_once(text).map(|address| Checked::Fixed { name: text.clone(), address, weight: 1 })
        }
        EndpointFile::Entry(table) => table,
    };
    let weight = table.weight.unwrap_or(1);
    if !(1..=1000).contains(&weight) {
        return Err("weight must be 1..=1000".into());
    }
    let interval = table.resolve.map(|d| d.0);
    if interval.is_some_and(|i| i < MIN_RESOLVE_INTERVAL) {
        return Err(format!("resolve must be at least {}", super::duration::format_duration(MIN_RESOLVE_INTERVAL)));
    }
    match (&table.address, &table.srv) {
        (Some(_), Some(_)) => Err("give either `address` or `srv`, not both".into()),
        (None, None) => Err("needs `address` (host:port) or `srv` (an SRV name)".into()),
        (None, Some(srv)) => {
            if table.weight.is_some() {
                return Err("an `srv` entry takes its weights from the SRV records; remove `weight`".into());
            }
            check_dns_name(srv)?;
            let interval = interval.unwrap_or(DEFAULT_SRV_INTERVAL);
            Ok(Checked::Discovered(DiscoveredEntry { name: DnsName::Srv(srv.clone()), weight: 1, interval }))
        }
        (Some(address), None) => match interval {
            None => resolve_once(address).map(|resolved| Checked::Fixed {
                name: address.clone(),
                address: resolved,
                weight,
            }),
            Some(interval) => {
                if address.parse::<SocketAddr>().is_ok() {
                    return Err(format!("{address:?} is an IP address: `resolve` needs a DNS name"));
                }
                let (host, port) = address
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h, p.parse::<u16>().ok().filter(|p| *p != 0)?)))
                    .ok_or_else(|| format!("{address:?} is not host:port with a port 1..=65535"))?;
                check_dns_name(host)?;
                let name = DnsName::Host { host: host.to_string(), port };
                Ok(Checked::Discovered(DiscoveredEntry { name, weight, interval }))
            }
        },
    }
}

/// A name the resolver can ask for: dot-separated labels of letters, digits, `-` and `_`.
fn check_dns_name(name: &str) -> Result<(), String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let ok = !trimmed.is_empty()
        && trimmed.len() <= 253
        && trimmed.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a DNS name"))
    }
}

/// Validates `[dns]`.
pub fn check_dns(file: &DnsFile) -> Result<DnsConfig, String> {
    let mut servers = Vec::new();
    for text in &file.servers {
        let server = text
            .parse::<SocketAddr>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
            .map_err(|_| format!("server {text:?} must be an IP address, optionally with :port"))?;
        servers.push(server);
    }
    let timeout = file.timeout.map_or(DEFAULT_DNS_TIMEOUT, |t| t.0);
    if timeout.is_zero() {
        return Err("timeout must be more than zero".into());
    }
    Ok(DnsConfig { servers, timeout })
}

/// Parses a registration TTL as the admin API receives it (`"30s"`).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_duration(text)?;
    if ttl < Duration::from_secs(1) {
        return Err(format!("ttl {text:?} is shorter than 1s"));
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str) -> Result<EndpointFile, String> {
        #[derive(Deserialize)]
        struct Wrap {
            e: EndpointFile,
        }
        toml::from_str::<Wrap>(&format!("e = {text}")).map(|w| w.e).map_err(|e| e.message().to_string())
    }

    fn literal(text: &str) -> Result<SocketAddr, String> {
        text.parse().map_err(|_| format!("{text} does not resolve"))
    }

    #[test]
    fn entries_check_their_shape() -> Result<(), String> {
        let dns = check_entry(&entry(r#"{ address = "app.internal:8080", resolve = "30s", weight = 3 }"#)?, literal)?;
        let Checked::Discovered(d) = dns else { return Err("not discovered".into()) };
        assert_eq!(d.name, DnsName::Host { host: "app.internal".into(), port: 8080 });
        assert_eq!((d.weight, d.interval), (3, Duration::from_secs(30)));
        let srv = check_entry(&entry(r#"{ srv = "_http._tcp.app.internal" }"#)?, literal)?;
        let Checked::Discovered(s) = srv else { return Err("not discovered".into()) };
        assert_eq!((s.name.to_string(), s.interval), ("srv _http._tcp.app.internal".into(), DEFAULT_SRV_INTERVAL));
        assert!(matches!(check_entry(&entry(r#""10.0.0.1:80""#)?, literal)?, Checked::Fixed { weight: 1, .. }));

        let refused = |text: &str| check_entry(&entry(text).unwrap_or(EndpointFile::Address(String::new())), literal);
        assert!(refused(r#"{ srv = "_x._tcp.a", weight = 2 }"#).is_err_and(|e| e.contains("SRV records")));
        assert!(refused(r#"{ address = "10.0.0.1:80", resolve = "5s" }"#).is_err_and(|e| e.contains("DNS name")));
        assert!(refused(r#"{ address = "a.b", resolve = "5s" }"#).is_err_and(|e| e.contains("host:port")));
        assert!(refused(r#"{ address = "a.b:80", resolve = "1ms" }"#).is_err_and(|e| e.contains("at least")));
        assert!(refused(r#"{ address = "a b:80", resolve = "1s" }"#).is_err_and(|e| e.contains("not a DNS name")));
        assert!(refused(r#"{ weight = 2 }"#).is_err_and(|e| e.contains("needs `address`")));
        Ok(())
    }

    #[test]
    fn a_typo_in_an_entry_is_named() {
        let error = entry(r#"{ address = "a:1", reslove = "5s" }"#).err().unwrap_or_default();
        assert!(error.contains("reslove"), "{error}");
        let error = entry(r#"{ address = "a:1", resolve = "5" }"#).err().unwrap_or_default();
        assert!(error.contains("no unit"), "{error}");
    }

    #[test]
    fn dns_servers_default_to_port_53() -> Result<(), String> {
        let file = DnsFile { servers: vec!["127.0.0.1:5353".into(), "::1".into()], timeout: None };
        let dns = check_dns(&file)?;
        assert_eq!(dns.servers, vec![literal("127.0.0.1:5353")?, literal("[::1]:53")?]);
        assert!(check_dns(&DnsFile { servers: vec!["ns.example".into()], timeout: None }).is_err());
        Ok(())
    }
}
