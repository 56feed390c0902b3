//! A manager built with a mesh announces itself through that mesh's discovery: with the static
//! list, into the list itself, so in-process callers find it without registering it by hand.

use crate::common;

use common::SERVICE;
use vsp::{ServiceMesh, VspClient, VspManager};

#[tokio::test]
async fn a_manager_announces_itself_and_withdraws_on_shutdown() {
    let mesh = ServiceMesh::new();
    let manager = VspManager::builder(SERVICE)
        .mesh(mesh.clone())
        .weight(2.0)
        .build();
    common::register_test_endpoints(&manager);
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let instances = mesh.instances(SERVICE);
    assert_eq!(instances.len(), 1);
    assert_eq!(
        (instances[0].info.port(), instances[0].info.weight()),
        (addr.port(), 2.0)
    );

    let client = VspClient::builder(mesh.clone()).build();
    common::assert_echo(&client, 1).await;
    manager.shutdown().await.unwrap();
    assert!(mesh.instances(SERVICE).is_empty());
}

#[tokio::test]
async fn the_advertised_host_is_what_callers_dial() {
    let mesh = ServiceMesh::new();
    let manager = VspManager::builder(SERVICE)
        .mesh(mesh.clone())
        .advertise_host("localhost")
        .build();
    common::register_test_endpoints(&manager);
    manager.start_server("127.0.0.1", 0).await.unwrap();
    assert_eq!(mesh.instances(SERVICE)[0].info.host(), "localhost");
    let client = VspClient::builder(mesh).build();
    common::assert_echo(&client, 2).await;
}

#[tokio::test]
async fn a_server_on_every_address_is_announced_on_loopback() {
    let mesh = ServiceMesh::new();
    let manager = VspManager::builder(SERVICE).mesh(mesh.clone()).build();
    common::register_test_endpoints(&manager);
    manager.start_server("0.0.0.0", 0).await.unwrap();
    assert_eq!(mesh.instances(SERVICE)[0].info.host(), "127.0.0.1");
    let client = VspClient::builder(mesh).build();
    common::assert_echo(&client, 3).await;
    manager.shutdown().await.unwrap();
}
