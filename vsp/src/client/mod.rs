//! The client side: [`VspClient`] routes each call through the mesh to a pooled, multiplexed
//! connection, and fails over when an instance fails.
//!
//! Why multiplexing: one connection carries many calls at once, matched by request id, so a
//! slow call never blocks a fast one and a busy client needs a handful of sockets, not one per
//! call. Why a few connections per instance (`max_transports`) rather than one: a single
//! connection's reader is a single task; a few spread the work over cores under load.
//!
//! Why retries are split in two: a call that never reached the server (no connection, a
//! connection already closed, a server that answered `shutting_down` or `overloaded` without
//! running it) is always safe to send elsewhere. A call that was written may have run; it is
//! sent again only if its method is idempotent (or the client is told every call is), and only
//! within a retry budget, so a struggling service does not get a retry storm on top of its load.

mod connection;
mod pool;
mod retry;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use arc_swap::ArcSwap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use connection::{CallFailure, ErrorBody, RawResponse};
pub use pool::PoolStats;
use pool::{InstancePool, PoolCounters, PoolError, PoolLimits};
use retry::RetryBudget;

use crate::error::{CallError, ErrorCode, VspError};
use crate::mesh::{Instance, ServiceMesh, Verdict};
use crate::protocol::DEFAULT_MAX_FRAME_SIZE;

/// The default deadline of a call: 30 s, as Velithon's.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The default bound on opening a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default number of connections per instance.
pub const DEFAULT_MAX_TRANSPORTS: usize = 5;
/// The default limit of calls in flight on one connection.
pub const DEFAULT_MAX_IN_FLIGHT_PER_CONNECTION: usize = 1024;
/// The default time after which a connection without calls is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The default number of attempts of one call, the first included.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone)]
struct ClientConfig {
    limits: PoolLimits,
    timeout: Duration,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_attempts: u32,
    retry_written_calls: bool,
    retry_ratio: f64,
    retry_reserve: u32,
    health_check_interval: Option<Duration>,
}

struct ClientInner {
    mesh: ServiceMesh,
    config: ClientConfig,
    /// One pool per instance, read without a lock on every call...
    pools: ArcSwap<HashMap<Arc<str>, Arc<InstancePool>>>,
    /// ...and changed under this one.
    changing_pools: Mutex<()>,
    counters: Arc<PoolCounters>,
    budget: RetryBudget,
    /// The idle sweeper (and the active health checker) run once the first call is made.
    background: AtomicBool,
}

/// Per-call settings for [`VspClient::call_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct CallOptions {
    /// This call's deadline, instead of the client's.
    pub timeout: Option<Duration>,
    /// Safe to send again after it may have run (a read, an upsert): it may be retried on
    /// another instance after a connection loss.
    pub idempotent: bool,
}

impl CallOptions {
    /// Default options: the client's deadline, not idempotent.
    pub fn new() -> Self {
        CallOptions::default()
    }

    /// Sets this call's deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Marks the call idempotent.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }
}

/// Calls VSP services by name.
///
/// Cheap to clone; clones share the connections.
///
/// ```no_run
/// use vsp::{ServiceInfo, ServiceMesh, VspClient};
///
/// # async fn example() -> Result<(), vsp::VspError> {
/// let mesh = ServiceMesh::new();
/// mesh.register(ServiceInfo::new("user-service", "127.0.0.1", 9090))?;
/// let client = VspClient::builder(mesh).max_transports(5).build();
/// let user = client
///     .call("user-service", "get_user", serde_json::json!({ "user_id": "123" }))
///     .await?;
/// println!("{user}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct VspClient {
    inner: Arc<ClientInner>,
    /// The deadline of this handle's calls (see [`VspClient::with_timeout`]).
    timeout: Duration,
}

impl std::fmt::Debug for VspClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VspClient")
            .field("config", &self.inner.config)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Builds a [`VspClient`].
#[derive(Debug)]
pub struct VspClientBuilder {
    mesh: ServiceMesh,
    config: ClientConfig,
}

impl VspClientBuilder {
    /// The most connections per instance (default 5). New connections open only when every
    /// open one has calls in flight; calls go to the least-loaded one.
    pub fn max_transports(mut self, connections: usize) -> Self {
        self.config.limits.max_transports = connections.max(1);
        self
    }

