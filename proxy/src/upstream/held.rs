//! A group as a request holds it: a counted reference whose count only the request's own worker writes.
//!
//! A request keeps its group for its whole life (a rebuild must not pull the endpoints from under it), and
//! the endpoint it was sent to until its answer's body ends. Holding them as clones of the one `Arc` each
//! means two atomic writes per request on a count both workers write, sitting on the same cache lines as the
//! group's configuration and the endpoint's address, which every request reads: each write takes the other
//! worker's copy of those lines away. So the snapshot keeps one handle per worker lane for each group (each
//! on lines of its own, see [`super::per_lane`]); a request clones its lane's, and its slot on the endpoint
//! is that handle and the endpoint's index, not another `Arc`.

use super::per_lane::{Padded, PerLane};
use super::{PoolExhausted, Upstream};
use std::ops::Deref;
use std::sync::Arc;

/// A group, held by a request for as long as it needs it.
#[derive(Debug, Clone)]
pub struct Held(Arc<Padded<Arc<Upstream>>>);

impl Deref for Held {
    type Target = Arc<Upstream>;

    fn deref(&self) -> &Arc<Upstream> {
        &self.0 .0
    }
}

impl Held {
    /// Starts a request on endpoint `index`, waiting (up to the connect timeout) for one of its
    /// `pool.max_connections` slots when all are taken. The guard counts it as active until dropped.
    pub async fn acquire(&self, index: usize) -> Result<ActiveRequest, PoolExhausted> {
        let endpoint = self.endpoints.get(index).ok_or(PoolExhausted)?;
        let limit = self.config.pool.max_connections;
        if endpoint.begin_request(limit, self.config.connect_timeout).await {
            Ok(ActiveRequest { group: self.clone(), index })
        } else {
            Err(PoolExhausted)
        }
    }
}

/// One [`Held`] per worker lane for a group, made when the snapshot holding the group is.
#[derive(Debug)]
pub struct Handles(PerLane<Held>);

impl Handles {
    /// `lanes` handles (see [`crate::listen::workers::lanes`]) on `group`.
    pub fn new(group: &Arc<Upstream>, lanes: usize) -> Self {
        Handles(PerLane::from_fn(lanes, || Held(Arc::new(Padded(group.clone())))))
    }

    /// The calling worker's handle, counted for the caller.
    pub fn mine(&self) -> Held {
        self.0.mine().clone()
    }
}

/// Counts a request as active on its endpoint until dropped.
#[derive(Debug)]
pub struct ActiveRequest {
    group: Held,
    index: usize,
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        if let Some(endpoint) = self.group.endpoints.get(self.index) {
            endpoint.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{Member, Rebuild};

    /// A group of one endpoint with one request slot, and a short wait for it.
    fn group() -> Arc<Upstream> {
        let text = "[[upstream]]\nname = \"g\"\nendpoints = [\"127.0.0.1:1\"]\nconnect_timeout = \"10ms\"\n\
                    pool = { max_connections = 1 }\n";
        let config = crate::config::parse(text).expect("config").upstreams.remove(0);
        let members = vec![Member::fixed("127.0.0.1:1".into(), ([127, 0, 0, 1], 1).into(), 1)];
        Arc::new(Upstream::new(config, members, None, 3, Rebuild::Load).expect("group"))
    }

    /// A request's slot is given back when its guard goes, and its handle keeps the group alive after the
    /// snapshot let go of it; each lane's handle is a count of its own, on lines of its own.
    #[tokio::test]
    async fn a_slot_lasts_as_long_as_its_guard_and_each_lane_counts_on_its_own() {
        let group = group();
        let handles = Handles::new(&group, 3);
        let lanes: Vec<usize> = handles.0.iter().map(|h| Arc::as_ptr(&h.0) as usize).collect();
        assert!(lanes.windows(2).all(|w| w[0].abs_diff(w[1]) >= 128), "{lanes:?}");

        let held = handles.mine();
        assert_eq!(Arc::strong_count(&held.0), 2, "the lane's handle and this request's");
        let active = held.acquire(0).await.expect("the one slot");
        assert!(held.acquire(0).await.is_err(), "beyond max_connections = 1");
        assert!(held.acquire(1).await.is_err(), "no endpoint 1");
        drop((held, handles));
        assert_eq!(group.endpoints[0].active_requests(), 1);
        assert_eq!(Arc::strong_count(&group), 2, "this test's and the request's, through its guard");
        drop(active);
        assert_eq!(group.endpoints[0].active_requests(), 0);
        assert_eq!(Arc::strong_count(&group), 1);
    }
}
