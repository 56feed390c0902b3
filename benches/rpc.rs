//! VSP side by side with raw TCP and tarpc, in one run, reported as same-run ratios.
//!
//! `cargo bench --bench rpc` (about six minutes). `VSP traced` is VSP with a `tracing`
//! subscriber recording its spans at `INFO` (in a child process: a global subscriber cannot be
//! removed); every other contender runs with none. `VSP_BENCH_SECS=0.3` shortens every run,
//! `VSP_BENCH_ROUNDS=1` runs each pair once, `VSP_BENCH_ONLY=b` runs only the scenarios whose
//! label starts with `b` (and skips the sections after the main table), and
//! `VSP_BENCH_CONTENDER=<name>` runs only that contender (no ceiling, no ratios: for `perf
//! record`), `VSP_BENCH_SECTION=large` only the 1 MiB echo,
//! `VSP_BENCH_SECTION=streams` runs only the streams section (VSP against tonic), and
//! `VSP_BENCH_PROFILE_STREAM=<window>` only VSP streams with that window (for `perf record`).
//!
//! Every contender serves and calls on loopback inside this process, on one 2-thread tokio
//! runtime (every client on a task of it, none on the `block_on` thread), with the same workload: `get_user {"user_id":"123"}` -> `{"id","name","email"}`
//! deserialized into structs on both sides, and a 16 KiB string echoed. The contenders run
//! interleaved (A B C D, A B C D, ...) and each figure is the median over rounds, because these
//! machines switch between two speed modes and only same-run ratios mean anything.

mod common;
#[path = "procs/mod.rs"]
mod procs;
#[path = "tonic_stream/mod.rs"]
mod tonic_stream;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{future, StreamExt};
use serde::{Deserialize, Serialize};
use tarpc::server::Channel;
use tarpc::tokio_serde::formats::{Bincode, Json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vsp::{Address, ServiceInfo, ServiceMesh, VspClient, VspManager, WorkerType};

/// The window a caller gets when it asks `stream: true` without a number (the wire reference).
const DEFAULT_STREAM_WINDOW: u32 = 1024;

// ---------------------------------------------------------------------------------------------
// Counting allocations, for the "allocations per call" figure (one relaxed add per allocation,
// paid by every contender alike).

struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

// ---------------------------------------------------------------------------------------------
// The workload.

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    id: String,
    name: String,
    email: String,
}

fn lookup(user_id: String) -> User {
    User {
        id: user_id,
        name: "John Doe".into(),
        email: "john@example.com".into(),
    }
}

/// The string an echo workload sends (16 KiB, or 1 MiB for `Echo1M`).
fn payload(workload: Workload) -> String {
    match workload {
        Workload::Echo1M => "x".repeat(ONE_MIB),
        _ => "x".repeat(16 * 1024),
    }
}

const ONE_MIB: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Workload {
    GetUser,
    Echo16K,
    /// A 1 MiB string echoed (the large-bodies section), sent borrowed by every contender.
    Echo1M,
}

impl Workload {
    fn label(self) -> &'static str {
        match self {
            Workload::GetUser => "get_user",
            Workload::Echo16K => "echo 16 KiB",
            Workload::Echo1M => "echo 1 MiB",
        }
    }

    fn endpoint(self) -> &'static str {
        match self {
            Workload::GetUser => "get_user",
            Workload::Echo16K | Workload::Echo1M => "echo",
        }
    }
}

/// The echo arguments, borrowed: what `Echo1M` sends, so no contender copies the megabyte
/// before encoding it.
#[derive(Serialize)]
struct EchoArgs<'a> {
    payload: &'a str,
}

// ---------------------------------------------------------------------------------------------
// VSP.

#[vsp::service(name = "bench")]
pub trait BenchApi {
    async fn get_user(&self, user_id: String) -> User;
    async fn echo(&self, payload: String) -> String;
    async fn heavy(&self, spins: u64) -> u64;
    /// `n` users, as a server stream (the streams section).
    async fn stream_users(&self, n: u64) -> vsp::Streaming<User>;
    /// Counts the users streamed to it (the streams section's client streams).
    async fn upload_users(&self, users: vsp::Streaming<User>) -> u64;
    /// Each user streamed to it, back (the streams section's bidirectional streams).
    async fn echo_users(&self, users: vsp::Streaming<User>) -> vsp::Streaming<User>;
}

struct BenchImpl;

impl BenchApi for BenchImpl {
    async fn get_user(&self, user_id: String) -> User {
        lookup(user_id)
    }

    async fn echo(&self, payload: String) -> String {
        payload
    }

    async fn heavy(&self, spins: u64) -> u64 {
        burn(spins)
    }

    async fn stream_users(&self, n: u64) -> vsp::Streaming<User> {
        vsp::Streaming::iter((0..n).map(|_| lookup("123".to_owned())))
    }

    async fn upload_users(&self, users: vsp::Streaming<User>) -> u64 {
        users
            .fold(0, |count, user| async move {
                assert_eq!(user.name, "John Doe");
                count + 1
            })
            .await
    }

    async fn echo_users(&self, users: vsp::Streaming<User>) -> vsp::Streaming<User> {
        vsp::Streaming::new(users)
    }
}

/// CPU work that cannot be optimized away.
fn burn(spins: u64) -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..spins {
        x = x.rotate_left(5) ^ i.wrapping_mul(0x1000_0000_01b3);
    }
    std::hint::black_box(x)
}

