//! Consul discovery and registration, against a fake agent that follows the documented API
//! (no real Consul agent can be installed on these machines; see tests/support).

use std::time::Duration;

use serde_json::{json, Value};
use vsp::discovery::{ConsulCheck, ConsulConfig, ConsulDiscovery};
use vsp::{ServiceMesh, VspClient, VspError, VspManager, WeightedBalancer};
use vsp_test_support::fake_consul::{CheckStatus, FakeConsul};

const SERVICE: &str = "echo-service";

fn config(fake: &FakeConsul) -> ConsulConfig {
    ConsulConfig::new(fake.url())
        .token("s3cr3t")
        .check(ConsulCheck::Tcp {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(200),
        })
        .wait(Duration::from_secs(2))
}

fn consul_mesh(config: ConsulConfig) -> ServiceMesh {
    ServiceMesh::builder()
        .discovery(ConsulDiscovery::new(config))
        .load_balancer(WeightedBalancer::new())
        .build()
}

async fn registered_server(
    fake: &FakeConsul,
    config: ConsulConfig,
    weight: f64,
    port: u16,
) -> VspManager {
    let manager = VspManager::builder(SERVICE)
        .mesh(consul_mesh(config))
        .weight(weight)
        .build();
    manager
        .endpoint("whoami", |_: Value| async { Ok::<_, String>("hi") })
        .unwrap();
    let addr = manager.start_server("127.0.0.1", port).await.unwrap();
    assert!(fake
        .registrations()
        .contains_key(&format!("{SERVICE}-127.0.0.1:{}", addr.port())));
    manager
}

async fn wait_for_instances(mesh: &ServiceMesh, n: usize) {
    for _ in 0..500 {
        if mesh.instances(SERVICE).len() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "expected {n} instances, the mesh has {:?}",
        mesh.instances(SERVICE)
    );
}

fn calls(manager: &VspManager) -> u64 {
    manager.get_performance_stats().endpoints["whoami"].calls
}

