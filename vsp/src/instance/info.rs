//! `ServiceInfo`: what is registered about an instance, and its `HealthStatus`.

use serde::Serialize;

use crate::error::VspError;
use crate::transport::Address;

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
    pub(crate) fn from_u8(value: u8) -> HealthStatus {
        match value {
            1 => HealthStatus::Healthy,
            2 => HealthStatus::Unhealthy,
            _ => HealthStatus::Unknown,
        }
    }

    pub(crate) fn as_u8(self) -> u8 {
        match self {
            HealthStatus::Unknown => 0,
            HealthStatus::Healthy => 1,
            HealthStatus::Unhealthy => 2,
        }
    }
}

/// One instance of a service, as registered with the mesh: its name, its [`Address`] (TCP, Unix
/// socket or in-memory), its weight and its initial health status.
///
/// ```
/// use vsp::{HealthStatus, ServiceInfo};
///
/// let info = ServiceInfo::new("user-service", "127.0.0.1", 9090).with_weight(3.0);
/// assert_eq!(info.address().to_string(), "127.0.0.1:9090");
/// assert_eq!(info.status(), HealthStatus::Unknown);
/// assert!(info.is_eligible() && !info.is_healthy());
///
/// let local = ServiceInfo::at("user-service", "unix:/run/vsp/user.sock".parse()?);
/// assert_eq!(local.address().to_string(), "unix:/run/vsp/user.sock");
/// # Ok::<(), vsp::AddressError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceInfo {
    name: String,
    address: Address,
    weight: f64,
    status: HealthStatus,
    /// Serves TLS (discovery's `tls=1`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    tls: bool,
}

impl ServiceInfo {
    /// An instance of service `name` at TCP `host:port`, weight 1.0, status `Unknown`.
    pub fn new(name: impl Into<String>, host: impl Into<String>, port: u16) -> Self {
        ServiceInfo::at(name, Address::tcp(host, port))
    }

    /// An instance of service `name` at `address`, weight 1.0, status `Unknown`.
    pub fn at(name: impl Into<String>, address: Address) -> Self {
        ServiceInfo {
            name: name.into(),
            address,
            weight: 1.0,
            status: HealthStatus::Unknown,
            tls: false,
        }
    }

    /// Marks the instance as serving TLS: discovery carries it as `tls=1`, a TLS client dials it
    /// with TLS and a plaintext client leaves it to others.
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Whether the instance serves TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
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

    /// Where the instance listens.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The host (name or IP address) of a TCP instance; empty for a Unix or in-memory one.
    pub fn host(&self) -> &str {
        self.address.host().unwrap_or("")
    }

    /// The port of a TCP instance; 0 for a Unix or in-memory one.
    pub fn port(&self) -> u16 {
        self.address.port().unwrap_or(0)
    }

    /// The weight.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// The health status.
    pub fn status(&self) -> HealthStatus {
        self.status
    }

    pub(crate) fn set_status(&mut self, status: HealthStatus) {
        self.status = status;
    }

    /// True only once a check has found the instance healthy.
    pub fn is_healthy(&self) -> bool {
        self.status == HealthStatus::Healthy
    }

    /// True if the instance may get traffic: `Healthy` or `Unknown`.
    pub fn is_eligible(&self) -> bool {
        self.status != HealthStatus::Unhealthy
    }

    pub(crate) fn validate(&self) -> Result<(), VspError> {
        let reason = if self.name.is_empty() {
            "the service name is empty".to_owned()
        } else if let Some(problem) = self.address.problem() {
            problem.to_owned()
        } else if !(self.weight.is_finite() && self.weight > 0.0) {
            format!("weight {} is not a finite number above zero", self.weight)
        } else {
            return Ok(());
        };
        Err(VspError::InvalidInstance {
            service: self.name.clone(),
            instance: self.address().to_string(),
            reason,
        })
    }
}
