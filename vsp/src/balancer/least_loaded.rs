//! Power of two choices over load: calls in flight, weighted by latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{LoadBalancer, ServiceBalancer};
use crate::instance::Instance;

/// Picks two eligible instances at random and sends the call to the less loaded one.
///
/// Load is `(calls in flight + 1) × latency`, the latency being a moving average of the
/// instance's recent calls. In flight alone tells nothing when calls are few (every instance
/// has zero); latency alone reacts slowly to a sudden pile-up; their product does both, so a slow
/// instance gets clearly less traffic. Two random choices rather than the global minimum: no
/// herd of callers all piling onto the same instance between two updates (Mitzenmacher).
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastLoadedBalancer {
    _private: (),
}

impl LeastLoadedBalancer {
    /// A power-of-two-choices least-loaded balancer.
    pub fn new() -> Self {
        LeastLoadedBalancer::default()
    }
}

impl LoadBalancer for LeastLoadedBalancer {
    fn for_service(&self, service: &str) -> Box<dyn ServiceBalancer> {
        // A distinct seed per service, so services do not pick in lockstep.
        let seed = service.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x1000_0000_01b3)
        });
        Box::new(PowerOfTwo {
            state: AtomicU64::new(seed),
        })
    }
}

#[derive(Debug)]
struct PowerOfTwo {
    state: AtomicU64,
}

impl PowerOfTwo {
    /// splitmix64 over an atomic counter: lock-free, good enough to pick among instances.
    fn next(&self) -> u64 {
        let mut z = self
            .state
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn load(instance: &Instance) -> f64 {
    // Before the first sample every instance looks alike (1 µs).
    let latency = instance.latency().as_secs_f64().max(1e-6);
    (instance.in_flight() as f64 + 1.0) * latency
}

impl ServiceBalancer for PowerOfTwo {
    fn pick(&self, instances: &[Arc<Instance>]) -> Option<usize> {
        let len = instances.len();
        let random = self.next();
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
            // Both out of rotation: fall back to the least loaded eligible one, if any.
            (false, false) => instances
                .iter()
                .enumerate()
                .filter(|(_, i)| i.is_eligible())
                .min_by(|(_, a), (_, b)| load(a).total_cmp(&load(b)))
                .map(|(index, _)| index),
        }
    }
}
