//! The CPU budget of one callback, and the epoch clock it is counted by.
//!
//! Wasmtime's epoch deadline counts wall-clock ticks: alone it would interrupt a callback whose thread was
//! starved of CPU by other processes, or that waited in a blocking hostcall, having itself used little CPU. So
//! the epoch deadline is first set one tick ahead. A callback shorter than that (nearly all) never hears of it;
//! when it fires, the thread's CPU clock is read, and from then on at every tick the CPU the callback used
//! since that reading is compared with its budget: it is interrupted once the budget is spent. The CPU spent
//! before the first reading (under one [`IDLE_TICK`]) is not counted.
//!
//! The clock ticks slowly while no callback is being counted and fast while one is: a thread woken a thousand
//! times a second costs a loaded proxy about 2 % of its CPU (~17 µs a wake-up on these machines) and an idle
//! one 1.7 % of a core, for deadlines that only a runaway callback ever meets. A callback that starts being
//! counted wakes the clock, so its budget is then checked every [`CHECK_TICK`].
//!
//! And it stops while no callback runs: after [`QUIET_TICKS`] ticks in which no callback was armed and none
//! is counted, it sleeps (looking again every [`ASLEEP_LOOK`] at most) until a callback is armed. An idle
//! proxy with plugins then wakes as rarely as one without (it woke 200 times a second). A callback armed
//! while the clock sleeps wakes it, so its budget is kept as if the clock had been ticking; one armed before
//! the clock's last tick has its first deadline behind it, and reaching it (being counted) wakes the clock.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::Duration;

use wasmtime::{Engine, UpdateDeadline};

/// How often the epoch advances while no callback is being counted: the most CPU a callback can use before
/// its budget starts being counted.
pub(crate) const IDLE_TICK: Duration = Duration::from_millis(5);

/// How often the epoch advances while a callback is being counted: how finely its budget is kept.
pub(crate) const CHECK_TICK: Duration = Duration::from_millis(1);

/// Ticks in a row with no callback armed after which the clock sleeps (100 ms at [`IDLE_TICK`]): under
/// steady traffic, however light, it keeps ticking, so a callback does not pay a wake-up system call.
pub(crate) const QUIET_TICKS: u32 = 20;

/// How long the sleeping clock waits before it looks again by itself, whatever wakes it or not: a bound for
/// the case this design says cannot happen (a callback whose deadline lies ahead of a sleeping clock).
pub(crate) const ASLEEP_LOOK: Duration = Duration::from_secs(1);

/// The engine's epoch clock: its thread advances the epoch while any plugin is loaded and callbacks run
/// (with no plugin no guest code can run, and it sleeps until one is loaded; with no callback for
/// [`QUIET_TICKS`] ticks it sleeps until one is armed), every [`CHECK_TICK`] while a callback is being
/// counted and every [`IDLE_TICK`] otherwise.
#[derive(Debug)]
pub(crate) struct EpochClock {
    stop: AtomicBool,
    plugins: AtomicUsize,
    /// Callbacks (on any thread) whose budget is being counted.
    counting: AtomicUsize,
    /// A callback was armed since the clock last looked. Written only when false, so a loaded proxy's
    /// callbacks read it (a cache line no one writes between two ticks) and write it once a tick.
    armed: AtomicBool,
    /// The clock is asleep (or about to be): the callback that arms one next wakes it.
    asleep: AtomicBool,
    /// [`ASLEEP_LOOK`] in milliseconds (longer in a test that must tell a wake-up from a look).
    look_ms: AtomicU64,
    /// Epochs advanced so far.
    ticks: AtomicU64,
    /// The clock's thread, to wake it.
    thread: OnceLock<Thread>,
}

impl Default for EpochClock {
    fn default() -> Self {
        EpochClock {
            stop: AtomicBool::new(false),
            plugins: AtomicUsize::new(0),
            counting: AtomicUsize::new(0),
            armed: AtomicBool::new(false),
            asleep: AtomicBool::new(false),
            look_ms: AtomicU64::new(ASLEEP_LOOK.as_millis() as u64),
            ticks: AtomicU64::new(0),
            thread: OnceLock::new(),
        }
    }
}

