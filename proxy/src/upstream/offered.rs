//! A group's endpoints as offered to balancing plugins ([`CandidateSource`]): those that may take a request
//! now (healthy, not ejected, not drained).
//!
//! Made once per worker lane when the group is built, so that a plugin-balanced request takes a reference
//! only its own worker counts and allocates nothing. Before, each such request allocated its own source
//! holding a clone of the group's `Arc`, a count every worker shares, moved between cores twice a request.
//! The version is a sum of per-endpoint fingerprints, so it is cheap; the list, with names copied and loads
//! read, is built only for a plugin that asks for it.

use super::endpoint::Endpoint;
use portico_plugins::{
    candidate_fingerprint, candidates_version, AddressMap, Candidate, CandidateLoad, CandidateSource,
};
use std::sync::Arc;
use std::time::Duration;

/// The offered endpoints of one group, read through the group's own lists.
pub struct Offered {
    endpoints: Arc<[Arc<Endpoint>]>,
    by_name: Arc<AddressMap<usize>>,
}

impl std::fmt::Debug for Offered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offered").field("endpoints", &self.endpoints.len()).finish()
    }
}

impl Offered {
    /// The group's endpoints and its address index, shared with the group (reading them counts nothing).
    pub fn new(endpoints: Arc<[Arc<Endpoint>]>, by_name: Arc<AddressMap<usize>>) -> Self {
        Offered { endpoints, by_name }
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
        candidates_version(self.available().map(|e| candidate_fingerprint(e.address_hash, e.weight())))
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
