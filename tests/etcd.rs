//! etcd discovery and registration against a real etcd started by the test (Debian's
//! `etcd-server`) on free loopback ports in a temporary data directory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use vsp::discovery::{EtcdConfig, EtcdDiscovery};
use vsp::{ServiceMesh, VspClient, VspError, VspManager, WeightedBalancer};
use vsp_test_support::etcd::{etcd_binary, Etcd};
use vsp_test_support::wait_until;

const BOUND: Duration = Duration::from_secs(10);

fn etcd_mesh(etcd: &Etcd) -> ServiceMesh {
    ServiceMesh::builder()
        .discovery(EtcdDiscovery::new(
            EtcdConfig::new(etcd.url()).ttl(Duration::from_secs(3)),
        ))
        .load_balancer(WeightedBalancer::new())
        .build()
}

/// A `users` server registered in etcd with `weight`, whose `whoami` counts its calls.
async fn registered(etcd: &Etcd, weight: f64) -> (VspManager, Arc<AtomicUsize>) {
    let manager = VspManager::builder("users")
        .mesh(etcd_mesh(etcd))
        .weight(weight)
        .build();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    manager
        .endpoint("whoami", move |_: Value| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                Ok::<_, VspError>(json!("ok"))
            }
        })
        .unwrap();
    manager.start_server("127.0.0.1", 0).await.unwrap();
    (manager, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_instances_are_discovered_weighted_and_withdrawn_at_once() {
    let Some(binary) = etcd_binary() else { return };
    let etcd = Etcd::start(binary).await;
    let (heavy, heavy_calls) = registered(&etcd, 3.0).await;
    let (light, light_calls) = registered(&etcd, 1.0).await;
    let client = VspClient::builder(etcd_mesh(&etcd)).build();
    let mesh = client.mesh().clone();
    wait_until("both registrations discovered", BOUND, || {
        mesh.instances("users").len() == 2
    })
    .await;
    for _ in 0..400 {
        client.call("users", "whoami", json!({})).await.unwrap();
    }
    let (h, l) = (
        heavy_calls.load(Ordering::Relaxed),
        light_calls.load(Ordering::Relaxed),
    );
    assert_eq!(h + l, 400);
    assert!((290..=310).contains(&h), "3:1 weights gave {h}:{l}");

    // A graceful shutdown revokes the lease: gone at once, not after the TTL.
    let started = std::time::Instant::now();
    light.shutdown().await.unwrap();
    wait_until("the withdrawn instance to leave", BOUND, || {
        mesh.instances("users").len() == 1
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "withdrawn in {:?}, not at once",
        started.elapsed()
    );
    heavy.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_value_is_skipped_and_the_rest_served() {
    let Some(binary) = etcd_binary() else { return };
    let etcd = Etcd::start(binary).await;
    etcd.put("/vsp/services/users/garbage", "not json").await;
    etcd.put("/vsp/services/users/no-address", r#"{"weight":2}"#)
        .await;
    let (server, _) = registered(&etcd, 1.0).await;
    let client = VspClient::builder(etcd_mesh(&etcd)).build();
    client.call("users", "whoami", json!({})).await.unwrap();
    assert_eq!(client.mesh().instances("users").len(), 1);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restart_keeps_calls_going_and_the_watch_resumes() {
    let Some(binary) = etcd_binary() else { return };
    let mut etcd = Etcd::start(binary).await;
    let (first, _) = registered(&etcd, 1.0).await;
    let client = VspClient::builder(etcd_mesh(&etcd)).build();
    let mesh = client.mesh().clone();
    wait_until("the first registration", BOUND, || {
        mesh.instances("users").len() == 1
    })
    .await;

    // etcd goes away: the last known instance keeps serving.
    etcd.stop();
    for _ in 0..20 {
        client.call("users", "whoami", json!({})).await.unwrap();
    }
    // It comes back, and a change is made before the client's watch resumes.
    etcd.restart().await;
    let (second, second_calls) = registered(&etcd, 1.0).await;
    wait_until("the registration made after the restart", BOUND, || {
        mesh.instances("users").len() == 2
    })
    .await;
    for _ in 0..20 {
        client.call("users", "whoami", json!({})).await.unwrap();
    }
    assert!(second_calls.load(Ordering::Relaxed) > 0);
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}