async fn start_vsp(builder: vsp::VspManagerBuilder) -> (VspManager, SocketAddr) {
    let manager = builder.build();
    manager.serve(BenchApiServer::new(BenchImpl)).unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    (manager, addr)
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A VSP server on a Unix socket in a fresh directory (removed when the bench ends).
async fn start_vsp_unix() -> (VspManager, Address, TempDir) {
    let dir = std::env::temp_dir().join(format!("vsp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manager = VspManager::builder("bench").build();
    manager.serve(BenchApiServer::new(BenchImpl)).unwrap();
    let addr = manager
        .start_server_at(&Address::unix(dir.join("bench.sock")))
        .await
        .unwrap();
    (manager, addr, TempDir(dir))
}

/// A certificate authority and a server certificate for `localhost`/`127.0.0.1`, made now.
fn bench_pki() -> (vsp_test_support::pki::Ca, vsp_test_support::pki::Issued) {
    let ca = vsp_test_support::pki::Ca::new("bench-ca");
    let cert = ca.issue("bench");
    (ca, cert)
}

/// A VSP server behind TLS (no client certificates), same service as `start_vsp`.
async fn start_vsp_tls(cert: &vsp_test_support::pki::Issued) -> (VspManager, SocketAddr) {
    use vsp::tls::{ServerTls, ServerTlsConfig, TlsListener};
    let manager = VspManager::builder("bench").build();
    manager.serve(BenchApiServer::new(BenchImpl)).unwrap();
    let tls = ServerTls::new(
        ServerTlsConfig::from_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let listener = vsp::transport::TcpListener::bind("127.0.0.1", 0)
        .await
        .unwrap();
    let addr = listener.socket_addr();
    manager
        .start_server_on(TlsListener::new(listener, tls))
        .await
        .unwrap();
    (manager, addr)
}

/// A VSP client that dials with TLS, trusting `ca`; otherwise as `vsp_client`.
fn vsp_tls_client(addr: SocketAddr, ca: &vsp_test_support::pki::Ca) -> VspClient {
    use vsp::tls::{ClientTls, ClientTlsConfig, TlsConnector};
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new("bench", "127.0.0.1", addr.port()).with_tls(true))
        .unwrap();
    let tls = ClientTls::new(
        ClientTlsConfig::new()
            .ca_pem(ca.cert_pem.as_bytes())
            .unwrap(),
    )
    .unwrap();
    VspClient::builder(mesh)
        .max_transports(bench_transports())
        .connector(TlsConnector::new(tls))
        .build()
}

/// Connections per instance for every VSP row: `VSP_BENCH_TRANSPORTS`, default 5.
fn bench_transports() -> usize {
    std::env::var("VSP_BENCH_TRANSPORTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

fn vsp_client(addrs: &[SocketAddr], mesh: ServiceMesh) -> BenchApiClient {
    let addrs: Vec<Address> = addrs
        .iter()
        .map(|addr| Address::tcp("127.0.0.1", addr.port()))
        .collect();
    vsp_client_at(&addrs, mesh)
}

fn vsp_client_at(addrs: &[Address], mesh: ServiceMesh) -> BenchApiClient {
    for addr in addrs {
        mesh.register(ServiceInfo::at("bench", addr.clone()))
            .unwrap();
    }
    BenchApiClient::new(
        VspClient::builder(mesh)
            .max_transports(bench_transports())
            .build(),
    )
}

/// A plain VSP client of the instance at `addr` with `transports` connections at most.
fn plain_vsp_client(addr: SocketAddr, transports: usize) -> VspClient {
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new("bench", "127.0.0.1", addr.port()))
        .unwrap();
    VspClient::builder(mesh).max_transports(transports).build()
}

// ---------------------------------------------------------------------------------------------
// tarpc.

#[tarpc::service]
pub trait TarpcApi {
    async fn get_user(user_id: String) -> User;
    async fn echo(payload: String) -> String;
}

#[derive(Clone)]
struct TarpcImpl;

impl TarpcApi for TarpcImpl {
    async fn get_user(self, _: tarpc::context::Context, user_id: String) -> User {
        lookup(user_id)
    }

    async fn echo(self, _: tarpc::context::Context, payload: String) -> String {
        payload
    }
}

async fn spawn_detached(fut: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(fut);
}

macro_rules! start_tarpc {
    ($codec:expr) => {{
        let mut listener = tarpc::serde_transport::tcp::listen("127.0.0.1:0", $codec)
            .await
            .unwrap();
        listener.config_mut().max_frame_length(usize::MAX);
        let addr = listener.local_addr();
        tokio::spawn(
            listener
                .filter_map(|accepted| future::ready(accepted.ok()))
                .map(tarpc::server::BaseChannel::with_defaults)
                .map(|channel| channel.execute(TarpcImpl.serve()).for_each(spawn_detached))
                .buffer_unordered(usize::MAX)
                .for_each(|_| async {}),
        );
        let mut connect = tarpc::serde_transport::tcp::connect(addr, $codec);
        connect.config_mut().max_frame_length(usize::MAX);
        let transport = connect.await.unwrap();
        TarpcApiClient::new(tarpc::client::Config::default(), transport).spawn()
    }};
}

fn tarpc_context() -> tarpc::context::Context {
    let mut context = tarpc::context::current();
    context.deadline = Instant::now() + Duration::from_secs(60);
    context
}

// ---------------------------------------------------------------------------------------------
// Raw TCP: the same frames, one connection, pipelined, no framework. The practical limit.

#[derive(Serialize, Deserialize)]
struct RawHeader {
    request_id: u64,
    service: String,
    endpoint: String,
    is_response: bool,
}

#[derive(Deserialize)]
struct RawRequest {
    header: RawHeader,
    body: RawArgs,
}

#[derive(Deserialize)]
struct RawArgs {
    user_id: Option<String>,
    payload: Option<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum RawResult {
    User(User),
    Echo(String),
}

#[derive(Serialize)]
struct RawResponse {
    header: RawHeader,
    body: RawResult,
}

#[derive(Deserialize)]
struct RawResponseIn<T> {
    #[allow(dead_code)]
    header: RawHeader,
    body: T,
}

fn push_frame(out: &mut Vec<u8>, value: &impl Serialize) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut *out, value).unwrap();
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Splits whole frames off the front of `buf`, calling `each` with their JSON.
fn drain_frames(buf: &mut Vec<u8>, mut each: impl FnMut(&[u8])) {
    let mut at = 0;
    while buf.len() - at >= 4 {
        let len = u32::from_be_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        if buf.len() - at - 4 < len {
            break;
        }
        each(&buf[at + 4..at + 4 + len]);
        at += 4 + len;
    }
    buf.drain(..at);
}

async fn start_raw_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let (mut read, mut write) = stream.into_split();
                let mut buf = Vec::with_capacity(64 * 1024);
                let mut out = Vec::with_capacity(64 * 1024);
                loop {
                    match read.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    drain_frames(&mut buf, |json| {
                        let request: RawRequest = serde_json::from_slice(json).unwrap();
                        let body = match (request.body.user_id, request.body.payload) {
                            (Some(user_id), _) => RawResult::User(lookup(user_id)),
                            (_, Some(payload)) => RawResult::Echo(payload),
                            _ => RawResult::Echo(String::new()),
                        };
                        let header = RawHeader {
                            is_response: true,
                            ..request.header
                        };
                        push_frame(&mut out, &RawResponse { header, body });
                    });
                    if write.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
            });
        }
    });
    addr
}

