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

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::{HealthStatus, Instance};

/// When a mesh ejects an instance and how long it waits before probing it.
///
/// Out-of-range values are brought into range when the mesh is built (see
/// [`HealthPolicy::sanitized`]), so no policy can make the probes spin or never eject.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthPolicy {
    /// Consecutive transport failures (connection refused or reset, a connection that stopped
    /// answering) that eject an instance. A refused or timed-out connect ejects at once. A slow
    /// endpoint (a deadline that passed while the connection kept answering) is not a failure.
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

/// The shortest wait between probes a policy may ask for.
const MIN_EJECTION: Duration = Duration::from_millis(1);

/// What a reported failure did to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Still eligible.
    Tolerated,
    /// Ejected; a probe is already scheduled.
    Ejected,
    /// Ejected; whoever reported must run the probe `ticket` after this long.
    ProbeAfter(Duration, ProbeTicket),
}

/// The right to run the one probe of an ejected instance; [`HealthPolicy::end_probe`] gives it
/// back. A ticket from before a re-admission is void, so a late exit cannot clear a newer
/// probe's claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProbeTicket(u64);

/// What is learned about one instance's health, shared by every registration of its address:
/// a re-announcement (mDNS) or a rewrite (each Consul answer) replaces the [`Instance`], never
/// this record, so an ejection and its probe outlive them.
#[derive(Debug)]
pub(crate) struct HealthRecord {
    status: AtomicU8,
    /// Transport failures since the last success.
    consecutive_failures: AtomicU32,
    /// Ejections since the instance was last healthy: the exponent of the backoff.
    ejections: AtomicU32,
    /// Moving average of call latency, in nanoseconds (0: no sample yet).
    latency_ewma_ns: AtomicU64,
    /// The peak-sensitive average of call latency, for [`PeakEwmaBalancer`](crate::PeakEwmaBalancer).
    pub(crate) peak: super::peak::PeakEwma,
    /// Times taken out of rotation, and brought back, ever (for metrics).
    ejected_total: AtomicU64,
    readmitted_total: AtomicU64,
    /// Who may change the status and run the probe; transitions happen under it, one at a time.
    transitions: Mutex<Transitions>,
    /// The last transport failure and when, for `NoHealthyInstances` to say why.
    last_failure: Mutex<Option<(std::time::Instant, Arc<str>)>>,
}

#[derive(Debug, Default)]
struct Transitions {
    /// A probe holds the ticket `probe`.
    probing: bool,
    probe: u64,
    /// The user set the instance `Unhealthy`: only the user brings it back.
    pinned_out: bool,
}

impl Default for HealthRecord {
    /// `Unknown`, nothing learned yet.
    fn default() -> Self {
        HealthRecord {
            status: AtomicU8::new(HealthStatus::Unknown.as_u8()),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            latency_ewma_ns: AtomicU64::new(0),
            peak: super::peak::PeakEwma::default(),
            ejected_total: AtomicU64::new(0),
            readmitted_total: AtomicU64::new(0),
            transitions: Mutex::new(Transitions::default()),
            last_failure: Mutex::new(None),
        }
    }
}

impl HealthRecord {
    fn transitions(&self) -> MutexGuard<'_, Transitions> {
        self.transitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn status(&self) -> HealthStatus {
        HealthStatus::from_u8(self.status.load(Ordering::Relaxed))
    }

    fn store_status(&self, status: HealthStatus) {
        self.status.store(status.as_u8(), Ordering::Relaxed);
    }

    /// The user's word: `Unhealthy` keeps the instance out (no probe or health check brings it
    /// back) until the user sets another status.
    pub(crate) fn set_by_user(&self, status: HealthStatus) {
        let mut transitions = self.transitions();
        transitions.pinned_out = status == HealthStatus::Unhealthy;
        self.store_status(status);
    }

    /// Remembers why a call to this instance failed (failures only: not on the call path).
    pub(crate) fn note_failure(&self, cause: &dyn std::fmt::Display) {
        let cause: Arc<str> = Arc::from(cause.to_string());
        *self
            .last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((std::time::Instant::now(), cause));
    }

