//! Endpoint choice. Portico's native policy is nginx's smooth weighted round robin over available endpoints;
//! it is the fallback whenever no balancer plugin decides, so it sits behind the small [`Balancer`] trait.

use super::endpoint::Endpoint;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Instant;

/// Picks an endpoint index among `endpoints`, skipping unavailable ones and `exclude` (the endpoint that just
/// failed) when another is available.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// Returns an index into `endpoints`, or `None` when nothing is available.
    fn pick(&self, endpoints: &[Arc<Endpoint>], exclude: &[usize], now: Instant) -> Option<usize>;
}

/// nginx's smooth weighted round robin (`ngx_http_upstream_get_peer`): weights 5,1,1 give a,a,b,a,c,a,a —
/// interleaved, never bursts — and exactly 5,1,1 of every 7 picks.
///
/// One set of current weights for all workers (nginx's with a `zone`), so that the picks interleave over the
/// whole group's traffic and not only over each worker's: the lock is the one piece of state a request to a
/// group of several endpoints writes that the other worker writes too. A group of one takes no lock.
#[derive(Debug, Default)]
pub struct SmoothWeightedRoundRobin {
    current: Mutex<Vec<i64>>,
}

impl Balancer for SmoothWeightedRoundRobin {
    fn pick(&self, endpoints: &[Arc<Endpoint>], exclude: &[usize], now: Instant) -> Option<usize> {
        // One endpoint: nothing to weigh.
        if let [only] = endpoints {
            return only.is_available(now).then_some(0);
        }
        let first = self.pick_filtered(endpoints, now, |i| !exclude.contains(&i));
        first.or_else(|| self.pick_filtered(endpoints, now, |_| true))
    }
}

impl SmoothWeightedRoundRobin {
    fn pick_filtered(
        &self,
        endpoints: &[Arc<Endpoint>],
        now: Instant,
        allowed: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut current = self.current.lock();
        if current.len() != endpoints.len() {
            current.clear();
            current.resize(endpoints.len(), 0);
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, endpoint) in endpoints.iter().enumerate() {
            if !allowed(i) || !endpoint.is_available(now) {
                continue;
            }
            let weight = i64::from(endpoint.weight());
            current[i] += weight;
            total += weight;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            current[b] -= total;
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(weights: &[u32]) -> Vec<Arc<Endpoint>> {
        weights
            .iter()
            .enumerate()
            .filter_map(|(i, w)| Endpoint::new(format!("e{i}"), ([127, 0, 0, 1], 1000 + i as u16).into(), *w, 1).ok())
            .map(Arc::new)
            .collect()
    }

    #[test]
    fn smooth_wrr_interleaves_like_nginx() {
        let eps = endpoints(&[5, 1, 1]);
        let lb = SmoothWeightedRoundRobin::default();
        let now = Instant::now();
        let picks: Vec<usize> = (0..7).filter_map(|_| lb.pick(&eps, &[], now)).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn drained_and_excluded_are_skipped() {
        let eps = endpoints(&[1, 1, 1]);
        eps[1].set_drained(true);
        let lb = SmoothWeightedRoundRobin::default();
        let now = Instant::now();
        for _ in 0..10 {
            let pick = lb.pick(&eps, &[0], now);
            assert_eq!(pick, Some(2));
        }
        eps[2].set_drained(true);
        assert_eq!(lb.pick(&eps, &[0], now), Some(0), "falls back to the excluded one when nothing else is left");
        eps[0].set_drained(true);
        assert_eq!(lb.pick(&eps, &[], now), None);
    }

    #[test]
    fn a_lone_endpoint_is_picked_while_available_even_when_excluded() {
        let eps = endpoints(&[3]);
        let lb = SmoothWeightedRoundRobin::default();
        let now = Instant::now();
        assert_eq!(lb.pick(&eps, &[0], now), Some(0));
        eps[0].set_drained(true);
        assert_eq!(lb.pick(&eps, &[], now), None);
    }
}
