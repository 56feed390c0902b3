//! The peak-sensitive moving average of an instance's latency (Finagle's and linkerd's
//! PeakEWMA): it jumps to a sample above it at once and decays towards faster samples, and
//! towards zero while no sample arrives, so a slow instance is avoided at its first slow answer
//! and tried again once its bad reputation has faded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How fast the average forgets: a sample's weight halves every `DECAY × ln 2` (Finagle's and
/// linkerd's default, 10 s).
pub(crate) const DECAY: Duration = Duration::from_secs(10);

/// Nanoseconds since a process-wide epoch: one `u64`, so the average and its time stamp are
/// plain atomics.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Debug, Default)]
pub(crate) struct PeakEwma {
    /// The average in nanoseconds (as `f64` bits); 0: no sample yet.
    cost: AtomicU64,
    /// When `cost` was last written.
    stamp_ns: AtomicU64,
}

fn decayed(cost: f64, elapsed_ns: u64) -> f64 {
    cost * (-(elapsed_ns as f64) / DECAY.as_nanos() as f64).exp()
}

impl PeakEwma {
    /// Folds in one call's latency. Racing updates may lose a sample; an average does not mind.
    pub(crate) fn observe(&self, latency: Duration) {
        let sample = latency.as_nanos() as f64;
        let now = now_ns();
        let cost = f64::from_bits(self.cost.load(Ordering::Relaxed));
        let elapsed = now.saturating_sub(self.stamp_ns.load(Ordering::Relaxed));
        let next = if sample > cost {
            sample
        } else {
            let weight = (-(elapsed as f64) / DECAY.as_nanos() as f64).exp();
            cost * weight + sample * (1.0 - weight)
        };
        self.cost.store(next.to_bits(), Ordering::Relaxed);
        self.stamp_ns.store(now, Ordering::Relaxed);
    }

    /// The average now, decayed for the time since the last sample.
    pub(crate) fn get(&self) -> Duration {
        let cost = f64::from_bits(self.cost.load(Ordering::Relaxed));
        if cost == 0.0 {
            return Duration::ZERO;
        }
        let elapsed = now_ns().saturating_sub(self.stamp_ns.load(Ordering::Relaxed));
        Duration::from_nanos(decayed(cost, elapsed) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_sample_counts_at_once_and_fast_ones_pull_it_down_slowly() {
        let peak = PeakEwma::default();
        assert_eq!(peak.get(), Duration::ZERO);
        peak.observe(Duration::from_millis(1));
        peak.observe(Duration::from_millis(20));
        let after_slow = peak.get();
        assert!(after_slow > Duration::from_millis(19), "{after_slow:?}");
        peak.observe(Duration::from_millis(1));
        let after_fast = peak.get();
        // Microseconds apart: the fast sample barely weighs against the peak.
        assert!(after_fast > Duration::from_millis(15), "{after_fast:?}");
    }

    #[test]
    fn the_average_decays_without_samples() {
        assert!(decayed(1000.0, DECAY.as_nanos() as u64) < 370.0);
        assert!(decayed(1000.0, 0) > 999.0);
    }
}
