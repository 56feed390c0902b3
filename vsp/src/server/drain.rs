//! Drain tracking: requests being handled and connections open, and a shutdown's wait for both
//! to reach zero.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::shard::ShardedCount;
use std::time::Duration;

use tokio::sync::Notify;

/// Counts what a graceful shutdown waits for.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    /// Every request adds and removes itself: per-thread shares (see [`crate::shard`]).
    in_flight: ShardedCount,
    connections_active: AtomicUsize,
    /// Set while a shutdown waits; only then do the counters wake it when they reach zero.
    draining: AtomicBool,
    drained: Notify,
}

impl Drain {
    pub(crate) fn request_started(&self) {
        self.in_flight.increment();
    }

    pub(crate) fn request_finished(&self) {
        self.in_flight.decrement();
        // Only while a shutdown waits is the sum read (the shares of other threads).
        if self.draining.load(Ordering::SeqCst) && self.in_flight.get() == 0 {
            self.drained.notify_waiters();
        }
    }

    pub(crate) fn connection_opened(&self) {
        self.connections_active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        if self.connections_active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.wake();
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    pub(crate) fn connections_active(&self) -> usize {
        self.connections_active.load(Ordering::Acquire)
    }

    pub(crate) fn start(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    fn wake(&self) {
        if self.draining.load(Ordering::Acquire) {
            self.drained.notify_waiters();
        }
    }

    /// Waits until `count()` is zero, at most `timeout`; true if it got there.
    pub(crate) async fn wait_for_zero(
        &self,
        count: impl Fn(&Self) -> usize,
        timeout: Duration,
    ) -> bool {
        let deadline = crate::deadline::after(tokio::time::Instant::now(), timeout);
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            // Registered before the check, so a decrement between the check and the await still wakes us.
            notified.as_mut().enable();
            if count(self) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return count(self) == 0;
            }
        }
    }
}
