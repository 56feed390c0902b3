//! Like production: the server and the client in separate processes, each pinned to its own core
//! with a one-worker tokio runtime (what a default runtime makes of a one-core affinity), for raw
//! TCP, VSP with one connection and VSP with its default pool, over a sweep of calls in flight.
//! Beside calls/s and latency, what a service owner pays: the server's CPU time per call (its
//! `/proc/<pid>/stat` user + system time over the measured run, divided by the calls), and the
//! server's memory per call in flight (its resident set under load minus before the run).
//!
//! `VSP_BENCH_SECTION=procs cargo bench --bench rpc` runs this section alone; `VSP_BENCH_SWEEP`
//! (`1,64,256`) narrows the sweep. The bench binary is its own child: `VSP_BENCH_PROC` names
//! the role (`server:<kind>` or `client:<spec>`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    drive_raw, micros, plain_vsp_client, run_vsp, start_raw_server, start_vsp, BenchApiClient,
    Figures, Settings, Workload,
};

/// The environment variable naming a child's role.
pub const ROLE: &str = "VSP_BENCH_PROC";

const SWEEP: [usize; 7] = [1, 4, 16, 64, 256, 1024, 4096];

/// The contenders, by the name the client child knows them by.
const CONTENDERS: [(&str, &str); 3] = [("raw", "raw TCP"), ("one", "VSP 1 conn"), ("pool", "VSP")];

/// Runs this process as the child `role` names (`server:raw`, `server:vsp`, or
/// `client:<kind>:<port>:<concurrency>:<millis>:<server pid>`).
pub fn child(role: &str) {
    let (kind, rest) = role.split_once(':').expect("role:spec");
    match kind {
        "server" => server_child(rest),
        "client" => client_child(rest),
        other => panic!("unknown bench child role {other}"),
    }
}

/// Pins this process (every thread made from now on) to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed `cpu_set_t` is the empty set; the macros only set bits inside it, and
    // `sched_setaffinity` reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let done = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(done, 0, "cannot pin the bench child to CPU {cpu}");
    }
}

