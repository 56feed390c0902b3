//! The server side: [`VspManager`] holds a service's endpoints, listens, dispatches and drains.
//!
//! Why endpoints sit behind an atomically swapped map: registering is rare and may happen while
//! serving, but every request looks an endpoint up. A copy-on-write map lets that lookup take no
//! lock at all.
//!
//! Why shutdown has two phases: first the server stops accepting and answers new requests on
//! open connections with `shutting_down` (so a client learns at once to go elsewhere) while the
//! calls already running finish; then, drained or out of time, it closes every connection.

mod admission;
mod announce;
mod auth;
mod builder;
mod connection;
mod drain;
mod endpoint;
mod ledger;
mod limiter;
mod reply;
mod stream;
mod worker;

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use admission::{AcceptBackoff, Admission, RefusalLog};
use announce::Announcement;
pub use auth::{AuthHook, BearerToken, Rejection};
pub use builder::VspManagerBuilder;
use drain::Drain;
use endpoint::Endpoint;
pub(crate) use endpoint::{FnEndpoint, ServiceResult, ServiceValue};
pub use ledger::Ledger;
pub use stream::DEFAULT_STREAM_WINDOW;
pub(crate) use stream::{ServiceStreamResult, ServiceStreamValue, StreamEndpoint};
pub use worker::WorkerType;
use worker::{PollLimiter, WorkerPool};

use crate::error::VspError;
// Reserved names live with the wire; still found here.
use crate::protocol::{EndpointDescription, ServiceDescription, PROTOCOL_VERSION};
pub use crate::protocol::{DESCRIBE_ENDPOINT, HEALTH_ENDPOINT};
use crate::stats::{EndpointCounters, LiveCounts, PerformanceStats, ServerStats};
use crate::transport::{Address, Listener, TcpListener};

/// The default bound on graceful shutdown's wait for running calls.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long shutdown waits for connections to close once it has closed them.
const CONNECTION_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A registered endpoint with what every call to it touches.
pub(crate) struct EndpointEntry {
    pub(crate) name: Arc<str>,
    pub(crate) endpoint: Box<dyn Endpoint>,
    pub(crate) counters: EndpointCounters,
    /// Its share of the worker pool (`Multicore` only).
    pub(crate) limiter: Option<Arc<PollLimiter>>,
    /// What `vsp.describe` says of it (`None` for the built-in endpoints, which are not listed).
    pub(crate) description: Option<Arc<EndpointDescription>>,
}

type Registry = HashMap<Arc<str>, Arc<EndpointEntry>>;

/// A server's stage of life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Lifecycle {
    Idle = 0,
    Running = 1,
    Draining = 2,
    Closed = 3,
}

