//! The resilience policies of issue 33, measured on loopback, every contender in one run:
//!
//! - **slow**: three instances, one whose handler takes 20 ms longer; 32 callers in a closed
//!   loop; calls/s and latency with round robin, P2C least loaded, PeakEWMA, and round robin
//!   and PeakEWMA with hedging (after the endpoint's p95).
//! - **tail**: three instances that each delay one call in 50 by 20 ms; round robin without
//!   hedging, hedging after the p95, and after a fixed 2 ms.
//! - **frozen**: three server processes; under load one is frozen with SIGSTOP (its kernel
//!   still accepts bytes); failed calls, the slowest call, and the time until it is ejected (it
//!   gets no more calls), with and without keepalive pings.
//! - **overload**: one server whose handler burns 1 ms of CPU on a `Multicore` pool (one thread
//!   for that endpoint), offered three times its measured capacity in an open loop; goodput and
//!   latency of the calls served with no limit, a fixed limit and the adaptive limit.
//!
//! (Consistent hashing's figures, keys moved and load over mean, are printed by the unit tests
//! `balancer::consistent_hash`.) `cargo bench --bench resilience`; `VSP_BENCH_SECS` sets each
//! measured run's length (default 3), `VSP_BENCH_SECTION=slow|tail|frozen|overload` runs one.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vsp::balancer::LoadBalancer;
use vsp::{
    AdaptiveConcurrency, CallOptions, HealthStatus, Hedge, LeastLoadedBalancer, PeakEwmaBalancer,
    RoundRobinBalancer, ServiceInfo, ServiceMesh, VspClient, VspManager, WorkerType,
};

const SERVICE: &str = "bench";
const CHILD: &str = "VSP_RESILIENCE_CHILD";

