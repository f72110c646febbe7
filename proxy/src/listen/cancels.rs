//! Requests the client cancels, counted per connection, against HTTP/2 "rapid reset" (CVE-2023-44487): a
//! client opens a stream and resets it at once, over and over. hyper bounds only resets of streams it has not
//! yet handed to the service (`max_pending_accept_reset_streams`); a stream reset once its request is under way
//! is free to the client and costs Portico an upstream request, often a fresh upstream connection (an HTTP/1
//! upstream connection whose request was abandoned is closed). Streams the client resets no longer count
//! against its concurrent-stream limit, so one connection kept hundreds of upstream requests going at once.
//!
//! So, as nginx and Envoy do, a connection is bounded in the requests it cancels whatever their stream's
//! state: a request is cancelled when its service future is dropped before its response head is handed back.
//! A few are normal (a browser cancels navigations and prefetches), so cancels are free while they are few
//! in number or a small share of the connection's requests (requests answered 4xx not counted: a cheap
//! refused request between resets would otherwise keep their share at half; but a request whose body the
//! client broke off, answered 400 by Portico, is a cancel: a reset sent while the body was owed); past both
//! the connection is
//! asked to close gracefully (a GOAWAY on HTTP/2: the requests in flight finish), and is closed outright
//! [`CLOSE_WITHIN`] later if it has not ended by then. Meanwhile every new request on it is answered 429 by
//! Portico itself: an HTTP/2 graceful close takes new streams until the client answers its PING, and a client
//! that never did had thousands more requests sent upstream in those two seconds.

use futures_util::task::AtomicWaker;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

/// Cancels a connection may make whatever its other requests.
pub const FREE_CANCELS: u64 = 100;

/// How long a connection asked to close for its cancels has to finish its requests before it is closed
/// outright: an HTTP/2 graceful shutdown (GOAWAY, PING, final GOAWAY) never completes if the client does not
/// answer the PING, and until then new streams are still taken.
pub const CLOSE_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether `cancelled` requests of the `requests` a connection started are too many: more than
/// [`FREE_CANCELS`] and more than half.
pub fn too_many(cancelled: u64, requests: u64) -> bool {
    cancelled > FREE_CANCELS && cancelled.saturating_mul(2) > requests
}

/// Raised once when a connection's cancels become too many; the task serving the connection waits on it.
/// An atomic flag and waker rather than a `Notify`: the serving task looks at it on each of its wake-ups, and
/// a look here is a load and (when the waker is unchanged) a compare, with no lock.
#[derive(Debug, Default)]
pub struct Alarm {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Alarm {
    /// Raises the alarm and wakes the serving task.
    pub fn raise(&self) {
        if !self.raised.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Whether the alarm was raised.
    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Relaxed)
    }

    /// Ready once the alarm is raised.
    pub fn poll_raised(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.raised.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Raised between the first look and the registration: its wake went to the waker registered before.
        if self.raised.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_cancels_or_a_small_share_are_free() {
        assert!(!too_many(FREE_CANCELS, FREE_CANCELS));
        assert!(!too_many(150, 300), "half of the requests, no more");
        assert!(too_many(150, 299));
        assert!(too_many(FREE_CANCELS + 1, FREE_CANCELS + 1));
        assert!(!too_many(1_000, 10_000));
    }
}
