//! Per-thread shares of the counters every call updates, on both sides.
//!
//! Why: a counter on one cache line that every call of every thread adds to moves that line
//! between cores on each call (the server's drain count, its processed count and processing
//! time, an endpoint's histogram, ...). Each thread adds to its own share instead, and a reader
//! (a stats snapshot, the admission check, a drain) adds the shares up. Threads take the shares
//! in turn, so with up to `SHARDS` threads none shares a line with another.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

/// Shares per counter. Four: the snapshot or check that adds them up stays a few loads.
pub(crate) const SHARDS: usize = 4;

/// This thread's share.
pub(crate) fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|shard| *shard)
}

/// A value alone on its cache line (two lines: adjacent-line prefetching pairs them).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// A count that goes up and down on any thread: a call counted in on one thread may be counted
/// out on another, so a share may go negative; the sum is exact.
#[derive(Debug, Default)]
pub(crate) struct ShardedCount {
    shares: [Padded<AtomicI64>; SHARDS],
}

impl ShardedCount {
    pub(crate) fn increment(&self) {
        self.shares[shard()].0.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn decrement(&self) {
        self.shares[shard()].0.fetch_sub(1, Ordering::SeqCst);
    }

    /// The count now: the sum of the shares (`SeqCst`, so a waiter that sets a flag and then
    /// reads the sum, and a counter that decrements and then reads the flag, never both miss).
    pub(crate) fn get(&self) -> usize {
        let sum: i64 = self
            .shares
            .iter()
            .map(|share| share.0.load(Ordering::SeqCst))
            .sum();
        usize::try_from(sum).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `each` `times` times on each of `threads` new threads, and waits for them.
    fn on_threads(threads: usize, times: usize, each: impl Fn() + Sync) {
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| (0..times).for_each(|_| each()));
            }
        });
    }

    #[test]
    fn a_count_moved_between_threads_sums_exactly() {
        let count = ShardedCount::default();
        on_threads(8, 1000, || count.increment());
        assert_eq!(count.get(), 8000);
        // Counted out on other threads than the ones that counted in.
        on_threads(4, 2000, || count.decrement());
        assert_eq!(count.get(), 0);
    }
}
