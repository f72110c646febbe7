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

/// A request's head while it is proxied: boxed, as plugins borrow it ([`portico_plugins::Head`]: lending it to
/// one moves a pointer, not its 224 bytes), in a box kept per thread like the maps. Its map and its box go
/// back to the thread's spares when it is dropped, on every way out of the proxying code. (A box allocated
/// and freed per request cost ~200 instructions: mimalloc takes its aligned path for Rust's allocations.)
/// An `Option` only so that dropping it can move the box out.
#[derive(Debug)]
pub struct GivenBack(Option<portico_plugins::Head>);

thread_local! {
    static SPARE_HEADS: RefCell<Vec<portico_plugins::Head>> = const { RefCell::new(Vec::new()) };
}

impl GivenBack {
    /// Holds `parts` in a kept box when the thread has one.
    pub fn new(parts: http::request::Parts) -> Self {
        match SPARE_HEADS.try_with(|spare| spare.borrow_mut().pop()).ok().flatten() {
            Some(mut head) => {
                *head = parts;
                GivenBack(Some(head))
            }
            None => GivenBack(Some(Box::new(parts))),
        }
    }

    /// The head (never absent before the drop; an empty one if it were).
    pub fn head(&mut self) -> &mut portico_plugins::Head {
        self.0.get_or_insert_with(|| Box::new(http::Request::new(()).into_parts().0))
    }
}

impl Drop for GivenBack {
    fn drop(&mut self) {
        let Some(mut head) = self.0.take() else { return };
        give_back(std::mem::take(&mut head.headers));
        // A kept box holds nothing of its request: its target may share the connection's read buffer, which
        // a spare must not keep alive until the thread's next request.
        head.uri = http::Uri::default();
        head.method = http::Method::GET;
        head.extensions.clear();
        let _ = SPARE_HEADS.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < KEPT {
                spare.push(head);
            }
        });
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

    /// A head's box is kept for the thread's next head, holding that head, with the map given back as well.
    #[test]
    fn a_head_given_back_leaves_its_box_and_map_for_the_next() {
        let parts = |path: &str| http::Request::get(path).header(HOST, "a").body(()).map(|r| r.into_parts().0);
        let Ok(first) = parts("/first") else { panic!("request") };
        let mut first = GivenBack::new(first);
        let address = &**first.head() as *const http::request::Parts as usize;
        first.head().extensions.insert(7u8);
        drop(first);
        let kept =
            SPARE_HEADS.with(|spare| spare.borrow().last().map(|h| (h.uri.path().to_string(), h.extensions.len())));
        assert_eq!(kept, Some(("/".to_string(), 0)), "the spare keeps nothing of its request");
        let Ok(second) = parts("/second") else { panic!("request") };
        let mut second = GivenBack::new(second);
        assert_eq!(&**second.head() as *const http::request::Parts as usize, address, "the same box");
        assert_eq!(second.head().uri.path(), "/second");
        assert_eq!(second.head().headers.get(HOST).map(|v| v.as_bytes()), Some(&b"a"[..]));
    }
}
