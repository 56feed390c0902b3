//! Resilience policies end to end on loopback: keepalive pings find a frozen instance, hedged
//! calls answer from the fast instance and cancel the slow attempt, consistent hashing routes a
//! declared key, PeakEWMA steers away from a slow instance, run-time policies override the
//! declared ones, and a server (or one endpoint) sheds calls beyond its adaptive limit.

use crate::common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use vsp::{
    AdaptiveConcurrency, CallOptions, ConsistentHashBalancer, ErrorCode, HealthStatus, Hedge,
    PeakEwmaBalancer, Policies, RoundRobinBalancer, ServiceInfo, ServiceMesh, VspClient, VspError,
    VspManager,
};
use vsp_test_support::fault_proxy::{Fault, FaultProxy};

fn status_of(mesh: &ServiceMesh, port: u16) -> HealthStatus {
    mesh.instances(SERVICE)
        .into_iter()
        .find(|i| i.info.port() == port)
        .map(|i| i.info.status())
        .expect("the instance left the mesh")
}

fn mesh_of(ports: &[u16], mesh: ServiceMesh) -> ServiceMesh {
    for port in ports {
        mesh.register(ServiceInfo::new(SERVICE, "127.0.0.1", *port))
            .unwrap();
    }
    mesh
}

/// A frozen instance (its connections accept bytes and answer nothing, as a SIGSTOPped
/// process's kernel does) is ejected by the keepalive pings while calls are in flight, and every
/// idempotent call still succeeds, well before its 10 s deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_pings_eject_a_frozen_instance_and_no_idempotent_call_is_lost() {
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(start_test_server().await);
    }
    let proxy = FaultProxy::start(servers[0].1).await;
    let frozen = proxy.addr().port();
    let mesh = mesh_of(
        &[frozen, servers[1].1.port(), servers[2].1.port()],
        ServiceMesh::builder()
            .load_balancer(RoundRobinBalancer::new())
            .build(),
    );
    let client = VspClient::builder(mesh.clone())
        .timeout(Duration::from_secs(10))
        .retry_budget(0.2, 100)
        .build();
    assert_echoes(&client, 30).await;

    proxy.set(Fault::Blackhole);
    let frozen_at = tokio::time::Instant::now();
    let calls = {
        let client = client.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..600)
                .map(|i| {
                    let client = client.clone();
                    async move {
                        let options = CallOptions::new().idempotent(true);
                        let answer = client
                            .call_with::<Value>(SERVICE, "echo", json!({ "value": i }), options)
                            .await;
                        (i, answer)
                    }
                })
                .buffer_unordered(32)
                .collect::<Vec<_>>()
                .await
        })
    };
    wait_until(
        "the frozen instance to be ejected by a keepalive ping",
        Duration::from_secs(8),
        || status_of(&mesh, frozen) == HealthStatus::Unhealthy,
    )
    .await;
    println!(
        "keepalive: the frozen instance was ejected {:?} after it froze",
        frozen_at.elapsed()
    );
    for (i, answer) in calls.await.unwrap() {
        assert_eq!(answer.unwrap(), json!(i), "idempotent call {i}");
    }
    drop(proxy);
    for (manager, _) in servers {
        manager.shutdown().await.unwrap();
    }
}

/// Serves `echo` answering at once, or never (until the call is cancelled).
async fn echo_server(answers: bool) -> (VspManager, u16) {
    let manager = VspManager::builder(SERVICE).build();
    manager
        .endpoint("echo", move |args: Value| async move {
            if !answers {
                futures::future::pending::<()>().await;
            }
            Ok::<_, String>(args["value"].clone())
        })
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    (manager, addr.port())
}

