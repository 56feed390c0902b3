//! Power of two choices over load: calls in flight, weighted by latency.

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
        Box::new(PowerOfTwo {
            random: super::Random::seeded(service),
        })
    }
}

#[derive(Debug)]
struct PowerOfTwo {
    random: super::Random,
}

fn load(instance: &Instance) -> f64 {
    // Before the first sample every instance looks alike (1 µs).
    let latency = instance.latency().as_secs_f64().max(1e-6);
    (instance.in_flight() as f64 + 1.0) * latency
}

impl ServiceBalancer for PowerOfTwo {
    fn pick(&self, instances: &[Arc<Instance>]) -> Option<usize> {
        super::two_choices(instances, self.random.next(), load)
    }
}
