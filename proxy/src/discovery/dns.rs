//! The DNS client discovery asks: hickory's resolver, built from `[dns]` (or the system's `/etc/resolv.conf`),
//! with its answer cache off, since discovery re-asks on its own schedule and wants the server's current
//! answer each time.

use crate::config::{DnsConfig, DnsName};
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use std::net::SocketAddr;

/// Why a name could not be resolved (the last known addresses are kept).
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The resolver could not be set up (e.g. `/etc/resolv.conf` unreadable).
    #[error("DNS resolver configuration: {0}")]
    Config(#[source] NetError),
    /// The query failed: timeout, no such name, no records, server failure.
    #[error("resolving {name}: {source}")]
    Lookup {
        /// What was asked.
        name: String,
        /// The resolver's error.
        #[source]
        source: NetError,
    },
    /// The answer held no usable address.
    #[error("resolving {0}: no address in the answer")]
    Empty(String),
}

/// One resolver, shared by every DNS entry while `[dns]` stays the same.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl Resolver {
    /// Builds the resolver. Without servers it reads the system configuration (a file read: call it off the
    /// async workers).
    pub fn new(config: &DnsConfig) -> Result<Resolver, DnsError> {
        let mut builder = if config.servers.is_empty() {
            TokioResolver::builder_tokio().map_err(DnsError::Config)?
        } else {
            let servers = config
                .servers
                .iter()
                .map(|server| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = server.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = server.port();
                    NameServerConfig::new(server.ip(), true, vec![udp, tcp])
                })
                .collect();
            let mut builder = TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            );
            // Servers named here answer for the names asked, so the hosts file is not consulted.
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.timeout = config.timeout;
        options.attempts = 1;
        options.cache_size = 0;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.try_tcp_on_error = true;
        builder.build().map(|inner| Resolver { inner }).map_err(DnsError::Config)
    }

    /// The addresses `name` stands for now, each with its weight: every A and AAAA address with the entry's
    /// port and `weight`, or for SRV, the targets of the most preferred priority with the records' ports and
    /// weights (0 counts as 1, more than 1000 as 1000). Sorted, without duplicates.
    pub async fn lookup(&self, name: &DnsName, weight: u32) -> Result<Vec<(SocketAddr, u32)>, DnsError> {
        let mut found = match name {
            DnsName::Host { host, port } => {
                self.addresses(host).await?.into_iter().map(|ip| (SocketAddr::new(ip, *port), weight)).collect()
            }
            DnsName::Srv(srv) => self.srv(srv).await?,
        };
        found.sort();
        found.dedup_by_key(|(address, _)| *address);
        if found.is_empty() {
            return Err(DnsError::Empty(name.to_string()));
        }
        Ok(found)
    }

    async fn addresses(&self, host: &str) -> Result<Vec<std::net::IpAddr>, DnsError> {
        let lookup =
            self.inner.lookup_ip(host).await.map_err(|source| DnsError::Lookup { name: host.to_string(), source })?;
        Ok(lookup.iter().collect())
    }

    async fn srv(&self, name: &str) -> Result<Vec<(SocketAddr, u32)>, DnsError> {
        let lookup = self
            .inner
            .srv_lookup(name)
            .await
            .map_err(|source| DnsError::Lookup { name: format!("srv {name}"), source })?;
        let records: Vec<_> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) if !srv.target.is_root() => Some(srv.clone()),
                _ => None,
            })
            .collect();
        let Some(best) = records.iter().map(|r| r.priority).min() else { return Ok(Vec::new()) };
        let mut found = Vec::new();
        for record in records.iter().filter(|r| r.priority == best) {
            let weight = u32::from(record.weight).clamp(1, 1000);
            for ip in self.addresses(&record.target.to_ascii()).await? {
                found.push((SocketAddr::new(ip, record.port), weight));
            }
        }
        Ok(found)
    }
}
