//! How a client is configured: [`VspClientBuilder`], its defaults, and per-call
//! [`CallOptions`].

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::policy::{EndpointPolicy, Hedge, Policies};
use super::pool::{PoolLimits, Pools};
use super::retry::RetryBudget;
use super::{ClientInner, VspClient};
use crate::mesh::ServiceMesh;
use crate::protocol::{Metadata, DEFAULT_MAX_FRAME_SIZE};
use crate::transport::{Connector, DefaultConnector};

/// A connection with calls in flight that hears nothing for this long is pinged.
pub(crate) const DEFAULT_KEEPALIVE_BUSY: Duration = Duration::from_millis(250);
/// A connection without calls in flight is pinged after this long without a frame.
pub(crate) const DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// A ping not answered within this closes its connection and ejects the instance.
pub(crate) const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_millis(750);

/// The default deadline of a call: 30 s, as Velithon's.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The default bound on opening a connection.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default number of connections per instance.
pub(crate) const DEFAULT_MAX_TRANSPORTS: usize = 5;
/// The default limit of calls in flight on one connection.
pub(crate) const DEFAULT_MAX_IN_FLIGHT_PER_CONNECTION: usize = 1024;
/// The default time after which a connection without calls is closed.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The default number of attempts of one call, the first included.
pub(crate) const DEFAULT_MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone)]
pub(super) struct ClientConfig {
    pub(super) limits: PoolLimits,
    pub(super) timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) max_attempts: u32,
    pub(super) retry_written_calls: bool,
    pub(super) retry_ratio: f64,
    pub(super) retry_reserve: u32,
    pub(super) health_check_interval: Option<Duration>,
    pub(super) attempt_timeout: Option<Duration>,
    pub(super) keepalive: Option<super::probe::Keepalive>,
}

/// Per-call settings for [`VspClient::call_with`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CallOptions {
    /// This call's deadline, instead of the client's.
    pub timeout: Option<Duration>,
    /// Safe to send again after it may have run (a read, an upsert): it may be retried on
    /// another instance after a connection loss.
    pub idempotent: bool,
    /// Metadata sent with this call, on top of the client's (see
    /// [`VspClient::with_metadata`]); the client's interceptor sees both.
    pub metadata: Metadata,
    /// Inside a handler, end this call no later than the call being served (default on).
    pub inherit_deadline: bool,
    /// For [`VspClient::call_stream_with`]: the items granted to the server ahead of what has
    /// been read (default: the server's default, 1,024 items).
    pub stream_window: Option<u32>,
    /// For [`VspClient::call_stream_with`]: end the stream when no item arrives for this long;
    /// the deadline then bounds only the opening, not the whole stream.
    pub idle_timeout: Option<Duration>,
    /// Attempts at most for this call (retries and hedges included), instead of the client's.
    pub max_attempts: Option<u32>,
    /// Whether and when this call is hedged (only idempotent unary calls are).
    pub hedge: Option<Hedge>,
    /// The hash of the key a [`ConsistentHashBalancer`](crate::ConsistentHashBalancer) routes by.
    pub(crate) hash_key: Option<u64>,
    /// The policy declared on the method (`#[vsp(...)]`), set by the generated client.
    pub(crate) declared: Option<&'static EndpointPolicy>,
    /// Set by `call_stream`: the call asks for a stream.
    pub(crate) stream: bool,
    /// Set by `call_client_stream` and `call_bidi_stream`: the call sends a stream too.
    pub(crate) upload: bool,
}

impl Default for CallOptions {
    fn default() -> Self {
        CallOptions {
            timeout: None,
            idempotent: false,
            metadata: Metadata::new(),
            inherit_deadline: true,
            stream_window: None,
            idle_timeout: None,
            max_attempts: None,
            hedge: None,
            hash_key: None,
            declared: None,
            stream: false,
            upload: false,
        }
    }
}

impl CallOptions {
    /// Default options: the client's deadline (or the served call's, if earlier), not
    /// idempotent, no metadata of its own.
    pub fn new() -> Self {
        CallOptions::default()
    }

    /// Adds a metadata entry to this call (`authorization`, `x-request-id`, ...).
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key, value);
        self
    }

    /// Whether a call made inside a handler ends no later than the call being served (default
    /// true, as tarpc's context does): the order-service → inventory-service hop cannot outlive
    /// its caller. Turn it off for work that must finish on its own schedule.
    pub fn inherit_deadline(mut self, inherit: bool) -> Self {
        self.inherit_deadline = inherit;
        self
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

    /// A stream's credit window: how many items the server may send ahead of what was read
    /// (default 1,024; the server caps it at its `max_stream_window`).
    pub fn stream_window(mut self, items: u32) -> Self {
        self.stream_window = Some(items.max(1));
        self
    }

    /// Attempts at most for this call, retries and hedges included (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    /// Hedges this call (if it is idempotent): see [`Hedge`].
    pub fn hedge(mut self, hedge: Hedge) -> Self {
        self.hedge = Some(hedge);
        self
    }

    /// The key a [`ConsistentHashBalancer`](crate::ConsistentHashBalancer) routes this call by:
    /// calls with equal keys go to the same instance. The key is hashed from its JSON form with
    /// a hash that every client and version shares (`"42"` and `42` are different keys). Without
    /// one, a call's `vsp-hash-key` metadata entry, if any, is the key (as a JSON string).
    pub fn hash_key(mut self, key: &(impl Serialize + ?Sized)) -> Self {
        self.hash_key = Some(key_hash(key));
        self
    }

    /// The policy declared on the method, beneath what the call sets and the client's run-time
    /// [`Policies`](crate::Policies).
    pub(crate) fn declared(mut self, policy: &'static EndpointPolicy) -> Self {
        self.declared = Some(policy);
        self
    }

    /// A stream's per-item idle timeout: it ends (`timeout`) when no item arrives for this
    /// long, and the call's deadline bounds only its opening.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = Some(idle);
        self
    }
}

