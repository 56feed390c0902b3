//! The adaptive concurrency limit: how many calls a server handles at once, adapted to the
//! latency it measures, with calls beyond it answered `overloaded` at once (load shedding).
//!
//! Why a gradient on latency (Netflix's concurrency-limits, Envoy's adaptive concurrency
//! filter): a server past its capacity does not fail, it queues, and every call waits longer
//! until its caller gives up: work done for nobody. The latency of its fastest calls says what
//! an unqueued call costs; the average says how much queueing is added. Each window (ten of
//! the fastest calls' time, at most 100 ms) the limit is scaled by `tolerance × fastest /
//! average`: it shrinks at once to where queueing would be tolerated, and grows (at most
//! doubling) while calls do not queue and the limit is in use. Calls beyond the limit are
//! answered `overloaded` at once: refused calls cost the caller a round trip, and its client
//! sends them to another instance without counting a failure.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The knobs of [`VspManagerBuilder::adaptive_concurrency`](crate::VspManagerBuilder::adaptive_concurrency).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct AdaptiveConcurrency {
    /// The limit before the first measurement (default 32).
    pub initial: usize,
    /// The limit never goes below this (default 2: a server whose handlers run one call at a
    /// time then keeps its thread busy between a call's end and the next caller's arrival, at
    /// the cost of one call's queueing; 1 favours latency over throughput).
    pub min: usize,
    /// ... nor above this (default 1,000).
    pub max: usize,
    /// How much slower than the fastest calls the average may be before the limit shrinks
    /// (default 1.5: queueing may add half a call's own time).
    pub tolerance: f64,
    /// How often the limit is recomputed at most (default 100 ms): a window lasts ten of the
    /// fastest calls' time if that is shorter, and one with fewer than 10 calls changes
    /// nothing. The fastest call of the last ten such periods is the no-queueing baseline.
    pub window: Duration,
}

impl Default for AdaptiveConcurrency {
    fn default() -> Self {
        AdaptiveConcurrency {
            initial: 32,
            min: 2,
            max: 1000,
            tolerance: 1.5,
            window: Duration::from_millis(100),
        }
    }
}

impl AdaptiveConcurrency {
    /// The defaults: see each field.
    pub fn new() -> Self {
        AdaptiveConcurrency::default()
    }

    /// The limit before the first measurement.
    pub fn initial(mut self, limit: usize) -> Self {
        self.initial = limit;
        self
    }

    /// The lowest limit.
    pub fn min(mut self, limit: usize) -> Self {
        self.min = limit;
        self
    }

    /// The highest limit.
    pub fn max(mut self, limit: usize) -> Self {
        self.max = limit;
        self
    }

    /// How much slower than the fastest calls the average may be before the limit shrinks.
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// How often the limit is recomputed.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }
}

/// The no-queueing baseline is the fastest call of this many recent periods of `window`: a
/// floor that rose (the handler's own work got slower) is learned within that time (1 s by
/// default).
const BASELINE_PERIODS: usize = 10;
/// A window with fewer calls says nothing.
const MIN_SAMPLES: u64 = 10;
/// A window lasts this many of the fastest calls' latency, or `window` if that is sooner: a
/// fast endpoint reacts within a few milliseconds, before a queue built at a too-high limit
/// costs many callers.
const WINDOW_IN_CALLS: u32 = 10;

#[derive(Debug)]
pub(crate) struct AdaptiveLimiter {
    config: AdaptiveConcurrency,
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    /// This window's calls: count, sum and minimum of their latencies (ns), the most in flight.
    count: AtomicU64,
    sum_ns: AtomicU64,
    min_ns: AtomicU64,
    peak: AtomicUsize,
    /// The window's length now (ns): `WINDOW_IN_CALLS` baselines, at most `config.window`.
    window_ns: AtomicU64,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    /// When the current baseline period began.
    period_started: Instant,
    /// The fastest call of each recent period (ns).
    minimums: [u64; BASELINE_PERIODS],
    next: usize,
}

impl AdaptiveLimiter {
    pub(crate) fn new(config: AdaptiveConcurrency) -> Self {
        let min = config.min.max(1);
        let config = AdaptiveConcurrency {
            min,
            max: config.max.max(min),
            initial: config.initial.clamp(min, config.max.max(min)),
            tolerance: if config.tolerance.is_finite() {
                config.tolerance.max(1.0)
            } else {
                1.5
            },
            window: config.window.max(Duration::from_millis(1)),
        };
        let now = Instant::now();
        AdaptiveLimiter {
            limit: AtomicUsize::new(config.initial),
            in_flight: AtomicUsize::new(0),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            min_ns: AtomicU64::new(u64::MAX),
            peak: AtomicUsize::new(0),
            window_ns: AtomicU64::new(nanos(config.window)),
            window: Mutex::new(Window {
                started: now,
                period_started: now,
                minimums: [u64::MAX; BASELINE_PERIODS],
                next: 0,
            }),
            config,
        }
    }

    /// The current limit.
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Takes a place for a call; false (the call is refused) at the limit.
    pub(crate) fn try_acquire(&self) -> bool {
        let limit = self.limit();
        let taken = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if taken >= limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        self.peak.fetch_max(taken + 1, Ordering::Relaxed);
        true
    }

