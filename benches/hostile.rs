//! The hostile-peer probes of issue 28, run against the example servers as separate processes,
//! from loopback, the way an attacker would: what each costs the server, in figures.
//!
//! `cargo build --profile bench --example streaming --example user_service` first, then
//! `cargo bench --bench hostile`. Environment: `VSP_PROBE_BIN_DIR` (where the example binaries
//! are, default `target/release/examples`), `VSP_PROBE_SECS` (how long the huge-window and
//! long-name probes run, default 8), `VSP_PROBE_PEERS` (abandoned-stream peers per variant,
//! default 1100), `VSP_PROBE_SKIP` (comma-separated probe names to skip: `window`, `abandon`,
//! `reader`, `names`).
//!
//! Every figure is the server's, read from `/proc`: its resident memory, and its sockets in
//! CLOSE_WAIT (connections whose peer left and that the server still holds).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// A server process and its address.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `example` on an ephemeral loopback port and waits (bounded) for its
    /// `listening on` line.
    fn start(example: &str) -> Server {
        let dir = std::env::var("VSP_PROBE_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from("target/release/examples"));
        let binary = dir.join(example);
        assert!(
            binary.exists(),
            "{} is missing: cargo build --profile bench --example {example}",
            binary.display()
        );
        let mut child = Command::new(&binary)
            .args(["--addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{example} did not say `listening on` within 30 s"));
        Server {
            child,
            addr: addr.parse().expect("the example printed an address"),
        }
    }

    /// Resident memory in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server process is gone");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0);
        kib * 1024
    }

    /// Sockets the server process holds open (its listener included): a connection whose peer
    /// left and which the server did not close is one, whatever TCP state it is in (CLOSE_WAIT
    /// after a FIN, gone from the TCP table after a reset).
    fn sockets(&self) -> usize {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", self.child.id())) else {
            return 0;
        };
        fds.filter_map(Result::ok)
            .filter(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
            })
            .count()
    }

    /// The server's sockets in CLOSE_WAIT: accepted connections whose peer closed and which the
    /// server has not closed.
    fn close_wait(&self) -> usize {
        let port = format!("{:04X}", self.addr.port());
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        table
            .lines()
            .skip(1)
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 3 && fields[1].ends_with(&format!(":{port}")) && fields[3] == "08"
            })
            .count()
    }
}

fn frame(json: &str) -> Vec<u8> {
    let mut out = (json.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out
}

fn request(id: &str, service: &str, endpoint: &str, body: &str, stream: Option<u64>) -> Vec<u8> {
    let stream = stream.map_or(String::new(), |window| format!(r#","stream":{window}"#));
    frame(&format!(
        r#"{{"header":{{"request_id":{id},"service":"{service}","endpoint":"{endpoint}","is_response":false{stream}}},"body":{body}}}"#
    ))
}

async fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await.ok()?;
        let mut json = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut json).await.ok()?;
        Some(json)
    })
    .await
    .ok()
    .flatten()
}

/// A health round trip on a new connection: its time, or `None` if it was refused.
async fn health(addr: SocketAddr) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(&request("1", "", "health", "{}", None))
        .await
        .ok()?;
    read_frame(&mut stream).await?;
    Some(started.elapsed())
}

/// As [`health`], with blocking I/O on the calling thread.
fn blocking_health(addr: SocketAddr) -> Option<Duration> {
    use std::io::{Read, Write};
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .write_all(&request("1", "", "health", "{}", None))
        .ok()?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let mut json = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut json).ok()?;
    Some(started.elapsed())
}