/// With one of two instances never answering, every hedged call is answered by the other, and
/// the abandoned attempt is cancelled on the slow server (its call ends there). A call that is
/// not idempotent is never hedged: the one sent to the silent instance waits for its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedged_calls_answer_from_the_other_instance_and_cancel_the_slow_attempt() {
    let (silent, silent_port) = echo_server(false).await;
    let (fast, fast_port) = echo_server(true).await;
    let mesh = mesh_of(
        &[silent_port, fast_port],
        ServiceMesh::builder()
            .load_balancer(RoundRobinBalancer::new())
            .build(),
    );
    // No keepalive: the silent instance answers pings, only its `echo` hangs.
    let client = VspClient::builder(mesh)
        .timeout(Duration::from_secs(20))
        .build();
    // A first answer on each connection tells the client the server reads cancel frames
    // (Velithon never gets one).
    for _ in 0..2 {
        client.call(SERVICE, "health", json!({})).await.unwrap();
    }
    let hedged = CallOptions::new()
        .idempotent(true)
        .hedge(Hedge::After(Duration::from_millis(20)));
    for i in 0..10 {
        let answer: Value = client
            .call_with(SERVICE, "echo", json!({ "value": i }), hedged.clone())
            .await
            .unwrap_or_else(|e| panic!("hedged call {i}: {e}"));
        assert_eq!(answer, json!(i));
    }
    wait_until(
        "the silent server to drop the hedged calls' abandoned attempts (cancelled)",
        Duration::from_secs(10),
        || silent.ledger().calls_in_flight == 0,
    )
    .await;
    assert!(fast.get_performance_stats().messages_processed >= 10);
    let hedges = || client.metrics().calls[SERVICE]["echo"].hedges;
    // Round robin sent every other call to the silent instance first: those were hedged.
    let hedged_calls = hedges();
    assert!(
        (5..=10).contains(&hedged_calls),
        "{hedged_calls} hedged calls counted"
    );
    assert!(client
        .metrics()
        .to_prometheus()
        .contains("vsp_client_hedges_total"));

    // Not idempotent: no hedge, and the call routed to the silent instance times out.
    let plain = CallOptions::new()
        .hedge(Hedge::After(Duration::from_millis(20)))
        .timeout(Duration::from_millis(300));
    let mut timed_out = 0;
    for i in 0..2 {
        match client
            .call_with::<Value>(SERVICE, "echo", json!({ "value": i }), plain.clone())
            .await
        {
            Ok(_) => {}
            Err(VspError::Timeout { .. }) => timed_out += 1,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        timed_out, 1,
        "one of two round-robin calls went to the silent instance"
    );
    assert_eq!(
        hedges(),
        hedged_calls,
        "a call that is not idempotent was hedged"
    );
    silent.close().await;
    fast.shutdown().await.unwrap();
}

/// A hedge that wins over an attempt sent on a brand-new connection (the server has not
/// answered there yet, so the client does not know it reads cancel frames) still cancels that
/// attempt: the cancel waits for the connection's first answer (a keepalive ping's here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedge_cancels_an_attempt_sent_on_a_brand_new_connection() {
    let (silent, silent_port) = echo_server(false).await;
    let (_fast, fast_port) = echo_server(true).await;
    let mesh = mesh_of(
        &[silent_port, fast_port],
        ServiceMesh::builder()
            .load_balancer(RoundRobinBalancer::new())
            .build(),
    );
    let client = VspClient::builder(mesh)
        .timeout(Duration::from_secs(60))
        .build();
    let hedged = CallOptions::new()
        .idempotent(true)
        .hedge(Hedge::After(Duration::from_millis(20)));
    for i in 0..2 {
        let answer: Value = client
            .call_with(SERVICE, "echo", json!({ "value": i }), hedged.clone())
            .await
            .unwrap_or_else(|e| panic!("hedged call {i}: {e}"));
        assert_eq!(answer, json!(i));
    }
    assert!(client.metrics().calls[SERVICE]["echo"].hedges >= 1);
    wait_until(
        "the silent server to drop the attempt abandoned on a new connection (cancelled)",
        Duration::from_secs(10),
        || silent.ledger().calls_in_flight == 0,
    )
    .await;
    silent.close().await;
}