/// Appends request `id` of `workload` as one frame: the same envelope VSP sends, written
/// straight into `out` (no allocation).
fn push_raw_request(out: &mut Vec<u8>, workload: Workload, id: u64, payload: &str) {
    use std::io::Write;
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    write!(
        out,
        r#"{{"header":{{"request_id":{id},"service":"bench","endpoint":"{}","is_response":false}},"body":"#,
        workload.endpoint()
    )
    .unwrap();
    match workload {
        Workload::GetUser => out.extend_from_slice(br#"{"user_id":"123"}"#),
        Workload::Echo16K | Workload::Echo1M => {
            serde_json::to_writer(&mut *out, &EchoArgs { payload }).unwrap()
        }
    }
    out.push(b'}');
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Decodes a raw response frame into the workload's result type.
fn decode_raw_response(workload: Workload, json: &[u8]) {
    match workload {
        Workload::GetUser => {
            let response: RawResponseIn<User> = serde_json::from_slice(json).unwrap();
            std::hint::black_box(response.body);
        }
        Workload::Echo16K | Workload::Echo1M => {
            let response: RawResponseIn<String> = serde_json::from_slice(json).unwrap();
            std::hint::black_box(response.body);
        }
    }
}

/// Keeps `window` requests in flight on one connection until `until`, on one task spawned on
/// the runtime (as every framework client's callers are: a task on the test's own
/// `block_on` thread pays a cross-thread wake-up per read and is no limit).
async fn drive_raw(addr: SocketAddr, workload: Workload, window: usize, until: Instant) -> Sample {
    tokio::spawn(drive_raw_task(addr, workload, window, until))
        .await
        .unwrap()
}

async fn drive_raw_task(
    addr: SocketAddr,
    workload: Workload,
    window: usize,
    until: Instant,
) -> Sample {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut read, write) = stream.into_split();
    let mut write = RawSink::new(write, workload);
    let payload = payload(workload);
    let mut next_id = 0u64;
    let mut sent_at = VecDeque::with_capacity(window);
    let mut out = Vec::new();
    for _ in 0..window {
        next_id += 1;
        push_raw_request(&mut out, workload, next_id, &payload);
        sent_at.push_back(Instant::now());
    }
    write.send(&mut out).await;
    let mut sample = Sample::default();
    let started = Instant::now();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut in_flight = window;
    while in_flight > 0 {
        if read.read_buf(&mut buf).await.unwrap() == 0 {
            break;
        }
        let now = Instant::now();
        let mut answered = 0;
        drain_frames(&mut buf, |json| {
            decode_raw_response(workload, json);
            let sent = sent_at.pop_front().unwrap();
            sample.latencies.push((now - sent).as_nanos() as u64);
            answered += 1;
        });
        in_flight -= answered;
        if now < until {
            for _ in 0..answered {
                next_id += 1;
                push_raw_request(&mut out, workload, next_id, &payload);
                sent_at.push_back(Instant::now());
            }
            in_flight += answered;
            write.send(&mut out).await;
        }
    }
    sample.elapsed = started.elapsed();
    sample
}

/// Where the pipelined raw client's requests go: written by the reading task itself, or (for
/// 1 MiB bodies) by a writer task of its own, since a task blocked writing megabytes that
/// reads nothing meanwhile deadlocks against a server that answers while it reads (VSP has a
/// writer task too).
enum RawSink {
    Direct(tokio::net::tcp::OwnedWriteHalf),
    Task(tokio::sync::mpsc::UnboundedSender<Vec<u8>>),
}

impl RawSink {
    fn new(mut write: tokio::net::tcp::OwnedWriteHalf, workload: Workload) -> Self {
        if workload != Workload::Echo1M {
            return RawSink::Direct(write);
        }
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(bytes) = receiver.recv().await {
                if write.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        });
        RawSink::Task(sender)
    }

    /// Sends and empties `out`.
    async fn send(&mut self, out: &mut Vec<u8>) {
        match self {
            RawSink::Direct(write) => {
                write.write_all(out).await.unwrap();
                out.clear();
            }
            RawSink::Task(sender) => sender.send(std::mem::take(out)).unwrap(),
        }
    }
}

/// One call at a time on one connection, written and read by one task (no split, no queue,
/// no channel): the floor for one call in flight.
async fn drive_raw_one_task(addr: SocketAddr, workload: Workload, until: Instant) -> Sample {
    tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let payload = payload(workload);
        let (mut out, mut buf) = (Vec::new(), Vec::new());
        let mut sample = Sample::default();
        let started = Instant::now();
        let mut id = 0;
        while Instant::now() < until {
            let t0 = Instant::now();
            id += 1;
            out.clear();
            push_raw_request(&mut out, workload, id, &payload);
            stream.write_all(&out).await.unwrap();
            let mut len = [0u8; 4];
            stream.read_exact(&mut len).await.unwrap();
            buf.resize(u32::from_be_bytes(len) as usize, 0);
            stream.read_exact(&mut buf).await.unwrap();
            decode_raw_response(workload, &buf);
            sample.latencies.push(t0.elapsed().as_nanos() as u64);
        }
        sample.elapsed = started.elapsed();
        sample
    })
    .await
    .unwrap()
}

/// The JSON-only ceiling of `get_user`: what no JSON-over-TCP RPC can skip (encode the request
/// envelope, decode it into a struct, encode the response envelope, decode it into a `User`),
/// with no I/O, on 2 threads (one per core, as the runtime has) for `run`; calls per second.
fn json_ceiling(run: Duration) -> f64 {
    let until = Instant::now() + run;
    let started = Instant::now();
    let calls: u64 = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(move || {
                    let (mut request, mut response) = (Vec::new(), Vec::new());
                    let mut calls = 0u64;
                    while Instant::now() < until {
                        for _ in 0..64 {
                            calls += 1;
                            request.clear();
                            push_raw_request(&mut request, Workload::GetUser, calls, "");
                            let decoded: RawRequest =
                                serde_json::from_slice(&request[4..]).unwrap();
                            let user = lookup(decoded.body.user_id.unwrap());
                            let header = RawHeader {
                                is_response: true,
                                ..decoded.header
                            };
                            response.clear();
                            push_frame(
                                &mut response,
                                &RawResponse {
                                    header,
                                    body: RawResult::User(user),
                                },
                            );
                            decode_raw_response(Workload::GetUser, &response[4..]);
                        }
                    }
                    calls
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    });
    calls as f64 / started.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// Driving framework clients: `concurrency` tasks, each calling in a loop until `until`.

#[derive(Default)]
struct Sample {
    latencies: Vec<u64>,
    elapsed: Duration,
}

impl Sample {
    fn calls_per_sec(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&mut self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies.sort_unstable();
        let index = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        Duration::from_nanos(self.latencies[index])
    }
}

async fn drive<F, Fut>(concurrency: usize, until: Instant, call: F) -> Sample
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(4096);
                while Instant::now() < until {
                    let t0 = Instant::now();
                    call().await;
                    latencies.push(t0.elapsed().as_nanos() as u64);
                }
                latencies
            })
        })
        .collect();
    let mut sample = Sample::default();
    for task in tasks {
        sample.latencies.extend(task.await.unwrap());
    }
    sample.elapsed = started.elapsed();
    sample
}

// ---------------------------------------------------------------------------------------------
// Contenders.

#[derive(Clone)]
enum Contender {
    /// Pipelined on one connection, one task.
    Raw(SocketAddr),
    /// One call at a time, written and read on one task: only with one call in flight.
    RawOneTask(SocketAddr),
    TarpcJson(TarpcApiClient),
    TarpcBincode(TarpcApiClient),
    Vsp(BenchApiClient),
    /// VSP sending its arguments borrowed (`call_typed` with `EchoArgs`): the 1 MiB echo.
    VspBorrowed(VspClient),
    /// VSP in a child process that records its spans (see `traced_child`).
    Traced,
}

