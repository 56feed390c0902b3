//! The one error type of VSP, and the error codes that travel on the wire.
//!
//! Every variant carries what a caller needs to act on it: which service, which instance, which
//! endpoint, which limit. Errors that a remote peer reported keep its code and message apart from
//! errors that happened locally (connect, timeout, decode), so a caller can tell "the service said
//! no" from "we never reached it".

use std::fmt;
use std::io;
use std::time::Duration;

/// The error of every fallible VSP operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VspError {
    /// The mesh knows no instance of this service.
    #[error("no instance of service `{service}` is registered")]
    NoInstances {
        /// The service that was called.
        service: String,
    },

    /// Instances are registered, but every one of them is marked unhealthy.
    #[error(
        "service `{service}` has {instances} instance(s), all unhealthy{}",
        last_failure.as_deref().map(|cause| format!("; the last failure: {cause}")).unwrap_or_default()
    )]
    NoHealthyInstances {
        /// The service that was called.
        service: String,
        /// How many instances are registered.
        instances: usize,
        /// The last transport failure among them (what ejected them), if one was seen.
        last_failure: Option<String>,
    },

    /// Opening a connection to an instance failed.
    #[error("cannot connect to {instance} (service `{service}`): {source}")]
    Connect {
        /// The service that was called.
        service: String,
        /// The instance, as `host:port`.
        instance: String,
        /// Why the connect failed.
        #[source]
        source: io::Error,
    },

    /// Opening a connection took longer than the connect timeout.
    #[error("connecting to {instance} (service `{service}`) timed out after {after:?}")]
    ConnectTimeout {
        /// The service that was called.
        service: String,
        /// The instance, as `host:port`.
        instance: String,
        /// The bound that was exceeded.
        after: Duration,
    },

    /// Every connection to the instance already carries its limit of calls in flight, and no
    /// more connections may be opened.
    #[error(
        "{instance} (service `{service}`) already has {limit} calls in flight on every connection"
    )]
    TooManyInFlight {
        /// The service that was called.
        service: String,
        /// The instance, as `host:port`.
        instance: String,
        /// The limit per connection.
        limit: usize,
    },

    /// The connection carrying the call broke before its response arrived.
    #[error("connection to {instance} closed while calling `{service}.{endpoint}`: {reason}")]
    ConnectionClosed {
        /// The service that was called.
        service: String,
        /// The endpoint that was called.
        endpoint: String,
        /// The instance, as `host:port`.
        instance: String,
        /// What closed it (peer closed, I/O error, protocol error).
        reason: String,
    },

    /// No response arrived before the call's deadline. The call's slot is freed and a late
    /// response is dropped.
    #[error("call to `{service}.{endpoint}` timed out after {after:?}")]
    Timeout {
        /// The service that was called.
        service: String,
        /// The endpoint that was called.
        endpoint: String,
        /// The deadline that passed.
        after: Duration,
    },

    /// The remote service answered with an error.
    #[error("`{service}.{endpoint}` failed remotely ({code}): {message}")]
    Remote {
        /// The service that was called.
        service: String,
        /// The endpoint that was called.
        endpoint: String,
        /// The error code from the response header (`Unspecified` for peers that send none).
        code: ErrorCode,
        /// The message from the response body's `error` key.
        message: String,
    },

    /// The encoded request is larger than the largest frame the client sends (its
    /// `max_frame_size`, the peer's limit by default): it was not sent.
    #[error("the request to `{service}.{endpoint}` is {len} bytes, above the limit of {max}")]
    RequestTooLarge {
        /// The service that was called.
        service: String,
        /// The endpoint that was called.
        endpoint: String,
        /// The encoded request's size.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// The request body could not be serialized.
    #[error("cannot encode the request to `{service}.{endpoint}`: {source}")]
    Encode {
        /// The service that was called.
        service: String,
        /// The endpoint that was called.
        endpoint: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },

    /// The response body did not deserialize into the expected type.
    #[error("cannot decode the response of `{service}.{endpoint}`: {source}")]
    Decode {
        /// The service that was called.
        service: String,
        /// The endpoint that was called.
        endpoint: String,
        /// The deserializer's error.
        #[source]
        source: serde_json::Error,
    },

    /// A frame broke the wire protocol (bad length, not JSON, wrong shape).
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),

    /// An endpoint name was registered twice on one manager (`health` is built in).
    #[error("endpoint `{endpoint}` is already registered on service `{service}`")]
    DuplicateEndpoint {
        /// The manager's service name.
        service: String,
        /// The endpoint name.
        endpoint: String,
    },

    /// An instance was registered with invalid data (an empty name, a bad weight).
    #[error("invalid instance {instance} of service `{service}`: {reason}")]
    InvalidInstance {
        /// The service name.
        service: String,
        /// The instance, as `host:port`.
        instance: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A discovery backend (mDNS, Consul) failed; the reason says which and why.
    #[error("discovery ({backend}) failed: {reason}")]
    Discovery {
        /// `mdns`, `consul`, ...
        backend: &'static str,
        /// What went wrong, with its context.
        reason: String,
    },

    /// The server could not bind its listening socket.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why binding failed.
        #[source]
        source: io::Error,
    },

    /// The worker threads of a `Multicore` manager could not be started.
    #[error("cannot start {workers} worker thread(s): {source}")]
    WorkerPool {
        /// The threads asked for.
        workers: usize,
        /// Why they could not start.
        #[source]
        source: io::Error,
    },

    /// `start_server` was called on a manager that is already serving or has shut down.
    #[error("service `{service}` is already started or shut down")]
    AlreadyStarted {
        /// The manager's service name.
        service: String,
    },

    /// Graceful shutdown gave up waiting: these calls were still running at the drain timeout
    /// and were aborted.
    #[error("service `{service}` aborted {in_flight} call(s) still running after the drain timeout of {after:?}")]
    DrainTimeout {
        /// The manager's service name.
        service: String,
        /// Calls that were aborted.
        in_flight: usize,
        /// The drain timeout.
        after: Duration,
    },

    /// A configuration value (client [`Policies`](crate::Policies)) is malformed; the message
    /// names the place and the field.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

