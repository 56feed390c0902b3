//! The spans VSP opens on each side of a call, and the trace context each one carries.

use std::fmt;

use tracing::field::{display, Empty};
use tracing::Span;

use super::*;

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
    if detailed(span) {
        span.record("span_id", display(own.span_id));
        if let Some(parent) = parent {
            span.record("parent_span_id", display(parent.span_id));
        }
    }
    own
}

/// Whether `span` gets its every field: when an OpenTelemetry layer records it (feature
/// `opentelemetry`; they are its attributes), or when `DEBUG` is on for VSP. At `INFO` a log
/// line carries what an operator reads: `rpc.method`, `trace_id`, the peer, the attempt and
/// the error (the ids of spans and the wire's request id are left out, and, without feature
/// `opentelemetry`, `otel.*`, `rpc.system.name`, `vsp.service` and `vsp.endpoint`).
pub(crate) fn detailed(span: &Span) -> bool {
    if span.is_disabled() {
        return false;
    }
    #[cfg(feature = "opentelemetry")]
    if otel::context_of(span).is_some() {
        return true;
    }
    tracing::enabled!(tracing::Level::DEBUG)
}

/// Records the fields [`detailed`] spans carry beyond the operator's. With feature
/// `opentelemetry` they are recorded on every span (they are its attributes), before anything
/// asks for its OpenTelemetry context: the layer names the span from `otel.name` when it starts
/// it, and a remote parent must be set before that, so nothing here may start it.
fn record_detail(span: &Span, kind: &'static str, service: &str, endpoint: &str) {
    if span.is_disabled() {
        return;
    }
    if !cfg!(feature = "opentelemetry") && !detailed(span) {
        return;
    }
    span.record("otel.kind", kind);
    span.record("otel.name", display(format_args!("{service}/{endpoint}")));
    span.record("rpc.system.name", "vsp");
    span.record("vsp.service", service);
    span.record("vsp.endpoint", endpoint);
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
    let span = tracing::info_span!(
        "vsp.client",
        rpc.method = %format_args!("{service}/{endpoint}"),
        vsp.attempts = Empty,
        otel.kind = Empty,
        otel.name = Empty,
        rpc.system.name = Empty,
        vsp.service = Empty,
        vsp.endpoint = Empty,
        trace_id = Empty,
        span_id = Empty,
        parent_span_id = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
        error.type = Empty,
        rpc.response.status_code = Empty,
    );
    record_detail(&span, "client", service, endpoint);
    span
}

/// The span of one attempt of a call, a child of `call`.
pub(crate) fn attempt_span(
    call: &Span,
    service: &str,
    endpoint: &str,
    instance: Peer<'_>,
    attempt: usize,
) -> Span {
    if call.is_disabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        parent: call,
        "vsp.attempt",
        rpc.method = %format_args!("{service}/{endpoint}"),
        vsp.attempt = attempt,
        server.address = %ServerAddress(instance),
        server.port = instance.port,
        vsp.request_id = Empty,
        otel.kind = Empty,
        otel.name = Empty,
        rpc.system.name = Empty,
        vsp.service = Empty,
        vsp.endpoint = Empty,
        trace_id = Empty,
        span_id = Empty,
        parent_span_id = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
        error.type = Empty,
        rpc.response.status_code = Empty,
    );
    record_detail(&span, "client", service, endpoint);
    span
}

/// Where an instance listens, for `server.address` and `server.port`: a TCP host and port, or
/// (a Unix socket, an in-memory name) the address as text and no port.
#[derive(Clone, Copy)]
pub(crate) struct Peer<'a> {
    pub(crate) host: Option<&'a str>,
    pub(crate) port: Option<u16>,
    pub(crate) text: &'a dyn fmt::Display,
}

/// `server.address`: the host of a TCP address, the whole address otherwise.
struct ServerAddress<'a>(Peer<'a>);

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
    local: Option<Peer<'_>>,
    peer: &dyn fmt::Display,
) -> Span {
    if !observed() {
        return Span::none();
    }
    let span = tracing::info_span!(
        parent: None,
        "vsp.server",
        rpc.method = %format_args!("{service}/{endpoint}"),
        server.address = local.map(|local| display(ServerAddress(local))),
        server.port = local.and_then(|local| local.port),
        client.address = %peer,
        vsp.request_id = Empty,
        otel.kind = Empty,
        otel.name = Empty,
        rpc.system.name = Empty,
        vsp.service = Empty,
        vsp.endpoint = Empty,
        trace_id = Empty,
        span_id = Empty,
        parent_span_id = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
        error.type = Empty,
        rpc.response.status_code = Empty,
    );
    record_detail(&span, "server", service, endpoint);
    // Not `detailed`, which would start the OpenTelemetry span before its remote parent is set.
    if cfg!(feature = "opentelemetry") || tracing::enabled!(tracing::Level::DEBUG) {
        span.record("vsp.request_id", request_id);
    }
    span
}
