//! Lifecycle: start, graceful shutdown with calls in flight, drain timeout, close.

use crate::common;

use std::time::Duration;

use common::{client_builder_for, client_for, start_test_server, RawPeer, SERVICE};
use serde_json::json;
use vsp::{ErrorCode, VspError, VspManager};

#[tokio::test]
async fn shutdown_lets_calls_in_flight_finish() {
    let (manager, addr) = start_test_server().await;
    let client = client_for(addr);
    let calls: Vec<_> = (0..5)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .call(
                        SERVICE,
                        "sleep",
                        json!({"ms": 300, "tag": format!("call-{i}")}),
                    )
                    .await
            })
        })
        .collect();
    // Wait until all five are running on the server.
    common::wait_in_flight(&manager, 5).await;
    manager.shutdown().await.unwrap();
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), json!(format!("call-{i}")));
    }
    let stats = manager.get_performance_stats();
    assert_eq!((stats.in_flight, stats.connections_active), (0, 0));
}

#[tokio::test]
async fn after_shutdown_new_calls_fail_without_hanging() {
    let (manager, addr) = start_test_server().await;
    let client = client_builder_for(addr)
        .timeout(Duration::from_secs(600))
        .build();
    common::assert_echo(&client, 1).await;
    manager.shutdown().await.unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        client.call(SERVICE, "echo", json!({"value": 2})),
    )
    .await
    .expect("a call to a stopped server hung");
    assert!(
        matches!(
            result,
            Err(VspError::Connect { .. } | VspError::ConnectionClosed { .. })
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn requests_arriving_while_draining_are_refused_as_shutting_down() {
    let (manager, addr) = start_test_server().await;
    let mut peer = RawPeer::connect(addr).await;
    peer.send_request("1", "sleep", r#"{"ms":400,"tag":"slow"}"#)
        .await;
    common::wait_in_flight(&manager, 1).await;
    let shutdown = {
        let manager = manager.clone();
        tokio::spawn(async move { manager.shutdown().await })
    };
    // First the notice, under a null request id: send nothing new here.
    let notice = peer.recv().await.unwrap();
    assert_eq!(notice["header"]["request_id"], serde_json::Value::Null);
    assert_eq!(
        notice["header"]["error_code"],
        ErrorCode::ShuttingDown.as_str()
    );
    peer.send_request("2", "echo", r#"{"value":1}"#).await;
    let refused = peer.recv().await.unwrap();
    assert_eq!(refused["header"]["request_id"], 2);
    assert_eq!(
        refused["header"]["error_code"],
        ErrorCode::ShuttingDown.as_str()
    );
    let finished = peer.recv().await.unwrap();
    assert_eq!(
        (
            finished["header"]["request_id"].clone(),
            finished["body"].clone()
        ),
        (json!(1), json!("slow"))
    );
    shutdown.await.unwrap().unwrap();
    assert!(peer.is_closed_by_server().await);
}

#[tokio::test]
async fn calls_still_running_at_the_drain_timeout_are_aborted_and_reported() {
    let manager = VspManager::builder(SERVICE)
        .drain_timeout(Duration::from_millis(100))
        .build();
    common::register_test_endpoints(&manager);
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let client = client_builder_for(addr)
        .timeout(Duration::from_secs(600))
        .build();
    let call = common::held_call(&client, &manager, 60_000).await;
    let err = manager.shutdown().await.unwrap_err();
    assert!(
        matches!(err, VspError::DrainTimeout { in_flight: 1, .. }),
        "{err:?}"
    );
    let result = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the aborted call hung")
        .unwrap();
    assert!(
        matches!(result, Err(VspError::ConnectionClosed { .. })),
        "{result:?}"
    );
    assert_eq!(manager.get_performance_stats().in_flight, 0);
}

#[tokio::test]
async fn close_stops_at_once() {
    let (manager, addr) = start_test_server().await;
    let client = client_builder_for(addr)
        .timeout(Duration::from_secs(600))
        .build();
    let call = common::held_call(&client, &manager, 60_000).await;
    manager.close().await;
    let result = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(result, Err(VspError::ConnectionClosed { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_manager_serves_once() {
    let (manager, _addr) = start_test_server().await;
    let err = manager.start_server("127.0.0.1", 0).await.unwrap_err();
    assert!(matches!(err, VspError::AlreadyStarted { .. }), "{err:?}");
    manager.shutdown().await.unwrap();
    // A second shutdown is a no-op.
    manager.shutdown().await.unwrap();
    assert!(matches!(
        manager.start_server("127.0.0.1", 0).await,
        Err(VspError::AlreadyStarted { .. })
    ));
}

#[tokio::test]
async fn shutting_down_a_manager_that_never_started_is_a_no_op() {
    let manager = common::test_manager();
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_taken_port_is_a_bind_error_and_the_manager_may_retry() {
    let (_first, addr) = start_test_server().await;
    let second = common::test_manager();
    let taken = format!("127.0.0.1:{}", addr.port());
    let err = second
        .start_server("127.0.0.1", addr.port())
        .await
        .unwrap_err();
    assert!(
        matches!(err, VspError::Bind { ref addr, .. } if *addr == taken),
        "{err:?}"
    );
    second.start_server("127.0.0.1", 0).await.unwrap();
}
