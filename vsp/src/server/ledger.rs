//! The server's resource ledger: what peers make it hold right now.
//!
//! Why a ledger: every peer-reachable thing the server holds (a connection, a call, a stream, a
//! pending auth check, bytes waiting to be written) has a bound and an end. The ledger makes the
//! end observable: a test of a hostile peer finishes by waiting until every count is back to zero,
//! so a leak fails the test that caused it, and an operator can read the same counts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::ManagerInner;
use crate::transport::WriteQueue;

/// What a server holds for its peers at one moment: see [`VspManager::ledger`](crate::VspManager::ledger).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ledger {
    /// Connections open (accepted and not yet closed, including those flushing their last
    /// replies).
    pub connections: usize,
    /// Requests being handled (streams included), over all connections.
    pub calls_in_flight: usize,
    /// Server streams open.
    pub streams_open: usize,
    /// Calls waiting for the auth hook's answer.
    pub auth_checks_pending: usize,
    /// Bytes queued for writing, over all connections.
    pub bytes_queued: usize,
}

impl Ledger {
    /// True when the server holds nothing for any peer.
    pub fn is_empty(&self) -> bool {
        *self == Ledger::default()
    }
}

/// A count of the ledger that a guard holds one of.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Gauge {
    StreamsOpen,
    AuthChecksPending,
}

/// The ledger's own counts (connections and calls are the drain's).
#[derive(Default)]
pub(crate) struct LedgerCounts {
    streams_open: AtomicUsize,
    auth_checks_pending: AtomicUsize,
    /// The write queues of open connections, for their backlogs: one entry per connection,
    /// removed when its writer ends.
    queues: Mutex<HashMap<u64, Weak<WriteQueue>>>,
    next_queue: AtomicU64,
}

impl LedgerCounts {
    fn gauge(&self, gauge: Gauge) -> &AtomicUsize {
        match gauge {
            Gauge::StreamsOpen => &self.streams_open,
            Gauge::AuthChecksPending => &self.auth_checks_pending,
        }
    }

    /// Lists a connection's queue until the returned guard drops.
    pub(crate) fn queue_opened(manager: &Arc<ManagerInner>, queue: &Arc<WriteQueue>) -> Listed {
        let counts = &manager.ledger;
        let id = counts.next_queue.fetch_add(1, Ordering::Relaxed);
        counts
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Arc::downgrade(queue));
        Listed {
            manager: manager.clone(),
            id,
        }
    }

    pub(crate) fn snapshot(&self, connections: usize, calls_in_flight: usize) -> Ledger {
        let bytes_queued = self
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter_map(Weak::upgrade)
            .map(|queue| queue.backlog())
            .sum();
        Ledger {
            connections,
            calls_in_flight,
            streams_open: self.streams_open.load(Ordering::Acquire),
            auth_checks_pending: self.auth_checks_pending.load(Ordering::Acquire),
            bytes_queued,
        }
    }
}

/// Holds one of a [`Gauge`] until dropped, however its task ends.
pub(crate) struct Held {
    manager: Arc<ManagerInner>,
    gauge: Gauge,
}

impl Held {
    pub(crate) fn new(manager: Arc<ManagerInner>, gauge: Gauge) -> Held {
        manager.ledger.gauge(gauge).fetch_add(1, Ordering::AcqRel);
        Held { manager, gauge }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.manager
            .ledger
            .gauge(self.gauge)
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's queue listed in the ledger; unlisted on drop.
pub(crate) struct Listed {
    manager: Arc<ManagerInner>,
    id: u64,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.manager
            .ledger
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}
