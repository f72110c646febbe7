//! The retry budget: retries may add at most `percent` % to an upstream's traffic, plus `min_per_second`, so
//! a sick upstream sees a bounded extra load instead of `retries ×` every request (Envoy and Linkerd do the same).

use parking_lot::Mutex;
use std::time::Instant;

/// Token bucket fed by requests.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u32,
    min_per_second: u32,
    state: Mutex<BudgetState>,
}

#[derive(Debug)]
struct BudgetState {
    /// Earned by requests, in hundredths of a retry.
    earned: u64,
    /// Free retries left this second.
    floor_left: u32,
    floor_second: Instant,
}

impl RetryBudget {
    /// A budget of `percent` % of requests plus `min_per_second`.
    pub fn new(percent: u32, min_per_second: u32) -> Self {
        RetryBudget {
            percent,
            min_per_second,
            state: Mutex::new(BudgetState { earned: 0, floor_left: min_per_second, floor_second: Instant::now() }),
        }
    }

    /// Every first attempt earns `percent` hundredths of a retry (capped to a burst of 1,000 retries).
    pub fn deposit(&self) {
        let mut s = self.state.lock();
        s.earned = (s.earned + u64::from(self.percent)).min(100_000);
    }

    /// Takes one retry from the budget if there is one.
    pub fn withdraw(&self, now: Instant) -> bool {
        let mut s = self.state.lock();
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
        let budget = RetryBudget::new(20, 2);
        let now = Instant::now();
        for _ in 0..100 {
            budget.deposit();
        }
        let granted = (0..1000).filter(|_| budget.withdraw(now)).count();
        assert_eq!(granted, 20 + 2);
    }
}