impl VspError {
    /// The remote error code, when the remote service reported the error.
    pub fn remote_code(&self) -> Option<&ErrorCode> {
        match self {
            VspError::Remote { code, .. } => Some(code),
            _ => None,
        }
    }

    /// A short, stable name for what went wrong: the remote error code of a
    /// [`Remote`](VspError::Remote) error (`not_found`, `handler`, ...; `remote` for a peer that
    /// sent none), else the variant in snake case (`timeout`, `connect`, `no_instances`, ...).
    /// The `error.type` of VSP's spans and the `code` label of the client's error metrics.
    pub fn error_type(&self) -> &str {
        match self {
            VspError::Remote { code, .. } => match code.as_str() {
                "" => "remote",
                code => code,
            },
            VspError::NoInstances { .. } => "no_instances",
            VspError::NoHealthyInstances { .. } => "no_healthy_instances",
            VspError::Connect { .. } => "connect",
            VspError::ConnectTimeout { .. } => "connect_timeout",
            VspError::TooManyInFlight { .. } => "too_many_in_flight",
            VspError::ConnectionClosed { .. } => "connection_closed",
            VspError::Timeout { .. } => "timeout",
            VspError::RequestTooLarge { .. } => "request_too_large",
            VspError::Encode { .. } => "encode",
            VspError::Decode { .. } => "decode",
            VspError::Protocol(_) => "protocol",
            VspError::DuplicateEndpoint { .. } => "duplicate_endpoint",
            VspError::InvalidInstance { .. } => "invalid_instance",
            VspError::Discovery { .. } => "discovery",
            VspError::Bind { .. } => "bind",
            VspError::WorkerPool { .. } => "worker_pool",
            VspError::AlreadyStarted { .. } => "already_started",
            VspError::DrainTimeout { .. } => "drain_timeout",
            VspError::InvalidConfig(_) => "invalid_config",
        }
    }
}

/// A frame that breaks the wire protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The length prefix announced more bytes than the configured maximum. Nothing of that size
    /// is allocated; the connection is closed.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The frame is not a JSON envelope `{"header":{...},"body":...}`.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// The error codes carried in a response header's `error_code` key (a VSP extension that
/// Velithon peers ignore; they read only the body's `error` message).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// No endpoint of that name.
    NotFound,
    /// The body is not an object, or a field is missing or of the wrong type.
    BadRequest,
    /// The handler returned an error or panicked.
    Handler,
    /// The call's deadline passed on the server.
    Timeout,
    /// The server refused the call for lack of capacity.
    Overloaded,
    /// The server is draining and takes no new calls.
    ShuttingDown,
    /// The request frame broke the wire protocol.
    Protocol,
    /// The response would have been larger than the largest frame allowed; it was not sent.
    TooLarge,
    /// The server's auth hook (`vsp::server::AuthHook`) found no valid credentials.
    Unauthenticated,
    /// The server's auth hook knows the caller, who may not call this endpoint.
    PermissionDenied,
    /// The call asked for what the endpoint does not do: a stream of a unary endpoint, or a
    /// single answer from a streaming one.
    NotSupported,
    /// The peer sent no code (Velithon's Python VSP), or one this version does not know.
    Unspecified(String),
}

impl ErrorCode {
    /// Every code this version sends, in a stable order (used for per-code counters).
    pub const KNOWN: [ErrorCode; 11] = [
        ErrorCode::NotFound,
        ErrorCode::BadRequest,
        ErrorCode::Handler,
        ErrorCode::Timeout,
        ErrorCode::Overloaded,
        ErrorCode::ShuttingDown,
        ErrorCode::Protocol,
        ErrorCode::TooLarge,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::NotSupported,
    ];

