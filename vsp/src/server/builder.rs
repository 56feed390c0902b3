//! How a server is configured: [`VspManagerBuilder`] and its defaults.

use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::announce::Announcement;
use super::auth::AuthHook;
use super::drain::Drain;
use super::endpoint::{DescribeEndpoint, Endpoint, HealthEndpoint};
use super::{
    EndpointEntry, Lifecycle, ManagerInner, PeerLog, Registry, ServerConfig, VspManager,
    WorkerType, DEFAULT_DRAIN_TIMEOUT, DEFAULT_FRAME_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_PEER, DEFAULT_MAX_REQUESTS_PER_CONNECTION,
    DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_REQUEST_BYTES_PER_CONNECTION, DEFAULT_MAX_STREAM_WINDOW,
    DEFAULT_WRITE_TIMEOUT,
};
use crate::mesh::ServiceMesh;
use crate::protocol::{DEFAULT_MAX_FRAME_SIZE, DESCRIBE_ENDPOINT, HEALTH_ENDPOINT};
use crate::stats::{EndpointCounters, ServerStats};

/// Builds a [`VspManager`].
#[derive(Clone)]
pub struct VspManagerBuilder {
    name: String,
    config: ServerConfig,
    mesh: Option<ServiceMesh>,
    weight: f64,
    advertise_host: Option<String>,
    auth: Option<Arc<dyn AuthHook>>,
    adaptive: Option<crate::AdaptiveConcurrency>,
    endpoint_adaptive: std::collections::HashMap<String, crate::AdaptiveConcurrency>,
}

impl std::fmt::Debug for VspManagerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VspManagerBuilder")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("announces", &self.mesh.is_some())
            .field("weight", &self.weight)
            .field("advertise_host", &self.advertise_host)
            .field("auth", &self.auth.is_some())
            .field("adaptive", &self.adaptive)
            .field("endpoint_adaptive", &self.endpoint_adaptive)
            .finish()
    }
}

impl VspManagerBuilder {
    pub(super) fn new(name: String) -> Self {
        VspManagerBuilder {
            mesh: None,
            weight: 1.0,
            adaptive: None,
            endpoint_adaptive: std::collections::HashMap::new(),
            advertise_host: None,
            auth: None,
            name,
            config: ServerConfig {
                max_frame_size: DEFAULT_MAX_FRAME_SIZE,
                drain_timeout: DEFAULT_DRAIN_TIMEOUT,
                worker_type: WorkerType::Async,
                stats: true,
                max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
                max_requests_per_connection: DEFAULT_MAX_REQUESTS_PER_CONNECTION,
                frame_timeout: DEFAULT_FRAME_TIMEOUT,
                handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                max_connections: DEFAULT_MAX_CONNECTIONS,
                max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
                max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
                max_request_bytes_per_connection: DEFAULT_MAX_REQUEST_BYTES_PER_CONNECTION,
                max_stream_window: DEFAULT_MAX_STREAM_WINDOW,
                client_stream_window: crate::protocol::DEFAULT_CLIENT_STREAM_WINDOW,
                write_timeout: DEFAULT_WRITE_TIMEOUT,
                compression: None,
            },
        }
    }

    /// Runs `hook` before every handler but `health`'s: it sees the endpoint, the metadata and
    /// the peer's identity, may await, and refuses with `unauthenticated` or
    /// `permission_denied` (see [`AuthHook`]).
    pub fn auth(mut self, hook: impl AuthHook) -> Self {
        self.auth = Some(Arc::new(hook));
        self
    }

