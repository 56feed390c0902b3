//! `ServiceInfo` (what is registered) and `Instance` (what the mesh tracks about it live).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::error::VspError;

/// What the mesh knows of an instance's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Not checked yet. Eligible for traffic: a new instance must be reachable before anything
    /// has probed it.
    Unknown,
    /// Checked and healthy. Eligible for traffic.
    Healthy,
    /// Checked and failing. Gets no traffic.
    Unhealthy,
}

impl HealthStatus {
    fn from_u8(value: u8) -> HealthStatus {
        match value {
            1 => HealthStatus::Healthy,
            2 => HealthStatus::Unhealthy,
            _ => HealthStatus::Unknown,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            HealthStatus::Unknown => 0,
            HealthStatus::Healthy => 1,
            HealthStatus::Unhealthy => 2,
        }
    }
}

/// One instance of a service, as registered with the mesh.
///
/// ```
/// use vsp::{HealthStatus, ServiceInfo};
///
/// let info = ServiceInfo::new("user-service", "127.0.0.1", 9090).with_weight(3.0);
/// assert_eq!(info.endpoint(), "127.0.0.1:9090");
/// assert_eq!(info.status(), HealthStatus::Unknown);
/// assert!(info.is_eligible() && !info.is_healthy());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceInfo {
    name: String,
    host: String,
    port: u16,
    weight: f64,
    status: HealthStatus,
}

impl ServiceInfo {
    /// An instance of service `name` at `host:port`, weight 1.0, status `Unknown`.
    pub fn new(name: impl Into<String>, host: impl Into<String>, port: u16) -> Self {
        ServiceInfo {
            name: name.into(),
            host: host.into(),
            port,
            weight: 1.0,
            status: HealthStatus::Unknown,
        }
    }

    /// Sets the weight, its share of traffic under a weighted balancer; must be finite and > 0
    /// (checked when it is registered).
    pub fn with_weight(mut self, weight: f64) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the initial health status.
    pub fn with_status(mut self, status: HealthStatus) -> Self {
        self.status = status;
        self
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host (name or IP address).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The weight.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// The health status.
    pub fn status(&self) -> HealthStatus {
        self.status
    }

    /// True only once a check has found the instance healthy.
    pub fn is_healthy(&self) -> bool {
        self.status == HealthStatus::Healthy
    }

    /// True if the instance may get traffic: `Healthy` or `Unknown`.
    pub fn is_eligible(&self) -> bool {
        self.status != HealthStatus::Unhealthy
    }

    /// `host:port`, with an IPv6 host in brackets: what a connection dials.
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub(crate) fn validate(&self) -> Result<(), VspError> {
        let reason = if self.name.is_empty() {
            "the service name is empty".to_owned()
        } else if self.host.is_empty() {
            "the host is empty".to_owned()
        } else if !(self.weight.is_finite() && self.weight > 0.0) {
            format!("weight {} is not a finite number above zero", self.weight)
        } else {
            return Ok(());
        };
        Err(VspError::InvalidInstance {
            service: self.name.clone(),
            instance: self.endpoint(),
            reason,
        })
    }
}

/// An instance as the mesh tracks it while routing: its registration, its live health status and
/// its calls in flight. Balancers pick among these.
pub struct Instance {
    info: ServiceInfo,
    endpoint: Arc<str>,
    status: AtomicU8,
    in_flight: AtomicUsize,
    /// Transport failures since the last success.
    pub(crate) consecutive_failures: AtomicU32,
    /// Ejections since the instance was last healthy: the exponent of the backoff.
    pub(crate) ejections: AtomicU32,
    /// A probe is scheduled to decide re-admission.
    pub(crate) probing: AtomicBool,
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
            status: AtomicU8::new(info.status.as_u8()),
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
        if self.info.status == HealthStatus::Unknown {
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
        &self.info.name
    }

    /// `host:port`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub(crate) fn endpoint_arc(&self) -> &Arc<str> {
        &self.endpoint
    }

    /// The registered weight.
    pub fn weight(&self) -> f64 {
        self.info.weight
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

    pub(crate) fn same_address(&self, host: &str, port: u16) -> bool {
        self.info.host == host && self.info.port == port
    }

    /// The registration, with the live status.
    pub fn info(&self) -> ServiceInfo {
        ServiceInfo {
            status: self.status(),
            ..self.info.clone()
        }
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
