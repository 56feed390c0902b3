//! `Instance`: what the mesh tracks live about a registered instance (health, calls in flight,
//! latency), and the snapshot it reports (`InstanceState`).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Serialize;

use super::{HealthStatus, ServiceInfo};
use crate::transport::Address;

/// An instance as the mesh tracks it while routing: its registration, its live health status and
/// its calls in flight. Balancers pick among these.
pub struct Instance {
    info: ServiceInfo,
    endpoint: Arc<str>,
    status: AtomicU8,
    in_flight: AtomicUsize,
    /// Transport failures since the last success.
    pub(super) consecutive_failures: AtomicU32,
    /// Ejections since the instance was last healthy: the exponent of the backoff.
    pub(super) ejections: AtomicU32,
    /// A probe is scheduled to decide re-admission.
    pub(super) probing: AtomicBool,
    /// Moving average of call latency, in nanoseconds (0: no sample yet).
    latency_ewma_ns: AtomicU64,
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("endpoint", &self.endpoint)
            .field("status", &self.status())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Instance {
    pub(crate) fn new(info: ServiceInfo) -> Self {
        Instance {
            endpoint: Arc::from(info.endpoint()),
            status: AtomicU8::new(info.status().as_u8()),
            in_flight: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            probing: AtomicBool::new(false),
            latency_ewma_ns: AtomicU64::new(0),
            info,
        }
    }

    /// A new registration of the same address keeps what was learned about its health.
    pub(crate) fn inherit_health(&self, previous: &Instance) {
        if self.info.status() == HealthStatus::Unknown {
            self.set_status(previous.status());
        }
        for (mine, theirs) in [
            (&self.consecutive_failures, &previous.consecutive_failures),
            (&self.ejections, &previous.ejections),
        ] {
            mine.store(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.probing
            .store(previous.probing.load(Ordering::Relaxed), Ordering::Relaxed);
        self.latency_ewma_ns.store(
            previous.latency_ewma_ns.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }

    /// The moving average of this instance's call latency (zero before the first call).
    pub fn latency(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.latency_ewma_ns.load(Ordering::Relaxed))
    }

    /// Folds one call's latency into the moving average (weight 1/5 for the new sample).
    pub(crate) fn record_latency(&self, latency: std::time::Duration) {
        let sample = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let old = self.latency_ewma_ns.load(Ordering::Relaxed);
        // Racing updates may lose a sample; an average does not mind.
        let new = if old == 0 {
            sample
        } else {
            old - old / 5 + sample / 5
        };
        self.latency_ewma_ns.store(new.max(1), Ordering::Relaxed);
    }

    /// A snapshot for [`ServiceMesh::instances`](crate::ServiceMesh::instances).
    pub(crate) fn state(&self) -> InstanceState {
        InstanceState {
            info: self.info(),
            in_flight: self.in_flight(),
            consecutive_failures: self.consecutive_failures.load(Ordering::Relaxed),
            latency: self.latency(),
        }
    }

    /// The service name.
    pub fn service(&self) -> &str {
        self.info.name()
    }

    /// The address as text (`host:port`, `unix:/path`): the instance's key.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub(crate) fn endpoint_arc(&self) -> &Arc<str> {
        &self.endpoint
    }

    /// The registered weight.
    pub fn weight(&self) -> f64 {
        self.info.weight()
    }

    /// The current health status.
    pub fn status(&self) -> HealthStatus {
        HealthStatus::from_u8(self.status.load(Ordering::Relaxed))
    }

    /// True if the instance may get traffic (`Healthy` or `Unknown`).
    pub fn is_eligible(&self) -> bool {
        self.status() != HealthStatus::Unhealthy
    }

    /// Calls to this instance that have not completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn set_status(&self, status: HealthStatus) {
        self.status.store(status.as_u8(), Ordering::Relaxed);
    }

    /// Counts a call against this instance until the guard drops.
    pub(crate) fn track_call(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.clone())
    }

    pub(crate) fn has_address(&self, address: &Address) -> bool {
        self.info.address() == address
    }

    /// Where the instance listens.
    pub fn address(&self) -> &Address {
        self.info.address()
    }

    /// True while a probe decides whether an ejected instance comes back (an active health check
    /// leaves it to that probe).
    pub(crate) fn is_probing(&self) -> bool {
        self.probing.load(Ordering::Acquire)
    }

    /// The registration, with the live status.
    pub fn info(&self) -> ServiceInfo {
        let mut info = self.info.clone();
        info.set_status(self.status());
        info
    }
}

/// What the mesh knows of one instance right now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct InstanceState {
    /// The registration, with the live health status.
    pub info: ServiceInfo,
    /// Calls to it not completed yet (from clients of this mesh).
    pub in_flight: usize,
    /// Transport failures since its last success.
    pub consecutive_failures: u32,
    /// Moving average of its call latency.
    pub latency: std::time::Duration,
}

/// Holds one call against an instance's in-flight count.
pub(crate) struct InFlightGuard(Arc<Instance>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
