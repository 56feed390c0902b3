//! The standalone `user_service` example: it serves, answers, and stops gracefully on SIGTERM.

use crate::common;

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use vsp::{Address, ServiceInfo, ServiceMesh, VspClient};

/// Starts the example on `addr`; returns it, its first line (`listening on ...`), and the rest of
/// its output once it exits (read to the end, so later output never hits a closed pipe).
async fn start_user_service(
    addr: &str,
) -> (
    std::process::Child,
    String,
    tokio::task::JoinHandle<Vec<String>>,
) {
    start_user_service_with(&["--addr", addr]).await
}

/// As `start_user_service`, with any arguments.
async fn start_user_service_with(
    args: &[&str],
) -> (
    std::process::Child,
    String,
    tokio::task::JoinHandle<Vec<String>>,
) {
    common::start_example("user_service", args).await
}

/// Sends SIGTERM and checks the example drains, says so, and exits cleanly.
async fn stop_gracefully(
    mut child: std::process::Child,
    output: tokio::task::JoinHandle<Vec<String>>,
) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .expect("user_service did not exit after SIGTERM")
    .unwrap()
    .unwrap();
    assert!(exit.success(), "user_service exited with {exit}");
    assert_eq!(output.await.unwrap(), ["shutting down"]);
}

#[tokio::test]
async fn user_service_serves_and_stops_gracefully_on_sigterm() {
    let (child, line, output) = start_user_service("127.0.0.1:0").await;
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();

    let client = client_getting_user_123(Address::tcp("127.0.0.1", addr.port())).await;
    let created = client
        .call(
            "user-service",
            "create_user",
            json!({"name": "Ada", "email": "ada@example.com"}),
        )
        .await
        .unwrap();
    let updated = client
        .call(
            "user-service",
            "update_user",
            json!({"user_id": created["id"], "email": "ada@lovelace.org"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (updated["name"].as_str(), updated["email"].as_str()),
        (Some("Ada"), Some("ada@lovelace.org"))
    );

    stop_gracefully(child, output).await;
}

#[tokio::test]
async fn user_service_serves_on_a_unix_socket_and_removes_it_on_exit() {
    let dir = std::env::temp_dir().join(format!("vsp-example-unix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // The socket's directory does not exist yet: the example makes it, as systemd would.
    let path = dir.join("run/vsp/user.sock");
    let address = format!("unix:{}", path.display());
    let (child, line, output) = start_user_service(&address).await;
    assert_eq!(line.trim(), format!("listening on {address}"));

    client_getting_user_123(address.parse().unwrap()).await;

    stop_gracefully(child, output).await;
    assert!(!path.exists(), "the socket file is removed on exit");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client of the `user-service` at `address`, after checking it serves `get_user` for 123.
async fn client_getting_user_123(address: Address) -> VspClient {
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::at("user-service", address))
        .unwrap();
    let client = VspClient::builder(mesh).build();
    let user = client
        .call("user-service", "get_user", json!({"user_id": "123"}))
        .await
        .unwrap();
    assert_eq!(user["name"], "John Doe");
    client
}

#[tokio::test]
async fn user_service_serves_mutual_tls_and_wants_its_token() {
    use vsp::tls::{ClientTls, ClientTlsConfig, TlsConnector};
    use vsp_test_support::pki::Ca;

    let ca = Ca::new("example-ca");
    let server = ca.issue("user-service");
    let (cert, key, ca_file) = (
        server.cert_file.to_string_lossy().into_owned(),
        server.key_file.to_string_lossy().into_owned(),
        ca.cert_file.to_string_lossy().into_owned(),
    );
    let (child, line, output) = start_user_service_with(&[
        "--addr",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca_file,
        "--auth-token",
        "s3cret",
    ])
    .await;
    let address: Address = line.strip_prefix("listening on ").unwrap().parse().unwrap();
    let caller = ca.issue("order-service");
    let tls = ClientTls::new(
        ClientTlsConfig::new()
            .ca_file(&ca.cert_file)
            .unwrap()
            .client_cert_files(&caller.cert_file, &caller.key_file)
            .unwrap(),
    )
    .unwrap();
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::at("user-service", address.clone()).with_tls(true))
        .unwrap();
    let client = VspClient::builder(mesh)
        .connector(TlsConnector::new(tls))
        .build();
    let err = client
        .call("user-service", "get_user", json!({"user_id": "123"}))
        .await
        .unwrap_err();
    assert_eq!(
        err.remote_code(),
        Some(&vsp::ErrorCode::Unauthenticated),
        "{err}"
    );
    let user = client
        .with_metadata("authorization", "Bearer s3cret")
        .call("user-service", "get_user", json!({"user_id": "123"}))
        .await
        .unwrap();
    assert_eq!(user["name"], "John Doe");
    // Plaintext is refused, saying why.
    let plain = VspClient::builder({
        let mesh = ServiceMesh::new();
        mesh.register(ServiceInfo::at("user-service", address))
            .unwrap();
        mesh
    })
    .build();
    let err = plain
        .call("user-service", "health", json!({}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("requires TLS"), "{err}");
    stop_gracefully(child, output).await;
}

/// The user service's description is its committed contract (`examples/users/contract.json`,
/// written by `vsp describe --json` or with `VSP_UPDATE_CONTRACTS=1`): a change to the trait
/// that callers would see fails here, with the changes classified and the differing lines.
#[test]
fn the_user_service_matches_its_committed_contract() {
    let manager = vsp::VspManager::builder("user-service").build();
    manager
        .serve(crate::users::UserServiceServer::new(
            crate::users::Users::default(),
        ))
        .unwrap();
    let contract = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/users/contract.json");
    if let Err(drift) = vsp::compat::check_contract(&manager.description(), contract) {
        panic!("{drift}");
    }
}
