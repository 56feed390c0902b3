//! Prometheus metrics for a server and a client, on one `/metrics` endpoint:
//! `cargo run --example metrics -- --listen 127.0.0.1:9464`.
//!
//! It serves `user-service` on a free loopback port, calls it through a `VspClient` a few times a
//! second (a lookup that succeeds, one that fails with the service's typed error), and serves
//! `GET /metrics` over HTTP with the server's figures (`get_performance_stats`) and the client's
//! (`VspClient::metrics`: calls, errors by code, p50/p99, retries, failovers, ejections,
//! connections) in the Prometheus text format. Point a scrape job at it (README,
//! "Observability"). Prints `metrics on http://<addr>/metrics` once ready; stops on Ctrl-C or
//! SIGTERM.
//!
//! Copied into a crate of your own, next to `users/mod.rs`, it needs the Getting started
//! dependencies (README) and:
//! cargo add tokio --features signal,net
//! cargo add axum --no-default-features --features tokio,http1
//! cargo add vsp-rpc --features schema
//! cargo add schemars

mod users;

use std::time::Duration;

use axum::routing::get;
use users::{UserServiceClient, UserServiceServer, Users};
use vsp::{ServiceInfo, ServiceMesh, VspClient, VspManager};

const USAGE: &str = "usage: metrics [--listen HOST:PORT]   (default 127.0.0.1:9464)";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen = "127.0.0.1:9464".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or(USAGE)?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}").into()),
        }
    }

    // The service, and a client of it.
    let manager = VspManager::builder(UserServiceClient::SERVICE_NAME).build();
    manager.serve(UserServiceServer::new(Users::default()))?;
    let addr = manager.start_server("127.0.0.1", 0).await?;
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new(
        UserServiceClient::SERVICE_NAME,
        "127.0.0.1",
        addr.port(),
    ))?;
    let client = VspClient::builder(mesh).build();
    let users = UserServiceClient::new(client.clone());
    let traffic = tokio::spawn(async move {
        loop {
            let _ = users.get_user("123".into()).await;
            let _ = users.get_user("nobody".into()).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    // `/metrics`: both sides in one text.
    let metrics = {
        let manager = manager.clone();
        move || async move {
            let mut text = manager.get_performance_stats().to_prometheus();
            text.push_str(&client.metrics().to_prometheus());
            ([("content-type", "text/plain; version=0.0.4")], text)
        }
    };
    let app = axum::Router::new().route("/metrics", get(metrics));
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|err| format!("cannot listen on {listen}: {err}"))?;
    let stop = stop_signal()?;
    println!("metrics on http://{}/metrics", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.await;
        })
        .await?;
    traffic.abort();
    manager.shutdown().await?;
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM; the handlers are installed when this returns.
#[cfg(unix)]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        Ok(())
    })
}

#[cfg(not(unix))]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    Ok(tokio::signal::ctrl_c())
}
