//! The transport seam end to end: the same client and server code over TCP, Unix domain sockets
//! and the in-memory pipe, a mesh that mixes them, and the life cycle of a socket file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vsp::transport::{MemoryListener, UnixListener};
use vsp::Address;
use vsp::{ServiceInfo, ServiceMesh, VspClient, VspError, VspManager};

/// Adds numbers, and says which server answered.
#[vsp::service(name = "adder")]
pub trait Adder {
    async fn add(&self, a: i64, b: i64) -> i64;
    async fn whoami(&self) -> String;
}

struct Server(&'static str);

impl Adder for Server {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn whoami(&self) -> String {
        self.0.to_owned()
    }
}

fn adder(name: &'static str) -> VspManager {
    let manager = VspManager::builder(AdderClient::SERVICE_NAME)
        .drain_timeout(Duration::from_secs(2))
        .build();
    manager.serve(AdderServer::new(Server(name))).unwrap();
    manager
}

/// A fresh directory for socket files, removed when dropped.
struct SocketDir(PathBuf);

impl SocketDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vsp-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        SocketDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn client_for(addresses: &[Address]) -> AdderClient {
    let mesh = ServiceMesh::new();
    for address in addresses {
        mesh.register(ServiceInfo::at(AdderClient::SERVICE_NAME, address.clone()))
            .unwrap();
    }
    AdderClient::new(VspClient::builder(mesh).build())
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[tokio::test]
async fn a_typed_client_calls_a_server_over_a_unix_socket() {
    let dir = SocketDir::new("typed-unix");
    let manager = adder("unix");
    let address = Address::unix(dir.path("adder.sock"));
    let bound = manager.start_server_at(&address).await.unwrap();
    assert_eq!(bound, address);

    let client = client_for(&[bound]);
    assert_eq!(client.add(40, 2).await.unwrap(), 42);
    assert_eq!(client.whoami().await.unwrap(), "unix");
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_typed_client_calls_a_server_in_memory() {
    let manager = adder("memory");
    let bound = manager
        .start_server_on(MemoryListener::bind("adder-typed").unwrap())
        .await
        .unwrap();
    assert_eq!(bound.to_string(), "memory:adder-typed");

    let client = client_for(&[bound]);
    let sums = futures::future::join_all((0..100).map(|i| client.add(i, i))).await;
    for (i, sum) in sums.into_iter().enumerate() {
        assert_eq!(sum.unwrap(), 2 * i as i64);
    }
    manager.shutdown().await.unwrap();
    // Shut down, the name is free again and nobody answers on it.
    let err = client.add(1, 1).await.unwrap_err();
    assert!(
        matches!(
            err,
            VspError::Connect { .. } | VspError::NoHealthyInstances { .. }
        ),
        "{err}"
    );
    MemoryListener::bind("adder-typed").expect("the name is free after shutdown");
}

#[tokio::test]
async fn a_mesh_with_a_tcp_and_a_unix_instance_balances_across_both() {
    let dir = SocketDir::new("mixed");
    let over_tcp = adder("tcp");
    let over_unix = adder("unix");
    let tcp = over_tcp.start_server("127.0.0.1", 0).await.unwrap();
    let unix = over_unix
        .start_server_at(&Address::unix(dir.path("mixed.sock")))
        .await
        .unwrap();

    let client = client_for(&[Address::tcp("127.0.0.1", tcp.port()), unix]);
    let mut answered: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        *answered.entry(client.whoami().await.unwrap()).or_default() += 1;
    }
    assert_eq!(answered.get("tcp"), Some(&5), "{answered:?}");
    assert_eq!(answered.get("unix"), Some(&5), "{answered:?}");
    over_tcp.shutdown().await.unwrap();
    over_unix.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced() {
    let dir = SocketDir::new("stale");
    let path = dir.path("stale.sock");
    // What a crashed server leaves: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(is_socket(&path), "the stale socket file exists");

    let manager = adder("fresh");
    let bound = manager
        .start_server_at(&Address::unix(&path))
        .await
        .expect("a stale socket file does not block the bind");
    assert_eq!(client_for(&[bound]).whoami().await.unwrap(), "fresh");
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_socket_file_is_gone_after_shutdown() {
    let dir = SocketDir::new("gone");
    let path = dir.path("gone.sock");
    let manager = adder("gone");
    manager
        .start_server_at(&Address::unix(&path))
        .await
        .unwrap();
    assert!(is_socket(&path), "listening creates the socket file");
    manager.shutdown().await.unwrap();
    assert!(!path.exists(), "shutdown removes {}", path.display());
}

#[tokio::test]
async fn a_unix_path_that_cannot_be_bound_is_a_clear_error() {
    let dir = SocketDir::new("unbindable");
    let missing = dir.path("no-such-dir").join("x.sock");
    let err = adder("x")
        .start_server_at(&Address::unix(&missing))
        .await
        .unwrap_err();
    match &err {
        VspError::Bind { addr, source } => {
            assert_eq!(addr, &format!("unix:{}", missing.display()));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected a Bind error, got {other:?}"),
    }
    assert!(err.to_string().contains("cannot listen on unix:"), "{err}");
}

#[tokio::test]
async fn a_file_that_is_not_a_socket_is_never_replaced() {
    let dir = SocketDir::new("not-a-socket");
    let path = dir.path("data.sock");
    std::fs::write(&path, b"precious").unwrap();
    let err = adder("x")
        .start_server_at(&Address::unix(&path))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VspError::Bind { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
        "{err:?}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[tokio::test]
async fn a_socket_a_server_listens_on_is_not_taken_over() {
    let dir = SocketDir::new("live");
    let path = dir.path("live.sock");
    let first = adder("first");
    first.start_server_at(&Address::unix(&path)).await.unwrap();

    let err = UnixListener::bind(&path).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    assert_eq!(
        client_for(&[Address::unix(&path)]).whoami().await.unwrap(),
        "first",
        "the first server still answers"
    );
    first.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_taken_memory_name_and_an_unbound_one_are_clear_errors() {
    let held = MemoryListener::bind("taken-name").unwrap();
    let err = MemoryListener::bind("taken-name").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    drop(held);

    let client = client_for(&[Address::memory("nobody-here")]);
    match client.add(1, 2).await.unwrap_err() {
        VspError::Connect {
            instance, source, ..
        } => {
            assert_eq!(instance, "memory:nobody-here");
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("expected a Connect error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bad_address_text_is_a_typed_error() {
    for text in ["no-port", "host:99999", "unix:", "memory:"] {
        let err = text.parse::<Address>().unwrap_err();
        assert!(err.to_string().contains(text), "{err}");
    }
    let err = ServiceMesh::new()
        .register(ServiceInfo::at("svc", Address::unix("")))
        .unwrap_err();
    assert!(matches!(err, VspError::InvalidInstance { .. }), "{err}");
}
