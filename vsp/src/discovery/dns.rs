//! Discovery from DNS (feature `dns`): SRV records, then the targets' A/AAAA records, re-resolved
//! when their TTL runs out. What Kubernetes headless services, Consul's DNS interface and Nomad
//! expose.
//!
//! Why per service and on demand: a DNS name answers for one service, so a service is resolved
//! the first time a call needs it (or at start, for the services configured), then kept fresh
//! by a task of its own that sleeps until the answer's TTL runs out (never less than
//! `min_interval`). A resolver that does not answer leaves the last answer in place.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use super::{Discovery, MeshRegistry};
use crate::error::VspError;
use crate::instance::ServiceInfo;

/// The default SRV name: the `vsp` port of `service` in `domain`.
pub(crate) const DEFAULT_SRV_TEMPLATE: &str = "_vsp._tcp.{service}.{domain}";

/// The default least time between two resolutions of one service, whatever the TTL.
pub(crate) const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How [`DnsDiscovery`] finds instances. Built with [`DnsConfig::srv`] or [`DnsConfig::host`].
#[derive(Debug, Clone)]
pub struct DnsConfig {
    domain: String,
    mode: Mode,
    server: Option<SocketAddr>,
    min_interval: Duration,
    max_interval: Duration,
    timeout: Duration,
    first_resolution_wait: Duration,
    services: Vec<String>,
    max_watches: usize,
}

#[derive(Debug, Clone)]
enum Mode {
    /// SRV records at this name template, then A/AAAA of their targets.
    Srv(String),
    /// A/AAAA records of `{service}.{domain}`, every address on this port.
    Host(u16),
}

impl DnsConfig {
    /// SRV discovery in `domain` (for example `default.svc.cluster.local`): a service `users`
    /// resolves `_vsp._tcp.users.<domain>` (see [`name_template`](DnsConfig::name_template));
    /// only the lowest priority is used, and the SRV weights become instance weights.
    pub fn srv(domain: impl Into<String>) -> Self {
        DnsConfig::new(domain.into(), Mode::Srv(DEFAULT_SRV_TEMPLATE.to_owned()))
    }

    /// Plain A/AAAA discovery in `domain`, each address of `<service>.<domain>` an instance on
    /// `port`: for headless services without named ports.
    pub fn host(domain: impl Into<String>, port: u16) -> Self {
        DnsConfig::new(domain.into(), Mode::Host(port))
    }

    fn new(domain: String, mode: Mode) -> Self {
        DnsConfig {
            domain: domain.trim_end_matches('.').to_owned(),
            mode,
            server: None,
            min_interval: DEFAULT_MIN_INTERVAL,
            max_interval: Duration::from_secs(60),
            timeout: Duration::from_secs(2),
            first_resolution_wait: Duration::from_secs(3),
            services: Vec::new(),
            max_watches: 256,
        }
    }

    /// The SRV name of a service, with `{service}` and `{domain}` replaced (default
    /// `_vsp._tcp.{service}.{domain}`; `_grpc._tcp.{service}.{domain}` for a port named `grpc`).
    /// No effect in host mode.
    pub fn name_template(mut self, template: impl Into<String>) -> Self {
        if let Mode::Srv(current) = &mut self.mode {
            *current = template.into();
        }
        self
    }

    /// The resolver to ask (UDP, then TCP for truncated answers); by default the system's
    /// (`/etc/resolv.conf`).
    pub fn server(mut self, server: SocketAddr) -> Self {
        self.server = Some(server);
        self
    }

    /// The least time between two resolutions of one service, however short the TTL (default
    /// 1 s).
    pub fn min_interval(mut self, interval: Duration) -> Self {
        self.min_interval = interval;
        self
    }

    /// The longest a resolved answer is kept before asking again, however long the TTL (default
    /// 60 s).
    pub fn max_interval(mut self, interval: Duration) -> Self {
        self.max_interval = interval;
        self
    }

    /// How long one query may take (default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a call to a service not resolved yet waits for its first answer (default 3 s).
    pub fn first_resolution_wait(mut self, wait: Duration) -> Self {
        self.first_resolution_wait = wait;
        self
    }

    /// Services to resolve as soon as the mesh is built, before any call asks.
    pub fn services<I, S>(mut self, services: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.services = services.into_iter().map(Into::into).collect();
        self
    }

    /// The name asked for `service`.
    fn name_of(&self, service: &str) -> String {
        let name = match &self.mode {
            Mode::Srv(template) => template
                .replace("{service}", service)
                .replace("{domain}", &self.domain),
            Mode::Host(_) => format!("{service}.{}", self.domain),
        };
        // Fully qualified: no search list, one query.
        format!("{}.", name.trim_end_matches('.'))
    }
}

