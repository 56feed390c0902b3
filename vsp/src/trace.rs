//! Distributed tracing: the W3C trace context every call carries, and the spans VSP opens.
//!
//! Every call gets a `tracing` span on each side, named and filled in per the OpenTelemetry RPC
//! semantic conventions: `vsp.client` (the logical call, `otel.kind = "client"`) with one
//! `vsp.attempt` child per attempt (the instance tried, the attempt number, the request id), and
//! `vsp.server` around each handled request (`otel.kind = "server"`), which the handler's future
//! runs inside, so the handler's own `tracing` events land in it. Each span also carries
//! `trace_id`, `span_id` and (when it has one) `parent_span_id` as plain fields, so a log line
//! names its trace without any OpenTelemetry set up.
//!
//! On the wire, a request's header metadata (`meta`) carries the W3C `traceparent` of the attempt
//! span (and `tracestate` when there is one); the server's span becomes its child, and a call a
//! handler makes continues the same trace (the server's [`Context`](crate::Context) carries it).
//! A `traceparent` the caller puts in a call's own metadata (an HTTP gateway forwarding its
//! request's header) is taken as the parent of the call's span. Velithon ignores the field.
//!
//! Why it costs nothing when unobserved: the spans are at `INFO`; when no subscriber wants them,
//! no id is made and nothing is written, except that a call made inside a handler whose caller
//! sent a trace passes that trace on, so one uninstrumented hop does not break a trace in two.
//!
//! With the cargo feature `opentelemetry` and a `tracing-opentelemetry` layer installed, the ids
//! are the layer's own (so the fields, the wire and the exported spans agree), and a server span
//! is exported with its remote parent set.
#![cfg_attr(
    any(not(doctest), feature = "opentelemetry"),
    doc = include_str!("docs/observability.md")
)]

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use tracing::field::{display, Empty};
use tracing::Span;

/// The metadata key of the W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// The metadata key of the W3C `tracestate`.
pub const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` passed on (the W3C limit on what a vendor must propagate).
const MAX_TRACESTATE: usize = 512;

/// A trace's id: 16 bytes, never all zero; displayed as 32 lowercase hex digits.
///
/// Kept as two `u64`s (high, low) rather than a `u128`, so it does not raise the alignment of
/// everything that carries it (a handler's context, a call's future).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId([u64; 2]);

/// A span's id: 8 bytes, never all zero; displayed as 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(u64);

impl TraceId {
    /// The id as a number.
    pub fn to_u128(self) -> u128 {
        u128::from(self.0[0]) << 64 | u128::from(self.0[1])
    }

    fn from_u128(id: u128) -> Self {
        TraceId([(id >> 64) as u64, id as u64])
    }
}

impl SpanId {
    /// The id as a number.
    pub fn to_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.to_u128())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Where a span sits in a distributed trace: the W3C trace context (`traceparent` and
/// `tracestate`).
///
/// Inside a handler, [`Context::trace`](crate::Context::trace) is the server span's; calls made
/// there continue it. To start a trace by hand (the `vsp` CLI does), put
/// [`TraceContext::new_root`]'s [`traceparent`](TraceContext::traceparent) in a call's metadata.
///
/// ```
/// use vsp::trace::TraceContext;
///
/// let parent = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")?;
/// assert_eq!(parent.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert!(parent.is_sampled());
/// let child = parent.child();
/// assert_eq!(child.trace_id(), parent.trace_id());
/// assert_ne!(child.span_id(), parent.span_id());
/// assert!(TraceContext::parse("00-not-a-trace").is_err());
/// # Ok::<(), vsp::trace::InvalidTraceParent>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: TraceId,
    span_id: SpanId,
    flags: u8,
    tracestate: Option<Arc<str>>,
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.write_traceparent(&mut [0; TRACEPARENT_LEN]))?;
        if let Some(state) = &self.tracestate {
            write!(f, " ({state})")?;
        }
        Ok(())
    }
}

