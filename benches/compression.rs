//! Compressed frames where they matter and what they cost: a call answered with 1 MiB of JSON
//! (an array of realistic user records), with and without zstd, over
//!
//! - a link shaped to 100 Mbit/s: the server and the client in two network namespaces this bench
//!   makes, joined by a veth pair whose both ends `tc` limits (`tbf rate 100mbit`), each side a
//!   process of its own (this binary again, under `ip netns exec`): calls/s;
//! - loopback, in this process: calls/s and the CPU time per call of both sides together.
//!
//! `cargo bench --bench compression` (as root, for the namespaces; without root the shaped part
//! prints SKIPPED and the loopback part runs). `VSP_BENCH_SECS` (default 5) per run,
//! `VSP_BENCH_ROUNDS` (default 3) interleaved runs, medians reported. Four calls in flight on one
//! connection in every run, compression or not: like for like.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use vsp::{Compression, ServiceInfo, ServiceMesh, VspClient, VspManager};

#[derive(Serialize, Deserialize, Clone)]
struct User {
    id: u64,
    name: String,
    email: String,
    active: bool,
    created_at: String,
    roles: Vec<String>,
    score: f64,
}

/// About 1 MiB of JSON: records that differ the way real ones do (ids, names, dates, scores).
fn records() -> Vec<User> {
    let first = [
        "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken",
    ];
    let last = [
        "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
    ];
    let mut users = Vec::new();
    let mut size = 0;
    let mut i: u64 = 0;
    while size < 1024 * 1024 {
        let name = format!("{} {}", first[(i % 8) as usize], last[(i / 8 % 8) as usize]);
        let user = User {
            id: 100_000 + i * 7,
            email: format!(
                "{}.{}@example.com",
                name.replace(' ', ".").to_lowercase(),
                i
            ),
            name,
            active: !i.is_multiple_of(3),
            created_at: format!(
                "2026-{:02}-{:02}T{:02}:{:02}:00Z",
                i % 12 + 1,
                i % 28 + 1,
                i % 24,
                i % 60
            ),
            roles: if i.is_multiple_of(5) {
                vec!["admin".into(), "reader".into()]
            } else {
                vec!["reader".into()]
            },
            score: (i * 7919 % 10_000) as f64 / 100.0,
        };
        size += serde_json::to_vec(&user).unwrap().len() + 1;
        users.push(user);
        i += 1;
    }
    users
}

const IN_FLIGHT: usize = 4;

