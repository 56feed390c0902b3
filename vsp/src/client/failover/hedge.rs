//! Hedged calls: a second attempt of an idempotent call, sent to another instance when the
//! first has not answered after a delay; the first answer wins and the other attempt is
//! cancelled (dropping its pending call sends a cancel frame to servers that read them).
//!
//! Why within the retry budget: a hedge is extra load sent exactly when an instance is slow; a
//! budget token per hedge keeps hedging from doubling the traffic of a service that is slow
//! everywhere (as gRPC's hedging policy is throttled by its retry throttling).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::{Attempt, AttemptFailure, Call};
use crate::client::connection::RawResponse;
use crate::client::VspClient;
use crate::instance::Instance;

pub(in crate::client) type Outcome = Result<(RawResponse, Instant), AttemptFailure>;

/// What a hedged attempt came to.
pub(in crate::client) struct Hedged {
    /// The instance whose outcome this is.
    pub(in crate::client) by: Arc<Instance>,
    pub(in crate::client) outcome: Outcome,
    /// The other instance tried, if a hedge was sent.
    pub(in crate::client) other: Option<Arc<Instance>>,
}

impl VspClient {
    /// `attempt`, hedged after `hedge` if there is one.
    pub(in crate::client) async fn attempt_or_hedge(
        &self,
        call: &Call<'_>,
        body: &(impl Serialize + ?Sized),
        attempt: &Attempt<'_>,
        hedge: Option<Duration>,
        number: usize,
    ) -> Hedged {
        match hedge {
            Some(delay) => self.hedged(call, body, attempt, delay, number).await,
            None => Hedged {
                by: attempt.instance.clone(),
                outcome: self.try_instance(call, body, attempt, number).await,
                other: None,
            },
        }
    }

    /// Runs `attempt`, and after `delay` without an answer a second one on another instance (if
    /// there is one and the budget has a token); the first answer wins, a failure waits for
    /// the other attempt.
    pub(in crate::client) async fn hedged(
        &self,
        call: &Call<'_>,
        body: &(impl Serialize + ?Sized),
        attempt: &Attempt<'_>,
        delay: Duration,
        number: usize,
    ) -> Hedged {
        let primary = attempt.instance.clone();
        let first = self.try_instance(call, body, attempt, number);
        tokio::pin!(first);
        let alone = |outcome| Hedged {
            by: primary.clone(),
            outcome,
            other: None,
        };
        let at = attempt.started + delay;
        if at >= attempt.deadline {
            return alone(first.await);
        }
        tokio::select! {
            biased;
            outcome = &mut first => return alone(outcome),
            () = tokio::time::sleep_until(at) => {}
        }
        let other = match self.pick(call.service, std::slice::from_ref(&primary)) {
            Ok(other) if !Arc::ptr_eq(&other, &primary) => other,
            _ => return alone(first.await),
        };
        if !self.inner.budget.withdraw() {
            return alone(first.await);
        }
        let (service, endpoint) = (call.service, call.endpoint);
        tracing::debug!(
            service,
            endpoint,
            "hedging: a second attempt to {}",
            other.key()
        );
        let hedge = Attempt {
            instance: &other,
            started: Instant::now(),
            metadata: attempt.metadata,
            stream: attempt.stream,
            ..*attempt
        };
        let second = self.try_instance(call, body, &hedge, number + 1);
        tokio::pin!(second);
        // The first answer wins; the loser's future is dropped, which cancels its call.
        let (by, outcome, other_by) = tokio::select! {
            outcome = &mut first => match outcome {
                Ok(_) => (primary.clone(), outcome, other.clone()),
                Err(_) => (other.clone(), second.await, primary.clone()),
            },
            outcome = &mut second => match outcome {
                Ok(_) => (other.clone(), outcome, primary.clone()),
                Err(_) => (primary.clone(), first.await, other.clone()),
            },
        };
        Hedged {
            by,
            outcome,
            other: Some(other_by),
        }
    }
}
