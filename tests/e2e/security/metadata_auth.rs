//! Per-call metadata (dynamic and typed clients, client-wide metadata, interceptors), the call
//! `Context` in handlers (deadline inheritance included), and server auth hooks, over real TCP.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{frame, request_json, RawPeer};
use serde_json::{json, Value};
use vsp::server::{BearerToken, Rejection};
use vsp::{
    CallInfo, CallOptions, Context, ErrorCode, Metadata, ServiceInfo, ServiceMesh, VspClient,
    VspError, VspManager,
};

/// A server whose `whoami` endpoint answers with what its context says.
async fn context_server(builder: vsp::VspManagerBuilder) -> (VspManager, std::net::SocketAddr) {
    let manager = builder.build();
    manager
        .endpoint("whoami", |_: Value| async move {
            let cx = Context::current().expect("a handler runs inside its context");
            let metadata: serde_json::Map<String, Value> = cx
                .metadata()
                .iter()
                .map(|(k, v)| (k.to_owned(), Value::from(v)))
                .collect();
            Ok::<_, String>(json!({
                "service": cx.service(),
                "endpoint": cx.endpoint(),
                "metadata": metadata,
                "identity": cx.identity().map(|i| i.to_string()),
                "peer": cx.peer_address().to_string(),
                "remaining_ms": cx.remaining().map(|r| r.as_millis() as u64),
            }))
        })
        .unwrap();
    manager
        .endpoint("open", |_: Value| async move { Ok::<_, String>("open") })
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    (manager, addr)
}

async fn next_report(reports: &mut tokio::sync::mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(10), reports.recv())
        .await
        .expect("the handler's report on its hop")
        .unwrap()
}

fn client_builder(service: &str, addr: std::net::SocketAddr) -> vsp::VspClientBuilder {
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new(service, "127.0.0.1", addr.port()))
        .unwrap();
    VspClient::builder(mesh)
}

