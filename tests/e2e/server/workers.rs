//! Worker types: where handlers run, and what a CPU-heavy endpoint can and cannot starve.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vsp::{ServiceInfo, ServiceMesh, VspClient, VspManager, WorkerType};

#[vsp::service]
pub trait Mixed {
    /// Holds its thread, computing, until the test releases it.
    async fn heavy(&self) -> u64;
    async fn light(&self, n: u64) -> u64;
    /// Awaits (no CPU) before answering: runs on the pool too.
    async fn waits(&self, ms: u64) -> String;
    /// The name of the thread the handler ran on.
    async fn thread_name(&self) -> String;
}

#[derive(Default)]
struct Impl {
    release: AtomicBool,
    heavy_running: AtomicUsize,
}

impl Mixed for Arc<Impl> {
    async fn heavy(&self) -> u64 {
        self.heavy_running.fetch_add(1, Ordering::SeqCst);
        let mut spins = 0u64;
        while !self.release.load(Ordering::Acquire) {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
        }
        self.heavy_running.fetch_sub(1, Ordering::SeqCst);
        spins
    }

    async fn light(&self, n: u64) -> u64 {
        n + 1
    }

    async fn waits(&self, ms: u64) -> String {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        "done".into()
    }

    async fn thread_name(&self) -> String {
        std::thread::current().name().unwrap_or("").to_owned()
    }
}

async fn serve(worker_type: WorkerType) -> (VspManager, Arc<Impl>, MixedClient, ServiceMesh) {
    let state = Arc::new(Impl::default());
    let manager = VspManager::builder("mixed")
        .worker_type(worker_type)
        .build();
    manager.serve(MixedServer::new(state.clone())).unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new("mixed", "127.0.0.1", addr.port()))
        .unwrap();
    let client = MixedClient::new(VspClient::builder(mesh.clone()).build());
    (manager, state, client, mesh)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multicore_handlers_run_on_the_worker_pool() {
    let (_manager, _state, client, _) = serve(WorkerType::Multicore { workers: 2 }).await;
    assert_eq!(client.thread_name().await.unwrap(), "vsp-worker");
    assert_eq!(client.waits(10).await.unwrap(), "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_handlers_run_on_the_servers_runtime() {
    let (_manager, _state, client, _) = serve(WorkerType::Async).await;
    assert_ne!(client.thread_name().await.unwrap(), "vsp-worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_heavy_endpoint_leaves_light_endpoints_and_health_answering() {
    let (manager, state, client, mesh) = serve(WorkerType::Multicore { workers: 2 }).await;
    // More heavy calls than the pool has threads; none can finish until released.
    let heavy: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.heavy().await })
        })
        .collect();
    while state.heavy_running.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }

    // Light calls and health complete while every heavy call is still held.
    for n in 0..20 {
        let answer = tokio::time::timeout(Duration::from_secs(30), client.light(n))
            .await
            .expect("a light call was starved by the heavy endpoint");
        assert_eq!(answer.unwrap(), n + 1);
    }
    let health = tokio::time::timeout(
        Duration::from_secs(30),
        VspClient::builder(mesh)
            .build()
            .call("mixed", "health", serde_json::json!({})),
    )
    .await
    .expect("health was starved by the heavy endpoint")
    .unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(manager.get_performance_stats().endpoints["heavy"].calls, 0);
    // The heavy endpoint never held more than its share (workers - 1) of the pool.
    assert_eq!(state.heavy_running.load(Ordering::SeqCst), 1);

    state.release.store(true, Ordering::Release);
    for call in heavy {
        call.await.unwrap().unwrap();
    }
    assert_eq!(manager.get_performance_stats().endpoints["heavy"].calls, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multicore_manager_drains_and_shuts_down() {
    let (manager, _state, client, _) = serve(WorkerType::Multicore { workers: 3 }).await;
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.waits(200).await })
    };
    while manager.get_performance_stats().in_flight == 0 {
        tokio::task::yield_now().await;
    }
    manager.shutdown().await.unwrap();
    assert_eq!(slow.await.unwrap().unwrap(), "done");
    // Dropping the manager (and its pool) inside async code must not panic.
    drop(manager);
}
