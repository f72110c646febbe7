//! Where a forward listener may send a client. A forward proxy on an edge gateway must not become a way in
//! to the gateway itself: Portico's own admin, listener and cluster addresses are refused (unless an `allow`
//! entry names them exactly), and so are loopback, link-local and unspecified addresses unless `allow` covers
//! them; so are this host's other addresses (an interface address reaches what loopback does). The name is
//! resolved here and the checked address is the one connected to, so a name that resolves
//! differently a second time (DNS rebinding) cannot slip past the check.

use crate::config::allow::{canonical, AllowEntry};
use crate::server::Shared;
use std::net::{IpAddr, SocketAddr};

/// Resolves `host:port` and returns the address to connect to, or why the destination is refused.
pub async fn resolve_permitted(
    shared: &Shared,
    allow: &[AllowEntry],
    host: &str,
    port: u16,
) -> Result<SocketAddr, Refusal> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| Refusal::Unresolved(format!("cannot resolve {host}: {e}")))?
            .collect(),
    };
    let Some(first) = addrs.first().copied() else {
        return Err(Refusal::Unresolved(format!("{host} has no address")));
    };
    // Any refused address refuses the name: which of them a connect would reach is not Portico's to guess.
    for addr in &addrs {
        check(shared, allow, *addr)?;
    }
    Ok(first)
}

/// Why a destination is not reached.
#[derive(Debug)]
pub enum Refusal {
    /// The destination is one Portico does not proxy to (403).
    Forbidden(String),
    /// The name could not be resolved (502).
    Unresolved(String),
}

fn check(shared: &Shared, allow: &[AllowEntry], addr: SocketAddr) -> Result<(), Refusal> {
    let addr = canonical(addr);
    let ip = addr.ip();
    let this_host = ip.is_loopback() || ip.is_unspecified() || is_local_address(ip);
    if is_own(shared, addr, this_host) {
        if allow.iter().any(|a| a.is_exactly(addr)) {
            return Ok(());
        }
        return Err(Refusal::Forbidden(format!("{addr} is one of Portico's own addresses")));
    }
    let special = this_host || is_link_local(ip);
    if special && !allow.iter().any(|a| a.covers(addr)) {
        return Err(Refusal::Forbidden(format!(
            "{addr} is this host (loopback, unspecified or one of its own addresses) or link-local"
        )));
    }
    Ok(())
}

/// Whether `ip` is one of this host's own addresses (a public or private interface address reaches the same
/// services as loopback, including Portico's admin API when it listens on 0.0.0.0). Only a local address can be
/// bound: the kernel says `EADDRNOTAVAIL` for any other, without sending anything.
fn is_local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Portico's admin and listener sockets as bound, and the configured cluster address. A socket bound to an
/// unspecified address is reached through any of this host's addresses, so there only the port is compared
/// for targets on this host.
fn is_own(shared: &Shared, addr: SocketAddr, this_host: bool) -> bool {
    let snapshot = shared.snapshot.load();
    let config = &snapshot.config;
    let mut own: Vec<SocketAddr> = shared.own_addrs.read().clone();
    own.push(config.admin.listen);
    own.extend(config.listeners.iter().map(|l| l.listen));
    if let Some(cluster) = &config.cluster {
        if let Ok(a) = cluster.settings.listen.parse::<SocketAddr>() {
            own.push(a);
        }
    }
    own.iter()
        .map(|o| canonical(*o))
        .any(|o| o == addr || (o.ip().is_unspecified() && o.port() == addr.port() && this_host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_hosts_addresses_count_as_local() {
        assert!(is_local_address(IpAddr::from([127, 0, 0, 1])));
        // TEST-NET-1 (RFC 5737) is never assigned to a host; binding it fails without sending anything.
        assert!(!is_local_address(IpAddr::from([192, 0, 2, 1])));
    }
}