/// Which instance answered, by the port it was told.
#[vsp::service(name = "sharded")]
pub trait Sharded {
    #[vsp(hash_key = "user", idempotent)]
    async fn owner(&self, user: String, note: u32) -> u16;
    #[vsp(timeout_ms = 5000)]
    async fn wait(&self, ms: u64) -> u64;
}

struct Shard(u16);

impl Sharded for Shard {
    async fn owner(&self, _user: String, _note: u32) -> u16 {
        self.0
    }
    async fn wait(&self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }
}

async fn start_shards(n: usize) -> (Vec<VspManager>, Vec<u16>) {
    let mut managers = Vec::new();
    let mut ports = Vec::new();
    for id in 0..n {
        let manager = VspManager::builder(ShardedClient::SERVICE_NAME).build();
        manager.serve(ShardedServer::new(Shard(id as u16))).unwrap();
        let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
        managers.push(manager);
        ports.push(addr.port());
    }
    (managers, ports)
}

/// `#[vsp(hash_key = "user")]`: every call for one user goes to one instance, and users spread
/// over the instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_hash_key_routes_each_user_to_one_instance() {
    let (managers, ports) = start_shards(3).await;
    let mesh = ServiceMesh::builder()
        .load_balancer(ConsistentHashBalancer::new())
        .build();
    for port in &ports {
        mesh.register(ServiceInfo::new(
            ShardedClient::SERVICE_NAME,
            "127.0.0.1",
            *port,
        ))
        .unwrap();
    }
    let client = ShardedClient::new(VspClient::builder(mesh).build());
    let mut owners = std::collections::HashSet::new();
    for user in 0..30 {
        let name = format!("user-{user}");
        let first = client.owner(name.clone(), 0).await.unwrap();
        for note in 1..5 {
            assert_eq!(
                client.owner(name.clone(), note).await.unwrap(),
                first,
                "{name}"
            );
        }
        owners.insert(first);
    }
    assert_eq!(owners.len(), 3, "30 users all went to {owners:?}");
    for manager in managers {
        manager.shutdown().await.unwrap();
    }
}

