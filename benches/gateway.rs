//! The HTTP gateway's cost, side by side in one run: `get_user` called directly over VSP, and
//! through the gateway (`POST /bench/get_user`, HTTP/1.1 keep-alive), with the HTTP floor (the
//! same HTTP client against an axum route that answers the same JSON without calling anything)
//! to say how much of the difference is HTTP itself.
//!
//! `cargo bench --bench gateway`; `VSP_BENCH_SECS` (per round, default 2) and
//! `VSP_BENCH_ROUNDS` (default 3; medians are reported) shorten or lengthen it.
//!
//! Like for like: every contender has 64 calls in flight (64 tasks, each calling in a loop), the
//! same body and the same answer; the HTTP client is one `reqwest::Client` (one keep-alive
//! connection per task), the VSP client one `VspClient` with its default pool. The VSP server
//! runs in a child process; the load, the gateway and the floor route run in this process, on 2
//! worker threads.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use common::{BenchApiClient, ServerProcess, User};
use vsp::{ServiceInfo, ServiceMesh, VspClient};

const CONCURRENCY: usize = 64;
/// Calls timed one at a time for the latency column.
const SERIAL_CALLS: usize = 2_000;

fn main() {
    if common::serve_if_child() {
        return;
    }
    let secs: f64 = std::env::var("VSP_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let rounds: usize = std::env::var("VSP_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let server = ServerProcess::spawn(1);
    common::runtime().block_on(run(server.ports[0], Duration::from_secs_f64(secs), rounds));
}

/// One way to make the call.
#[derive(Clone)]
enum Contender {
    Direct(BenchApiClient),
    Http {
        client: reqwest::Client,
        url: String,
    },
}

impl Contender {
    async fn call(&self) {
        match self {
            Contender::Direct(client) => {
                let user = client.get_user("123".to_owned()).await.unwrap();
                assert_eq!(user.name, "John Doe");
            }
            Contender::Http { client, url } => {
                let response = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(r#"{"user_id":"123"}"#)
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success(), "{}", response.status());
                let user: User = response.json().await.unwrap();
                assert_eq!(user.name, "John Doe");
            }
        }
    }
}

/// Calls per second with `CONCURRENCY` in flight for `duration`.
async fn throughput(contender: &Contender, duration: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (contender, stop, done) = (contender.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    contender.call().await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    tokio::time::sleep(duration).await; // the measured interval
    let calls = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    calls as f64 / elapsed.as_secs_f64()
}

/// The median latency of `SERIAL_CALLS` calls made one at a time.
async fn p50(contender: &Contender) -> Duration {
    let mut took = Vec::with_capacity(SERIAL_CALLS);
    for _ in 0..SERIAL_CALLS {
        let started = Instant::now();
        contender.call().await;
        took.push(started.elapsed());
    }
    took.sort();
    took[took.len() / 2]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn run(port: u16, duration: Duration, rounds: usize) {
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new("bench", "127.0.0.1", port))
        .unwrap();
    let client = VspClient::builder(mesh).build();

    // The gateway, and the floor: the same HTTP stack answering the same JSON by itself.
    let floor_user = serde_json::to_string(&User {
        id: "123".into(),
        name: "John Doe".into(),
        email: "john@example.com".into(),
    })
    .unwrap();
    let app = vsp::gateway::router(client.clone(), ["bench"]).route(
        "/floor",
        post(move || {
            let body = floor_user.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let contenders = [
        ("VSP direct", Contender::Direct(BenchApiClient::new(client))),
        (
            "HTTP floor (axum route, no call)",
            Contender::Http {
                client: http.clone(),
                url: format!("{base}/floor"),
            },
        ),
        (
            "gateway (HTTP -> VSP)",
            Contender::Http {
                client: http,
                url: format!("{base}/bench/get_user"),
            },
        ),
    ];
    for (_, contender) in &contenders {
        // Warm-up: connections open, caches filled.
        throughput(contender, Duration::from_millis(200)).await;
    }
    let mut rates = vec![Vec::new(); contenders.len()];
    let mut latencies = vec![Vec::new(); contenders.len()];
    for _ in 0..rounds {
        // Interleaved, so drift in the machine's speed hits every contender alike.
        for (index, (_, contender)) in contenders.iter().enumerate() {
            rates[index].push(throughput(contender, duration).await);
            latencies[index].push(p50(contender).await.as_secs_f64() * 1e6);
        }
    }
    let rates: Vec<f64> = rates.into_iter().map(median).collect();
    let latencies: Vec<f64> = latencies.into_iter().map(median).collect();
    println!(
        "gateway bench: get_user, {CONCURRENCY} in flight, HTTP/1.1 keep-alive, {rounds} round(s) of {:.2} s, medians",
        duration.as_secs_f64()
    );
    println!(
        "{:<34} {:>12} {:>12} {:>14}",
        "contender", "calls/s", "vs direct", "1 in flight p50"
    );
    for (index, (name, _)) in contenders.iter().enumerate() {
        println!(
            "{name:<34} {:>12.0} {:>11.2}x {:>12.1} µs",
            rates[index],
            rates[index] / rates[0],
            latencies[index]
        );
    }
    println!(
        "gateway per-call overhead at 1 in flight: {:.1} µs (gateway p50 - direct p50); for scale, an HTTP round trip to a route that calls nothing (floor p50) is {:.1} µs",
        latencies[2] - latencies[0],
        latencies[1]
    );
}