/// Why a `traceparent` was not taken: it does not follow the W3C format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent: {0}")]
pub struct InvalidTraceParent(&'static str);

const TRACEPARENT_LEN: usize = 55;
const SAMPLED: u8 = 1;

impl TraceContext {
    /// A new trace: a fresh random trace id and span id, sampled.
    pub fn new_root() -> Self {
        TraceContext {
            trace_id: TraceId::from_u128(random_u128()),
            span_id: SpanId(random_u64()),
            flags: SAMPLED,
            tracestate: None,
        }
    }

    /// Parses a W3C `traceparent` (`version-traceid-parentid-flags`, lowercase hex).
    ///
    /// # Errors
    /// [`InvalidTraceParent`] naming the part that is wrong (all-zero ids, version `ff`, upper
    /// case, a bad length).
    pub fn parse(traceparent: &str) -> Result<Self, InvalidTraceParent> {
        let text = traceparent.trim_matches([' ', '\t']);
        let bytes = text.as_bytes();
        if bytes.len() < TRACEPARENT_LEN {
            return Err(InvalidTraceParent("shorter than 55 characters"));
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return Err(InvalidTraceParent("not four dash-separated fields"));
        }
        let version = hex(&bytes[0..2]).ok_or(InvalidTraceParent("version is not hex"))?;
        match version {
            0xff => return Err(InvalidTraceParent("version ff is invalid")),
            // Version 00 is exactly 55 characters; later versions may append `-...`.
            0 if bytes.len() != TRACEPARENT_LEN => {
                return Err(InvalidTraceParent("version 00 with trailing characters"))
            }
            _ if bytes.len() > TRACEPARENT_LEN && bytes[TRACEPARENT_LEN] != b'-' => {
                return Err(InvalidTraceParent("trailing characters"))
            }
            _ => {}
        }
        let trace_id = hex(&bytes[3..35]).ok_or(InvalidTraceParent("trace id is not hex"))?;
        let span_id = hex(&bytes[36..52]).ok_or(InvalidTraceParent("parent id is not hex"))?;
        let flags = hex(&bytes[53..55]).ok_or(InvalidTraceParent("flags are not hex"))?;
        if trace_id == 0 {
            return Err(InvalidTraceParent("trace id is all zeros"));
        }
        if span_id == 0 {
            return Err(InvalidTraceParent("parent id is all zeros"));
        }
        Ok(TraceContext {
            trace_id: TraceId::from_u128(trace_id),
            span_id: SpanId(span_id as u64),
            flags: flags as u8,
            tracestate: None,
        })
    }

    /// This context with `tracestate` (the vendor list that travels with it). A value longer
    /// than 512 bytes, or with characters outside printable ASCII, is dropped.
    pub fn with_tracestate(mut self, tracestate: &str) -> Self {
        let usable = !tracestate.is_empty()
            && tracestate.len() <= MAX_TRACESTATE
            && tracestate.bytes().all(|b| (0x20..0x7f).contains(&b));
        self.tracestate = usable.then(|| Arc::from(tracestate));
        self
    }

    /// A child of this span: the same trace (and flags and state), a new span id.
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: SpanId(random_u64()),
            ..self.clone()
        }
    }

    /// The trace this span belongs to.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// This span's id (the parent id a child sees).
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the trace's origin chose to record it.
    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The `tracestate` passed along, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The W3C `traceparent` of this span (version 00).
    pub fn traceparent(&self) -> String {
        self.write_traceparent(&mut [0; TRACEPARENT_LEN]).to_owned()
    }

    /// Writes the `traceparent` into `buf` without allocating.
    pub(crate) fn write_traceparent<'b>(&self, buf: &'b mut [u8; TRACEPARENT_LEN]) -> &'b str {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut put = |at: usize, value: u128, digits: usize| {
            for i in 0..digits {
                let nibble = (value >> (4 * (digits - 1 - i))) & 0xf;
                buf[at + i] = HEX[nibble as usize];
            }
        };
        put(0, 0, 2);
        put(3, self.trace_id.to_u128(), 32);
        put(36, u128::from(self.span_id.0), 16);
        put(53, u128::from(self.flags), 2);
        buf[2] = b'-';
        buf[35] = b'-';
        buf[52] = b'-';
        std::str::from_utf8(buf).unwrap_or("")
    }
}

/// Lowercase hex to a number; `None` for anything else (upper case included, as W3C says).
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |value, &digit| {
        let nibble = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => return None,
        };
        Some(value << 4 | u128::from(nibble))
    })
}

/// A random non-zero id. A per-thread xorshift generator seeded from the OS's hash keys: ids
/// must be unique, not secret, and made without a lock.
fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|state| loop {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        let id = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        if id != 0 {
            return id;
        }
    })
}

fn random_u128() -> u128 {
    u128::from(random_u64()) << 64 | u128::from(random_u64())
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    hasher.write_u128(now);
    hasher.finish() | 1
}