    /// The most calls in flight on one connection (default 1024). A call that finds every
    /// connection of its instance full fails at once with [`VspError::TooManyInFlight`].
    pub fn max_in_flight_per_connection(mut self, calls: usize) -> Self {
        self.config.limits.max_in_flight = calls.max(1);
        self
    }

    /// The deadline of every call, from the moment it starts, connecting and retries included
    /// (default 30 s). It travels to the server, which stops the work when it passes.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// The bound on opening one connection (default 5 s, and never past the call's deadline).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Connections without calls for this long are closed (default 90 s).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Attempts of one call, the first included (default 3, at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts.max(1);
        self
    }

    /// Retries calls that may have run even when they are not marked idempotent (default off:
    /// only idempotent calls are sent again once written).
    pub fn retry_non_idempotent(mut self, enabled: bool) -> Self {
        self.config.retry_written_calls = enabled;
        self
    }

    /// The retry budget: retries of written calls may add at most `ratio` of the calls made
    /// (default 0.2), plus a reserve of `reserve` retries (default 10) for when traffic is light.
    pub fn retry_budget(mut self, ratio: f64, reserve: u32) -> Self {
        self.config.retry_ratio = ratio.clamp(0.0, 1000.0);
        self.config.retry_reserve = reserve;
        self
    }

    /// Pings the `health` endpoint of every instance of every service in the mesh at this
    /// interval (default: off; failures still eject instances passively).
    pub fn health_check_interval(mut self, interval: Duration) -> Self {
        self.config.health_check_interval = Some(interval);
        self
    }

    /// The largest response frame accepted (default 16 MiB).
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config.limits.max_frame_size = bytes;
        self
    }

    /// Builds the client. Connections open on first use.
    pub fn build(self) -> VspClient {
        let config = self.config;
        VspClient {
            timeout: config.timeout,
            inner: Arc::new(ClientInner {
                mesh: self.mesh,
                pools: ArcSwap::from_pointee(HashMap::new()),
                changing_pools: Mutex::new(()),
                counters: Arc::new(PoolCounters::default()),
                budget: RetryBudget::new(config.retry_ratio, config.retry_reserve),
                background: AtomicBool::new(false),
                config,
            }),
        }
    }
}

/// When an attempt started, and the call's deadline and timeout.
#[derive(Clone, Copy)]
struct Clock {
    started: Instant,
    deadline: Instant,
    timeout: Duration,
}

/// One attempt's failure, and what it allows next.
struct AttemptFailure {
    error: VspError,
    /// The request may have reached the server.
    written: bool,
    /// Nothing to retry (an encoding error).
    fatal: bool,
}

impl AttemptFailure {
    fn unsent(error: VspError) -> Self {
        AttemptFailure {
            error,
            written: false,
            fatal: false,
        }
    }
}

impl VspClient {
    /// Starts building a client that routes through `mesh`.
    pub fn builder(mesh: ServiceMesh) -> VspClientBuilder {
        VspClientBuilder {
            mesh,
            config: ClientConfig {
                limits: PoolLimits {
                    max_transports: DEFAULT_MAX_TRANSPORTS,
                    max_in_flight: DEFAULT_MAX_IN_FLIGHT_PER_CONNECTION,
                    max_frame_size: DEFAULT_MAX_FRAME_SIZE,
                },
                timeout: DEFAULT_TIMEOUT,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                retry_written_calls: false,
                retry_ratio: 0.2,
                retry_reserve: 10,
                health_check_interval: None,
            },
        }
    }

    /// The mesh this client routes through.
    pub fn mesh(&self) -> &ServiceMesh {
        &self.inner.mesh
    }

    /// A handle on the same connections whose calls have `timeout` as their deadline: the
    /// per-call override for generated clients (`UserServiceClient::new(client.with_timeout(..))`).
    pub fn with_timeout(&self, timeout: Duration) -> VspClient {
        VspClient {
            inner: self.inner.clone(),
            timeout,
        }
    }