    /// Gives the place back, with the call's latency; ends the window when it is due.
    pub(crate) fn release(&self, latency: Duration) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        let ns = nanos(latency).max(1);
        let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.min_ns.fetch_min(ns, Ordering::Relaxed);
        if count < MIN_SAMPLES {
            return;
        }
        // One thread closes the window; the others go on.
        let Ok(mut window) = self.window.try_lock() else {
            return;
        };
        let now = Instant::now();
        if nanos(now.duration_since(window.started)) < self.window_ns.load(Ordering::Relaxed) {
            return;
        }
        self.close_window(&mut window, now);
    }

    /// Ends the window: the limit is scaled by `tolerance × fastest / average`.
    fn close_window(&self, window: &mut Window, now: Instant) {
        let count = self.count.swap(0, Ordering::Relaxed);
        let sum = self.sum_ns.swap(0, Ordering::Relaxed);
        let fastest = self.min_ns.swap(u64::MAX, Ordering::Relaxed);
        let peak = self
            .peak
            .swap(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
        window.started = now;
        if count < MIN_SAMPLES {
            return;
        }
        let next = window.next;
        window.minimums[next] = window.minimums[next].min(fastest);
        if now.duration_since(window.period_started) >= self.config.window {
            window.period_started = now;
            window.next = (next + 1) % BASELINE_PERIODS;
            window.minimums[window.next] = u64::MAX;
        }
        let baseline = window.minimums.iter().copied().min().unwrap_or(fastest);
        let length = baseline.saturating_mul(u64::from(WINDOW_IN_CALLS));
        self.window_ns
            .store(length.min(nanos(self.config.window)), Ordering::Relaxed);
        let average = sum as f64 / count as f64;
        let limit = self.limit() as f64;
        let ratio = self.config.tolerance * baseline as f64 / average;
        let next_limit = if ratio < 1.0 {
            // Queueing beyond the tolerance: shrink to where it would be tolerated, at once (a
            // window is short; a queue costs every caller in it).
            limit * ratio
        } else if peak as f64 * 2.0 >= limit {
            // In use and queueing less than tolerated: grow with the margin, at most double.
            (limit * ratio.min(2.0)).round()
        } else {
            limit
        };
        let next_limit = (next_limit.floor() as usize).clamp(self.config.min, self.config.max);
        self.limit.store(next_limit, Ordering::Relaxed);
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated server with `cores` cores and calls of `cost`: a call's latency grows with
    /// the calls in flight beyond the cores. The limit settles near `cores × tolerance`.
    #[test]
    fn the_limit_settles_where_queueing_stays_within_the_tolerance() {
        let limiter = AdaptiveLimiter::new(AdaptiveConcurrency {
            window: Duration::from_secs(3600),
            ..AdaptiveConcurrency::default()
        });
        let (cores, cost) = (2.0, Duration::from_millis(1));
        for _ in 0..100 {
            // A window of ten rounds: fill the limit, then finish every call at its queued
            // latency.
            for _ in 0..10 {
                let mut held = 0;
                while limiter.try_acquire() {
                    held += 1;
                }
                for slot in 0..held {
                    // The first `cores` calls run at once; the rest wait their turn.
                    let queued = (slot as f64 / cores).floor() + 1.0;
                    limiter.release(cost.mul_f64(queued));
                }
            }
            let mut window = limiter.window.lock().unwrap();
            limiter.close_window(&mut window, Instant::now());
        }
        let limit = limiter.limit();
        assert!((2..=4).contains(&limit), "limit {limit}");
    }

    /// A server that starts overloaded at the initial limit (32 calls queued on one core) is
    /// brought to the tolerated queueing by one window, and the next window is ten fastest
    /// calls long: a queue costs milliseconds, not the tenths of a second of fixed windows.
    #[test]
    fn one_window_of_heavy_queueing_brings_the_limit_down_at_once() {
        // Windows closed by hand only.
        let limiter =
            AdaptiveLimiter::new(AdaptiveConcurrency::new().window(Duration::from_secs(3600)));
        assert_eq!(limiter.limit(), 32);
        let mut held = 0;
        while limiter.try_acquire() {
            held += 1;
        }
        assert_eq!(held, 32);
        let cost = Duration::from_millis(1);
        for slot in 0..held {
            limiter.release(cost * (slot + 1));
        }
        let mut window = limiter.window.lock().unwrap();
        limiter.close_window(&mut window, Instant::now());
        // 32 × 1.5 × 1 ms / 16.5 ms on average.
        assert_eq!(limiter.limit(), 2);
        assert_eq!(
            limiter.window_ns.load(Ordering::Relaxed),
            nanos(cost * WINDOW_IN_CALLS)
        );
    }

    #[test]
    fn calls_beyond_the_limit_are_refused_and_places_come_back() {
        let limiter = AdaptiveLimiter::new(AdaptiveConcurrency {
            initial: 2,
            ..AdaptiveConcurrency::default()
        });
        assert!(limiter.try_acquire());
        assert!(limiter.try_acquire());
        assert!(!limiter.try_acquire());
        limiter.release(Duration::from_millis(1));
        assert!(limiter.try_acquire());
    }
}
