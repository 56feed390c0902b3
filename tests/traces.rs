//! Distributed tracing end to end: the spans of each call (client, attempts, server) recorded by a
//! real `tracing` layer, their fields, and the W3C trace context that links them across services.
//!
//! Every test of this binary shares one recorder (the global subscriber), so each uses service
//! names of its own and looks only at their spans.

#[path = "e2e/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{frame, RawPeer};
use serde_json::{json, Value};
use vsp::{ServiceInfo, ServiceMesh, VspClient, VspError, VspManager, WorkerType};
use vsp_test_support::spans::{Recorder, SpanRecord};

const BOUND: Duration = Duration::from_secs(10);

async fn serve(manager: &VspManager) -> SocketAddr {
    manager.start_server("127.0.0.1", 0).await.unwrap()
}

fn client_of(services: &[(&str, SocketAddr)]) -> VspClient {
    let mesh = ServiceMesh::new();
    for (name, addr) in services {
        mesh.register(ServiceInfo::new(*name, "127.0.0.1", addr.port()))
            .unwrap();
    }
    VspClient::builder(mesh).build()
}

fn field<'a>(span: &'a SpanRecord, name: &str) -> &'a str {
    span.field(name)
        .unwrap_or_else(|| panic!("{} has no `{name}`: {:?}", span.name, span.fields))
}

