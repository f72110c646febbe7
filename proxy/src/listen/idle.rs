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
}

#[derive(Debug)]
struct State {
    requests: u64,
    in_flight: u64,
    last_change: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            state: Mutex::new(State { requests: 0, in_flight: 0, last_change: Instant::now() }),
            changed: tokio::sync::Notify::new(),
        }
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

    /// Resolves when the connection has waited too long for its first request head, or has been idle too long.
    pub async fn expired(&self, header_read_timeout: Duration, idle_timeout: Duration) {
        loop {
            let wake = {
                let s = self.state.lock();
                if s.requests == 0 {
                    s.last_change + header_read_timeout
                } else if s.in_flight == 0 {
                    s.last_change + idle_timeout
                } else {
                    Instant::now() + idle_timeout
                }
            };
            if wake <= Instant::now() {
                let s = self.state.lock();
                if s.in_flight == 0 {
                    return;
                }
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = self.changed.notified() => continue,
            }
            let s = self.state.lock();
            let limit = if s.requests == 0 { header_read_timeout } else { idle_timeout };
            if s.in_flight == 0 && s.last_change.elapsed() >= limit {
                return;
            }
        }
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
