//! Ejection and health: an instance that fails is taken out, probed, and comes back; one that
//! is only slow or busy is not ejected.

use std::time::Duration;

use crate::common::*;
use vsp::{HealthStatus, ServiceInfo, ServiceMesh, VspClient, VspManager};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_client_outliving_the_runtime_that_opened_its_connection_never_hangs() {
    let server_runtime = tokio::runtime::Runtime::new().unwrap();
    let (manager, addr) = server_runtime.block_on(start_test_server());
    // A client kept in a `static` and shared by two `#[tokio::test]`s has exactly this life.
    let client = client_builder_for(addr)
        .timeout(Duration::from_millis(500))
        .build();
    let first = runtime();
    first.block_on(assert_echoes(&client, 2));
    drop(first); // the pooled connection's tasks die with it
    let second = runtime();
    let outcome = second.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(5),
            client.call(SERVICE, "echo", serde_json::json!({ "value": 2 })),
        )
        .await
    });
    let answer = outcome.expect(
        "a call with a 500 ms deadline still waited after 5 s: it was queued on a connection \
         whose tasks died with the runtime that opened it",
    );
    assert_eq!(answer.unwrap(), serde_json::json!(2));
    server_runtime.block_on(manager.shutdown()).unwrap();
}

fn quick_probes() -> vsp::ServiceMeshBuilder {
    ServiceMesh::builder().health_policy(vsp::HealthPolicy {
        failure_threshold: 3,
        base_ejection: Duration::from_millis(50),
        max_ejection: Duration::from_millis(200),
    })
}

fn status_at(mesh: &ServiceMesh, port: u16) -> HealthStatus {
    mesh.instances(SERVICE)
        .into_iter()
        .find(|i| i.info.port() == port)
        .map(|i| i.info.status())
        .expect("the instance left the mesh")
}

/// A test server that was up and is now down; its port is free to start it again.
async fn stopped_server() -> u16 {
    let (manager, addr) = start_test_server().await;
    manager.shutdown().await.unwrap();
    addr.port()
}

async fn restart_on(port: u16) -> VspManager {
    let manager = test_manager();
    manager.start_server("127.0.0.1", port).await.unwrap();
    manager
}

/// A live instance and one that is down, in a mesh with quick probes.
fn live_and_down(live: u16, down: u16) -> ServiceMesh {
    let mesh = quick_probes().build();
    for port in [down, live] {
        mesh.register(ServiceInfo::new(SERVICE, "127.0.0.1", port))
            .unwrap();
    }
    mesh
}

/// Calls through `client` until the down instance has been tried, and checks it was ejected.
async fn eject_the_down_one(client: &VspClient, down: u16) {
    assert_echoes(client, 4).await;
    assert_eq!(status_at(client.mesh(), down), HealthStatus::Unhealthy);
}