/// The hash of a key's JSON form (64-bit FNV-1a), written straight into the hash: no buffer.
pub(crate) fn key_hash(key: &(impl Serialize + ?Sized)) -> u64 {
    struct Fnv(u64);
    impl std::io::Write for Fnv {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            for b in bytes {
                self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hash = Fnv(0xcbf2_9ce4_8422_2325);
    // A key that cannot be serialized hashes as far as it went: still the same every time.
    let _ = serde_json::to_writer(&mut hash, key);
    hash.0
}

/// What a client [`Interceptor`] is told about the call it sees.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct CallInfo<'a> {
    /// The service called.
    pub service: &'a str,
    /// The endpoint called.
    pub endpoint: &'a str,
}

/// Sees every call of a client before it is sent and may change its metadata: the place to add
/// `authorization: Bearer ...` to every call (tonic's interceptor, gRPC's call credentials).
///
/// Any `Fn(&CallInfo, &mut Metadata) + Send + Sync` is one. It runs once per call (not per
/// attempt), after the client's and the call's own metadata are merged. It cannot await: a
/// token that needs refreshing is refreshed in the background (into an `ArcSwap`, a
/// `RwLock`) and read here.
///
/// ```
/// use vsp::{CallInfo, Metadata, ServiceMesh, VspClient};
///
/// let token = "s3cret".to_owned();
/// let client = VspClient::builder(ServiceMesh::new())
///     .interceptor(move |call: &CallInfo<'_>, metadata: &mut Metadata| {
///         if call.endpoint != "health" {
///             metadata.insert("authorization", format!("Bearer {token}"));
///         }
///     })
///     .build();
/// # drop(client);
/// ```
pub trait Interceptor: Send + Sync + 'static {
    /// Changes `metadata` of the call described by `call`.
    fn intercept(&self, call: &CallInfo<'_>, metadata: &mut Metadata);
}

impl<F> Interceptor for F
where
    F: Fn(&CallInfo<'_>, &mut Metadata) + Send + Sync + 'static,
{
    fn intercept(&self, call: &CallInfo<'_>, metadata: &mut Metadata) {
        self(call, metadata);
    }
}

/// Builds a [`VspClient`].
pub struct VspClientBuilder {
    mesh: ServiceMesh,
    config: ClientConfig,
    connector: Arc<dyn Connector>,
    interceptor: Option<Arc<dyn Interceptor>>,
    metadata: Metadata,
    keep_alive: Option<Box<dyn std::any::Any + Send + Sync>>,
    policies: Policies,
}

impl std::fmt::Debug for VspClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VspClientBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl VspClientBuilder {
    pub(super) fn new(mesh: ServiceMesh) -> Self {
        VspClientBuilder {
            mesh,
            config: ClientConfig {
                limits: PoolLimits {
                    max_transports: DEFAULT_MAX_TRANSPORTS,
                    max_in_flight: DEFAULT_MAX_IN_FLIGHT_PER_CONNECTION,
                    max_frame_size: DEFAULT_MAX_FRAME_SIZE,
                    compression: None,
                },
                timeout: DEFAULT_TIMEOUT,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                retry_written_calls: false,
                retry_ratio: 0.2,
                retry_reserve: 10,
                health_check_interval: None,
                attempt_timeout: None,
                keepalive: Some(super::probe::Keepalive {
                    busy: DEFAULT_KEEPALIVE_BUSY,
                    idle: DEFAULT_KEEPALIVE_IDLE,
                    timeout: DEFAULT_KEEPALIVE_TIMEOUT,
                }),
            },
            policies: Policies::new(),
            connector: Arc::new(DefaultConnector::new()),
            interceptor: None,
            metadata: Metadata::new(),
            keep_alive: None,
        }
    }

    /// Keeps `value` alive as long as the client (a local server).
    pub(crate) fn keep_alive(mut self, value: impl std::any::Any + Send + Sync) -> Self {
        self.keep_alive = Some(Box::new(value));
        self
    }

    /// Sends `key: value` with every call of this client (and of its handles).
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key, value);
        self
    }

    /// Runs `interceptor` on every call before it is sent (see [`Interceptor`]).
    pub fn interceptor(mut self, interceptor: impl Interceptor) -> Self {
        self.interceptor = Some(Arc::new(interceptor));
        self
    }

    /// The most connections per instance (default 5). Another connection opens only when
    /// every open one is saturated: half its [in-flight limit](Self::max_in_flight_per_connection)
    /// used, or 256 KiB of requests waiting for a socket that does not take them (one
    /// multiplexed connection is faster than several until then). Calls go to the least-loaded
    /// connection.
    pub fn max_transports(mut self, connections: usize) -> Self {
        self.config.limits.max_transports = connections.max(1);
        self
    }

    /// The most calls in flight on one connection (default 1024). A call that finds every
    /// connection of its instance full fails at once with
    /// [`VspError::TooManyInFlight`](crate::VspError::TooManyInFlight).
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

    /// The deadline of each attempt of a call (default: none, an attempt may take the whole
    /// call's deadline). With it, an attempt that hears nothing in time is given up and, for an
    /// idempotent call within the retry budget, sent to another instance before the call's own
    /// deadline: Finagle's and Envoy's per-try timeout. The server is told the attempt's
    /// deadline, so it stops the work too.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.config.attempt_timeout = Some(timeout);
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

    /// The largest frame sent or accepted (default 16 MiB, a server's default limit too). A
    /// request above it is refused before sending with
    /// [`VspError::RequestTooLarge`](crate::VspError::RequestTooLarge); a response above it
    /// closes the connection. Servers answer `too_large` rather than send a reply above their own
    /// limit, so keep the two limits equal.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config.limits.max_frame_size = bytes;
        self
    }

    /// Compresses requests to servers that read compressed frames (default: none compressed).
    /// Every connection offers to read zstd on its first requests, whatever this says; a server
    /// of this version answers the offer, Velithon does not and never receives a compressed
    /// frame. See [`Compression`](crate::Compression) for the threshold and level.
    pub fn compression(mut self, compression: crate::Compression) -> Self {
        self.config.limits.compression = Some(compression);
        self
    }

    /// How connections are dialed (default [`DefaultConnector`]: by the address's kind, TCP,
    /// Unix socket or in-memory).
    pub fn connector(mut self, connector: impl Connector) -> Self {
        self.connector = Arc::new(connector);
        self
    }

    /// Keepalive pings (default on: 250 ms, 30 s, 750 ms). A connection with calls in flight that
    /// receives nothing for `busy` is pinged (a `health` call on it; any answer, an error too,
    /// shows the peer is alive), and one without calls after `idle`; a ping not answered within
    /// `timeout` closes the connection (its calls fail at once, and idempotent ones are retried
    /// elsewhere) and ejects the instance. So a frozen peer (a stopped process whose kernel still
    /// accepts bytes) is found in about `busy + timeout`, not after every call's deadline. A ping
    /// never keeps an idle connection from closing at [`idle_timeout`](Self::idle_timeout).
    ///
    /// A server whose handlers hold its connection's reader for longer than `timeout` (a
    /// CPU-bound handler run inline; put those on [`WorkerType::Multicore`](crate::WorkerType))
    /// looks frozen: raise `timeout` for it, or turn pings off with
    /// [`no_keepalive`](Self::no_keepalive).
    pub fn keepalive(mut self, busy: Duration, idle: Duration, timeout: Duration) -> Self {
        self.config.keepalive = Some(super::probe::Keepalive {
            busy: busy.max(Duration::from_millis(1)),
            idle: idle.max(Duration::from_millis(1)),
            timeout: timeout.max(Duration::from_millis(1)),
        });
        self
    }

    /// No keepalive pings: a frozen peer is found only by the calls' deadlines.
    pub fn no_keepalive(mut self) -> Self {
        self.config.keepalive = None;
        self
    }

    /// Run-time per-endpoint policies (timeouts, attempts, idempotence, hedging): see
    /// [`Policies`] for the format and the precedence. Replace them later with
    /// [`VspClient::set_policies`].
    pub fn policies(mut self, policies: Policies) -> Self {
        self.policies = policies;
        self
    }

    /// Builds the client. Connections open on first use.
    pub fn build(self) -> VspClient {
        let config = self.config;
        let client = VspClient {
            timeout: config.timeout,
            metadata: (!self.metadata.is_empty()).then(|| Arc::new(self.metadata)),
            inner: Arc::new(ClientInner {
                interceptor: self.interceptor,
                mesh: self.mesh,
                pools: Pools::new(config.limits, self.connector),
                budget: RetryBudget::new(config.retry_ratio, config.retry_reserve),
                counters: Default::default(),
                background: AtomicBool::new(false),
                policies: arc_swap::ArcSwapOption::new(
                    (!self.policies.is_empty()).then(|| Arc::new(self.policies)),
                ),
                _keep_alive: self.keep_alive,
                config,
            }),
        };
        // Probes belong to the mesh (they outlive this client); it dials as this client does.
        client.inner.mesh.offer_prober(client.inner.prober());
        client
    }
}