    /// Calls `endpoint` of `service` with `body` (a JSON object keyed by parameter names) and
    /// returns the response body.
    ///
    /// # Errors
    /// [`VspError::Remote`] if the service answered with an error; otherwise what kept the call
    /// from completing ([`VspError::NoInstances`], [`VspError::Connect`],
    /// [`VspError::Timeout`], [`VspError::ConnectionClosed`], ...).
    pub async fn call(
        &self,
        service: &str,
        endpoint: &str,
        body: impl Serialize,
    ) -> Result<serde_json::Value, VspError> {
        self.call_typed(service, endpoint, body).await
    }

    /// As [`call`](VspClient::call), deserializing the response body straight into `R`.
    ///
    /// # Errors
    /// As [`call`](VspClient::call), and [`VspError::Decode`] if the body does not fit `R`.
    pub async fn call_typed<R: DeserializeOwned>(
        &self,
        service: &str,
        endpoint: &str,
        body: impl Serialize,
    ) -> Result<R, VspError> {
        self.call_with(service, endpoint, body, CallOptions::default())
            .await
    }

    /// As [`call_typed`](VspClient::call_typed), with per-call options.
    ///
    /// # Errors
    /// As [`call_typed`](VspClient::call_typed).
    pub async fn call_with<R: DeserializeOwned>(
        &self,
        service: &str,
        endpoint: &str,
        body: impl Serialize,
        options: CallOptions,
    ) -> Result<R, VspError> {
        let response = self.exchange(service, endpoint, &body, options).await?;
        decode_response(service, endpoint, &response)
    }

    /// A generated client's call to a method returning `Result<T, E>`: the service's `E`
    /// arrives typed, everything else as [`VspError`].
    pub(crate) async fn call_service<T: DeserializeOwned, E: DeserializeOwned>(
        &self,
        service: &str,
        endpoint: &str,
        body: &(impl Serialize + ?Sized),
        options: CallOptions,
    ) -> Result<T, CallError<E>> {
        let response = self.exchange(service, endpoint, body, options).await?;
        if response.error_code == Some(ErrorCode::Handler) {
            if let Ok(ServiceErrorBody { data }) = serde_json::from_slice(response.body()) {
                return Err(CallError::Service(data));
            }
        }
        Ok(decode_response(service, endpoint, &response)?)
    }

    /// What this client's connection pools have done.
    pub fn pool_stats(&self) -> PoolStats {
        self.inner.counters.snapshot()
    }

    /// Open connections to the instance at `endpoint` (`host:port`).
    pub fn open_connections(&self, endpoint: &str) -> usize {
        self.inner
            .pools
            .load()
            .get(endpoint)
            .map_or(0, |pool| pool.open_connections())
    }

    /// Sends one call, failing over to other instances as the rules in the module docs allow.
    async fn exchange(
        &self,
        service: &str,
        endpoint: &str,
        body: &(impl Serialize + ?Sized),
        options: CallOptions,
    ) -> Result<RawResponse, VspError> {
        self.inner.start_background();
        let timeout = options.timeout.unwrap_or(self.timeout);
        let mut started = Instant::now();
        let deadline = started + timeout;
        let config = &self.inner.config;
        let health = self.inner.mesh.health();
        self.inner.budget.deposit();
        let mut tried: Vec<Arc<Instance>> = Vec::new();
        let mut last_error: Option<VspError> = None;
        loop {
            let picked = if tried.is_empty() {
                self.inner.mesh.pick_or_wait(service, deadline).await
            } else {
                self.pick(service, &tried)
            };
            let instance = match picked {
                Ok(instance) => instance,
                // After a failed attempt, its error says more than "no healthy instance left".
                Err(err) => return Err(last_error.unwrap_or(err)),
            };
            let failure = match self
                .attempt(
                    &instance,
                    service,
                    endpoint,
                    body,
                    Clock {
                        started,
                        deadline,
                        timeout,
                    },
                )
                .await
            {
                Ok(response) => match &response.error_code {
                    // Refused before running: safe to send elsewhere.
                    Some(code @ ErrorCode::ShuttingDown) => {
                        self.inner.eject(&instance);
                        AttemptFailure::unsent(remote_error(service, endpoint, code, &response))
                    }
                    Some(code @ ErrorCode::Overloaded) => AttemptFailure {
                        // Not run, but another try adds load: it spends retry budget.
                        written: true,
                        ..AttemptFailure::unsent(remote_error(service, endpoint, code, &response))
                    },
                    _ => {
                        health.record_success(&instance);
                        return Ok(response);
                    }
                },
                Err(failure) => failure,
            };
            tried.push(instance);
            let may_resend = !failure.written
                || ((options.idempotent || config.retry_written_calls)
                    && self.inner.budget.withdraw());
            started = Instant::now();
            let out_of_time = started >= deadline;
            if failure.fatal
                || !may_resend
                || out_of_time
                || tried.len() >= config.max_attempts as usize
            {
                return Err(failure.error);
            }
            tracing::debug!(
                service,
                endpoint,
                attempt = tried.len(),
                "retrying: {}",
                failure.error
            );
            last_error = Some(failure.error);
        }
    }