/// A client whose mesh watches `SERVICE` from the start.
fn client(fake: &FakeConsul) -> (ServiceMesh, VspClient) {
    let mesh = consul_mesh(config(fake).service(SERVICE));
    (mesh.clone(), VspClient::builder(mesh).build())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_registered_instances_share_calls_by_weight() {
    let fake = FakeConsul::start().await;
    let heavy = registered_server(&fake, config(&fake), 3.0, 0).await;
    let light = registered_server(&fake, config(&fake), 1.0, 0).await;

    // What was registered: ID, name, tags, meta, weights and a TCP check.
    let registration = fake.registrations().into_values().next().unwrap().body;
    assert_eq!(registration["Name"], SERVICE);
    assert_eq!(registration["Tags"], json!(["vsp"]));
    assert_eq!(registration["Meta"]["vsp_version"], "1");
    assert!(registration["Check"]["TCP"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(registration["Check"]["Interval"], "50ms");

    let (mesh, client) = client(&fake);
    wait_for_instances(&mesh, 2).await;
    for _ in 0..400 {
        client.call(SERVICE, "whoami", json!({})).await.unwrap();
    }
    assert_eq!((calls(&heavy), calls(&light)), (300, 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_check_takes_the_instance_out_and_a_passing_one_brings_it_back() {
    let fake = FakeConsul::start().await;
    let tcp = registered_server(&fake, config(&fake), 1.0, 0).await;
    let ttl_config = config(&fake).check(ConsulCheck::Ttl {
        ttl: Duration::from_millis(600),
    });
    let _ttl = registered_server(&fake, ttl_config, 1.0, 0).await;
    let (mesh, _client) = client(&fake);
    wait_for_instances(&mesh, 2).await;

    // The TTL instance's check is failed by hand; its heartbeat (every 200 ms) passes it again.
    let ttl_id = fake
        .registrations()
        .into_iter()
        .find(|(_, r)| r.body["Check"]["TTL"].is_string())
        .unwrap()
        .0;
    fake.set_status(&ttl_id, CheckStatus::Critical);
    wait_for_instances(&mesh, 1).await;
    wait_for_instances(&mesh, 2).await;

    // The TCP instance stops answering: the agent's dial fails and it leaves; back, it returns.
    let tcp_port = fake
        .registrations()
        .into_values()
        .find(|r| r.body["Check"]["TCP"].is_string())
        .unwrap()
        .body["Port"]
        .as_u64()
        .unwrap() as u16;
    tcp.close().await;
    wait_for_instances(&mesh, 1).await;
    let _back = registered_server(&fake, config(&fake), 1.0, tcp_port).await;
    wait_for_instances(&mesh, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deregisters_and_a_new_instance_appears_without_a_restart() {
    let fake = FakeConsul::start().await;
    let first = registered_server(&fake, config(&fake), 1.0, 0).await;
    let (mesh, client) = client(&fake);
    wait_for_instances(&mesh, 1).await;
    first.shutdown().await.unwrap();
    assert!(fake.registrations().is_empty(), "shutdown deregisters");
    wait_for_instances(&mesh, 0).await;

    let second = registered_server(&fake, config(&fake), 1.0, 0).await;
    wait_for_instances(&mesh, 1).await;
    client.call(SERVICE, "whoami", json!({})).await.unwrap();
    assert_eq!(calls(&second), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_consul_stops_answering_calls_go_on_with_the_last_known_instances() {
    let fake = FakeConsul::start().await;
    let server = registered_server(&fake, config(&fake), 1.0, 0).await;
    let (mesh, client) = client(&fake);
    wait_for_instances(&mesh, 1).await;
    fake.stop();
    for _ in 0..20 {
        client.call(SERVICE, "whoami", json!({})).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(calls(&server), 20);
    assert_eq!(mesh.instances(SERVICE).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_carries_the_token_and_blocking_queries_do_not_spin() {
    let fake = FakeConsul::start().await;
    let _server = registered_server(&fake, config(&fake), 1.0, 0).await;
    let (mesh, _client) = client(&fake);
    wait_for_instances(&mesh, 1).await;
    let before = fake.requests().len();
    // Nothing changes for a while: the watch holds one query open instead of asking again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health_queries = fake.requests()[before..]
        .iter()
        .filter(|r| r.path.starts_with("/v1/health/service/"))
        .count();
    assert!(
        health_queries <= 2,
        "{health_queries} health queries in 500 ms without a change"
    );
    let requests = fake.requests();
    assert!(
        requests.iter().any(|r| r.method == "PUT") && requests.iter().any(|r| r.method == "GET")
    );
    for request in requests {
        assert_eq!(
            request.token.as_deref(),
            Some("s3cr3t"),
            "{} {}",
            request.method,
            request.path
        );
    }
}

#[tokio::test]
async fn a_malformed_answer_is_a_clear_error() {
    let fake = FakeConsul::start().await;
    fake.answer_garbage();
    let mesh = consul_mesh(config(&fake).first_resolution_wait(Duration::from_millis(500)));
    let client = VspClient::builder(mesh).build();
    match client.call(SERVICE, "whoami", json!({})).await {
        Err(VspError::Discovery {
            backend: "consul",
            reason,
        }) => {
            assert!(reason.contains("malformed answer"), "{reason}");
            assert!(reason.contains(SERVICE), "{reason}");
        }
        other => panic!("expected a Consul error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_agent_that_never_answered_is_named_in_the_error() {
    let port = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = ConsulConfig::new(format!("http://127.0.0.1:{port}"))
        .first_resolution_wait(Duration::from_millis(300));
    let client = VspClient::builder(consul_mesh(config)).build();
    let err = client.call(SERVICE, "whoami", json!({})).await.unwrap_err();
    assert!(
        matches!(&err, VspError::Discovery { backend: "consul", reason } if reason.contains("never answered")),
        "{err:?}"
    );
}

#[tokio::test]
async fn registering_with_an_unreachable_agent_fails_start_server() {
    let port = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let manager = VspManager::builder(SERVICE)
        .mesh(consul_mesh(ConsulConfig::new(format!(
            "http://127.0.0.1:{port}"
        ))))
        .build();
    let err = manager.start_server("127.0.0.1", 0).await.unwrap_err();
    assert!(
        matches!(
            err,
            VspError::Discovery {
                backend: "consul",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_service_example_registers_and_deregisters() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let fake = FakeConsul::start().await;
    let mut exe = std::env::current_exe().unwrap();
    exe.pop();
    if exe.ends_with("deps") {
        exe.pop();
    }
    let mut server = Command::new(exe.join("examples").join("user_service"))
        .args(["--addr", "127.0.0.1:0", "--consul", &fake.url()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("cargo test builds the examples");
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let first = tokio::task::spawn_blocking(move || {
        let first = lines.next();
        let rest = std::thread::spawn(move || lines.map_while(Result::ok).count());
        (first, rest)
    });
    let (first, rest) = first.await.unwrap();
    let first = first.unwrap().unwrap();
    let port = first.rsplit(':').next().unwrap().to_owned();
    let registered = fake.registrations();
    assert_eq!(registered.len(), 1);
    let body = &registered.values().next().unwrap().body;
    assert_eq!(
        (body["Name"].as_str(), body["Port"].to_string()),
        (Some("user-service"), port)
    );

    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    rest.join().unwrap();
    assert!(fake.registrations().is_empty(), "deregistered on exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_consul_lists_without_instances_fails_at_once() {
    let fake = FakeConsul::start().await;
    // A first call may wait 30 s for Consul; Consul answers "none" in milliseconds.
    let mesh = consul_mesh(config(&fake).first_resolution_wait(Duration::from_secs(30)));
    let client = VspClient::builder(mesh.clone()).build();
    for attempt in ["first", "second"] {
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            client.call("ghost-service", "whoami", json!({})),
        )
        .await
        .unwrap_or_else(|_| {
            panic!("the {attempt} call kept waiting after Consul answered that ghost-service has no instance")
        });
        assert!(
            matches!(&answer, Err(VspError::NoInstances { service }) if service == "ghost-service"),
            "{answer:?}"
        );
    }
    // The watch goes on: an instance that registers later is found.
    let manager = VspManager::builder("ghost-service")
        .mesh(consul_mesh(config(&fake)))
        .build();
    manager
        .endpoint("whoami", |_: Value| async { Ok::<_, String>("hi") })
        .unwrap();
    manager.start_server("127.0.0.1", 0).await.unwrap();
    vsp_test_support::wait_until(
        "the late ghost-service instance to be discovered",
        Duration::from_secs(10),
        || !mesh.instances("ghost-service").is_empty(),
    )
    .await;
    client
        .call("ghost-service", "whoami", json!({}))
        .await
        .unwrap();
    manager.shutdown().await.unwrap();
}

/// Watch starts (queries without an index) for `service` so far.
fn watch_starts(fake: &FakeConsul, service: &str) -> usize {
    let path = format!("/v1/health/service/{service}");
    fake.requests()
        .iter()
        .filter(|r| r.path == path && !r.query.contains_key("index"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_nobody_uses_stops_and_the_next_call_starts_it_again() {
    let fake = FakeConsul::start().await;
    let server = registered_server(&fake, config(&fake), 1.0, 0).await;
    {
        // Until its check passes, Consul answers that it has no instance.
        let (passing, _client) = client(&fake);
        wait_for_instances(&passing, 1).await;
    }
    let starts = watch_starts(&fake, SERVICE);
    let quick = config(&fake)
        .wait(Duration::from_millis(100))
        .unused_watch_timeout(Duration::from_millis(300));
    let mesh = consul_mesh(quick);
    let client = VspClient::builder(mesh.clone()).build();
    // In use for four times the timeout: the one watch carries on.
    let busy_since = std::time::Instant::now();
    while busy_since.elapsed() < Duration::from_millis(1_200) {
        client.call(SERVICE, "whoami", json!({})).await.unwrap();
    }
    assert_eq!(
        watch_starts(&fake, SERVICE),
        starts + 1,
        "a watch in use was stopped"
    );
    // Unused: it stops, and the instances it fed are forgotten.
    vsp_test_support::wait_until(
        "the unused watch to stop and forget its instances",
        Duration::from_secs(10),
        || mesh.instances(SERVICE).is_empty(),
    )
    .await;
    // The next call starts it again: a new watch (a first query without an index), which a
    // watch still running would have prevented (one watch per service).
    client.call(SERVICE, "whoami", json!({})).await.unwrap();
    assert_eq!(watch_starts(&fake, SERVICE), starts + 2);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_are_bounded_and_a_call_beyond_the_bound_says_so_at_once() {
    let fake = FakeConsul::start().await;
    let bounded = config(&fake)
        .max_watches(2)
        .first_resolution_wait(Duration::from_secs(30));
    let client = VspClient::builder(consul_mesh(bounded)).build();
    for service in ["one", "two"] {
        let err = client.call(service, "whoami", json!({})).await.unwrap_err();
        assert!(matches!(err, VspError::NoInstances { .. }), "{err:?}");
    }
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        client.call("three", "whoami", json!({})),
    )
    .await
    .expect("a call beyond max_watches waited instead of failing");
    match answer {
        Err(VspError::Discovery {
            backend: "consul",
            reason,
        }) => {
            assert!(reason.contains("max_watches"), "{reason}");
        }
        other => panic!("expected a Consul error naming max_watches, got {other:?}"),
    }
    assert_eq!(watch_starts(&fake, "three"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_manager_handle_withdraws_its_registration() {
    let fake = FakeConsul::start().await;
    let manager = registered_server(&fake, config(&fake), 1.0, 0).await;
    assert_eq!(fake.registrations().len(), 1);
    drop(manager);
    vsp_test_support::wait_until(
        "the registration to be withdrawn once the last handle was dropped",
        Duration::from_secs(10),
        || fake.registrations().is_empty(),
    )
    .await;
}
