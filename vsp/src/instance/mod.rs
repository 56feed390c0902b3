//! Instances: what is registered about one ([`ServiceInfo`]), what is tracked about it live
//! ([`Instance`]: health, calls in flight, latency), and how its health changes
//! ([`HealthPolicy`]).
//!
//! Why this sits below the mesh: balancers pick among [`Instance`]s and discovery writes
//! [`ServiceInfo`]s, and the mesh hosts both. Keeping the types they share here lets every
//! plug-in depend on them without depending on its host.

mod health;
mod info;
mod live;
mod peak;

pub use health::HealthPolicy;
pub(crate) use health::{HealthRecord, ProbeTicket, Verdict};
pub use info::{HealthStatus, ServiceInfo};
pub use live::{Instance, InstanceState};