/// The trace context of the current tracing span as OpenTelemetry knows it (feature
/// `opentelemetry` with a `tracing-opentelemetry` layer), if valid.
pub(crate) fn current_span_context() -> Option<TraceContext> {
    #[cfg(feature = "opentelemetry")]
    {
        let current = Span::current();
        if !current.is_disabled() {
            return otel::context_of(&current);
        }
    }
    None
}

/// The ids of a new `span` whose parent is `parent` (`None`: a new trace). `remote` says the
/// parent is not `span`'s `tracing` parent (it came off the wire or out of a [`Context`]), so an
/// OpenTelemetry layer must be told. Records `trace_id`, `span_id`, `parent_span_id` on `span`.
pub(crate) fn open(span: &Span, parent: Option<&TraceContext>, remote: bool) -> TraceContext {
    #[cfg(feature = "opentelemetry")]
    let from_layer = {
        if remote {
            if let Some(parent) = parent {
                otel::set_parent(span, parent);
            }
        }
        otel::context_of(span).map(|mut own| {
            if own.tracestate.is_none() {
                own.tracestate = parent.and_then(|parent| parent.tracestate.clone());
            }
            own
        })
    };
    #[cfg(not(feature = "opentelemetry"))]
    let from_layer: Option<TraceContext> = {
        let _ = remote;
        None
    };
    let own = from_layer.unwrap_or_else(|| match parent {
        Some(parent) => parent.child(),
        None => TraceContext::new_root(),
    });
    span.record("trace_id", display(own.trace_id));
    span.record("span_id", display(own.span_id));
    if let Some(parent) = parent {
        span.record("parent_span_id", display(parent.span_id));
    }
    own
}

/// Whether any subscriber was ever installed: until one is, VSP opens no spans at all (not even
/// disabled ones, which `tracing`'s `log` compatibility would still fill in).
#[inline]
pub(crate) fn observed() -> bool {
    tracing::dispatcher::has_been_set()
}

/// Marks `span` failed: `otel.status_code = "ERROR"`, the VSP error code as `error.type` and
/// `rpc.response.status_code`, and the message.
pub(crate) fn record_error(span: &Span, code: &str, message: &dyn fmt::Display) {
    if span.is_disabled() {
        return;
    }
    span.record("otel.status_code", "ERROR");
    span.record("error.type", code);
    span.record("rpc.response.status_code", code);
    span.record("otel.status_description", display(message));
}

/// The span of one call on the client: the logical call, whatever its attempts.
#[inline]
pub(crate) fn client_span(service: &str, endpoint: &str) -> Span {
    if !observed() {
        return Span::none();
    }
    open_client_span(service, endpoint)
}

#[inline(never)]
fn open_client_span(service: &str, endpoint: &str) -> Span {
    tracing::info_span!(
        "vsp.client",
        otel.kind = "client",
        otel.name = %format_args!("{service}/{endpoint}"),
        rpc.system.name = "vsp",
        rpc.method = %format_args!("{service}/{endpoint}"),
        vsp.service = service,
        vsp.endpoint = endpoint,
        vsp.attempts = Empty,
        trace_id = Empty,
        span_id = Empty,
        parent_span_id = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
        error.type = Empty,
        rpc.response.status_code = Empty,
    )
}

/// The span of one attempt of a call, a child of `call`.
pub(crate) fn attempt_span(
    call: &Span,
    service: &str,
    endpoint: &str,
    instance: Endpoint<'_>,
    attempt: usize,
) -> Span {
    if call.is_disabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        parent: call,
        "vsp.attempt",
        otel.kind = "client",
        otel.name = %format_args!("{service}/{endpoint}"),
        rpc.system.name = "vsp",
        rpc.method = %format_args!("{service}/{endpoint}"),
        vsp.service = service,
        vsp.endpoint = endpoint,
        vsp.attempt = attempt,
        vsp.request_id = Empty,
        server.address = %ServerAddress(instance),
        server.port = instance.port,
        trace_id = Empty,
        span_id = Empty,
        parent_span_id = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
        error.type = Empty,
        rpc.response.status_code = Empty,
    );
    span
}

/// Where an instance listens, for `server.address` and `server.port`: a TCP host and port, or
/// (a Unix socket, an in-memory name) the address as text and no port.
#[derive(Clone, Copy)]
pub(crate) struct Endpoint<'a> {
    pub(crate) host: Option<&'a str>,
    pub(crate) port: Option<u16>,
    pub(crate) text: &'a dyn fmt::Display,
}