/// Set in a child process of this bench: run `VSP traced` (`workload:concurrency:millis`).
const TRACED_CHILD: &str = "VSP_BENCH_TRACED_CHILD";

/// Spans the child's subscriber saw opened: proof that `VSP traced` records.
static SPANS_RECORDED: AtomicU64 = AtomicU64::new(0);
/// Spans recorded by the traced children of this run, summed.
static CHILD_SPANS: AtomicU64 = AtomicU64::new(0);

/// Counts the spans opened (next to the fmt layer, which formats and keeps their fields).
struct CountSpans;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountSpans {
    fn on_new_span(
        &self,
        _: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        SPANS_RECORDED.fetch_add(1, Ordering::Relaxed);
    }
}

/// `VSP traced` runs in a child process whose global subscriber records every span at `INFO`
/// (the fmt layer, formatting span fields as a log would, writing to a sink): what VSP's spans
/// cost when someone listens. A process of its own because a global subscriber cannot be
/// removed again, and per-thread ones would change how every other contender's spans are
/// filtered. The child serves and calls as the `VSP` contender does, and writes its sample to
/// stdout: the elapsed nanoseconds, the spans recorded, then every latency (u64 little-endian).
fn traced_child(spec: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    let fields: Vec<&str> = spec.split(':').collect();
    let workload = match fields[0] {
        "get_user" => Workload::GetUser,
        _ => Workload::Echo16K,
    };
    let concurrency: usize = fields[1].parse().unwrap();
    let run = Duration::from_millis(fields[2].parse().unwrap());
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(std::io::sink),
            )
            .with(CountSpans)
            .with(tracing_subscriber::filter::LevelFilter::INFO),
    )
    .unwrap();
    let sample = common::runtime().block_on(async {
        let (_server, addr) = start_vsp(VspManager::builder("bench")).await;
        let vsp = Contender::Vsp(vsp_client(&[addr], ServiceMesh::new()));
        // Warm up (connections, allocator) as the other contenders are before each run.
        vsp.run(workload, concurrency, Instant::now() + run / 4)
            .await;
        vsp.run(workload, concurrency, Instant::now() + run).await
    });
    let mut out = Vec::with_capacity(16 + sample.latencies.len() * 8);
    out.extend_from_slice(&(sample.elapsed.as_nanos() as u64).to_le_bytes());
    out.extend_from_slice(&SPANS_RECORDED.load(Ordering::Relaxed).to_le_bytes());
    for latency in &sample.latencies {
        out.extend_from_slice(&latency.to_le_bytes());
    }
    std::io::Write::write_all(&mut std::io::stdout(), &out).unwrap();
}

/// Runs `VSP traced` in a child process (see `traced_child`) until `until`.
async fn run_traced_child(workload: Workload, concurrency: usize, until: Instant) -> Sample {
    let millis = until.saturating_duration_since(Instant::now()).as_millis();
    let spec = format!(
        "{}:{concurrency}:{millis}",
        workload.label().split(' ').next().unwrap_or("")
    );
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .arg("--bench")
            .env(TRACED_CHILD, spec)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the traced child failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let words: Vec<u64> = output
        .stdout
        .chunks_exact(8)
        .map(|chunk| u64::from_le_bytes(chunk.try_into().unwrap()))
        .collect();
    CHILD_SPANS.fetch_add(words[1], Ordering::Relaxed);
    Sample {
        latencies: words[2..].to_vec(),
        elapsed: Duration::from_nanos(words[0]),
    }
}

impl Contender {
    async fn run(&self, workload: Workload, concurrency: usize, until: Instant) -> Sample {
        let payload = Arc::new(payload(workload));
        match self.clone() {
            Contender::Traced => run_traced_child(workload, concurrency, until).await,
            Contender::Raw(addr) => drive_raw(addr, workload, concurrency, until).await,
            Contender::RawOneTask(addr) => {
                assert_eq!(
                    concurrency, 1,
                    "the one-task raw client makes one call at a time"
                );
                drive_raw_one_task(addr, workload, until).await
            }
            Contender::TarpcJson(client) | Contender::TarpcBincode(client) => {
                drive(concurrency, until, move || {
                    let client = client.clone();
                    let payload = payload.clone();
                    async move {
                        match workload {
                            Workload::GetUser => {
                                let user = client
                                    .get_user(tarpc_context(), "123".into())
                                    .await
                                    .unwrap();
                                std::hint::black_box(user);
                            }
                            Workload::Echo16K | Workload::Echo1M => {
                                let echoed = client
                                    .echo(tarpc_context(), (*payload).clone())
                                    .await
                                    .unwrap();
                                std::hint::black_box(echoed);
                            }
                        }
                    }
                })
                .await
            }
            Contender::Vsp(client) => run_vsp(client, payload, workload, concurrency, until).await,
            Contender::VspBorrowed(client) => {
                drive(concurrency, until, move || {
                    let client = client.clone();
                    let payload = payload.clone();
                    async move {
                        let echoed: String = client
                            .call_typed(
                                "bench",
                                workload.endpoint(),
                                EchoArgs { payload: &payload },
                            )
                            .await
                            .unwrap();
                        std::hint::black_box(echoed);
                    }
                })
                .await
            }
        }
    }
}

async fn run_vsp(
    client: BenchApiClient,
    payload: Arc<String>,
    workload: Workload,
    concurrency: usize,
    until: Instant,
) -> Sample {
    drive(concurrency, until, move || {
        let client = client.clone();
        let payload = payload.clone();
        async move {
            match workload {
                Workload::GetUser => {
                    let user = client.get_user("123".into()).await.unwrap();
                    std::hint::black_box(user);
                }
                Workload::Echo16K => {
                    let echoed = client.echo((*payload).clone()).await.unwrap();
                    std::hint::black_box(echoed);
                }
                Workload::Echo1M => unreachable!("the 1 MiB echo runs as Contender::VspBorrowed"),
            }
        }
    })
    .await
}

struct Settings {
    run: Duration,
    warmup: Duration,
    rounds: usize,
    only: Option<String>,
}

