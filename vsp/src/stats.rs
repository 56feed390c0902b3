//! Server counters behind [`VspManager::get_performance_stats`](crate::VspManager::get_performance_stats).
//!
//! Why plain atomics: every call touches these counters, so they must cost a few relaxed atomic
//! adds and never a lock. A snapshot reads each counter once; the figures of one snapshot may be
//! a few calls apart, which no dashboard can tell.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

use crate::error::ErrorCode;

/// A snapshot of a server's performance figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PerformanceStats {
    /// Requests answered since the server started, successes and errors alike.
    pub messages_processed: u64,
    /// Mean time from receiving a request to queueing its response (seconds, as a float, when
    /// serialized).
    #[serde(serialize_with = "as_seconds")]
    pub avg_processing_time: Duration,
    /// Handlers running right now.
    pub active_workers: usize,
    /// Requests received and not answered yet (running handlers included).
    pub in_flight: usize,
    /// Error responses sent, by error code (`not_found`, `bad_request`, ...). Every known code
    /// is present, zero or not.
    pub errors: BTreeMap<String, u64>,
    /// Client connections open now.
    pub connections_active: usize,
    /// Client connections accepted since the server started.
    pub connections_total: u64,
}

fn as_seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

#[derive(Debug, Default)]
pub(crate) struct ServerStats {
    messages_processed: AtomicU64,
    processing_nanos: AtomicU64,
    pub(crate) active_workers: AtomicUsize,
    in_flight: AtomicUsize,
    errors: [AtomicU64; ErrorCode::KNOWN.len()],
    connections_active: AtomicUsize,
    connections_total: AtomicU64,
    /// Set while a shutdown waits; only then do the counters wake it when they reach zero.
    draining: AtomicBool,
    pub(crate) drained: Notify,
}

impl ServerStats {
    pub(crate) fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn request_finished(&self, elapsed: Duration) {
        self.messages_processed.fetch_add(1, Ordering::Relaxed);
        self.processing_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.wake_drain();
        }
    }

    pub(crate) fn error_sent(&self, code: &ErrorCode) {
        if let Some(index) = code.index() {
            self.errors[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn connection_opened(&self) {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.connections_active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        if self.connections_active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.wake_drain();
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub(crate) fn connections_active(&self) -> usize {
        self.connections_active.load(Ordering::Acquire)
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    fn wake_drain(&self) {
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
        let deadline = tokio::time::Instant::now() + timeout;
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

    pub(crate) fn snapshot(&self) -> PerformanceStats {
        let processed = self.messages_processed.load(Ordering::Relaxed);
        let nanos = self.processing_nanos.load(Ordering::Relaxed);
        PerformanceStats {
            messages_processed: processed,
            avg_processing_time: Duration::from_nanos(nanos.checked_div(processed).unwrap_or(0)),
            active_workers: self.active_workers.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            errors: ErrorCode::KNOWN
                .iter()
                .zip(&self.errors)
                .map(|(code, count)| (code.as_str().to_owned(), count.load(Ordering::Relaxed)))
                .collect(),
            connections_active: self.connections_active.load(Ordering::Relaxed),
            connections_total: self.connections_total.load(Ordering::Relaxed),
        }
    }
}
