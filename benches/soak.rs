//! Soak: 10 million `get_user` calls at 64 concurrent, through the mesh to 3 local instances,
//! printing the client's and the server's RSS every tenth of the run. Memory must level off:
//! after the first tenth (the first million), RSS may grow by under 5%.
//!
//! `cargo bench --bench soak`; `VSP_SOAK_CALLS=1000000` shortens it (the 5% check is made from
//! 2 million calls up). The server runs in a child process, so each side's RSS is its own.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::{mib, rss_bytes, BenchApiClient, ServerProcess};
use vsp::{ServiceInfo, ServiceMesh, VspClient};

const CONCURRENCY: u64 = 64;
const INSTANCES: usize = 3;
/// The most RSS may grow, after the first tenth of the calls.
const GROWTH_BOUND: f64 = 0.05;

struct Checkpoint {
    calls: u64,
    at: Instant,
    client: u64,
    server: u64,
}

fn main() {
    if common::serve_if_child() {
        return;
    }
    let total: u64 = std::env::var("VSP_SOAK_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000_000);
    let step = (total / 10).max(1);
    let server = ServerProcess::spawn(INSTANCES);
    let runtime = common::runtime();
    let checkpoints = runtime.block_on(soak(&server, total, step));
    drop(server);

    let first = &checkpoints[1];
    let last = checkpoints.last().unwrap();
    let growth = |from: u64, to: u64| (to as f64 - from as f64) / from as f64;
    let client_growth = growth(first.client, last.client);
    let server_growth = growth(first.server, last.server);
    println!(
        "\nRSS growth from {} to {} calls: client {:+.1}%, server {:+.1}% (bound: under {:.0}%)",
        first.calls,
        last.calls,
        client_growth * 100.0,
        server_growth * 100.0,
        GROWTH_BOUND * 100.0
    );
    if total >= 2_000_000 && (client_growth >= GROWTH_BOUND || server_growth >= GROWTH_BOUND) {
        eprintln!("memory kept growing after the first tenth of the calls");
        std::process::exit(1);
    }
}

async fn soak(server: &ServerProcess, total: u64, step: u64) -> Vec<Checkpoint> {
    let mesh = ServiceMesh::new();
    for port in &server.ports {
        mesh.register(ServiceInfo::new("bench", "127.0.0.1", *port))
            .unwrap();
    }
    let client = BenchApiClient::new(VspClient::builder(mesh).build());
    println!(
        "# Soak: {total} get_user calls, {CONCURRENCY} concurrent, through the mesh (round robin) \
         to {INSTANCES} instances in a child process, loopback\n"
    );
    println!("| calls | seconds | calls/s (this step) | client RSS MiB | server RSS MiB |");
    println!("|---:|---:|---:|---:|---:|");
    let started = Instant::now();
    let mut checkpoints = vec![Checkpoint {
        calls: 0,
        at: started,
        client: rss_bytes("self"),
        server: server.rss(),
    }];
    let issued = Arc::new(AtomicU64::new(0));
    let (reached, mut steps) = tokio::sync::mpsc::unbounded_channel();
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let client = client.clone();
        let issued = issued.clone();
        let done = done.clone();
        let reached = reached.clone();
        workers.push(tokio::spawn(async move {
            while issued.fetch_add(1, Ordering::Relaxed) < total {
                let user = client
                    .get_user("123".to_owned())
                    .await
                    .expect("a soak call failed");
                std::hint::black_box(user);
                let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                if finished.is_multiple_of(step) {
                    let _ = reached.send(finished);
                }
            }
        }));
    }
    drop(reached);
    while let Some(calls) = steps.recv().await {
        let previous = checkpoints.last().unwrap();
        let now = Instant::now();
        let checkpoint = Checkpoint {
            calls,
            at: now,
            client: rss_bytes("self"),
            server: server.rss(),
        };
        println!(
            "| {calls} | {:.1} | {:.0} | {:.1} | {:.1} |",
            now.duration_since(started).as_secs_f64(),
            (calls - previous.calls) as f64 / now.duration_since(previous.at).as_secs_f64(),
            mib(checkpoint.client),
            mib(checkpoint.server)
        );
        checkpoints.push(checkpoint);
    }
    for worker in workers {
        worker.await.unwrap();
    }
    checkpoints
}
