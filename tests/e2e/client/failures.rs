//! Calls that cannot complete fail clearly and promptly: deadlines, broken connections,
//! unreachable or unknown services.

use crate::common;

use std::time::Duration;

use common::{client_builder_for, client_for, held_call, start_test_server, wait_until, SERVICE};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use vsp::{HealthStatus, ServiceInfo, ServiceMesh, VspClient, VspError};

#[tokio::test]
async fn a_call_past_its_deadline_times_out_and_frees_its_slot() {
    let (manager, addr) = start_test_server().await;
    // One connection with room for two calls: a leaked slot would show at once.
    let client = client_builder_for(addr)
        .timeout(Duration::from_millis(100))
        .max_transports(1)
        .max_in_flight_per_connection(2)
        .build();
    let err = client
        .call(SERVICE, "sleep", json!({"ms": 400, "tag": "late"}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, VspError::Timeout { ref service, ref endpoint, .. } if service == SERVICE && endpoint == "sleep"),
        "{err:?}"
    );
    // The client's slot is free at once: two calls fit on the one connection again.
    let pair = futures::future::join(
        client.call(SERVICE, "echo", json!({"value": 1})),
        client.call(SERVICE, "echo", json!({"value": 2})),
    )
    .await;
    assert_eq!((pair.0.unwrap(), pair.1.unwrap()), (json!(1), json!(2)));
    // The late response arrives (the server finishes its work): it must be dropped, not handed
    // to the next call.
    wait_until(
        "the server to finish the timed-out call",
        Duration::from_secs(10),
        || manager.get_performance_stats().endpoints["sleep"].calls == 1,
    )
    .await;
    let value = client
        .call(SERVICE, "echo", json!({"value": "next"}))
        .await
        .unwrap();
    assert_eq!(value, json!("next"));
}

#[tokio::test]
async fn a_connection_that_breaks_fails_its_calls_at_once() {
    // A server that reads the request, then drops the connection without answering.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 256];
            let _ = stream.read(&mut buf).await;
            drop(stream);
        }
    });
    // A deadline far away: only a prompt failure can end this call.
    let client = client_builder_for(addr)
        .timeout(Duration::from_secs(600))
        .build();
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        client.call(SERVICE, "echo", json!({"value": 1})),
    )
    .await
    .expect("the call waited instead of failing")
    .unwrap_err();
    assert!(
        matches!(err, VspError::ConnectionClosed { ref endpoint, .. } if endpoint == "echo"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_broken_connection_is_reopened_on_the_next_call() {
    let (manager, addr) = start_test_server().await;
    let client = client_for(addr);
    common::assert_echo(&client, 1).await;
    // Close the server's side of every connection, then serve again on the same port.
    manager.close().await;
    let second = common::test_manager();
    let rebound = second.start_server("127.0.0.1", addr.port()).await.unwrap();
    assert_eq!(rebound, addr);
    // The first call may still race the close; the next one must use a fresh connection.
    let mut last = None;
    for _ in 0..3 {
        last = Some(client.call(SERVICE, "echo", json!({"value": 2})).await);
        if matches!(last, Some(Ok(_))) {
            break;
        }
    }
    assert_eq!(last.unwrap().unwrap(), json!(2));
    assert_eq!(second.get_performance_stats().connections_total, 1);
}

#[tokio::test]
async fn an_unreachable_instance_is_a_connect_error_naming_it() {
    // Bind then drop, so the port is (almost certainly) closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new(SERVICE, "127.0.0.1", port))
        .unwrap();
    let client = VspClient::builder(mesh).build();
    let err = client.call(SERVICE, "echo", json!({})).await.unwrap_err();
    match err {
        VspError::Connect {
            service, instance, ..
        } => {
            assert_eq!(service, SERVICE);
            assert_eq!(instance, format!("127.0.0.1:{port}"));
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unknown_service_has_no_instances() {
    let client = VspClient::builder(ServiceMesh::new()).build();
    let err = client
        .call("ghost-service", "echo", json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, VspError::NoInstances { ref service } if service == "ghost-service"),
        "{err:?}"
    );
}

#[tokio::test]
async fn unhealthy_instances_get_no_calls() {
    let (_manager, addr) = start_test_server().await;
    let mesh = ServiceMesh::new();
    // A dead instance marked unhealthy next to the live one: every call must reach the live one.
    mesh.register(ServiceInfo::new(SERVICE, "127.0.0.1", 1).with_status(HealthStatus::Unhealthy))
        .unwrap();
    mesh.register(ServiceInfo::new(SERVICE, "127.0.0.1", addr.port()))
        .unwrap();
    let client = VspClient::builder(mesh.clone()).build();
    common::assert_echoes(&client, 10).await;
    mesh.set_status(SERVICE, "127.0.0.1", addr.port(), HealthStatus::Unhealthy);
    let err = client
        .call(SERVICE, "echo", json!({"value": 0}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, VspError::NoHealthyInstances { instances: 2, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_dropped_call_frees_its_slot() {
    let (manager, addr) = start_test_server().await;
    let client = client_builder_for(addr)
        .max_transports(1)
        .max_in_flight_per_connection(1)
        .build();
    let call = held_call(&client, &manager, 300).await;
    call.abort();
    let _ = call.await;
    // With room for one call, a leaked slot would refuse this one (`TooManyInFlight`).
    common::assert_echo(&client, 8).await;
    // The server finishes its work; its response finds no caller and is dropped.
    wait_until(
        "the server to finish the dropped call",
        Duration::from_secs(10),
        || manager.get_performance_stats().in_flight == 0,
    )
    .await;
    common::assert_echo(&client, 9).await;
}

#[test]
fn invalid_registrations_are_refused_with_the_reason() {
    let mesh = ServiceMesh::new();
    for (info, reason) in [
        (ServiceInfo::new("", "127.0.0.1", 1), "name is empty"),
        (ServiceInfo::new("s", "", 1), "host is empty"),
        (ServiceInfo::new("s", "h", 1).with_weight(0.0), "weight 0"),
        (
            ServiceInfo::new("s", "h", 1).with_weight(f64::NAN),
            "weight NaN",
        ),
        (ServiceInfo::new("s", "h", 1).with_weight(-1.0), "weight -1"),
    ] {
        let err = mesh.register(info).unwrap_err();
        assert!(err.to_string().contains(reason), "{err} lacks {reason}");
    }
}

#[tokio::test]
async fn a_handler_function_that_panics_before_its_future_is_an_error_not_a_closed_connection() {
    let manager = vsp::VspManager::builder(SERVICE).build();
    manager
        .endpoint("eager_panic", |args: serde_json::Value| {
            if args["boom"] == true {
                panic!("panicked before returning a future");
            }
            async move { Ok::<_, String>("fine") }
        })
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let client = client_builder_for(addr).max_transports(1).build();
    match client
        .call(SERVICE, "eager_panic", json!({"boom": true}))
        .await
    {
        Err(VspError::Remote { code, message, .. }) => {
            assert_eq!(code, vsp::ErrorCode::Handler);
            assert!(
                message.contains("panicked before returning a future"),
                "{message}"
            );
        }
        other => panic!("expected a handler error, got {other:?}"),
    }
    // The same connection still serves.
    let fine = client
        .call(SERVICE, "eager_panic", json!({"boom": false}))
        .await
        .unwrap();
    assert_eq!(fine, "fine");
    assert_eq!(client.pool_stats().created, 1, "the connection survived");
    manager.shutdown().await.unwrap();
}