/// The precedence: the call's options, then the run-time policies, then the declaration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_time_policies_override_the_declared_ones_and_the_call_site_overrides_both() {
    let (managers, ports) = start_shards(1).await;
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new(
        ShardedClient::SERVICE_NAME,
        "127.0.0.1",
        ports[0],
    ))
    .unwrap();
    let raw = VspClient::builder(mesh)
        .timeout(Duration::from_secs(30))
        .build();
    let client = ShardedClient::new(raw.clone());
    let timeout_of = |error: VspError| match error {
        VspError::Timeout { after, .. } => after,
        other => panic!("expected a timeout, got {other}"),
    };
    // Declared: 5 s.
    assert_eq!(client.wait(10).await.unwrap(), 10);
    raw.set_policies(Policies::from_json(r#"{"sharded": {"wait": {"timeout_ms": 100}}}"#).unwrap());
    let error = ShardedClient::new(raw.clone())
        .wait(2000)
        .await
        .unwrap_err();
    assert_eq!(timeout_of(error), Duration::from_millis(100));
    // The service-wide entry counts when the endpoint has none.
    raw.set_policies(Policies::from_json(r#"{"sharded": {"*": {"timeout_ms": 150}}}"#).unwrap());
    let error = ShardedClient::new(raw.clone())
        .wait(2000)
        .await
        .unwrap_err();
    assert_eq!(timeout_of(error), Duration::from_millis(150));
    // The call site wins over both.
    assert_eq!(client_wait(&raw, 300).await.unwrap(), json!(300));
    raw.set_policies(Policies::new());
    for manager in managers {
        manager.shutdown().await.unwrap();
    }
}

async fn client_wait(client: &VspClient, ms: u64) -> Result<Value, VspError> {
    client
        .call_with(
            "sharded",
            "wait",
            json!({ "ms": ms }),
            CallOptions::new().timeout(Duration::from_secs(5)),
        )
        .await
}

/// PeakEWMA: an instance 20 ms slower than two others gets a small share of the calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_sends_little_traffic_to_a_slow_instance() {
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(start_test_server().await);
    }
    let proxy = FaultProxy::start(servers[0].1).await;
    proxy.set(Fault::Latency(Duration::from_millis(20)));
    let mesh = mesh_of(
        &[
            proxy.addr().port(),
            servers[1].1.port(),
            servers[2].1.port(),
        ],
        ServiceMesh::builder()
            .load_balancer(PeakEwmaBalancer::new())
            .build(),
    );
    let client = VspClient::builder(mesh).build();
    let calls = 600;
    futures::stream::iter(0..calls)
        .for_each_concurrent(8, |i| {
            let client = client.clone();
            async move { assert_echo(&client, i).await }
        })
        .await;
    let slow = servers[0].0.get_performance_stats().messages_processed;
    println!("PeakEWMA: the slow instance served {slow} of {calls} calls");
    assert!(
        (slow as f64) < calls as f64 * 0.1,
        "the slow instance served {slow} of {calls} calls"
    );
    drop(proxy);
    for (manager, _) in servers {
        manager.shutdown().await.unwrap();
    }
}

/// A server at its adaptive limit answers `overloaded` at once, and its limit and places come
/// back as calls finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_sheds_calls_beyond_its_adaptive_limit() {
    let manager = VspManager::builder(SERVICE)
        .adaptive_concurrency(AdaptiveConcurrency::new().initial(2).min(2).max(2))
        .build();
    register_test_endpoints(&manager);
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    assert_eq!(manager.concurrency_limit(), Some(2));
    let client = client_builder_for(addr).max_attempts(1).build();
    let held: Vec<_> = {
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(held_call(&client, &manager, 2000).await);
        }
        held
    };
    let refused = client
        .call(SERVICE, "echo", json!({ "value": 1 }))
        .await
        .unwrap_err();
    assert_eq!(
        refused.remote_code(),
        Some(&ErrorCode::Overloaded),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("adaptive limit of 2"),
        "{refused}"
    );
    // `health` is never refused.
    client.call(SERVICE, "health", json!({})).await.unwrap();
    for call in held {
        call.await.unwrap().unwrap();
    }
    assert_echo(&client, 2).await;
    manager.shutdown().await.unwrap();
}

/// An endpoint with an adaptive limit of its own sheds its calls beyond it, while the server's
/// other endpoints (under no limit here) still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_with_its_own_limit_sheds_only_its_calls() {
    let one = AdaptiveConcurrency::new().initial(1).min(1).max(1);
    let manager = VspManager::builder(SERVICE)
        .endpoint_concurrency("sleep", one)
        .build();
    register_test_endpoints(&manager);
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    assert_eq!(manager.endpoint_concurrency_limit("sleep"), Some(1));
    assert_eq!(manager.endpoint_concurrency_limit("echo"), None);
    assert_eq!(manager.concurrency_limit(), None);
    let client = client_builder_for(addr).max_attempts(1).build();
    let held = held_call(&client, &manager, 2000).await;
    let refused = client
        .call(SERVICE, "sleep", json!({ "ms": 1, "tag": "after" }))
        .await
        .unwrap_err();
    assert_eq!(
        refused.remote_code(),
        Some(&ErrorCode::Overloaded),
        "{refused}"
    );
    assert!(
        refused
            .to_string()
            .contains("endpoint `sleep` of service `test-service` is at its adaptive limit of 1"),
        "{refused}"
    );
    // The other endpoints are not counted under `sleep`'s limit.
    for value in 0..5 {
        assert_echo(&client, value).await;
    }
    held.await.unwrap().unwrap();
    client
        .call(SERVICE, "sleep", json!({ "ms": 1, "tag": "after" }))
        .await
        .expect("the place came back when the held call ended");
    manager.shutdown().await.unwrap();
}
