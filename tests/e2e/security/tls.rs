//! TLS and mutual TLS over real loopback TCP, with certificates made at test time: round trips,
//! identities, every failure a user meets (each naming its reason), reload, and discovery's
//! `tls` flag.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use vsp::tls::{
    ClientTls, ClientTlsConfig, ExpectedIdentity, ServerTls, ServerTlsConfig, TlsConnector,
    TlsListener,
};
use vsp::transport::TcpListener;
use vsp::{Context, HealthStatus, ServiceInfo, ServiceMesh, VspClient, VspError, VspManager};
use vsp_test_support::fake_consul::CheckStatus;
use vsp_test_support::pki::{Ca, Issued, TRUST_DOMAIN};

const SERVICE: &str = "user-service";

/// A TLS server of `SERVICE` whose `whoami` answers with the caller's identity.
async fn tls_server(tls: ServerTls, builder: vsp::VspManagerBuilder) -> (VspManager, SocketAddr) {
    let manager = builder.build();
    manager
        .endpoint("whoami", |_: Value| async move {
            let cx = Context::current().unwrap();
            Ok::<_, String>(json!({ "identity": cx.identity().map(|i| i.to_string()) }))
        })
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1", 0).await.unwrap();
    let addr = listener.socket_addr();
    manager
        .start_server_on(TlsListener::new(listener, tls))
        .await
        .unwrap();
    (manager, addr)
}

fn server_tls(cert: &Issued) -> ServerTls {
    ServerTls::new(
        ServerTlsConfig::from_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn mesh_with(addr: SocketAddr, tls: bool) -> ServiceMesh {
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new(SERVICE, "127.0.0.1", addr.port()).with_tls(tls))
        .unwrap();
    mesh
}

fn tls_client(addr: SocketAddr, config: ClientTlsConfig) -> VspClient {
    VspClient::builder(mesh_with(addr, true))
        .timeout(Duration::from_secs(20))
        .connector(TlsConnector::new(ClientTls::new(config).unwrap()))
        .build()
}

fn trusting(ca: &Ca) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_pem(ca.cert_pem.as_bytes())
        .unwrap()
}

/// The call's error, within a bound far below the client's 20 s deadline: a TLS failure must
/// fail the call at once, not at its deadline.
async fn call_error(client: &VspClient) -> String {
    let call = client.call(SERVICE, "whoami", json!({}));
    let outcome = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("a TLS failure waited for the call's deadline instead of failing at once");
    let err = outcome.expect_err("the call should fail");
    assert!(!matches!(err, VspError::Timeout { .. }), "{err}");
    err.to_string()
}

