//! Deadlines from durations that may be "no limit": `Duration::MAX` is a common way to say so,
//! and adding it to an instant panics. Every deadline in the crate is made here.

use std::time::Duration;

use tokio::time::Instant;

/// The longest wait a deadline is given (30 years, as tokio's "far future"); longer ones
/// (`Duration::MAX`: "no limit") are clamped to it.
pub(crate) const FOREVER: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `at + wait`, never panicking: a wait too long to represent means "never".
pub(crate) fn after(at: Instant, wait: Duration) -> Instant {
    at.checked_add(wait.min(FOREVER))
        .unwrap_or_else(|| at + Duration::from_secs(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_limit_is_far_away_and_does_not_panic() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::MAX), now + FOREVER);
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }
}
