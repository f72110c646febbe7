//! The retry budget: retries may add at most `percent` % to an upstream's traffic, plus `min_per_second`, so
//! a sick upstream sees a bounded extra load instead of `retries ×` every request (Envoy and Linkerd do the same).

use super::per_lane::PerLane;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Token bucket fed by requests. Every first attempt pays in, so the payments are counted per worker lane
/// (see [`super::per_lane`]) and taken into the bucket only when a retry asks for one: a request that is not
/// retried writes nothing another worker writes.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u32,
    min_per_second: u32,
    deposits: PerLane<AtomicU64>,
    state: Mutex<BudgetState>,
}

#[derive(Debug)]
struct BudgetState {
    /// Earned by requests, in hundredths of a retry.
    earned: u64,
    /// The deposits over all lanes already in `earned`.
    counted: u64,
    /// Free retries left this second.
    floor_left: u32,
    floor_second: Instant,
}

impl RetryBudget {
    /// A budget of `percent` % of requests plus `min_per_second`, its deposits counted on `lanes` lanes.
    pub fn new(percent: u32, min_per_second: u32, lanes: usize) -> Self {
        RetryBudget {
            percent,
            min_per_second,
            deposits: PerLane::new(lanes),
            state: Mutex::new(BudgetState {
                earned: 0,
                counted: 0,
                floor_left: min_per_second,
                floor_second: Instant::now(),
            }),
        }
    }

    /// Every first attempt earns `percent` hundredths of a retry (capped to a burst of 1,000 retries).
    pub fn deposit(&self) {
        self.deposits.mine().fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if there is one.
    pub fn withdraw(&self, now: Instant) -> bool {
        let mut s = self.state.lock();
        // Deposits only ever add, so capping once over all new ones is capping after each.
        let deposits = self.deposits.iter().map(|d| d.load(Ordering::Relaxed)).fold(0u64, u64::wrapping_add);
        let new = deposits.wrapping_sub(s.counted);
        s.counted = deposits;
        s.earned = s.earned.saturating_add(new.saturating_mul(u64::from(self.percent))).min(100_000);
        if now.duration_since(s.floor_second).as_secs() >= 1 {
            s.floor_second = now;
            s.floor_left = self.min_per_second;
        }
        if s.earned >= 100 {
            s.earned -= 100;
            true
        } else if s.floor_left > 0 {
            s.floor_left -= 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_bounded_by_percent_plus_floor() {
        let budget = RetryBudget::new(20, 2, 1);
        let now = Instant::now();
        for _ in 0..100 {
            budget.deposit();
        }
        let granted = (0..1000).filter(|_| budget.withdraw(now)).count();
        assert_eq!(granted, 20 + 2);
    }

    /// Deposits made on other threads count, and the burst cap holds however many arrived since the last
    /// withdrawal.
    #[test]
    fn deposits_from_every_thread_count_up_to_the_burst_cap() {
        let budget = std::sync::Arc::new(RetryBudget::new(20, 0, 2));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || (0..2_500).for_each(|_| budget.deposit()))
            })
            .collect();
        for thread in threads {
            assert!(thread.join().is_ok());
        }
        let now = Instant::now();
        assert_eq!((0..5_000).filter(|_| budget.withdraw(now)).count(), 1_000, "10,000 × 20 % capped at 1,000");
        (0..10).for_each(|_| budget.deposit());
        assert_eq!((0..10).filter(|_| budget.withdraw(now)).count(), 2, "new deposits count after the cap");
    }
}