impl Lifecycle {
    fn from_u8(value: u8) -> Lifecycle {
        match value {
            0 => Lifecycle::Idle,
            1 => Lifecycle::Running,
            2 => Lifecycle::Draining,
            _ => Lifecycle::Closed,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    pub(crate) max_frame_size: usize,
    drain_timeout: Duration,
    worker_type: WorkerType,
    stats: bool,
    pub(crate) max_concurrent_requests: usize,
    pub(crate) max_requests_per_connection: usize,
    pub(crate) frame_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_peer: usize,
    pub(crate) max_request_bytes: usize,
    pub(crate) max_request_bytes_per_connection: usize,
    pub(crate) max_stream_window: u32,
    pub(crate) write_timeout: Duration,
}

/// The default bound on receiving one request frame once its first bytes arrived.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// The default bound on a new connection's setup (its TLS handshake).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The default time after which a server closes a connection with no request in flight.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The default bound on requests being handled at once, over all connections.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 10_000;
/// The default bound on requests being handled at once for one connection.
pub const DEFAULT_MAX_REQUESTS_PER_CONNECTION: usize = 1_024;
/// The default bound on open connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// The default bound on open connections from one peer IP address.
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 1_024;
/// The default budget of large request bytes being handled, over all connections.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 512 * 1024 * 1024;
/// The default budget of large request bytes being handled for one connection.
pub const DEFAULT_MAX_REQUEST_BYTES_PER_CONNECTION: usize = 64 * 1024 * 1024;
/// The default bound on the stream window and credit a caller may ask for.
const DEFAULT_MAX_STREAM_WINDOW: u32 = 4096;
/// The default write-progress deadline.
const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a draining server keeps connections open after telling clients, at least: requests
/// already on their way get a `shutting_down` answer instead of a closed connection.
const DRAIN_GRACE: Duration = Duration::from_millis(100);

pub(crate) struct ManagerInner {
    name: String,
    /// The name again, shared by every call's [`Context`](crate::Context).
    pub(crate) service: Arc<str>,
    /// Checks every call but `health` before its handler runs.
    pub(crate) auth: Option<Arc<dyn auth::AuthHook>>,
    /// Failed handshakes logged lately, per peer host.
    pub(crate) handshake_log: PeerLog,
    /// Malformed `traceparent`s logged lately, per peer host.
    pub(crate) trace_log: PeerLog,
    pub(crate) config: ServerConfig,
    registry: ArcSwap<Registry>,
    /// Serializes registrations (the copy-on-write of `registry`).
    registering: Mutex<()>,
    /// The stage of life, readable without a lock on the per-request path...
    state: AtomicU8,
    /// ...and watchable by the tasks that must stop when it changes.
    lifecycle: watch::Sender<Lifecycle>,
    pub(crate) stats: ServerStats,
    /// Requests and connections a graceful shutdown waits for.
    pub(crate) drain: Drain,
    /// Connections and large request bytes under their caps.
    pub(crate) admission: Arc<Admission>,
    /// The length of the longest endpoint name registered: a requested name longer than it is
    /// unknown without hashing it (a bad request's cost must not grow with its size).
    pub(crate) longest_name: std::sync::atomic::AtomicUsize,
    /// Streams, auth checks and write queues, for [`VspManager::ledger`].
    pub(crate) ledger: ledger::LedgerCounts,
    /// Responses sent to this server (a confused or hostile peer) logged lately, per peer host.
    pub(crate) stray_log: PeerLog,
    /// The handler pool of a `Multicore` manager, made by `start_server`.
    workers: OnceLock<WorkerPool>,
    /// The address bound, once serving.
    pub(crate) bound: OnceLock<Address>,
    /// Where and how the server announces itself, if it does.
    announcement: Option<Announcement>,
    /// The accept loop: awaited on close, so the port is free when `shutdown` returns.
    accepting: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ManagerInner {
    pub(crate) fn stats_enabled(&self) -> bool {
        self.config.stats
    }

    pub(crate) fn worker_pool(&self) -> Option<&WorkerPool> {
        self.workers.get()
    }

    pub(crate) fn state(&self) -> Lifecycle {
        Lifecycle::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn lifecycle(&self) -> watch::Receiver<Lifecycle> {
        self.lifecycle.subscribe()
    }

    /// The answer to `vsp.describe`: every described endpoint, by name.
    pub(crate) fn description(&self) -> ServiceDescription {
        let mut endpoints: Vec<EndpointDescription> = self
            .registry
            .load()
            .values()
            .filter_map(|entry| entry.description.as_deref().cloned())
            .collect();
        endpoints.sort_by(|a, b| a.name.cmp(&b.name));
        ServiceDescription {
            service: self.name.clone(),
            protocol_version: PROTOCOL_VERSION,
            endpoints,
        }
    }

    fn set_state(&self, state: Lifecycle) {
        self.state.store(state as u8, Ordering::Release);
        self.lifecycle.send_replace(state);
    }

    /// Moves from `from` to `to`; false if the server was not at `from`.
    fn transition(&self, from: Lifecycle, to: Lifecycle) -> bool {
        let moved = self
            .state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved {
            self.lifecycle.send_replace(to);
        }
        moved
    }
}

impl ManagerInner {
    async fn shutdown(self: &Arc<Self>) -> Result<(), VspError> {
        let inner = self;
        if !inner.transition(Lifecycle::Running, Lifecycle::Draining) {
            inner.transition(Lifecycle::Idle, Lifecycle::Closed);
            return Ok(());
        }
        if let Some(announcement) = &inner.announcement {
            announcement.withdraw().await;
        }
        inner.drain.start();
        let draining_since = tokio::time::Instant::now();
        let drained = inner
            .drain
            .wait_for_zero(Drain::in_flight, inner.config.drain_timeout)
            .await;
        // Requests sent before the clients read the notice still get an answer.
        tokio::time::sleep_until(draining_since + DRAIN_GRACE.min(inner.config.drain_timeout))
            .await;
        let aborted = inner.drain.in_flight();
        self.close_connections().await;
        if drained {
            tracing::info!(service = %inner.name, "VSP server shut down");
            Ok(())
        } else {
            tracing::warn!(service = %inner.name, aborted, "drain timeout: aborted running calls");
            Err(VspError::DrainTimeout {
                service: inner.name.clone(),
                in_flight: aborted,
                after: inner.config.drain_timeout,
            })
        }
    }

    async fn close(self: &Arc<Self>) {
        if self.state() == Lifecycle::Closed {
            return;
        }
        if let Some(announcement) = &self.announcement {
            announcement.withdraw().await;
        }
        self.drain.start();
        self.close_connections().await;
    }

    async fn close_connections(&self) {
        let inner = self;
        inner.set_state(Lifecycle::Closed);
        let accepting = inner
            .accepting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(accepting) = accepting {
            // It stops at once on the state change; the bound only guards against a bug.
            let _ = tokio::time::timeout(CONNECTION_CLOSE_TIMEOUT, accepting).await;
        }
        if !inner
            .drain
            .wait_for_zero(Drain::connections_active, CONNECTION_CLOSE_TIMEOUT)
            .await
        {
            tracing::warn!(
                service = %inner.name,
                open = inner.drain.connections_active(),
                "connections still closing after {CONNECTION_CLOSE_TIMEOUT:?}"
            );
        }
    }
}

/// Shuts a running server down when the last [`VspManager`] handle is dropped. Its tasks hold
/// the server's state, not a handle, so they do not keep it running.
struct Owner {
    inner: Arc<ManagerInner>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        if matches!(self.inner.state(), Lifecycle::Idle | Lifecycle::Closed) {
            return;
        }
        let inner = self.inner.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                tracing::info!(service = %inner.name, "every handle dropped: shutting down");
                runtime.spawn(async move {
                    if let Err(err) = inner.shutdown().await {
                        tracing::warn!("shutdown after the last handle was dropped: {err}");
                    }
                });
            }
            // No runtime to drain on: stop accepting and close; the tasks end with it.
            Err(_) => inner.set_state(Lifecycle::Closed),
        }
    }
}

/// One endpoint of a `#[vsp::service]` trait, as its generated client lists it in `ENDPOINTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointInfo {
    /// The wire name (the method name, or its `#[vsp(name = "...")]`).
    pub name: &'static str,
    /// The trait method's name.
    pub method: &'static str,
    /// Marked `#[vsp(idempotent)]`: safe to send again after a failure.
    pub idempotent: bool,
}

