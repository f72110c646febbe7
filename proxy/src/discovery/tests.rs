//! The member list rules: source order and one source per address, and the "leaving" rule.

use super::registry::RegisterRequest;
use super::Discovery;
use crate::config::{self, DnsName, UpstreamConfig};
use crate::upstream::{Member, Origin, Rebuild, Upstream};
use std::net::SocketAddr;

fn group(health_check: &str) -> Result<UpstreamConfig, String> {
    let text = format!(
        r#"
[[upstream]]
name = "app"
endpoints = ["127.0.0.1:1", {{ address = "app.test:80", resolve = "1s" }}]
{health_check}
"#
    );
    let mut parsed = config::parse(&text).map_err(|e| format!("{e:?}"))?;
    Ok(parsed.upstreams.remove(0))
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
}

fn dns_name() -> DnsName {
    DnsName::Host { host: "app.test".into(), port: 80 }
}

fn names(members: &[Member]) -> Vec<(String, &'static str, bool)> {
    members.iter().map(|m| (m.name.clone(), m.origin.kind(), m.leaving)).collect()
}

fn discovery(config: &UpstreamConfig) -> Result<Discovery, String> {
    let discovery = Discovery::new(&prometheus::Registry::new()).map_err(|e| e.to_string())?;
    let mut groups = discovery.groups.lock();
    let group = groups.entry(config.name.clone()).or_default();
    group.dns.insert(dns_name(), super::EntryState::new());
    drop(groups);
    Ok(discovery)
}

#[test]
fn members_come_in_source_order_and_an_address_has_one_source() -> Result<(), String> {
    let config = group("")?;
    let discovery = discovery(&config)?;
    discovery.record("app", &dns_name(), Ok(vec![(addr("127.0.0.1:1"), 1), (addr("127.0.0.2:80"), 1)]));
    for address in ["127.0.0.3:80", "127.0.0.2:80"] {
        let request = RegisterRequest { address: addr(address), weight: 4, ttl: None };
        assert!(discovery.register("app", &request).is_some());
    }
    let members = discovery.members(&config, None);
    assert_eq!(
        names(&members),
        vec![
            ("127.0.0.1:1".into(), "static", false),
            ("127.0.0.2:80".into(), "dns", false),
            ("127.0.0.3:80".into(), "registered", false),
        ]
    );
    assert_eq!(members[2].weight, 4);
    // A failed resolution keeps the last set.
    discovery.record("app", &dns_name(), Err("timed out".into()));
    assert_eq!(names(&discovery.members(&config, None)), names(&members));
    Ok(())
}

#[test]
fn departing_addresses_serve_while_every_newcomer_awaits_its_first_probe() -> Result<(), String> {
    let config = group("health_check = { interval = \"1s\" }")?;
    let discovery = discovery(&config)?;
    discovery.record("app", &dns_name(), Ok(vec![(addr("127.0.0.2:80"), 1)]));
    let first = discovery.members(&config, None);
    let running = Upstream::new(config.clone(), first, None, 1, Rebuild::Load).map_err(|e| e.to_string())?;
    // The fixed endpoint is down, the discovered one passed its probe.
    running.endpoints[0].set_drained(true);
    assert!(running.endpoints[1].awaiting_first_check());
    running.endpoints[1].record_probe(true, 2, 3);

    // The name moves to a newcomer: the old address stays, marked leaving, until the newcomer passes a probe.
    discovery.record("app", &dns_name(), Ok(vec![(addr("127.0.0.3:80"), 1)]));
    let moved = discovery.members(&config, Some(&running));
    assert_eq!(
        names(&moved),
        vec![
            ("127.0.0.1:1".into(), "static", false),
            ("127.0.0.3:80".into(), "dns", false),
            ("127.0.0.2:80".into(), "dns", true),
        ]
    );
    let next =
        Upstream::new(config.clone(), moved, Some(&running), 1, Rebuild::Membership).map_err(|e| e.to_string())?;
    assert!(std::sync::Arc::ptr_eq(&next.endpoints[2], &running.endpoints[1]), "the leaving endpoint is reused");
    next.endpoints[1].record_probe(true, 2, 3);
    let settled = discovery.members(&config, Some(&next));
    assert_eq!(names(&settled), vec![("127.0.0.1:1".into(), "static", false), ("127.0.0.3:80".into(), "dns", false)]);
    assert!(settled.iter().all(|m| m.origin != Origin::Registered));
    Ok(())
}
