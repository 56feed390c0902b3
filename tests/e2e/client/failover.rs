//! Faults: dead, restarted, blackholed and closing instances. No call hangs; calls that never
//! reached a server go elsewhere; written ones are resent only when that is safe.

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{test_manager, SERVICE};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use vsp::{
    CallOptions, HealthPolicy, HealthStatus, ServiceInfo, ServiceMesh, VspClient, VspError,
    VspManager,
};

fn fast_health() -> HealthPolicy {
    HealthPolicy {
        failure_threshold: 3,
        base_ejection: Duration::from_millis(100),
        max_ejection: Duration::from_millis(400),
    }
}

fn mesh_of(ports: &[u16]) -> ServiceMesh {
    let mesh = ServiceMesh::builder().health_policy(fast_health()).build();
    for port in ports {
        mesh.register(ServiceInfo::new(SERVICE, "127.0.0.1", *port))
            .unwrap();
    }
    mesh
}

fn status_of(mesh: &ServiceMesh, port: u16) -> HealthStatus {
    mesh.instances(SERVICE)
        .into_iter()
        .find(|i| i.info.port() == port)
        .map(|i| i.info.status())
        .unwrap()
}

async fn wait_for_status(mesh: &ServiceMesh, port: u16, status: HealthStatus) {
    for _ in 0..1000 {
        if status_of(mesh, port) == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("instance {port} never became {status:?}");
}

async fn start_at(port: u16) -> VspManager {
    let manager = test_manager();
    manager.start_server("127.0.0.1", port).await.unwrap();
    manager
}

/// Callers that keep calling until stopped; counts successes and keeps every failure.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<VspError>>>,
}

