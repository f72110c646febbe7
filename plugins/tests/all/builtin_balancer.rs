//! `builtin:balancer` (plugins/builtin/balancer.c) driven through the real host: new_stream ->
//! on_request_headers -> select_endpoint, as the proxy does per request.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::TestServices;
use portico_plugins::{
    builtin, Candidate, CandidateList, CandidateLoad, CandidateSource, Plugin, PluginEngine, PluginError, PluginSpec,
    RequestInfo,
};

fn load(engine: &PluginEngine, config: &str, instances: usize) -> Result<Arc<Plugin>, PluginError> {
    let mut spec = PluginSpec::new("balancer", builtin("balancer").unwrap());
    spec.config = config.to_string();
    spec.instances = instances;
    Plugin::load(engine, spec, Arc::new(TestServices::default()))
}

pub(crate) fn balancer(config: &str) -> Arc<Plugin> {
    load(&crate::support::engine(), config, 1).unwrap()
}

fn cand(address: &str, weight: u32, active: u32) -> Candidate {
    Candidate {
        address: address.to_string(),
        weight,
        active_requests: active,
        latency: Duration::from_millis(5),
        ejected: false,
    }
}

/// `n` endpoints 10.0.0.1:80 .. 10.0.0.n:80, weight 1.
pub(crate) fn endpoints(n: usize) -> Vec<Candidate> {
    (1..=n).map(|i| cand(&format!("10.0.0.{i}:80"), 1, 0)).collect()
}

fn headers(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = [(":method", "GET"), (":path", "/x"), (":authority", "example.com")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in extra {
        h.retain(|(n, _)| n != k);
        h.push((k.to_string(), v.to_string()));
    }
    h
}

/// One request: returns the choice for attempt 0 and, when `retry`, for attempt 1 after attempt 0 failed.
fn pick_with(
    p: &Arc<Plugin>,
    cands: &[Candidate],
    extra: &[(&str, &str)],
    retry: bool,
) -> (Option<String>, Option<String>) {
    let info = RequestInfo { source_address: Some("192.0.2.7:40000".parse().unwrap()), ..RequestInfo::default() };
    let mut s = p.new_stream(info).unwrap();
    let mut h = headers(extra);
    s.on_request_headers(&mut h, true).unwrap();
    let first = s.select_endpoint(&mut h, "backend", cands, 0, None).unwrap();
    let second = if retry { s.select_endpoint(&mut h, "backend", cands, 1, first.as_deref()).unwrap() } else { None };
    (first, second)
}

fn pick(p: &Arc<Plugin>, cands: &[Candidate]) -> String {
    pick_with(p, cands, &[], false).0.unwrap()
}

fn pick_key(p: &Arc<Plugin>, cands: &[Candidate], user: &str) -> String {
    pick_with(p, cands, &[("x-user", user)], false).0.unwrap()
}

fn counts(picks: impl IntoIterator<Item = String>) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for p in picks {
        *m.entry(p).or_insert(0) += 1;
    }
    m
}