    /// The bound on setting a new connection up (its TLS handshake) once accepted (default
    /// 10 s): a peer that opens a connection and never finishes the handshake is dropped then.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// The largest frame accepted or sent (default 16 MiB). A peer that announces a larger
    /// request gets a `protocol` error and its connection is closed; a reply that would be larger
    /// is not sent, the caller gets a `too_large` error instead (so it never reaches a client
    /// whose limit it would break, and never wraps the 4-byte length).
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config.max_frame_size = bytes;
        self
    }

    /// Compresses answers (and stream items) to clients that read compressed frames (default:
    /// none compressed). Every client of this version offers to read zstd on its first requests;
    /// Velithon's clients offer nothing and never receive a compressed frame. See
    /// [`Compression`](crate::Compression) for the threshold and level, and the wire reference
    /// (`vsp::protocol`) for the frames.
    pub fn compression(mut self, compression: crate::Compression) -> Self {
        self.config.compression = Some(compression);
        self
    }

    /// How long [`VspManager::shutdown`] waits for running calls before it aborts them
    /// (default 30 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }

    /// The most requests handled at once over all connections (default 10,000); beyond it,
    /// requests are answered `overloaded` at once instead of queueing.
    pub fn max_concurrent_requests(mut self, requests: usize) -> Self {
        self.config.max_concurrent_requests = requests.max(1);
        self
    }

    /// An adaptive limit on the requests handled at once (default: none, only the fixed
    /// [`max_concurrent_requests`](Self::max_concurrent_requests)): the limit follows the
    /// latency the server measures, and requests beyond it are answered `overloaded` at once
    /// (their callers try another instance without counting a failure). Streams and `health`
    /// are not counted. See [`AdaptiveConcurrency`](crate::AdaptiveConcurrency) for the
    /// algorithm and its knobs, and [`VspManager::concurrency_limit`] for the limit now.
    ///
    /// Off by default: it sheds load only where latency grows with concurrency (a CPU-bound
    /// server past its cores), and a service whose calls vary a lot in cost on their own should
    /// measure before turning it on.
    pub fn adaptive_concurrency(mut self, config: crate::AdaptiveConcurrency) -> Self {
        self.adaptive = Some(config);
        self
    }

    /// An adaptive limit of its own for the endpoint `name` (registered before or after
    /// `build`): its calls are counted under it instead of under the server's
    /// [`adaptive_concurrency`](Self::adaptive_concurrency), so an expensive endpoint sheds
    /// its own load without refusing the cheap ones. The same algorithm and knobs; see
    /// [`VspManager::endpoint_concurrency_limit`] for the limit now.
    ///
    /// ```
    /// use vsp::{AdaptiveConcurrency, VspManager};
    ///
    /// let manager = VspManager::builder("reports")
    ///     .endpoint_concurrency("render", AdaptiveConcurrency::new().max(8))
    ///     .build();
    /// manager.endpoint("render", |_: serde_json::Value| async { Ok::<_, String>("done") })?;
    /// assert_eq!(manager.endpoint_concurrency_limit("render"), Some(8));
    /// # Ok::<(), vsp::VspError>(())
    /// ```
    pub fn endpoint_concurrency(
        mut self,
        name: impl Into<String>,
        config: crate::AdaptiveConcurrency,
    ) -> Self {
        self.endpoint_adaptive.insert(name.into(), config);
        self
    }

    /// The most requests handled at once for one connection (default 1,024); beyond it, that
    /// connection's requests are answered `overloaded` at once.
    pub fn max_requests_per_connection(mut self, requests: usize) -> Self {
        self.config.max_requests_per_connection = requests.max(1);
        self
    }

    /// The most connections open at once (default 16,384). A connection beyond it is closed as
    /// soon as it is accepted, with a log line (at most one a second, with the count), and
    /// counted in [`PerformanceStats::connections_refused`](crate::PerformanceStats).
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.config.max_connections = connections.max(1);
        self
    }

    /// The most connections open at once from one peer IP address (default 1,024; TCP peers
    /// only). Beyond it, as for [`max_connections`](Self::max_connections).
    pub fn max_connections_per_peer(mut self, connections: usize) -> Self {
        self.config.max_connections_per_peer = connections.max(1);
        self
    }

    /// The budget of large request bytes being handled at once over all connections (default
    /// 512 MiB). A request above 16 KiB that would take the total past it is answered
    /// `overloaded` at once (its caller tries another instance), unless it is the only large
    /// request in flight. Smaller requests are bounded by
    /// [`max_concurrent_requests`](Self::max_concurrent_requests) instead: a small request in flight
    /// holds the read buffer it arrived in (64 KiB, shared with the requests read along with it)
    /// until it is answered, so a server's request memory stays under about this budget plus
    /// 64 KiB per request in flight.
    pub fn max_request_bytes(mut self, bytes: usize) -> Self {
        self.config.max_request_bytes = bytes;
        self
    }

    /// As [`max_request_bytes`](Self::max_request_bytes), for one connection (default 64 MiB).
    pub fn max_request_bytes_per_connection(mut self, bytes: usize) -> Self {
        self.config.max_request_bytes_per_connection = bytes;
        self
    }

    /// The most stream items a caller may have asked for and not yet received (default 4,096):
    /// a larger window on a request, or credit that would take it past this, is cut to it.
    /// Whatever a caller asks, a stream also waits while its connection has 4 MiB waiting to
    /// be written, so a reader that is slow or gone costs at most that.
    pub fn max_stream_window(mut self, items: u32) -> Self {
        self.config.max_stream_window = items.max(1);
        self
    }

    /// The widest window of a caller's stream (a client or bidirectional stream; default
    /// 1,024 items): the server grants 32 items up front, then what its handler reads, half a
    /// window at a time, doubling the window while the items held are under 1 MiB, up to this.
    /// Whatever the window, the items held count against
    /// [`max_request_bytes_per_connection`](Self::max_request_bytes_per_connection): a caller
    /// that sends past it fails its call with `protocol`.
    pub fn client_stream_window(mut self, items: u32) -> Self {
        self.config.client_stream_window = items.max(1);
        self
    }

    /// The write-progress deadline (default 30 s): a connection whose peer takes no byte of a
    /// pending write for this long (it stopped reading) is closed, and counted in
    /// [`PerformanceStats::write_timeouts`](crate::PerformanceStats). `Duration::MAX` waits for ever.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.config.write_timeout = timeout;
        self
    }

    /// How long a peer may take to send the rest of a request frame once its first bytes
    /// arrived (default 30 s). A peer that stalls in the middle of a frame is disconnected when
    /// it passes, so half-sent frames cannot pin connections.
    pub fn frame_timeout(mut self, timeout: Duration) -> Self {
        self.config.frame_timeout = timeout;
        self
    }

    /// How long a connection with no request in flight stays open without a new request
    /// (default 5 minutes; longer than a client's own idle timeout, 90 s, so a client normally
    /// closes first). `Duration::MAX` keeps idle connections open.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Announces the server through `mesh`'s discovery when it starts (mDNS, Consul, or the
    /// static list itself), and withdraws it when it shuts down.
    pub fn mesh(mut self, mesh: ServiceMesh) -> Self {
        self.mesh = Some(mesh);
        self
    }

    /// The weight announced for this instance (default 1.0).
    pub fn weight(mut self, weight: f64) -> Self {
        self.weight = weight;
        self
    }

    /// The host announced for this instance (default: the address it binds; when that is
    /// `0.0.0.0` or `::`, each discovery announces the machine's addresses its own way).
    pub fn advertise_host(mut self, host: impl Into<String>) -> Self {
        self.advertise_host = Some(host.into());
        self
    }

    /// Where handlers run (default [`WorkerType::Async`]).
    pub fn worker_type(mut self, worker_type: WorkerType) -> Self {
        self.config.worker_type = worker_type;
        self
    }

    /// Whether every call records its processing time (default on). Off, the counters of
    /// [`VspManager::get_performance_stats`] other than `in_flight`, `active_workers`, errors and
    /// connections stay at zero.
    pub fn stats(mut self, enabled: bool) -> Self {
        self.config.stats = enabled;
        self
    }

    /// Builds the manager. It serves nothing until [`VspManager::start_server`].
    pub fn build(self) -> VspManager {
        let (lifecycle, _) = watch::channel(Lifecycle::Idle);
        let service: Arc<str> = Arc::from(self.name.as_str());
        let built_in = |name: &str, endpoint: Box<dyn Endpoint>| {
            let name: Arc<str> = Arc::from(name);
            let entry = EndpointEntry {
                site: Arc::new(crate::context::CallSite {
                    service: service.clone(),
                    endpoint: name.clone(),
                }),
                name: name.clone(),
                endpoint,
                counters: EndpointCounters::default(),
                limiter: None,
                concurrency: None,
                description: None,
            };
            (name, Arc::new(entry))
        };
        let registry = Registry::from([
            built_in(HEALTH_ENDPOINT, Box::new(HealthEndpoint)),
            built_in(DESCRIBE_ENDPOINT, Box::new(DescribeEndpoint)),
        ]);
        let inner = Arc::new(ManagerInner {
            service,
            name: self.name,
            auth: self.auth,
            handshake_log: PeerLog::default(),
            trace_log: PeerLog::default(),
            config: self.config,
            registry: ArcSwap::from_pointee(registry),
            registering: Mutex::new(()),
            state: AtomicU8::new(Lifecycle::Idle as u8),
            lifecycle,
            stats: ServerStats::default(),
            concurrency: self
                .adaptive
                .map(|config| Arc::new(super::concurrency::AdaptiveLimiter::new(config))),
            endpoint_concurrency: self.endpoint_adaptive,
            drain: Drain::default(),
            admission: Arc::default(),
            ledger: Default::default(),
            longest_name: std::sync::atomic::AtomicUsize::new(
                HEALTH_ENDPOINT.len().max(DESCRIBE_ENDPOINT.len()),
            ),
            stray_log: PeerLog::default(),
            workers: OnceLock::new(),
            bound: OnceLock::new(),
            accepting: Mutex::new(None),
            announcement: self.mesh.map(|mesh| Announcement {
                mesh,
                weight: self.weight,
                advertise_host: self.advertise_host,
                announced: Mutex::new(None),
            }),
        });
        VspManager::from_inner(inner)
    }
}
