//! Connection deadlines that hyper does not enforce by itself. hyper's HTTP/1 `header_read_timeout` starts
//! only once hyper parses, so the time before that (TLS handshake aside: the version detection of the
//! auto builder, which waits for 24 bytes of a possible HTTP/2 preface) had no bound, and HTTP/2 has no idle
//! timeout at all: its keep-alive pings only find dead peers, and they keep an idle connection busy.
//!
//! So the connection is watched from outside hyper, the same way for both versions, by counting requests:
//! until the first request head arrives the connection has `header_read_timeout` from accept; afterwards,
//! whenever no request is in flight (a request is in flight from its head until its response body ends, or
//! until the response head for complete bodies Portico makes itself) for `idle_timeout`, the connection is
//! closed. Streamed bodies without an end hook (local streams, plugin-filtered bodies) keep the connection
//! from ever idling out, so they are never cut off.
//! Counting requests rather than bytes means pings and other frames do not keep an idle connection open.
//!
//! The watcher sleeps until the earliest deadline it knows and looks again when it wakes; requests beginning
//! and ending do not wake it. Activity only ever moves a deadline later (a request in flight has none, and one
//! that ends starts a full `idle_timeout`), so a look at the old deadline finds the new one and sleeps on. Only a
//! deadline earlier than the one the watcher sleeps to wakes it (`idle_timeout` shorter than
//! `header_read_timeout`, or `send_timeout` shorter than `idle_timeout`). Waking it on every request cost two
//! task wake-ups and two timer registrations per request.
//!
//! The same counts tell requests the client cancelled (see [`super::cancels`]).

use super::cancels;
use super::send_timeout::{self, Deadline, Sending};
use crate::body::{BodyGuard, ResponseBody};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A connection's deadlines.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From accept to the first request head.
    pub header_read: Duration,
    /// With no request in flight.
    pub idle: Duration,
    /// A response body the client takes nothing of (see [`super::send_timeout`]).
    pub send: Duration,
}

/// Request activity on one connection.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<State>,
    limits: Limits,
    /// Wakes the watcher when a deadline earlier than the one it sleeps to appears.
    changed: tokio::sync::Notify,
    /// When the connection was accepted: the clock streamed bodies mark their progress on.
    epoch: Instant,
    /// Response bodies streaming to the client, for the send timeout.
    sending: Mutex<Vec<Arc<Sending>>>,
    /// Raised when the client has cancelled too many requests.
    cancels: cancels::Alarm,
}

#[derive(Debug)]
struct State {
    requests: u64,
    in_flight: u64,
    /// Requests dropped before their response head (see [`super::cancels`]).
    cancelled: u64,
    /// Requests answered with a 4xx (a refusal costs the client a request and Portico nothing upstream): not
    /// counted among the requests cancels are a share of, or a client could slip one cheap refused request
    /// between its resets and keep them at half.
    refused: u64,
    last_change: Instant,
    /// When the watcher looks next; `None` while it is looking (a deadline added then wakes it again).
    wake_at: Option<Instant>,
}

impl Activity {
    /// A freshly accepted connection under `limits`.
    pub fn new(limits: Limits) -> Self {
        let now = Instant::now();
        Activity {
            state: Mutex::new(State {
                requests: 0,
                in_flight: 0,
                cancelled: 0,
                refused: 0,
                last_change: now,
                wake_at: None,
            }),
            limits,
            changed: tokio::sync::Notify::new(),
            epoch: now,
            sending: Mutex::new(Vec::new()),
            cancels: cancels::Alarm::default(),
        }
    }
}

impl std::fmt::Debug for Sending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sending")
    }
}

impl Activity {
    /// A request head arrived; the returned guard ends the request when it is finished or dropped. (A request
    /// in flight has no deadline, so the watcher is left asleep.)
    pub fn begin(self: &Arc<Self>) -> InFlight {
        let mut s = self.state.lock();
        s.requests += 1;
        s.in_flight += 1;
        s.last_change = crate::clock::tokio_now();
        InFlight { activity: Some(self.clone()), next: None, answered: false }
    }

    fn end(&self) {
        self.ended(&mut self.state.lock());
    }

    /// A request ended before its response head: counted, in the same lock as its end, and the alarm raised
    /// when such requests become too many.
    fn cancel(&self) {
        let too_many = {
            let mut s = self.state.lock();
            s.cancelled += 1;
            self.ended(&mut s);
            cancels::too_many(s.cancelled, s.requests.saturating_sub(s.refused))
        };
        if too_many {
            self.cancels.raise();
        }
    }

