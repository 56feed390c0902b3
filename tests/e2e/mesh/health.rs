//! An instance's health as calls see it: healthy once a call succeeds, a status the user set
//! kept, and what ejected the instances named when none is left.

use crate::common::{self, *};
use serde_json::json;
use vsp::{HealthStatus, ServiceInfo, ServiceMesh, VspClient, VspError};

#[tokio::test]
async fn an_instance_is_healthy_once_a_call_to_it_succeeds() {
    let (manager, addr) = common::start_test_server().await;
    let client = common::client_for(addr);
    let mesh = client.mesh();
    assert_eq!(
        mesh.instances(SERVICE)[0].info.status(),
        HealthStatus::Unknown
    );
    assert_echo(&client, 1).await;
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
    assert_echo(&client, 1).await;
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
