//! The CPU budget of one callback, and the epoch tick it is counted in.
//!
//! Wasmtime's epoch deadline counts wall-clock ticks: alone it would interrupt a callback whose thread was
//! starved of CPU by other processes, or that waited in a blocking hostcall, having itself used little CPU. So
//! the epoch deadline is first set one tick ahead. A callback shorter than that (nearly all) never hears of it;
//! when it fires, the thread's CPU clock is read, and from then on each time the deadline fires the CPU the
//! callback used since that reading is compared with its budget: it is interrupted once the budget is spent,
//! else the deadline moves to the earliest time the rest could be. The CPU spent before the first reading
//! (under one tick) is not counted: the budget is kept to within a tick, as the epoch's granularity allows.

use std::time::Duration;

use wasmtime::UpdateDeadline;

/// How often the engine's background thread advances the epoch; CPU deadlines are counted in these ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The budget of the callback running in a store (kept in its host state).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuBudget {
    limit: Duration,
    /// The thread's CPU clock when counting began; `None` until the first deadline of the callback.
    counted_from: Option<Duration>,
}

impl CpuBudget {
    /// A fresh budget for the next callback; arm the store's epoch deadline 1 tick ahead with it.
    pub(crate) fn new(limit: Duration) -> Self {
        CpuBudget { limit, counted_from: None }
    }

    /// What to do when the epoch deadline fires: interrupt (a `Trap::Interrupt`, classified as a timeout) once
    /// the budget is spent, else extend the deadline.
    pub(crate) fn on_deadline(&mut self) -> UpdateDeadline {
        let now = thread_cpu_time();
        let Some(from) = self.counted_from else {
            self.counted_from = Some(now);
            return UpdateDeadline::Continue(ticks_for(self.limit));
        };
        let used = now.saturating_sub(from);
        if used >= self.limit {
            return UpdateDeadline::Interrupt;
        }
        UpdateDeadline::Continue(ticks_for(self.limit - used))
    }
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`; a system call, so only read when an
/// epoch deadline fires).
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}

fn ticks_for(d: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos().max(1);
    u64::try_from(d.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX / 2).max(1) + 1
}