impl EpochClock {
    /// Runs the clock on the calling thread until [`EpochClock::stop`].
    pub(crate) fn run(&self, engine: &Engine) {
        let _ = self.thread.set(std::thread::current());
        let mut quiet = 0u32;
        while !self.stop.load(Ordering::Acquire) {
            // An unpark that comes before the park makes it return at once, so a plugin loaded (or a callback
            // counted) between the load and the park is not missed.
            if self.plugins.load(Ordering::Acquire) == 0 {
                std::thread::park();
                continue;
            }
            if self.counting.load(Ordering::Acquire) > 0 {
                std::thread::sleep(CHECK_TICK);
            } else {
                std::thread::park_timeout(IDLE_TICK);
            }
            engine.increment_epoch();
            self.ticks.fetch_add(1, Ordering::Relaxed);
            quiet = if self.armed.swap(false, Ordering::SeqCst) { 0 } else { quiet.saturating_add(1) };
            // Still quiet after a look (nothing armed since): back to sleep at once, so an idle clock
            // ticks once a look, not [`QUIET_TICKS`] times.
            if quiet >= QUIET_TICKS && self.counting.load(Ordering::SeqCst) == 0 {
                self.sleep();
            }
        }
    }

    /// Sleeps until a callback is armed or counted (or a stop, or the next look). A callback armed before
    /// the last [`QUIET_TICKS`] ticks has its first deadline (one tick past the epoch it read when armed,
    /// before it flagged `armed`) behind the epoch now: if it still runs it will be counted and wake the
    /// clock. One armed from here on sees `asleep`, or is seen in `armed`: both sides write their flag before
    /// reading the other's, so at least one of them sees the other.
    fn sleep(&self) {
        self.asleep.store(true, Ordering::SeqCst);
        if !self.armed.load(Ordering::SeqCst)
            && self.counting.load(Ordering::SeqCst) == 0
            && !self.stop.load(Ordering::SeqCst)
        {
            std::thread::park_timeout(Duration::from_millis(self.look_ms.load(Ordering::Relaxed)));
        }
        self.asleep.store(false, Ordering::SeqCst);
    }

    /// A callback is about to run (its deadline just armed): wakes the clock if it sleeps. One load of a
    /// flag no one writes while callbacks keep coming; the store and wake only for the first callback after
    /// the clock looked.
    #[inline]
    pub(crate) fn armed(&self) {
        if !self.armed.load(Ordering::SeqCst) {
            self.armed.store(true, Ordering::SeqCst);
            if self.asleep.load(Ordering::SeqCst) {
                self.wake();
            }
        }
    }

    fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// Ends [`EpochClock::run`].
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
    }

    /// A plugin was loaded: the clock runs while any is.
    pub(crate) fn plugin_loaded(&self) {
        if self.plugins.fetch_add(1, Ordering::AcqRel) == 0 {
            self.wake();
        }
    }

    pub(crate) fn plugin_dropped(&self) {
        self.plugins.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether the clock sleeps (see [`EpochClock::sleep`]).
    pub(crate) fn is_asleep(&self) -> bool {
        self.asleep.load(Ordering::SeqCst)
    }

    /// Sets how long the sleeping clock waits before it looks again by itself (see [`ASLEEP_LOOK`]).
    pub(crate) fn set_look(&self, look: Duration) {
        self.look_ms.store(u64::try_from(look.as_millis()).unwrap_or(u64::MAX).max(1), Ordering::Relaxed);
    }

    /// How many times the epoch has advanced.
    pub(crate) fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Whether a callback is being counted (the clock ticks every [`CHECK_TICK`]).
    #[cfg(test)]
    fn is_counting(&self) -> bool {
        self.counting.load(Ordering::Acquire) > 0
    }
}

/// The budget of the callback running in a store (kept in its host state).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuBudget {
    limit: Duration,
    /// The thread's CPU clock when counting began; `None` until the first deadline of the callback.
    counted_from: Option<Duration>,
}

impl CpuBudget {
    /// A fresh budget for the next callback; arm the store's epoch deadline 1 tick ahead with it, and
    /// [`CpuBudget::end`] it when the callback returns.
    pub(crate) fn new(limit: Duration) -> Self {
        CpuBudget { limit, counted_from: None }
    }

