//! Calls over real TCP: typed and dynamic round trips, concurrency, multiplexing, ordering.

use crate::common;

use std::time::Duration;

use common::{client_builder_for, client_for, start_test_server, Sum, SERVICE};
use serde_json::{json, Value};
use vsp::{ErrorCode, VspError};

#[tokio::test]
async fn a_dynamic_call_returns_the_response_body() {
    let (_manager, addr) = start_test_server().await;
    let client = client_for(addr);
    let value = client
        .call(
            SERVICE,
            "echo",
            json!({"value": {"nested": [1, "two", null]}}),
        )
        .await
        .unwrap();
    assert_eq!(value, json!({"nested": [1, "two", null]}));
}

#[tokio::test]
async fn a_typed_call_deserializes_into_the_callers_type() {
    let (_manager, addr) = start_test_server().await;
    let client = client_for(addr);
    let sum: i64 = client
        .call_typed(SERVICE, "add", Sum { a: 2, b: 40 })
        .await
        .unwrap();
    assert_eq!(sum, 42);
}

#[tokio::test]
async fn a_response_that_does_not_fit_the_type_is_a_decode_error() {
    let (_manager, addr) = start_test_server().await;
    let client = client_for(addr);
    let result: Result<String, _> = client.call_typed(SERVICE, "add", Sum { a: 1, b: 1 }).await;
    assert!(
        matches!(result, Err(VspError::Decode { ref endpoint, .. }) if endpoint == "add"),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_successful_body_with_an_error_key_stays_a_success() {
    let (_manager, addr) = start_test_server().await;
    let client = client_for(addr);
    let value = client.call(SERVICE, "error_key", json!({})).await.unwrap();
    assert_eq!(value, json!({"error": "not an error, just a field"}));
}

#[tokio::test]
async fn health_is_built_in() {
    let (_manager, addr) = start_test_server().await;
    let client = client_for(addr);
    let health = client.call(SERVICE, "health", json!({})).await.unwrap();
    assert_eq!(health["status"], "healthy");
    assert!(health["timestamp"].is_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_on_one_client_all_get_their_own_answer() {
    let (_manager, addr) = start_test_server().await;
    let client = client_builder_for(addr).max_transports(3).build();
    let calls = (0..1000i64).map(|i| {
        let client = client.clone();
        tokio::spawn(async move {
            let sum: i64 = client
                .call_typed(SERVICE, "add", Sum { a: i, b: 1_000_000 })
                .await?;
            Ok::<_, VspError>((i, sum))
        })
    });
    let results = futures_join_all(calls).await;
    for result in results {
        let (i, sum) = result.unwrap();
        assert_eq!(sum, i + 1_000_000);
    }
    let open = client.open_connections(&format!("127.0.0.1:{}", addr.port()));
    assert!(
        (1..=3).contains(&open),
        "{open} connections open, max_transports is 3"
    );
}

#[tokio::test]
async fn responses_return_out_of_order_on_one_connection() {
    let (_manager, addr) = start_test_server().await;
    let client = client_builder_for(addr).max_transports(1).build();
    let slow = {
        let client = client.clone();
        tokio::spawn(async move {
            let tag: String = client
                .call_typed(SERVICE, "sleep", json!({"ms": 400, "tag": "slow"}))
                .await
                .unwrap();
            (tag, tokio::time::Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fast: String = client
        .call_typed(SERVICE, "sleep", json!({"ms": 0, "tag": "fast"}))
        .await
        .unwrap();
    let fast_done = tokio::time::Instant::now();
    let (slow_tag, slow_done) = slow.await.unwrap();
    assert_eq!((fast.as_str(), slow_tag.as_str()), ("fast", "slow"));
    // Both used the one connection, and the fast call did not wait for the slow one.
    assert_eq!(
        client.open_connections(&format!("127.0.0.1:{}", addr.port())),
        1
    );
    assert!(fast_done < slow_done);
}

#[tokio::test]
async fn connections_open_lazily_and_are_reused() {
    let (manager, addr) = start_test_server().await;
    let client = client_for(addr);
    let endpoint = format!("127.0.0.1:{}", addr.port());
    assert_eq!(client.open_connections(&endpoint), 0);
    for i in 0..20 {
        let _: Value = client
            .call(SERVICE, "echo", json!({"value": i}))
            .await
            .unwrap();
    }
    // Sequential calls never find the connection busy, so one is enough.
    assert_eq!(client.open_connections(&endpoint), 1);
    assert_eq!(manager.get_performance_stats().connections_total, 1);
}

#[tokio::test]
async fn stats_count_calls_and_errors_by_code() {
    let (manager, addr) = start_test_server().await;
    let client = client_for(addr);
    for _ in 0..3 {
        common::assert_echo(&client, 1).await;
    }
    let err = client.call(SERVICE, "nope", json!({})).await.unwrap_err();
    assert_eq!(err.remote_code(), Some(&ErrorCode::NotFound));
    let err = client.call(SERVICE, "fail", json!({})).await.unwrap_err();
    assert_eq!(err.remote_code(), Some(&ErrorCode::Handler));

    let stats = manager.get_performance_stats();
    assert_eq!(stats.messages_processed, 5);
    assert_eq!(stats.errors["not_found"], 1);
    assert_eq!(stats.errors["handler"], 1);
    assert_eq!(stats.errors["bad_request"], 0);
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.active_workers, 0);
    assert!(stats.avg_processing_time > Duration::ZERO);
    assert_eq!(stats.connections_active, 1);
}

#[tokio::test]
async fn stats_show_calls_in_flight() {
    let (manager, addr) = start_test_server().await;
    let client = client_for(addr);
    let call = tokio::spawn(async move {
        client
            .call(SERVICE, "sleep", json!({"ms": 500, "tag": "x"}))
            .await
    });
    let mut seen = false;
    for _ in 0..100 {
        let stats = manager.get_performance_stats();
        if stats.in_flight == 1 && stats.active_workers == 1 {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(seen, "the running call never showed in the stats");
    call.await.unwrap().unwrap();
    assert_eq!(manager.get_performance_stats().in_flight, 0);
}

async fn futures_join_all<T>(
    handles: impl IntoIterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}