fn one_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Serves until its standard input closes; prints the port it listens on first.
fn server_child(kind: &str) {
    pin_to(0);
    let runtime = one_worker_runtime();
    let (port, _server) = runtime.block_on(async {
        match kind {
            "raw" => (start_raw_server().await.port(), None),
            "vsp" => {
                let (manager, addr) = start_vsp(vsp::VspManager::builder("bench")).await;
                (addr.port(), Some(manager))
            }
            other => panic!("unknown server {other}"),
        }
    });
    println!("port {port}");
    std::io::stdout().flush().unwrap();
    // Blocks this thread, not the runtime's worker: the server runs until the parent lets go.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// One measured run against the server at `port`; prints one line of figures.
fn client_child(spec: &str) {
    let parts: Vec<&str> = spec.split(':').collect();
    let [kind, port, concurrency, millis, server_pid] = parts[..] else {
        panic!("bad client spec {spec}");
    };
    let port: u16 = port.parse().unwrap();
    let concurrency: usize = concurrency.parse().unwrap();
    let run = Duration::from_millis(millis.parse().unwrap());
    let server_pid: u32 = server_pid.parse().unwrap();
    pin_to(1);
    let runtime = one_worker_runtime();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let idle_rss = rss_bytes(server_pid);
    let client = match kind {
        "raw" => None,
        // One connection, with room for every call of the sweep on it.
        "one" => Some(BenchApiClient::new(one_connection_client(addr))),
        "pool" => Some(BenchApiClient::new(plain_vsp_client(addr, 5))),
        other => panic!("unknown client {other}"),
    };
    let measure = |until: Instant| {
        let client = client.clone();
        runtime.block_on(async move {
            match client {
                None => drive_raw(addr, Workload::GetUser, concurrency, until).await,
                Some(client) => {
                    let payload = std::sync::Arc::new(String::new());
                    run_vsp(client, payload, Workload::GetUser, concurrency, until).await
                }
            }
        })
    };
    measure(Instant::now() + run / 5);
    let (server_before, client_before) = (cpu_nanos(server_pid), own_cpu_nanos());
    let mut sample = measure(Instant::now() + run);
    let (server_after, client_after) = (cpu_nanos(server_pid), own_cpu_nanos());
    let loaded_rss = rss_bytes(server_pid);
    let calls = sample.latencies.len().max(1) as f64;
    println!(
        "{} {} {} {:.0} {:.0} {}",
        sample.calls_per_sec(),
        sample.percentile(0.5).as_nanos(),
        sample.percentile(0.99).as_nanos(),
        (server_after - server_before) as f64 / calls,
        (client_after - client_before) as f64 / calls,
        loaded_rss.saturating_sub(idle_rss) / concurrency as u64,
    );
}

fn one_connection_client(addr: SocketAddr) -> vsp::VspClient {
    let mesh = vsp::ServiceMesh::new();
    mesh.register(vsp::ServiceInfo::new("bench", "127.0.0.1", addr.port()))
        .unwrap();
    vsp::VspClient::builder(mesh)
        .max_transports(1)
        .max_in_flight_per_connection(SWEEP[SWEEP.len() - 1])
        .build()
}

/// User plus system CPU time of process `pid`, all threads, in nanoseconds.
fn cpu_nanos(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (which may hold spaces) start after its `)`.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // utime and stime: fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    ticks * 1_000_000_000 / per_second
}

/// This process's user plus system CPU time, in nanoseconds.
fn own_cpu_nanos() -> u64 {
    cpu_nanos(std::process::id())
}

/// The resident set of process `pid`, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap();
    let pages: u64 = statm.split(' ').nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

/// A server child, stopped (its standard input closed, then killed) when dropped.
struct ServerChild {
    child: Child,
    port: u16,
}

impl ServerChild {
    fn start(kind: &str) -> ServerChild {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(ROLE, format!("server:{kind}"))
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
            .unwrap_or_else(|| panic!("the {kind} server child said {line:?}, not its port"))
            .parse()
            .unwrap();
        ServerChild { child, port }
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One run's figures, as the client child printed them.
#[derive(Default)]
struct ProcFigures {
    calls: Figures,
    server_cpu_ns: Vec<f64>,
    client_cpu_ns: Vec<f64>,
    rss_per_call: Vec<f64>,
}

/// The client's calls/s, p50 and p99 (ns), the server's and the client's CPU ns per call, and
/// the server's bytes per call in flight.
type Run = (f64, u64, u64, f64, f64, f64);

fn measure_once(kind: &str, concurrency: usize, run: Duration) -> Run {
    let server = ServerChild::start(if kind == "raw" { "raw" } else { "vsp" });
    let spec = format!(
        "client:{kind}:{}:{concurrency}:{}:{}",
        server.port,
        run.as_millis(),
        server.child.id()
    );
    let output = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, spec)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "the {kind} client child failed");
    let text = String::from_utf8(output.stdout).unwrap();
    let numbers: Vec<f64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let [calls_per_sec, p50, p99, server_cpu, client_cpu, rss] = numbers[..] else {
        panic!("the client child printed {text:?}");
    };
    (
        calls_per_sec,
        p50 as u64,
        p99 as u64,
        server_cpu,
        client_cpu,
        rss,
    )
}

/// The section: prints the sweep's table and its ratios.
pub fn section(settings: &Settings) {
    if std::thread::available_parallelism().map_or(0, |n| n.get()) < 2 {
        println!("SKIPPED: separate processes pinned to two cores need two cores");
        return;
    }
    let sweep: Vec<usize> = match std::env::var("VSP_BENCH_SWEEP") {
        Ok(list) => list.split(',').filter_map(|n| n.parse().ok()).collect(),
        Err(_) => SWEEP.to_vec(),
    };
    println!("\n## Separate processes, pinned: server on CPU 0, client on CPU 1, get_user\n");
    println!("Each process runs a one-worker tokio runtime pinned to its core; raw TCP pipelines on one connection, `VSP 1 conn` is `max_transports(1)`, `VSP` the default pool of 5; a fresh server per run; medians of {} rounds of {:?}. Server CPU is its user + system time per call over the run; server memory is its resident set under load minus before, per call in flight.\n", settings.rounds, settings.run);
    println!("| in flight | contender | calls/s | p50 µs | p99 µs | server CPU µs/call | client CPU µs/call | server KiB/call in flight |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    let mut table = Vec::new();
    for &concurrency in &sweep {
        let mut figures: Vec<ProcFigures> = CONTENDERS.iter().map(|_| Default::default()).collect();
        for _ in 0..settings.rounds {
            for ((kind, _), figures) in CONTENDERS.iter().zip(&mut figures) {
                let (calls, p50, p99, server, client, rss) =
                    measure_once(kind, concurrency, settings.run);
                let nanos = Duration::from_nanos;
                figures.calls.push(calls, nanos(p50), nanos(p99));
                figures.server_cpu_ns.push(server);
                figures.client_cpu_ns.push(client);
                figures.rss_per_call.push(rss);
            }
        }
        for ((_, name), figures) in CONTENDERS.iter().zip(&figures) {
            println!(
                "| {concurrency} | {name} | {:.0} | {} | {} | {:.2} | {:.2} | {:.1} |",
                figures.calls.calls(),
                micros(figures.calls.p50()),
                micros(figures.calls.p99()),
                Figures::median(&figures.server_cpu_ns) / 1e3,
                Figures::median(&figures.client_cpu_ns) / 1e3,
                Figures::median(&figures.rss_per_call) / 1024.0,
            );
        }
        table.push((concurrency, figures));
    }
    print_ratios(&table);
}

/// The sweep's ratios, and the goals of issue 31 that the sweep measures.
fn print_ratios(table: &[(usize, Vec<ProcFigures>)]) {
    println!("\n| in flight | VSP 1 conn / raw calls/s | VSP / VSP 1 conn calls/s | VSP 1 conn p50 / raw p50 | VSP server CPU / raw server CPU |");
    println!("|---:|---:|---:|---:|---:|");
    for (concurrency, figures) in table {
        let [raw, one, pool] = &figures[..] else {
            unreachable!("three contenders")
        };
        let cpu = |f: &ProcFigures| Figures::median(&f.server_cpu_ns);
        println!(
            "| {concurrency} | {:.2} | {:.2} | {:.2} | {:.2} |",
            one.calls.calls() / raw.calls.calls(),
            pool.calls.calls() / one.calls.calls(),
            one.calls.p50().as_secs_f64() / raw.calls.p50().as_secs_f64(),
            cpu(one) / cpu(raw),
        );
    }
    let cpu = |f: &ProcFigures| Figures::median(&f.server_cpu_ns);
    let worst_pool = table
        .iter()
        .map(|(c, f)| (f[2].calls.calls() / f[1].calls.calls(), *c))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    let worst_cpu = table
        .iter()
        .map(|(c, f)| (cpu(&f[1]) / cpu(&f[0]), *c))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let (Some((pool, at)), Some((server, cpu_at))) = (worst_pool, worst_cpu) {
        println!("\n| goal (separate processes) | worst ratio over the sweep | target | met |");
        println!("|---|---:|---:|---|");
        let met = |yes: bool| if yes { "yes" } else { "no" };
        println!(
            "| VSP (default pool) / VSP 1 conn, every concurrency | {pool:.2} (at {at}) | ≥ 1 | {} |",
            met(pool >= 1.0)
        );
        println!(
            "| VSP server CPU per call / raw TCP's | {server:.2} (at {cpu_at}) | ≤ 1.5 | {} |",
            met(server <= 1.5)
        );
    }
}
