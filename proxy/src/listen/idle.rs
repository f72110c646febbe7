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

use super::send_timeout::{self, Deadline, Sending};
use crate::body::{BodyGuard, ResponseBody};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Request activity on one connection.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<State>,
    /// Wakes the watcher when a request begins or ends, so it recomputes its deadline.
    changed: tokio::sync::Notify,
    /// When the connection was accepted: the clock streamed bodies mark their progress on.
    epoch: Instant,
    /// Response bodies streaming to the client, for the send timeout.
    sending: Mutex<Vec<Arc<Sending>>>,
}

#[derive(Debug)]
struct State {
    requests: u64,
    in_flight: u64,
    last_change: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        let now = Instant::now();
        Activity {
            state: Mutex::new(State { requests: 0, in_flight: 0, last_change: now }),
            changed: tokio::sync::Notify::new(),
            epoch: now,
            sending: Mutex::new(Vec::new()),
        }
    }
}

impl std::fmt::Debug for Sending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sending")
    }
}

impl Activity {
    /// A request head arrived; the returned guard ends the request when it is finished or dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        let mut s = self.state.lock();
        s.requests += 1;
        s.in_flight += 1;
        s.last_change = Instant::now();
        self.changed.notify_one();
        InFlight { activity: Some(self.clone()), next: None }
    }

    fn end(&self) {
        let mut s = self.state.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        s.last_change = Instant::now();
        self.changed.notify_one();
    }

    /// Puts a response body streaming from an upstream under the send timeout (see [`super::send_timeout`]).
    /// Call it last, once every guard that must end with the body is attached.
    pub fn watch_send(&self, body: &mut ResponseBody) {
        if let Some(sending) = send_timeout::watch(body, self.epoch) {
            self.sending.lock().push(sending);
            self.changed.notify_one();
        }
    }

    /// Resolves when the connection has waited too long for its first request head, or has been idle too long.
    /// Meanwhile it abandons response bodies the client has taken nothing of for `send_timeout`.
    pub async fn expired(&self, header_read_timeout: Duration, idle_timeout: Duration, send_timeout: Duration) {
        loop {
            let now = Instant::now();
            let next_stall = self.abandon_stalled(now, send_timeout);
            let wake = {
                let s = self.state.lock();
                let limit = if s.requests == 0 { header_read_timeout } else { idle_timeout };
                if s.in_flight == 0 {
                    let at = s.last_change + limit;
                    if at <= now {
                        return;
                    }
                    at
                } else {
                    now + idle_timeout
                }
            };
            let wake = next_stall.map_or(wake, |stall| stall.min(wake));
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
        self.sending.lock().retain(|sending| match sending.deadline(send_timeout) {
            Deadline::Ended => false,
            Deadline::WaitingOnUpstream => true,
            Deadline::At(deadline) if deadline <= now => {
                stalled.push(sending.clone());
                false
            }
            Deadline::At(deadline) => {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
                true
            }
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
}

impl InFlight {
    /// Keeps the request in flight until the response body ends, when that body streams from an upstream;
    /// otherwise the request ends here.
    pub fn attach(mut self, body: &mut ResponseBody) {
        if let Some(slot) = body.guard_slot() {
            self.next = slot.take();
            *slot = Some(Box::new(self));
        } else if matches!(body, ResponseBody::Channel(_) | ResponseBody::Filtered(_)) {
            // A local stream or a plugin-filtered body has no end hook: rather than cut it off mid-body, the
            // request stays in flight, and this connection is not idle-timed out any more.
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
        if let Some(activity) = self.activity.take() {
            activity.end();
        }
    }
}