    /// The last transport failure, and when.
    pub(crate) fn last_failure(&self) -> Option<(std::time::Instant, Arc<str>)> {
        self.last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn is_pinned_out(&self) -> bool {
        self.transitions().pinned_out
    }

    pub(crate) fn is_probing(&self) -> bool {
        self.transitions().probing
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Times the instance was ejected, and re-admitted, since it was registered.
    pub(crate) fn ejections_and_readmissions(&self) -> (u64, u64) {
        (
            self.ejected_total.load(Ordering::Relaxed),
            self.readmitted_total.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_ewma_ns.load(Ordering::Relaxed))
    }

    /// Folds one call's latency into the moving average (weight 1/5 for the new sample).
    pub(crate) fn record_latency(&self, latency: Duration) {
        let sample = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let old = self.latency_ewma_ns.load(Ordering::Relaxed);
        // Racing updates may lose a sample; an average does not mind.
        let new = if old == 0 {
            sample
        } else {
            old - old / 5 + sample / 5
        };
        self.latency_ewma_ns.store(new.max(1), Ordering::Relaxed);
        self.peak.observe(latency);
    }
}

impl HealthPolicy {
    /// This policy brought into range: a threshold of at least 1, a base ejection of at least
    /// 1 ms (zero would make the probes spin), and a maximum no shorter than the base.
    pub fn sanitized(self) -> HealthPolicy {
        let base_ejection = self.base_ejection.max(MIN_EJECTION);
        HealthPolicy {
            failure_threshold: self.failure_threshold.max(1),
            base_ejection,
            max_ejection: self.max_ejection.max(base_ejection),
        }
    }

    fn backoff(&self, ejections: u32) -> Duration {
        let factor = 1u32 << ejections.saturating_sub(1).min(16);
        self.base_ejection
            .saturating_mul(factor)
            .min(self.max_ejection)
    }

    /// A call to `instance` got its answer: its failures are forgotten, and an instance nothing
    /// was known about (`Unknown`) is now known to be `Healthy`.
    pub(crate) fn record_success(&self, instance: &Instance) {
        let record = instance.health();
        let failures = &record.consecutive_failures;
        // Reads, not writes every core must see, while calls succeed.
        if failures.load(Ordering::Relaxed) != 0 {
            failures.store(0, Ordering::Relaxed);
        }
        let unknown = HealthStatus::Unknown.as_u8();
        if record.status.load(Ordering::Relaxed) == unknown {
            // Only from `Unknown`: an ejection or the user's word in between wins.
            let _ = record.status.compare_exchange(
                unknown,
                HealthStatus::Healthy.as_u8(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// A call to `instance` failed at the transport; `connect` if no connection could be made.
    pub(crate) fn record_failure(&self, instance: &Instance, connect: bool) -> Verdict {
        let failures = instance
            .health()
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
        let record = instance.health();
        let mut transitions = record.transitions();
        let first = record.status() != HealthStatus::Unhealthy;
        record.store_status(HealthStatus::Unhealthy);
        if first {
            record.ejections.fetch_add(1, Ordering::Relaxed);
            record.ejected_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                instance = instance.key(),
                service = instance.service(),
                "instance ejected"
            );
        }
        self.claim_probe(record, &mut transitions)
            .unwrap_or(Verdict::Ejected)
    }

    fn claim_probe(&self, record: &HealthRecord, transitions: &mut Transitions) -> Option<Verdict> {
        if transitions.probing || transitions.pinned_out {
            return None;
        }
        transitions.probing = true;
        transitions.probe += 1;
        let wait = self.backoff(record.ejections.load(Ordering::Relaxed));
        Some(Verdict::ProbeAfter(wait, ProbeTicket(transitions.probe)))
    }

    /// An ejected instance whose probe ended without re-admitting it (its task died with a
    /// runtime): a new claim, so it is probed again.
    pub(crate) fn reclaim_orphan(&self, instance: &Instance) -> Option<Verdict> {
        let record = instance.health();
        let mut transitions = record.transitions();
        if record.status() != HealthStatus::Unhealthy {
            return None;
        }
        self.claim_probe(record, &mut transitions)
    }

    /// A probe failed: the wait before the next one.
    pub(crate) fn probe_failed(&self, instance: &Instance) -> Duration {
        let ejections = instance.health().ejections.fetch_add(1, Ordering::Relaxed) + 1;
        self.backoff(ejections)
    }

    /// Gives the probe's claim back (on every exit of a probe task); a no-op once a newer probe
    /// holds it or the instance was re-admitted.
    pub(crate) fn end_probe(&self, record: &HealthRecord, ticket: ProbeTicket) {
        let mut transitions = record.transitions();
        if transitions.probing && transitions.probe == ticket.0 {
            transitions.probing = false;
        }
    }

    /// A probe or health check succeeded: back in rotation, unless the user set it
    /// `Unhealthy` (false then).
    pub(crate) fn readmit(&self, instance: &Instance) -> bool {
        let record = instance.health();
        let mut transitions = record.transitions();
        if transitions.pinned_out {
            return false;
        }
        record.consecutive_failures.store(0, Ordering::Relaxed);
        record.ejections.store(0, Ordering::Relaxed);
        let was = record.status();
        record.store_status(HealthStatus::Healthy);
        transitions.probing = false;
        drop(transitions);
        if was == HealthStatus::Unhealthy {
            record.readmitted_total.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                instance = instance.key(),
                service = instance.service(),
                "instance re-admitted"
            );
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::ServiceInfo;

    fn instance() -> Instance {
        Instance::new(ServiceInfo::new("svc", "127.0.0.1", 1), None)
    }

    #[test]
    fn an_eject_racing_a_readmission_always_leaves_a_probe_or_a_healthy_instance() {
        let policy = HealthPolicy::default();
        let instance = instance();
        let Verdict::ProbeAfter(_, ticket) = policy.eject(&instance) else {
            panic!("the first ejection must schedule a probe");
        };
        // The probe re-admits; an eject lands right after: it must get a new probe of its own.
        assert!(policy.readmit(&instance));
        let Verdict::ProbeAfter(_, newer) = policy.eject(&instance) else {
            panic!(
                "an ejection after a re-admission scheduled no probe: it would stay out forever"
            );
        };
        // The old probe's task exits late: it must not void the newer claim.
        policy.end_probe(instance.health(), ticket);
        assert!(instance.health().is_probing());
        policy.end_probe(instance.health(), newer);
        assert!(!instance.health().is_probing());
        // Nobody probes it now: it is an orphan, and is reclaimed.
        assert!(matches!(
            policy.reclaim_orphan(&instance),
            Some(Verdict::ProbeAfter(..))
        ));
    }

    #[test]
    fn a_user_pinned_unhealthy_instance_is_never_readmitted_by_a_probe() {
        let policy = HealthPolicy::default();
        let instance = instance();
        instance.health().set_by_user(HealthStatus::Unhealthy);
        assert!(!policy.readmit(&instance));
        assert_eq!(instance.status(), HealthStatus::Unhealthy);
        assert_eq!(
            policy.eject(&instance),
            Verdict::Ejected,
            "no probe for a pinned instance"
        );
        instance.health().set_by_user(HealthStatus::Healthy);
        assert!(instance.is_eligible());
    }

    #[test]
    fn a_zero_base_ejection_is_brought_into_range() {
        let policy = HealthPolicy {
            failure_threshold: 0,
            base_ejection: Duration::ZERO,
            max_ejection: Duration::ZERO,
        }
        .sanitized();
        assert_eq!(policy.failure_threshold, 1);
        assert!(policy.base_ejection >= MIN_EJECTION);
        assert!(policy.max_ejection >= policy.base_ejection);
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
            Verdict::ProbeAfter(policy.base_ejection, ProbeTicket(1))
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
            Verdict::ProbeAfter(..)
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
        assert!(policy.readmit(&instance));
        assert_eq!(instance.status(), HealthStatus::Healthy);
        assert!(
            matches!(policy.eject(&instance), Verdict::ProbeAfter(d, _) if d == Duration::from_secs(1))
        );
    }
}
