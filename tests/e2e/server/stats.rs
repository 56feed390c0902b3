//! `get_performance_stats()`: per-endpoint figures, the Prometheus text, and switching stats off.

use crate::common;

use std::time::Duration;

use common::{client_for, SERVICE};
use serde_json::json;
use vsp::VspManager;

#[tokio::test]
async fn each_endpoint_has_its_calls_errors_and_percentiles() {
    let (manager, addr) = common::start_test_server().await;
    let client = client_for(addr);
    for _ in 0..10 {
        client
            .call(SERVICE, "sleep", json!({"ms": 20, "tag": "t"}))
            .await
            .unwrap();
    }
    client.call(SERVICE, "fail", json!({})).await.unwrap_err();
    client.call(SERVICE, "health", json!({})).await.unwrap();

    let stats = manager.get_performance_stats();
    let sleep = &stats.endpoints["sleep"];
    assert_eq!((sleep.calls, sleep.errors), (10, 0));
    // Every call slept 20 ms, so both percentiles are at least that (buckets are within 1/16).
    assert!(sleep.p50 >= Duration::from_millis(19), "{:?}", sleep.p50);
    assert!(sleep.p99 >= sleep.p50);
    assert_eq!(
        (
            stats.endpoints["fail"].calls,
            stats.endpoints["fail"].errors
        ),
        (1, 1)
    );
    assert_eq!(stats.endpoints["health"].calls, 1);
    assert_eq!(stats.endpoints["echo"].calls, 0);
    assert_eq!(stats.service, SERVICE);
}

#[tokio::test]
async fn the_prometheus_text_carries_the_same_figures() {
    let (manager, addr) = common::start_test_server().await;
    let client = client_for(addr);
    common::assert_echo(&client, 1).await;
    client.call(SERVICE, "nope", json!({})).await.unwrap_err();

    let text = manager.get_performance_stats().to_prometheus();
    for line in [
        r#"vsp_messages_processed_total{service="test-service"} 2"#,
        r#"vsp_errors_total{service="test-service",code="not_found"} 1"#,
        r#"vsp_endpoint_calls_total{service="test-service",endpoint="echo"} 1"#,
        r#"vsp_connections_active{service="test-service"} 1"#,
        "# TYPE vsp_endpoint_processing_seconds summary",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(text.contains(r#"vsp_endpoint_processing_seconds{service="test-service",endpoint="echo",quantile="0.99"} "#));
    // Every sample line is `name{labels} number`.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').unwrap();
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad sample value in {line:?}"));
    }
}

#[tokio::test]
async fn with_stats_off_calls_are_not_timed_but_draining_still_works() {
    let manager = VspManager::builder(SERVICE).stats(false).build();
    common::register_test_endpoints(&manager);
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let client = client_for(addr);
    common::assert_echo(&client, 1).await;
    let call = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .call(SERVICE, "sleep", json!({"ms": 200, "tag": "x"}))
                .await
        })
    };
    common::wait_in_flight(&manager, 1).await;
    let stats = manager.get_performance_stats();
    assert_eq!(stats.messages_processed, 0);
    assert_eq!(stats.endpoints["echo"].calls, 0);
    manager.shutdown().await.unwrap();
    assert_eq!(call.await.unwrap().unwrap(), json!("x"));
}