/// Discovery from DNS SRV records (then the targets' A/AAAA records), or from A/AAAA records on
/// a fixed port, re-resolved when the answer's TTL runs out; see [`DnsConfig`].
///
/// ```no_run
/// use vsp::discovery::{DnsConfig, DnsDiscovery};
///
/// let dns = DnsDiscovery::new(DnsConfig::srv("default.svc.cluster.local"))?;
/// let mesh = vsp::ServiceMesh::builder().discovery(dns).build();
/// # Ok::<(), vsp::VspError>(())
/// ```
pub struct DnsDiscovery {
    shared: Arc<Shared>,
}

struct Shared {
    config: DnsConfig,
    resolver: TokioResolver,
    registry: Mutex<Option<MeshRegistry>>,
    watches: Mutex<HashMap<String, Watch>>,
}

struct Watch {
    answered: bool,
    /// Why the last resolution failed, for `NoInstances` errors before any answer.
    failure: String,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn dns_error(reason: String) -> VspError {
    VspError::Discovery {
        backend: "dns",
        reason,
    }
}

impl DnsDiscovery {
    /// A discovery resolving with `config`.
    ///
    /// # Errors
    /// [`VspError::Discovery`] if no resolver is configured and the system's configuration
    /// cannot be read.
    pub fn new(config: DnsConfig) -> Result<Self, VspError> {
        let mut builder = match config.server {
            Some(server) => {
                let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
                for connection in &mut name_server.connections {
                    connection.port = server.port();
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), vec![name_server]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio().map_err(|err| {
                dns_error(format!(
                    "cannot read the system's resolver configuration: {err}"
                ))
            })?,
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.timeout = config.timeout;
        options.attempts = 1;
        // The discovery keeps the answer itself and asks again when its TTL ends.
        options.cache_size = 0;
        let resolver = builder
            .build()
            .map_err(|err| dns_error(format!("cannot build the resolver: {err}")))?;
        Ok(DnsDiscovery {
            shared: Arc::new(Shared {
                config,
                resolver,
                registry: Mutex::new(None),
                watches: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl Shared {
    /// Starts resolving `service` once, if a runtime and the mesh are there.
    fn watch(self: &Arc<Self>, service: &str) {
        let Some(registry) = lock(&self.registry).clone() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut watches = lock(&self.watches);
        if watches.contains_key(service) || watches.len() >= self.config.max_watches {
            return;
        }
        runtime.spawn(resolve_loop(
            Arc::downgrade(self),
            registry,
            service.to_owned(),
        ));
        watches.insert(
            service.to_owned(),
            Watch {
                answered: false,
                failure: "no answer from DNS yet".to_owned(),
            },
        );
    }
}

impl Discovery for DnsDiscovery {
    fn start(&self, registry: MeshRegistry) {
        *lock(&self.shared.registry) = Some(registry);
        for service in self.shared.config.services.clone() {
            self.shared.watch(&service);
        }
    }

    fn watch(&self, service: &str) {
        self.shared.watch(service);
    }

    fn has_answered(&self, service: &str) -> bool {
        lock(&self.shared.watches)
            .get(service)
            .is_some_and(|watch| watch.answered)
    }

    fn first_resolution_wait(&self) -> Duration {
        self.shared.config.first_resolution_wait
    }

    fn resolution_error(&self, service: &str) -> Option<VspError> {
        let watches = lock(&self.shared.watches);
        let watch = watches.get(service).filter(|watch| !watch.answered)?;
        Some(dns_error(format!(
            "no instance of `{service}` known: {} was not resolved ({})",
            self.shared.config.name_of(service),
            watch.failure
        )))
    }
}

/// One answer: the instances (address → weight) and how long it holds.
struct Answer {
    instances: BTreeMap<(IpAddr, u16), f64>,
    ttl: Duration,
}

/// Why a resolution gave no answer.
enum Failure {
    /// The name does not exist, or has no records of the type: no instances.
    NoSuchName,
    /// The resolver failed or did not answer: keep what is known.
    Unreachable(String),
}

/// Keeps one service's instances in the mesh in step with DNS.
async fn resolve_loop(shared: std::sync::Weak<Shared>, registry: MeshRegistry, service: String) {
    let mut known: HashSet<(IpAddr, u16)> = HashSet::new();
    let mut failures: u32 = 0;
    loop {
        if registry.is_closed() {
            return;
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let config = &shared.config;
        let name = config.name_of(&service);
        let wait = match resolve(&shared, &name).await {
            Ok(answer) => {
                failures = 0;
                let now: HashSet<(IpAddr, u16)> = answer.instances.keys().copied().collect();
                for ((ip, port), weight) in &answer.instances {
                    let info = ServiceInfo::new(service.as_str(), ip.to_string(), *port)
                        .with_weight(*weight);
                    if let Err(err) = registry.upsert(info) {
                        tracing::warn!(%service, %name, "skipping a DNS instance: {err}");
                    }
                }
                for (ip, port) in known.difference(&now) {
                    registry.remove(&service, &ip.to_string(), *port);
                }
                known = now;
                mark_answered(&shared, &registry, &service);
                answer.ttl.clamp(config.min_interval, config.max_interval)
            }
            Err(Failure::NoSuchName) => {
                failures = 0;
                for (ip, port) in known.drain() {
                    registry.remove(&service, &ip.to_string(), port);
                }
                mark_answered(&shared, &registry, &service);
                config
                    .min_interval
                    .max(Duration::from_secs(1))
                    .min(config.max_interval)
            }
            Err(Failure::Unreachable(reason)) => {
                failures += 1;
                if let Some(watch) = lock(&shared.watches).get_mut(&service) {
                    watch.failure = reason.clone();
                }
                tracing::warn!(%service, %name, "DNS resolution failed, keeping the last known instances: {reason}");
                (config.min_interval * 2u32.saturating_pow(failures.min(5)))
                    .min(config.max_interval)
            }
        };
        drop(shared);
        tokio::time::sleep(wait).await;
    }
}

fn mark_answered(shared: &Shared, registry: &MeshRegistry, service: &str) {
    let first = lock(&shared.watches)
        .get_mut(service)
        .is_some_and(|watch| !std::mem::replace(&mut watch.answered, true));
    if first {
        registry.answered(service);
    }
}

/// Resolves `name` as the configuration says.
async fn resolve(shared: &Shared, name: &str) -> Result<Answer, Failure> {
    let failure = |err: hickory_resolver::net::NetError| {
        if err.is_nx_domain() || err.is_no_records_found() {
            Failure::NoSuchName
        } else {
            Failure::Unreachable(format!("{name}: {err}"))
        }
    };
    let resolver = &shared.resolver;
    match shared.config.mode {
        Mode::Host(port) => {
            let ips = resolver.lookup_ip(name).await.map_err(failure)?;
            let ttl = ips
                .valid_until()
                .saturating_duration_since(std::time::Instant::now());
            let instances = ips.iter().map(|ip| ((ip, port), 1.0)).collect();
            Ok(Answer { instances, ttl })
        }
        Mode::Srv(_) => {
            let lookup = resolver.srv_lookup(name).await.map_err(failure)?;
            let mut ttl = lookup
                .valid_until()
                .saturating_duration_since(std::time::Instant::now());
            let records: Vec<_> = lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::SRV(srv) => Some(srv.clone()),
                    _ => None,
                })
                .collect();
            let Some(lowest) = records.iter().map(|srv| srv.priority).min() else {
                return Err(Failure::NoSuchName);
            };
            let mut instances = BTreeMap::new();
            for srv in records.iter().filter(|srv| srv.priority == lowest) {
                // SRV weight 0 means "only if nothing else": the smallest weight the mesh takes.
                let weight =
                    f64::from(srv.weight.max(1)) * if srv.weight == 0 { 0.01 } else { 1.0 };
                let target = srv.target.to_string();
                // The targets' addresses often come in the same answer; otherwise ask.
                let mut ips: Vec<IpAddr> = lookup
                    .additionals()
                    .iter()
                    .filter(|record| record.name == srv.target)
                    .filter_map(|record| match &record.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                        _ => None,
                    })
                    .collect();
                if ips.is_empty() {
                    match resolver.lookup_ip(target.as_str()).await {
                        Ok(found) => {
                            ttl = ttl.min(
                                found
                                    .valid_until()
                                    .saturating_duration_since(std::time::Instant::now()),
                            );
                            ips.extend(found.iter());
                        }
                        Err(err) if err.is_nx_domain() || err.is_no_records_found() => {
                            tracing::warn!(%name, %target, "an SRV target has no address; skipped");
                        }
                        Err(err) => return Err(Failure::Unreachable(format!("{target}: {err}"))),
                    }
                }
                for ip in ips {
                    instances.insert((ip, srv.port), weight);
                }
            }
            Ok(Answer { instances, ttl })
        }
    }
}
