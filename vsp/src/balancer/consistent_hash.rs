//! Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018).

use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use super::{fnv1a, LoadBalancer, Random, ServiceBalancer};
use crate::instance::Instance;

/// Points each instance has on the ring: enough that four instances share it within a few
/// percent of a quarter each.
const POINTS_PER_INSTANCE: usize = 160;

/// Sends calls with the same hash key to the same instance, moves only about `1/N` of the keys
/// when an instance joins or leaves, and never lets one instance take more than `load_factor`
/// times the mean of the calls in flight.
///
/// Each instance owns 160 points on a hash ring (placed by hashing its address, so every client
/// process builds the same ring); a key goes to the owner of the first point after the key's
/// hash. With bounded loads, an instance that already has `⌈load_factor × (in flight + 1) / N⌉`
/// calls in flight is passed over for the next point's owner, so a hot key spills over to the
/// following instances instead of overloading its own.
///
/// The key is the call's [`CallOptions::hash_key`](crate::CallOptions::hash_key), set by the
/// generated client from the argument named in `#[vsp(hash_key = "...")]`, or taken from the
/// call's `vsp-hash-key` metadata entry. Calls without a key (and retries, which must go
/// elsewhere) go to a random point of the ring, under the same bound.
///
/// ```
/// use vsp::{ConsistentHashBalancer, ServiceMesh};
///
/// let mesh = ServiceMesh::builder()
///     .load_balancer(ConsistentHashBalancer::new().load_factor(1.25))
///     .build();
/// # drop(mesh);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ConsistentHashBalancer {
    load_factor: f64,
}

impl Default for ConsistentHashBalancer {
    fn default() -> Self {
        ConsistentHashBalancer { load_factor: 1.25 }
    }
}

impl ConsistentHashBalancer {
    /// Consistent hashing with loads bounded at 1.25 times the mean (the paper's suggestion).
    pub fn new() -> Self {
        ConsistentHashBalancer::default()
    }

    /// The most calls in flight an instance may have, as a multiple of the mean (at least 1;
    /// `f64::INFINITY` turns the bound off: plain consistent hashing).
    pub fn load_factor(mut self, factor: f64) -> Self {
        self.load_factor = if factor.is_nan() {
            1.25
        } else {
            factor.max(1.0)
        };
        self
    }
}

impl LoadBalancer for ConsistentHashBalancer {
    fn for_service(&self, service: &str) -> Box<dyn ServiceBalancer> {
        Box::new(HashRing {
            load_factor: self.load_factor,
            random: Random::seeded(service),
            ring: ArcSwap::from_pointee(Ring::default()),
            building: Mutex::new(()),
        })
    }
}

/// The ring of one membership snapshot.
#[derive(Debug, Default)]
struct Ring {
    /// The instances it was built for (their addresses in memory), to tell when it is stale.
    members: Vec<usize>,
    /// (point, index of its instance in the snapshot), sorted by point.
    points: Vec<(u64, usize)>,
}

impl Ring {
    fn is_for(&self, instances: &[Arc<Instance>]) -> bool {
        self.members.len() == instances.len()
            && self
                .members
                .iter()
                .zip(instances)
                .all(|(member, instance)| *member == Arc::as_ptr(instance) as usize)
    }

    fn build(instances: &[Arc<Instance>]) -> Ring {
        let mut points = Vec::with_capacity(instances.len() * POINTS_PER_INSTANCE);
        for (index, instance) in instances.iter().enumerate() {
            let base = fnv1a(instance.key().as_bytes());
            for point in 0..POINTS_PER_INSTANCE as u64 {
                points.push((mix(base ^ point.wrapping_mul(0x9e37_79b9_7f4a_7c15)), index));
            }
        }
        points.sort_unstable();
        Ring {
            members: instances
                .iter()
                .map(|instance| Arc::as_ptr(instance) as usize)
                .collect(),
            points,
        }
    }
}

/// splitmix64's finalizer: spreads FNV's clustered outputs over the ring.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct HashRing {
    load_factor: f64,
    random: Random,
    ring: ArcSwap<Ring>,
    /// Serializes rebuilds after a membership change.
    building: Mutex<()>,
}

impl HashRing {
    fn ring(&self, instances: &[Arc<Instance>]) -> Arc<Ring> {
        let ring = self.ring.load_full();
        if ring.is_for(instances) {
            return ring;
        }
        let _building = self.building.lock().unwrap_or_else(PoisonError::into_inner);
        let ring = self.ring.load_full();
        if ring.is_for(instances) {
            return ring;
        }
        let ring = Arc::new(Ring::build(instances));
        self.ring.store(ring.clone());
        ring
    }

