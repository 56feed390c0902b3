//! The service mesh: which instances each service has, which of them may get traffic, and which
//! one the next call goes to.
//!
//! Discovery pushes instances in (through [`MeshRegistry`]); clients pull a pick out. Why the
//! instance lists are copy-on-write snapshots: membership changes a few times a minute while
//! picks happen on every call, so a pick reads a snapshot without taking any lock, and a change
//! publishes a new one.

use crate::fast_map::FastMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;

// Where these lived before the plug-in types moved below the mesh; still found here.
pub(crate) use crate::discovery::MeshRegistry;
pub(crate) use crate::instance::{
    HealthPolicy, HealthStatus, Instance, InstanceState, ServiceInfo,
};

use crate::balancer::{LoadBalancer, ServiceBalancer};
use crate::discovery::{Discovery, Membership, StaticDiscovery};
use crate::error::VspError;
use crate::instance::{HealthRecord, ProbeTicket, Verdict};
use crate::transport::Address;
use crate::WeightedBalancer;

/// One service's instances and its balancer state.
struct ServiceEntry {
    instances: ArcSwap<Vec<Arc<Instance>>>,
    balancer: Box<dyn ServiceBalancer>,
    /// Set by every pick, cleared when discovery asks (`MeshRegistry::take_picked`).
    picked: AtomicBool,
}

type Services = FastMap<String, Arc<ServiceEntry>>;

/// How the mesh asks an ejected instance whether it is back: a `health` call on a fresh
/// connection. Implemented by the client layer (which knows how to dial); the mesh keeps the
/// first one a client gives it, so probes outlive the client that started them.
pub(crate) trait Prober: Send + Sync + 'static {
    /// True if `instance` answered `health` without an error.
    fn probe<'a>(&'a self, instance: &'a Instance) -> crate::BoxFuture<'a, bool>;
}

struct MeshInner {
    services: ArcSwap<Services>,
    /// Runs the probes of ejected instances (set by the first client built on this mesh).
    prober: arc_swap::ArcSwapOption<Box<dyn Prober>>,
    /// Serializes membership changes (the copy-on-write of the snapshots).
    changing: Mutex<()>,
    balancer: Box<dyn LoadBalancer>,
    health: HealthPolicy,
    /// Woken whenever an instance is added or changed (callers waiting for a first resolution).
    changed: tokio::sync::Notify,
}

/// Routes calls by service name: instances from discovery, filtered by health, picked by the load
/// balancer.
///
/// Cheap to clone; clones share one mesh.
///
/// ```
/// use vsp::{ServiceInfo, ServiceMesh};
///
/// let mesh = ServiceMesh::new(); // static discovery, round robin
/// mesh.register(ServiceInfo::new("user-service", "127.0.0.1", 9090))?;
/// mesh.register(ServiceInfo::new("user-service", "127.0.0.1", 9091))?;
/// let first = mesh.pick("user-service")?;
/// let second = mesh.pick("user-service")?;
/// assert_ne!(first.address(), second.address());
/// # Ok::<(), vsp::VspError>(())
/// ```
#[derive(Clone)]
pub struct ServiceMesh {
    inner: Arc<MeshInner>,
    /// Kept alive as long as the mesh: it feeds the mesh through a weak handle.
    discovery: Arc<dyn Discovery>,
}

impl std::fmt::Debug for ServiceMesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceMesh")
            .field("services", &self.services())
            .finish_non_exhaustive()
    }
}

/// Builds a [`ServiceMesh`].
#[derive(Default)]
pub struct ServiceMeshBuilder {
    discovery: Option<Arc<dyn Discovery>>,
    balancer: Option<Box<dyn LoadBalancer>>,
    health: HealthPolicy,
}

impl std::fmt::Debug for ServiceMeshBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceMeshBuilder").finish_non_exhaustive()
    }
}

impl ServiceMeshBuilder {
    /// Where instances come from (default: [`StaticDiscovery`], only what is registered by hand).
    pub fn discovery(mut self, discovery: impl Discovery) -> Self {
        self.discovery = Some(Arc::new(discovery));
        self
    }

