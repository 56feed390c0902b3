//! OpenTelemetry export (feature `opentelemetry`): with a `tracing-opentelemetry` layer
//! installed, VSP's spans export through the SDK (into its in-memory exporter here) with their
//! kinds, names and semantic-convention attributes, one trace across services, and the server
//! span's remote parent set to the calling attempt.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{SpanKind, Status, TraceId, TracerProvider as _};
use opentelemetry::Value as OtelValue;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::{json, Value};
use tracing_subscriber::layer::SubscriberExt;
use vsp::{ServiceInfo, ServiceMesh, VspClient, VspError, VspManager};

/// The process's exporter, behind the global subscriber (installed once).
fn exporter() -> &'static (InMemorySpanExporter, SdkTracerProvider) {
    static EXPORT: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    EXPORT.get_or_init(|| {
        // What an application writes: a tracer provider, and the layer that feeds it.
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("vsp-tests"));
        let subscriber = tracing_subscriber::registry()
            .with(layer)
            .with(tracing_subscriber::filter::LevelFilter::INFO);
        tracing::subscriber::set_global_default(subscriber).unwrap();
        (exporter, provider)
    })
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| match &kv.value {
            OtelValue::String(s) => s.as_str().to_owned(),
            other => other.to_string(),
        })
}

fn client_of(service: &str, port: u16) -> VspClient {
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new(service, "127.0.0.1", port))
        .unwrap();
    VspClient::builder(mesh).build()
}

/// Waits for `n` exported spans named `name`.
async fn exported(name: &str, n: usize) -> Vec<SpanData> {
    let (exporter, provider) = exporter();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        provider.force_flush().unwrap();
        let spans: Vec<SpanData> = exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|span| span.name == name)
            .collect();
        if spans.len() >= n {
            return spans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {n} exported span(s) named {name}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_export_as_one_trace_with_remote_parents_across_two_services() {
    exporter();
    let back = VspManager::builder("otel-back").build();
    back.endpoint("lookup", |_: Value| async move {
        tracing::info!("inside the handler");
        Ok::<_, VspError>(json!({"found": true}))
    })
    .unwrap();
    let back_addr = back.start_server("127.0.0.1", 0).await.unwrap();
    let to_back = client_of("otel-back", back_addr.port());
    let front = VspManager::builder("otel-front").build();
    front
        .endpoint("relay", move |_: Value| {
            let to_back = to_back.clone();
            async move { to_back.call("otel-back", "lookup", json!({})).await }
        })
        .unwrap();
    let front_addr = front.start_server("127.0.0.1", 0).await.unwrap();

    let answer = client_of("otel-front", front_addr.port())
        .call("otel-front", "relay", json!({}))
        .await
        .unwrap();
    assert_eq!(answer["found"], true);

    // Six spans per hop pair: client + attempt + server, for each of the two calls.
    let relays = exported("otel-front/relay", 3).await;
    let lookups = exported("otel-back/lookup", 3).await;
    let trace_id: TraceId = relays[0].span_context.trace_id();
    let by_kind = |spans: &[SpanData], kind: SpanKind, remote: bool| -> SpanData {
        spans
            .iter()
            .find(|s| s.span_kind == kind && s.parent_span_is_remote == remote)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind:?} span (remote parent: {remote}) in {spans:#?}"))
    };
    let front_server = by_kind(&relays, SpanKind::Server, true);
    let back_server = by_kind(&lookups, SpanKind::Server, true);
    for span in relays.iter().chain(&lookups) {
        assert_eq!(
            span.span_context.trace_id(),
            trace_id,
            "one trace: {span:#?}"
        );
        assert_eq!(attribute(span, "rpc.system.name").as_deref(), Some("vsp"));
        // The plain fields say what the exporter says.
        assert_eq!(
            attribute(span, "trace_id"),
            Some(span.span_context.trace_id().to_string())
        );
        assert_eq!(
            attribute(span, "span_id"),
            Some(span.span_context.span_id().to_string())
        );
        assert!(matches!(span.status, Status::Unset), "{span:#?}");
    }
    // Each server span's remote parent is an attempt (a client span) of the caller.
    for (server, spans) in [(&front_server, &relays), (&back_server, &lookups)] {
        let attempt = spans
            .iter()
            .find(|s| s.span_context.span_id() == server.parent_span_id)
            .unwrap_or_else(|| panic!("the parent of {server:#?} was not exported"));
        assert_eq!(attempt.span_kind, SpanKind::Client);
        assert_eq!(attribute(attempt, "vsp.attempt").as_deref(), Some("1"));
        let call = spans
            .iter()
            .find(|s| s.span_context.span_id() == attempt.parent_span_id)
            .expect("the attempt's call span");
        assert_eq!(call.span_kind, SpanKind::Client);
    }
    // The call to otel-back was made inside otel-front's server span.
    let back_call = lookups
        .iter()
        .find(|s| s.span_kind == SpanKind::Client && attribute(s, "vsp.attempt").is_none())
        .unwrap();
    assert_eq!(
        back_call.parent_span_id,
        front_server.span_context.span_id()
    );
    // The handler's event is an event of its server span.
    assert!(
        back_server
            .events
            .iter()
            .any(|event| event.name == "inside the handler"),
        "{back_server:#?}"
    );
    front.shutdown().await.unwrap();
    back.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_exports_an_error_status() {
    exporter();
    let manager = VspManager::builder("otel-failing").build();
    manager
        .endpoint(
            "fail",
            |_: Value| async move { Err::<Value, _>("no stock") },
        )
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let err = client_of("otel-failing", addr.port())
        .call("otel-failing", "fail", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "handler");
    let spans = exported("otel-failing/fail", 3).await;
    for span in &spans {
        assert!(matches!(span.status, Status::Error { .. }), "{span:#?}");
        assert_eq!(attribute(span, "error.type").as_deref(), Some("handler"));
    }
    manager.shutdown().await.unwrap();
}
