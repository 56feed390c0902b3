//! The client side: [`VspClient`] routes each call through the mesh to a pooled, multiplexed
//! connection.
//!
//! Why multiplexing: one connection carries many calls at once, matched by request id, so a
//! slow call never blocks a fast one and a busy client needs a handful of sockets, not one per
//! call. Why a few connections per instance (`max_transports`) rather than one: a single
//! connection's reader is a single task; a few spread the work over cores under load.

mod connection;
mod pool;

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use connection::{CallFailure, ErrorBody, RawResponse};
use pool::{InstancePool, PoolError};

use crate::error::{CallError, ErrorCode, VspError};
use crate::mesh::ServiceMesh;
use crate::protocol::DEFAULT_MAX_FRAME_SIZE;

/// The default deadline of a call: 30 s, as Velithon's.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The default bound on opening a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default number of connections per instance.
pub const DEFAULT_MAX_TRANSPORTS: usize = 5;

#[derive(Debug, Clone)]
struct ClientConfig {
    max_transports: usize,
    timeout: Duration,
    connect_timeout: Duration,
    max_frame_size: usize,
}

struct ClientInner {
    mesh: ServiceMesh,
    config: ClientConfig,
    pools: RwLock<HashMap<Arc<str>, Arc<InstancePool>>>,
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
}

impl std::fmt::Debug for VspClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VspClient")
            .field("config", &self.inner.config)
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
        self.config.max_transports = connections.max(1);
        self
    }

    /// The deadline of every call, from the moment it starts, connecting included (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// The bound on opening one connection (default 5 s, and never past the call's deadline).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// The largest response frame accepted (default 16 MiB).
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config.max_frame_size = bytes;
        self
    }

    /// Builds the client. Connections open on first use.
    pub fn build(self) -> VspClient {
        VspClient {
            inner: Arc::new(ClientInner {
                mesh: self.mesh,
                config: self.config,
                pools: RwLock::new(HashMap::new()),
            }),
        }
    }
}

impl VspClient {
    /// Starts building a client that routes through `mesh`.
    pub fn builder(mesh: ServiceMesh) -> VspClientBuilder {
        VspClientBuilder {
            mesh,
            config: ClientConfig {
                max_transports: DEFAULT_MAX_TRANSPORTS,
                timeout: DEFAULT_TIMEOUT,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            },
        }
    }

    /// The mesh this client routes through.
    pub fn mesh(&self) -> &ServiceMesh {
        &self.inner.mesh
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
        let timeout = self.inner.config.timeout;
        let deadline = Instant::now() + timeout;
        let response = self.exchange(service, endpoint, &body, deadline).await?;
        decode_response(service, endpoint, &response)
    }

    /// A generated client's call to a method returning `Result<T, E>`: the service's `E`
    /// arrives typed, everything else as [`VspError`].
    pub(crate) async fn call_service<T: DeserializeOwned, E: DeserializeOwned>(
        &self,
        service: &str,
        endpoint: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<T, CallError<E>> {
        let deadline = Instant::now() + self.inner.config.timeout;
        let response = self.exchange(service, endpoint, body, deadline).await?;
        if response.error_code == Some(ErrorCode::Handler) {
            if let Ok(ServiceErrorBody { data }) = serde_json::from_slice(response.body()) {
                return Err(CallError::Service(data));
            }
        }
        Ok(decode_response(service, endpoint, &response)?)
    }

    async fn exchange(
        &self,
        service: &str,
        endpoint: &str,
        body: &(impl Serialize + ?Sized),
        deadline: Instant,
    ) -> Result<RawResponse, VspError> {
        let config = &self.inner.config;
        let instance = self.inner.mesh.pick(service)?;
        let call_guard = instance.track_call();
        let pool = self.pool(instance.endpoint_arc());
        let connect_timeout = config
            .connect_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let connection = pool.get(connect_timeout).await.map_err(|err| match err {
            PoolError::Connect(source) => VspError::Connect {
                service: service.to_owned(),
                instance: instance.endpoint().to_owned(),
                source,
            },
            PoolError::TimedOut(after) if after < config.connect_timeout => VspError::Timeout {
                service: service.to_owned(),
                endpoint: endpoint.to_owned(),
                after: config.timeout,
            },
            PoolError::TimedOut(after) => VspError::ConnectTimeout {
                service: service.to_owned(),
                instance: instance.endpoint().to_owned(),
                after,
            },
        })?;
        let closed = |reason: String| VspError::ConnectionClosed {
            service: service.to_owned(),
            endpoint: endpoint.to_owned(),
            instance: call_guard.instance().endpoint().to_owned(),
            reason,
        };
        let failure = |failure: CallFailure| match failure {
            CallFailure::NotSent(reason) | CallFailure::Closed(reason) => closed(reason),
            CallFailure::Encode(source) => VspError::Encode {
                service: service.to_owned(),
                endpoint: endpoint.to_owned(),
                source,
            },
            CallFailure::Protocol(reason) => {
                VspError::Protocol(crate::error::ProtocolError::Malformed(reason))
            }
        };
        let mut call = connection.send(service, endpoint, body).map_err(failure)?;
        drop(connection);
        match call.wait(deadline).await {
            Some(outcome) => outcome.map_err(failure),
            None => Err(VspError::Timeout {
                service: service.to_owned(),
                endpoint: endpoint.to_owned(),
                after: config.timeout,
            }),
        }
    }

    fn pool(&self, endpoint: &Arc<str>) -> Arc<InstancePool> {
        if let Some(pool) = self
            .inner
            .pools
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(endpoint)
        {
            return pool.clone();
        }
        let config = &self.inner.config;
        self.inner
            .pools
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(endpoint.clone())
            .or_insert_with(|| {
                Arc::new(InstancePool::new(
                    endpoint.clone(),
                    config.max_transports,
                    config.max_frame_size,
                ))
            })
            .clone()
    }

    /// Open connections to the instance at `endpoint` (`host:port`).
    pub fn open_connections(&self, endpoint: &str) -> usize {
        self.inner
            .pools
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(endpoint)
            .map_or(0, |pool| pool.open_connections())
    }
}

/// The body of a service method's typed error.
#[derive(serde::Deserialize)]
struct ServiceErrorBody<E> {
    data: E,
}

/// Turns a response into the caller's type or the remote error it carries.
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
        let message = serde_json::from_slice::<ErrorBody<'_>>(body)
            .map(|body| body.error.into_owned())
            .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
        return Err(remote(code.clone(), message));
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
