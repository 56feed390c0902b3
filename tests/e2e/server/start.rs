//! Starting a server: its local address, and a manager withdrawn from its static mesh by
//! `close`.

use std::net::SocketAddr;

use crate::common::*;
use vsp::{ServiceMesh, VspManager};

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
