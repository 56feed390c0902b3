//! 10,000 idle connections to one server: what each costs in memory, and whether the server
//! keeps answering a live client quickly while it holds them.
//!
//! `cargo bench --bench idle`; `VSP_IDLE_CONNECTIONS=1000` shortens it. Each idle connection is
//! a whole `VspClient` (its own pool) that made one call and then waits, as a service that calls
//! rarely does. The server runs in a child process, so each side's RSS is its own.

mod common;

use std::time::{Duration, Instant};

use common::{mib, raise_open_files, rss_bytes, BenchApiClient, ServerProcess};
use vsp::{ServiceInfo, ServiceMesh, VspClient};

/// Calls made by the live client while the idle connections are held.
const LIVE_CALLS: usize = 2_000;

fn main() {
    if common::serve_if_child() {
        return;
    }
    let wanted: u64 = std::env::var("VSP_IDLE_CONNECTIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let limit = raise_open_files(30_000);
    let connections = wanted.min(limit.saturating_sub(200));
    if connections < wanted {
        println!("(open-file limit {limit}: {connections} connections instead of {wanted})");
    }
    let server = ServerProcess::spawn(1);
    let runtime = common::runtime();
    runtime.block_on(idle(&server, connections as usize));
}

fn client(port: u16) -> BenchApiClient {
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new("bench", "127.0.0.1", port))
        .unwrap();
    BenchApiClient::new(VspClient::builder(mesh).build())
}

/// Latency of `LIVE_CALLS` calls, one at a time, on a fresh client: p50, p99, max.
async fn live_latency(port: u16) -> [Duration; 3] {
    let live = client(port);
    live.get_user("warm-up".to_owned()).await.unwrap();
    let mut took = Vec::with_capacity(LIVE_CALLS);
    for _ in 0..LIVE_CALLS {
        let started = Instant::now();
        live.get_user("123".to_owned()).await.unwrap();
        took.push(started.elapsed());
    }
    took.sort();
    [
        took[took.len() / 2],
        took[took.len() * 99 / 100],
        *took.last().unwrap(),
    ]
}

fn ms(duration: Duration) -> String {
    format!("{:.3}", duration.as_secs_f64() * 1e3)
}

async fn idle(server: &ServerProcess, connections: usize) {
    let port = server.ports[0];
    println!("# {connections} idle connections to one server (loopback)\n");
    let quiet = live_latency(port).await;
    let client_before = rss_bytes("self");
    let server_before = server.rss();
    let opened = Instant::now();
    let mut idle = Vec::with_capacity(connections);
    for _ in 0..connections {
        let client = client(port);
        client.get_user("123".to_owned()).await.unwrap();
        idle.push(client);
    }
    let opened_in = opened.elapsed();
    let busy = live_latency(port).await;
    let client_after = rss_bytes("self");
    let server_after = server.rss();
    let per =
        |before: u64, after: u64| after.saturating_sub(before) as f64 / 1024.0 / connections as f64;
    println!(
        "Opened (one call each) in {:.1} s.\n",
        opened_in.as_secs_f64()
    );
    println!("| side | RSS before MiB | RSS with the idle connections MiB | KiB per connection |");
    println!("|---|---:|---:|---:|");
    println!(
        "| server | {:.1} | {:.1} | {:.1} |",
        mib(server_before),
        mib(server_after),
        per(server_before, server_after)
    );
    println!(
        "| client (a whole VspClient each) | {:.1} | {:.1} | {:.1} |",
        mib(client_before),
        mib(client_after),
        per(client_before, client_after)
    );
    println!(
        "\n{LIVE_CALLS} calls, one at a time, from another client (ms):\n\n\
         | while | p50 | p99 | max |\n|---|---:|---:|---:|"
    );
    println!(
        "| no idle connections | {} | {} | {} |",
        ms(quiet[0]),
        ms(quiet[1]),
        ms(quiet[2])
    );
    println!(
        "| {connections} idle connections | {} | {} | {} |",
        ms(busy[0]),
        ms(busy[1]),
        ms(busy[2])
    );
    println!(
        "\nAnswered in under 10 ms while holding them: {} (max {} ms)",
        if busy[2] < Duration::from_millis(10) {
            "yes"
        } else {
            "no"
        },
        ms(busy[2])
    );
    drop(idle);
}