    /// Whether the client has cancelled too many requests: the connection is closing, and takes no more.
    pub fn cancelled_too_many(&self) -> bool {
        self.cancels.is_raised()
    }

    /// Ready once the client has cancelled too many requests (see [`super::cancels`]).
    pub fn poll_too_many_cancels(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.cancels.poll_raised(cx)
    }

    fn ended(&self, s: &mut State) {
        s.in_flight = s.in_flight.saturating_sub(1);
        let now = crate::clock::tokio_now();
        s.last_change = now;
        if s.in_flight == 0 {
            self.deadline_added(s, now + self.limits.idle);
        }
    }

    /// Wakes the watcher if `at` comes before its next look (or it is looking now). Called under the state
    /// lock, which the watcher holds while it settles on its next look, so no deadline slips between the two.
    fn deadline_added(&self, s: &State, at: Instant) {
        if s.wake_at.is_none_or(|wake| at < wake) {
            self.changed.notify_one();
        }
    }

    /// Puts a response body streaming from an upstream under the send timeout (see [`super::send_timeout`]).
    /// Call it last, once every guard that must end with the body is attached.
    pub fn watch_send(&self, body: &mut ResponseBody) {
        if let Some(sending) = send_timeout::watch(body, self.epoch) {
            {
                let mut list = self.sending.lock();
                // The watcher no longer looks at every request: ended bodies are forgotten here as well.
                list.retain(|s| !matches!(s.deadline(self.limits.send), Deadline::Ended));
                list.push(sending);
            }
            // The body's deadline is at least a full `send_timeout` away.
            let s = self.state.lock();
            self.deadline_added(&s, crate::clock::tokio_now() + self.limits.send);
        }
    }

    /// Resolves when the connection has waited too long for its first request head, or has been idle too long.
    /// Meanwhile it abandons response bodies the client has taken nothing of for `send_timeout`.
    pub async fn expired(&self) {
        let Limits { header_read, idle, send } = self.limits;
        loop {
            self.state.lock().wake_at = None;
            let now = Instant::now();
            let next_stall = self.abandon_stalled(now, send);
            let wake = {
                let mut s = self.state.lock();
                let limit = if s.requests == 0 { header_read } else { idle };
                let wake = if s.in_flight == 0 {
                    let at = s.last_change + limit;
                    if at <= now {
                        return;
                    }
                    at
                } else {
                    now + idle
                };
                let wake = next_stall.map_or(wake, |stall| stall.min(wake));
                s.wake_at = Some(wake);
                wake
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = self.changed.notified() => {}
            }
        }
    }

    /// Abandons the bodies past their send deadline and forgets ended ones; returns the next deadline.
    fn abandon_stalled(&self, now: Instant, send_timeout: Duration) -> Option<Instant> {
        let mut stalled = Vec::new();
        let mut next: Option<Instant> = None;
        self.sending.lock().retain(|sending| {
            let look = match sending.deadline(send_timeout) {
                Deadline::Ended => return false,
                Deadline::At(deadline) if deadline <= now => {
                    stalled.push(sending.clone());
                    return false;
                }
                Deadline::At(deadline) => deadline,
                // Its progress mark is only written, not announced: when the upstream's bytes arrive and the
                // client takes none, the next look here must come in time to set its deadline (which is then
                // exact: a send timeout after the bytes arrived).
                Deadline::WaitingOnUpstream => now + send_timeout,
            };
            next = Some(next.map_or(look, |n| n.min(look)));
            true
        });
        // Outside the list's lock: finishing a body's guards ends its request here.
        for sending in stalled {
            tracing::debug!(
                ?send_timeout,
                "send timeout: the client took nothing of a response body; its upstream connection is released"
            );
            sending.abandon();
        }
        next
    }
}

/// One request in flight; ends it when finished or dropped. Chains the body guard it replaces.
pub struct InFlight {
    activity: Option<Arc<Activity>>,
    next: Option<Box<dyn BodyGuard>>,
    /// Its response head was handed back: dropped before, the request was cancelled.
    answered: bool,
}

impl InFlight {
    /// The request is answered with a 4xx: see `State::refused`.
    pub fn refused(&self) {
        if let Some(activity) = &self.activity {
            activity.state.lock().refused += 1;
        }
    }

