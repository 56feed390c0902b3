//! What the end-to-end tests share: a test service with fast, slow, failing and panicking
//! endpoints, and a raw frame client to send what a well-behaved client never would.
#![allow(dead_code)] // each test file uses its own part

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vsp::{ServiceInfo, ServiceMesh, VspClient, VspManager};

pub const SERVICE: &str = "test-service";

#[derive(Debug, Deserialize)]
pub struct Echo {
    pub value: Value,
}

#[derive(Debug, Deserialize)]
pub struct Sleep {
    pub ms: u64,
    pub tag: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Sum {
    pub a: i64,
    pub b: i64,
}

/// A manager with the test endpoints, not started.
pub fn test_manager() -> VspManager {
    let manager = VspManager::builder(SERVICE)
        .drain_timeout(Duration::from_secs(5))
        .build();
    register_test_endpoints(&manager);
    manager
}

pub fn register_test_endpoints(manager: &VspManager) {
    manager
        .endpoint(
            "echo",
            |args: Echo| async move { Ok::<_, String>(args.value) },
        )
        .unwrap();
    manager
        .endpoint("add", |args: Sum| async move {
            Ok::<_, String>(args.a + args.b)
        })
        .unwrap();
    manager
        .endpoint("sleep", |args: Sleep| async move {
            tokio::time::sleep(Duration::from_millis(args.ms)).await;
            Ok::<_, String>(args.tag)
        })
        .unwrap();
    manager
        .endpoint("fail", |_: Value| async move {
            Err::<Value, _>("the handler said no")
        })
        .unwrap();
    manager
        .endpoint("panic", |_: Value| async move {
            if true {
                panic!("handler blew up");
            }
            Ok::<Value, String>(Value::Null)
        })
        .unwrap();
    manager
        .endpoint("error_key", |_: Value| async move {
            Ok::<_, String>(serde_json::json!({ "error": "not an error, just a field" }))
        })
        .unwrap();
}

/// Starts the test service on an ephemeral loopback port.
pub async fn start_test_server() -> (VspManager, SocketAddr) {
    let manager = test_manager();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    (manager, addr)
}

/// A client whose mesh knows the test service at `addr`.
pub fn client_for(addr: SocketAddr) -> VspClient {
    client_builder_for(addr).build()
}

pub fn client_builder_for(addr: SocketAddr) -> vsp::VspClientBuilder {
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new(SERVICE, "127.0.0.1", addr.port()))
        .unwrap();
    VspClient::builder(mesh)
}

pub use vsp_test_support::wait_until;

/// Waits (at most 10 s) until the server has at least `n` requests in flight.
pub async fn wait_in_flight(manager: &VspManager, n: usize) {
    wait_until(
        &format!("{n} requests in flight on the server"),
        Duration::from_secs(10),
        || manager.get_performance_stats().in_flight >= n,
    )
    .await;
}

/// Starts a call to `sleep` that runs `ms` on the server, and returns once the server has it.
pub async fn held_call(
    client: &VspClient,
    manager: &VspManager,
    ms: u64,
) -> tokio::task::JoinHandle<Result<Value, vsp::VspError>> {
    let before = manager.get_performance_stats().in_flight;
    let client = client.clone();
    let call = tokio::spawn(async move {
        client
            .call(
                SERVICE,
                "sleep",
                serde_json::json!({"ms": ms, "tag": "held"}),
            )
            .await
    });
    wait_in_flight(manager, before + 1).await;
    call
}

/// Makes one echo call with `value` and checks the answer.
pub async fn assert_echo(client: &VspClient, value: i64) {
    let answer = client
        .call(SERVICE, "echo", serde_json::json!({ "value": value }))
        .await;
    assert_eq!(answer.unwrap(), serde_json::json!(value));
}

/// Makes `n` echo calls and checks each answer.
pub async fn assert_echoes(client: &VspClient, n: i64) {
    for i in 0..n {
        let value = client
            .call(SERVICE, "echo", serde_json::json!({ "value": i }))
            .await;
        assert_eq!(value.unwrap(), serde_json::json!(i));
    }
}

/// Encodes `json` as one frame.
pub fn frame(json: &str) -> Vec<u8> {
    let mut out = (json.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out
}

/// A request frame's JSON.
pub fn request_json(id: &str, endpoint: &str, body: &str) -> String {
    format!(
        r#"{{"header":{{"request_id":{id},"service":"{SERVICE}","endpoint":"{endpoint}","is_response":false}},"body":{body}}}"#
    )
}

/// A raw connection that writes bytes and reads frames, every read bounded.
pub struct RawPeer {
    pub stream: TcpStream,
}

impl RawPeer {
    pub async fn connect(addr: SocketAddr) -> RawPeer {
        RawPeer {
            stream: TcpStream::connect(addr).await.unwrap(),
        }
    }

    /// Connects from `source` (another loopback address, such as 127.0.0.2), to look like
    /// another peer.
    pub async fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> RawPeer {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        RawPeer {
            stream: socket.connect(addr).await.unwrap(),
        }
    }

    /// True if a `health` request on this connection is answered (the server kept it).
    pub async fn is_served(&mut self) -> bool {
        if self
            .stream
            .write_all(&frame(&request_json(r#""h""#, "health", "{}")))
            .await
            .is_err()
        {
            return false;
        }
        self.recv()
            .await
            .is_some_and(|reply| reply["body"]["status"] == "healthy")
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    pub async fn send_request(&mut self, id: &str, endpoint: &str, body: &str) {
        self.send(&frame(&request_json(id, endpoint, body))).await;
    }

    /// The next frame, parsed; `None` if the server closed the connection.
    pub async fn recv(&mut self) -> Option<Value> {
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut len = [0u8; 4];
            if self.stream.read_exact(&mut len).await.is_err() {
                return None;
            }
            let mut json = vec![0u8; u32::from_be_bytes(len) as usize];
            self.stream.read_exact(&mut json).await.ok()?;
            Some(serde_json::from_slice(&json).expect("the server sent invalid JSON"))
        })
        .await
        .expect("no frame and no close within 10 s")
    }

    /// True if the server closed the connection (reads EOF) within 10 s.
    pub async fn is_closed_by_server(&mut self) -> bool {
        self.is_closed_within(Duration::from_secs(10)).await
    }

    /// True if the server closed the connection (reads EOF or a reset) within `bound`.
    pub async fn is_closed_within(&mut self, bound: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(bound, self.stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// `cargo test` builds the examples next to the test binaries' `deps/` folder.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let mut path = std::env::current_exe().unwrap();
    path.pop();
    if path.ends_with("deps") {
        path.pop();
    }
    path.push("examples");
    path.push(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test`, which builds the examples",
        path.display()
    );
    path
}

/// Starts the example `name` with `args`; returns it, its first line of output (it says it is
/// ready), and the rest of its output once it exits (read to the end, so later output never
/// hits a closed pipe).
pub async fn start_example(
    name: &str,
    args: &[&str],
) -> (
    std::process::Child,
    String,
    tokio::task::JoinHandle<Vec<String>>,
) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(example_binary(name))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (first_tx, first_line) = tokio::sync::oneshot::channel();
    let output = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = first_tx.send(lines.next());
        lines.map_while(Result::ok).collect::<Vec<_>>()
    });
    let line = tokio::time::timeout(Duration::from_secs(30), first_line)
        .await
        .unwrap_or_else(|_| panic!("{name} printed no first line in 30 s"))
        .unwrap()
        .unwrap_or_else(|| panic!("{name} printed nothing"))
        .unwrap();
    (child, line, output)
}
