//! Passive health: failures eject an instance, a successful probe re-admits it.
//!
//! Why ejection with exponential backoff: a dead instance should cost the callers one failure,
//! not one per call, and a flapping one should be tried less and less often. Why re-admission
//! only after a probe: an instance that failed is not trusted with real calls again until it has
//! answered a `health` call.
//!
//! When every instance of a service is ejected, calls fail fast with
//! [`VspError::NoHealthyInstances`](crate::VspError::NoHealthyInstances) rather than trying
//! the dead ones anyway (Envoy's "panic mode"): the probes keep running in the background and
//! re-admit an instance as soon as it answers, so the outage lasts no longer than the backoff.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{HealthStatus, Instance};

/// When a mesh ejects an instance and how long it waits before probing it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthPolicy {
    /// Consecutive transport failures (connection lost, deadline passed) that eject an
    /// instance. A refused or timed-out connect ejects at once.
    pub failure_threshold: u32,
    /// The wait before the first probe of an ejected instance; it doubles on each failed probe.
    pub base_ejection: Duration,
    /// The longest wait between probes.
    pub max_ejection: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            failure_threshold: 3,
            base_ejection: Duration::from_millis(500),
            max_ejection: Duration::from_secs(30),
        }
    }
}

/// What a reported failure did to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Still eligible.
    Tolerated,
    /// Ejected; a probe is already scheduled.
    Ejected,
    /// Ejected; whoever reported must schedule a probe after this long.
    ProbeAfter(Duration),
}

impl HealthPolicy {
    fn backoff(&self, ejections: u32) -> Duration {
        let factor = 1u32 << ejections.saturating_sub(1).min(16);
        self.base_ejection
            .saturating_mul(factor)
            .min(self.max_ejection)
    }

    pub(crate) fn record_success(&self, instance: &Instance) {
        instance.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// A call to `instance` failed; `connect` if no connection could be made at all.
    pub(crate) fn record_failure(&self, instance: &Instance, connect: bool) -> Verdict {
        let failures = instance
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if connect || failures >= self.failure_threshold {
            self.eject(instance)
        } else {
            Verdict::Tolerated
        }
    }

    /// Takes `instance` out of rotation (a failed probe, a server that is shutting down).
    pub(crate) fn eject(&self, instance: &Instance) -> Verdict {
        let first = instance.status() != HealthStatus::Unhealthy;
        instance.set_status(HealthStatus::Unhealthy);
        if first {
            instance.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                instance = instance.endpoint(),
                service = instance.service(),
                "instance ejected"
            );
        }
        if instance.probing.swap(true, Ordering::AcqRel) {
            Verdict::Ejected
        } else {
            Verdict::ProbeAfter(self.backoff(instance.ejections.load(Ordering::Relaxed)))
        }
    }

    /// A probe failed: the wait before the next one.
    pub(crate) fn probe_failed(&self, instance: &Instance) -> Duration {
        let ejections = instance.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        self.backoff(ejections)
    }

    /// A probe succeeded: back in rotation.
    pub(crate) fn readmit(&self, instance: &Instance) {
        instance.consecutive_failures.store(0, Ordering::Relaxed);
        instance.ejections.store(0, Ordering::Relaxed);
        instance.set_status(HealthStatus::Healthy);
        instance.probing.store(false, Ordering::Release);
        tracing::info!(
            instance = instance.endpoint(),
            service = instance.service(),
            "instance re-admitted"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::ServiceInfo;

    fn instance() -> Instance {
        Instance::new(ServiceInfo::new("svc", "127.0.0.1", 1))
    }

    #[test]
    fn consecutive_failures_eject_at_the_threshold() {
        let policy = HealthPolicy::default();
        let instance = instance();
        assert_eq!(policy.record_failure(&instance, false), Verdict::Tolerated);
        policy.record_success(&instance);
        assert_eq!(policy.record_failure(&instance, false), Verdict::Tolerated);
        assert_eq!(policy.record_failure(&instance, false), Verdict::Tolerated);
        assert_eq!(
            policy.record_failure(&instance, false),
            Verdict::ProbeAfter(policy.base_ejection)
        );
        assert!(!instance.is_eligible());
        // Already ejected, probe scheduled: nobody schedules a second one.
        assert_eq!(policy.record_failure(&instance, false), Verdict::Ejected);
    }

    #[test]
    fn a_refused_connect_ejects_at_once() {
        let policy = HealthPolicy::default();
        let instance = instance();
        assert!(matches!(
            policy.record_failure(&instance, true),
            Verdict::ProbeAfter(_)
        ));
        assert_eq!(instance.status(), HealthStatus::Unhealthy);
    }

    #[test]
    fn failed_probes_back_off_exponentially_up_to_the_cap() {
        let policy = HealthPolicy {
            failure_threshold: 1,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(5),
        };
        let instance = instance();
        policy.eject(&instance);
        let waits: Vec<u64> = (0..5)
            .map(|_| policy.probe_failed(&instance).as_secs())
            .collect();
        assert_eq!(waits, [2, 4, 5, 5, 5]);
        policy.readmit(&instance);
        assert_eq!(instance.status(), HealthStatus::Healthy);
        assert!(
            matches!(policy.eject(&instance), Verdict::ProbeAfter(d) if d == Duration::from_secs(1))
        );
    }
}