/// A set of endpoints that [`VspManager::serve`] registers together: what `#[vsp::service]`
/// generates as `XxxServer` for a trait's implementation.
pub trait Service {
    /// The wire names of the endpoints `register` adds.
    fn endpoint_names(&self) -> &'static [&'static str];

    /// Registers every endpoint on `manager`.
    ///
    /// # Errors
    /// [`VspError::DuplicateEndpoint`] if a name is taken.
    fn register(self, manager: &VspManager) -> Result<(), VspError>;
}

/// A VSP service: named endpoints served over TCP, a Unix socket or in memory.
///
/// Cheap to clone; clones share one server.
///
/// ```
/// use serde::Deserialize;
/// use vsp::{VspError, VspManager};
///
/// #[derive(Deserialize)]
/// struct GetUser {
///     user_id: String,
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), VspError> {
/// let manager = VspManager::builder("user-service").build();
/// manager.endpoint("get_user", |args: GetUser| async move {
///     Ok::<_, VspError>(serde_json::json!({ "id": args.user_id, "name": "John Doe" }))
/// })?;
/// let addr = manager.start_server("127.0.0.1", 0).await?;
/// println!("serving on {addr}");
/// manager.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct VspManager {
    inner: Arc<ManagerInner>,
    /// Shared by the clones: the last one dropped stops the server.
    _owner: Arc<Owner>,
}