/// `server.address`: the host of a TCP address, the whole address otherwise.
struct ServerAddress<'a>(Endpoint<'a>);

impl fmt::Display for ServerAddress<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.host {
            Some(host) => f.write_str(host),
            None => self.0.text.fmt(f),
        }
    }
}

/// The span of one request a server handles. Never a `tracing` child of whatever span the
/// connection task is in: its parent is the caller's, off the wire.
pub(crate) fn server_span(
    service: &str,
    endpoint: &str,
    request_id: &str,
    local: Option<Endpoint<'_>>,
    peer: &dyn fmt::Display,
) -> Span {
    if !observed() {
        return Span::none();
    }
    tracing::info_span!(
        parent: None,
        "vsp.server",
        otel.kind = "server",
        otel.name = %format_args!("{service}/{endpoint}"),
        rpc.system.name = "vsp",
        rpc.method = %format_args!("{service}/{endpoint}"),
        vsp.service = service,
        vsp.endpoint = endpoint,
        vsp.request_id = request_id,
        server.address = local.map(|local| display(ServerAddress(local))),
        server.port = local.and_then(|local| local.port),
        client.address = %peer,
        trace_id = Empty,
        span_id = Empty,
        parent_span_id = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
        error.type = Empty,
        rpc.response.status_code = Empty,
    )
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use opentelemetry::trace::{
        SpanContext, TraceContextExt, TraceFlags, TraceId as OtelTraceId, TraceState,
    };
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::{SpanId, TraceContext, TraceId};

    /// Makes `parent` the OpenTelemetry parent of `span` (before the span is started).
    pub(super) fn set_parent(span: &Span, parent: &TraceContext) {
        let state = parent
            .tracestate()
            .and_then(|state| state.parse::<TraceState>().ok())
            .unwrap_or_default();
        let remote = SpanContext::new(
            OtelTraceId::from(parent.trace_id.to_u128()),
            opentelemetry::trace::SpanId::from(parent.span_id.0),
            TraceFlags::new(parent.flags),
            true,
            state,
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(remote);
        // Fails only without a layer or once started: the ids are then VSP's own.
        let _ = span.set_parent(cx);
    }

    /// `span`'s context as the layer made it; `None` without a layer.
    pub(super) fn context_of(span: &Span) -> Option<TraceContext> {
        let cx = span.context();
        let otel_span = cx.span();
        let context = otel_span.span_context();
        if !context.is_valid() {
            return None;
        }
        let state = context.trace_state().header();
        let own = TraceContext {
            trace_id: TraceId::from_u128(u128::from_be_bytes(context.trace_id().to_bytes())),
            span_id: SpanId(u64::from_be_bytes(context.span_id().to_bytes())),
            flags: context.trace_flags().to_u8(),
            tracestate: None,
        };
        Some(if state.is_empty() {
            own
        } else {
            own.with_tracestate(&state)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceContext::parse(text).unwrap();
        assert_eq!(parsed.traceparent(), text);
        assert_eq!(parsed.span_id().to_string(), "00f067aa0ba902b7");
        let root = TraceContext::new_root();
        assert_eq!(TraceContext::parse(&root.traceparent()).unwrap(), root);
    }

    #[test]
    fn malformed_traceparents_are_refused_with_a_reason() {
        let cases = [
            ("", "shorter"),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "shorter",
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "trace id",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "all zeros",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "all zeros",
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version ff",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                "trailing",
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
                "dash",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
                "parent id",
            ),
        ];
        for (text, reason) in cases {
            let err = TraceContext::parse(text).expect_err(text);
            assert!(err.to_string().contains(reason), "{text}: {err}");
        }
        // A later version may append fields.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(TraceContext::parse(future).is_ok());
    }

    #[test]
    fn tracestate_is_kept_when_usable() {
        let root = TraceContext::new_root();
        assert_eq!(
            root.clone().with_tracestate("vendor=1").tracestate(),
            Some("vendor=1")
        );
        assert_eq!(
            root.clone().with_tracestate(&"x".repeat(513)).tracestate(),
            None
        );
        assert_eq!(root.with_tracestate("a=\u{1}").tracestate(), None);
    }

    #[test]
    fn ids_are_not_repeated() {
        let ids: std::collections::HashSet<u64> = (0..10_000).map(|_| random_u64()).collect();
        assert_eq!(ids.len(), 10_000);
    }
}