fn secs() -> f64 {
    std::env::var("VSP_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// A server of `echo` that waits `delay` before answering.
async fn echo_server(delay: Duration) -> (VspManager, u16) {
    let manager = VspManager::builder(SERVICE).build();
    manager
        .endpoint("echo", move |args: Value| async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, String>(args["value"].clone())
        })
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    (manager, addr.port())
}

fn mesh(balancer: impl LoadBalancer, ports: &[u16]) -> ServiceMesh {
    let mesh = ServiceMesh::builder().load_balancer(balancer).build();
    for port in ports {
        mesh.register(ServiceInfo::new(SERVICE, "127.0.0.1", *port))
            .unwrap();
    }
    mesh
}

/// `callers` callers in a closed loop for `run`: the latencies of the calls that succeeded,
/// and the count of those that failed.
async fn closed_loop(
    client: &VspClient,
    options: &CallOptions,
    callers: usize,
    run: Duration,
) -> (Vec<Duration>, usize) {
    let until = Instant::now() + run;
    let results = Arc::new(Mutex::new((Vec::new(), 0usize)));
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (client, options, results) = (client.clone(), options.clone(), results.clone());
            tokio::spawn(async move {
                let (mut mine, mut failed) = (Vec::new(), 0);
                while Instant::now() < until {
                    let started = Instant::now();
                    let answer = client
                        .call_with::<Value>(SERVICE, "echo", json!({ "value": 1 }), options.clone())
                        .await;
                    match answer {
                        Ok(_) => mine.push(started.elapsed()),
                        Err(_) => failed += 1,
                    }
                }
                let mut results = results.lock().unwrap();
                results.0.extend(mine);
                results.1 += failed;
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let mut results = results.lock().unwrap();
    let mut latencies = std::mem::take(&mut results.0);
    latencies.sort();
    (latencies, results.1)
}

async fn slow_section(run: Duration) {
    println!("\n## One of three instances 20 ms slower (32 callers, closed loop, {run:?} each)\n");
    println!("| balancer | calls/s | p50 ms | p99 ms | p99.9 ms | failed |");
    println!("|---|---:|---:|---:|---:|---:|");
    let slow = echo_server(Duration::from_millis(20)).await;
    let fast = [
        echo_server(Duration::ZERO).await,
        echo_server(Duration::ZERO).await,
    ];
    let ports = [slow.1, fast[0].1, fast[1].1];
    let idempotent = CallOptions::new().idempotent(true);
    let hedged = idempotent.clone().hedge(Hedge::Percentile(0.95));
    type Contender = (&'static str, ServiceMesh, CallOptions);
    let contenders: [Contender; 5] = [
        (
            "round robin",
            mesh(RoundRobinBalancer::new(), &ports),
            idempotent.clone(),
        ),
        (
            "round robin + hedging (p95)",
            mesh(RoundRobinBalancer::new(), &ports),
            hedged.clone(),
        ),
        (
            "P2C least loaded",
            mesh(LeastLoadedBalancer::new(), &ports),
            idempotent.clone(),
        ),
        (
            "PeakEWMA",
            mesh(PeakEwmaBalancer::new(), &ports),
            idempotent.clone(),
        ),
        (
            "PeakEWMA + hedging (p95)",
            mesh(PeakEwmaBalancer::new(), &ports),
            hedged,
        ),
    ];
    for (name, mesh, options) in contenders {
        let client = VspClient::builder(mesh).retry_budget(0.2, 100).build();
        // Warm-up: connections, latency estimates, the hedge percentile.
        closed_loop(&client, &options, 32, Duration::from_millis(500)).await;
        let (latencies, failed) = closed_loop(&client, &options, 32, run).await;
        println!(
            "| {name} | {:.0} | {} | {} | {} | {failed} |",
            latencies.len() as f64 / run.as_secs_f64(),
            ms(quantile(&latencies, 0.5)),
            ms(quantile(&latencies, 0.99)),
            ms(quantile(&latencies, 0.999)),
        );
    }
    for (manager, _) in [slow].into_iter().chain(fast) {
        manager.shutdown().await.unwrap();
    }
}

/// A server of `echo` that delays one call in fifty by 20 ms (a pause, a cache miss): a tail
/// on every instance, which no balancer can steer around.
async fn tail_server() -> (VspManager, u16) {
    let manager = VspManager::builder(SERVICE).build();
    let calls = Arc::new(AtomicU64::new(0));
    manager
        .endpoint("echo", move |args: Value| {
            let call = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                if call % 50 == 49 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok::<_, String>(args["value"].clone())
            }
        })
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    (manager, addr.port())
}

async fn tail_section(run: Duration) {
    println!("\n## Three instances that each delay one call in 50 by 20 ms (32 callers, closed loop, {run:?} each)\n");
    println!("| client | calls/s | p50 ms | p99 ms | p99.9 ms | hedged calls | failed |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let servers = [
        tail_server().await,
        tail_server().await,
        tail_server().await,
    ];
    let ports: Vec<u16> = servers.iter().map(|(_, port)| *port).collect();
    let idempotent = CallOptions::new().idempotent(true);
    for (name, options) in [
        ("no hedging", idempotent.clone()),
        (
            "hedging after the p95",
            idempotent.clone().hedge(Hedge::Percentile(0.95)),
        ),
        (
            "hedging after 2 ms",
            idempotent
                .clone()
                .hedge(Hedge::After(Duration::from_millis(2))),
        ),
    ] {
        let client = VspClient::builder(mesh(RoundRobinBalancer::new(), &ports))
            .retry_budget(0.2, 100)
            .build();
        closed_loop(&client, &options, 32, Duration::from_millis(500)).await;
        let before = client.metrics().calls[SERVICE]["echo"].hedges;
        let (latencies, failed) = closed_loop(&client, &options, 32, run).await;
        let hedged = client.metrics().calls[SERVICE]["echo"].hedges - before;
        println!(
            "| round robin, {name} | {:.0} | {} | {} | {} | {:.1}% | {failed} |",
            latencies.len() as f64 / run.as_secs_f64(),
            ms(quantile(&latencies, 0.5)),
            ms(quantile(&latencies, 0.99)),
            ms(quantile(&latencies, 0.999)),
            hedged as f64 * 100.0 / latencies.len().max(1) as f64,
        );
    }
    for (manager, _) in servers {
        manager.shutdown().await.unwrap();
    }
}

/// A server process (this binary as its child), frozen and thawed with signals.
struct ServerProcess {
    child: Child,
    port: u16,
}

impl ServerProcess {
    fn start() -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD, "server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the server child said {line:?}"));
        ServerProcess { child, port }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_child() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (_manager, port) = runtime.block_on(echo_server(Duration::ZERO));
    println!("port {port}");
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

async fn frozen_section(run: Duration) {
    println!("\n## One of three server processes frozen (SIGSTOP) under load (32 callers, idempotent calls, 5 s deadline)\n");
    println!("| client | failed calls | slowest call ms | calls slower than 1 s | frozen until ejected ms |");
    println!("|---|---:|---:|---:|---:|");
    for keepalive in [false, true] {
        let servers: Vec<ServerProcess> = (0..3).map(|_| ServerProcess::start()).collect();
        let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
        let mesh = mesh(RoundRobinBalancer::new(), &ports);
        let builder = VspClient::builder(mesh.clone())
            .timeout(Duration::from_secs(5))
            .retry_budget(0.2, 100);
        let client = if keepalive {
            builder.build()
        } else {
            builder.no_keepalive().build()
        };
        let options = CallOptions::new().idempotent(true);
        closed_loop(&client, &options, 32, Duration::from_millis(500)).await;
        let load = {
            let (client, options) = (client.clone(), options.clone());
            tokio::spawn(async move {
                closed_loop(&client, &options, 32, run + Duration::from_secs(6)).await
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        servers[0].signal("-STOP");
        let frozen = Instant::now();
        let frozen_port = ports[0];
        let ejected = loop {
            let status = mesh
                .instances(SERVICE)
                .into_iter()
                .find(|i| i.info.port() == frozen_port)
                .map(|i| i.info.status());
            if status == Some(HealthStatus::Unhealthy) {
                break Some(frozen.elapsed());
            }
            if frozen.elapsed() > run + Duration::from_secs(5) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let (latencies, failed) = load.await.unwrap();
        let slow = latencies
            .iter()
            .filter(|l| **l > Duration::from_secs(1))
            .count();
        println!(
            "| {} | {failed} | {} | {slow} | {} |",
            if keepalive {
                "keepalive pings (default: 250 ms, 750 ms)"
            } else {
                "no keepalive"
            },
            ms(latencies.last().copied().unwrap_or_default()),
            ejected.map_or_else(|| "not ejected".to_owned(), ms),
        );
    }
}

/// Burns `cost` of CPU.
fn burn(cost: Duration) -> u64 {
    let started = Instant::now();
    let mut x = 0u64;
    while started.elapsed() < cost {
        for _ in 0..100 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    x
}

async fn cpu_server(
    limit: Option<usize>,
    adaptive: Option<AdaptiveConcurrency>,
) -> (VspManager, u16) {
    let mut builder =
        VspManager::builder(SERVICE).worker_type(WorkerType::Multicore { workers: 2 });
    if let Some(limit) = limit {
        builder = builder.max_concurrent_requests(limit);
    }
    if let Some(adaptive) = adaptive {
        builder = builder.adaptive_concurrency(adaptive);
    }
    let manager = builder.build();
    manager
        .endpoint("echo", |_: Value| async move {
            Ok::<_, String>(burn(Duration::from_millis(1)))
        })
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    (manager, addr.port())
}

/// Calls at `rate` a second for `run` (an open loop: a call starts on time whatever the others
/// do); the latencies of the calls that succeeded, and the count refused or failed.
async fn open_loop(client: &VspClient, rate: f64, run: Duration) -> (Vec<Duration>, usize) {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    let mut tasks = Vec::new();
    while started.elapsed() < run {
        ticker.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            sent += 1;
            let (client, latencies, failed) = (client.clone(), latencies.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                let began = Instant::now();
                match client
                    .call_with::<Value>(SERVICE, "echo", json!({}), CallOptions::new())
                    .await
                {
                    Ok(_) => latencies.lock().unwrap().push(began.elapsed()),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    done.store(true, Ordering::Relaxed);
    futures::future::join_all(tasks).await;
    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap());
    latencies.sort();
    (latencies, failed.load(Ordering::Relaxed) as usize)
}

async fn overload_section(run: Duration) {
    let client_for = |port| {
        VspClient::builder(mesh(RoundRobinBalancer::new(), &[port]))
            .timeout(Duration::from_secs(1))
            .max_attempts(1)
            .build()
    };
    // Capacity: a closed loop deep enough to keep the handler's thread busy; the unloaded p99:
    // one call at a time.
    let (manager, port) = cpu_server(None, None).await;
    let client = client_for(port);
    let options = CallOptions::new();
    closed_loop(&client, &options, 8, Duration::from_millis(500)).await;
    let (busy, _) = closed_loop(&client, &options, 8, run).await;
    let capacity = busy.len() as f64 / run.as_secs_f64();
    let (alone, _) = closed_loop(&client, &options, 1, run).await;
    let unloaded_p99 = quantile(&alone, 0.99);
    manager.shutdown().await.unwrap();
    println!(
        "\n## A server offered 3x its capacity (1 ms of CPU a call on a Multicore pool; capacity {capacity:.0} calls/s, unloaded p99 {} ms; open loop, 1 s deadline, no retries)\n",
        ms(unloaded_p99)
    );
    println!("| server | goodput calls/s | goodput / capacity | refused or failed | p50 ms | p99 ms | p99 / unloaded p99 |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let adaptive = AdaptiveConcurrency::new();
    for (name, limit, adaptive) in [
        ("no limit", None, None),
        ("fixed limit 1", Some(1), None),
        ("fixed limit 2", Some(2), None),
        ("fixed limit 4", Some(4), None),
        ("adaptive limit (defaults: min 2)", None, Some(adaptive)),
        ("adaptive limit, min 1", None, Some(adaptive.min(1))),
    ] {
        let (manager, port) = cpu_server(limit, adaptive).await;
        let client = client_for(port);
        closed_loop(&client, &options, 2, Duration::from_millis(300)).await;
        let (served, failed) = open_loop(&client, capacity * 3.0, run).await;
        let goodput = served.len() as f64 / run.as_secs_f64();
        let p99 = quantile(&served, 0.99);
        println!(
            "| {name} | {goodput:.0} | {:.2} | {failed} | {} | {} | {:.2} |",
            goodput / capacity,
            ms(quantile(&served, 0.5)),
            ms(p99),
            p99.as_secs_f64() / unloaded_p99.as_secs_f64(),
        );
        if let Some(limit) = manager.concurrency_limit() {
            println!("|   (the adaptive limit ended at {limit}) | | | | | | |");
        }
        manager.shutdown().await.unwrap();
    }
}

fn main() {
    if std::env::var(CHILD).is_ok() {
        return server_child();
    }
    let run = Duration::from_secs_f64(secs());
    let section = std::env::var("VSP_BENCH_SECTION").ok();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let wants = |name: &str| section.as_deref().is_none_or(|s| s == name);
        if wants("slow") {
            slow_section(run).await;
        }
        if wants("tail") {
            tail_section(run).await;
        }
        if wants("frozen") {
            frozen_section(run).await;
        }
        if wants("overload") {
            overload_section(run).await;
        }
    });
}