    /// The owner of the first point at or after `hash` that is eligible and under the bound.
    fn walk(&self, instances: &[Arc<Instance>], hash: u64) -> Option<usize> {
        let ring = self.ring(instances);
        let (mut eligible, mut in_flight) = (0usize, 0usize);
        for instance in instances.iter().filter(|i| i.is_eligible()) {
            eligible += 1;
            in_flight += instance.in_flight();
        }
        if eligible == 0 {
            return None;
        }
        // With this call placed, no instance above `bound` calls.
        let bound = (self.load_factor * (in_flight + 1) as f64 / eligible as f64).ceil();
        let start = ring.points.partition_point(|(point, _)| *point < hash);
        let len = ring.points.len();
        (0..len)
            .map(|step| ring.points[(start + step) % len].1)
            .find(|&index| {
                let instance = &instances[index];
                instance.is_eligible() && (instance.in_flight() as f64) < bound
            })
    }
}

impl ServiceBalancer for HashRing {
    fn pick(&self, instances: &[Arc<Instance>]) -> Option<usize> {
        self.walk(instances, self.random.next())
    }

    fn pick_keyed(&self, instances: &[Arc<Instance>], key: u64) -> Option<usize> {
        self.walk(instances, mix(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServiceInfo;

    fn instances(ports: std::ops::Range<u16>) -> Vec<Arc<Instance>> {
        ports
            .map(|port| Arc::new(Instance::new(ServiceInfo::new("s", "10.0.0.1", port), None)))
            .collect()
    }

    fn address(instances: &[Arc<Instance>], index: usize) -> String {
        instances[index].key().to_owned()
    }

    /// Measured: keys moved when a fourth instance joins three (goal: at most 1/4 + 5 points).
    #[test]
    fn a_fourth_instance_takes_about_a_quarter_of_the_keys() {
        // One balancer per membership, as the mesh has one ring per snapshot.
        let (before, after) = (
            ConsistentHashBalancer::new().for_service("s"),
            ConsistentHashBalancer::new().for_service("s"),
        );
        let three = instances(9000..9003);
        let four = instances(9000..9004);
        let keys = 20_000u64;
        let moved = (0..keys)
            .filter(|key| {
                let key = fnv1a(&key.to_le_bytes());
                let before = before.pick_keyed(&three, key).unwrap();
                let after = after.pick_keyed(&four, key).unwrap();
                address(&three, before) != address(&four, after)
            })
            .count();
        let share = moved as f64 / keys as f64;
        println!(
            "consistent hashing: {:.1}% of keys moved when a fourth instance joined",
            share * 100.0
        );
        assert!(share <= 0.30, "{:.1}% of keys moved", share * 100.0);
        assert!(share >= 0.20, "only {:.1}% of keys moved", share * 100.0);
    }

    #[test]
    fn the_same_key_goes_to_the_same_instance_while_loads_are_even() {
        let balancer = ConsistentHashBalancer::new().for_service("s");
        let three = instances(9000..9003);
        for key in 0..100u64 {
            let first = balancer.pick_keyed(&three, key);
            assert_eq!(balancer.pick_keyed(&three, key), first);
        }
    }

    /// Measured: the largest load over the mean with keys drawn from a Zipf distribution (a few
    /// very hot keys), every call kept in flight (goal: at most 1.25).
    #[test]
    fn bounded_loads_cap_a_skewed_key_distribution() {
        for (factor, goal) in [(1.25, Some(1.25)), (f64::INFINITY, None)] {
            let balancer = ConsistentHashBalancer::new()
                .load_factor(factor)
                .for_service("s");
            let four = instances(9000..9004);
            // Zipf(1.1) over 1,000 keys, drawn by inverting its cumulative weights.
            let weights: Vec<f64> = (1..=1000).map(|k| 1.0 / (k as f64).powf(1.1)).collect();
            let total: f64 = weights.iter().sum();
            let random = Random::seeded("zipf");
            let mut held = Vec::new();
            for _ in 0..400 {
                let mut target = (random.next() >> 11) as f64 / (1u64 << 53) as f64 * total;
                let key = weights
                    .iter()
                    .position(|w| {
                        target -= w;
                        target <= 0.0
                    })
                    .unwrap_or(999) as u64;
                let index = balancer
                    .pick_keyed(&four, fnv1a(&key.to_le_bytes()))
                    .unwrap();
                held.push(four[index].track_call());
            }
            let loads: Vec<usize> = four.iter().map(|i| i.in_flight()).collect();
            let mean = 400.0 / four.len() as f64;
            let ratio = *loads.iter().max().unwrap() as f64 / mean;
            println!(
                "consistent hashing, load factor {factor}: loads {loads:?}, max/mean {ratio:.2}"
            );
            match goal {
                Some(goal) => assert!(ratio <= goal + 1e-9, "max/mean {ratio:.2} over {goal}"),
                // Without the bound the hot keys pile up on their owners: the test would not
                // show anything if they did not.
                None => assert!(
                    ratio > 1.25,
                    "unbounded hashing looked balanced: {ratio:.2}"
                ),
            }
        }
    }
}