    /// What to do when the epoch deadline fires: interrupt (a `Trap::Interrupt`, classified as a timeout) once
    /// the budget is spent, else look again at the next tick.
    pub(crate) fn on_deadline(&mut self, clock: &EpochClock) -> UpdateDeadline {
        let now = thread_cpu_time();
        let Some(from) = self.counted_from else {
            self.counted_from = Some(now);
            if clock.counting.fetch_add(1, Ordering::AcqRel) == 0 {
                clock.wake();
            }
            return UpdateDeadline::Continue(1);
        };
        if now.saturating_sub(from) >= self.limit {
            return UpdateDeadline::Interrupt;
        }
        UpdateDeadline::Continue(1)
    }

    /// The callback returned (or was interrupted): it is no longer counted.
    #[inline]
    pub(crate) fn end(&mut self, clock: &EpochClock) {
        if self.counted_from.take().is_some() {
            clock.counting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`; a system call, so only read when an
/// epoch deadline fires).
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_callback_is_counted_from_its_first_deadline_until_it_ends() {
        let clock = EpochClock::default();
        let mut budget = CpuBudget::new(Duration::from_secs(60));
        assert!(!clock.is_counting());
        assert!(matches!(budget.on_deadline(&clock), UpdateDeadline::Continue(1)));
        assert!(clock.is_counting(), "counted from its first deadline: the clock ticks finely");
        assert!(matches!(budget.on_deadline(&clock), UpdateDeadline::Continue(1)));
        budget.end(&clock);
        assert!(!clock.is_counting());
        budget.end(&clock);
        assert!(!clock.is_counting(), "ending twice does not count down another callback");

        // Two at once (two threads): the clock ticks finely until both ended.
        let (mut a, mut b) = (CpuBudget::new(Duration::from_secs(60)), CpuBudget::new(Duration::from_secs(60)));
        let _ = (a.on_deadline(&clock), b.on_deadline(&clock));
        a.end(&clock);
        assert!(clock.is_counting());
        b.end(&clock);
        assert!(!clock.is_counting());
    }

    /// Polls `done` for up to 10 s (a bound only a broken clock reaches).
    fn eventually(what: &str, done: impl Fn() -> bool) {
        let from = std::time::Instant::now();
        while !done() {
            assert!(from.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn the_clock_sleeps_while_no_callback_runs_and_an_armed_or_counted_one_wakes_it() {
        let engine = Engine::new(wasmtime::Config::new().epoch_interruption(true)).expect("engine");
        // Looking again by itself only after an hour: the clock ticks again only if it is woken.
        let clock = Arc::new(EpochClock::default());
        clock.set_look(Duration::from_secs(3600));
        let runner = {
            let (clock, engine) = (clock.clone(), engine.clone());
            std::thread::spawn(move || clock.run(&engine))
        };
        clock.plugin_loaded();
        clock.armed();
        eventually("ticks while a callback was armed", || clock.ticks() > 0);
        let asleep = || clock.is_asleep();
        eventually("falls asleep with nothing armed", asleep);
        assert!(clock.ticks() >= u64::from(QUIET_TICKS), "after {QUIET_TICKS} quiet ticks: {}", clock.ticks());
        let before = clock.ticks();
        std::thread::sleep(Duration::from_millis(30));
        // One tick at most, should the clock's wait end early (the standard library allows it).
        assert!(clock.ticks() <= before + 1, "no ticks while asleep: {before} -> {}", clock.ticks());

        clock.armed();
        eventually("an armed callback wakes it", || clock.ticks() > before + 1);
        eventually("and it falls asleep again", asleep);

        // A callback armed just before the clock fell asleep is counted at its first deadline: that wakes it.
        let before = clock.ticks();
        let mut budget = CpuBudget::new(Duration::from_secs(60));
        let _ = budget.on_deadline(&clock);
        eventually("a counted callback wakes it", || clock.ticks() > before + 1);
        assert!(!asleep(), "awake while a callback is counted");
        budget.end(&clock);
        eventually("asleep once the counted callback ended", asleep);

        clock.stop();
        runner.join().expect("clock thread");
    }

    #[test]
    fn a_spent_budget_interrupts() {
        let clock = EpochClock::default();
        let mut budget = CpuBudget::new(Duration::from_millis(2));
        let _ = budget.on_deadline(&clock);
        let from = thread_cpu_time();
        let mut spin = 0u64;
        while thread_cpu_time().saturating_sub(from) < Duration::from_millis(3) {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        assert!(matches!(budget.on_deadline(&clock), UpdateDeadline::Interrupt));
        budget.end(&clock);
        assert!(!clock.is_counting());
    }
}
