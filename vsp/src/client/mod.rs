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
//!
//! Files: `builder.rs` (configuration and per-call options), `failover.rs` (one call's attempts
//! and the mapping of each failure to a [`VspError`]), `probe.rs` (the prober the mesh
//! runs ejection probes with, liveness checks, active health checks, the idle sweeper), `pool.rs` and `connection.rs` (connections), `response.rs`
//! (response bodies to values or errors), `retry.rs` (the retry budget).

mod builder;
mod connection;
mod failover;
mod metrics;
mod policy;
mod pool;
mod probe;
mod response;
mod retry;
mod send_stream;
mod stream;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use builder::{CallInfo, CallOptions, Interceptor, VspClientBuilder};
pub use metrics::{CallStats, ClientMetrics, InstanceMetrics};
pub use policy::{EndpointPolicy, Hedge, Policies};
pub use pool::PoolStats;
pub use stream::CallStream;

use builder::ClientConfig;
use pool::Pools;
use retry::RetryBudget;

use crate::error::{CallError, ErrorCode, VspError};
use crate::mesh::ServiceMesh;
use crate::protocol::{Metadata, ServiceDescription, DESCRIBE_ENDPOINT};

struct ClientInner {
    mesh: ServiceMesh,
    config: ClientConfig,
    pools: Pools,
    budget: RetryBudget,
    interceptor: Option<Arc<dyn Interceptor>>,
    /// Per service and endpoint: calls, errors, latency, retries, failovers.
    counters: metrics::ClientCounters,
    /// The idle sweeper (and the active health checker) run once the first call is made.
    background: AtomicBool,
    /// Run-time per-endpoint policies (`None`: none, and no lookup per call).
    policies: arc_swap::ArcSwapOption<Policies>,
    /// What lives as long as the client: the server of [`VspManager::serve_local`](crate::VspManager::serve_local).
    _keep_alive: Option<Box<dyn std::any::Any + Send + Sync>>,
}

/// Calls VSP services by name.
///
/// Cheap to clone; clones share the connections.
///
/// # Threads and wake-ups
///
/// A connection's reader and writer are tasks spawned on the runtime that opened it, and its
/// callers may run anywhere. A call alone on its connection reads its own answer (the socket
/// wakes the caller directly) and writes its own request; with more calls in flight, the
/// reader task reads for all of them and the writer task batches their requests. For
/// thread-per-core, run a current-thread runtime (or a one-worker runtime) per core with a
/// `VspClient` of its own: each client's connections are then read, written and awaited on
/// one thread, as the separate-process section of `cargo bench --bench rpc` measures.
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
    /// The metadata of this handle's calls (see [`VspClient::with_metadata`]).
    metadata: Option<Arc<Metadata>>,
}

impl std::fmt::Debug for VspClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VspClient")
            .field("config", &self.inner.config)
            .field("timeout", &self.timeout)
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

impl VspClient {
    /// Starts building a client that routes through `mesh`.
    pub fn builder(mesh: ServiceMesh) -> VspClientBuilder {
        VspClientBuilder::new(mesh)
    }

    /// The mesh this client routes through.
    pub fn mesh(&self) -> &ServiceMesh {
        &self.inner.mesh
    }

    /// Replaces the run-time per-endpoint policies of this client and every handle on it (see
    /// [`Policies`] for the precedence); calls already under way keep the policy they started
    /// with.
    pub fn set_policies(&self, policies: Policies) {
        self.inner
            .policies
            .store((!policies.is_empty()).then(|| Arc::new(policies)));
    }

    /// A handle on the same connections whose calls have `timeout` as their deadline: the
    /// per-call override for generated clients (`UserServiceClient::new(client.with_timeout(..))`).
    pub fn with_timeout(&self, timeout: Duration) -> VspClient {
        VspClient {
            inner: self.inner.clone(),
            timeout,
            metadata: self.metadata.clone(),
        }
    }

    /// A handle on the same connections whose calls also carry `key: value` as metadata: how a
    /// generated client sends metadata
    /// (`UserServiceClient::new(client.with_metadata("authorization", "Bearer ..."))`).
    pub fn with_metadata(&self, key: impl Into<String>, value: impl Into<String>) -> VspClient {
        let mut metadata = self.metadata.as_deref().cloned().unwrap_or_default();
        metadata.insert(key, value);
        VspClient {
            inner: self.inner.clone(),
            timeout: self.timeout,
            metadata: Some(Arc::new(metadata)),
        }
    }