    /// The code as written on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Handler => "handler",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Protocol => "protocol",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::NotSupported => "not_supported",
            ErrorCode::Unspecified(code) => code,
        }
    }

    /// Parses a wire code; an unknown one is kept as [`ErrorCode::Unspecified`].
    pub fn parse(code: &str) -> ErrorCode {
        match code {
            "not_found" => ErrorCode::NotFound,
            "bad_request" => ErrorCode::BadRequest,
            "handler" => ErrorCode::Handler,
            "timeout" => ErrorCode::Timeout,
            "overloaded" => ErrorCode::Overloaded,
            "shutting_down" => ErrorCode::ShuttingDown,
            "protocol" => ErrorCode::Protocol,
            "too_large" => ErrorCode::TooLarge,
            "unauthenticated" => ErrorCode::Unauthenticated,
            "permission_denied" => ErrorCode::PermissionDenied,
            "not_supported" => ErrorCode::NotSupported,
            other => ErrorCode::Unspecified(other.to_owned()),
        }
    }

    pub(crate) fn index(&self) -> Option<usize> {
        Self::KNOWN.iter().position(|known| known == self)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Unspecified(code) if code.is_empty() => f.write_str("unspecified"),
            code => f.write_str(code.as_str()),
        }
    }
}

/// The error of a generated client's call to a service method that returns `Result<T, E>`:
/// either the service's own error, typed, or what kept the call from completing.
///
/// ```
/// use vsp::{CallError, VspError};
///
/// fn describe(err: CallError<String>) -> String {
///     match err {
///         CallError::Service(reason) => format!("the service refused: {reason}"),
///         CallError::Vsp(VspError::Timeout { .. }) => "too slow, try later".to_owned(),
///         CallError::Vsp(other) => format!("the call failed: {other}"),
///     }
/// }
/// assert_eq!(describe(CallError::Service("no such user".into())), "the service refused: no such user");
/// ```
#[derive(Debug)]
pub enum CallError<E> {
    /// The service's handler returned this error.
    Service(E),
    /// The call did not complete, or failed outside the handler (see [`VspError`]).
    Vsp(VspError),
}

impl<E> From<VspError> for CallError<E> {
    fn from(err: VspError) -> Self {
        CallError::Vsp(err)
    }
}

/// The service's error by its own `Display`; a transport or protocol failure by `VspError`'s.
impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Service(err) => fmt::Display::fmt(err, f),
            CallError::Vsp(err) => fmt::Display::fmt(err, f),
        }
    }
}

/// An error (for `?` into `Box<dyn Error>`, `anyhow` and the like) when `E` is displayable.
impl<E: fmt::Debug + fmt::Display> std::error::Error for CallError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::Service(_) => None,
            CallError::Vsp(err) => Some(err),
        }
    }
}

impl<E> CallError<E> {
    /// The service's error, if that is what this is.
    pub fn service_error(&self) -> Option<&E> {
        match self {
            CallError::Service(err) => Some(err),
            CallError::Vsp(_) => None,
        }
    }
}

/// The HTTP status the gateway answers a service's typed error with, as axum's `IntoResponse`
/// gives a handler's error its status.
///
/// A typed error (the `E` of a `#[vsp::service]` method returning `Result<T, E>`) is the caller's
/// outcome, not a server fault: through the HTTP gateway (`vsp::gateway`) it is answered `422
/// Unprocessable Content` unless its type implements this trait. The status travels with the
/// error (an optional `http_status` header key, which Velithon ignores) and must be a 4xx one:
/// anything else is answered 422 too. A handler's panic, or a failure of the server, stays 500.
///
/// ```
/// #[derive(Debug, serde::Serialize, serde::Deserialize)]
/// enum OrderError {
///     OutOfStock { sku: String },
///     UnknownCustomer,
///     Rejected { reason: String },
/// }
///
/// impl vsp::HttpStatus for OrderError {
///     fn http_status(&self) -> u16 {
///         match self {
///             OrderError::OutOfStock { .. } => 409,
///             OrderError::UnknownCustomer => 404,
///             OrderError::Rejected { .. } => 422,
///         }
///     }
/// }
/// # use vsp::HttpStatus as _;
/// assert_eq!(OrderError::UnknownCustomer.http_status(), 404);
/// ```
pub trait HttpStatus {
    /// This error's HTTP status, from 400 to 499.
    fn http_status(&self) -> u16;
}

/// The status of a typed error without [`HttpStatus`], or with one outside the 4xx range.
#[cfg(feature = "gateway")]
pub(crate) const DEFAULT_SERVICE_ERROR_STATUS: u16 = 422;

/// `status` if it is a 4xx one, the statuses a typed error may have.
pub(crate) fn client_error_status(status: u16) -> Option<u16> {
    (400..=499).contains(&status).then_some(status)
}