/// Waits (at most `bound`) until `done` holds; true if it did.
async fn eventually(bound: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + bound;
    while Instant::now() < until {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

const MIB: f64 = 1024.0 * 1024.0;

/// 1. Four connections ask `ticks` for 10^12 items with a window of 2^32-1 and never read.
async fn huge_window(secs: f64) {
    let server = Server::start("streaming");
    let before = server.rss();
    let mut peers = Vec::new();
    for id in 0..4 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let open = request(
            &id.to_string(),
            "stream-service",
            "ticks",
            r#"{"n":1000000000000}"#,
            Some(u64::from(u32::MAX)),
        );
        stream.write_all(&open).await.unwrap();
        peers.push(stream);
    }
    let started = Instant::now();
    let mut peak = before;
    while started.elapsed().as_secs_f64() < secs {
        tokio::time::sleep(Duration::from_millis(250)).await;
        peak = peak.max(server.rss());
    }
    let worst_health = health(server.addr).await;
    println!(
        "window   4 peers, window 2^32-1, never reading, {secs} s: server RSS {:.1} MiB -> peak {:.1} MiB (growth {:.1} MiB); a health call then {}",
        before as f64 / MIB,
        peak as f64 / MIB,
        (peak - before) as f64 / MIB,
        worst_health.map_or("refused".to_owned(), |t| format!("{:.2} ms", t.as_secs_f64() * 1e3))
    );
}

#[derive(Clone, Copy, Debug)]
enum Abandon {
    AfterOpen,
    ReusedId,
    WithTheFin,
}

/// 2. `peers` peers open `tail` with window 1 and close; then: sockets the server holds.
async fn abandoned_streams(peers: usize) {
    for how in [Abandon::AfterOpen, Abandon::ReusedId, Abandon::WithTheFin] {
        let server = Server::start("streaming");
        let idle_sockets = server.sockets();
        for n in 0..peers {
            let Ok(mut stream) = TcpStream::connect(server.addr).await else {
                continue;
            };
            let open = request(&n.to_string(), "stream-service", "tail", "{}", Some(1));
            match how {
                Abandon::AfterOpen => {
                    if stream.write_all(&open).await.is_err() {
                        continue;
                    }
                    let _ = read_frame(&mut stream).await;
                }
                Abandon::ReusedId => {
                    let again = request("7", "stream-service", "tail", "{}", Some(1));
                    let mut both = again.clone();
                    both.extend(again);
                    if stream.write_all(&both).await.is_err() {
                        continue;
                    }
                    let _ = read_frame(&mut stream).await;
                    let _ = read_frame(&mut stream).await;
                }
                Abandon::WithTheFin => {
                    if stream.write_all(&open).await.is_err() {
                        continue;
                    }
                    let _ = stream.shutdown().await;
                }
            }
            drop(stream);
        }
        // The server has up to 5 s to let go of them.
        let released = eventually(Duration::from_secs(5), || {
            server.sockets() <= idle_sockets && server.close_wait() == 0
        })
        .await;
        let held = server.sockets().saturating_sub(idle_sockets);
        let close_wait = server.close_wait();
        let served = health(server.addr).await;
        println!(
            "abandon  {peers} peers, {how:?}: connections the server still holds after {}: {held} ({close_wait} in CLOSE_WAIT); a new connection from the same address {}",
            if released { "<= 5 s" } else { "5 s" },
            served.map_or("refused".to_owned(), |t| format!("served in {:.2} ms", t.as_secs_f64() * 1e3))
        );
    }
}

/// 3. A peer writes health calls (and echo-sized ones) and never reads: when is it dropped?
async fn never_reading_peer() {
    let server = Server::start("user_service");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let call = request("1", "user-service", "health", "{}", None);
        let batch: Vec<u8> = call
            .iter()
            .copied()
            .cycle()
            .take(call.len() * 1000)
            .collect();
        while write.write_all(&batch).await.is_ok() {}
    });
    // Not read until the server closes: then read what was buffered to find the end.
    let bound = Duration::from_secs(90);
    let closed = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if writer.is_finished() {
            break Some(started.elapsed());
        }
        if started.elapsed() > bound {
            break None;
        }
    };
    let mut sink = tokio::io::sink();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::copy(&mut read, &mut sink),
    )
    .await;
    writer.abort();
    println!(
        "reader   a peer that writes health calls and never reads: {}",
        closed.map_or(format!("still connected after {bound:?}"), |t| format!(
            "dropped after {:.1} s (its writes failed)",
            t.as_secs_f64()
        ))
    );
}

