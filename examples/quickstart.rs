//! The quick start: a `user-service` and a client in one process, on loopback.
//!
//! `cargo run --example quickstart`
//!
//! Copied into a crate of your own, next to `users/mod.rs`, it needs the Getting started
//! dependencies (README) and:
//! cargo add serde_json
//! cargo add vsp-rpc --features schema
//! cargo add schemars

mod users;

use serde_json::json;
use users::{UserError, UserServiceClient, UserServiceServer, Users};
use vsp::{CallError, ServiceInfo, ServiceMesh, VspClient, VspManager};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The service: every method of the `UserService` trait becomes an endpoint.
    let manager = VspManager::builder(UserServiceClient::SERVICE_NAME).build();
    manager.serve(UserServiceServer::new(Users::default()))?;
    let addr = manager.start_server("127.0.0.1", 0).await?;
    println!("user-service listening on {addr}");

    // A caller: static discovery on loopback, round robin, pooled multiplexed connections.
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new("user-service", "127.0.0.1", addr.port()))?;
    let client = VspClient::builder(mesh).max_transports(5).build();
    let users = UserServiceClient::new(client.clone());

    let user = users.get_user("123".into()).await?;
    println!("get_user    -> {user:?}");

    let created = users
        .create_user("Ada".into(), "ada@example.com".into())
        .await?;
    println!("create_user -> {created:?}");

    let updated = users
        .update_user(created.id.clone(), Some("Ada Lovelace".into()), None)
        .await?;
    println!("update_user -> {updated:?}");

    match users.get_user("nobody".into()).await {
        Err(CallError::Service(UserError::NotFound { user_id })) => {
            println!("get_user    -> the service says: no user {user_id}")
        }
        other => return Err(format!("expected NotFound, got {other:?}").into()),
    }

    // The dynamic API: same wire, for gateways and callers in other languages.
    let raw = client
        .call("user-service", "get_user", json!({ "user_id": "123" }))
        .await?;
    println!("dynamic     -> {raw}");
    let health = client.call("user-service", "health", json!({})).await?;
    println!("health      -> {health}");

    let stats = manager.get_performance_stats();
    println!("stats       -> {}", serde_json::to_string(&stats)?);

    manager.shutdown().await?;
    Ok(())
}