#[tokio::test]
async fn a_tls_call_round_trips_over_pooled_connections() {
    let ca = Ca::new("ca-round-trip");
    let (manager, addr) =
        tls_server(server_tls(&ca.issue(SERVICE)), VspManager::builder(SERVICE)).await;
    let client = tls_client(addr, trusting(&ca));
    let seen = client.call(SERVICE, "whoami", json!({})).await.unwrap();
    assert_eq!(
        seen["identity"],
        Value::Null,
        "no client certificate, no identity"
    );
    // Many calls, one pool: TLS connections multiplex as TCP ones do.
    let calls = (0..200).map(|_| client.call(SERVICE, "whoami", json!({})));
    for outcome in futures::future::join_all(calls).await {
        outcome.unwrap();
    }
    assert!(client.pool_stats().created <= 5);
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_without_a_certificate_is_served_by_a_server_that_only_asks_for_one() {
    let ca = Ca::new("ca-optional");
    let server_cert = ca.issue(SERVICE);
    let tls = ServerTls::new(
        ServerTlsConfig::from_pem_files(&server_cert.cert_file, &server_cert.key_file)
            .unwrap()
            .request_client_cert_file(&ca.cert_file)
            .unwrap(),
    )
    .unwrap();
    let (manager, addr) = tls_server(tls, VspManager::builder(SERVICE)).await;
    // Without a certificate: served, with no identity, and the instance stays in.
    let anonymous = tls_client(addr, trusting(&ca));
    for _ in 0..3 {
        let seen = anonymous.call(SERVICE, "whoami", json!({})).await.unwrap();
        assert_eq!(seen["identity"], Value::Null);
    }
    // With one: its identity is seen.
    let orders = ca.issue("order-service");
    let known = tls_client(
        addr,
        trusting(&ca)
            .client_cert_files(&orders.cert_file, &orders.key_file)
            .unwrap(),
    );
    let seen = known.call(SERVICE, "whoami", json!({})).await.unwrap();
    assert_eq!(
        seen["identity"],
        format!("spiffe://{TRUST_DOMAIN}/order-service")
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn mutual_tls_shows_the_callers_identity_and_refuses_callers_without_a_good_certificate() {
    let ca = Ca::new("ca-mtls");
    let server_cert = ca.issue(SERVICE);
    let tls = ServerTls::new(
        ServerTlsConfig::from_pem_files(&server_cert.cert_file, &server_cert.key_file)
            .unwrap()
            .require_client_cert_file(&ca.cert_file)
            .unwrap(),
    )
    .unwrap();
    let (manager, addr) = tls_server(tls, VspManager::builder(SERVICE)).await;

    let orders = ca.issue("order-service");
    let client = tls_client(
        addr,
        trusting(&ca)
            .client_cert_files(&orders.cert_file, &orders.key_file)
            .unwrap(),
    );
    let seen = client.call(SERVICE, "whoami", json!({})).await.unwrap();
    assert_eq!(
        seen["identity"],
        format!("spiffe://{TRUST_DOMAIN}/order-service")
    );

    // No client certificate: refused, and the error says what is missing.
    let err = call_error(&tls_client(addr, trusting(&ca))).await;
    assert!(err.contains("requires a client certificate"), "{err}");

    // A certificate from another CA: the server refuses the handshake.
    let stranger = Ca::new("ca-stranger").issue("order-service");
    let client = tls_client(
        addr,
        trusting(&ca)
            .client_cert_pem(stranger.cert_pem.as_bytes(), stranger.key_pem.as_bytes())
            .unwrap(),
    );
    let err = call_error(&client).await;
    assert!(
        err.contains("UnknownCA") || err.contains("BadCertificate"),
        "{err}"
    );

    // An expired client certificate from the right CA.
    let expired = ca.issue_expired("order-service");
    let client = tls_client(
        addr,
        trusting(&ca)
            .client_cert_pem(expired.cert_pem.as_bytes(), expired.key_pem.as_bytes())
            .unwrap(),
    );
    let err = call_error(&client).await;
    assert!(err.contains("CertificateExpired"), "{err}");
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn each_server_certificate_failure_names_its_reason() {
    let ca = Ca::new("ca-failures");
    let (good, good_addr) =
        tls_server(server_tls(&ca.issue(SERVICE)), VspManager::builder(SERVICE)).await;

    let err = call_error(&tls_client(good_addr, trusting(&Ca::new("ca-other")))).await;
    assert!(
        err.contains("not signed by a trusted CA (unknown issuer)"),
        "{err}"
    );

    let err = call_error(&tls_client(
        good_addr,
        trusting(&ca).server_name("elsewhere.example"),
    ))
    .await;
    assert!(err.contains("not valid for the name"), "{err}");

    let (expired, expired_addr) = tls_server(
        server_tls(&ca.issue_expired(SERVICE)),
        VspManager::builder(SERVICE),
    )
    .await;
    let err = call_error(&tls_client(expired_addr, trusting(&ca))).await;
    assert!(
        err.contains("the server's certificate has expired"),
        "{err}"
    );
    good.shutdown().await.unwrap();
    expired.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_requires_identities_refuses_an_instance_of_another_service() {
    let ca = Ca::new("ca-identity");
    // A rogue instance: a valid certificate of the fleet, but for order-service, registered in
    // discovery as user-service.
    let (rogue, rogue_addr) = tls_server(
        server_tls(&ca.issue("order-service")),
        VspManager::builder(SERVICE),
    )
    .await;
    let strict = trusting(&ca).require_identity(ExpectedIdentity::spiffe(TRUST_DOMAIN));
    let err = call_error(&tls_client(rogue_addr, strict.clone())).await;
    assert!(
        err.contains(&format!(
            "may not answer for `user-service`: it presented `spiffe://{TRUST_DOMAIN}/order-service`, not `spiffe://{TRUST_DOMAIN}/user-service`"
        )),
        "{err}"
    );

    let (genuine, genuine_addr) =
        tls_server(server_tls(&ca.issue(SERVICE)), VspManager::builder(SERVICE)).await;
    tls_client(genuine_addr, strict)
        .call(SERVICE, "whoami", json!({}))
        .await
        .unwrap();
    let by_dns = trusting(&ca).require_identity(ExpectedIdentity::dns("{service}.example"));
    let err = call_error(&tls_client(genuine_addr, by_dns)).await;
    assert!(err.contains("not `user-service.example`"), "{err}");
    rogue.shutdown().await.unwrap();
    genuine.shutdown().await.unwrap();
}

#[tokio::test]
async fn plaintext_and_tls_mismatches_fail_at_once_saying_tls() {
    let ca = Ca::new("ca-mismatch");
    let (tls, tls_addr) =
        tls_server(server_tls(&ca.issue(SERVICE)), VspManager::builder(SERVICE)).await;
    // A plaintext client (the instance not marked TLS, so it dials).
    let plain = VspClient::builder(mesh_with(tls_addr, false))
        .timeout(Duration::from_secs(20))
        .build();
    let err = call_error(&plain).await;
    assert!(err.contains("this server requires TLS"), "{err}");

    // A TLS client against a plaintext server.
    let plain_server = VspManager::builder(SERVICE).build();
    plain_server
        .endpoint("whoami", |_: Value| async move { Ok::<_, String>("plain") })
        .unwrap();
    let plain_addr = plain_server.start_server("127.0.0.1", 0).await.unwrap();
    let err = call_error(&tls_client(plain_addr, trusting(&ca))).await;
    assert!(err.contains("plaintext VSP server"), "{err}");
    tls.shutdown().await.unwrap();
    plain_server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_peer_that_never_finishes_its_handshake_is_dropped_and_blocks_nobody() {
    let ca = Ca::new("ca-stall");
    let (manager, addr) = tls_server(
        server_tls(&ca.issue(SERVICE)),
        VspManager::builder(SERVICE).handshake_timeout(Duration::from_millis(300)),
    )
    .await;
    // A TLS record header, then nothing.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    // Meanwhile others are served.
    tls_client(addr, trusting(&ca))
        .call(SERVICE, "whoami", json!({}))
        .await
        .unwrap();
    let mut peer = common::RawPeer { stream: stalled };
    assert!(
        peer.is_closed_within(Duration::from_secs(10)).await,
        "the stalled handshake was not dropped"
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn reloaded_certificates_apply_to_new_connections_while_open_ones_carry_on() {
    let old_ca = Ca::new("ca-old");
    let new_ca = Ca::new("ca-new");
    let tls = server_tls(&old_ca.issue(SERVICE));
    let (manager, addr) = tls_server(tls.clone(), VspManager::builder(SERVICE)).await;
    let old_client = tls_client(addr, trusting(&old_ca));
    old_client.call(SERVICE, "whoami", json!({})).await.unwrap();
    assert_eq!(
        old_client.open_connections(&format!("127.0.0.1:{}", addr.port())),
        1
    );

    let renewed = new_ca.issue(SERVICE);
    tls.reload(
        ServerTlsConfig::from_pem(renewed.cert_pem.as_bytes(), renewed.key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    // The open connection keeps working...
    for _ in 0..10 {
        old_client.call(SERVICE, "whoami", json!({})).await.unwrap();
    }
    assert_eq!(
        old_client.pool_stats().created,
        1,
        "still the connection opened before"
    );
    // ...new connections get the new certificate.
    let err = call_error(&tls_client(addr, trusting(&old_ca))).await;
    assert!(err.contains("unknown issuer"), "{err}");
    tls_client(addr, trusting(&new_ca))
        .call(SERVICE, "whoami", json!({}))
        .await
        .unwrap();

    // A bad reload leaves the working settings in place.
    assert!(tls
        .reload(
            ServerTlsConfig::from_pem(
                renewed.cert_pem.as_bytes(),
                old_ca.issue("x").key_pem.as_bytes()
            )
            .unwrap()
        )
        .is_err());
    tls_client(addr, trusting(&new_ca))
        .call(SERVICE, "whoami", json!({}))
        .await
        .unwrap();
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn certificates_rotated_on_disk_are_picked_up() {
    let old_ca = Ca::new("ca-disk-old");
    let new_ca = Ca::new("ca-disk-new");
    let first = old_ca.issue(SERVICE);
    let dir = vsp_test_support::pki::temp_dir("rotation");
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_file, &first.cert_pem).unwrap();
    std::fs::write(&key_file, &first.key_pem).unwrap();
    let tls =
        ServerTls::new(ServerTlsConfig::from_pem_files(&cert_file, &key_file).unwrap()).unwrap();
    let _watch = {
        let (cert_file, key_file) = (cert_file.clone(), key_file.clone());
        tls.reload_on_change(
            vec![cert_file.clone(), key_file.clone()],
            Duration::from_millis(20),
            move || ServerTlsConfig::from_pem_files(&cert_file, &key_file),
        )
    };
    let (manager, addr) = tls_server(tls, VspManager::builder(SERVICE)).await;
    tls_client(addr, trusting(&old_ca))
        .call(SERVICE, "whoami", json!({}))
        .await
        .unwrap();

    let second = new_ca.issue(SERVICE);
    std::fs::write(&key_file, &second.key_pem).unwrap();
    std::fs::write(&cert_file, &second.cert_pem).unwrap();
    // Each attempt is a new client, so a new connection that sees the certificate served now.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Err(err) = tls_client(addr, trusting(&new_ca))
        .call(SERVICE, "whoami", json!({}))
        .await
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after 10 s waiting for the rotated certificate to be served: {err}"
        );
    }
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_plaintext_client_leaves_tls_instances_to_others_without_ejecting_them() {
    let ca = Ca::new("ca-skip");
    let (tls, tls_addr) =
        tls_server(server_tls(&ca.issue(SERVICE)), VspManager::builder(SERVICE)).await;
    let plain_server = VspManager::builder(SERVICE).build();
    plain_server
        .endpoint("whoami", |_: Value| async move {
            Ok::<_, String>(json!({"plain": true}))
        })
        .unwrap();
    let plain_addr = plain_server.start_server("127.0.0.1", 0).await.unwrap();

    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new(SERVICE, "127.0.0.1", tls_addr.port()).with_tls(true))
        .unwrap();
    mesh.register(ServiceInfo::new(SERVICE, "127.0.0.1", plain_addr.port()))
        .unwrap();
    let plain = VspClient::builder(mesh.clone()).build();
    for _ in 0..20 {
        let seen = plain.call(SERVICE, "whoami", json!({})).await.unwrap();
        assert_eq!(seen["plain"], true);
    }
    let tls_instance = mesh
        .instances(SERVICE)
        .into_iter()
        .find(|state| state.info.port() == tls_addr.port())
        .unwrap();
    assert_ne!(tls_instance.info.status(), HealthStatus::Unhealthy);

    // Only TLS instances: the error says why.
    let only_tls = VspClient::builder(mesh_with(tls_addr, true)).build();
    let err = call_error(&only_tls).await;
    assert!(
        err.contains("announces TLS (tls=1) and this client has no TLS configured"),
        "{err}"
    );
    tls.shutdown().await.unwrap();
    plain_server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_tls_server_announces_tls_to_discovery() {
    let ca = Ca::new("ca-announce");
    let consul = vsp_test_support::fake_consul::FakeConsul::start().await;
    let consul_config = || {
        vsp::discovery::ConsulConfig::new(consul.url())
            .check(vsp::discovery::ConsulCheck::Tcp {
                interval: Duration::from_millis(50),
                timeout: Duration::from_millis(200),
            })
            .wait(Duration::from_secs(2))
    };
    let mesh = ServiceMesh::builder()
        .discovery(vsp::discovery::ConsulDiscovery::new(consul_config()))
        .build();
    let (manager, _addr) = tls_server(
        server_tls(&ca.issue(SERVICE)),
        VspManager::builder(SERVICE).mesh(mesh.clone()),
    )
    .await;
    let registrations = consul.registrations();
    let entry = &registrations
        .values()
        .find(|r| r.body["Name"] == SERVICE)
        .expect("the server registered with Consul")
        .body;
    assert_eq!(entry["Meta"]["tls"], "1", "{entry}");
    assert!(
        entry["Tags"].as_array().unwrap().iter().any(|t| t == "tls"),
        "{entry}"
    );
    // A client reading Consul learns it, and dials it with TLS.
    let reader = ServiceMesh::builder()
        .discovery(vsp::discovery::ConsulDiscovery::new(consul_config()))
        .build();
    let client = VspClient::builder(reader.clone())
        .timeout(Duration::from_secs(10))
        .connector(TlsConnector::new(ClientTls::new(trusting(&ca)).unwrap()))
        .build();
    // Consul lists the instance once its TCP check passed; the first call then finds it.
    vsp_test_support::wait_until(
        "Consul's TCP check of the TLS instance to pass",
        Duration::from_secs(10),
        || {
            consul
                .registrations()
                .values()
                .any(|r| r.body["Name"] == SERVICE && r.status == CheckStatus::Passing)
        },
    )
    .await;
    let seen = client.call(SERVICE, "whoami", json!({})).await.unwrap();
    assert_eq!(seen["identity"], Value::Null);
    assert!(reader
        .instances(SERVICE)
        .iter()
        .all(|state| state.info.is_tls()));
    manager.shutdown().await.unwrap();
}

/// The `openssl` recipe of the security docs, run as written: its certificates serve mutual TLS
/// on loopback with no `server_name`, and carry the SPIFFE identity they promise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_openssl_recipe_works_on_loopback_as_written() {
    let Some(openssl) = vsp_test_support::installed_binary(&["/usr/bin/openssl"], "openssl") else {
        return;
    };
    let docs = include_str!("../../../vsp/src/docs/security.md");
    let recipe = docs
        .split("<!-- fleet-certificates -->\n```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the recipe's block, after its marker, in security.md");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fleet-recipe");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bin = openssl.parent().unwrap().display().to_string();
    let recipe = recipe.to_owned();
    let cwd = dir.clone();
    let ran = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", &recipe])
            .current_dir(cwd)
            .env("PATH", format!("{bin}:/usr/bin:/bin"))
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        ran.status.success(),
        "the recipe failed: {}",
        String::from_utf8_lossy(&ran.stderr)
    );

    let file = |name: &str| dir.join(name);
    let server_tls = ServerTls::new(
        ServerTlsConfig::from_pem_files(file("user-service.pem"), file("user-service.key"))
            .unwrap()
            .require_client_cert_file(file("fleet-ca.pem"))
            .unwrap(),
    )
    .unwrap();
    let (server, addr) = tls_server(server_tls, VspManager::builder(SERVICE)).await;
    // A client as a first try writes it: the CA, its own certificate, the address; no name.
    let client_tls = ClientTls::new(
        ClientTlsConfig::new()
            .ca_file(file("fleet-ca.pem"))
            .unwrap()
            .client_cert_files(file("order-service.pem"), file("order-service.key"))
            .unwrap(),
    )
    .unwrap();
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new(SERVICE, "127.0.0.1", addr.port()))
        .unwrap();
    let client = VspClient::builder(mesh)
        .connector(TlsConnector::new(client_tls))
        .build();
    let answer = client.call(SERVICE, "whoami", json!({})).await.unwrap();
    assert_eq!(
        answer["identity"], "spiffe://fleet.example/order-service",
        "{answer}"
    );
    server.shutdown().await.unwrap();
}
