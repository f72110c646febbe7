//! One clock reading per poll of a connection's task, as nginx reads the time once per event-loop turn.
//!
//! A proxied request asked the clock about a dozen times (its start, the pool's idle check, the balancer, the
//! coarse timeout's slot, the connection's activity, the upstream's latency, the request's duration), each a
//! `clock_gettime` of a few dozen nanoseconds. A connection's task now reads it once each time it is polled
//! ([`Clocked`]) and the request path takes that reading ([`now`]); a poll lasts microseconds, far below what
//! any of those readers resolves. Outside such a poll [`now`] reads the clock.

use pin_project_lite::pin_project;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

thread_local! {
    static POLLED_AT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The time the current connection's task was polled at, or the clock's reading outside one.
pub fn now() -> Instant {
    POLLED_AT.try_with(Cell::get).ok().flatten().unwrap_or_else(Instant::now)
}

/// The same reading on tokio's clock, for deadlines kept with tokio's timers. In unit tests, tokio's own clock,
/// which they pause and advance.
pub fn tokio_now() -> tokio::time::Instant {
    #[cfg(not(test))]
    let now = tokio::time::Instant::from_std(now());
    #[cfg(test)]
    let now = tokio::time::Instant::now();
    now
}

pin_project! {
    /// A future that reads the clock once each time it is polled, for [`now`] to answer with meanwhile.
    pub struct Clocked<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Clocked<F> {
    /// `inner`, polled with a clock reading.
    pub fn new(inner: F) -> Self {
        Clocked { inner }
    }
}

impl<F: Future> Future for Clocked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let outer = POLLED_AT.try_with(|at| at.replace(Some(Instant::now()))).ok().flatten();
        let polled = self.project().inner.poll(cx);
        let _ = POLLED_AT.try_with(|at| at.set(outer));
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_poll_sees_one_reading_and_outside_polls_the_clock_is_read() {
        let outside = now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() > outside, "outside a clocked poll, the clock itself");
        let (first, second, after_yield) = Clocked::new(async {
            let first = now();
            std::thread::sleep(Duration::from_millis(2));
            let second = now();
            tokio::task::yield_now().await;
            (first, second, now())
        })
        .await;
        assert_eq!(first, second, "one reading for the whole poll");
        assert!(after_yield > second, "read again at the next poll");
        assert!(POLLED_AT.with(Cell::get).is_none(), "nothing left behind after the poll");
    }
}
