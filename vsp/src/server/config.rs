//! A server's settings and their defaults (each stated in its builder setter's doc too).

use std::time::Duration;

use super::WorkerType;

/// The default bound on graceful shutdown's wait for running calls.
pub(crate) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long shutdown waits for connections to close once it has closed them.
pub(crate) const CONNECTION_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    pub(crate) max_frame_size: usize,
    pub(super) drain_timeout: Duration,
    pub(super) worker_type: WorkerType,
    pub(super) stats: bool,
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
    /// The items of a caller's stream granted up front, and the most held unread.
    pub(crate) client_stream_window: u32,
    pub(crate) write_timeout: Duration,
    /// How frames to a peer that reads compressed ones are compressed (`None`: never).
    pub(crate) compression: Option<crate::Compression>,
}

/// The default bound on receiving one request frame once its first bytes arrived.
pub(crate) const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// The default bound on a new connection's setup (its TLS handshake).
pub(crate) const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The default time after which a server closes a connection with no request in flight.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The default bound on requests being handled at once, over all connections.
pub(crate) const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 10_000;
/// The default bound on requests being handled at once for one connection.
pub(crate) const DEFAULT_MAX_REQUESTS_PER_CONNECTION: usize = 1_024;
/// The default bound on open connections.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// The default bound on open connections from one peer IP address.
pub(crate) const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 1_024;
/// The default budget of large request bytes being handled, over all connections.
pub(crate) const DEFAULT_MAX_REQUEST_BYTES: usize = 512 * 1024 * 1024;
/// The default budget of large request bytes being handled for one connection.
pub(crate) const DEFAULT_MAX_REQUEST_BYTES_PER_CONNECTION: usize = 64 * 1024 * 1024;
/// The default bound on the stream window and credit a caller may ask for.
pub(crate) const DEFAULT_MAX_STREAM_WINDOW: u32 = 4096;
/// The default write-progress deadline.
pub(crate) const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a draining server keeps connections open after telling clients, at least: requests
/// already on their way get a `shutting_down` answer instead of a closed connection.
pub(crate) const DRAIN_GRACE: Duration = Duration::from_millis(100);