    /// An eligible instance, preferring one not tried yet by this call.
    fn pick(&self, service: &str, tried: &[Arc<Instance>]) -> Result<Arc<Instance>, VspError> {
        let mesh = &self.inner.mesh;
        let first = mesh.pick(service)?;
        if !tried.iter().any(|t| Arc::ptr_eq(t, &first)) {
            return Ok(first);
        }
        for _ in 0..tried.len() + 2 {
            let next = mesh.pick(service)?;
            if !tried.iter().any(|t| Arc::ptr_eq(t, &next)) {
                return Ok(next);
            }
        }
        Ok(first)
    }

    /// One attempt on one instance, reporting its outcome to the mesh's health tracking.
    async fn attempt(
        &self,
        instance: &Arc<Instance>,
        service: &str,
        endpoint: &str,
        body: &(impl Serialize + ?Sized),
        clock: Clock,
    ) -> Result<RawResponse, AttemptFailure> {
        let Clock {
            started,
            deadline,
            timeout,
        } = clock;
        let config = &self.inner.config;
        let _in_flight = instance.track_call();
        let pool = self.inner.pool(instance.endpoint_arc());
        let remaining = deadline.saturating_duration_since(started);
        let connect_timeout = config.connect_timeout.min(remaining);
        let timed_out = || VspError::Timeout {
            service: service.to_owned(),
            endpoint: endpoint.to_owned(),
            after: timeout,
        };
        let connection = match pool.get(connect_timeout).await {
            Ok(connection) => connection,
            Err(PoolError::Saturated { limit }) => {
                return Err(AttemptFailure::unsent(VspError::TooManyInFlight {
                    service: service.to_owned(),
                    instance: instance.endpoint().to_owned(),
                    limit,
                }))
            }
            Err(PoolError::TimedOut(after)) if after < config.connect_timeout => {
                // The call's deadline, not the connect timeout, cut the connect short.
                return Err(AttemptFailure::unsent(timed_out()));
            }
            Err(err) => {
                self.inner.report_failure(instance, true);
                let error = match err {
                    PoolError::Connect(source) => VspError::Connect {
                        service: service.to_owned(),
                        instance: instance.endpoint().to_owned(),
                        source,
                    },
                    _ => VspError::ConnectTimeout {
                        service: service.to_owned(),
                        instance: instance.endpoint().to_owned(),
                        after: connect_timeout,
                    },
                };
                return Err(AttemptFailure::unsent(error));
            }
        };
        let closed = |reason: String| VspError::ConnectionClosed {
            service: service.to_owned(),
            endpoint: endpoint.to_owned(),
            instance: instance.endpoint().to_owned(),
            reason,
        };
        let mut call = match connection.send(service, endpoint, body, deadline) {
            Ok(call) => call,
            Err(CallFailure::Encode(source)) => {
                return Err(AttemptFailure {
                    error: VspError::Encode {
                        service: service.to_owned(),
                        endpoint: endpoint.to_owned(),
                        source,
                    },
                    written: false,
                    fatal: true,
                })
            }
            Err(CallFailure::NotSent(reason) | CallFailure::Closed(reason)) => {
                return Err(AttemptFailure::unsent(closed(reason)))
            }
            Err(CallFailure::Protocol(reason)) => {
                return Err(AttemptFailure::unsent(VspError::Protocol(
                    crate::error::ProtocolError::Malformed(reason),
                )))
            }
            Err(CallFailure::TimedOut) => return Err(AttemptFailure::unsent(timed_out())),
        };
        let outcome = call.wait().await;
        if connection.is_draining() {
            // The server announced its shutdown: no more calls to it until a probe says so.
            self.inner.eject(instance);
        }
        let error = match outcome {
            // The server stopped the handler at the deadline: the same timeout as ours.
            Ok(response) if response.error_code == Some(ErrorCode::Timeout) => timed_out(),
            Ok(response) => {
                instance.record_latency(started.elapsed());
                return Ok(response);
            }
            Err(CallFailure::Protocol(reason)) => {
                VspError::Protocol(crate::error::ProtocolError::Malformed(reason))
            }
            Err(CallFailure::NotSent(reason) | CallFailure::Closed(reason)) => closed(reason),
            Err(CallFailure::Encode(source)) => VspError::Encode {
                service: service.to_owned(),
                endpoint: endpoint.to_owned(),
                source,
            },
            Err(CallFailure::TimedOut) => timed_out(),
        };
        self.inner.report_failure(instance, false);
        Err(AttemptFailure {
            error,
            written: true,
            fatal: false,
        })
    }
}