    /// A handle on the same connections that sends no metadata of its own (the client's
    /// interceptor still runs).
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn without_metadata(&self) -> VspClient {
        VspClient {
            inner: self.inner.clone(),
            timeout: self.timeout,
            metadata: None,
        }
    }

    /// The metadata this handle sends with every call.
    pub fn metadata(&self) -> Option<&Metadata> {
        self.metadata.as_deref()
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
        response::decode(service, endpoint, &response)
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
            if let Some(error) = response::service_error(&response) {
                return Err(CallError::Service(error));
            }
        }
        Ok(response::decode(service, endpoint, &response)?)
    }

    /// A call with a JSON body in and out, as the HTTP gateway makes it: the result's raw JSON,
    /// or the error with the service's typed error, if it has one.
    #[cfg(feature = "gateway")]
    pub(crate) async fn call_json(
        &self,
        service: &str,
        endpoint: &str,
        body: &serde_json::value::RawValue,
        options: CallOptions,
    ) -> Result<Box<serde_json::value::RawValue>, (VspError, Option<TypedError>)> {
        let response = self
            .exchange(service, endpoint, body, options)
            .await
            .map_err(|err| (err, None))?;
        let typed = match response.error_code {
            Some(ErrorCode::Handler) => response::service_error(&response).map(|data| TypedError {
                data,
                http_status: response.http_status,
            }),
            _ => None,
        };
        response::decode(service, endpoint, &response).map_err(|err| (err, typed))
    }

    /// What `service` says of itself: its endpoints with their docs and JSON Schemas (the
    /// built-in `vsp.describe`, through the mesh like any call).
    ///
    /// # Errors
    /// As [`call`](VspClient::call); a Velithon server, which does not describe itself, answers
    /// with a `Remote` error (`Endpoint vsp.describe not found`).
    pub async fn describe(&self, service: &str) -> Result<ServiceDescription, VspError> {
        let options = CallOptions::new().idempotent(true);
        self.call_with(service, DESCRIBE_ENDPOINT, probe::EmptyBody {}, options)
            .await
    }

    /// What this client's calls did per service and endpoint (calls, errors by code, latency
    /// percentiles, retries, failovers), and per instance of its mesh (ejections,
    /// re-admissions, open connections); [`ClientMetrics::to_prometheus`] renders it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let client = vsp::VspClient::builder(vsp::ServiceMesh::new()).build();
    /// let _ = client.call("user-service", "get_user", serde_json::json!({})).await;
    /// let metrics = client.metrics();
    /// let calls = &metrics.calls["user-service"]["get_user"];
    /// assert_eq!(calls.errors["no_instances"], 1);
    /// assert!(metrics.to_prometheus().contains(
    ///     "vsp_client_errors_total{service=\"user-service\",endpoint=\"get_user\",code=\"no_instances\"} 1"
    /// ));
    /// # }
    /// ```
    pub fn metrics(&self) -> ClientMetrics {
        let instances = self
            .inner
            .mesh
            .services()
            .into_iter()
            .flat_map(|service| self.inner.mesh.instances(&service))
            .map(|state| {
                let instance = state.info.address().to_string();
                InstanceMetrics {
                    service: state.info.name().to_owned(),
                    connections: self.inner.pools.open_connections(&instance),
                    instance,
                    status: state.info.status(),
                    ejections: state.ejections,
                    readmissions: state.readmissions,
                    in_flight: state.in_flight,
                }
            })
            .collect();
        ClientMetrics::new(&self.inner.counters, instances, self.pool_stats())
    }

    /// What this client's connection pools have done.
    pub fn pool_stats(&self) -> PoolStats {
        self.inner.pools.stats()
    }

    /// Open connections to the instance at `endpoint` (its address as text: `host:port`,
    /// `unix:/path`).
    pub fn open_connections(&self, endpoint: &str) -> usize {
        self.inner.pools.open_connections(endpoint)
    }
}

/// A service's typed error as the gateway answers it: its JSON (`data` of a `handler` error) and
/// the HTTP status it declared, if any.
#[cfg(feature = "gateway")]
#[derive(Debug)]
pub(crate) struct TypedError {
    pub(crate) data: Box<serde_json::value::RawValue>,
    pub(crate) http_status: Option<u16>,
}
