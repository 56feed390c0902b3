//! The retry budget: retries may add only a fraction of the traffic.
//!
//! Why a budget and not just a maximum number of attempts: with `max_attempts = 3`, a service
//! that starts failing every call suddenly gets three times its load, just when it can least
//! take it. A budget lets retries through while they are rare (each call earns a fraction of a
//! retry) and stops them when failures are common, as Finagle and tower do.

use std::sync::atomic::{AtomicI64, Ordering};

const UNIT: i64 = 1000;

#[derive(Debug)]
pub(crate) struct RetryBudget {
    /// Retries available, in thousandths.
    balance: AtomicI64,
    earned_per_call: i64,
    max_balance: i64,
}

impl RetryBudget {
    /// Each call earns `ratio` of a retry; `reserve` retries are available from the start, and
    /// the balance never exceeds `reserve + 100`, so a long quiet spell cannot fund a storm.
    pub(crate) fn new(ratio: f64, reserve: u32) -> Self {
        RetryBudget {
            balance: AtomicI64::new(reserve as i64 * UNIT),
            earned_per_call: (ratio * UNIT as f64) as i64,
            max_balance: (reserve as i64 + 100) * UNIT,
        }
    }

    pub(crate) fn deposit(&self) {
        // Full, as it is while calls succeed: a read, not a write every core must see.
        if self.balance.load(Ordering::Relaxed) >= self.max_balance {
            return;
        }
        let _ = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |balance| {
                (balance < self.max_balance)
                    .then(|| (balance + self.earned_per_call).min(self.max_balance))
            });
    }

    /// Takes one retry from the budget; false if there is none.
    pub(crate) fn withdraw(&self) -> bool {
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |balance| {
                (balance >= UNIT).then_some(balance - UNIT)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_at_the_ratio_of_calls_plus_the_reserve() {
        let budget = RetryBudget::new(0.2, 5);
        let mut retries = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.withdraw() {
                retries += 1;
            }
        }
        // 5 from the reserve and 0.2 per call.
        assert_eq!(retries, 205);
    }

    #[test]
    fn an_empty_budget_refuses() {
        let budget = RetryBudget::new(0.0, 1);
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
    }
}