impl ClientInner {
    fn pool(&self, endpoint: &Arc<str>) -> Arc<InstancePool> {
        if let Some(pool) = self.pools.load().get(endpoint) {
            return pool.clone();
        }
        let _changing = self
            .changing_pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut pools = HashMap::clone(&self.pools.load());
        let pool = pools
            .entry(endpoint.clone())
            .or_insert_with(|| {
                Arc::new(InstancePool::new(
                    endpoint.clone(),
                    self.config.limits,
                    self.counters.clone(),
                ))
            })
            .clone();
        self.pools.store(Arc::new(pools));
        pool
    }

    fn report_failure(self: &Arc<Self>, instance: &Arc<Instance>, connect: bool) {
        let verdict = self.mesh.health().record_failure(instance, connect);
        self.follow_up(instance, verdict);
    }

    fn eject(self: &Arc<Self>, instance: &Arc<Instance>) {
        let verdict = self.mesh.health().eject(instance);
        self.follow_up(instance, verdict);
    }

    fn follow_up(self: &Arc<Self>, instance: &Arc<Instance>, verdict: Verdict) {
        if let Verdict::ProbeAfter(wait) = verdict {
            self.spawn_probe(instance, wait);
        }
    }

    /// Probes an ejected instance after `wait`, backing off, until it answers `health` (then it
    /// is re-admitted), it leaves the mesh, or this client is dropped.
    fn spawn_probe(self: &Arc<Self>, instance: &Arc<Instance>, wait: Duration) {
        let client = Arc::downgrade(self);
        let service = instance.service().to_owned();
        let endpoint = instance.endpoint_arc().clone();
        tokio::spawn(async move {
            let mut wait = wait;
            loop {
                tokio::time::sleep(wait).await;
                let Some(client) = client.upgrade() else {
                    return;
                };
                // Looked up each time: a re-registration replaces the instance, not its health.
                let Some(instance) = client
                    .mesh
                    .instance_handles(&service)
                    .into_iter()
                    .find(|i| **i.endpoint_arc() == *endpoint)
                else {
                    return;
                };
                if client.probe(&instance).await {
                    client.mesh.health().readmit(&instance);
                    return;
                }
                wait = client.mesh.health().probe_failed(&instance);
            }
        });
    }

    /// Calls `health` on `instance` directly, bypassing its status; true if it answered healthy.
    async fn probe(&self, instance: &Instance) -> bool {
        let timeout = self.config.connect_timeout;
        let deadline = Instant::now() + timeout;
        let pool = self.pool(instance.endpoint_arc());
        let Ok(connection) = pool.get(timeout).await else {
            return false;
        };
        let Ok(mut call) = connection.send(
            instance.service(),
            crate::server::HEALTH_ENDPOINT,
            &EmptyBody {},
            deadline,
        ) else {
            return false;
        };
        matches!(call.wait().await, Ok(response) if response.error_code.is_none())
    }

