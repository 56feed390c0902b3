//! Limits and deadlines: overload is refused at once, the server stops work past the caller's
//! deadline, the client bounds its own calls in flight.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client_builder_for, register_test_endpoints, RawPeer, SERVICE};
use serde_json::{json, Value};
use vsp::{ErrorCode, VspError, VspManager};

async fn slow_calls(
    client: &vsp::VspClient,
    n: usize,
    ms: u64,
) -> Vec<tokio::task::JoinHandle<Result<Value, VspError>>> {
    (0..n)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .call(SERVICE, "sleep", json!({"ms": ms, "tag": i.to_string()}))
                    .await
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_concurrency_limit_calls_are_refused_at_once_and_health_still_answers() {
    let manager = VspManager::builder(SERVICE)
        .max_concurrent_requests(4)
        .build();
    register_test_endpoints(&manager);
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let client = client_builder_for(addr).max_attempts(1).build();

    let held = slow_calls(&client, 4, 1_000).await;
    common::wait_in_flight(&manager, 4).await;
    for i in 0..6 {
        let err = client
            .call(SERVICE, "echo", json!({"value": i}))
            .await
            .unwrap_err();
        assert_eq!(err.remote_code(), Some(&ErrorCode::Overloaded), "{err:?}");
    }
    // Refused while the four held calls are all still running: nothing queued behind them.
    assert_eq!(manager.get_performance_stats().in_flight, 4);
    assert_eq!(
        client.call(SERVICE, "health", json!({})).await.unwrap()["status"],
        "healthy"
    );
    for call in held {
        call.await.unwrap().unwrap();
    }
    assert_eq!(manager.get_performance_stats().errors["overloaded"], 6);
    common::assert_echo(&client, 7).await;
}

#[tokio::test]
async fn each_connection_has_its_own_limit() {
    let manager = VspManager::builder(SERVICE)
        .max_requests_per_connection(2)
        .build();
    register_test_endpoints(&manager);
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let mut greedy = RawPeer::connect(addr).await;
    for id in 1..=3 {
        greedy
            .send_request(&id.to_string(), "sleep", r#"{"ms":300,"tag":"x"}"#)
            .await;
    }
    let refused = greedy.recv().await.unwrap();
    assert_eq!(
        (
            refused["header"]["request_id"].clone(),
            refused["header"]["error_code"].clone()
        ),
        (json!(3), json!("overloaded"))
    );
    // Another connection is not affected by the greedy one.
    let client = client_builder_for(addr).build();
    common::assert_echo(&client, 1).await;
}

#[tokio::test]
async fn the_client_bounds_its_calls_in_flight_per_connection() {
    let (_manager, addr) = common::start_test_server().await;
    let client = client_builder_for(addr)
        .max_transports(1)
        .max_in_flight_per_connection(2)
        .build();
    let held = slow_calls(&client, 2, 300).await;
    while client.open_connections(&format!("127.0.0.1:{}", addr.port())) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = client
        .call(SERVICE, "echo", json!({"value": 1}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, VspError::TooManyInFlight { limit: 2, .. }),
        "{err:?}"
    );
    for call in held {
        call.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn the_server_stops_a_handler_once_the_callers_deadline_passed() {
    let manager = VspManager::builder(SERVICE).build();
    let dropped = Arc::new(AtomicBool::new(false));
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let flag = dropped.clone();
    manager
        .endpoint("forever", move |_: Value| {
            let guard = SetOnDrop(flag.clone());
            async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(guard);
                Ok::<_, String>(0)
            }
        })
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let client = client_builder_for(addr)
        .timeout(Duration::from_millis(150))
        .max_attempts(1)
        .build();
    let err = client
        .call(SERVICE, "forever", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, VspError::Timeout { .. }), "{err:?}");
    for _ in 0..500 {
        if dropped.load(Ordering::SeqCst) && manager.get_performance_stats().in_flight == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        dropped.load(Ordering::SeqCst),
        "the handler kept running past the deadline"
    );
    assert_eq!(manager.get_performance_stats().errors["timeout"], 1);
}

#[tokio::test]
async fn a_request_without_a_deadline_runs_to_completion() {
    let (_manager, addr) = common::start_test_server().await;
    let mut peer = RawPeer::connect(addr).await;
    // As Velithon sends it: no timeout_ms.
    peer.send_request("1", "sleep", r#"{"ms":200,"tag":"done"}"#)
        .await;
    assert_eq!(peer.recv().await.unwrap()["body"], "done");
    // An expired one is refused without running.
    peer.send(&common::frame(r#"{"header":{"request_id":2,"service":"test-service","endpoint":"echo","timeout_ms":0},"body":{"value":1}}"#)).await;
    assert_eq!(
        peer.recv().await.unwrap()["header"]["error_code"],
        "timeout"
    );
}
