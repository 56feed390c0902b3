//! The seed's complete example in Rust: an HTTP app whose routes call VSP services.
//!
//! `cargo run --example gateway -- --listen 127.0.0.1:8080 --static user-service=127.0.0.1:9090`
//! (with `cargo run --example user_service` running), then:
//!
//! - `curl 127.0.0.1:8080/users/123`: `GET /users/{user_id}` calls `user-service/get_user`;
//! - `curl -X POST 127.0.0.1:8080/orders -d '{"user_id":"123","item":"book"}'`: `POST /orders`
//!   calls `order-service/create_order` with the body;
//! - the generic routes of `vsp::gateway`: `POST /{service}/{endpoint}`, `GET /{service}`,
//!   `GET /openapi.json`, and the service explorer at `http://127.0.0.1:8080/`.
//!
//! Discovery like the CLI's: `--static NAME=HOST:PORT` (repeatable), `--mdns`, or
//! `--consul AGENT_URL`. The services exposed are `user-service`, `order-service` and every
//! `--static` name, or those given with `--service NAME` (repeatable). Prints
//! `listening on <addr>` once ready; on Ctrl-C or SIGTERM it stops taking connections, finishes
//! the requests in flight, and exits.
//!
//! Copied into a crate of your own, it needs the Getting started dependencies (README) and:
//! cargo add vsp-rpc --features gateway,schema
//! cargo add schemars
//! cargo add axum --no-default-features --features tokio,http1,json
//! cargo add tokio --features signal
//! cargo add serde_json
//! cargo add tracing-subscriber --features env-filter

mod users;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use users::{UserError, UserServiceClient};
use vsp::discovery::{ConsulConfig, ConsulDiscovery, MdnsDiscovery};
use vsp::{CallError, ServiceInfo, ServiceMesh, VspClient, VspError};

const USAGE: &str = "usage: gateway [--listen HOST:PORT] [--static NAME=HOST:PORT ... | --mdns | --consul AGENT_URL]
               [--service NAME ...]   (default --listen 127.0.0.1:8080)";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    let mut listen = "127.0.0.1:8080".to_owned();
    let mut statics: Vec<(String, String)> = Vec::new();
    let mut mdns = false;
    let mut consul: Option<String> = None;
    let mut services: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or(USAGE)?,
            "--mdns" => mdns = true,
            "--consul" => consul = Some(args.next().ok_or(USAGE)?),
            "--service" => services.push(args.next().ok_or(USAGE)?),
            "--static" => {
                let value = args.next().ok_or(USAGE)?;
                let (name, addr) = value.split_once('=').ok_or_else(|| {
                    format!("bad --static {value}: expected NAME=HOST:PORT\n{USAGE}")
                })?;
                statics.push((name.to_owned(), addr.to_owned()));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}").into()),
        }
    }
    if usize::from(mdns) + usize::from(consul.is_some()) + usize::from(!statics.is_empty()) > 1 {
        return Err(format!("--static, --mdns and --consul exclude each other\n{USAGE}").into());
    }

    let mesh = if mdns {
        ServiceMesh::builder()
            .discovery(MdnsDiscovery::new())
            .build()
    } else if let Some(agent) = consul {
        let discovery = ConsulDiscovery::new(ConsulConfig::new(agent));
        ServiceMesh::builder().discovery(discovery).build()
    } else {
        ServiceMesh::new()
    };
    for (name, addr) in &statics {
        let address: vsp::Address = addr
            .parse()
            .map_err(|err| format!("bad --static {name}={addr}: {err}\n{USAGE}"))?;
        mesh.register(ServiceInfo::at(name.as_str(), address))?;
    }
    if services.is_empty() {
        services = vec!["user-service".to_owned(), "order-service".to_owned()];
        for (name, _) in &statics {
            if !services.contains(name) {
                services.push(name.clone());
            }
        }
    }
    let client = VspClient::builder(mesh).build();

    // The app's own routes, then the generic gateway's.
    let app = Router::new()
        .route("/users/{user_id}", get(get_user))
        .route("/orders", post(create_order))
        .with_state(Arc::new(client.clone()))
        .merge(vsp::gateway::router(client, services));

    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|err| format!("cannot bind {listen}: {err}"))?;
    // Listening for the signals before saying so: a SIGTERM right after the line still drains.
    let stop = stop_signal()?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.await;
            println!("shutting down");
        })
        .await?;
    Ok(())
}

/// `GET /users/{user_id}`: `user-service/get_user` through its typed client, as the seed's
/// `@app.get("/users/{user_id}")`; an unknown user is `404`.
async fn get_user(State(client): State<Arc<VspClient>>, Path(user_id): Path<String>) -> Response {
    let users = UserServiceClient::new(VspClient::clone(&client));
    match users.get_user(user_id).await {
        Ok(user) => Json(user).into_response(),
        Err(CallError::Service(err @ UserError::NotFound { .. })) => {
            error(StatusCode::NOT_FOUND, "not_found", err.to_string())
        }
        Err(CallError::Vsp(err)) => vsp_error(err),
    }
}

/// `POST /orders`: `order-service/create_order` with the request's JSON body.
async fn create_order(State(client): State<Arc<VspClient>>, body: Bytes) -> Response {
    let order: Value = match serde_json::from_slice(&body) {
        Ok(order) => order,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the body is not JSON: {err}"),
            )
        }
    };
    match client.call("order-service", "create_order", order).await {
        Ok(created) => (StatusCode::CREATED, Json(created)).into_response(),
        Err(err) => vsp_error(err),
    }
}

/// A failed call, with the status the generic routes would give it.
fn vsp_error(err: VspError) -> Response {
    let status = match &err {
        VspError::Remote { code, .. } => match code.as_str() {
            "not_found" => StatusCode::NOT_FOUND,
            "bad_request" => StatusCode::BAD_REQUEST,
            "unauthenticated" => StatusCode::UNAUTHORIZED,
            "permission_denied" => StatusCode::FORBIDDEN,
            "overloaded" | "shutting_down" => StatusCode::SERVICE_UNAVAILABLE,
            "timeout" => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        },
        VspError::NoInstances { .. } | VspError::NoHealthyInstances { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        VspError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    error(status, err.error_type(), err.to_string())
}

/// `{"error": {"code", "message"}}`, as the generic routes say it.
fn error(status: StatusCode, code: &str, message: String) -> Response {
    let body = json!({ "error": { "code": code, "message": message } });
    (status, Json(body)).into_response()
}

/// Resolves on the first SIGINT or SIGTERM; the handlers are installed when this returns.
#[cfg(unix)]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        Ok(())
    })
}

/// Resolves on the first Ctrl-C (there is no SIGTERM outside Unix).
#[cfg(not(unix))]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    Ok(tokio::signal::ctrl_c())
}
