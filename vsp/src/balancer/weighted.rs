//! Smooth weighted round robin, as nginx does it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::{LoadBalancer, ServiceBalancer};
use crate::instance::Instance;

/// Each eligible instance gets calls in proportion to its weight, interleaved: weights 5:1:1 give
/// `a a b a c a a`, never five `a` in a row.
///
/// Every pick adds each eligible instance's weight to its running score, takes the highest, and
/// subtracts the total weight from the winner (nginx's smooth weighted round robin). Over any
/// `sum(weights)` consecutive picks of a stable set, the shares are exact.
///
/// ```
/// use vsp::{ServiceInfo, ServiceMesh, WeightedBalancer};
///
/// let mesh = ServiceMesh::builder().load_balancer(WeightedBalancer::new()).build();
/// mesh.register(ServiceInfo::new("svc", "10.0.0.1", 80).with_weight(5.0))?;
/// mesh.register(ServiceInfo::new("svc", "10.0.0.2", 80).with_weight(1.0))?;
/// let picks: Vec<String> = (0..6).map(|_| mesh.pick("svc").unwrap().address().to_string()).collect();
/// assert_eq!(picks.iter().filter(|p| *p == "10.0.0.1:80").count(), 5);
/// # Ok::<(), vsp::VspError>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct WeightedBalancer {
    _private: (),
}

impl WeightedBalancer {
    /// A smooth weighted round-robin balancer.
    pub fn new() -> Self {
        WeightedBalancer::default()
    }
}

impl LoadBalancer for WeightedBalancer {
    fn for_service(&self, _service: &str) -> Box<dyn ServiceBalancer> {
        Box::new(SmoothWeighted::default())
    }
}

#[derive(Debug, Default)]
struct SmoothWeighted {
    scores: Mutex<Scores>,
    /// The turn while every weight is equal: smooth weighted round robin is then plain round
    /// robin, picked without the lock (the common case, and the default mesh's per-call path).
    turn: AtomicUsize,
}

#[derive(Debug, Default)]
struct Scores {
    /// Which instance list the scores belong to (its address and length).
    list: (usize, usize),
    current: Vec<f64>,
    /// The endpoint of each score, to carry the scores over to a new list: discovery republishes
    /// the list on every answer (Consul's every few seconds), and a reset each time would send
    /// the first picks after it all to the heaviest instance.
    endpoints: Vec<Arc<str>>,
}

impl ServiceBalancer for SmoothWeighted {
    fn pick(&self, instances: &[Arc<Instance>]) -> Option<usize> {
        let first = instances.first()?.weight();
        if instances.iter().all(|instance| instance.weight() == first) {
            let len = instances.len();
            let start = self.turn.fetch_add(1, Ordering::Relaxed) % len;
            return (0..len)
                .map(|offset| (start + offset) % len)
                .find(|&index| instances[index].is_eligible());
        }
        let mut scores = self.scores.lock().unwrap_or_else(PoisonError::into_inner);
        let list = (instances.as_ptr() as usize, instances.len());
        if scores.list != list {
            let carried: Vec<f64> = instances
                .iter()
                .map(|instance| {
                    scores
                        .endpoints
                        .iter()
                        .position(|e| **e == *instance.key())
                        .map_or(0.0, |old| scores.current[old])
                })
                .collect();
            scores.list = list;
            scores.current = carried;
            scores.endpoints = instances.iter().map(|i| i.key_arc().clone()).collect();
        }
        let mut total = 0.0;
        let mut best: Option<usize> = None;
        for (index, instance) in instances.iter().enumerate() {
            if !instance.is_eligible() {
                continue;
            }
            let weight = instance.weight();
            scores.current[index] += weight;
            total += weight;
            if best.is_none_or(|b| scores.current[index] > scores.current[b]) {
                best = Some(index);
            }
        }
        let best = best?;
        scores.current[best] -= total;
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::ServiceInfo;

    #[test]
    fn a_republished_list_keeps_the_smooth_order() {
        let instances: Vec<Arc<Instance>> = [(1u16, 1.0), (2, 3.0)]
            .into_iter()
            .map(|(port, weight)| {
                Arc::new(Instance::new(
                    ServiceInfo::new("svc", "127.0.0.1", port).with_weight(weight),
                    None,
                ))
            })
            .collect();
        // Discovery republishes the same instances in a new list on every answer.
        let lists = [instances.clone(), instances.clone()];
        let balancer = SmoothWeighted::default();
        let mut picks = [0usize; 2];
        for round in 0..400 {
            let list = &lists[round % 2];
            picks[balancer.pick(list).unwrap()] += 1;
        }
        assert_eq!(picks, [100, 300], "weights 1:3 over 400 picks");
    }
}
