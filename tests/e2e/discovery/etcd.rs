//! etcd discovery and registration against a real etcd started by the test (Debian's
//! `etcd-server`) on free loopback ports in a temporary data directory.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use vsp::discovery::{EtcdConfig, EtcdDiscovery};
use vsp::{ServiceMesh, VspClient, VspError, VspManager, WeightedBalancer};
use vsp_test_support::etcd::{etcd_binary, Etcd};
use vsp_test_support::wait_until;

const BOUND: Duration = Duration::from_secs(10);

fn etcd_mesh(etcd: &Etcd) -> ServiceMesh {
    ServiceMesh::builder()
        .discovery(EtcdDiscovery::new(
            EtcdConfig::new(etcd.url()).ttl(Duration::from_secs(3)),
        ))
        .load_balancer(WeightedBalancer::new())
        .build()
}

/// A `users` server registered in etcd with `weight`, whose `whoami` counts its calls.
async fn registered(etcd: &Etcd, weight: f64) -> (VspManager, Arc<AtomicUsize>) {
    let manager = VspManager::builder("users")
        .mesh(etcd_mesh(etcd))
        .weight(weight)
        .build();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    manager
        .endpoint("whoami", move |_: Value| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                Ok::<_, VspError>(json!("ok"))
            }
        })
        .unwrap();
    manager.start_server("127.0.0.1", 0).await.unwrap();
    (manager, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_instances_are_discovered_weighted_and_withdrawn_at_once() {
    let Some(binary) = etcd_binary() else { return };
    let etcd = Etcd::start(binary).await;
    let (heavy, heavy_calls) = registered(&etcd, 3.0).await;
    let (light, light_calls) = registered(&etcd, 1.0).await;
    let client = VspClient::builder(etcd_mesh(&etcd)).build();
    let mesh = client.mesh().clone();
    wait_until("both registrations discovered", BOUND, || {
        mesh.instances("users").len() == 2
    })
    .await;
    for _ in 0..400 {
        client.call("users", "whoami", json!({})).await.unwrap();
    }
    let (h, l) = (
        heavy_calls.load(Ordering::Relaxed),
        light_calls.load(Ordering::Relaxed),
    );
    assert_eq!(h + l, 400);
    assert!((290..=310).contains(&h), "3:1 weights gave {h}:{l}");

    // A graceful shutdown revokes the lease: gone at once, not after the TTL.
    let started = std::time::Instant::now();
    light.shutdown().await.unwrap();
    wait_until("the withdrawn instance to leave", BOUND, || {
        mesh.instances("users").len() == 1
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "withdrawn in {:?}, not at once",
        started.elapsed()
    );
    heavy.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_value_is_skipped_and_the_rest_served() {
    let Some(binary) = etcd_binary() else { return };
    let etcd = Etcd::start(binary).await;
    etcd.put("/vsp/services/users/garbage", "not json").await;
    etcd.put("/vsp/services/users/no-address", r#"{"weight":2}"#)
        .await;
    let (server, _) = registered(&etcd, 1.0).await;
    let client = VspClient::builder(etcd_mesh(&etcd)).build();
    client.call("users", "whoami", json!({})).await.unwrap();
    assert_eq!(client.mesh().instances("users").len(), 1);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restart_keeps_calls_going_and_the_watch_resumes() {
    let Some(binary) = etcd_binary() else { return };
    let mut etcd = Etcd::start(binary).await;
    let (first, _) = registered(&etcd, 1.0).await;
    let client = VspClient::builder(etcd_mesh(&etcd)).build();
    let mesh = client.mesh().clone();
    wait_until("the first registration", BOUND, || {
        mesh.instances("users").len() == 1
    })
    .await;

    // etcd goes away: the last known instance keeps serving.
    etcd.stop();
    for _ in 0..20 {
        client.call("users", "whoami", json!({})).await.unwrap();
    }
    // It comes back, and a change is made before the client's watch resumes.
    etcd.restart().await;
    let (second, second_calls) = registered(&etcd, 1.0).await;
    wait_until("the registration made after the restart", BOUND, || {
        mesh.instances("users").len() == 2
    })
    .await;
    for _ in 0..20 {
        client.call("users", "whoami", json!({})).await.unwrap();
    }
    assert!(second_calls.load(Ordering::Relaxed) > 0);
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

/// `examples/user_service --etcd URL` on a free port: registered while it runs.
async fn user_service_in_etcd(
    etcd: &Etcd,
) -> (std::process::Child, tokio::task::JoinHandle<Vec<String>>) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (child, line, output) =
        common::start_example("user_service", &["--addr", &addr, "--etcd", &etcd.url()]).await;
    assert_eq!(line, format!("listening on {addr}"));
    (child, output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_removes_an_instance_at_once_and_kill_9_within_the_ttl() {
    let Some(binary) = etcd_binary() else { return };
    let etcd = Etcd::start(binary).await;
    let client = VspClient::builder(etcd_mesh(&etcd)).build();
    let mesh = client.mesh().clone();

    let (terminated, output) = user_service_in_etcd(&etcd).await;
    wait_until("the example's registration", BOUND, || {
        mesh.instances("user-service").len() == 1
    })
    .await;
    let user = client
        .call("user-service", "get_user", json!({"user_id": "123"}))
        .await
        .unwrap();
    assert_eq!(user["name"], "John Doe");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &terminated.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = std::time::Instant::now();
    wait_until("the SIGTERMed instance to leave", BOUND, || {
        mesh.instances("user-service").is_empty()
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "left after {:?}: a graceful stop revokes its lease",
        started.elapsed()
    );
    drop(output);

    // Killed outright, it cannot revoke: its lease (10 s) expires.
    let (mut killed, _output) = user_service_in_etcd(&etcd).await;
    wait_until("the second registration", BOUND, || {
        mesh.instances("user-service").len() == 1
    })
    .await;
    killed.kill().unwrap();
    killed.wait().unwrap();
    wait_until(
        "the killed instance's lease to expire (TTL 10 s)",
        Duration::from_secs(20),
        || mesh.instances("user-service").is_empty(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_etcd_fails_registration_clearly_and_callers_wait_then_say_why() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mesh = || {
        ServiceMesh::builder()
            .discovery(EtcdDiscovery::new(
                EtcdConfig::new(url.clone()).first_resolution_wait(Duration::from_millis(300)),
            ))
            .build()
    };
    let manager = VspManager::builder("users").mesh(mesh()).build();
    let err = manager.start_server("127.0.0.1", 0).await.unwrap_err();
    match &err {
        VspError::Discovery { backend, reason } => {
            assert_eq!(*backend, "etcd");
            assert!(reason.contains(&url), "names the endpoint: {reason}");
        }
        other => panic!("expected a discovery error, got {other:?}"),
    }
    let client = VspClient::builder(mesh()).build();
    let err = client.call("users", "whoami", json!({})).await.unwrap_err();
    assert!(
        err.to_string().contains("etcd") && err.to_string().contains("never answered"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_reach_an_etcd_with_authentication_on() {
    let Some(binary) = etcd_binary() else { return };
    let etcd = Etcd::start(binary).await;
    // root with a password, then authentication on (etcd's JSON gateway, as etcdctl would).
    let user = r#"{"name":"root","password":"s3cret"}"#;
    assert!(etcd
        .post("/v3/auth/user/add", user)
        .await
        .unwrap()
        .contains("header"));
    let grant = r#"{"user":"root","role":"root"}"#;
    assert!(etcd
        .post("/v3/auth/user/grant", grant)
        .await
        .unwrap()
        .contains("header"));
    assert!(etcd
        .post("/v3/auth/enable", "{}")
        .await
        .unwrap()
        .contains("header"));
    let with = |password: &str| {
        ServiceMesh::builder()
            .discovery(EtcdDiscovery::new(
                EtcdConfig::new(etcd.url())
                    .credentials("root", password)
                    .first_resolution_wait(Duration::from_millis(500)),
            ))
            .build()
    };
    let manager = VspManager::builder("users").mesh(with("s3cret")).build();
    manager
        .endpoint("whoami", |_: Value| async move {
            Ok::<_, VspError>(json!("ok"))
        })
        .unwrap();
    manager.start_server("127.0.0.1", 0).await.unwrap();
    let client = VspClient::builder(with("s3cret")).build();
    client.call("users", "whoami", json!({})).await.unwrap();
    let refused = VspManager::builder("users").mesh(with("wrong")).build();
    let err = refused.start_server("127.0.0.1", 0).await.unwrap_err();
    assert!(err.to_string().contains("refused the credentials"), "{err}");
    manager.shutdown().await.unwrap();
}

/// A free loopback address with nothing listening on it: a member that is down.
fn down_member() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_credentials_a_member_that_is_down_is_passed_over_for_the_next() {
    let Some(binary) = etcd_binary() else { return };
    let etcd = Etcd::start(binary).await;
    etcd.put(
        "/vsp/services/users/127.0.0.1:7001",
        r#"{"address":"127.0.0.1:7001"}"#,
    )
    .await;
    // Authentication on, with a root user (etcd's own API).
    for (path, body) in [
        (
            "/v3/auth/user/add",
            r#"{"name":"root","password":"s3cret"}"#,
        ),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
        ("/v3/auth/enable", "{}"),
    ] {
        let answer = etcd.post(path, body).await.unwrap();
        assert!(answer.contains("header"), "etcd refused {path}: {answer}");
    }
    let mesh = ServiceMesh::builder()
        .discovery(EtcdDiscovery::new(
            EtcdConfig::new(down_member())
                .member(etcd.url())
                .credentials("root", "s3cret"),
        ))
        .build();
    // Asking for the service starts discovery; its answer comes from the second member.
    let _ = mesh.pick("users");
    wait_until(
        "the instance to be discovered through the member that is up",
        Duration::from_secs(30),
        || mesh.instances("users").len() == 1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_member_is_left_for_the_next_and_changes_keep_arriving() {
    let Some(binary) = etcd_binary() else { return };
    let etcd = Etcd::start(binary).await;
    let direct: std::net::SocketAddr = etcd.url().trim_start_matches("http://").parse().unwrap();
    let proxy = vsp_test_support::fault_proxy::FaultProxy::start(direct).await;
    etcd.put(
        "/vsp/services/users/127.0.0.1:7001",
        r#"{"address":"127.0.0.1:7001"}"#,
    )
    .await;
    let mesh = ServiceMesh::builder()
        .discovery(EtcdDiscovery::new(
            EtcdConfig::new(format!("http://{}", proxy.addr())).member(etcd.url()),
        ))
        .build();
    let _ = mesh.pick("users");
    wait_until("the first instance, through the proxy", BOUND, || {
        mesh.instances("users").len() == 1
    })
    .await;
    // The network swallows everything to and from the watched member; its connections stay
    // open. A change made meanwhile must still arrive, through the other member.
    proxy.set(vsp_test_support::fault_proxy::Fault::Blackhole);
    etcd.put(
        "/vsp/services/users/127.0.0.1:7002",
        r#"{"address":"127.0.0.1:7002"}"#,
    )
    .await;
    wait_until(
        "the change made while the watched member was blackholed",
        Duration::from_secs(40),
        || mesh.instances("users").len() == 2,
    )
    .await;
}