impl Settings {
    fn from_env() -> Self {
        let secs = std::env::var("VSP_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(1.0);
        let rounds = std::env::var("VSP_BENCH_ROUNDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3);
        Settings {
            run: Duration::from_secs_f64(secs),
            warmup: Duration::from_secs_f64(secs / 5.0),
            rounds,
            only: std::env::var("VSP_BENCH_ONLY").ok(),
        }
    }

    async fn measure(
        &self,
        contender: &Contender,
        workload: Workload,
        concurrency: usize,
    ) -> Sample {
        contender
            .run(workload, concurrency, Instant::now() + self.warmup)
            .await;
        contender
            .run(workload, concurrency, Instant::now() + self.run)
            .await
    }
}

/// The median of each figure over rounds.
#[derive(Default)]
struct Figures {
    calls_per_sec: Vec<f64>,
    p50: Vec<Duration>,
    p99: Vec<Duration>,
}

impl Figures {
    fn add(&mut self, mut sample: Sample) {
        let (p50, p99) = (sample.percentile(0.50), sample.percentile(0.99));
        self.push(sample.calls_per_sec(), p50, p99);
    }

    /// One round's figures, measured elsewhere (a child process).
    fn push(&mut self, calls_per_sec: f64, p50: Duration, p99: Duration) {
        self.calls_per_sec.push(calls_per_sec);
        self.p50.push(p50);
        self.p99.push(p99);
    }

    fn median<T: Copy + PartialOrd>(values: &[T]) -> T {
        let mut sorted = values.to_vec();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        sorted[sorted.len() / 2]
    }

    fn calls(&self) -> f64 {
        Self::median(&self.calls_per_sec)
    }

    fn p50(&self) -> Duration {
        Self::median(&self.p50)
    }

    fn p99(&self) -> Duration {
        Self::median(&self.p99)
    }
}

fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn main() {
    if let Ok(spec) = std::env::var(TRACED_CHILD) {
        return traced_child(&spec);
    }
    if let Ok(role) = std::env::var(procs::ROLE) {
        return procs::child(&role);
    }
    let settings = Settings::from_env();
    let section = std::env::var("VSP_BENCH_SECTION");
    if section.as_deref() != Ok("procs") {
        common::runtime().block_on(bench(&settings));
    }
    // Outside the in-process runtime: this section's processes get the cores to themselves.
    let whole_run = section.is_err()
        && settings.only.is_none()
        && std::env::var("VSP_BENCH_CONTENDER").is_err()
        && std::env::var("VSP_BENCH_PROFILE_STREAM").is_err();
    if whole_run || section.as_deref() == Ok("procs") {
        procs::section(&settings);
    }
}

async fn bench(settings: &Settings) {
    if std::env::var("VSP_BENCH_SECTION").as_deref() == Ok("streams") {
        return streams_section(settings).await;
    }
    if std::env::var("VSP_BENCH_SECTION").as_deref() == Ok("large") {
        let (_server, addr) = start_vsp(VspManager::builder("bench")).await;
        return large_bodies_section(settings, start_raw_server().await, addr).await;
    }
    if let Ok(profile) = std::env::var("VSP_BENCH_PROFILE_STREAM") {
        // Only VSP streams, for a profiler: `VSP_BENCH_PROFILE_STREAM=<window>`.
        let (_server, addr) = start_vsp(VspManager::builder("bench")).await;
        let mesh = ServiceMesh::new();
        mesh.register(ServiceInfo::new("bench", "127.0.0.1", addr.port()))
            .unwrap();
        let vsp = VspClient::builder(mesh).max_transports(1).build();
        let window = profile.parse().unwrap_or(DEFAULT_STREAM_WINDOW);
        let rate = per_second(settings.run, || read_vsp_stream(&vsp, window)).await;
        return println!("VSP stream, window {window}: {rate:.0} items/s");
    }
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    println!(
        "# VSP benchmark\n\n{} cores ({machine}), tokio runtime with 2 worker threads; {} rounds of {:?} per contender, interleaved; medians.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        settings.rounds,
        settings.run
    );

    let raw_addr = start_raw_server().await;
    let raw = Contender::Raw(raw_addr);
    let raw_one_task = Contender::RawOneTask(raw_addr);
    let tarpc_json = Contender::TarpcJson(start_tarpc!(Json::default));
    let tarpc_bincode = Contender::TarpcBincode(start_tarpc!(Bincode::default));
    let (_vsp_server, vsp_addr) = start_vsp(VspManager::builder("bench")).await;
    let vsp = Contender::Vsp(vsp_client(&[vsp_addr], ServiceMesh::new()));
    // Like for like with the one-connection peers (raw TCP, tarpc): the same VSP client with a
    // pool of one connection.
    let vsp_one = Contender::Vsp(BenchApiClient::new(plain_vsp_client(vsp_addr, 1)));
    // The same VSP client and server code over a Unix domain socket: not a TCP contender, but
    // what the transport seam costs or saves next to TCP on one machine.
    let (_vsp_unix_server, vsp_unix_addr, _unix_dir) = start_vsp_unix().await;
    let vsp_unix = Contender::Vsp(vsp_client_at(&[vsp_unix_addr], ServiceMesh::new()));
    // The same VSP client and server over TLS 1.3 (rustls, ring), same pool size.
    let (ca, cert) = bench_pki();
    let (_vsp_tls_server, vsp_tls_addr) = start_vsp_tls(&cert).await;
    let vsp_tls = Contender::Vsp(BenchApiClient::new(vsp_tls_client(vsp_tls_addr, &ca)));
    // The same VSP client and server in a child process with a subscriber recording spans at
    // INFO (see `traced_child`), and, like for like, VSP in a child process without one.
    let vsp_traced = Contender::Traced;
    let contenders = [
        ("raw TCP", &raw),
        ("raw TCP 1 task", &raw_one_task),
        ("tarpc json", &tarpc_json),
        ("tarpc bincode", &tarpc_bincode),
        ("VSP", &vsp),
        ("VSP 1 conn", &vsp_one),
        ("VSP unix socket", &vsp_unix),
        ("VSP TLS", &vsp_tls),
        ("VSP traced", &vsp_traced),
    ];
    let at = |wanted: &str| {
        contenders
            .iter()
            .position(|(name, _)| *name == wanted)
            .unwrap()
    };

    // (a) one call in flight, (b) 64 concurrent, (c) 256 concurrent; both workloads.
    let scenarios = [
        ("a: 1 in flight", 1usize),
        ("b: 64 concurrent", 64),
        ("c: 256 concurrent", 256),
    ];
    let workloads = [Workload::GetUser, Workload::Echo16K];
    let mut results: BTreeMap<(usize, usize, usize), Figures> = BTreeMap::new();
    let mut ceiling = Vec::new();
    let selected = |label: &str| {
        settings
            .only
            .as_ref()
            .is_none_or(|only| label.starts_with(only.as_str()))
    };
    for _ in 0..settings.rounds {
        for (s, (label, concurrency)) in scenarios.iter().enumerate() {
            if !selected(label) {
                continue;
            }
            for (w, workload) in workloads.iter().enumerate() {
                if std::env::var("VSP_BENCH_WORKLOAD").is_ok_and(|only| only != workload.label()) {
                    continue;
                }
                for (c, (name, contender)) in contenders.iter().enumerate() {
                    if std::env::var("VSP_BENCH_CONTENDER").is_ok_and(|only| only != *name) {
                        continue;
                    }
                    if matches!(contender, Contender::RawOneTask(_)) && *concurrency > 1 {
                        continue; // one call at a time by construction
                    }
                    let sample = settings.measure(contender, *workload, *concurrency).await;
                    results.entry((s, w, c)).or_default().add(sample);
                }
            }
        }
        if std::env::var("VSP_BENCH_CONTENDER").is_err() {
            ceiling.push(json_ceiling(settings.run));
        }
    }

    println!("| scenario | workload | contender | calls/s | p50 µs | p99 µs |");
    println!("|---|---|---|---:|---:|---:|");
    for (s, (scenario, _)) in scenarios
        .iter()
        .enumerate()
        .filter(|(_, (l, _))| selected(l))
    {
        for (w, workload) in workloads.iter().enumerate() {
            for (c, (name, _)) in contenders.iter().enumerate() {
                let Some(figures) = results.get(&(s, w, c)) else {
                    continue;
                };
                println!(
                    "| {scenario} | {} | {name} | {:.0} | {} | {} |",
                    workload.label(),
                    figures.calls(),
                    micros(figures.p50()),
                    micros(figures.p99())
                );
            }
        }
    }
    if std::env::var("VSP_BENCH_CONTENDER").is_ok() {
        return; // one contender alone (for a profiler): no ceiling, no ratios
    }
    let ceiling = Figures::median(&ceiling);
    println!(
        "\nJSON-only ceiling (get_user's four JSON steps, no I/O, 2 threads): {ceiling:.0} calls/s"
    );
    println!(
        "\n## Ratios, VSP / peer, same run (throughput: higher is better; p50: lower is better)\n"
    );
    println!("| scenario | workload | vs raw TCP | VSP 1 conn vs raw TCP | vs tarpc json | vs tarpc bincode | p50 vs tarpc json | p50 vs tarpc bincode | VSP unix / VSP TCP | VSP TLS / VSP TCP | VSP traced / VSP |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (s, (scenario, _)) in scenarios
        .iter()
        .enumerate()
        .filter(|(_, (l, _))| selected(l))
    {
        for (w, workload) in workloads.iter().enumerate() {
            // A workload left out by VSP_BENCH_WORKLOAD has no figures.
            if (0..contenders.len())
                .any(|c| c != at("raw TCP 1 task") && !results.contains_key(&(s, w, c)))
            {
                continue;
            }
            let calls = |c: usize| results[&(s, w, c)].calls();
            let vsp = &results[&(s, w, at("VSP"))];
            let ratio = |c: usize| vsp.calls() / calls(c);
            let p50_ratio =
                |c: usize| vsp.p50().as_secs_f64() / results[&(s, w, c)].p50().as_secs_f64();
            println!(
                "| {scenario} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                workload.label(),
                ratio(at("raw TCP")),
                calls(at("VSP 1 conn")) / calls(at("raw TCP")),
                ratio(at("tarpc json")),
                ratio(at("tarpc bincode")),
                p50_ratio(at("tarpc json")),
                p50_ratio(at("tarpc bincode")),
                calls(at("VSP unix socket")) / vsp.calls(),
                calls(at("VSP TLS")) / vsp.calls(),
                calls(at("VSP traced")) / vsp.calls(),
            );
        }
    }

    // The speed goals, as same-run ratios of get_user.
    let figures = |s: usize, c: &str| results.get(&(s, 0, at(c)));
    let mut goals = Vec::new();
    for (s, label) in [(1, "64"), (2, "256")] {
        if let (Some(one), Some(raw)) = (figures(s, "VSP 1 conn"), figures(s, "raw TCP")) {
            goals.push((
                format!("VSP 1 conn / raw TCP, {label} concurrent"),
                one.calls() / raw.calls(),
                0.9,
                true,
            ));
        }
        // The pool opens connections only when saturated: never slower than one connection
        // (within this machine's run-to-run noise, which the target does not forgive).
        if let (Some(vsp), Some(one)) = (figures(s, "VSP"), figures(s, "VSP 1 conn")) {
            goals.push((
                format!("VSP (default pool) / VSP 1 conn, {label} concurrent"),
                vsp.calls() / one.calls(),
                1.0,
                true,
            ));
        }
    }
    if let (Some(vsp), Some(raw)) = (figures(0, "VSP"), figures(0, "raw TCP 1 task")) {
        goals.push((
            "VSP p50 / raw TCP 1 task p50, 1 in flight".to_owned(),
            vsp.p50().as_secs_f64() / raw.p50().as_secs_f64(),
            1.1,
            false,
        ));
    }
    if let Some(vsp) = figures(2, "VSP") {
        goals.push((
            "VSP / JSON-only ceiling, 256 concurrent".to_owned(),
            vsp.calls() / ceiling,
            0.4,
            true,
        ));
    }
    if !goals.is_empty() {
        println!("\n## Goals (get_user, same run)\n");
        println!("| goal | ratio | target | met |");
        println!("|---|---:|---:|---|");
        for (name, ratio, target, at_least) in goals {
            let met = if at_least {
                ratio >= target
            } else {
                ratio <= target
            };
            let sign = if at_least { "≥" } else { "≤" };
            println!(
                "| {name} | {ratio:.2} | {sign} {target} | {} |",
                if met { "yes" } else { "no" }
            );
        }
    }

    let spans = CHILD_SPANS.load(Ordering::Relaxed);
    println!("\n`VSP traced` recorded {spans} spans in this run (three per call: client, attempt, server).");
    if settings.only.is_some() {
        return;
    }

    large_bodies_section(settings, raw_addr, vsp_addr).await;

    // Allocations per call: one call at a time, client and server both in this process.
    println!("\n## Allocations per call (get_user, one in flight, client and server together)\n");
    println!("| contender | allocations per call |");
    println!("|---|---:|");
    for (name, contender) in contenders.iter() {
        if matches!(contender, Contender::Traced) {
            continue; // its calls are made in another process
        }
        contender
            .run(Workload::GetUser, 1, Instant::now() + settings.warmup)
            .await;
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let sample = contender
            .run(Workload::GetUser, 1, Instant::now() + settings.run / 2)
            .await;
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        println!(
            "| {name} | {:.1} |",
            allocations as f64 / sample.latencies.len().max(1) as f64
        );
    }

    // What a new connection costs: connect (and handshake) plus one health call, one at a time,
    // a fresh client each time so nothing is pooled.
    println!("\n## New connection cost (connect, TLS handshake, first call), one at a time\n");
    println!("| transport | per new connection µs (median) |");
    println!("|---|---:|");
    let connections = 200;
    for (name, tls) in [("VSP TCP", false), ("VSP TLS 1.3", true)] {
        let mut times = Vec::with_capacity(connections);
        for _ in 0..connections {
            let client = if tls {
                vsp_tls_client(vsp_tls_addr, &ca)
            } else {
                let mesh = ServiceMesh::new();
                mesh.register(ServiceInfo::new("bench", "127.0.0.1", vsp_addr.port()))
                    .unwrap();
                VspClient::builder(mesh).build()
            };
            let started = Instant::now();
            client
                .call("bench", "health", serde_json::json!({}))
                .await
                .unwrap();
            times.push(started.elapsed());
        }
        times.sort();
        println!("| {name} | {} |", micros(times[times.len() / 2]));
    }

    // (d) three VSP instances behind the mesh, with each balancer.
    println!("\n## d: VSP, three instances behind the mesh, 64 concurrent get_user\n");
    println!("| balancer | calls/s | p50 µs | p99 µs |");
    println!("|---|---:|---:|---:|");
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(start_vsp(VspManager::builder("bench")).await);
    }
    let addrs: Vec<SocketAddr> = instances.iter().map(|(_, addr)| *addr).collect();
    let balancers: Vec<(&str, ServiceMesh)> = vec![
        (
            "round robin",
            ServiceMesh::builder()
                .load_balancer(vsp::RoundRobinBalancer::new())
                .build(),
        ),
        (
            "weighted 3:2:1",
            ServiceMesh::builder()
                .load_balancer(vsp::WeightedBalancer::new())
                .build(),
        ),
        (
            "least loaded (P2C)",
            ServiceMesh::builder()
                .load_balancer(vsp::LeastLoadedBalancer::new())
                .build(),
        ),
    ];
    for (name, mesh) in balancers {
        let contender = if name.starts_with("weighted") {
            for (addr, weight) in addrs.iter().zip([3.0, 2.0, 1.0]) {
                mesh.register(
                    ServiceInfo::new("bench", "127.0.0.1", addr.port()).with_weight(weight),
                )
                .unwrap();
            }
            Contender::Vsp(vsp_client(&[], mesh))
        } else {
            Contender::Vsp(vsp_client(&addrs, mesh))
        };
        let mut figures = Figures::default();
        for _ in 0..settings.rounds {
            figures.add(settings.measure(&contender, Workload::GetUser, 64).await);
        }
        println!(
            "| {name} | {:.0} | {} | {} |",
            figures.calls(),
            micros(figures.p50()),
            micros(figures.p99())
        );
    }

    // Stats on and off, interleaved.
    println!("\n## Stats cost: VSP with per-call stats on and off, 64 concurrent get_user\n");
    let (_stats_off_server, stats_off_addr) =
        start_vsp(VspManager::builder("bench").stats(false)).await;
    let stats_on = Contender::Vsp(vsp_client(&[vsp_addr], ServiceMesh::new()));
    let stats_off = Contender::Vsp(vsp_client(&[stats_off_addr], ServiceMesh::new()));
    let (mut on, mut off) = (Figures::default(), Figures::default());
    for _ in 0..settings.rounds.max(3) {
        on.add(settings.measure(&stats_on, Workload::GetUser, 64).await);
        off.add(settings.measure(&stats_off, Workload::GetUser, 64).await);
    }
    println!("| stats | calls/s | p50 µs |");
    println!("|---|---:|---:|");
    println!("| on | {:.0} | {} |", on.calls(), micros(on.p50()));
    println!("| off | {:.0} | {} |", off.calls(), micros(off.p50()));
    println!(
        "\nstats on / off throughput: {:.3}",
        on.calls() / off.calls()
    );

    // Worker types: a light endpoint's latency while a CPU-heavy endpoint is saturated.
    println!("\n## Worker types: light get_user latency while `heavy` (CPU-bound) is saturated\n");
    println!("| worker type | light p50 µs | light p99 µs | light calls/s |");
    println!("|---|---:|---:|---:|");
    for (name, worker_type) in [
        ("Async", WorkerType::Async),
        (
            "Multicore { workers: 2 }",
            WorkerType::Multicore { workers: 2 },
        ),
    ] {
        let (server, addr) = start_vsp(VspManager::builder("bench").worker_type(worker_type)).await;
        let client = vsp_client(&[addr], ServiceMesh::new());
        let until = Instant::now() + settings.run * 2;
        let heavy = {
            let client = client.clone();
            tokio::spawn(drive(4, until, move || {
                let client = client.clone();
                async move {
                    std::hint::black_box(client.heavy(2_000_000).await.unwrap());
                }
            }))
        };
        tokio::time::sleep(settings.run / 4).await;
        let mut light = Contender::Vsp(client)
            .run(Workload::GetUser, 1, until)
            .await;
        heavy.await.unwrap();
        println!(
            "| {name} | {} | {} | {:.0} |",
            micros(light.percentile(0.5)),
            micros(light.percentile(0.99)),
            light.calls_per_sec()
        );
        server.shutdown().await.unwrap();
    }

    streams_section(settings).await;

    // Memory: idle connections.
    println!("\n## Memory: 1,000 idle client connections to one server\n");
    let (_idle_server, idle_addr) = start_vsp(VspManager::builder("bench")).await;
    let before = common::rss_bytes("self");
    let mut clients = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let client = vsp_client(&[idle_addr], ServiceMesh::new());
        client.get_user("123".into()).await.unwrap();
        clients.push(client);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = common::rss_bytes("self");
    println!(
        "RSS grew by {:.1} MiB: {:.1} KiB per connection (both ends, client and server, in this process).",
        (after.saturating_sub(before)) as f64 / (1024.0 * 1024.0),
        (after.saturating_sub(before)) as f64 / 1024.0 / 1000.0
    );
    drop(clients);
}

/// Large bodies: a 1 MiB string echoed at 1, 8 and 64 concurrent, in MiB/s of payload (each
/// call carries it both ways; counted once), every contender sending it borrowed.
async fn large_bodies_section(settings: &Settings, raw_addr: SocketAddr, vsp_addr: SocketAddr) {
    println!(
        "\n## Large bodies: a 1 MiB string echoed, MiB/s of payload (counted once per call)\n"
    );
    println!("Raw TCP pipelines on one connection; `VSP 1 conn` is VSP with one connection, `VSP` with its default pool of 5. Same JSON (`{{\"payload\":\"xxx...\"}}`), sent borrowed, decoded into a `String` on both sides; medians of {} rounds of {:?}.\n", settings.rounds, settings.run);
    let contenders = [
        ("raw TCP", Contender::Raw(raw_addr)),
        (
            "VSP 1 conn",
            Contender::VspBorrowed(plain_vsp_client(vsp_addr, 1)),
        ),
        ("VSP", Contender::VspBorrowed(plain_vsp_client(vsp_addr, 5))),
    ];
    let concurrency = [1usize, 8, 64];
    let mut rates: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
    for _ in 0..settings.rounds {
        for (n, &concurrent) in concurrency.iter().enumerate() {
            for (c, (name, contender)) in contenders.iter().enumerate() {
                if std::env::var("VSP_BENCH_CONTENDER").is_ok_and(|only| only != *name) {
                    continue;
                }
                let sample = settings
                    .measure(contender, Workload::Echo1M, concurrent)
                    .await;
                rates
                    .entry((n, c))
                    .or_default()
                    .push(sample.calls_per_sec() * ONE_MIB as f64 / (1024.0 * 1024.0));
            }
        }
    }
    if std::env::var("VSP_BENCH_CONTENDER").is_ok() {
        for ((n, c), rates) in &rates {
            println!(
                "{} at {}: {:.0} MiB/s",
                contenders[*c].0,
                concurrency[*n],
                Figures::median(rates)
            );
        }
        return;
    }
    println!("| concurrent | raw TCP MiB/s | VSP 1 conn MiB/s | VSP MiB/s | VSP 1 conn / raw | VSP / raw |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for (n, concurrent) in concurrency.iter().enumerate() {
        let rate = |c: usize| Figures::median(&rates[&(n, c)]);
        println!(
            "| {concurrent} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            rate(0),
            rate(1),
            rate(2),
            rate(1) / rate(0),
            rate(2) / rate(0)
        );
    }
}

/// Items per stream in the streams section.
const STREAM_ITEMS: u64 = 10_000;

/// Items (or calls) per second for `run`, by calling `once` (which reports what it read) again
/// and again.
async fn per_second<F, Fut>(run: Duration, mut once: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: Future<Output = u64>,
{
    let started = Instant::now();
    let mut items = 0;
    while started.elapsed() < run {
        items += once().await;
    }
    items as f64 / started.elapsed().as_secs_f64()
}

/// Reads one VSP stream of `STREAM_ITEMS` users with `window`; the items read.
async fn read_vsp_stream(client: &VspClient, window: u32) -> u64 {
    let options = vsp::CallOptions::new().stream_window(window);
    let mut items: vsp::CallStream<User> = client
        .call_stream_with(
            "bench",
            "stream_users",
            serde_json::json!({ "n": STREAM_ITEMS }),
            options,
        )
        .await
        .unwrap();
    let mut read = 0;
    while let Some(user) = items.next().await {
        assert_eq!(user.unwrap().name, "John Doe");
        read += 1;
    }
    read
}

/// Streams `STREAM_ITEMS` users to VSP's `upload_users`; the number it counted.
async fn upload_vsp(typed: &BenchApiClient) -> u64 {
    let users = futures::stream::iter((0..STREAM_ITEMS).map(|_| lookup("123".to_owned())));
    let counted = typed.upload_users(users).await.unwrap();
    assert_eq!(counted, STREAM_ITEMS);
    counted
}

/// Streams `STREAM_ITEMS` users to VSP's `echo_users` and reads them back; the number read.
async fn echo_vsp(typed: &BenchApiClient) -> u64 {
    let users = futures::stream::iter((0..STREAM_ITEMS).map(|_| lookup("123".to_owned())));
    let mut answers = typed.echo_users(users).await.unwrap();
    let mut read = 0;
    while let Some(user) = answers.next().await {
        assert_eq!(user.unwrap().name, "John Doe");
        read += 1;
    }
    assert_eq!(read, STREAM_ITEMS);
    read
}

/// Server streaming: VSP against tonic (HTTP/2, protobuf) on the same items, and against a
/// loop of unary calls; then VSP's items per second by credit window (how the default was
/// chosen).
async fn streams_section(settings: &Settings) {
    println!(
        "\n## Streams: items per second, a stream of {STREAM_ITEMS} `User`s at a time, one connection\n"
    );
    println!("Each contender reads whole streams of the same three-string struct (VSP: JSON; tonic: protobuf over HTTP/2), one stream at a time on one connection, for {:?} per round, interleaved; medians. The unary rows are VSP `get_user` calls returning the same struct. The client-streaming rows send {STREAM_ITEMS} users a call and count the one answer's users; the bidirectional rows send {STREAM_ITEMS} and read each back (an item is counted once, as read back); each with its framework's defaults (VSP: the server grants 32 items ahead, widening to 1,024; tonic: HTTP/2's windows).\n", settings.run);
    let (_server, addr) = start_vsp(VspManager::builder("bench")).await;
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new("bench", "127.0.0.1", addr.port()))
        .unwrap();
    let vsp = VspClient::builder(mesh).max_transports(1).build();
    let typed = BenchApiClient::new(vsp.clone());
    let tonic_addr = tonic_stream::start().await;
    let mut tonic = tonic_stream::connect(tonic_addr).await;
    let names = [
        "VSP stream (default window)",
        "tonic server streaming",
        "VSP unary calls, one at a time",
        "VSP unary calls, 64 in flight",
        "VSP client stream (default window)",
        "tonic client streaming",
        "VSP bidirectional stream (each item echoed)",
        "tonic bidirectional streaming (each item echoed)",
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for _ in 0..settings.rounds {
        rates[0].push(
            per_second(settings.run, || {
                read_vsp_stream(&vsp, DEFAULT_STREAM_WINDOW)
            })
            .await,
        );
        let tonic = &mut tonic;
        let mut read = 0.0;
        {
            let started = Instant::now();
            let mut items = 0;
            while started.elapsed() < settings.run {
                items += tonic_stream::read(tonic, STREAM_ITEMS).await;
            }
            read += items as f64 / started.elapsed().as_secs_f64();
        }
        rates[1].push(read);
        rates[2].push(
            per_second(settings.run, || async {
                std::hint::black_box(typed.get_user("123".into()).await.unwrap());
                1
            })
            .await,
        );
        let concurrent = Contender::Vsp(typed.clone())
            .run(Workload::GetUser, 64, Instant::now() + settings.run)
            .await;
        rates[3].push(concurrent.calls_per_sec());
        rates[4].push(per_second(settings.run, || upload_vsp(&typed)).await);
        let started = Instant::now();
        let mut items = 0;
        while started.elapsed() < settings.run {
            items += tonic_stream::upload(tonic, STREAM_ITEMS).await;
        }
        rates[5].push(items as f64 / started.elapsed().as_secs_f64());
        rates[6].push(per_second(settings.run, || echo_vsp(&typed)).await);
        let started = Instant::now();
        let mut items = 0;
        while started.elapsed() < settings.run {
            items += tonic_stream::echo(tonic, STREAM_ITEMS).await;
        }
        rates[7].push(items as f64 / started.elapsed().as_secs_f64());
    }
    let medians: Vec<f64> = rates.iter().map(|r| Figures::median(r)).collect();
    println!("| contender | items/s | VSP / tonic, the same kind of call |");
    println!("|---|---:|---:|");
    for (row, (name, rate)) in names.iter().zip(&medians).enumerate() {
        // Each VSP stream row beside tonic's row of the same kind.
        let tonic = match row {
            0 => Some(medians[1]),
            4 => Some(medians[5]),
            6 => Some(medians[7]),
            _ => None,
        };
        let ratio = tonic.map_or("".to_owned(), |tonic| format!("{:.2}x", rate / tonic));
        println!("| {name} | {rate:.0} | {ratio} |");
    }

    println!("\n## Streams: VSP items per second by credit window (one stream at a time)\n");
    println!("| window | items/s |");
    println!("|---:|---:|");
    for window in [8u32, 32, 128, 256, 512, 1024, 2048] {
        let mut round = Vec::new();
        for _ in 0..settings.rounds {
            round.push(per_second(settings.run, || read_vsp_stream(&vsp, window)).await);
        }
        println!("| {window} | {:.0} |", Figures::median(&round));
    }
}