    /// The client broke off its request body (an HTTP/2 stream reset while the body was on its way, a
    /// connection closed inside it): a cancel, though Portico answered it (a 400 nobody reads). Not counted so,
    /// a reset sent once the request had gone upstream, its body still owed, cost the client nothing.
    pub fn broken_by_client(&self) {
        if let Some(activity) = &self.activity {
            let too_many = {
                let mut s = activity.state.lock();
                s.cancelled += 1;
                cancels::too_many(s.cancelled, s.requests.saturating_sub(s.refused))
            };
            if too_many {
                activity.cancels.raise();
            }
        }
    }

    /// Keeps the request in flight until the response body ends, when that body streams from an upstream;
    /// otherwise (an answer whole in memory) the request ends here.
    pub fn attach(mut self, body: &mut ResponseBody) {
        self.answered = true;
        // A plugin-filtered body streams from the task that runs the plugins: in flight until it ends or is
        // dropped, like an upstream's.
        let streams = body.holds_upstream() || matches!(body, ResponseBody::Filtered(..));
        if let Some(slot) = body.guard_slot().filter(|_| streams) {
            self.next = slot.take();
            *slot = Some(Box::new(self));
        } else if matches!(body, ResponseBody::Channel(_)) {
            // A local stream (the admin API's events; no listener answers with one) has no end hook: rather
            // than cut it off mid-body, the request stays in flight.
            self.activity = None;
        }
    }
}

impl BodyGuard for InFlight {
    fn finish(&mut self, ok: bool) {
        if let Some(mut next) = self.next.take() {
            next.finish(ok);
        }
        if let Some(activity) = self.activity.take() {
            activity.end();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        match self.activity.take() {
            Some(activity) if self.answered => activity.end(),
            Some(activity) => activity.cancel(),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(header_read: u64, idle: u64) -> Arc<Activity> {
        let ms = Duration::from_millis;
        Arc::new(Activity::new(Limits { header_read: ms(header_read), idle: ms(idle), send: ms(60_000) }))
    }

    /// Runs the watcher; resolves to how long after `start` it said the connection expired.
    fn watch(activity: &Arc<Activity>, start: Instant) -> tokio::task::JoinHandle<Duration> {
        let activity = activity.clone();
        tokio::spawn(async move {
            activity.expired().await;
            start.elapsed()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_timeout_shorter_than_the_header_timeout_wakes_the_sleeping_watcher() {
        let start = Instant::now();
        let a = activity(10_000, 1_000);
        let watcher = watch(&a, start);
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(a.begin());
        assert_eq!(watcher.await.ok(), Some(Duration::from_millis(1_500)));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_move_the_idle_deadline_without_waking_the_watcher_early() {
        let start = Instant::now();
        let a = activity(10_000, 1_000);
        let watcher = watch(&a, start);
        for _ in 0..6 {
            let request = a.begin();
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(request);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The last request ended at 2.8 s: idle from then on.
        assert_eq!(watcher.await.ok(), Some(Duration::from_millis(3_800)));
    }

    /// Notes when the watcher gave its body up.
    struct GivenUp(Arc<Mutex<Option<Instant>>>);

    impl BodyGuard for GivenUp {
        fn finish(&mut self, ok: bool) {
            assert!(!ok, "given up, not ended");
            *self.0.lock() = Some(Instant::now());
        }
    }

    /// A body that waited for its upstream's bytes, got them, and whose client takes none, is given up a send
    /// timeout after they came: the watcher is not told of that progress (a mark, written per frame), so it
    /// must look again in time. It slept until the idle timeout and held an HTTP/2 upstream's window that long.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_waiting_on_its_upstream_is_given_up_a_send_timeout_after_its_bytes_came() {
        let (start, ms) = (Instant::now(), Duration::from_millis);
        let a = Arc::new(Activity::new(Limits { header_read: ms(10_000), idle: ms(60_000), send: ms(1_000) }));
        let _request = a.begin();
        let given_up = Arc::new(Mutex::new(None));
        let sending = Sending::holding(a.epoch, Box::new(GivenUp(given_up.clone())));
        sending.mark(true);
        a.sending.lock().push(sending.clone());
        let _watcher = watch(&a, start);
        tokio::time::sleep(ms(2_500)).await;
        assert_eq!(*given_up.lock(), None, "waiting on the upstream is not the client's fault");
        sending.mark(false);
        tokio::time::sleep(ms(5_000)).await;
        assert_eq!(*given_up.lock(), Some(start + ms(3_500)));
    }

    #[tokio::test(start_paused = true)]
    async fn no_request_means_the_header_read_timeout() {
        let start = Instant::now();
        let a = activity(2_000, 60_000);
        assert_eq!(watch(&a, start).await.ok(), Some(Duration::from_millis(2_000)));
    }
}
