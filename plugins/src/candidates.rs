//! The upstream-selection extension's inputs: the endpoints offered to `portico_on_upstream_select`, and the
//! fingerprints that let a balancer keep its tables per set of candidates.

use std::time::Duration;

/// One upstream endpoint offered to a plugin's `portico_on_upstream_select` callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// `host:port` (no spaces, as the plugin will echo it back in `portico.upstream.selected`).
    pub address: String,
    /// Configured weight.
    pub weight: u32,
    /// Requests in flight to this endpoint.
    pub active_requests: u32,
    /// Smoothed latency.
    pub latency: Duration,
    /// Whether outlier detection ejected it (normally only non-ejected endpoints are offered).
    pub ejected: bool,
}

/// The endpoints offered to one `portico_on_upstream_select` call, produced on demand. A balancer whose
/// decision depends only on the set (round robin, ring hash, Maglev) reads `portico.upstream.candidates_version`
/// and, when it has not changed, never asks for the list: with 1,000 endpoints, building, encoding and parsing
/// the list is most of a pick.
pub trait CandidateSource: Send + Sync {
    /// A fingerprint of the set: the addresses and weights of the candidates, in any order. Equal fingerprints
    /// mean the same set (up to a 64-bit hash collision).
    fn version(&self) -> u64;
    /// The candidates, with their current load; called only when a plugin reads `portico.upstream.candidates`.
    fn candidates(&self) -> Vec<Candidate>;
    /// The index of candidate `address` in the caller's own numbering (a plugin's choice is checked against
    /// it, and returned as it), `None` when it is not a candidate.
    fn index_of(&self, address: &str) -> Option<usize>;
    /// The current load of one candidate, `None` when `address` is not one: what a balancer that keeps its
    /// tables per set reads (`portico.upstream.active_requests.<address>`) to compare two endpoints without
    /// the whole list. The default searches [`CandidateSource::candidates`]; a host should answer directly.
    fn load(&self, address: &str) -> Option<CandidateLoad> {
        self.candidates().into_iter().find(|c| c.address == address).map(|c| CandidateLoad::of(&c))
    }
}

/// What changes between picks about one candidate (its address and weight are part of the set's version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CandidateLoad {
    /// Requests in flight to the endpoint.
    pub active_requests: u32,
    /// Its smoothed latency.
    pub latency: Duration,
}

impl CandidateLoad {
    /// The load part of a candidate.
    pub fn of(candidate: &Candidate) -> Self {
        CandidateLoad { active_requests: candidate.active_requests, latency: candidate.latency }
    }
}

/// One candidate's share of a [`CandidateSource::version`] (see [`candidates_version`]): a host can keep the
/// address hash precomputed per endpoint.
pub fn candidate_fingerprint(address_hash: u64, weight: u32) -> u64 {
    // splitmix64 finaliser over the address hash and the weight
    let mut z = address_hash ^ u64::from(weight).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The [`CandidateSource::version`] of a set, from its candidates' [`candidate_fingerprint`]s in any order.
pub fn candidates_version(fingerprints: impl IntoIterator<Item = u64>) -> u64 {
    let (sum, count) = fingerprints.into_iter().fold((0u64, 0u64), |(sum, n), f| (sum.wrapping_add(f), n + 1));
    sum ^ count
}

/// What a plugin reads as `portico.upstream.candidates_version` (and finds in its select version slot): the
/// set's version mixed with the group's name, so that two groups offering the same endpoints still differ and a
/// balancer can find its tables by the version alone, without reading the group's name too.
pub(crate) fn group_version(group: &str, set_version: u64) -> u64 {
    candidate_fingerprint(address_hash(group), 0) ^ set_version
}

/// A stable 64-bit hash of an endpoint address (FNV-1a), the `address_hash` of [`candidate_fingerprint`].
pub fn address_hash(address: &str) -> u64 {
    address.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3))
}