/// 4. Two peers send 8 MiB endpoint names in a loop; other peers' health calls meanwhile.
async fn long_names(secs: f64) {
    let server = Server::start("user_service");
    let addr = server.addr;
    let name = "e".repeat(8 * 1024 * 1024);
    // The baseline: the same bytes as a body of a known endpoint instead of a name.
    let call = if std::env::var_os("VSP_PROBE_NAMES_AS_BODY").is_some() {
        request(
            "1",
            "user-service",
            "health",
            &format!(r#"{{"pad":"{name}"}}"#),
            None,
        )
    } else {
        request("1", "user-service", &name, "{}", None)
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    for _ in 0..2 {
        let call = call.clone();
        let stop = stop.clone();
        attackers.push(tokio::spawn(async move {
            let mut sent = 0u64;
            let mut reply_bytes = 0usize;
            let Ok(stream) = TcpStream::connect(addr).await else {
                return (sent, reply_bytes);
            };
            let (read, mut write) = stream.into_split();
            let reader = tokio::spawn(async move {
                let mut read = BufReader::new(read);
                let mut largest = 0usize;
                loop {
                    let mut len = [0u8; 4];
                    if read.read_exact(&mut len).await.is_err() {
                        return largest;
                    }
                    let len = u32::from_be_bytes(len) as usize;
                    largest = largest.max(len);
                    let mut skip = vec![0u8; len];
                    if read.read_exact(&mut skip).await.is_err() {
                        return largest;
                    }
                    let _ = read.fill_buf().await;
                }
            });
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if write.write_all(&call).await.is_err() {
                    break;
                }
                sent += 1;
            }
            drop(write);
            reply_bytes = tokio::time::timeout(Duration::from_secs(10), reader)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            (sent, reply_bytes)
        }));
    }
    // The other peer measures from a thread of its own (blocking I/O), so what it sees is the
    // server's delay, not the attackers' tasks in this process.
    let measure = std::thread::spawn(move || {
        let started = Instant::now();
        let mut worst = Duration::ZERO;
        let mut calls = 0;
        let mut refused = 0;
        while started.elapsed().as_secs_f64() < secs {
            match blocking_health(addr) {
                Some(took) => {
                    worst = worst.max(took);
                    calls += 1;
                }
                None => refused += 1,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (worst, calls, refused)
    });
    let (worst, calls, refused) = tokio::task::spawn_blocking(move || measure.join().unwrap())
        .await
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = 0;
    let mut largest_reply = 0;
    for attacker in attackers {
        let (n, reply) = attacker.await.unwrap();
        sent += n;
        largest_reply = largest_reply.max(reply);
    }
    println!(
        "names    2 peers sending 8 MiB endpoint names ({sent} sent in {secs} s): other peers' health calls, worst of {calls}: {:.2} ms ({refused} refused); largest answer to a long name: {largest_reply} bytes",
        worst.as_secs_f64() * 1e3
    );
}

fn main() {
    let secs: f64 = env_or("VSP_PROBE_SECS", 8.0);
    let peers: usize = env_or("VSP_PROBE_PEERS", 1100);
    let skip = std::env::var("VSP_PROBE_SKIP").unwrap_or_default();
    let runs = |name: &str| !skip.split(',').any(|skipped| skipped.trim() == name);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if runs("window") {
            huge_window(secs).await;
        }
        if runs("abandon") {
            abandoned_streams(peers).await;
        }
        if runs("names") {
            long_names(secs).await;
        }
        if runs("reader") {
            never_reading_peer().await;
        }
    });
}