    /// How a call picks among eligible instances (default: [`WeightedBalancer`], which is round
    /// robin while every weight is equal; [`RoundRobinBalancer`](crate::RoundRobinBalancer)
    /// ignores weights).
    pub fn load_balancer(mut self, balancer: impl LoadBalancer) -> Self {
        self.balancer = Some(Box::new(balancer));
        self
    }

    /// When instances are ejected and how often ejected ones are probed
    /// (default [`HealthPolicy::default`]: 3 consecutive failures, probes after 0.5 s doubling
    /// to 30 s).
    pub fn health_policy(mut self, policy: HealthPolicy) -> Self {
        self.health = policy;
        self
    }

    /// Builds the mesh and starts its discovery.
    pub fn build(self) -> ServiceMesh {
        let inner = Arc::new(MeshInner {
            services: ArcSwap::from_pointee(Services::default()),
            changing: Mutex::new(()),
            balancer: self
                .balancer
                .unwrap_or_else(|| Box::new(WeightedBalancer::new())),
            health: self.health.sanitized(),
            changed: tokio::sync::Notify::new(),
            prober: arc_swap::ArcSwapOption::empty(),
        });
        let discovery = self
            .discovery
            .unwrap_or_else(|| Arc::new(StaticDiscovery::new()));
        let membership: Arc<dyn Membership> = inner.clone();
        discovery.start(MeshRegistry::new(Arc::downgrade(&membership)));
        ServiceMesh { inner, discovery }
    }
}

impl Default for ServiceMesh {
    fn default() -> Self {
        ServiceMesh::new()
    }
}

impl ServiceMesh {
    /// A mesh with static discovery and round-robin balancing.
    pub fn new() -> Self {
        ServiceMesh::builder().build()
    }

    /// Starts building a mesh.
    pub fn builder() -> ServiceMeshBuilder {
        ServiceMeshBuilder::default()
    }

    /// Adds an instance, or updates the one at the same address.
    ///
    /// # Errors
    /// [`VspError::InvalidInstance`] for an empty name or host, or a weight that is not a finite
    /// number above zero.
    pub fn register(&self, info: ServiceInfo) -> Result<(), VspError> {
        self.inner.upsert(info)
    }

    /// Removes the TCP instance of `service` at `host:port`; true if it was registered.
    pub fn deregister(&self, service: &str, host: &str, port: u16) -> bool {
        self.inner.remove(service, &Address::tcp(host, port))
    }

    /// Removes the instance of `service` at `address`; true if it was registered.
    pub fn deregister_at(&self, service: &str, address: &Address) -> bool {
        self.inner.remove(service, address)
    }

    /// The instances of `service` with their live status, weight, calls in flight and latency
    /// (empty if the service is unknown).
    pub fn instances(&self, service: &str) -> Vec<InstanceState> {
        self.instance_handles(service)
            .iter()
            .map(|instance| instance.state())
            .collect()
    }

    /// The live instances of `service`.
    pub(crate) fn instance_handles(&self, service: &str) -> Vec<Arc<Instance>> {
        self.inner
            .services
            .load()
            .get(service)
            .map(|entry| entry.instances.load().to_vec())
            .unwrap_or_default()
    }

    /// Announces a local server through this mesh's discovery.
    pub(crate) async fn announce(&self, info: &ServiceInfo) -> Result<(), VspError> {
        self.discovery.announce(info).await
    }

    /// Withdraws an announcement.
    pub(crate) async fn withdraw(&self, info: &ServiceInfo) -> Result<(), VspError> {
        self.discovery.withdraw(info).await
    }

