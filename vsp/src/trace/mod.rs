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
    doc = include_str!("../docs/observability.md")
)]

mod context;
#[cfg(feature = "opentelemetry")]
mod otel;
mod spans;

pub use context::{InvalidTraceParent, SpanId, TraceContext, TraceId};
pub(crate) use spans::*;

/// The metadata key of the W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// The metadata key of the W3C `tracestate`.
pub const TRACESTATE: &str = "tracestate";

#[cfg(test)]
mod tests {
    use super::context::random_u64;
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