#[tokio::test]
async fn an_ejected_instance_comes_back_after_the_client_that_ejected_it_is_dropped() {
    let (_live, live) = start_test_server().await;
    let down = stopped_server().await;
    let mesh = live_and_down(live.port(), down);
    let first = VspClient::builder(mesh.clone()).build();
    eject_the_down_one(&first, down).await;
    drop(first); // its probe used to die with it, leaving the instance out for good
    let _second = VspClient::builder(mesh.clone()).build();
    let back = restart_on(down).await;
    wait_until(
        "the instance to be re-admitted after its ejecting client was dropped",
        Duration::from_secs(10),
        || status_at(&mesh, down) == HealthStatus::Healthy,
    )
    .await;
    back.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_ejected_instance_comes_back_while_discovery_keeps_re_registering_it() {
    let (_live, live) = start_test_server().await;
    let down = stopped_server().await;
    let mesh = live_and_down(live.port(), down);
    let client = VspClient::builder(mesh.clone()).build();
    eject_the_down_one(&client, down).await;
    let back = restart_on(down).await;
    // Consul rewrites every instance on each answer; mDNS on each re-announcement.
    let churn = {
        let mesh = mesh.clone();
        tokio::spawn(async move {
            loop {
                mesh.register(ServiceInfo::new(SERVICE, "127.0.0.1", down))
                    .unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    wait_until(
        "the re-registered instance to be re-admitted",
        Duration::from_secs(10),
        || status_at(&mesh, down) == HealthStatus::Healthy,
    )
    .await;
    churn.abort();
    back.shutdown().await.unwrap();
}

#[test]
fn an_instance_ejected_on_a_runtime_that_shut_down_is_probed_again() {
    let server_runtime = tokio::runtime::Runtime::new().unwrap();
    let (_live, live) = server_runtime.block_on(start_test_server());
    let down = server_runtime.block_on(stopped_server());
    let mesh = live_and_down(live.port(), down);
    let client = VspClient::builder(mesh.clone()).build();
    let first = runtime();
    first.block_on(eject_the_down_one(&client, down));
    drop(first); // the probe task dies here
    let back = server_runtime.block_on(restart_on(down));
    let second = runtime();
    second.block_on(async {
        // A call on the new runtime restarts the client's sweeper, which re-probes orphans.
        assert_echoes(&client, 1).await;
        wait_until(
            "the instance whose probe died with its runtime to be re-admitted",
            Duration::from_secs(10),
            || status_at(&mesh, down) == HealthStatus::Healthy,
        )
        .await;
    });
    server_runtime.block_on(back.shutdown()).unwrap();
}

#[tokio::test]
async fn a_slow_endpoint_never_ejects_its_instance() {
    let (manager, addr) = start_test_server().await;
    let client = client_builder_for(addr)
        .timeout(Duration::from_millis(100))
        .build();
    for _ in 0..5 {
        let slow = client
            .call(
                SERVICE,
                "sleep",
                serde_json::json!({ "ms": 400, "tag": "slow" }),
            )
            .await;
        assert!(
            matches!(slow, Err(vsp::VspError::Timeout { .. })),
            "{slow:?}"
        );
    }
    // Five deadlines passed on one endpoint; the instance answers its other endpoints fine.
    assert_ne!(
        status_at(client.mesh(), addr.port()),
        HealthStatus::Unhealthy
    );
    assert_echoes(&client, 3).await;
    // And the server's own `timeout` answer (the deadline it was told) is no failure either.
    let state = &client.mesh().instances(SERVICE)[0];
    assert_eq!(state.consecutive_failures, 0);
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_instance_the_user_set_unhealthy_stays_out_under_active_health_checks() {
    let (pinned, pinned_addr) = start_test_server().await;
    let (other, other_addr) = start_test_server().await;
    let mesh = ServiceMesh::new();
    for port in [pinned_addr.port(), other_addr.port()] {
        mesh.register(ServiceInfo::new(SERVICE, "127.0.0.1", port))
            .unwrap();
    }
    let client = VspClient::builder(mesh.clone())
        .health_check_interval(Duration::from_millis(10))
        .build();
    assert!(mesh.set_status(
        SERVICE,
        "127.0.0.1",
        pinned_addr.port(),
        HealthStatus::Unhealthy
    ));
    assert_echoes(&client, 1).await; // starts the health checker
    let health_calls = |manager: &VspManager| {
        manager
            .get_performance_stats()
            .endpoints
            .get("health")
            .map_or(0, |e| e.calls)
    };
    // Rounds of checks, counted on the other instance (each round checks every instance).
    wait_until(
        "five rounds of active health checks",
        Duration::from_secs(10),
        || health_calls(&other) >= 5,
    )
    .await;
    assert_eq!(
        status_at(&mesh, pinned_addr.port()),
        HealthStatus::Unhealthy
    );
    assert_eq!(
        health_calls(&pinned),
        0,
        "the checker probed an instance the user took out"
    );
    pinned.shutdown().await.unwrap();
    other.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_overloaded_answer_is_sent_to_another_instance_even_when_not_idempotent() {
    let busy = VspManager::builder(SERVICE)
        .max_concurrent_requests(1)
        .build();
    register_test_endpoints(&busy);
    let busy_addr = busy.start_server("127.0.0.1", 0).await.unwrap();
    let (free, free_addr) = start_test_server().await;
    let holder = client_for(busy_addr);
    let held = held_call(&holder, &busy, 2_000).await;
    let mesh = ServiceMesh::new();
    for port in [busy_addr.port(), free_addr.port()] {
        mesh.register(ServiceInfo::new(SERVICE, "127.0.0.1", port))
            .unwrap();
    }
    let client = VspClient::builder(mesh).build();
    // Round robin sends every other call to the busy instance; it refuses before running.
    assert_echoes(&client, 6).await;
    assert!(held.await.unwrap().is_ok());
    busy.shutdown().await.unwrap();
    free.shutdown().await.unwrap();
}