impl std::fmt::Debug for VspManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VspManager")
            .field("name", &self.inner.name)
            .field("state", &self.inner.state())
            .finish_non_exhaustive()
    }
}

impl VspManager {
    fn from_inner(inner: Arc<ManagerInner>) -> Self {
        VspManager {
            _owner: Arc::new(Owner {
                inner: inner.clone(),
            }),
            inner,
        }
    }

    /// Starts building a manager for the service `name`.
    pub fn builder(name: impl Into<String>) -> VspManagerBuilder {
        VspManagerBuilder::new(name.into())
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Registers `handler` as the endpoint `name`.
    ///
    /// The handler takes one argument deserialized from the request body, a JSON object whose
    /// keys are the parameter names (a `#[derive(Deserialize)]` struct, or a
    /// `serde_json::Value`), and returns `Result<T, E>`: `T` becomes the response body, `E`'s
    /// message a `handler` error. Endpoints may be added while the server runs.
    ///
    /// Its description (`vsp.describe`) is open: any arguments, any result; see
    /// [`endpoint_described`](VspManager::endpoint_described) to say more.
    ///
    /// # Errors
    /// [`VspError::DuplicateEndpoint`] if `name` is taken (`health` and `vsp.describe` are built
    /// in).
    pub fn endpoint<F, A, Fut, T, E>(
        &self,
        name: impl Into<String>,
        handler: F,
    ) -> Result<(), VspError>
    where
        F: Fn(A) -> Fut + Send + Sync + 'static,
        A: DeserializeOwned + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Serialize + Send + 'static,
        E: Display + Send + 'static,
    {
        let name = name.into();
        let description = EndpointDescription::new(name.clone());
        self.register(name, description, Box::new(FnEndpoint::new(handler)))
    }

    /// As [`endpoint`](VspManager::endpoint), registered under `description.name` with what
    /// `vsp.describe` says of it: parameters, doc, idempotence, JSON Schemas (which `vsp call`
    /// and the gateway's explorer use).
    ///
    /// ```
    /// use serde_json::{json, Value};
    /// use vsp::{EndpointDescription, VspError, VspManager};
    ///
    /// let manager = VspManager::builder("calc").build();
    /// let add = EndpointDescription::new("add")
    ///     .doc("Adds `a` and `b`.")
    ///     .params(["a", "b"])
    ///     .args_schema(json!({
    ///         "type": "object",
    ///         "properties": { "a": { "type": "number" }, "b": { "type": "number" } },
    ///         "required": ["a", "b"]
    ///     }));
    /// manager.endpoint_described(add, |args: Value| async move {
    ///     Ok::<_, VspError>(args["a"].as_f64().unwrap_or(0.0) + args["b"].as_f64().unwrap_or(0.0))
    /// })?;
    /// assert_eq!(manager.description().endpoints[0].params, ["a", "b"]);
    /// # Ok::<(), VspError>(())
    /// ```
    ///
    /// # Errors
    /// [`VspError::DuplicateEndpoint`] if the name is taken.
    pub fn endpoint_described<F, A, Fut, T, E>(
        &self,
        description: EndpointDescription,
        handler: F,
    ) -> Result<(), VspError>
    where
        F: Fn(A) -> Fut + Send + Sync + 'static,
        A: DeserializeOwned + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Serialize + Send + 'static,
        E: Display + Send + 'static,
    {
        let name = description.name.clone();
        self.register(name, description, Box::new(FnEndpoint::new(handler)))
    }

    /// Registers `handler` as the streaming endpoint `name`: it takes its arguments as
    /// [`endpoint`](VspManager::endpoint)'s do and returns the [`Streaming`](crate::Streaming)
    /// of items to send (or an error, answered as a `handler` error before any item).
    ///
    /// Items go out under the caller's credit (at most its window ahead of what it has read), so
    /// a slow reader keeps the server's buffer bounded. The stream ends when the handler's
    /// stream ends (or yields an error, sent as the last item), when the caller cancels (the
    /// stream is dropped at once), at the caller's deadline (`timeout`), or when the server
    /// shuts down (`shutting_down`). A call that does not ask for a stream (a Velithon client)
    /// is answered `not_supported`.
    ///
    /// ```
    /// use serde_json::Value;
    /// use vsp::{Streaming, VspError, VspManager};
    ///
    /// let manager = VspManager::builder("counter").build();
    /// manager.stream_endpoint("count", |args: Value| async move {
    ///     let n = args["n"].as_u64().unwrap_or(0);
    ///     Ok::<_, VspError>(Streaming::iter(0..n))
    /// })?;
    /// # Ok::<(), VspError>(())
    /// ```
    ///
    /// # Errors
    /// [`VspError::DuplicateEndpoint`] if `name` is taken.
    pub fn stream_endpoint<F, A, Fut, T, E>(
        &self,
        name: impl Into<String>,
        handler: F,
    ) -> Result<(), VspError>
    where
        F: Fn(A) -> Fut + Send + Sync + 'static,
        A: DeserializeOwned + Send + 'static,
        Fut: Future<Output = Result<crate::Streaming<T>, E>> + Send + 'static,
        T: Serialize + Send + 'static,
        E: Display + Send + 'static,
    {
        let name = name.into();
        let description = EndpointDescription::new(name.clone());
        self.register_stream(name, description, Box::new(StreamEndpoint::new(handler)))
    }

    /// Registers a streaming endpoint (described as one).
    pub(crate) fn register_stream(
        &self,
        name: String,
        description: EndpointDescription,
        endpoint: Box<dyn Endpoint>,
    ) -> Result<(), VspError> {
        let description = EndpointDescription {
            streaming: true,
            ..description
        };
        self.register_entry(name, description, endpoint)
    }

    /// What this server answers to `vsp.describe`: its name, the protocol version, and every
    /// endpoint (by name) with its description.
    pub fn description(&self) -> ServiceDescription {
        self.inner.description()
    }

    /// Registers every endpoint of `service`, such as a `#[vsp::service]` trait's generated
    /// `XxxServer`. Nothing is registered if one of its names is taken.
    ///
    /// # Errors
    /// [`VspError::DuplicateEndpoint`] naming the first endpoint already registered.
    pub fn serve(&self, service: impl Service) -> Result<(), VspError> {
        let registry = self.inner.registry.load();
        if let Some(taken) = service
            .endpoint_names()
            .iter()
            .find(|name| registry.contains_key(**name))
        {
            return Err(VspError::DuplicateEndpoint {
                service: self.inner.name.clone(),
                endpoint: (*taken).to_owned(),
            });
        }
        service.register(self)
    }

    pub(crate) fn register(
        &self,
        name: String,
        description: EndpointDescription,
        endpoint: Box<dyn Endpoint>,
    ) -> Result<(), VspError> {
        self.register_entry(name, description, endpoint)
    }

    fn register_entry(
        &self,
        name: String,
        description: EndpointDescription,
        endpoint: Box<dyn Endpoint>,
    ) -> Result<(), VspError> {
        let _registering = self
            .inner
            .registering
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.inner.registry.load();
        if current.contains_key(name.as_str()) {
            return Err(VspError::DuplicateEndpoint {
                service: self.inner.name.clone(),
                endpoint: name,
            });
        }
        let limiter = match self.inner.config.worker_type {
            WorkerType::Multicore { workers } => {
                Some(Arc::new(PollLimiter::new(workers.saturating_sub(1))))
            }
            WorkerType::Async => None,
        };
        let description = Arc::new(EndpointDescription {
            name: name.clone(),
            ..description
        });
        let name: Arc<str> = Arc::from(name);
        self.inner
            .longest_name
            .fetch_max(name.len(), Ordering::Relaxed);
        let mut next = Registry::clone(&current);
        next.insert(
            name.clone(),
            Arc::new(EndpointEntry {
                name,
                endpoint,
                counters: EndpointCounters::default(),
                limiter,
                description: Some(description),
            }),
        );
        self.inner.registry.store(Arc::new(next));
        Ok(())
    }

    /// The registered endpoint names, sorted (the built-in `health` and `vsp.describe` not
    /// included).
    pub fn endpoints(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .registry
            .load()
            .values()
            .filter(|entry| entry.description.is_some())
            .map(|entry| entry.name.to_string())
            .collect();
        names.sort();
        names
    }

    /// Binds `host:port` over TCP and serves in the background; returns the bound address (pass
    /// port 0 for an ephemeral one). The TCP shorthand of
    /// [`start_server_on`](VspManager::start_server_on).
    ///
    /// # Errors
    /// [`VspError::Bind`] if the address cannot be bound, [`VspError::AlreadyStarted`] if this
    /// manager already served.
    pub async fn start_server(&self, host: &str, port: u16) -> Result<SocketAddr, VspError> {
        self.check_startable()?;
        let listener = TcpListener::bind(host, port)
            .await
            .map_err(|source| VspError::Bind {
                addr: Address::tcp(host, port).to_string(),
                source,
            })?;
        let bound = listener.socket_addr();
        self.start_server_on(listener).await?;
        Ok(bound)
    }

    /// Binds `address` (TCP `host:port`, `unix:/path` or `memory:name`; see
    /// [`transport::bind`](crate::transport::bind)) and serves it; returns the bound address.
    ///
    /// # Errors
    /// As [`start_server`](VspManager::start_server).
    pub async fn start_server_at(&self, address: &Address) -> Result<Address, VspError> {
        self.check_startable()?;
        let listener = crate::transport::bind(address)
            .await
            .map_err(|source| VspError::Bind {
                addr: address.to_string(),
                source,
            })?;
        self.start_server_on(listener).await
    }

    /// Serves the connections `listener` accepts, in the background: any [`Listener`] (TCP,
    /// [`UnixListener`](crate::transport::UnixListener),
    /// [`MemoryListener`](crate::transport::MemoryListener), or your own). Returns its address.
    /// Shutting down drops the listener (a Unix listener removes its socket file).
    ///
    /// # Errors
    /// [`VspError::AlreadyStarted`] if this manager already served, [`VspError::WorkerPool`] if
    /// `Multicore` workers cannot start, and the announcement's error if the mesh's discovery
    /// refuses it.
    pub async fn start_server_on(&self, listener: impl Listener) -> Result<Address, VspError> {
        if !self.inner.transition(Lifecycle::Idle, Lifecycle::Running) {
            return Err(VspError::AlreadyStarted {
                service: self.inner.name.clone(),
            });
        }
        if let WorkerType::Multicore { workers } = self.inner.config.worker_type {
            if self.inner.workers.get().is_none() {
                match WorkerPool::new(workers) {
                    Ok(pool) => {
                        let _ = self.inner.workers.set(pool);
                    }
                    Err(source) => {
                        self.inner.set_state(Lifecycle::Idle);
                        return Err(VspError::WorkerPool { workers, source });
                    }
                }
            }
        }
        let addr = listener.local_addr();
        let tls = listener.is_tls();
        let _ = self.inner.bound.set(addr.clone());
        tracing::info!(service = %self.inner.name, %addr, "VSP server listening");
        let accepting = tokio::spawn(accept_loop(Box::new(listener), self.inner.clone()));
        *self
            .inner
            .accepting
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(accepting);
        if let Some(announcement) = &self.inner.announcement {
            if let Err(err) = announcement.announce(&self.inner.name, &addr, tls).await {
                self.inner.close().await;
                return Err(err);
            }
        }
        Ok(addr)
    }

    /// The address the server listens on (with the real port when port 0 was asked for), once
    /// started; it stays known after shutdown.
    pub fn local_addr(&self) -> Option<Address> {
        self.inner.bound.get().cloned()
    }

    /// Fails early, before binding anything, when the manager cannot start.
    fn check_startable(&self) -> Result<(), VspError> {
        match self.inner.state() {
            Lifecycle::Idle => Ok(()),
            _ => Err(VspError::AlreadyStarted {
                service: self.inner.name.clone(),
            }),
        }
    }

    /// Stops gracefully: stops accepting, tells every connected client (a `shutting_down`
    /// notice, so they send new calls elsewhere at once), answers requests still arriving with
    /// `shutting_down`, waits up to the drain timeout for running calls to finish (and at least
    /// 100 ms, for requests already on their way), then closes every connection.
    ///
    /// Calling it again, or on a manager that never started, is a no-op. Dropping the last
    /// handle of a running manager does the same in the background.
    ///
    /// # Errors
    /// [`VspError::DrainTimeout`] if calls were still running at the drain timeout; they were
    /// aborted and their callers see the connection close.
    pub async fn shutdown(&self) -> Result<(), VspError> {
        self.inner.shutdown().await
    }

    /// Stops at once: closes every connection and aborts running calls without draining.
    /// Closing it again is a no-op.
    pub async fn close(&self) {
        self.inner.close().await;
    }

    /// What the server holds for its peers right now: connections, calls in flight, streams,
    /// pending auth checks and bytes queued for writing. Each has a bound (see
    /// [`VspManagerBuilder`]) and an end: once peers leave, every count returns to zero.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), vsp::VspError> {
    /// let manager = vsp::VspManager::builder("user-service").build();
    /// manager.start_server("127.0.0.1", 0).await?;
    /// assert!(manager.ledger().is_empty());
    /// # manager.shutdown().await
    /// # }
    /// ```
    pub fn ledger(&self) -> Ledger {
        self.inner.ledger.snapshot(
            self.inner.drain.connections_active(),
            self.inner.drain.in_flight(),
        )
    }

    /// A snapshot of the server's counters.
    pub fn get_performance_stats(&self) -> PerformanceStats {
        let endpoints = self
            .inner
            .registry
            .load()
            .values()
            .map(|entry| (entry.name.to_string(), entry.counters.snapshot()))
            .collect();
        let admission = &self.inner.admission;
        let live = LiveCounts {
            in_flight: self.inner.drain.in_flight(),
            connections_active: self.inner.drain.connections_active(),
            connections_refused: admission.connections_refused.load(Ordering::Relaxed),
            accept_errors: admission.accept_errors.load(Ordering::Relaxed),
        };
        self.inner.stats.snapshot(&self.inner.name, endpoints, live)
    }
}

/// Says whether a complaint about a peer should be logged at `warn`: once per peer host per
/// minute, not per occurrence, so a misconfigured client retrying in a loop cannot flood the log.
#[derive(Default)]
pub(crate) struct PeerLog {
    last: Mutex<HashMap<String, std::time::Instant>>,
}

impl PeerLog {
    const EVERY: Duration = Duration::from_secs(60);
    /// Hosts remembered at most; older entries are forgotten first.
    const HOSTS: usize = 4096;

