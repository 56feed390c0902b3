//! A server's shared state ([`ManagerInner`]) and its stages of life: running, draining, closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::admission::Admission;
use super::announce::Announcement;
use super::drain::Drain;
use super::endpoint::Endpoint;
use super::worker::{PollLimiter, WorkerPool};
use super::*;
use crate::error::VspError;
use crate::protocol::{EndpointDescription, ServiceDescription, PROTOCOL_VERSION};
use crate::stats::{EndpointCounters, ServerStats};
use crate::transport::Address;

/// A registered endpoint with what every call to it touches.
pub(crate) struct EndpointEntry {
    pub(crate) name: Arc<str>,
    /// The service's name and this one, for each call's [`Context`](crate::Context).
    pub(crate) site: Arc<crate::context::CallSite>,
    pub(crate) endpoint: Box<dyn Endpoint>,
    pub(crate) counters: EndpointCounters,
    /// Its share of the worker pool (`Multicore` only).
    pub(crate) limiter: Option<Arc<PollLimiter>>,
    /// Its own adaptive concurrency limit, instead of the server's
    /// ([`VspManagerBuilder::endpoint_concurrency`](crate::VspManagerBuilder::endpoint_concurrency)).
    pub(crate) concurrency: Option<Arc<super::concurrency::AdaptiveLimiter>>,
    /// What `vsp.describe` says of it (`None` for the built-in endpoints, which are not listed).
    pub(crate) description: Option<Arc<EndpointDescription>>,
}

pub(crate) type Registry = HashMap<Arc<str>, Arc<EndpointEntry>>;

/// A server's stage of life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Lifecycle {
    Idle = 0,
    Running = 1,
    Draining = 2,
    Closed = 3,
}

impl Lifecycle {
    pub(super) fn from_u8(value: u8) -> Lifecycle {
        match value {
            0 => Lifecycle::Idle,
            1 => Lifecycle::Running,
            2 => Lifecycle::Draining,
            _ => Lifecycle::Closed,
        }
    }
}