    /// Starts the background tasks once, from the first call (which runs inside a runtime).
    fn start_background(self: &Arc<Self>) {
        // A plain load first: after the first call this is a read of a shared cache line.
        if self.background.load(Ordering::Acquire) || self.background.swap(true, Ordering::AcqRel) {
            return;
        }
        let idle = self.config.idle_timeout;
        let sweep_every = (idle / 2).clamp(Duration::from_millis(10), Duration::from_secs(30));
        tokio::spawn(sweep_idle(Arc::downgrade(self), idle, sweep_every));
        if let Some(interval) = self.config.health_check_interval {
            tokio::spawn(check_health(Arc::downgrade(self), interval));
        }
    }
}

#[derive(Serialize)]
struct EmptyBody {}

/// Closes idle connections and forgets pools of instances that left the mesh.
async fn sweep_idle(client: Weak<ClientInner>, idle: Duration, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(client) = client.upgrade() else {
            return;
        };
        let pools: Vec<(Arc<str>, Arc<InstancePool>)> = client
            .pools
            .load()
            .iter()
            .map(|(endpoint, pool)| (endpoint.clone(), pool.clone()))
            .collect();
        let mut empty = Vec::new();
        for (endpoint, pool) in pools {
            if pool.close_idle(idle) {
                empty.push(endpoint);
            }
        }
        if !empty.is_empty() {
            let known: std::collections::HashSet<Arc<str>> = client
                .mesh
                .services()
                .iter()
                .flat_map(|service| client.mesh.instance_handles(service))
                .map(|instance| instance.endpoint_arc().clone())
                .collect();
            let _changing = client
                .changing_pools
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut pools = HashMap::clone(&client.pools.load());
            for endpoint in empty.iter().filter(|e| !known.contains(*e)) {
                pools.remove(endpoint);
            }
            client.pools.store(Arc::new(pools));
        }
    }
}

/// Active health checks: pings every instance's `health` endpoint at `interval`.
async fn check_health(client: Weak<ClientInner>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(client) = client.upgrade() else {
            return;
        };
        for service in client.mesh.services() {
            for instance in client.mesh.instance_handles(&service) {
                if instance.probing.load(Ordering::Acquire) {
                    continue; // an ejection probe owns it
                }
                if client.probe(&instance).await {
                    if instance.status() != crate::HealthStatus::Healthy {
                        client.mesh.health().readmit(&instance);
                    }
                } else {
                    client.eject(&instance);
                }
            }
        }
    }
}

/// The body of a service method's typed error.
#[derive(serde::Deserialize)]
struct ServiceErrorBody<E> {
    data: E,
}

/// Turns a response into the caller's type or the remote error it carries.
/// The remote error a response with an `error_code` carries.
fn remote_error(
    service: &str,
    endpoint: &str,
    code: &ErrorCode,
    response: &RawResponse,
) -> VspError {
    let body = response.body();
    let message = serde_json::from_slice::<ErrorBody<'_>>(body)
        .map(|body| body.error.into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    VspError::Remote {
        service: service.to_owned(),
        endpoint: endpoint.to_owned(),
        code: code.clone(),
        message,
    }
}

fn decode_response<R: DeserializeOwned>(
    service: &str,
    endpoint: &str,
    response: &RawResponse,
) -> Result<R, VspError> {
    let body = response.body();
    let remote = |code: ErrorCode, message: String| VspError::Remote {
        service: service.to_owned(),
        endpoint: endpoint.to_owned(),
        code,
        message,
    };
    if let Some(code) = &response.error_code {
        return Err(remote_error(service, endpoint, code, response));
    }
    if !response.from_vsp_peer {
        // Velithon marks errors only by an `error` key in the body.
        if let Ok(error) = serde_json::from_slice::<ErrorBody<'_>>(body) {
            return Err(remote(
                ErrorCode::Unspecified(String::new()),
                error.error.into_owned(),
            ));
        }
    }
    serde_json::from_slice(body).map_err(|source| VspError::Decode {
        service: service.to_owned(),
        endpoint: endpoint.to_owned(),
        source,
    })
}
