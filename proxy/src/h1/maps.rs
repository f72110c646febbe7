//! Header maps kept for reuse on their worker thread.
//!
//! Every request through the own HTTP/1 server builds two `HeaderMap`s, the client's request and the
//! upstream's answer, and drops both once their heads are written: two allocations and two frees each, and
//! their index tables set up again, about 1,200 instructions a request. A map given back here is cleared (its
//! fields dropped, its tables kept) and handed to the next head parsed on the same thread.

use http::HeaderMap;
use std::cell::RefCell;

/// Maps kept per thread: about as many as heads in flight on a worker at once.
const KEPT: usize = 64;

/// Larger maps are freed rather than kept: a head with many fields should not pin its tables.
const LARGEST_KEPT: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map for a head of about `fields` fields: a kept one when the thread has one.
pub fn take(fields: usize) -> HeaderMap {
    SPARE.try_with(|spare| spare.borrow_mut().pop()).ok().flatten().unwrap_or_else(|| HeaderMap::with_capacity(fields))
}

/// Gives a map back once its head is written; it is cleared now and kept if there is room.
pub fn give_back(mut map: HeaderMap) {
    if map.capacity() > LARGEST_KEPT {
        return;
    }
    map.clear();
    let _ = SPARE.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < KEPT {
            spare.push(map);
        }
    });
}

/// A request's head while it is proxied: its map goes back to the thread's spares when the head is dropped,
/// on every way out of the proxying code.
#[derive(Debug)]
pub struct GivenBack(pub http::request::Parts);

impl Drop for GivenBack {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.0.headers));
    }
}

impl std::ops::Deref for GivenBack {
    type Target = http::request::Parts;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for GivenBack {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HOST, USER_AGENT};
    use http::HeaderValue;

    #[test]
    fn a_map_given_back_comes_back_empty_and_large_ones_are_not_kept() {
        let mut map = take(4);
        map.append(HOST, HeaderValue::from_static("a"));
        map.append(USER_AGENT, HeaderValue::from_static("b"));
        give_back(map);
        let again = take(4);
        assert!(again.is_empty(), "{again:?}");
        assert!(again.capacity() >= 2, "the tables are kept");
        let mut big = HeaderMap::new();
        for i in 0..100 {
            big.append(http::HeaderName::from_bytes(format!("x-{i}").as_bytes()).expect("name"), HeaderValue::from(i));
        }
        give_back(big);
        assert!(take(4).capacity() < 100, "a large map is freed, not kept");
    }
}