pub(crate) struct ManagerInner {
    pub(super) name: String,
    /// The name again, shared by every call's [`Context`](crate::Context).
    pub(crate) service: Arc<str>,
    /// Checks every call but `health` before its handler runs.
    pub(crate) auth: Option<Arc<dyn auth::AuthHook>>,
    /// Failed handshakes logged lately, per peer host.
    pub(crate) handshake_log: PeerLog,
    /// Malformed `traceparent`s logged lately, per peer host.
    pub(crate) trace_log: PeerLog,
    pub(crate) config: ServerConfig,
    pub(super) registry: ArcSwap<Registry>,
    /// Serializes registrations (the copy-on-write of `registry`).
    pub(super) registering: Mutex<()>,
    /// The stage of life, readable without a lock on the per-request path...
    pub(super) state: AtomicU8,
    /// ...and watchable by the tasks that must stop when it changes.
    pub(super) lifecycle: watch::Sender<Lifecycle>,
    pub(crate) stats: ServerStats,
    /// The adaptive concurrency limit, if the server has one.
    pub(crate) concurrency: Option<Arc<super::concurrency::AdaptiveLimiter>>,
    /// The endpoints with an adaptive limit of their own, by name: each gets its limiter when
    /// it is registered.
    pub(crate) endpoint_concurrency: HashMap<String, crate::AdaptiveConcurrency>,
    /// Requests and connections a graceful shutdown waits for.
    pub(crate) drain: Drain,
    /// Connections and large request bytes under their caps.
    pub(crate) admission: Arc<Admission>,
    /// The length of the longest endpoint name registered: a requested name longer than it is
    /// unknown without hashing it (a bad request's cost must not grow with its size).
    pub(crate) longest_name: std::sync::atomic::AtomicUsize,
    /// Streams, auth checks and write queues, for [`VspManager::ledger`].
    pub(crate) ledger: ledger::LedgerCounts,
    /// Responses sent to this server (a confused or hostile peer) logged lately, per peer host.
    pub(crate) stray_log: PeerLog,
    /// The handler pool of a `Multicore` manager, made by `start_server`.
    pub(super) workers: OnceLock<WorkerPool>,
    /// The address bound, once serving.
    pub(crate) bound: OnceLock<Address>,
    /// Where and how the server announces itself, if it does.
    pub(super) announcement: Option<Announcement>,
    /// The accept loop: awaited on close, so the port is free when `shutdown` returns.
    pub(super) accepting: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ManagerInner {
    pub(crate) fn stats_enabled(&self) -> bool {
        self.config.stats
    }

    pub(crate) fn worker_pool(&self) -> Option<&WorkerPool> {
        self.workers.get()
    }

    pub(crate) fn state(&self) -> Lifecycle {
        Lifecycle::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn lifecycle(&self) -> watch::Receiver<Lifecycle> {
        self.lifecycle.subscribe()
    }

    /// The answer to `vsp.describe`: every described endpoint, by name.
    pub(crate) fn description(&self) -> ServiceDescription {
        let mut endpoints: Vec<EndpointDescription> = self
            .registry
            .load()
            .values()
            .filter_map(|entry| entry.description.as_deref().cloned())
            .collect();
        endpoints.sort_by(|a, b| a.name.cmp(&b.name));
        ServiceDescription {
            service: self.name.clone(),
            protocol_version: PROTOCOL_VERSION,
            revision: crate::protocol::PROTOCOL_REVISION,
            endpoints,
        }
    }

    pub(super) fn set_state(&self, state: Lifecycle) {
        self.state.store(state as u8, Ordering::Release);
        self.lifecycle.send_replace(state);
    }

    /// Moves from `from` to `to`; false if the server was not at `from`.
    pub(super) fn transition(&self, from: Lifecycle, to: Lifecycle) -> bool {
        let moved = self
            .state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved {
            self.lifecycle.send_replace(to);
        }
        moved
    }
}

impl ManagerInner {
    pub(super) async fn shutdown(self: &Arc<Self>) -> Result<(), VspError> {
        let inner = self;
        if !inner.transition(Lifecycle::Running, Lifecycle::Draining) {
            inner.transition(Lifecycle::Idle, Lifecycle::Closed);
            return Ok(());
        }
        if let Some(announcement) = &inner.announcement {
            announcement.withdraw().await;
        }
        inner.drain.start();
        let draining_since = tokio::time::Instant::now();
        let drained = inner
            .drain
            .wait_for_zero(Drain::in_flight, inner.config.drain_timeout)
            .await;
        // Requests sent before the clients read the notice still get an answer.
        tokio::time::sleep_until(draining_since + DRAIN_GRACE.min(inner.config.drain_timeout))
            .await;
        let aborted = inner.drain.in_flight();
        self.close_connections().await;
        if drained {
            tracing::info!(service = %inner.name, "VSP server shut down");
            Ok(())
        } else {
            tracing::warn!(service = %inner.name, aborted, "drain timeout: aborted running calls");
            Err(VspError::DrainTimeout {
                service: inner.name.clone(),
                in_flight: aborted,
                after: inner.config.drain_timeout,
            })
        }
    }

    pub(super) async fn close(self: &Arc<Self>) {
        if self.state() == Lifecycle::Closed {
            return;
        }
        if let Some(announcement) = &self.announcement {
            announcement.withdraw().await;
        }
        self.drain.start();
        self.close_connections().await;
    }

    pub(super) async fn close_connections(&self) {
        let inner = self;
        inner.set_state(Lifecycle::Closed);
        let accepting = inner
            .accepting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(accepting) = accepting {
            // It stops at once on the state change; the bound only guards against a bug.
            let _ = tokio::time::timeout(CONNECTION_CLOSE_TIMEOUT, accepting).await;
        }
        if !inner
            .drain
            .wait_for_zero(Drain::connections_active, CONNECTION_CLOSE_TIMEOUT)
            .await
        {
            tracing::warn!(
                service = %inner.name,
                open = inner.drain.connections_active(),
                "connections still closing after {CONNECTION_CLOSE_TIMEOUT:?}"
            );
        }
    }
}

/// Shuts a running server down when the last [`VspManager`] handle is dropped. Its tasks hold
/// the server's state, not a handle, so they do not keep it running.
pub(super) struct Owner {
    pub(super) inner: Arc<ManagerInner>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        if matches!(self.inner.state(), Lifecycle::Idle | Lifecycle::Closed) {
            return;
        }
        let inner = self.inner.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                tracing::info!(service = %inner.name, "every handle dropped: shutting down");
                runtime.spawn(async move {
                    if let Err(err) = inner.shutdown().await {
                        tracing::warn!("shutdown after the last handle was dropped: {err}");
                    }
                });
            }
            // No runtime to drain on: stop accepting and close; the tasks end with it.
            Err(_) => inner.set_state(Lifecycle::Closed),
        }
    }
}
