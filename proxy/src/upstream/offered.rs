//! A group's endpoints as offered to balancing plugins ([`CandidateSource`]): those that may take a request
//! now (healthy, not ejected, not drained).
//!
//! Made once per worker lane when the group is built, so that a plugin-balanced request takes a reference
//! only its own worker counts and allocates nothing. Before, each such request allocated its own source
//! holding a clone of the group's `Arc`, a count every worker shares, moved between cores twice a request.
//! The version is a sum of per-endpoint fingerprints, kept until an endpoint's availability or weight changes
//! or an ejection it saw runs out: every plugin-balanced request asks for it, and reading every endpoint of
//! the group each time made the request's cost grow with the group. The list, with names copied and loads
//! read, is built only for a plugin that asks for it.

use super::endpoint::{self, Endpoint};
use parking_lot::Mutex;
use portico_plugins::{
    candidate_fingerprint, candidates_version, AddressMap, Candidate, CandidateLoad, CandidateSource,
};
use std::sync::Arc;
use std::time::Duration;

/// The offered endpoints of one group, read through the group's own lists.
pub struct Offered {
    endpoints: Arc<[Arc<Endpoint>]>,
    by_name: Arc<AddressMap<usize>>,
    /// The set's version as last derived (per worker lane, so the lock is only ever this worker's).
    version: Mutex<Option<KnownVersion>>,
}

/// A set's version and what it holds until.
#[derive(Debug, Clone, Copy)]
struct KnownVersion {
    /// [`endpoint::availability_changes`] when it was derived.
    changes: u64,
    /// The earliest end of an ejection in force then ([`endpoint::since_epoch`]), `u64::MAX` with none.
    until: u64,
    version: u64,
}

impl std::fmt::Debug for Offered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offered").field("endpoints", &self.endpoints.len()).finish()
    }
}

impl Offered {
    /// The group's endpoints and its address index, shared with the group (reading them counts nothing).
    pub fn new(endpoints: Arc<[Arc<Endpoint>]>, by_name: Arc<AddressMap<usize>>) -> Self {
        Offered { endpoints, by_name, version: Mutex::new(None) }
    }

    /// The endpoints that may take a request, as of this poll of the connection's task.
    fn available(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        let now = crate::clock::now();
        self.endpoints.iter().filter(move |e| e.is_available(now))
    }

    /// The offered endpoint with this address, and its index in the group.
    fn endpoint(&self, address: &str) -> Option<(usize, &Arc<Endpoint>)> {
        let index = *self.by_name.get(address)?;
        let endpoint = self.endpoints.get(index)?;
        endpoint.is_available(crate::clock::now()).then_some((index, endpoint))
    }
}

impl CandidateSource for Offered {
    fn version(&self) -> u64 {
        let changes = endpoint::availability_changes();
        let mut known = self.version.lock();
        if let Some(k) = *known {
            // The time is read only while an ejection is in force.
            if k.changes == changes && (k.until == u64::MAX || endpoint::since_epoch(crate::clock::now()) < k.until) {
                return k.version;
            }
        }
        let now = crate::clock::now();
        let mut until = u64::MAX;
        let offered = self.endpoints.iter().filter(|e| {
            if let Some(end) = e.ejection_ends(now) {
                until = until.min(end);
            }
            e.is_available(now)
        });
        let version = candidates_version(offered.map(|e| candidate_fingerprint(e.address_hash, e.weight())));
        *known = Some(KnownVersion { changes, until, version });
        version
    }

    fn candidates(&self) -> Vec<Candidate> {
        self.available()
            .map(|e| Candidate {
                address: e.name.clone(),
                weight: e.weight(),
                active_requests: e.active_requests(),
                latency: Duration::from_micros(e.latency_ewma_us()),
                ejected: false,
            })
            .collect()
    }

    fn index_of(&self, address: &str) -> Option<usize> {
        self.endpoint(address).map(|(index, _)| index)
    }

    fn load(&self, address: &str) -> Option<CandidateLoad> {
        self.endpoint(address).map(|(_, e)| CandidateLoad {
            active_requests: e.active_requests(),
            latency: Duration::from_micros(e.latency_ewma_us()),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn group(n: usize) -> (Arc<[Arc<Endpoint>]>, Arc<AddressMap<usize>>) {
        let endpoints: Vec<Arc<Endpoint>> = (0..n)
            .map(|i| {
                let address: std::net::SocketAddr = format!("127.0.0.1:{}", 9000 + i).parse().unwrap();
                Arc::new(Endpoint::new(address.to_string(), address, 1, 1).unwrap())
            })
            .collect();
        let by_name = endpoints.iter().enumerate().map(|(i, e)| (e.name.clone(), i)).collect();
        (endpoints.into(), Arc::new(by_name))
    }

    #[test]
    fn the_kept_version_follows_every_change_of_the_set() {
        let (endpoints, by_name) = group(3);
        let kept = Offered::new(endpoints.clone(), by_name.clone());
        // A fresh view derives the version from the endpoints: the kept one must always agree with it.
        let fresh = || Offered::new(endpoints.clone(), by_name.clone()).version();
        let all = kept.version();
        assert_eq!(all, fresh());
        assert_eq!(kept.version(), all);

        endpoints[1].set_drained(true);
        let drained = kept.version();
        assert_ne!(drained, all, "a drained endpoint leaves the set");
        assert_eq!(drained, fresh());
        endpoints[1].set_drained(false);
        assert_eq!(kept.version(), all);

        endpoints[2].set_weight(5);
        assert_ne!(kept.version(), all, "a weight is part of the set");
        assert_eq!(kept.version(), fresh());
        endpoints[2].set_weight(1);
        assert_eq!(kept.version(), all);

        assert_eq!(endpoints[0].record_probe(false, 1, 1), Some(false));
        assert_eq!(kept.version(), fresh());
        assert_ne!(kept.version(), all, "an unhealthy endpoint leaves the set");
        assert_eq!(endpoints[0].record_probe(true, 1, 1), Some(true));
        assert_eq!(kept.version(), all);

        // An ejection leaves the set until it runs out, which no change announces.
        let out = endpoints[2].eject(crate::clock::now(), Duration::from_millis(40), Duration::from_millis(40));
        let ejected = kept.version();
        assert_ne!(ejected, all);
        assert_eq!(ejected, fresh());
        std::thread::sleep(out + Duration::from_millis(10));
        assert_eq!(kept.version(), all, "back once the ejection ran out");
    }
}
