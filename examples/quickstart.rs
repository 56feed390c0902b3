//! The quick start: a `user-service` and a client in one process, on loopback.
//!
//! `cargo run --example quickstart`

use std::sync::Arc;

use serde_json::json;
use vsp::{ServiceInfo, ServiceMesh, VspClient, VspError, VspManager};
use vsp_suite::user_service::{self, User, Users, SERVICE};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    // The service: three endpoints on an ephemeral loopback port.
    let manager = VspManager::builder(SERVICE).build();
    user_service::register(&manager, Arc::new(Users::default()))?;
    let addr = manager.start_server("127.0.0.1", 0).await?;
    println!("user-service listening on {addr}");

    // A caller: static discovery on loopback, round robin, pooled connections.
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new(SERVICE, "127.0.0.1", addr.port()))?;
    let client = VspClient::builder(mesh).max_transports(5).build();

    let user: User = client
        .call_typed(SERVICE, "get_user", json!({ "user_id": "123" }))
        .await?;
    println!("get_user    -> {user:?}");

    let created = client
        .call(
            SERVICE,
            "create_user",
            json!({ "name": "Ada", "email": "ada@example.com" }),
        )
        .await?;
    println!("create_user -> {created}");

    let updated = client
        .call(
            SERVICE,
            "update_user",
            json!({ "user_id": created["id"], "name": "Ada Lovelace" }),
        )
        .await?;
    println!("update_user -> {updated}");

    let health = client.call(SERVICE, "health", json!({})).await?;
    println!("health      -> {health}");

    match client
        .call(SERVICE, "get_user", json!({ "user_id": "nobody" }))
        .await
    {
        Err(VspError::Remote { code, message, .. }) => {
            println!("get_user    -> remote error ({code}): {message}")
        }
        other => return Err(format!("expected a remote error, got {other:?}").into()),
    }

    let stats = manager.get_performance_stats();
    println!("stats       -> {}", serde_json::to_string(&stats)?);

    manager.shutdown().await?;
    Ok(())
}