    /// As [`pick`](ServiceMesh::pick), but a service with no instance yet may wait for the
    /// discovery's first answer, up to its `first_resolution_wait` (and `until`); once the
    /// discovery has answered for it, `NoInstances` comes at once.
    pub(crate) async fn pick_or_wait(
        &self,
        service: &str,
        key: Option<u64>,
        until: tokio::time::Instant,
    ) -> Result<Arc<Instance>, VspError> {
        match self.pick_keyed(service, key) {
            Err(VspError::NoInstances { .. }) => {}
            picked => return picked,
        }
        self.discovery.watch(service);
        let wait = self.discovery.first_resolution_wait();
        let until = until.min(crate::deadline::after(tokio::time::Instant::now(), wait));
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.pick_keyed(service, key) {
                Err(VspError::NoInstances { .. })
                    if tokio::time::Instant::now() < until
                        && !self.discovery.has_answered(service) =>
                {
                    if tokio::time::timeout_at(until, changed).await.is_err() {
                        return self.pick(service).map_err(|err| self.explain(service, err));
                    }
                }
                picked => return picked.map_err(|err| self.explain(service, err)),
            }
        }
    }

    /// A discovery that never answered for `service` says why, instead of "no instances".
    fn explain(&self, service: &str, err: VspError) -> VspError {
        match err {
            VspError::NoInstances { .. } => self.discovery.resolution_error(service).unwrap_or(err),
            other => other,
        }
    }

    /// The health policy, for the client that reports call outcomes.
    pub(crate) fn health(&self) -> &HealthPolicy {
        &self.inner.health
    }

    /// Gives the mesh a way to probe ejected instances, unless it has one.
    pub(crate) fn offer_prober(&self, prober: impl Prober) {
        if self.inner.prober.load().is_none() {
            let _ = self.inner.prober.compare_and_swap(
                &None::<Arc<Box<dyn Prober>>>,
                Some(Arc::new(Box::new(prober))),
            );
        }
    }

    /// A transport failure of a call to `instance`, for `cause`; `connect` if no connection
    /// could be made.
    pub(crate) fn report_failure(
        &self,
        instance: &Arc<Instance>,
        connect: bool,
        cause: &dyn std::fmt::Display,
    ) {
        instance.health().note_failure(cause);
        let verdict = self.inner.health.record_failure(instance, connect);
        self.inner.follow_up(instance, verdict);
    }

    /// Takes `instance` out of rotation until a probe re-admits it, for `cause`.
    pub(crate) fn eject(&self, instance: &Arc<Instance>, cause: &dyn std::fmt::Display) {
        instance.health().note_failure(cause);
        let verdict = self.inner.health.eject(instance);
        self.inner.follow_up(instance, verdict);
    }

    /// Back in rotation after a health check answered (unless the user set it `Unhealthy`).
    pub(crate) fn readmit(&self, instance: &Instance) -> bool {
        self.inner.health.readmit(instance)
    }

    /// Schedules a probe for every ejected instance that has none (its probe died with the
    /// runtime it ran on). Called from the clients' sweepers and whenever a pick finds no
    /// healthy instance, so no instance stays out for good.
    pub(crate) fn revive_orphans(&self) {
        for entry in self.inner.services.load().values() {
            self.inner.revive(&entry.instances.load());
        }
    }

    /// The names of the services with at least one instance, sorted.
    pub fn services(&self) -> Vec<String> {
        let services = self.inner.services.load();
        let mut names: Vec<String> = services
            .iter()
            .filter(|(_, entry)| !entry.instances.load().is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    /// Sets the health status of the TCP instance of `service` at `host:port`; true if it
    /// exists. `Unhealthy` takes it out of rotation until it is set back.
    pub fn set_status(&self, service: &str, host: &str, port: u16, status: HealthStatus) -> bool {
        self.set_status_at(service, &Address::tcp(host, port), status)
    }

    /// Sets the health status of the instance of `service` at `address`; true if it exists.
    pub fn set_status_at(&self, service: &str, address: &Address, status: HealthStatus) -> bool {
        match self.inner.find(service, address) {
            Some(instance) => {
                instance.health().set_by_user(status);
                true
            }
            None => false,
        }
    }

    /// Picks the instance the next call to `service` should go to.
    ///
    /// # Errors
    /// [`VspError::NoInstances`] if none is registered, [`VspError::NoHealthyInstances`] if all
    /// are unhealthy.
    pub fn pick(&self, service: &str) -> Result<Arc<Instance>, VspError> {
        self.pick_keyed(service, None)
    }

    /// As [`pick`](Self::pick), for a call with a hash key (routed by key by balancers that do,
    /// such as [`ConsistentHashBalancer`](crate::ConsistentHashBalancer)).
    pub(crate) fn pick_keyed(
        &self,
        service: &str,
        key: Option<u64>,
    ) -> Result<Arc<Instance>, VspError> {
        let services = self.inner.services.load();
        let no_instances = || VspError::NoInstances {
            service: service.to_owned(),
        };
        let entry = services.get(service).ok_or_else(no_instances)?;
        // Read first: the flag's cache line is written once per discovery poll, not per call.
        if !entry.picked.load(Ordering::Relaxed) {
            entry.picked.store(true, Ordering::Relaxed);
        }
        let instances = entry.instances.load();
        if instances.is_empty() {
            return Err(no_instances());
        }
        // The balancer checked eligibility, but another thread may eject its choice before the
        // check below: a pick that lost that race picks again (a bounded number of times) rather
        // than calling a service with healthy instances left unavailable.
        let pick = |instances: &[Arc<Instance>]| match key {
            Some(key) => entry.balancer.pick_keyed(instances, key),
            None => entry.balancer.pick(instances),
        };
        let mut picked = pick(&instances);
        let mut again = 0;
        loop {
            match picked {
                Some(index) if instances.get(index).is_some_and(|i| i.is_eligible()) => {
                    return Ok(instances[index].clone());
                }
                Some(_) if again < instances.len() => {
                    again += 1;
                    picked = pick(&instances);
                }
                _ => break,
            }
        }
        self.inner.revive(&instances);
        Err(VspError::NoHealthyInstances {
            service: service.to_owned(),
            instances: instances.len(),
            last_failure: instances
                .iter()
                .filter_map(|instance| instance.health().last_failure())
                .max_by_key(|(at, _)| *at)
                .map(|(_, cause)| cause.to_string()),
        })
    }
}

impl MeshInner {
    fn lock_changes(&self) -> MutexGuard<'_, ()> {
        self.changing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn upsert(&self, info: ServiceInfo) -> Result<(), VspError> {
        info.validate()?;
        let _changing = self.lock_changes();
        let services = self.services.load();
        let entry = match services.get(info.name()) {
            Some(entry) => entry.clone(),
            None => {
                let entry = Arc::new(ServiceEntry {
                    instances: ArcSwap::from_pointee(Vec::new()),
                    balancer: self.balancer.for_service(info.name()),
                    picked: AtomicBool::new(false),
                });
                let mut next = Services::clone(&services);
                next.insert(info.name().to_owned(), entry.clone());
                self.services.store(Arc::new(next));
                entry
            }
        };
        let mut instances = Vec::clone(&entry.instances.load());
        let endpoint = info.address().to_string();
        match instances
            .iter_mut()
            .find(|existing| *existing.key() == *endpoint)
        {
            // The same address again: a new registration, the same health record.
            Some(existing) => {
                *existing = Arc::new(Instance::new(info, Some(existing.health().clone())));
            }
            None => instances.push(Arc::new(Instance::new(info, None))),
        }
        entry.instances.store(Arc::new(instances));
        self.changed.notify_waiters();
        Ok(())
    }

    fn remove(&self, service: &str, address: &Address) -> bool {
        let _changing = self.lock_changes();
        let services = self.services.load();
        let Some(entry) = services.get(service) else {
            return false;
        };
        let current = entry.instances.load();
        let kept: Vec<Arc<Instance>> = current
            .iter()
            .filter(|instance| !instance.has_address(address))
            .cloned()
            .collect();
        let removed = kept.len() != current.len();
        if removed {
            entry.instances.store(Arc::new(kept));
        }
        removed
    }

    fn instances(&self, service: &str) -> Vec<ServiceInfo> {
        self.services
            .load()
            .get(service)
            .map(|entry| entry.instances.load().iter().map(|i| i.info()).collect())
            .unwrap_or_default()
    }

    fn find(&self, service: &str, address: &Address) -> Option<Arc<Instance>> {
        let services = self.services.load();
        let instances = services.get(service)?.instances.load();
        instances
            .iter()
            .find(|instance| instance.has_address(address))
            .cloned()
    }
}

impl MeshInner {
    fn follow_up(self: &Arc<Self>, instance: &Arc<Instance>, verdict: Verdict) {
        if let Verdict::ProbeAfter(wait, ticket) = verdict {
            self.spawn_probe(instance, wait, ticket);
        }
    }

    fn revive(self: &Arc<Self>, instances: &[Arc<Instance>]) {
        for instance in instances.iter().filter(|i| !i.is_eligible()) {
            if let Some(verdict) = self.health.reclaim_orphan(instance) {
                tracing::debug!(
                    instance = instance.key(),
                    "re-probing an ejected instance whose probe ended"
                );
                self.follow_up(instance, verdict);
            }
        }
    }

    /// Probes an ejected instance after `wait`, backing off, until it answers `health` (then it
    /// is re-admitted), it leaves the mesh, or the mesh is dropped. The probe's claim is given
    /// back on every exit, a runtime shutting down under it included.
    fn spawn_probe(
        self: &Arc<Self>,
        instance: &Arc<Instance>,
        wait: Duration,
        ticket: ProbeTicket,
    ) {
        let record = instance.health().clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Outside a runtime nobody can probe now; a later pick or sweep reclaims it.
            self.health.end_probe(&record, ticket);
            return;
        };
        let mesh = Arc::downgrade(self);
        let service = instance.service().to_owned();
        let endpoint = instance.key_arc().clone();
        let policy = self.health;
        runtime.spawn(async move {
            struct EndProbe(Arc<HealthRecord>, ProbeTicket, HealthPolicy);
            impl Drop for EndProbe {
                fn drop(&mut self) {
                    self.2.end_probe(&self.0, self.1);
                }
            }
            let _end = EndProbe(record.clone(), ticket, policy);
            let mut wait = wait;
            loop {
                tokio::time::sleep(wait).await;
                let Some(mesh) = mesh.upgrade() else {
                    return;
                };
                // Looked up each time: a re-registration replaces the instance, not its record.
                let Some(instance) = mesh.find_instance(&service, &endpoint) else {
                    return; // it left the mesh
                };
                if !Arc::ptr_eq(instance.health(), &record) || record.is_pinned_out() {
                    return;
                }
                let Some(prober) = mesh.prober.load_full() else {
                    tracing::warn!(instance = %endpoint, "no client to probe an ejected instance with");
                    return;
                };
                if prober.probe(&instance).await {
                    mesh.health.readmit(&instance);
                    return;
                }
                wait = mesh.health.probe_failed(&instance);
            }
        });
    }

    fn find_instance(&self, service: &str, endpoint: &str) -> Option<Arc<Instance>> {
        let services = self.services.load();
        let instances = services.get(service)?.instances.load();
        instances.iter().find(|i| i.key() == endpoint).cloned()
    }
}

impl Membership for MeshInner {
    fn upsert(&self, info: ServiceInfo) -> Result<(), VspError> {
        MeshInner::upsert(self, info)
    }

    fn remove(&self, service: &str, address: &Address) -> bool {
        MeshInner::remove(self, service, address)
    }

    fn instances(&self, service: &str) -> Vec<ServiceInfo> {
        MeshInner::instances(self, service)
    }

    fn answered(&self, _service: &str) {
        self.changed.notify_waiters();
    }

    fn take_picked(&self, service: &str) -> bool {
        self.services
            .load()
            .get(service)
            .is_some_and(|entry| entry.picked.swap(false, Ordering::Relaxed))
    }
}
