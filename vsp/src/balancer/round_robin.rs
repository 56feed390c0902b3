//! Round robin, per service, over the eligible instances.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{LoadBalancer, ServiceBalancer};
use crate::instance::Instance;

/// Each service's calls go to its eligible instances in turn (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobinBalancer {
    _private: (),
}

impl RoundRobinBalancer {
    /// A round-robin balancer.
    pub fn new() -> Self {
        RoundRobinBalancer::default()
    }
}

impl LoadBalancer for RoundRobinBalancer {
    fn for_service(&self, _service: &str) -> Box<dyn ServiceBalancer> {
        Box::new(RoundRobinCursor::default())
    }
}

#[derive(Debug, Default)]
struct RoundRobinCursor {
    next: AtomicUsize,
}

impl ServiceBalancer for RoundRobinCursor {
    fn pick(&self, instances: &[Arc<Instance>]) -> Option<usize> {
        let len = instances.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % len;
        // Skip ineligible instances, keeping the rotation over the rest.
        (0..len)
            .map(|offset| (start + offset) % len)
            .find(|&index| instances[index].is_eligible())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::{HealthStatus, ServiceInfo};

    fn instances(statuses: &[HealthStatus]) -> Vec<Arc<Instance>> {
        statuses
            .iter()
            .enumerate()
            .map(|(port, status)| {
                Arc::new(Instance::new(
                    ServiceInfo::new("svc", "127.0.0.1", port as u16 + 1).with_status(*status),
                    None,
                ))
            })
            .collect()
    }

    #[test]
    fn rotates_over_all_instances_evenly() {
        let list = instances(&[HealthStatus::Unknown; 3]);
        let cursor = RoundRobinCursor::default();
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[cursor.pick(&list).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }

    #[test]
    fn skips_unhealthy_instances() {
        let list = instances(&[
            HealthStatus::Healthy,
            HealthStatus::Unhealthy,
            HealthStatus::Unknown,
        ]);
        let cursor = RoundRobinCursor::default();
        let picks: Vec<usize> = (0..100).map(|_| cursor.pick(&list).unwrap()).collect();
        assert!(!picks.contains(&1));
        assert!(picks.contains(&0) && picks.contains(&2));
    }

    #[test]
    fn none_when_all_are_unhealthy() {
        let list = instances(&[HealthStatus::Unhealthy; 2]);
        assert_eq!(RoundRobinCursor::default().pick(&list), None);
    }
}