#[tokio::test]
async fn metadata_reaches_the_handler_from_the_call_the_client_and_the_interceptor() {
    let (manager, addr) = context_server(VspManager::builder("ctx")).await;
    let client = client_builder("ctx", addr)
        .metadata("x-client", "everywhere")
        .interceptor(|call: &CallInfo<'_>, metadata: &mut Metadata| {
            metadata.insert(
                "x-intercepted",
                format!("{}/{}", call.service, call.endpoint),
            );
        })
        .build();
    let seen: Value = client
        .call_with(
            "ctx",
            "whoami",
            json!({}),
            CallOptions::new().metadata("X-Request-Id", "r-1"),
        )
        .await
        .unwrap();
    assert_eq!(
        seen["metadata"],
        json!({"x-client": "everywhere", "x-request-id": "r-1", "x-intercepted": "ctx/whoami"})
    );
    assert_eq!(seen["service"], "ctx");
    assert_eq!(seen["endpoint"], "whoami");
    assert_eq!(seen["identity"], Value::Null, "plaintext has no identity");
    assert!(seen["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let remaining = seen["remaining_ms"]
        .as_u64()
        .expect("our client sends its deadline");
    assert!(remaining <= 30_000 && remaining > 0, "{remaining}");

    // A handle's metadata adds to the client's; the call's own wins over both.
    let handle = client.with_metadata("x-client", "handle");
    let seen = handle.call("ctx", "whoami", json!({})).await.unwrap();
    assert_eq!(seen["metadata"]["x-client"], "handle");
    let seen: Value = handle
        .call_with(
            "ctx",
            "whoami",
            json!({}),
            CallOptions::new().metadata("x-client", "call"),
        )
        .await
        .unwrap();
    assert_eq!(seen["metadata"]["x-client"], "call");
    manager.shutdown().await.unwrap();
}

#[vsp::service(name = "profile")]
pub trait Profile {
    /// Who the caller says it is.
    async fn caller(&self) -> String;
}

struct Profiles;

impl Profile for Profiles {
    async fn caller(&self) -> String {
        Context::current()
            .and_then(|cx| cx.metadata().get("x-user").map(str::to_owned))
            .unwrap_or_else(|| "anonymous".to_owned())
    }
}

#[tokio::test]
async fn typed_clients_send_metadata_through_their_handle_and_handlers_read_it() {
    let manager = VspManager::builder(ProfileClient::SERVICE_NAME).build();
    manager.serve(ProfileServer::new(Profiles)).unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let client = client_builder(ProfileClient::SERVICE_NAME, addr).build();
    let anonymous = ProfileClient::new(client.clone());
    assert_eq!(anonymous.caller().await.unwrap(), "anonymous");
    let ada = ProfileClient::new(client.with_metadata("x-user", "ada"));
    assert_eq!(ada.caller().await.unwrap(), "ada");
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_call_made_inside_a_handler_inherits_the_callers_deadline() {
    // Downstream: an endpoint that sleeps far longer than the outer deadline.
    let downstream = VspManager::builder("inventory").build();
    downstream
        .endpoint("slow", |_: Value| async move {
            // The scenario: work that outlasts the caller's deadline.
            tokio::time::sleep(Duration::from_secs(20)).await;
            Ok::<_, String>("done")
        })
        .unwrap();
    let downstream_addr = downstream.start_server("127.0.0.1", 0).await.unwrap();
    // The hop's own client waits 30 s by default; only the inherited deadline can cut it short.
    let hop = client_builder("inventory", downstream_addr).build();

    // Upstream: its handler makes the hop in a task it spawns with its context (the handler
    // itself is stopped at the deadline), and reports how the hop ended.
    let (report, mut reports) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let upstream = VspManager::builder("orders").build();
    upstream
        .endpoint("place", move |args: Value| {
            let hop = hop.clone();
            let report = report.clone();
            let cx = Context::current().expect("inside a handler");
            tokio::spawn(cx.scope(async move {
                let inherit = args["inherit"].as_bool().unwrap();
                let options = CallOptions::new().inherit_deadline(inherit);
                let hop_call = hop.call_with::<Value>("inventory", "slow", json!({}), options);
                // Bounds the test only: a hop with its own 30 s deadline is still waiting here.
                let seen = match tokio::time::timeout(Duration::from_secs(3), hop_call).await {
                    Ok(Err(VspError::Timeout { after, .. })) => {
                        json!({"hop": "timeout", "after_ms": after.as_millis() as u64})
                    }
                    Ok(other) => json!({"hop": format!("{other:?}")}),
                    Err(_) => json!({"hop": "still waiting after 3 s"}),
                };
                let _ = report.send(seen);
            }));
            async move {
                // The scenario: the handler itself outlasts the caller (it is stopped at the
                // deadline; the hop it spawned reports on its own).
                tokio::time::sleep(Duration::from_secs(20)).await;
                Ok::<_, String>("placed")
            }
        })
        .unwrap();
    let upstream_addr = upstream.start_server("127.0.0.1", 0).await.unwrap();
    let caller = client_builder("orders", upstream_addr).build();

    let outer = CallOptions::new().timeout(Duration::from_millis(600));
    let err = caller
        .call_with::<Value>("orders", "place", json!({"inherit": true}), outer.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, VspError::Timeout { .. }), "{err}");
    let seen = next_report(&mut reports).await;
    assert_eq!(seen["hop"], "timeout", "{seen}");
    let after = seen["after_ms"].as_u64().unwrap();
    assert!(
        after <= 600,
        "the hop's deadline is what the caller had left, got {after} ms"
    );

    // Without inheritance the hop keeps its own 30 s deadline.
    let err = caller
        .call_with::<Value>("orders", "place", json!({"inherit": false}), outer)
        .await
        .unwrap_err();
    assert!(matches!(err, VspError::Timeout { .. }), "{err}");
    let seen = next_report(&mut reports).await;
    assert_eq!(seen["hop"], "still waiting after 3 s", "{seen}");
    upstream.close().await;
    downstream.close().await;
}

#[tokio::test]
async fn a_bearer_token_hook_refuses_calls_without_the_token_but_not_health() {
    let (manager, addr) =
        context_server(VspManager::builder("ctx").auth(BearerToken::new(["s3cret"]))).await;
    let client = client_builder("ctx", addr).build();

    let err = client.call("ctx", "whoami", json!({})).await.unwrap_err();
    assert_eq!(
        err.remote_code(),
        Some(&ErrorCode::Unauthenticated),
        "{err}"
    );
    assert!(err.to_string().contains("authorization"), "{err}");

    let err = client
        .with_metadata("authorization", "Bearer wrong")
        .call("ctx", "whoami", json!({}))
        .await
        .unwrap_err();
    assert_eq!(
        err.remote_code(),
        Some(&ErrorCode::Unauthenticated),
        "{err}"
    );

    let seen = client
        .with_metadata("authorization", "Bearer s3cret")
        .call("ctx", "whoami", json!({}))
        .await
        .unwrap();
    assert_eq!(seen["endpoint"], "whoami");

    let health = client.call("ctx", "health", json!({})).await.unwrap();
    assert_eq!(health["status"], "healthy", "health stays open");
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_async_hook_awaits_a_lookup_and_rules_per_endpoint() {
    // The "token store": a lookup that really waits (a task answers it over a channel).
    let (lookups, mut store) = tokio::sync::mpsc::channel::<(
        String,
        tokio::sync::oneshot::Sender<Option<&'static str>>,
    )>(16);
    tokio::spawn(async move {
        while let Some((token, answer)) = store.recv().await {
            tokio::task::yield_now().await;
            let role = match token.as_str() {
                "Bearer admin-token" => Some("admin"),
                "Bearer user-token" => Some("user"),
                _ => None,
            };
            let _ = answer.send(role);
        }
    });
    let checks = Arc::new(AtomicUsize::new(0));
    let counted = checks.clone();
    let hook = move |cx: Context| {
        let lookups = lookups.clone();
        counted.fetch_add(1, Ordering::Relaxed);
        async move {
            if cx.endpoint() == "open" {
                return Ok(());
            }
            let token = cx
                .metadata()
                .get("authorization")
                .ok_or_else(|| Rejection::unauthenticated("no token"))?
                .to_owned();
            let (answer, role) = tokio::sync::oneshot::channel();
            lookups
                .send((token, answer))
                .await
                .map_err(|_| Rejection::unauthenticated("store gone"))?;
            match role.await.ok().flatten() {
                None => Err(Rejection::unauthenticated("unknown token")),
                Some("admin") => Ok(()),
                Some(role) => Err(Rejection::permission_denied(format!(
                    "role `{role}` may not call `{}`",
                    cx.endpoint()
                ))),
            }
        }
    };
    let (manager, addr) = context_server(VspManager::builder("ctx").auth(hook)).await;
    let client = client_builder("ctx", addr).build();

    assert_eq!(client.call("ctx", "open", json!({})).await.unwrap(), "open");
    let admin = client.with_metadata("authorization", "Bearer admin-token");
    let seen = admin.call("ctx", "whoami", json!({})).await.unwrap();
    assert_eq!(seen["metadata"]["authorization"], "Bearer admin-token");
    let err = client
        .with_metadata("authorization", "Bearer user-token")
        .call("ctx", "whoami", json!({}))
        .await
        .unwrap_err();
    assert_eq!(
        err.remote_code(),
        Some(&ErrorCode::PermissionDenied),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("role `user` may not call `whoami`"),
        "{err}"
    );
    let err = client
        .with_metadata("authorization", "Bearer nobody")
        .call("ctx", "whoami", json!({}))
        .await
        .unwrap_err();
    assert_eq!(
        err.remote_code(),
        Some(&ErrorCode::Unauthenticated),
        "{err}"
    );
    // Health never reaches the hook.
    let before = checks.load(Ordering::Relaxed);
    client.call("ctx", "health", json!({})).await.unwrap();
    assert_eq!(checks.load(Ordering::Relaxed), before);
    // Many concurrent waiting checks all get their answers.
    let calls = (0..50).map(|_| admin.call("ctx", "whoami", json!({})));
    for outcome in futures::future::join_all(calls).await {
        outcome.unwrap();
    }
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_metadata_is_a_bad_request_and_the_connection_carries_on() {
    let (manager, addr) = context_server(VspManager::builder("ctx")).await;
    let mut peer = RawPeer::connect(addr).await;
    let with_meta = |id: &str, meta: &str| {
        let json = request_json(id, "whoami", "{}");
        frame(&json.replacen(
            "\"is_response\":false",
            &format!("\"is_response\":false,\"meta\":{meta}"),
            1,
        ))
    };
    peer.send(&with_meta("1", r#"{"a":1}"#)).await;
    let answer = peer.recv().await.expect("an answer to a bad `meta`");
    assert_eq!(answer["header"]["error_code"], "bad_request", "{answer}");
    assert!(answer["body"]["error"]
        .as_str()
        .unwrap()
        .contains("object of strings"));

    let huge = format!(
        r#"{{"k":"{}"}}"#,
        "x".repeat(vsp::protocol::MAX_METADATA_BYTES + 1)
    );
    peer.send(&with_meta("2", &huge)).await;
    let answer = peer.recv().await.expect("an answer to a huge `meta`");
    assert_eq!(answer["header"]["error_code"], "bad_request", "{answer}");

    peer.send(&with_meta("3", r#"{"x-user":"ada"}"#)).await;
    let answer = peer.recv().await.expect("an answer to a good `meta`");
    assert_eq!(answer["body"]["metadata"]["x-user"], "ada", "{answer}");
    manager.shutdown().await.unwrap();
}