    /// True the first time for `peer`'s host in a minute.
    fn first_in_a_minute(&self, peer: &Address) -> bool {
        let host = peer.host().unwrap_or("local");
        let now = std::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.len() >= Self::HOSTS {
            last.retain(|_, at| now.duration_since(*at) < Self::EVERY);
        }
        match last.get(host) {
            Some(at) if now.duration_since(*at) < Self::EVERY => false,
            _ if last.len() >= Self::HOSTS => false,
            _ => {
                last.insert(host.to_owned(), now);
                true
            }
        }
    }

    /// Logs a failed connection setup (a TLS handshake); true if at `warn`.
    pub(crate) fn handshake_failed(
        &self,
        service: &str,
        peer: &Address,
        err: &std::io::Error,
    ) -> bool {
        let log = self.first_in_a_minute(peer);
        if log {
            tracing::warn!(service, %peer, "connection setup failed: {err} (logged once a minute per peer)");
        } else {
            tracing::debug!(service, %peer, "connection setup failed: {err}");
        }
        log
    }

    /// Logs a request whose `traceparent` was not taken (it starts a new trace); true if at
    /// `warn`.
    /// Logs a response frame sent to this server (a peer that is confused or probing); true if
    /// at `warn`.
    pub(crate) fn stray_response(&self, service: &str, peer: &Address, request_id: &str) -> bool {
        let log = self.first_in_a_minute(peer);
        let request_id = crate::protocol::short_text(request_id, 64);
        if log {
            tracing::warn!(service, %peer, %request_id, "dropped a response sent to a server (logged once a minute per peer)");
        } else {
            tracing::debug!(service, %peer, %request_id, "dropped a response sent to a server");
        }
        log
    }

