//! Load balancing: which eligible instance of a service the next call goes to.
//!
//! Why two traits: a balancer usually keeps state per service (a round-robin cursor, running
//! weights), and a per-call lookup of that state by service name would cost a hash and a lock.
//! So a [`LoadBalancer`] is a factory: the mesh asks it once per service for a
//! [`ServiceBalancer`], keeps that next to the service's instances, and calls only `pick` per
//! call.
#![doc = include_str!("../docs/balancing.md")]

pub(crate) mod consistent_hash;
pub(crate) mod least_loaded;
pub(crate) mod peak_ewma;
pub(crate) mod round_robin;
pub(crate) mod weighted;

use std::sync::atomic::{AtomicU64, Ordering};
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

    /// As [`pick`](Self::pick), for a call that carries a hash key (see
    /// [`CallOptions::hash_key`](crate::CallOptions::hash_key)). Balancers that do not route by
    /// key ignore it (the default).
    fn pick_keyed(&self, instances: &[Arc<Instance>], key: u64) -> Option<usize> {
        let _ = key;
        self.pick(instances)
    }
}

/// splitmix64 over an atomic counter: lock-free, good enough to pick among instances.
#[derive(Debug)]
pub(crate) struct Random(AtomicU64);

impl Random {
    /// A distinct seed per service, so services do not pick in lockstep.
    pub(crate) fn seeded(service: &str) -> Self {
        Random(AtomicU64::new(fnv1a(service.as_bytes())))
    }

    pub(crate) fn next(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// 64-bit FNV-1a: stable across processes and versions, so every client of a service hashes a
/// key to the same place.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Power of two choices: two distinct instances drawn with `random`, the eligible one of lower
/// `load` wins; when both are out of rotation, the least loaded eligible one.
pub(crate) fn two_choices(
    instances: &[Arc<Instance>],
    random: u64,
    load: impl Fn(&Instance) -> f64,
) -> Option<usize> {
    let len = instances.len();
    let first = (random % len as u64) as usize;
    let second = if len > 1 {
        // A different index: offset by 1..len.
        (first + 1 + ((random >> 32) % (len as u64 - 1)) as usize) % len
    } else {
        first
    };
    match (
        instances[first].is_eligible(),
        instances[second].is_eligible(),
    ) {
        (true, true) => {
            if load(&instances[second]) < load(&instances[first]) {
                Some(second)
            } else {
                Some(first)
            }
        }
        (true, false) => Some(first),
        (false, true) => Some(second),
        (false, false) => instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.is_eligible())
            .min_by(|(_, a), (_, b)| load(a).total_cmp(&load(b)))
            .map(|(index, _)| index),
    }
}
