//! `Instance`: what the mesh tracks live about a registered instance (health, calls in flight,
//! latency), and the snapshot it reports (`InstanceState`).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Serialize;

use super::health::HealthRecord;
use super::{HealthStatus, ServiceInfo};
use crate::transport::{Address, Target};

/// An instance as the mesh tracks it while routing: its registration, its live health status and
/// its calls in flight. Balancers pick among these.
pub struct Instance {
    info: ServiceInfo,
    endpoint: Arc<str>,
    /// Shared with every other registration of the same address.
    health: Arc<HealthRecord>,
    in_flight: AtomicUsize,
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
    /// A registration; `health` is the record of an earlier registration of the same address,
    /// which it keeps (a status given explicitly in `info` is applied to it as the user's word).
    pub(crate) fn new(info: ServiceInfo, health: Option<Arc<HealthRecord>>) -> Self {
        let health = health.unwrap_or_default();
        if info.status() != HealthStatus::Unknown {
            health.set_by_user(info.status());
        }
        Instance {
            endpoint: Arc::from(info.address().to_string()),
            health,
            in_flight: AtomicUsize::new(0),
            info,
        }
    }

    /// The health record, shared across re-registrations of this address.
    pub(crate) fn health(&self) -> &Arc<HealthRecord> {
        &self.health
    }

    /// The moving average of this instance's call latency (zero before the first call).
    pub fn latency(&self) -> std::time::Duration {
        self.health.latency()
    }

    /// The peak-sensitive moving average of this instance's latency (Finagle's PeakEWMA): a slow
    /// answer raises it at once, faster ones lower it gradually, and it decays towards zero
    /// (time constant 10 s) while no answer arrives.
    pub fn peak_latency(&self) -> std::time::Duration {
        self.health.peak.get()
    }

    /// Counts an attempt that ended without an answer (its deadline passed) as a sample of
    /// `waited` for the peak average only: a slow instance is seen as slow even when its
    /// answers never arrive.
    pub(crate) fn record_unanswered(&self, waited: std::time::Duration) {
        self.health.peak.observe(waited);
    }

    /// Folds one call's latency into the moving average.
    pub(crate) fn record_latency(&self, latency: std::time::Duration) {
        self.health.record_latency(latency);
    }

    /// A snapshot for [`ServiceMesh::instances`](crate::ServiceMesh::instances).
    pub(crate) fn state(&self) -> InstanceState {
        InstanceState {
            info: self.info(),
            in_flight: self.in_flight(),
            consecutive_failures: self.health.consecutive_failures(),
            latency: self.latency(),
            ejections: self.health.ejections_and_readmissions().0,
            readmissions: self.health.ejections_and_readmissions().1,
        }
    }

    /// The service name.
    pub fn service(&self) -> &str {
        self.info.name()
    }

    /// The address as text (`host:port`, `unix:/path`): the instance's key in its service.
    pub(crate) fn key(&self) -> &str {
        &self.endpoint
    }

    pub(crate) fn key_arc(&self) -> &Arc<str> {
        &self.endpoint
    }

    /// The registered weight.
    pub fn weight(&self) -> f64 {
        self.info.weight()
    }

    /// The current health status.
    pub fn status(&self) -> HealthStatus {
        self.health.status()
    }

    /// True if the instance may get traffic (`Healthy` or `Unknown`).
    pub fn is_eligible(&self) -> bool {
        self.status() != HealthStatus::Unhealthy
    }

    /// Calls to this instance that have not completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
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

    /// Whether discovery says it serves TLS.
    pub fn is_tls(&self) -> bool {
        self.info.is_tls()
    }

    /// What a connector dials for it.
    pub fn target(&self) -> Target<'_> {
        Target::new(self.info.address(), self.info.name(), self.info.is_tls())
    }

    /// True while a probe decides whether an ejected instance comes back (an active health check
    /// leaves it to that probe).
    pub(crate) fn is_probing(&self) -> bool {
        self.health.is_probing()
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
    /// Times it was taken out of rotation (ejected) since it was registered.
    pub ejections: u64,
    /// Times it was brought back (re-admitted) after an ejection.
    pub readmissions: u64,
}

/// Holds one call against an instance's in-flight count.
pub(crate) struct InFlightGuard(Arc<Instance>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
