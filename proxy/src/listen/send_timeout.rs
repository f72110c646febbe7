//! The send timeout: a response body the client takes nothing of for `send_timeout` gives back what it holds
//! upstream (its pool slot, its upstream connection), like nginx's `send_timeout` (the time between two
//! successive writes, not a limit on the whole response). Time the body spends waiting for the upstream's
//! next bytes does not count: a slow upstream is `request_timeout`'s business, not the client's.
//!
//! Why from outside the body: a client that stops reading never lets the body be polled again. On HTTP/1 the
//! socket stays full, so hyper stops asking for data; on HTTP/2 a stream whose flow-control window is zero
//! (`INITIAL_WINDOW_SIZE = 0`) is never polled either, while the connection itself keeps working. So each
//! streamed upstream body is registered with its connection's [`Activity`](super::idle::Activity), which
//! already runs a deadline loop beside the connection: the body marks progress each time the client's side
//! takes a frame, and the loop finishes the body's guards (released as a failed body: the upstream connection
//! is closed, not pooled) once it has waited `send_timeout` since the last one. When the client reads again, the
//! upstream body has gone and the stream is reset (HTTP/2) or the connection closed (HTTP/1). Meanwhile the
//! request no longer counts as in flight, so `idle_timeout` closes a connection left with nothing else to do.
//! From an HTTP/2 upstream, whose connection is shared by many requests, the stalled answer's stream is dropped
//! (reset upstream): its unread data, counted against the connection's flow-control window until then, is
//! given back, or a few stalled readers would stop every answer on that connection.

use crate::body::{BodyGuard, ResponseBody};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One response body being sent to the client.
pub(super) struct Sending {
    /// When the connection's clock started; progress is kept as milliseconds since then.
    epoch: Instant,
    last_progress_ms: AtomicU64,
    /// The body's guards, until the body ends or stalls.
    guards: Mutex<Option<Box<dyn BodyGuard>>>,
}

/// `last_progress_ms` while the body waits for the upstream: no send deadline runs then.
const WAITING_ON_UPSTREAM: u64 = u64::MAX;

/// Where a watched body stands.
pub(super) enum Deadline {
    /// It ended (or was abandoned): forget it.
    Ended,
    /// It waits for the upstream's next bytes, not for the client.
    WaitingOnUpstream,
    /// Abandoned at this instant unless the client takes more first.
    At(Instant),
}

impl Sending {
    pub(super) fn deadline(&self, send_timeout: Duration) -> Deadline {
        if self.guards.lock().is_none() {
            return Deadline::Ended;
        }
        match self.last_progress_ms.load(Ordering::Relaxed) {
            WAITING_ON_UPSTREAM => Deadline::WaitingOnUpstream,
            ms => Deadline::At(self.epoch + Duration::from_millis(ms) + send_timeout),
        }
    }

    /// Gives back what the body holds: the client did not take any of it for `send_timeout`.
    pub(super) fn abandon(&self) {
        let guards = self.guards.lock().take();
        if let Some(mut guards) = guards {
            guards.finish(false);
        }
    }

    /// A body under watch holding `guards`, for tests of the watcher.
    #[cfg(test)]
    pub(super) fn holding(epoch: Instant, guards: Box<dyn BodyGuard>) -> Arc<Sending> {
        let sending = Sending { epoch, last_progress_ms: AtomicU64::new(0), guards: Mutex::new(Some(guards)) };
        sending.mark(false);
        Arc::new(sending)
    }

    /// Notes that the client's side asked for more: the body waits for the upstream, or a frame was handed over.
    pub(super) fn mark(&self, waiting_on_upstream: bool) {
        let ms = if waiting_on_upstream {
            WAITING_ON_UPSTREAM
        } else {
            let elapsed = crate::clock::tokio_now().saturating_duration_since(self.epoch);
            u64::try_from(elapsed.as_millis()).unwrap_or(WAITING_ON_UPSTREAM - 1)
        };
        self.last_progress_ms.store(ms, Ordering::Relaxed);
    }
}

/// Moves a streamed body's guards into a [`Sending`] the connection watches, and leaves in their place a guard
/// that marks progress and finishes them when the body ends. Bodies without guards are left alone.
pub(super) fn watch(body: &mut ResponseBody, epoch: Instant) -> Option<Arc<Sending>> {
    if !body.holds_upstream() {
        return None;
    }
    let slot = body.guard_slot()?;
    let guards = slot.take()?;
    let sending = Arc::new(Sending { epoch, last_progress_ms: AtomicU64::new(0), guards: Mutex::new(Some(guards)) });
    sending.mark(false);
    *slot = Some(Box::new(Watched(sending.clone())));
    Some(sending)
}

struct Watched(Arc<Sending>);

impl BodyGuard for Watched {
    fn finish(&mut self, ok: bool) {
        let guards = self.0.guards.lock().take();
        if let Some(mut guards) = guards {
            guards.finish(ok);
        }
    }

    fn progress(&mut self, handed: Option<usize>) {
        self.0.mark(handed.is_none());
    }
}
