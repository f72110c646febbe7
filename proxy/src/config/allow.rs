//! `allow` entries of a forward listener: destinations an operator permits although they are in a range
//! refused by default (loopback, link-local, unspecified). Either an exact `ip:port` or a network `ip/prefix`
//! (a bare `ip` is a /32 or /128).

use std::net::{IpAddr, SocketAddr};

/// One parsed `allow` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowEntry {
    /// Exactly this address and port; the only form that also permits one of Portico's own addresses.
    Addr(SocketAddr),
    /// Any port on an address inside this network.
    Net(IpAddr, u8),
}

impl AllowEntry {
    /// Parses `ip:port`, `ip/prefix` or `ip`.
    pub fn parse(text: &str) -> Result<AllowEntry, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(AllowEntry::Addr(canonical(addr)));
        }
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (text, None),
        };
        let ip: IpAddr =
            ip.parse().map_err(|_| format!("{text:?} is not an ip:port, an ip/prefix or an ip address"))?;
        let ip = ip.to_canonical();
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("{text:?}: prefix must be a number from 0 to {max}")),
            },
        };
        Ok(AllowEntry::Net(ip, prefix))
    }

    /// Whether the entry names exactly this address.
    pub fn is_exactly(&self, addr: SocketAddr) -> bool {
        matches!(self, AllowEntry::Addr(a) if *a == canonical(addr))
    }

    /// Whether the entry covers this address.
    pub fn covers(&self, addr: SocketAddr) -> bool {
        match self {
            AllowEntry::Addr(_) => self.is_exactly(addr),
            AllowEntry::Net(net, prefix) => in_network(*net, *prefix, addr.ip().to_canonical()),
        }
    }
}

/// Unmaps IPv4-mapped IPv6 addresses, so `::ffff:127.0.0.1` counts as `127.0.0.1`.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn in_network(net: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() -> Result<(), String> {
        let net = AllowEntry::parse("127.0.0.0/8")?;
        assert!(net.covers("127.1.2.3:80".parse().map_err(|_| "addr")?));
        assert!(!net.covers("10.0.0.1:80".parse().map_err(|_| "addr")?));
        let exact = AllowEntry::parse("127.0.0.1:8080")?;
        assert!(exact.is_exactly("[::ffff:127.0.0.1]:8080".parse().map_err(|_| "addr")?));
        assert!(AllowEntry::parse("127.0.0.1/33").is_err());
        assert!(AllowEntry::parse("localhost").is_err());
        assert_eq!(AllowEntry::parse("::1")?, AllowEntry::Net("::1".parse().map_err(|_| "addr")?, 128));
        Ok(())
    }
}
