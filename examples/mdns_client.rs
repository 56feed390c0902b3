//! Finds `user-service` over multicast DNS and calls it:
//! `cargo run --example mdns_client` (with `cargo run --example user_service -- --mdns` running
//! on the same network segment).
//!
//! Copied into a crate of your own, next to `users/mod.rs`, it needs the Getting started
//! dependencies (README) and:
//! cargo add tracing-subscriber --features env-filter
//! cargo add vsp-rpc --features schema
//! cargo add schemars

mod users;

use std::time::Duration;

use users::UserServiceClient;
use vsp::discovery::MdnsDiscovery;
use vsp::{ServiceMesh, VspClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    let mesh = ServiceMesh::builder()
        .discovery(MdnsDiscovery::new().first_resolution_wait(Duration::from_secs(5)))
        .build();
    let users = UserServiceClient::new(VspClient::builder(mesh.clone()).build());

    let user = users.get_user("123".into()).await?;
    println!("get_user -> {user:?}");
    for instance in mesh.instances(UserServiceClient::SERVICE_NAME) {
        println!(
            "found {} (weight {}, {:?})",
            instance.info.address(),
            instance.info.weight(),
            instance.info.status()
        );
    }
    Ok(())
}