fn settings() -> (Duration, usize) {
    let secs: f64 = std::env::var("VSP_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let rounds = std::env::var("VSP_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    (Duration::from_secs_f64(secs), rounds)
}

fn compression(on: bool) -> Option<Compression> {
    on.then(Compression::zstd)
}

async fn start_server(host: &str, compress: bool) -> (VspManager, SocketAddr) {
    let mut builder = VspManager::builder("records").max_frame_size(64 << 20);
    if let Some(compression) = compression(compress) {
        builder = builder.compression(compression);
    }
    let manager = builder.build();
    let users = std::sync::Arc::new(records());
    manager
        .endpoint("list_users", move |_: serde_json::Value| {
            let users = users.clone();
            async move { Ok::<_, String>(users.as_ref().clone()) }
        })
        .unwrap();
    let addr = manager.start_server(host, 0).await.unwrap();
    (manager, addr)
}

/// Calls `list_users` with `IN_FLIGHT` callers for `secs`: calls per second.
async fn drive(addr: SocketAddr, compress: bool, secs: Duration) -> f64 {
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new(
        "records",
        addr.ip().to_string(),
        addr.port(),
    ))
    .unwrap();
    let mut builder = VspClient::builder(mesh)
        .max_transports(1)
        .max_frame_size(64 << 20)
        .timeout(Duration::from_secs(60));
    if let Some(compression) = compression(compress) {
        builder = builder.compression(compression);
    }
    let client = builder.build();
    // Warm up: the connection, and its negotiation.
    let first: Vec<User> = serde_json::from_value(
        client
            .call("records", "list_users", json!({}))
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(first.len() > 1000);
    let started = Instant::now();
    let callers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut calls = 0u64;
                while started.elapsed() < secs {
                    let users = client
                        .call("records", "list_users", json!({}))
                        .await
                        .unwrap();
                    assert!(users.as_array().is_some_and(|users| users.len() > 1000));
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    let mut calls = 0;
    for caller in callers {
        calls += caller.await.unwrap();
    }
    calls as f64 / started.elapsed().as_secs_f64()
}

/// This process's user + system CPU time.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The two namespaces and the shaped veth pair between them; removed on drop.
struct ShapedLink {
    server_ns: String,
    client_ns: String,
}

const SERVER_IP: &str = "10.77.0.1";
const CLIENT_IP: &str = "10.77.0.2";

impl ShapedLink {
    fn new() -> Result<ShapedLink, String> {
        let id = std::process::id();
        let link = ShapedLink {
            server_ns: format!("vspz-s{id}"),
            client_ns: format!("vspz-c{id}"),
        };
        let (s, c) = (&link.server_ns, &link.client_ns);
        let (vs, vc) = (format!("vzs{id}"), format!("vzc{id}"));
        for args in [
            vec!["netns", "add", s],
            vec!["netns", "add", c],
            vec!["link", "add", &vs, "type", "veth", "peer", "name", &vc],
            vec!["link", "set", &vs, "netns", s],
            vec!["link", "set", &vc, "netns", c],
            vec![
                "-n",
                s,
                "addr",
                "add",
                &format!("{SERVER_IP}/24"),
                "dev",
                &vs,
            ],
            vec![
                "-n",
                c,
                "addr",
                "add",
                &format!("{CLIENT_IP}/24"),
                "dev",
                &vc,
            ],
            vec!["-n", s, "link", "set", &vs, "up"],
            vec!["-n", c, "link", "set", &vc, "up"],
            vec!["-n", s, "link", "set", "lo", "up"],
            vec!["-n", c, "link", "set", "lo", "up"],
        ] {
            run("ip", &args)?;
        }
        for (ns, dev) in [(s, &vs), (c, &vc)] {
            run(
                "ip",
                &[
                    "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                    "100mbit", "burst", "64kb", "latency", "100ms",
                ],
            )?;
        }
        Ok(link)
    }
}

impl Drop for ShapedLink {
    fn drop(&mut self) {
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|err| format!("{program}: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

/// This binary in a namespace, in a role (`VSP_COMPRESSION_ROLE`).
fn child(ns: &str, role: String) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(std::env::current_exe().unwrap())
        .env("VSP_COMPRESSION_ROLE", role)
        .stdout(Stdio::piped())
        .spawn()
        .expect("ip netns exec")
}

fn read_line(child: &mut Child, what: &str) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap_or_else(|err| panic!("reading {what}: {err}"));
    assert!(!line.is_empty(), "{what}: the child ended without a line");
    line.trim().to_owned()
}

/// Calls/s over the shaped link, with compression on or off on both sides.
fn shaped_run(link: &ShapedLink, compress: bool, secs: Duration) -> f64 {
    let mut server = child(&link.server_ns, format!("server:{compress}"));
    let port = read_line(&mut server, "the server's port");
    let mut client = child(
        &link.client_ns,
        format!(
            "client:{SERVER_IP}:{port}:{compress}:{}",
            secs.as_secs_f64()
        ),
    );
    let rate: f64 = read_line(&mut client, "the client's calls/s")
        .parse()
        .unwrap();
    let _ = client.wait();
    let _ = server.kill();
    let _ = server.wait();
    rate
}

fn child_role(role: &str) {
    let parts: Vec<&str> = role.split(':').collect();
    let rt = runtime();
    match parts[..] {
        ["server", compress] => rt.block_on(async {
            let (_manager, addr) = start_server(SERVER_IP, compress == "true").await;
            println!("{}", addr.port());
            std::future::pending::<()>().await;
        }),
        ["client", ip, port, compress, secs] => {
            let addr = SocketAddr::new(ip.parse().unwrap(), port.parse().unwrap());
            let rate = rt.block_on(drive(
                addr,
                compress == "true",
                Duration::from_secs_f64(secs.parse().unwrap()),
            ));
            println!("{rate}");
        }
        _ => panic!("unknown role {role}"),
    }
}

fn main() {
    if let Ok(role) = std::env::var("VSP_COMPRESSION_ROLE") {
        return child_role(&role);
    }
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let (secs, rounds) = settings();
    let body = serde_json::to_vec(&records()).unwrap();
    let compressed = zstd::bulk::compress(&body, 1).unwrap();
    println!(
        "# Compression: a 1 MiB JSON answer ({} bytes; zstd level 1: {} bytes, {:.1}x), {IN_FLIGHT} calls in flight on one connection, medians of {rounds}",
        body.len(),
        compressed.len(),
        body.len() as f64 / compressed.len() as f64
    );

    println!(
        "\n## Over a link shaped to 100 Mbit/s (two network namespaces, a veth pair, tc tbf)\n"
    );
    match ShapedLink::new() {
        Err(err) if std::env::var_os("CI").is_some() => {
            panic!("cannot shape a link in CI, which runs as root: {err}")
        }
        Err(err) => println!("SKIPPED: cannot shape a link here ({err}); run as root"),
        Ok(link) => {
            let (mut plain, mut zstd) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                plain.push(shaped_run(&link, false, secs));
                zstd.push(shaped_run(&link, true, secs));
            }
            let (plain, zstd) = (median(plain), median(zstd));
            println!("| | calls/s | MiB/s of JSON delivered |\n|---|---:|---:|");
            for (name, rate) in [("plain", plain), ("zstd", zstd)] {
                println!(
                    "| {name} | {rate:.1} | {:.1} |",
                    rate * body.len() as f64 / (1024.0 * 1024.0)
                );
            }
            println!("| zstd / plain | {:.2}x | |", zstd / plain);
        }
    }

    println!("\n## On loopback, in one process (2-worker runtime): what compression costs\n");
    let rt = runtime();
    let (mut plain, mut zstd) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for compress in [false, true] {
            let (rate, cpu) = rt.block_on(async {
                let (manager, addr) = start_server("127.0.0.1", compress).await;
                let cpu_before = cpu_time();
                let started = Instant::now();
                let rate = drive(addr, compress, secs).await;
                let calls = rate * started.elapsed().as_secs_f64();
                let cpu = (cpu_time() - cpu_before).as_secs_f64() * 1e6 / calls.max(1.0);
                manager.shutdown().await.unwrap();
                (rate, cpu)
            });
            if compress { &mut zstd } else { &mut plain }.push((rate, cpu));
        }
    }
    let pick = |runs: &Vec<(f64, f64)>| {
        (
            median(runs.iter().map(|r| r.0).collect()),
            median(runs.iter().map(|r| r.1).collect()),
        )
    };
    let (plain, zstd) = (pick(&plain), pick(&zstd));
    println!("| | calls/s | CPU µs per call (both sides) |\n|---|---:|---:|");
    println!("| plain | {:.1} | {:.0} |", plain.0, plain.1);
    println!("| zstd | {:.1} | {:.0} |", zstd.0, zstd.1);
    println!(
        "| zstd / plain | {:.2}x | {:.2}x |",
        zstd.0 / plain.0,
        zstd.1 / plain.1
    );
}
