//! Trace context while nothing records spans (no subscriber in this test binary): no ids are
//! made for nobody, but a trace a caller sent still passes through every hop.

use crate::common;

use std::net::SocketAddr;

use common::{frame, RawPeer};
use serde_json::{json, Value};
use vsp::{ServiceInfo, ServiceMesh, VspClient, VspError, VspManager};

fn client_of(service: &str, addr: SocketAddr) -> VspClient {
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new(service, "127.0.0.1", addr.port()))
        .unwrap();
    VspClient::builder(mesh).build()
}

/// `back` answers with the trace its handler sees; `front` calls `back` and returns its answer.
async fn two_hops() -> (VspManager, VspManager, SocketAddr, SocketAddr) {
    let back = VspManager::builder("passthrough-back").build();
    back.endpoint("whose_trace", |_: Value| async move {
        let cx = vsp::Context::current().expect("inside a handler");
        Ok::<_, VspError>(json!({
            "trace_id": cx.trace().map(|trace| trace.trace_id().to_string()),
            "parent": cx.metadata().get("traceparent"),
        }))
    })
    .unwrap();
    let back_addr = back.start_server("127.0.0.1", 0).await.unwrap();
    let to_back = client_of("passthrough-back", back_addr);
    let front = VspManager::builder("passthrough-front").build();
    front
        .endpoint("relay", move |_: Value| {
            let to_back = to_back.clone();
            async move {
                to_back
                    .call("passthrough-back", "whose_trace", json!({}))
                    .await
            }
        })
        .unwrap();
    let front_addr = front.start_server("127.0.0.1", 0).await.unwrap();
    (front, back, front_addr, back_addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrecorded_call_sends_no_trace() {
    let (front, back, front_addr, _) = two_hops().await;
    let answer = client_of("passthrough-front", front_addr)
        .call("passthrough-front", "relay", json!({}))
        .await
        .unwrap();
    assert_eq!(answer, json!({"trace_id": null, "parent": null}));
    front.shutdown().await.unwrap();
    back.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_trace_passes_through_a_hop_that_records_nothing() {
    let (front, back, front_addr, _) = two_hops().await;
    let mut peer = RawPeer::connect(front_addr).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    peer.send(&frame(
        &json!({
            "header": {
                "request_id": 1,
                "service": "passthrough-front",
                "endpoint": "relay",
                "is_response": false,
                "meta": {"traceparent": traceparent},
            },
            "body": {},
        })
        .to_string(),
    ))
    .await;
    let reply = peer.recv().await.expect("an answer");
    assert_eq!(
        reply["body"],
        json!({"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "parent": traceparent}),
        "the second hop continues the caller's trace"
    );
    front.shutdown().await.unwrap();
    back.shutdown().await.unwrap();
}
