//! Load balancing: which eligible instance of a service the next call goes to.
//!
//! Why two traits: a balancer usually keeps state per service (a round-robin cursor, running
//! weights), and a per-call lookup of that state by service name would cost a hash and a lock.
//! So a [`LoadBalancer`] is a factory: the mesh asks it once per service for a
//! [`ServiceBalancer`], keeps that next to the service's instances, and calls only `pick` per
//! call.
#![doc = include_str!("../docs/balancing.md")]

pub(crate) mod least_loaded;
pub(crate) mod round_robin;
pub(crate) mod weighted;

use std::sync::Arc;

use crate::instance::Instance;

/// A load-balancing policy; pass one to
/// [`ServiceMeshBuilder::load_balancer`](crate::ServiceMeshBuilder::load_balancer).
///
/// ```
/// use std::sync::Arc;
/// use vsp::balancer::{LoadBalancer, ServiceBalancer};
/// use vsp::Instance;
///
/// /// Always the first eligible instance: a primary with standbys.
/// struct FirstEligible;
///
/// impl LoadBalancer for FirstEligible {
///     fn for_service(&self, _service: &str) -> Box<dyn ServiceBalancer> {
///         Box::new(FirstEligible)
///     }
/// }
///
/// impl ServiceBalancer for FirstEligible {
///     fn pick(&self, instances: &[Arc<Instance>]) -> Option<usize> {
///         instances.iter().position(|i| i.is_eligible())
///     }
/// }
///
/// let mesh = vsp::ServiceMesh::builder().load_balancer(FirstEligible).build();
/// # drop(mesh);
/// ```
pub trait LoadBalancer: Send + Sync + 'static {
    /// The state for one service, made when the mesh first sees that service.
    fn for_service(&self, service: &str) -> Box<dyn ServiceBalancer>;
}

/// The balancing state of one service.
pub trait ServiceBalancer: Send + Sync + 'static {
    /// The index in `instances` of the instance the next call goes to, or `None` if none is
    /// eligible ([`Instance::is_eligible`]). `instances` is never empty. Called on every call:
    /// it must not block, and should not allocate.
    fn pick(&self, instances: &[Arc<Instance>]) -> Option<usize>;
}