impl Load {
    fn start(client: &VspClient, callers: usize, options: CallOptions) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let tasks = (0..callers)
            .map(|i| {
                let (client, stop, ok) = (client.clone(), stop.clone(), ok.clone());
                let options = options.clone();
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let call = client.call_with::<Value>(
                            SERVICE,
                            "echo",
                            json!({"value": i}),
                            options.clone(),
                        );
                        // Every call ends within its deadline: a hang fails the test here.
                        match tokio::time::timeout(Duration::from_secs(30), call)
                            .await
                            .expect("a call hung")
                        {
                            Ok(value) => {
                                assert_eq!(value, json!(i));
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(err) => failures.push(err),
                        }
                    }
                    failures
                })
            })
            .collect();
        Load { stop, ok, tasks }
    }

    async fn until_more_calls(&self, n: usize) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        common::wait_until(
            &format!("{n} more successful calls under load"),
            Duration::from_secs(30),
            || self.ok.load(Ordering::Relaxed) >= target,
        )
        .await;
    }

    async fn stop(self) -> (usize, Vec<VspError>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for task in self.tasks {
            failures.extend(task.await.unwrap());
        }
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

async fn three_instances() -> (Vec<VspManager>, Vec<u16>) {
    let mut managers = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..3 {
        let (manager, addr) = common::start_test_server().await;
        ports.push(addr.port());
        managers.push(manager);
    }
    (managers, ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_under_load_loses_no_idempotent_call_and_it_returns_after_restart() {
    let (mut managers, ports) = three_instances().await;
    let mesh = mesh_of(&ports);
    let client = VspClient::builder(mesh.clone())
        .timeout(Duration::from_secs(5))
        .build();
    let load = Load::start(&client, 8, CallOptions::new().idempotent(true));
    load.until_more_calls(200).await;

    // Abort the listener and every connection of the first instance.
    managers[0].close().await;
    load.until_more_calls(300).await;
    wait_for_status(&mesh, ports[0], HealthStatus::Unhealthy).await;
    let served_before = managers[1].get_performance_stats().messages_processed
        + managers[2].get_performance_stats().messages_processed;
    load.until_more_calls(300).await;
    let served_after = managers[1].get_performance_stats().messages_processed
        + managers[2].get_performance_stats().messages_processed;
    // A server counts a call before its answer reaches the client: up to the load's 8 calls in
    // flight were counted in `served_before` and not yet in the client's 300.
    assert!(
        served_after + 8 >= served_before + 300,
        "the survivors took over: {served_before} calls served, then {served_after}"
    );

    // Back on the same port: a probe re-admits it and it gets calls again.
    managers[0] = start_at(ports[0]).await;
    wait_for_status(&mesh, ports[0], HealthStatus::Healthy).await;
    common::wait_until(
        "the restarted instance to serve 50 calls",
        Duration::from_secs(30),
        || managers[0].get_performance_stats().endpoints["echo"].calls >= 50,
    )
    .await;
    let (ok, failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {} calls failed: {:?}",
        failures.len(),
        ok,
        &failures[..failures.len().min(3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_three_instances_loses_zero_calls() {
    let (mut managers, ports) = three_instances().await;
    let mesh = mesh_of(&ports);
    let client = VspClient::builder(mesh.clone())
        .timeout(Duration::from_secs(5))
        .build();
    // Not idempotent: nothing may be resent after it was written.
    let load = Load::start(&client, 8, CallOptions::new());
    load.until_more_calls(200).await;
    for (i, port) in ports.iter().enumerate() {
        managers[i].shutdown().await.unwrap();
        load.until_more_calls(100).await;
        managers[i] = start_at(*port).await;
        wait_for_status(&mesh, *port, HealthStatus::Healthy).await;
        load.until_more_calls(100).await;
    }
    let (ok, failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {} calls failed: {:?}",
        failures.len(),
        ok,
        &failures[..failures.len().min(3)]
    );
    assert!(ok >= 800);
}

/// Accepts connections and never answers.
async fn blackhole() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

#[tokio::test]
async fn a_blackholed_instance_costs_deadline_errors_then_is_ejected() {
    let (_live, live) = common::start_test_server().await;
    let hole = blackhole().await;
    let mesh = mesh_of(&[hole.port(), live.port()]);
    let client = VspClient::builder(mesh.clone())
        .timeout(Duration::from_millis(200))
        .build();
    let mut timeouts = 0;
    for i in 0..40 {
        let call = client.call(SERVICE, "echo", json!({"value": i}));
        match tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("a call hung")
        {
            Ok(value) => assert_eq!(value, json!(i)),
            Err(VspError::Timeout { .. }) => timeouts += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    // A call that times out hearing nothing is not a failure yet: a `health` call on the same
    // connection checks it (within the call's timeout) while new calls take other connections.
    // Three confirmed dead connections eject it; after that every call goes to the live one.
    assert!(
        (3..=5).contains(&timeouts),
        "{timeouts} timeouts before the blackhole was ejected"
    );
    assert_eq!(status_of(&mesh, hole.port()), HealthStatus::Unhealthy);
}

#[tokio::test]
async fn a_refused_connect_fails_over_before_anything_was_sent() {
    let (_live, live) = common::start_test_server().await;
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mesh = mesh_of(&[dead, live.port()]);
    let client = VspClient::builder(mesh.clone()).build();
    common::assert_echoes(&client, 10).await;
    assert_eq!(status_of(&mesh, dead), HealthStatus::Unhealthy);
}

#[tokio::test]
async fn with_every_instance_ejected_calls_fail_fast() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mesh = mesh_of(&[dead]);
    let client = VspClient::builder(mesh).build();
    let first = client
        .call(SERVICE, "echo", json!({"value": 1}))
        .await
        .unwrap_err();
    assert!(matches!(first, VspError::Connect { .. }), "{first:?}");
    let second = client
        .call(SERVICE, "echo", json!({"value": 1}))
        .await
        .unwrap_err();
    assert!(
        matches!(second, VspError::NoHealthyInstances { instances: 1, .. }),
        "{second:?}"
    );
}

/// Reads each request, then drops the connection without an answer.
async fn closes_after_reading() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_written_call_is_resent_only_when_idempotent() {
    let (_live, live) = common::start_test_server().await;
    let flaky = closes_after_reading().await;
    // Round robin starts with the first registered instance: the one that drops the call.
    let client = VspClient::builder(mesh_of(&[flaky.port(), live.port()])).build();
    let err = client
        .call_with::<Value>(SERVICE, "echo", json!({"value": 1}), CallOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, VspError::ConnectionClosed { .. }), "{err:?}");

    let client = VspClient::builder(mesh_of(&[flaky.port(), live.port()])).build();
    let value: Value = client
        .call_with(
            SERVICE,
            "echo",
            json!({"value": 2}),
            CallOptions::new().idempotent(true),
        )
        .await
        .unwrap();
    assert_eq!(value, json!(2));
}

#[tokio::test]
async fn an_empty_retry_budget_stops_resends() {
    let (_live, live) = common::start_test_server().await;
    let flaky = closes_after_reading().await;
    let client = VspClient::builder(mesh_of(&[flaky.port(), live.port()]))
        .retry_budget(0.0, 0)
        .build();
    let err = client
        .call_with::<Value>(
            SERVICE,
            "echo",
            json!({"value": 1}),
            CallOptions::new().idempotent(true),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, VspError::ConnectionClosed { .. }), "{err:?}");
}

#[tokio::test]
async fn generated_clients_resend_idempotent_methods() {
    #[vsp::service(name = "test-service")]
    pub trait Echoes {
        #[vsp(idempotent)]
        async fn echo(&self, value: Value) -> Value;
    }
    let (_live, live) = common::start_test_server().await;
    let flaky = closes_after_reading().await;
    let client =
        EchoesClient::new(VspClient::builder(mesh_of(&[flaky.port(), live.port()])).build());
    assert_eq!(client.echo(json!("again")).await.unwrap(), json!("again"));
}

#[tokio::test]
async fn active_health_checks_eject_and_readmit_without_any_calls() {
    let (manager, addr) = common::start_test_server().await;
    let mesh = mesh_of(&[addr.port()]);
    let client = VspClient::builder(mesh.clone())
        .health_check_interval(Duration::from_millis(50))
        .build();
    // One call starts the client's background work; from then on, no calls at all.
    common::assert_echo(&client, 0).await;
    wait_for_status(&mesh, addr.port(), HealthStatus::Healthy).await;
    manager.close().await;
    wait_for_status(&mesh, addr.port(), HealthStatus::Unhealthy).await;
    let _back = start_at(addr.port()).await;
    wait_for_status(&mesh, addr.port(), HealthStatus::Healthy).await;
}