#[test]
fn smooth_weighted_round_robin_exact_sequence() {
    let p = balancer(r#"{"policy": "weighted_round_robin"}"#);
    let mut cands = vec![cand("10.0.0.1:80", 5, 0), cand("10.0.0.2:80", 1, 0), cand("10.0.0.3:80", 1, 0)];
    let mut seq = Vec::new();
    for i in 0..700u32 {
        // Active counts change every request: that must not reset the WRR state (only addresses+weights do).
        cands[0].active_requests = i % 7;
        cands[2].active_requests = i % 3;
        seq.push(pick(&p, &cands));
    }
    let names: Vec<&str> = seq[..7].iter().map(|a| &a[7..8]).collect();
    assert_eq!(names, ["1", "1", "2", "1", "3", "1", "1"], "nginx smooth WRR for 5,1,1 is a,a,b,a,c,a,a");
    for window in seq.chunks(7) {
        assert_eq!(window, &seq[..7], "every 7 picks repeat the same sequence");
    }
    let c = counts(seq);
    assert_eq!((c["10.0.0.1:80"], c["10.0.0.2:80"], c["10.0.0.3:80"]), (500, 100, 100));
}

#[test]
fn wrr_counts_stay_exact_with_several_instances() {
    // Each instance runs its own smooth WRR; the host spreads sequential streams round robin over instances, so
    // 700 picks over 4 instances are 4 x 175 = 4 x 25 full cycles.
    let p = load(&crate::support::engine(), r#"{"policy": "weighted_round_robin"}"#, 4).unwrap();
    assert_eq!(p.instance_count(), 4);
    let cands = [cand("10.0.0.1:80", 5, 0), cand("10.0.0.2:80", 1, 0), cand("10.0.0.3:80", 1, 0)];
    let c = counts((0..700).map(|_| pick(&p, &cands)));
    assert_eq!((c["10.0.0.1:80"], c["10.0.0.2:80"], c["10.0.0.3:80"]), (500, 100, 100));
}

#[test]
fn round_robin_is_even_and_cyclic() {
    let p = balancer(r#"{"policy": "round_robin"}"#);
    let cands = endpoints(3);
    let seq: Vec<String> = (0..300).map(|_| pick(&p, &cands)).collect();
    for w in seq.windows(4) {
        assert_eq!(w[0], w[3]);
        assert_ne!(w[0], w[1]);
    }
    assert!(counts(seq).values().all(|&n| n == 100));
    // Empty config = round robin.
    let p = balancer("");
    let c = counts((0..30).map(|_| pick(&p, &cands)));
    assert!(c.values().all(|&n| n == 10), "{c:?}");
}

fn key_map(p: &Arc<Plugin>, cands: &[Candidate], keys: usize) -> Vec<String> {
    (0..keys).map(|k| pick_key(p, cands, &format!("user-{k}"))).collect()
}

/// Remove one of 10 endpoints and put it back: returns (keys that moved without being on the removed endpoint,
/// keys that were on it).
fn disruption(config: &str) -> (usize, usize) {
    let p = balancer(config);
    let all = endpoints(10);
    let before = key_map(&p, &all, 10_000);
    let share = counts(before.clone());
    assert_eq!(share.len(), 10, "every endpoint gets keys");
    for (addr, n) in &share {
        assert!((400..=1800).contains(n), "{addr} has {n} of 10000 keys");
    }
    let removed = "10.0.0.4:80";
    // Candidates in a different order: the mapping must depend on the set only.
    let mut fewer: Vec<Candidate> = all.iter().filter(|c| c.address != removed).cloned().collect();
    fewer.reverse();
    let after = key_map(&p, &fewer, 10_000);
    assert!(after.iter().all(|a| a != removed));
    let mut moved_others = 0;
    for (b, a) in before.iter().zip(&after) {
        if b != removed && a != b {
            moved_others += 1;
        }
    }
    let restored = key_map(&p, &all, 10_000);
    assert_eq!(restored, before, "adding the endpoint back restores the original mapping");
    (moved_others, share[removed])
}

#[test]
fn ring_hash_moves_only_the_removed_endpoints_keys() {
    let (moved_others, on_removed) = disruption(r#"{"policy": "ring_hash", "hash_on": "header:x-user"}"#);
    assert_eq!(moved_others, 0, "ring hash: only the removed endpoint's keys move");
    assert!(on_removed > 0);
}

#[test]
fn maglev_has_minimal_disruption() {
    let (moved_others, on_removed) = disruption(r#"{"policy": "maglev", "hash_on": "header:x-user"}"#);
    let total_moved = (moved_others + on_removed) as f64 / 10_000.0;
    assert!(total_moved < 0.1 + 0.02, "maglev moved {total_moved} of keys (removed endpoint had {on_removed})");
    assert!((moved_others as f64) / 10_000.0 < 0.02, "{moved_others} keys moved between surviving endpoints");
}

#[test]
fn maglev_small_prime_table_and_weights() {
    let p = balancer(r#"{"policy": "maglev", "hash_on": "header:x-user", "table_size": 1009}"#);
    let cands = [cand("10.0.0.1:80", 3, 0), cand("10.0.0.2:80", 1, 0)];
    let c = counts(key_map(&p, &cands, 4000));
    let heavy = c["10.0.0.1:80"] as f64 / 4000.0;
    assert!((0.65..0.85).contains(&heavy), "weight 3:1 gives ~75%, got {heavy}");
}

#[test]
fn hash_keys_from_cookie_source_ip_and_path() {
    let cands = endpoints(10);
    let p = balancer(r#"{"policy": "ring_hash", "hash_on": "cookie:session"}"#);
    let a = pick_with(&p, &cands, &[("cookie", "theme=dark; session=abc123")], false).0;
    for _ in 0..20 {
        assert_eq!(pick_with(&p, &cands, &[("cookie", "session=abc123; x=1")], false).0, a);
    }
    let p = balancer(r#"{"policy": "maglev", "hash_on": "source_ip"}"#);
    let a = pick(&p, &cands);
    assert!((0..20).all(|_| pick(&p, &cands) == a), "same client IP, same endpoint");
    let p = balancer(r#"{"policy": "ring_hash", "hash_on": "path"}"#);
    let a = pick_with(&p, &cands, &[(":path", "/a/b")], false).0;
    assert!((0..20).all(|_| pick_with(&p, &cands, &[(":path", "/a/b")], false).0 == a));
    let spread = counts((0..200).map(|i| pick_with(&p, &cands, &[(":path", &format!("/p/{i}"))], false).0.unwrap()));
    assert!(spread.len() >= 8, "different paths spread: {spread:?}");
}

#[test]
fn hashing_without_a_key_falls_back_to_random() {
    let p = balancer(r#"{"policy": "ring_hash", "hash_on": "header:x-user"}"#);
    let c = counts((0..300).map(|_| pick(&p, &endpoints(3))));
    assert_eq!(c.len(), 3, "{c:?}");
}

#[test]
fn least_request_avoids_the_busy_endpoint() {
    let p = balancer(r#"{"policy": "least_request"}"#);
    let cands = [cand("10.0.0.1:80", 1, 50), cand("10.0.0.2:80", 1, 0), cand("10.0.0.3:80", 1, 0)];
    let c = counts((0..2000).map(|_| pick(&p, &cands)));
    let busy = c.get("10.0.0.1:80").copied().unwrap_or(0);
    assert!(busy < 100, "busy endpoint picked {busy} of 2000");
    assert!(c["10.0.0.2:80"] > 800 && c["10.0.0.3:80"] > 800, "{c:?}");
    // Weight matters: 10 active on weight 10 is lighter than 2 active on weight 1.
    let cands = [cand("10.0.0.1:80", 10, 10), cand("10.0.0.2:80", 1, 2)];
    assert!((0..200).all(|_| pick(&p, &cands) == "10.0.0.1:80"));
}

#[test]
fn weighted_random_within_five_sigma() {
    let p = balancer(r#"{"policy": "random"}"#);
    let cands = [cand("10.0.0.1:80", 1, 0), cand("10.0.0.2:80", 2, 0), cand("10.0.0.3:80", 7, 0)];
    let n = 10_000.0f64;
    let c = counts((0..10_000).map(|_| pick(&p, &cands)));
    for (addr, w) in [("10.0.0.1:80", 0.1), ("10.0.0.2:80", 0.2), ("10.0.0.3:80", 0.7)] {
        let expected = n * w;
        let sigma = (n * w * (1.0 - w)).sqrt();
        let got = c[addr] as f64;
        assert!((got - expected).abs() < 5.0 * sigma, "{addr}: {got} vs {expected} +- {}", 5.0 * sigma);
    }
}

const ALL_POLICIES: &[&str] = &[
    r#"{"policy": "round_robin"}"#,
    r#"{"policy": "weighted_round_robin"}"#,
    r#"{"policy": "least_request"}"#,
    r#"{"policy": "random"}"#,
    r#"{"policy": "ring_hash", "hash_on": "header:x-user"}"#,
    r#"{"policy": "maglev", "hash_on": "header:x-user"}"#,
];

#[test]
fn retry_never_returns_the_failed_endpoint() {
    for config in ALL_POLICIES {
        let p = balancer(config);
        for cands in [endpoints(2), endpoints(5), vec![cand("10.0.0.1:80", 9, 0), cand("10.0.0.2:80", 1, 0)]] {
            for i in 0..200 {
                let (first, second) = pick_with(&p, &cands, &[("x-user", &format!("u{i}"))], true);
                let (first, second) = (first.unwrap(), second.unwrap());
                assert_ne!(first, second, "{config}: retry returned the failed endpoint");
            }
        }
        // The only candidate is retried rather than nothing.
        let one = endpoints(1);
        let (first, second) = pick_with(&p, &one, &[("x-user", "u")], true);
        assert_eq!(first.as_deref(), Some("10.0.0.1:80"));
        assert_eq!(second.as_deref(), Some("10.0.0.1:80"), "{config}");
    }
}

#[test]
fn no_candidates_means_no_selection() {
    for config in ALL_POLICIES {
        let p = balancer(config);
        assert_eq!(pick_with(&p, &[], &[("x-user", "u")], true), (None, None), "{config}");
    }
}

#[test]
fn groups_keep_separate_state() {
    let p = balancer(r#"{"policy": "round_robin"}"#);
    let a = endpoints(2);
    let b = vec![cand("10.1.0.1:80", 1, 0), cand("10.1.0.2:80", 1, 0), cand("10.1.0.3:80", 1, 0)];
    let mut s = p.new_stream(RequestInfo::default()).unwrap();
    let mut h = headers(&[]);
    s.on_request_headers(&mut h, true).unwrap();
    let x1 = s.select_endpoint(&mut h, "a", &a, 0, None).unwrap().unwrap();
    let y1 = s.select_endpoint(&mut h, "b", &b, 0, None).unwrap().unwrap();
    let x2 = s.select_endpoint(&mut h, "a", &a, 0, None).unwrap().unwrap();
    let y2 = s.select_endpoint(&mut h, "b", &b, 0, None).unwrap().unwrap();
    assert_ne!(x1, x2);
    assert_ne!(y1, y2);
    assert!(x1.starts_with("10.0.") && y1.starts_with("10.1."));
}

/// The balancer finds a group's tables by `portico.upstream.candidates_version` alone (no read of the group's
/// name) while the set is unchanged. Two groups offering the very same endpoints must still keep their own
/// state: the host mixes the group into the version.
#[test]
fn groups_with_the_same_endpoints_keep_separate_state() {
    let same = vec![cand("10.2.0.1:80", 5, 0), cand("10.2.0.2:80", 1, 0), cand("10.2.0.3:80", 1, 0)];
    for config in [r#"{"policy": "round_robin"}"#, r#"{"policy": "weighted_round_robin"}"#] {
        let p = balancer(config);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        // Interleaved: a shared counter or weight vector would hand each group every other pick.
        for _ in 0..14 {
            for (group, picks) in [("a", &mut a), ("b", &mut b)] {
                let mut s = p.new_stream(RequestInfo::default()).unwrap();
                let mut h = headers(&[]);
                s.on_request_headers(&mut h, true).unwrap();
                picks.push(s.select_endpoint(&mut h, group, &same, 0, None).unwrap().unwrap());
            }
        }
        assert_eq!(a, b, "{config}: each group runs its own sequence");
        let expect = if config.contains("weighted") { [10, 2, 2] } else { [5, 5, 4] };
        let got = counts(a);
        for (c, n) in same.iter().zip(expect) {
            assert_eq!(got.get(&c.address), Some(&n), "{config}: {got:?}");
        }
    }
}

#[test]
fn bad_configurations_are_refused_with_the_reason() {
    let e = crate::support::engine();
    for (config, needle) in [
        (r#"{"policy": "foo"}"#, r#"balancer: unknown policy "foo""#),
        (r#"{"policy": "ring_hash"}"#, r#"balancer: policy "ring_hash" needs hash_on"#),
        (r#"{"policy": "maglev", "hash_on": "header:x", "table_size": 65536}"#, "table_size 65536 must be prime"),
        (r#"{"policy": "maglev", "hash_on": "header:x", "table_size": -1}"#, "table_size must be an integer"),
        (r#"{"policy": "random", "hash_on": "path"}"#, "hash_on only applies to ring_hash and maglev"),
        (r#"{"policy": "maglev", "hash_on": "query:x"}"#, "hash_on must be"),
        (r#"{"policy": "round_robin", "extra": 1}"#, r#"unknown option "extra""#),
        (r#"{"policy": "round_robin""#, "not valid JSON"),
        (r#"["round_robin"]"#, "must be an object"),
    ] {
        let err = load(&e, config, 1).unwrap_err();
        assert!(matches!(err, PluginError::Configure { .. }), "{config}: {err}");
        assert!(err.to_string().contains(needle), "{config}: {err}");
    }
}

/// Candidates that count how often the list is asked for. When `busy` names an endpoint, it has 40 requests in
/// flight and the others none: loads that change between picks while the set does not.
struct Counted {
    list: CandidateList,
    reads: AtomicUsize,
    busy: std::sync::Mutex<Option<String>>,
}

impl CandidateSource for Counted {
    fn version(&self) -> u64 {
        self.list.version()
    }
    fn candidates(&self) -> Vec<Candidate> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.list.candidates()
    }
    fn index_of(&self, address: &str) -> Option<usize> {
        self.list.index_of(address)
    }
    fn load(&self, address: &str) -> Option<CandidateLoad> {
        let load = self.list.load(address)?;
        Some(match &*self.busy.lock().unwrap() {
            Some(busy) => CandidateLoad { active_requests: if busy == address { 40 } else { 0 }, ..load },
            None => load,
        })
    }
}

/// Picks `requests` times from `cands` (attempt 0, and attempt 1 after it when `retry`); returns the picks
/// and how many times the plugin read the candidate list.
fn counted_picks(p: &Arc<Plugin>, cands: Vec<Candidate>, requests: usize, retry: bool) -> (Vec<String>, usize) {
    let addresses: Vec<String> = cands.iter().map(|c| c.address.clone()).collect();
    let counted =
        Arc::new(Counted { list: CandidateList::new(cands), reads: AtomicUsize::new(0), busy: Default::default() });
    let source: Arc<dyn CandidateSource> = counted.clone();
    let mut picks = Vec::new();
    for i in 0..requests {
        let mut s = p.new_stream(RequestInfo::default()).unwrap();
        let user = format!("user-{i}");
        let mut h = headers(&[("x-user", user.as_str())]);
        s.on_request_headers(&mut h, true).unwrap();
        let first = addresses[s.select_endpoint_from(&mut h, "backend", &source, 0, None).unwrap().unwrap()].clone();
        if retry {
            let second = s.select_endpoint_from(&mut h, "backend", &source, 1, Some(&first)).unwrap().unwrap();
            let second = &addresses[second];
            assert_ne!(&first, second, "a retry gets another endpoint");
        }
        picks.push(first);
    }
    (picks, counted.reads.load(Ordering::SeqCst))
}

#[test]
fn policies_read_the_candidates_only_when_the_set_changes() {
    for config in ALL_POLICIES {
        let p = balancer(config);
        let (picks, reads) = counted_picks(&p, endpoints(100), 50, true);
        assert_eq!(reads, 1, "{config}: the list is read once, to build the tables");
        assert!(picks.len() == 50 && counts(picks).len() > 1, "{config}: picks spread");
        // Another set (one endpoint fewer, as after an ejection): read once more, then not again.
        let (picks, reads) = counted_picks(&p, endpoints(99), 20, false);
        assert_eq!(reads, 1, "{config}: a new set is read once");
        assert!(!picks.contains(&"10.0.0.100:80".to_string()), "{config}: the removed endpoint is not picked");
        // A weight change is a new set too.
        let mut weighted = endpoints(99);
        weighted[0].weight = 50;
        let (_, reads) = counted_picks(&p, weighted, 5, false);
        assert_eq!(reads, 1, "{config}: a weight change is read");
    }
}

#[test]
fn least_request_follows_the_loads_without_reading_the_list() {
    let p = balancer(r#"{"policy": "least_request"}"#);
    let shifting = Arc::new(Counted {
        list: CandidateList::new(endpoints(2)),
        reads: AtomicUsize::new(0),
        busy: std::sync::Mutex::new(Some("10.0.0.1:80".to_string())),
    });
    let source: Arc<dyn CandidateSource> = shifting.clone();
    let pick = || {
        let mut s = p.new_stream(RequestInfo::default()).unwrap();
        let mut h = headers(&[]);
        s.on_request_headers(&mut h, true).unwrap();
        ["10.0.0.1:80", "10.0.0.2:80"][s.select_endpoint_from(&mut h, "backend", &source, 0, None).unwrap().unwrap()]
    };
    // With two endpoints both are compared on every pick, so the idle one always wins.
    assert!((0..50).all(|_| pick() == "10.0.0.2:80"));
    *shifting.busy.lock().unwrap() = Some("10.0.0.2:80".to_string());
    assert!((0..50).all(|_| pick() == "10.0.0.1:80"), "a load change is seen on the next pick");
    assert_eq!(shifting.reads.load(Ordering::SeqCst), 1, "the list is read once, to build the table");
}

#[test]
fn the_set_version_ignores_order_and_load_but_not_addresses_or_weights() {
    let a = endpoints(5);
    let mut reordered = a.clone();
    reordered.reverse();
    reordered[0].active_requests = 40;
    reordered[1].latency = Duration::from_secs(1);
    assert_eq!(CandidateList::new(a.clone()).version(), CandidateList::new(reordered).version());
    let mut reweighted = a.clone();
    reweighted[2].weight = 2;
    assert_ne!(CandidateList::new(a.clone()).version(), CandidateList::new(reweighted).version());
    assert_ne!(CandidateList::new(a.clone()).version(), CandidateList::new(a[1..].to_vec()).version());
    assert_ne!(CandidateList::new(a.clone()).version(), CandidateList::new(endpoints(6)[1..].to_vec()).version());
}
