//! Whether a failed attempt gets another one ([`decide`], a pure function of what happened),
//! and the retry budget: retries may add only a fraction of the traffic.
//!
//! The rules: a request that never reached the server (refused before running, or not sent) is
//! always safe to send elsewhere; one that was written may have run, so it goes again only if
//! the call may be repeated (idempotent, or the client retries every call) and only with a token
//! from the budget. Never past the call's deadline, never beyond `max_attempts`, never after a
//! failure no other instance can change (the request cannot be encoded, or is too large).
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

/// What one failed attempt was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The request may have reached the server (it was written).
    pub(crate) written: bool,
    /// No other attempt can succeed (the request cannot be encoded, or is too large).
    pub(crate) fatal: bool,
}

/// Where the call stands after that failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Standing {
    /// The call may run twice: it is idempotent, or the client retries every call.
    pub(crate) repeatable: bool,
    /// Attempts made so far, this one included.
    pub(crate) attempts: usize,
    pub(crate) max_attempts: usize,
    /// The call's deadline has passed.
    pub(crate) out_of_time: bool,
}

/// What comes after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Fail the call with this attempt's error.
    Stop,
    /// Try another instance; `from_budget`: only with a token from the retry budget.
    Retry { from_budget: bool },
}

/// The retry decision, without side effects (the budget is asked by the caller, and only when
/// the decision says so, so a token is never spent on a call that stops anyway).
pub(crate) fn decide(failure: Failure, standing: Standing) -> Decision {
    if failure.fatal || standing.out_of_time || standing.attempts >= standing.max_attempts {
        return Decision::Stop;
    }
    match (failure.written, standing.repeatable) {
        (false, _) => Decision::Retry { from_budget: false },
        (true, true) => Decision::Retry { from_budget: true },
        (true, false) => Decision::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rule, as a table: (written, fatal, repeatable, attempts, out of time) -> decision.
    #[test]
    fn the_retry_decision_follows_the_rules() {
        use Decision::{Retry, Stop};
        let budget = Retry { from_budget: true };
        let free = Retry { from_budget: false };
        #[rustfmt::skip]
        let table = [
            // written, fatal, repeatable, attempts, out_of_time => decision
            (false, false, false, 1, false, free),   // never reached the server: always safe
            (false, false, true,  1, false, free),
            (true,  false, false, 1, false, Stop),   // may have run, and must not run twice
            (true,  false, true,  1, false, budget), // may run twice: costs a budget token
            (true,  false, true,  2, false, budget),
            (true,  false, true,  3, false, Stop),   // max_attempts (3) reached
            (false, false, false, 3, false, Stop),
            (false, false, false, 1, true,  Stop),   // past the deadline
            (true,  false, true,  1, true,  Stop),
            (false, true,  true,  1, false, Stop),   // fatal: no instance can change it
            (true,  true,  true,  1, false, Stop),
        ];
        for (written, fatal, repeatable, attempts, out_of_time, expected) in table {
            let failure = Failure { written, fatal };
            let standing = Standing {
                repeatable,
                attempts,
                max_attempts: 3,
                out_of_time,
            };
            assert_eq!(
                decide(failure, standing),
                expected,
                "{failure:?} {standing:?}"
            );
        }
    }

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