    pub(crate) fn bad_traceparent(
        &self,
        service: &str,
        peer: &Address,
        err: &crate::trace::InvalidTraceParent,
    ) -> bool {
        let log = self.first_in_a_minute(peer);
        if log {
            tracing::warn!(service, %peer, "{err}; the request starts a new trace (logged once a minute per peer)");
        } else {
            tracing::debug!(service, %peer, "{err}; the request starts a new trace");
        }
        log
    }
}

async fn accept_loop(mut listener: Box<dyn Listener>, manager: Arc<ManagerInner>) {
    let mut lifecycle = manager.lifecycle();
    let mut backoff = AcceptBackoff::default();
    let mut refusals = RefusalLog::default();
    let config = &manager.config;
    loop {
        let accepted = tokio::select! {
            _ = lifecycle.wait_for(|state| *state != Lifecycle::Running) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.succeeded();
                let admitted = manager.admission.admit(
                    &peer,
                    config.max_connections,
                    config.max_connections_per_peer,
                );
                match admitted {
                    Ok(admitted) => {
                        tokio::spawn(connection::serve_connection(
                            stream,
                            peer,
                            manager.clone(),
                            admitted,
                        ));
                    }
                    Err(refusal) => {
                        drop(stream);
                        manager
                            .admission
                            .connections_refused
                            .fetch_add(1, Ordering::Relaxed);
                        refusals.refused(&manager.name, &peer, refusal);
                    }
                }
            }
            Err(err) if admission::is_connection_error(&err) => {
                tracing::debug!(service = %manager.name, "accept failed for one connection: {err}");
            }
            Err(err) => {
                // Out of file descriptors or memory: pause, longer while it lasts, instead of
                // spinning (and logging) on a listener that stays ready.
                manager
                    .admission
                    .accept_errors
                    .fetch_add(1, Ordering::Relaxed);
                let pause = backoff.failed();
                tracing::warn!(service = %manager.name, "accept failed: {err}; next try in {pause:?}");
                tokio::select! {
                    _ = lifecycle.wait_for(|state| *state != Lifecycle::Running) => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    tracing::debug!(service = %manager.name, "stopped accepting");
}

#[cfg(test)]
mod peer_log_tests {
    use super::*;

    #[test]
    fn a_failed_handshake_is_logged_once_per_peer_host_per_minute() {
        let log = PeerLog::default();
        let err = std::io::Error::other("bad certificate");
        assert!(log.handshake_failed("svc", &Address::tcp("10.0.0.1", 1000), &err));
        assert!(
            !log.handshake_failed("svc", &Address::tcp("10.0.0.1", 1001), &err),
            "same host, new port"
        );
        assert!(
            log.handshake_failed("svc", &Address::tcp("10.0.0.2", 1000), &err),
            "another host"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that sends response frames to a server in a loop is logged at `warn` once a
    /// minute, not once a frame; another peer still gets its own line.
    #[test]
    fn stray_responses_are_logged_once_a_minute_per_peer() {
        let log = PeerLog::default();
        let peer = Address::tcp("10.0.0.7", 4000);
        assert!(log.stray_response("s", &peer, "1"));
        for id in 0..1000 {
            assert!(!log.stray_response("s", &peer, &id.to_string()));
        }
        let other = Address::tcp("10.0.0.8", 4000);
        assert!(log.stray_response("s", &other, "1"));
    }
}
