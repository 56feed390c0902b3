//! The fault suite: three instances, one behind a fault-injecting proxy. Under each fault,
//! 10,000 idempotent calls all succeed, none waits past its deadline, the faulty instance is
//! ejected, and it is re-admitted once the fault heals. Real TCP on loopback throughout.

use crate::common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use vsp::{CallOptions, HealthPolicy, HealthStatus, ServiceInfo, ServiceMesh, VspClient};
use vsp_test_support::fault_proxy::{Fault, FaultProxy};

const CALLS: usize = 10_000;
const CONCURRENCY: usize = 64;
const TIMEOUT: Duration = Duration::from_secs(2);
/// How late past its deadline a call may return before it counts as having waited past it
/// (scheduling noise on a loaded 2-core machine, not a second deadline).
const LATE_SLACK: Duration = Duration::from_millis(500);

async fn run_under(fault: Fault) {
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(start_test_server().await);
    }
    let proxy = FaultProxy::start(servers[0].1).await;
    proxy.set(fault);
    let faulty = proxy.addr().port();
    let mesh = ServiceMesh::builder()
        .health_policy(HealthPolicy {
            failure_threshold: 3,
            base_ejection: Duration::from_millis(100),
            max_ejection: Duration::from_millis(500),
        })
        .build();
    mesh.register(ServiceInfo::new(SERVICE, "127.0.0.1", faulty))
        .unwrap();
    for (_, addr) in &servers[1..] {
        mesh.register(ServiceInfo::new(SERVICE, "127.0.0.1", addr.port()))
            .unwrap();
    }
    let client = VspClient::builder(mesh.clone())
        .timeout(TIMEOUT)
        .attempt_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        // 64 calls start at once, a third of them to the faulty instance: the reserve covers
        // that first wave (Finagle's default reserve, 10 a second over 10 s, is the same).
        .retry_budget(0.2, 100)
        .build();

    // Waits, alongside the calls, for the faulty instance to be taken out.
    let ejected = {
        let mesh = mesh.clone();
        tokio::spawn(async move {
            wait_until(
                &format!("the instance behind {fault:?} to be ejected"),
                Duration::from_secs(30),
                || status_of(&mesh, faulty) == HealthStatus::Unhealthy,
            )
            .await;
        })
    };

    let outcomes: Vec<(usize, Result<serde_json::Value, vsp::VspError>, Duration)> =
        futures::stream::iter(0..CALLS)
            .map(|i| {
                let client = client.clone();
                async move {
                    let started = tokio::time::Instant::now();
                    let result = client
                        .call_with(
                            SERVICE,
                            "echo",
                            serde_json::json!({ "value": i }),
                            CallOptions::new().idempotent(true),
                        )
                        .await;
                    (i, result, started.elapsed())
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
    let failed: Vec<_> = outcomes.iter().filter(|(_, r, _)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{fault:?}: {} of {CALLS} idempotent calls failed, first: {:?}",
        failed.len(),
        failed.first().map(|(_, r, _)| r)
    );
    for (i, result, _) in &outcomes {
        assert_eq!(result.as_ref().unwrap(), &serde_json::json!(i));
    }
    let slowest = outcomes.iter().map(|(_, _, took)| *took).max().unwrap();
    assert!(
        slowest <= TIMEOUT + LATE_SLACK,
        "{fault:?}: a call took {slowest:?}, past its {TIMEOUT:?} deadline"
    );
    if let Err(failed) = ejected.await {
        std::panic::resume_unwind(failed.into_panic());
    }
    assert_eq!(
        status_of(&mesh, faulty),
        HealthStatus::Unhealthy,
        "{fault:?}: re-admitted while still faulty"
    );

    proxy.set(Fault::None);
    wait_until(
        &format!("the instance to be re-admitted once {fault:?} healed"),
        Duration::from_secs(10),
        || status_of(&mesh, faulty) == HealthStatus::Healthy,
    )
    .await;
    for (manager, _) in servers {
        manager.shutdown().await.unwrap();
    }
}

fn status_of(mesh: &ServiceMesh, port: u16) -> HealthStatus {
    mesh.instances(SERVICE)
        .into_iter()
        .find(|i| i.info.port() == port)
        .map(|i| i.info.status())
        .expect("the faulty instance left the mesh")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_latency_beyond_the_attempt_timeout() {
    run_under(Fault::Latency(Duration::from_secs(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_in_the_middle_of_a_frame() {
    run_under(Fault::ResetMidFrame).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_that_accepts_and_never_answers() {
    run_under(Fault::Blackhole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_peer() {
    run_under(Fault::HalfClose).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader() {
    run_under(Fault::SlowReader).await;
}