/// The candidates' address index hash: addresses come from the configuration, not from clients, so the map
/// needs no flood-resistant SipHash, which showed as the largest cost of a pick's address lookup. It takes eight
/// bytes a step, each a folded multiply (the 128-bit product's halves XORed, as foldhash and wyhash do), which
/// carries every input bit into the low bits the table indexes by: byte-at-a-time FNV-1a spent ~75
/// instructions on a `127.0.0.1:8080`-sized address, a third of a lookup. (A plain multiply-rotate round, as
/// FxHash does, made `10.0.0.92:8080` and `10.0.0.19:8080` one value.) The proxy keys its groups' address index
/// with it too ([`AddressMap`]).
pub struct AddressHasher(u64);

impl Default for AddressHasher {
    fn default() -> Self {
        AddressHasher(0x243F_6A88_85A3_08D3)
    }
}

/// A map keyed by endpoint address, hashed with [`AddressHasher`]. Only for keys an operator wrote (or that
/// service discovery returned): lookups with any key are fine, inserts from clients are not.
pub type AddressMap<V> = std::collections::HashMap<String, V, std::hash::BuildHasherDefault<AddressHasher>>;

impl AddressHasher {
    fn round(&mut self, word: u64) {
        let product = u128::from(self.0 ^ word) * 0x9E37_79B9_7F4A_7C15;
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl std::hash::Hasher for AddressHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            self.round(u64::from_le_bytes(w));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            // The length keeps "a" and "a\0" apart.
            self.round(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.round(u64::from(byte));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A fixed list of candidates, for callers that already hold one (tests, benchmarks, embedders). Its version
/// is computed once, when it is made.
#[derive(Debug, Clone)]
pub struct CandidateList {
    candidates: Vec<Candidate>,
    by_address: AddressMap<usize>,
    version: u64,
}

impl CandidateList {
    /// Wraps the list and fingerprints it.
    pub fn new(candidates: Vec<Candidate>) -> Self {
        let version =
            candidates_version(candidates.iter().map(|c| candidate_fingerprint(address_hash(&c.address), c.weight)));
        let by_address = candidates.iter().enumerate().map(|(i, c)| (c.address.clone(), i)).collect();
        CandidateList { candidates, by_address, version }
    }
}

impl CandidateSource for CandidateList {
    fn version(&self) -> u64 {
        self.version
    }

    fn candidates(&self) -> Vec<Candidate> {
        self.candidates.clone()
    }

    fn index_of(&self, address: &str) -> Option<usize> {
        self.by_address.get(address).copied()
    }

    fn load(&self, address: &str) -> Option<CandidateLoad> {
        self.by_address.get(address).map(|&i| CandidateLoad::of(&self.candidates[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, BuildHasherDefault};

    /// Addresses that differ in a byte or two spread over a table's low bits (a hash that left them in a few
    /// buckets would make a large group's lookups linear), and a map keyed with it finds each one.
    #[test]
    fn similar_addresses_spread_over_the_low_bits_and_are_found() {
        let build = BuildHasherDefault::<AddressHasher>::default();
        let addresses: Vec<String> = (0..4096).map(|i| format!("10.0.{}.{}:8080", i / 256, i % 256)).collect();
        let hashes: std::collections::HashSet<u64> = addresses.iter().map(|a| build.hash_one(a)).collect();
        assert_eq!(hashes.len(), addresses.len(), "no two collide");
        let low: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 0xFFF).collect();
        // A random function fills 4096 × (1 − 1/e) ≈ 2,589 of them.
        assert!(low.len() > 2400, "4096 addresses fill {} of 4096 low-bit buckets", low.len());
        let map: AddressMap<usize> = addresses.iter().cloned().zip(0..).collect();
        assert!(addresses.iter().enumerate().all(|(i, a)| map.get(a.as_str()) == Some(&i)));
        assert_eq!(map.get("10.0.0.0:808"), None);
    }
}
