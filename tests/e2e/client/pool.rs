//! The connection pool: bounded under load, idle connections closed, figures reported.

use crate::common;

use std::time::Duration;

use common::{client_builder_for, SERVICE};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_callers_stay_within_the_pool_bounds() {
    let (manager, addr) = common::start_test_server().await;
    let client = client_builder_for(addr).max_transports(3).build();
    let callers: Vec<_> = (0..1000)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let value = client
                    .call(SERVICE, "sleep", json!({"ms": 20, "tag": i.to_string()}))
                    .await?;
                assert_eq!(value, json!(i.to_string()));
                Ok::<_, vsp::VspError>(())
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap().unwrap();
    }
    let stats = client.pool_stats();
    assert!((1..=3).contains(&stats.created), "{stats:?}");
    assert_eq!(stats.created + stats.reused, 1000);
    assert!(manager.get_performance_stats().connections_total <= 3);
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let (manager, addr) = common::start_test_server().await;
    let client = client_builder_for(addr)
        .idle_timeout(Duration::from_millis(100))
        .build();
    common::assert_echo(&client, 1).await;
    let endpoint = format!("127.0.0.1:{}", addr.port());
    assert_eq!(client.open_connections(&endpoint), 1);
    for _ in 0..500 {
        if client.pool_stats().active == 0
            && manager.get_performance_stats().connections_active == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = client.pool_stats();
    assert_eq!((stats.created, stats.closed, stats.active), (1, 1, 0));
    assert_eq!(manager.get_performance_stats().connections_active, 0);
    // The next call opens a new one.
    common::assert_echo(&client, 2).await;
    assert_eq!(client.pool_stats().created, 2);
}

#[tokio::test]
async fn the_mesh_shows_each_instances_calls_in_flight() {
    let (_manager, addr) = common::start_test_server().await;
    let client = client_builder_for(addr).build();
    let call = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .call(SERVICE, "sleep", json!({"ms": 300, "tag": "x"}))
                .await
        })
    };
    let mut seen = 0;
    for _ in 0..100 {
        seen = client.mesh().instances(SERVICE)[0].in_flight;
        if seen == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(seen, 1);
    call.await.unwrap().unwrap();
    let state = &client.mesh().instances(SERVICE)[0];
    assert_eq!(state.in_flight, 0);
    assert!(state.latency >= Duration::from_millis(250), "{state:?}");
    assert_eq!(state.info.weight(), 1.0);
}

/// `concurrency` callers of a 20 ms `sleep` at once; the client's pool stats after.
async fn sleep_calls_at_once(client: &vsp::VspClient, concurrency: usize) -> vsp::PoolStats {
    let callers: Vec<_> = (0..concurrency)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .call(SERVICE, "sleep", json!({"ms": 20, "tag": i.to_string()}))
                    .await
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap().unwrap();
    }
    client.pool_stats()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_opens_only_when_the_first_is_saturated() {
    let (_manager, addr) = common::start_test_server().await;
    // 64 calls at once fit one connection: a second would only split its batches.
    let client = client_builder_for(addr).build();
    let stats = sleep_calls_at_once(&client, 64).await;
    assert_eq!(
        stats.created, 1,
        "64 calls in flight opened more than one connection: {stats:?}"
    );
    // With room for 8 calls per connection, 40 at once saturate one: more open, up to the limit,
    // and no call is refused.
    let client = client_builder_for(addr)
        .max_in_flight_per_connection(8)
        .max_transports(5)
        .build();
    let stats = sleep_calls_at_once(&client, 40).await;
    assert!(
        (2..=5).contains(&stats.created),
        "a saturated connection did not open another (or opened too many): {stats:?}"
    );
}
