//! [`VspManager`]: holds a service's endpoints, listens, dispatches and drains.
//!
//! Why endpoints sit behind an atomically swapped map: registering is rare and may happen while
//! serving, but every request looks an endpoint up. A copy-on-write map lets that lookup take no
//! lock at all.
//!
//! Why shutdown has two phases: first the server stops accepting and answers new requests on
//! open connections with `shutting_down` (so a client learns at once to go elsewhere) while the
//! calls already running finish; then, drained or out of time, it closes every connection.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::concurrency::AdaptiveLimiter;
use super::endpoint::Endpoint;
use super::worker::{PollLimiter, WorkerPool};
use super::*;
use crate::error::VspError;
use crate::mesh::ServiceMesh;
use crate::protocol::{EndpointDescription, ServiceDescription};
use crate::stats::{EndpointCounters, LiveCounts, PerformanceStats};
use crate::transport::{Address, Listener, MemoryListener, TcpListener};
use crate::{ServiceInfo, VspClient};

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
    pub(super) fn from_inner(inner: Arc<ManagerInner>) -> Self {
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
        self.endpoint_described(EndpointDescription::new(name), handler)
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

    pub(crate) fn register_entry(
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
        let concurrency = self
            .inner
            .endpoint_concurrency
            .get(&name)
            .map(|config| Arc::new(AdaptiveLimiter::new(*config)));
        let name: Arc<str> = Arc::from(name);
        self.inner
            .longest_name
            .fetch_max(name.len(), Ordering::Relaxed);
        let mut next = Registry::clone(&current);
        next.insert(
            name.clone(),
            Arc::new(EndpointEntry {
                site: Arc::new(crate::context::CallSite {
                    service: self.inner.service.clone(),
                    endpoint: name.clone(),
                }),
                name,
                endpoint,
                counters: EndpointCounters::default(),
                limiter,
                concurrency,
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

    /// Serves in this process, on a free in-memory name (no socket, no port), and returns a
    /// client whose mesh routes this service's name there: the one-line setup of a test, and
    /// of a service that calls another one in the same process. Calls go through the same
    /// server and client code as over TCP (JSON both ways, typed errors, deadlines, auth hooks,
    /// limits). The server runs until [`shutdown`](VspManager::shutdown), or until the last
    /// handle of this manager and the last clone of the client are dropped.
    ///
    /// A generated client does the same in one call: `XxxClient::local(impl)`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), vsp::VspError> {
    /// let manager = vsp::VspManager::builder("echo").build();
    /// manager.endpoint("echo", |v: serde_json::Value| async move { Ok::<_, vsp::VspError>(v) })?;
    /// let client = manager.serve_local().await?;
    /// let answer = client.call("echo", "echo", serde_json::json!({"n": 7})).await?;
    /// assert_eq!(answer["n"], 7);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`start_server_on`](VspManager::start_server_on).
    pub async fn serve_local(&self) -> Result<VspClient, VspError> {
        let listener = MemoryListener::bind_unique(&self.inner.name);
        let address = self.start_server_on(listener).await?;
        let mesh = ServiceMesh::new();
        mesh.register(ServiceInfo::at(self.inner.name.as_str(), address))?;
        Ok(VspClient::builder(mesh).keep_alive(self.clone()).build())
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

    /// The adaptive concurrency limit now, if the server has one
    /// ([`VspManagerBuilder::adaptive_concurrency`](crate::VspManagerBuilder::adaptive_concurrency)).
    pub fn concurrency_limit(&self) -> Option<usize> {
        self.inner
            .concurrency
            .as_ref()
            .map(|limiter| limiter.limit())
    }

    /// The adaptive limit of the endpoint `name` now, if it has one of its own
    /// ([`VspManagerBuilder::endpoint_concurrency`](crate::VspManagerBuilder::endpoint_concurrency))
    /// and is registered.
    pub fn endpoint_concurrency_limit(&self, name: &str) -> Option<usize> {
        let registry = self.inner.registry.load();
        let limiter = registry.get(name)?.concurrency.as_ref()?;
        Some(limiter.limit())
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