/// The closed span named `name` of `service`'s call, with the `tracing` parent `parent` if given.
fn find<'a>(
    spans: &'a [SpanRecord],
    name: &str,
    service: &str,
    parent: Option<u64>,
) -> Option<&'a SpanRecord> {
    spans.iter().find(|span| {
        span.name == name
            && span.field("vsp.service") == Some(service)
            && span.duration.is_some()
            && parent.is_none_or(|parent| span.parent == Some(parent))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_crosses_three_services_with_correct_parent_links() {
    let recorder = Recorder::global();
    let users = VspManager::builder("chain-users").build();
    users
        .endpoint("get_user", |args: Value| async move {
            tracing::info!("looking the user up");
            Ok::<_, VspError>(json!({"id": args["user_id"], "name": "Ada"}))
        })
        .unwrap();
    let users_addr = serve(&users).await;

    let to_users = client_of(&[("chain-users", users_addr)]);
    let orders = VspManager::builder("chain-orders").build();
    orders
        .endpoint("create_order", move |args: Value| {
            let to_users = to_users.clone();
            async move {
                let user = to_users
                    .call(
                        "chain-users",
                        "get_user",
                        json!({"user_id": args["user_id"]}),
                    )
                    .await?;
                Ok::<_, VspError>(json!({"order": 7, "user": user}))
            }
        })
        .unwrap();
    let orders_addr = serve(&orders).await;

    let to_orders = client_of(&[("chain-orders", orders_addr)]);
    let gateway = VspManager::builder("chain-gateway").build();
    gateway
        .endpoint("checkout", move |args: Value| {
            let to_orders = to_orders.clone();
            async move { to_orders.call("chain-orders", "create_order", args).await }
        })
        .unwrap();
    let gateway_addr = serve(&gateway).await;

    let caller = client_of(&[("chain-gateway", gateway_addr)]);
    let order = caller
        .call("chain-gateway", "checkout", json!({"user_id": "u1"}))
        .await
        .unwrap();
    assert_eq!(order["user"]["name"], "Ada");

    let spans = recorder
        .wait_for("the server span of chain-users to close", BOUND, |spans| {
            find(spans, "vsp.server", "chain-users", None).map(|_| spans.to_vec())
        })
        .await;
    // Walk the chain down from the first call: client -> attempt -> server -> client -> ...
    let mut parent_span: Option<&SpanRecord> = None;
    let mut trace_id: Option<&str> = None;
    for (service, endpoint, port) in [
        ("chain-gateway", "checkout", gateway_addr.port()),
        ("chain-orders", "create_order", orders_addr.port()),
        ("chain-users", "get_user", users_addr.port()),
    ] {
        let call =
            find(&spans, "vsp.client", service, parent_span.map(|p| p.seq)).unwrap_or_else(|| {
                panic!("no client span of {service} under the previous server span")
            });
        let attempt = find(&spans, "vsp.attempt", service, Some(call.seq))
            .unwrap_or_else(|| panic!("no attempt span under the client span of {service}"));
        let server = spans
            .iter()
            .find(|span| {
                span.name == "vsp.server"
                    && span.field("parent_span_id") == attempt.field("span_id")
            })
            .unwrap_or_else(|| panic!("no server span of {service} whose parent is its attempt"));
        let method = format!("{service}/{endpoint}");
        for span in [call, attempt, server] {
            assert_eq!(field(span, "rpc.system.name"), "vsp");
            assert_eq!(field(span, "rpc.method"), method);
            assert_eq!(field(span, "otel.name"), method);
            assert!(span.field("otel.status_code").is_none(), "{span:?}");
            let trace = *trace_id.get_or_insert(field(span, "trace_id"));
            assert_eq!(
                field(span, "trace_id"),
                trace,
                "one trace id across the chain"
            );
        }
        assert_eq!(field(call, "otel.kind"), "client");
        assert_eq!(field(attempt, "otel.kind"), "client");
        assert_eq!(field(server, "otel.kind"), "server");
        assert_eq!(field(attempt, "vsp.attempt"), "1");
        assert_eq!(field(attempt, "server.address"), "127.0.0.1");
        assert_eq!(field(attempt, "server.port"), port.to_string());
        assert_eq!(field(server, "server.port"), port.to_string());
        assert_eq!(field(server, "vsp.service"), service);
        assert_eq!(
            field(attempt, "vsp.request_id"),
            field(server, "vsp.request_id"),
            "the attempt and the server name the same request id"
        );
        assert_eq!(attempt.field("parent_span_id"), call.field("span_id"));
        if let Some(parent) = parent_span {
            assert_eq!(call.field("parent_span_id"), parent.field("span_id"));
        } else {
            assert!(
                call.field("parent_span_id").is_none(),
                "the first call starts the trace"
            );
        }
        parent_span = Some(server);
    }
    // The handler's own event landed in its server span.
    let users_server = parent_span.unwrap();
    let event = recorder
        .events()
        .into_iter()
        .find(|event| event.message == "looking the user up")
        .expect("the handler's event was recorded");
    assert_eq!(event.span, Some(users_server.seq));
    for manager in [gateway, orders, users] {
        manager.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_shows_one_attempt_span_per_instance_under_one_call_span() {
    let recorder = Recorder::global();
    let manager = VspManager::builder("retry-service").build();
    manager
        .endpoint("echo", |args: Value| async move { Ok::<_, VspError>(args) })
        .unwrap();
    let live = serve(&manager).await;
    // A port nobody listens on: connecting is refused, so the call goes to the other instance.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let client = client_of(&[("retry-service", dead), ("retry-service", live)]);
    // Round robin tries the dead instance first in one of the first two calls.
    for i in 0..2 {
        client
            .call("retry-service", "echo", json!({"i": i}))
            .await
            .unwrap();
    }
    let spans = recorder.spans();
    let call = spans
        .iter()
        .find(|span| {
            span.name == "vsp.client"
                && span.field("vsp.service") == Some("retry-service")
                && span.field("vsp.attempts") == Some("2")
        })
        .expect("a call span with two attempts");
    let attempts: Vec<&SpanRecord> = spans
        .iter()
        .filter(|span| span.name == "vsp.attempt" && span.parent == Some(call.seq))
        .collect();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    let (first, second) = (attempts[0], attempts[1]);
    assert_eq!(field(first, "vsp.attempt"), "1");
    assert_eq!(field(first, "server.port"), dead.port().to_string());
    assert_eq!(field(first, "otel.status_code"), "ERROR");
    assert_eq!(field(first, "error.type"), "connect");
    assert_eq!(field(second, "vsp.attempt"), "2");
    assert_eq!(field(second, "server.port"), live.port().to_string());
    assert!(second.field("otel.status_code").is_none());
    // The call succeeded: its last attempt names the instance that answered.
    assert!(call.field("otel.status_code").is_none());
    for attempt in [first, second] {
        assert_eq!(attempt.field("trace_id"), call.field("trace_id"));
        assert_eq!(attempt.field("parent_span_id"), call.field("span_id"));
    }
    let span_id = field(second, "span_id").to_owned();
    recorder
        .wait_for("the server span under the second attempt", BOUND, |spans| {
            spans
                .iter()
                .find(|span| {
                    span.name == "vsp.server"
                        && span.field("parent_span_id") == Some(span_id.as_str())
                })
                .map(|_| ())
        })
        .await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_marks_its_spans_with_the_error_code() {
    let recorder = Recorder::global();
    let manager = VspManager::builder("failing-service").build();
    manager
        .endpoint(
            "fail",
            |_: Value| async move { Err::<Value, _>("out of stock") },
        )
        .unwrap();
    let addr = serve(&manager).await;
    let client = client_of(&[("failing-service", addr)]);
    let err = client
        .call("failing-service", "fail", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "handler");
    assert!(client
        .call("failing-service", "missing", json!({}))
        .await
        .is_err());
    let spans = recorder
        .wait_for("both server spans of failing-service", BOUND, |spans| {
            let closed = spans
                .iter()
                .filter(|s| {
                    s.name == "vsp.server"
                        && s.field("vsp.service") == Some("failing-service")
                        && s.duration.is_some()
                })
                .count();
            (closed == 2).then(|| spans.to_vec())
        })
        .await;
    for (endpoint, code) in [("fail", "handler"), ("missing", "not_found")] {
        for name in ["vsp.client", "vsp.attempt", "vsp.server"] {
            let span = spans
                .iter()
                .find(|s| {
                    s.name == name
                        && s.field("vsp.service") == Some("failing-service")
                        && s.field("vsp.endpoint") == Some(endpoint)
                })
                .unwrap_or_else(|| panic!("no {name} span for {endpoint}"));
            assert_eq!(field(span, "otel.status_code"), "ERROR", "{span:?}");
            assert_eq!(field(span, "error.type"), code, "{span:?}");
            assert_eq!(field(span, "rpc.response.status_code"), code, "{span:?}");
        }
    }
    manager.shutdown().await.unwrap();
}

/// A handler's own events land in its server span, whether it answers at once (polled in place),
/// waits (its own task), or runs on a `Multicore` pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handlers_events_land_in_its_server_span_on_every_worker_type() {
    let recorder = Recorder::global();
    for (service, workers) in [
        ("events-async", WorkerType::Async),
        ("events-multicore", WorkerType::Multicore { workers: 2 }),
    ] {
        let manager = VspManager::builder(service).worker_type(workers).build();
        manager
            .endpoint("at_once", move |_: Value| async move {
                tracing::info!(service, "handled at once");
                Ok::<_, VspError>(1)
            })
            .unwrap();
        manager
            .endpoint("after_waiting", move |_: Value| async move {
                // The scenario: a handler that waits (a timer, not synchronisation), so it is
                // not answered in place but continues as a task of its own.
                tokio::time::sleep(Duration::from_millis(1)).await;
                tracing::info!(service, "handled after waiting");
                Ok::<_, VspError>(2)
            })
            .unwrap();
        let addr = serve(&manager).await;
        let client = client_of(&[(service, addr)]);
        for endpoint in ["at_once", "after_waiting"] {
            client.call(service, endpoint, json!({})).await.unwrap();
        }
        for (endpoint, message) in [
            ("at_once", "handled at once"),
            ("after_waiting", "handled after waiting"),
        ] {
            let server = recorder
                .wait_for(
                    &format!("the server span of {service}/{endpoint}"),
                    BOUND,
                    |spans| {
                        spans
                            .iter()
                            .find(|s| {
                                s.name == "vsp.server"
                                    && s.field("vsp.service") == Some(service)
                                    && s.field("vsp.endpoint") == Some(endpoint)
                            })
                            .cloned()
                    },
                )
                .await;
            let event = recorder
                .events()
                .into_iter()
                .find(|e| {
                    e.message == message
                        && e.fields.get("service").map(String::as_str) == Some(service)
                })
                .unwrap_or_else(|| panic!("no event `{message}` of {service}"));
            assert_eq!(
                event.span,
                Some(server.seq),
                "{service}/{endpoint}: the event is not in the server span"
            );
        }
        manager.shutdown().await.unwrap();
    }
}

/// A raw request to `endpoint` of `service` with `meta` as its header metadata.
fn request_with_meta(id: u64, service: &str, endpoint: &str, meta: Value) -> Vec<u8> {
    frame(
        &json!({
            "header": {
                "request_id": id,
                "service": service,
                "endpoint": endpoint,
                "is_response": false,
                "meta": meta,
            },
            "body": {},
        })
        .to_string(),
    )
}

/// A server that answers with the trace id and state its handler sees in its `Context`.
async fn trace_echo(service: &'static str) -> (VspManager, SocketAddr) {
    let manager = VspManager::builder(service).build();
    manager
        .endpoint("whose_trace", |_: Value| async move {
            let cx = vsp::Context::current().expect("inside a handler");
            let trace = cx.trace().expect("a recorded server span has a trace");
            Ok::<_, VspError>(json!({
                "trace_id": trace.trace_id().to_string(),
                "span_id": trace.span_id().to_string(),
                "tracestate": trace.tracestate(),
            }))
        })
        .unwrap();
    let addr = serve(&manager).await;
    (manager, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_traceparent_makes_the_server_span_its_child() {
    let recorder = Recorder::global();
    let (manager, addr) = trace_echo("traced-service").await;
    let mut peer = RawPeer::connect(addr).await;
    peer.send(&request_with_meta(
        1,
        "traced-service",
        "whose_trace",
        json!({
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "tracestate": "vendor=abc",
        }),
    ))
    .await;
    let reply = peer.recv().await.expect("an answer");
    assert_eq!(
        reply["body"]["trace_id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(reply["body"]["tracestate"], "vendor=abc");
    assert_ne!(
        reply["body"]["span_id"], "00f067aa0ba902b7",
        "a span of its own"
    );
    let server = recorder
        .wait_for("the server span of traced-service", BOUND, |spans| {
            find(spans, "vsp.server", "traced-service", None).cloned()
        })
        .await;
    assert_eq!(
        field(&server, "trace_id"),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(field(&server, "parent_span_id"), "00f067aa0ba902b7");
    assert_eq!(field(&server, "span_id"), reply["body"]["span_id"]);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_traceparent_starts_a_new_trace_and_is_logged_once() {
    let recorder = Recorder::global();
    let (manager, addr) = trace_echo("malformed-trace").await;
    let mut peer = RawPeer::connect(addr).await;
    for id in 1..=3 {
        peer.send(&request_with_meta(
            id,
            "malformed-trace",
            "whose_trace",
            json!({"traceparent": "00-zzzz-not-a-trace", "x-user": "ada"}),
        ))
        .await;
        let reply = peer.recv().await.expect("an answer");
        let trace_id = reply["body"]["trace_id"].as_str().expect("served normally");
        assert_eq!(trace_id.len(), 32, "a new trace: {reply}");
    }
    let servers = recorder
        .wait_for("three server spans of malformed-trace", BOUND, |spans| {
            let servers: Vec<SpanRecord> = spans
                .iter()
                .filter(|s| {
                    s.name == "vsp.server" && s.field("vsp.service") == Some("malformed-trace")
                })
                .cloned()
                .collect();
            (servers.len() == 3).then_some(servers)
        })
        .await;
    for server in &servers {
        assert!(server.field("parent_span_id").is_none(), "{server:?}");
    }
    let warnings: Vec<_> = recorder
        .events()
        .into_iter()
        .filter(|e| {
            e.fields.get("service").map(String::as_str) == Some("malformed-trace")
                && e.message.contains("invalid traceparent")
                && e.level == tracing::Level::WARN
        })
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "logged once, not per request: {warnings:?}"
    );
    assert!(
        warnings[0].message.contains("starts a new trace"),
        "{warnings:?}"
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_in_a_calls_metadata_becomes_the_parent_of_its_span() {
    let recorder = Recorder::global();
    let (manager, addr) = trace_echo("forwarded-trace").await;
    let client = client_of(&[("forwarded-trace", addr)]);
    let answer = client
        .with_metadata(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .call("forwarded-trace", "whose_trace", json!({}))
        .await
        .unwrap();
    assert_eq!(answer["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    let spans = recorder.spans();
    let call = find(&spans, "vsp.client", "forwarded-trace", None).expect("the call's span");
    assert_eq!(field(call, "trace_id"), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(field(call, "parent_span_id"), "b7ad6b7169203331");
    manager.shutdown().await.unwrap();
}

/// A `fmt` writer into a shared buffer.
#[derive(Clone, Default)]
struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn at_info_a_log_line_carries_what_an_operator_reads_of_its_spans() {
    // Make sure the global recorder is installed first: `detailed` must answer for the
    // thread's own subscriber, not the process's.
    let _ = Recorder::global();
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            let manager = VspManager::builder("compact-logs").build();
            manager
                .endpoint("note", |_: Value| async move {
                    tracing::info!("handled the note");
                    Ok::<_, VspError>(json!("ok"))
                })
                .unwrap();
            let addr = serve(&manager).await;
            let client = client_of(&[("compact-logs", addr)]);
            client
                .call("compact-logs", "note", json!({}))
                .await
                .unwrap();
            manager.shutdown().await.unwrap();
        });
    });
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|line| line.contains("handled the note"))
        .unwrap_or_else(|| panic!("no line of the handler's log:\n{text}"));
    for wanted in [
        "vsp.server{",
        "rpc.method=compact-logs/note",
        "trace_id=",
        "client.address=",
    ] {
        assert!(line.contains(wanted), "`{wanted}` missing: {line}");
    }
    // (`otel.*`, `rpc.system.name`, `vsp.service` and `vsp.endpoint` are there too when vsp is
    // built with feature `opentelemetry`, as it is in this suite: they are its attributes.)
    for noise in ["span_id", "parent_span_id"] {
        assert!(!line.contains(noise), "`{noise}` at INFO: {line}");
    }
    assert!(line.len() < 400, "{} characters: {line}", line.len());
}

/// A typed error whose declared HTTP status is not a 4xx one.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Misdeclared;

impl vsp::HttpStatus for Misdeclared {
    fn http_status(&self) -> u16 {
        503
    }
}

#[vsp::service(name = "misdeclared-status")]
pub trait Refuser {
    async fn refuse(&self) -> Result<(), Misdeclared>;
}

struct AlwaysRefuses;

impl Refuser for AlwaysRefuses {
    async fn refuse(&self) -> Result<(), Misdeclared> {
        Err(Misdeclared)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misdeclared_status_is_logged_once_however_often_a_peer_triggers_it() {
    let recorder = Recorder::global();
    let manager = VspManager::builder("misdeclared-status").build();
    manager.serve(RefuserServer::new(AlwaysRefuses)).unwrap();
    let addr = serve(&manager).await;
    let client = RefuserClient::new(client_of(&[("misdeclared-status", addr)]));
    for _ in 0..20 {
        let refused = client.refuse().await.unwrap_err();
        assert!(matches!(refused, vsp::CallError::Service(Misdeclared)));
    }
    manager.shutdown().await.unwrap();
    let warnings = recorder
        .events()
        .into_iter()
        .filter(|e| e.level == tracing::Level::WARN && e.message.contains("is not 4xx"))
        .count();
    assert_eq!(warnings, 1, "one warning for 20 errors, not one per error");
}
