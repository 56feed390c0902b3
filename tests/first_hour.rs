//! What a new user runs into in the first hour (issue 14): the API changes that answer it.

mod common;

use std::net::SocketAddr;

use common::{register_test_endpoints, SERVICE};
use serde_json::json;
use vsp::{HealthStatus, ServiceInfo, ServiceMesh, VspClient, VspError, VspManager};

#[tokio::test]
async fn an_instance_is_healthy_once_a_call_to_it_succeeds() {
    let (manager, addr) = common::start_test_server().await;
    let client = common::client_for(addr);
    let mesh = client.mesh();
    assert_eq!(
        mesh.instances(SERVICE)[0].info.status(),
        HealthStatus::Unknown
    );
    client
        .call(SERVICE, "echo", json!({"value": 1}))
        .await
        .unwrap();
    assert_eq!(
        mesh.instances(SERVICE)[0].info.status(),
        HealthStatus::Healthy
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_user_set_status_is_not_overridden_by_a_success() {
    let (manager, addr) = common::start_test_server().await;
    let client = common::client_for(addr);
    let mesh = client.mesh();
    client
        .call(SERVICE, "echo", json!({"value": 1}))
        .await
        .unwrap();
    mesh.set_status(SERVICE, "127.0.0.1", addr.port(), HealthStatus::Unhealthy);
    assert!(client
        .call(SERVICE, "echo", json!({"value": 2}))
        .await
        .is_err());
    assert_eq!(
        mesh.instances(SERVICE)[0].info.status(),
        HealthStatus::Unhealthy
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_server_started_from_a_socket_addr_tells_its_local_addr() {
    let manager = VspManager::builder(SERVICE).build();
    register_test_endpoints(&manager);
    assert_eq!(manager.local_addr(), None, "an address before starting");
    let wanted: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let bound = manager.start_server_at(&wanted.into()).await.unwrap();
    let local = manager.local_addr().expect("no local_addr once serving");
    assert_eq!(local, bound);
    assert_eq!(local.host(), Some("127.0.0.1"));
    assert_ne!(local.port(), Some(0), "the real port, not the 0 asked for");
    manager.shutdown().await.unwrap();
    assert_eq!(
        manager.local_addr(),
        Some(bound),
        "forgotten after shutdown"
    );
}

#[tokio::test]
async fn a_manager_with_a_static_mesh_is_withdrawn_from_it_by_close() {
    let mesh = ServiceMesh::new();
    let manager = VspManager::builder(SERVICE).mesh(mesh.clone()).build();
    register_test_endpoints(&manager);
    manager.start_server("127.0.0.1", 0).await.unwrap();
    assert_eq!(
        mesh.instances(SERVICE).len(),
        1,
        "not registered into its mesh"
    );
    manager.close().await;
    assert!(
        mesh.instances(SERVICE).is_empty(),
        "still in its mesh after close()"
    );
}

#[tokio::test]
async fn no_healthy_instances_says_what_ejected_them() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new(SERVICE, "127.0.0.1", closed.port()))
        .unwrap();
    let client = VspClient::builder(mesh).build();
    let first = client.call(SERVICE, "echo", json!({"value": 1})).await;
    assert!(matches!(first, Err(VspError::Connect { .. })), "{first:?}");
    let second = client
        .call(SERVICE, "echo", json!({"value": 1}))
        .await
        .unwrap_err();
    match &second {
        VspError::NoHealthyInstances {
            last_failure: Some(cause),
            ..
        } => assert!(cause.contains("cannot connect"), "{cause}"),
        other => panic!("expected NoHealthyInstances with its cause, got {other:?}"),
    }
    assert!(
        second
            .to_string()
            .contains("the last failure: cannot connect"),
        "{second}"
    );
}
