//! Coarse timeouts for the request path, in the shape of Pingora's `pingora-timeout`: a deadline is rounded up
//! to the next 10 ms, and all the timeouts of a thread that end in the same 10 ms wait on one shared slot (one
//! tokio timer, one `Notify`). A tokio `timeout` per request put an entry into the runtime's timer wheel and took
//! it out again, about 1,400 instructions a request; here a request finds its slot in a small map and waits on
//! it. A timeout fires up to 10 ms late, which no request timeout notices.

use pin_project_lite::pin_project;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How finely deadlines are kept.
const RESOLUTION: Duration = Duration::from_millis(10);
const RESOLUTION_NANOS: u64 = RESOLUTION.as_nanos() as u64;
const TICKS_PER_SECOND: u64 = 1_000_000_000 / RESOLUTION_NANOS;

/// The time given to a future ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// The timeouts of a thread that end in one 10 ms interval.
#[derive(Debug, Default)]
struct Slot {
    fired: AtomicBool,
    notify: Arc<Notify>,
}

/// A thread's pending slots by the interval they end in (counted from [`epoch`]).
type Slots = Arc<parking_lot::Mutex<BTreeMap<u64, Arc<Slot>>>>;

thread_local! {
    static SLOTS: Slots = Slots::default();
    /// The slot last handed out on this thread: under load, the next request's deadline nearly always ends in
    /// the same 10 ms, and this skips the map.
    static LAST: RefCell<Option<(u64, Arc<Slot>)>> = const { RefCell::new(None) };
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The slot of a deadline `after` from now; `None` for one too far away to represent (it never comes).
fn slot_for(after: Duration) -> Option<Arc<Slot>> {
    let epoch = epoch();
    let due = crate::clock::tokio_now().checked_add(after)?;
    // In whole seconds and nanoseconds: a `u128` division of `as_nanos()` costs a hundred instructions.
    let since = due.duration_since(epoch);
    let tick = since
        .as_secs()
        .checked_mul(TICKS_PER_SECOND)?
        .checked_add(u64::from(since.subsec_nanos()) / RESOLUTION_NANOS)?
        .checked_add(1)?;
    let at = epoch.checked_add(RESOLUTION.checked_mul(u32::try_from(tick).ok()?)?)?;
    let last = LAST.try_with(|last| match &*last.borrow() {
        Some((last_tick, slot)) if *last_tick == tick && !slot.fired.load(Ordering::Acquire) => Some(slot.clone()),
        _ => None,
    });
    if let Ok(Some(slot)) = last {
        return Some(slot);
    }
    let slot = SLOTS.with(|slots| {
        let mut map = slots.lock();
        if let Some(slot) = map.get(&tick) {
            return slot.clone();
        }
        let slot = Arc::new(Slot::default());
        map.insert(tick, slot.clone());
        let (slots, fire) = (slots.clone(), slot.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            slots.lock().remove(&tick);
            fire.fired.store(true, Ordering::Release);
            fire.notify.notify_waiters();
        });
        slot
    });
    let _ = LAST.try_with(|last| *last.borrow_mut() = Some((tick, slot.clone())));
    Some(slot)
}

/// Runs `future` for at most `after` (and up to 10 ms more).
pub fn timeout<F: Future>(after: Duration, future: F) -> Timeout<F> {
    Timeout { future, after, slot: None, wait: None }
}

pin_project! {
    /// A future with a coarse deadline; see [`timeout`].
    pub struct Timeout<F> {
        #[pin]
        future: F,
        after: Duration,
        slot: Option<Arc<Slot>>,
        #[pin]
        wait: Option<OwnedNotified>,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        // The deadline is looked up only once the future has to wait (nearly always, but never twice).
        if this.slot.is_none() {
            let Some(slot) = slot_for(*this.after) else { return Poll::Pending };
            this.wait.set(Some(slot.notify.clone().notified_owned()));
            *this.slot = Some(slot);
        }
        let notified = this.wait.as_pin_mut().is_some_and(|wait| wait.poll(cx).is_ready());
        // Registered first, then the flag read: a slot that fired in between is seen either way.
        if notified || this.slot.as_ref().is_some_and(|slot| slot.fired.load(Ordering::Acquire)) {
            return Poll::Ready(Err(Elapsed));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_future_that_finishes_in_time_is_answered_and_one_that_does_not_times_out() {
        let started = Instant::now();
        assert_eq!(timeout(Duration::from_millis(100), async { 7 }).await, Ok(7));
        let slow = tokio::time::sleep(Duration::from_secs(5));
        assert_eq!(timeout(Duration::from_millis(100), slow).await, Err(Elapsed));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(100) && waited <= Duration::from_millis(110), "{waited:?}");
        let in_time = tokio::time::sleep(Duration::from_millis(50));
        assert_eq!(timeout(Duration::from_millis(100), in_time).await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_ending_in_the_same_interval_share_a_slot_and_all_fire() {
        let waits: Vec<_> = (0..50)
            .map(|i| tokio::spawn(timeout(Duration::from_millis(1000 + i % 5), std::future::pending::<()>())))
            .collect();
        tokio::task::yield_now().await;
        let pending = SLOTS.with(|slots| slots.lock().len());
        assert!(pending <= 2, "{pending} slots for deadlines within 5 ms");
        for wait in waits {
            assert_eq!(wait.await.ok(), Some(Err(Elapsed)));
        }
        assert_eq!(SLOTS.with(|slots| slots.lock().len()), 0, "fired slots are forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_too_far_away_never_comes() {
        let never = timeout(Duration::MAX, async { 1 });
        assert_eq!(never.await, Ok(1));
        let pending = timeout(Duration::MAX, std::future::pending::<()>());
        assert!(tokio::time::timeout(Duration::from_secs(3600), pending).await.is_err());
    }
}
