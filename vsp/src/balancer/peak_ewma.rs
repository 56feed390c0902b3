//! Power of two choices over PeakEWMA cost (Finagle's and linkerd's default balancer).

use std::sync::Arc;

use super::{LoadBalancer, Random, ServiceBalancer};
use crate::instance::Instance;

/// Picks two eligible instances at random and sends the call to the one of lower cost, the cost
/// being the instance's [peak-sensitive latency average](Instance::peak_latency) times its calls
/// in flight plus one.
///
/// The difference from [`LeastLoadedBalancer`](crate::LeastLoadedBalancer): its average jumps
/// to a slow answer at once (and counts a call that timed out as an answer at its deadline),
/// where a plain average needs several slow answers to move; it forgets with time rather than
/// with samples, so an instance that was slow gets a trial call again within seconds. An
/// instance nobody has measured yet costs as little as the fastest (it gets its first calls at
/// once); one that has calls in flight and no answer yet costs a large penalty per call (a
/// frozen instance stops getting calls after its first few).
#[derive(Debug, Clone, Copy, Default)]
pub struct PeakEwmaBalancer {
    _private: (),
}

impl PeakEwmaBalancer {
    /// A PeakEWMA balancer (decay time constant 10 s, as Finagle's).
    pub fn new() -> Self {
        PeakEwmaBalancer::default()
    }
}

impl LoadBalancer for PeakEwmaBalancer {
    fn for_service(&self, service: &str) -> Box<dyn ServiceBalancer> {
        Box::new(PeakEwma {
            random: Random::seeded(service),
        })
    }
}

#[derive(Debug)]
struct PeakEwma {
    random: Random,
}

/// The cost of a call in flight to an instance not measured yet (Finagle's penalty: 1 s, far
/// above any instance that answers).
const UNMEASURED_PENALTY: f64 = 1.0;

pub(crate) fn cost(instance: &Instance) -> f64 {
    let latency = instance.peak_latency().as_secs_f64();
    let in_flight = instance.in_flight() as f64;
    if latency == 0.0 {
        return UNMEASURED_PENALTY * in_flight;
    }
    latency * (in_flight + 1.0)
}

impl ServiceBalancer for PeakEwma {
    fn pick(&self, instances: &[Arc<Instance>]) -> Option<usize> {
        super::two_choices(instances, self.random.next(), cost)
    }
}
