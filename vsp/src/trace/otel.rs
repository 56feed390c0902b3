//! With feature `opentelemetry`: the ids of a `tracing-opentelemetry` layer, and remote
//! parents set on the spans it exports.

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
