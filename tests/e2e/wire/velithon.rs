//! Interop with the real Velithon 0.6.0 from PyPI: its client against our server, our clients
//! against its server, and the raw frames a Python peer may send.
//!
//! The Python side runs in a virtualenv with `velithon==0.6.0`: `$VELITHON_PYTHON`, or
//! `target/velithon-venv/bin/python` (what `.ci/run` makes). Without it the tests skip with a
//! message, except in CI (`CI` set), where that is a failure.

use crate::users;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use users::{UserServiceServer, Users};
use vsp::{
    CallError, Compression, ErrorCode, ServiceInfo, ServiceMesh, VspClient, VspError, VspManager,
};

pub(super) fn python() -> Option<PathBuf> {
    let python = std::env::var_os("VELITHON_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/velithon-venv/bin/python")
        });
    let works = Command::new(&python)
        .args(["-c", "import velithon.vsp"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return Some(python);
    }
    unavailable(format!(
        "no Python with velithon==0.6.0 at {} (see the README: python3 -m venv target/velithon-venv && target/velithon-venv/bin/pip install velithon==0.6.0)",
        python.display()
    ))
}

/// A prerequisite is missing: a failure in CI, a skip with a message elsewhere.
pub(super) fn unavailable<T>(message: String) -> Option<T> {
    if std::env::var_os("CI").is_some() {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    None
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// Runs a Python script to the end and returns its stdout lines as JSON.
async fn run_script(python: PathBuf, name: &str, port: u16) -> Vec<Value> {
    let script = script(name);
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || {
            Command::new(python)
                .arg(script)
                .arg(port.to_string())
                .output()
                .unwrap()
        }),
    )
    .await
    .expect("the Python script did not finish in 120 s")
    .unwrap();
    assert!(
        output.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect()
}

fn step<'a>(results: &'a [Value], key: &str, name: &str) -> &'a Value {
    results
        .iter()
        .find(|r| r[key] == name)
        .unwrap_or_else(|| panic!("no {name} in {results:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn velithons_client_calls_a_rust_service() {
    let Some(python) = python() else { return };
    // Compressing every answer of 64 bytes or more to a peer that offers to read zstd: Velithon
    // offers nothing, so it must get every answer plain.
    let manager = VspManager::builder("user-service")
        .compression(Compression::zstd().min_size(64))
        .build();
    manager
        .serve(UserServiceServer::new(Users::default()))
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let results = run_script(python, "velithon_client.py", addr.port()).await;

    assert_eq!(
        step(&results, "step", "get_user")["ok"],
        json!({"id": "123", "name": "John Doe", "email": "john@example.com"})
    );
    assert_eq!(step(&results, "step", "create_user")["ok"]["name"], "Ada");
    assert_eq!(
        step(&results, "step", "update_user")["ok"]["name"],
        "Ada Lovelace"
    );
    assert_eq!(step(&results, "step", "health")["ok"]["status"], "healthy");
    // Our errors reach Python as velithon's VSPError, with our message.
    let unknown = step(&results, "step", "unknown_endpoint")["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        unknown.starts_with("Endpoint no_such_endpoint not found (endpoints: create_user, "),
        "{unknown}"
    );
    // A typed error reaches Python as its Display text.
    assert_eq!(
        step(&results, "step", "handler_error")["error"],
        "no user with id nobody"
    );
    let bad = step(&results, "step", "bad_arguments")["error"]
        .as_str()
        .unwrap();
    assert!(bad.contains("missing field `user_id`"), "{bad}");
    // A streaming endpoint called by a client that knows no streams: a clear error, no hang,
    // and the server carries on.
    let streaming = step(&results, "step", "streaming_endpoint")["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(streaming.contains("is a streaming endpoint"), "{streaming}");
    assert_eq!(
        step(&results, "step", "after_streaming")["ok"]["name"],
        "John Doe"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn velithons_client_gets_unauthenticated_from_a_server_with_an_auth_hook() {
    let Some(python) = python() else { return };
    let manager = VspManager::builder("user-service")
        .auth(vsp::server::BearerToken::new(["s3cret"]))
        .build();
    manager
        .serve(UserServiceServer::new(Users::default()))
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let results = run_script(python, "velithon_client.py", addr.port()).await;
    // Velithon's client sends no metadata: every endpoint but health refuses it, and the
    // refusal reaches Python as its VSPError with our message.
    let refused = step(&results, "step", "get_user")["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        refused.contains("needs `authorization: Bearer <token>` metadata"),
        "{refused}"
    );
    assert_eq!(step(&results, "step", "health")["ok"]["status"], "healthy");
    // And an unknown caller learns no endpoint names.
    assert_eq!(
        step(&results, "step", "unknown_endpoint")["error"],
        "Endpoint no_such_endpoint not found"
    );
    let stats = manager.get_performance_stats();
    let get_user = &stats.endpoints["get_user"];
    assert_eq!((get_user.calls, get_user.errors), (4, 4), "{get_user:?}");
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_a_python_peer_sends_are_answered_as_documented() {
    let Some(python) = python() else { return };
    let manager = VspManager::builder("user-service").build();
    manager
        .serve(UserServiceServer::new(Users::default()))
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let results = run_script(python, "raw_edge_cases.py", addr.port()).await;

    let replies = |name: &str| {
        step(&results, "case", name)["replies"]
            .as_array()
            .unwrap()
            .clone()
    };
    let no_is_response = replies("no_is_response");
    assert_eq!(
        (
            no_is_response[0]["header"]["request_id"].clone(),
            no_is_response[0]["body"]["name"].clone()
        ),
        (json!("a1"), json!("John Doe"))
    );
    assert_eq!(replies("integer_request_id")[0]["header"]["request_id"], 42);
    let ids: Vec<i64> = replies("several_frames_one_write")
        .iter()
        .map(|r| r["header"]["request_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 5);
    let list = replies("list_body");
    assert_eq!(list[0]["header"]["error_code"], "bad_request");
    assert!(list[0]["body"]["error"]
        .as_str()
        .unwrap()
        .contains("must be a JSON object"));
    let not_json = step(&results, "case", "not_json");
    assert_eq!(not_json["replies"][0]["header"]["error_code"], "protocol");
    assert_eq!(not_json["closed"], true);
}

/// A Velithon server, killed when dropped.
struct PythonServer {
    child: Child,
    port: u16,
}

impl PythonServer {
    async fn start(python: PathBuf) -> PythonServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(python)
            .arg(script("velithon_server.py"))
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let ready = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let line = tokio::time::timeout(Duration::from_secs(60), ready)
            .await
            .expect("the Velithon server did not start in 60 s")
            .unwrap()
            .unwrap();
        assert_eq!(line.trim(), "listening");
        PythonServer { child, port }
    }

    fn client(&self) -> VspClient {
        let mesh = ServiceMesh::new();
        mesh.register(ServiceInfo::new("py-users", "127.0.0.1", self.port))
            .unwrap();
        // Compressing requests of 64 bytes or more to a server that offers to read zstd:
        // Velithon offers nothing, so it must get every request plain.
        VspClient::builder(mesh)
            .compression(Compression::zstd().min_size(64))
            .build()
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct PyUser {
    id: String,
    name: String,
    email: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Echoed {
    value: Value,
}

/// The Python service, described as a trait: the generated client calls it.
#[vsp::service(name = "py-users")]
pub trait PyUsers {
    async fn get_user(&self, user_id: String) -> Result<PyUser, String>;
    async fn create_user(&self, name: String, email: String) -> PyUser;
    async fn echo(&self, value: Value) -> Echoed;
    async fn slow_echo(&self, value: Value, ms: u64) -> Echoed;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_client_calls_a_velithon_service() {
    let Some(python) = python() else { return };
    let server = PythonServer::start(python).await;
    let users = PyUsersClient::new(server.client());
    assert_eq!(
        users.get_user("123".into()).await.unwrap(),
        PyUser {
            id: "123".into(),
            name: "John Doe".into(),
            email: "john@example.com".into()
        }
    );
    let created = users
        .create_user("Ada".into(), "ada@example.com".into())
        .await
        .unwrap();
    assert_eq!(created.name, "Ada");
    assert_eq!(
        users.echo(json!([1, "two"])).await.unwrap(),
        Echoed {
            value: json!([1, "two"])
        }
    );
    // Their error replies carry only a message: a remote error, not the typed `E`.
    match users.get_user("nobody".into()).await {
        Err(CallError::Vsp(VspError::Remote {
            code: ErrorCode::Unspecified(_),
            message,
            ..
        })) => {
            assert_eq!(message, "no user nobody")
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dynamic_client_calls_a_velithon_service() {
    let Some(python) = python() else { return };
    let server = PythonServer::start(python).await;
    let client = server.client();
    let user = client
        .call("py-users", "get_user", json!({"user_id": "123"}))
        .await
        .unwrap();
    assert_eq!(user["name"], "John Doe");
    let health = client.call("py-users", "health", json!({})).await.unwrap();
    assert_eq!(health["status"], "healthy");
    // Metadata rides in a header key Velithon ignores.
    let user = client
        .with_metadata("authorization", "Bearer s3cret")
        .call("py-users", "get_user", json!({"user_id": "123"}))
        .await
        .unwrap();
    assert_eq!(user["name"], "John Doe");
    match client.call("py-users", "nope", json!({})).await {
        Err(VspError::Remote { message, .. }) => assert_eq!(message, "Endpoint nope not found"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    match client
        .call("py-users", "get_user", json!({"wrong": 1}))
        .await
    {
        Err(VspError::Remote { message, .. }) => {
            assert!(message.contains("unexpected keyword argument"), "{message}")
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    // A stream from the caller, asked of Velithon: a clear `not_supported`, and not one item
    // taken from the stream (none is sent to a peer that did not open the call at revision 3).
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = taken.clone();
    let items = futures::StreamExt::inspect(futures::stream::iter(0..10), move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    match client
        .call_client_stream::<Value, _>("py-users", "echo", json!({"value": 1}), items)
        .await
    {
        Err(VspError::Remote {
            code: ErrorCode::NotSupported,
            message,
            ..
        }) => assert!(message.contains("does not know VSP streams"), "{message}"),
        other => panic!("expected not_supported, got {other:?}"),
    }
    assert_eq!(taken.load(std::sync::atomic::Ordering::SeqCst), 0);
    // And the connection serves on.
    let user = client
        .call("py-users", "get_user", json!({"user_id": "123"}))
        .await
        .unwrap();
    assert_eq!(user["name"], "John Doe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_calls_to_velithon_all_get_their_own_answer() {
    let Some(python) = python() else { return };
    let server = PythonServer::start(python).await;
    let users = PyUsersClient::new(server.client());
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let users = users.clone();
            tokio::spawn(async move { (i, users.slow_echo(json!(i), 20).await) })
        })
        .collect();
    for call in calls {
        let (i, echoed) = call.await.unwrap();
        assert_eq!(echoed.unwrap().value, json!(i));
    }
}

/// The `vsp` binary, built by `cargo test --workspace` for its own tests.
pub(super) fn vsp_binary() -> Option<PathBuf> {
    let mut dir = std::env::current_exe().unwrap();
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let binary = dir.join("vsp");
    if binary.exists() {
        return Some(binary);
    }
    unavailable(format!(
        "{} is missing: run `cargo test --workspace`",
        binary.display()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_calls_a_velithon_service() {
    let (Some(python), Some(vsp)) = (python(), vsp_binary()) else {
        return;
    };
    let server = PythonServer::start(python).await;
    let target = format!("127.0.0.1:{}", server.port);
    let run = |args: Vec<String>| {
        let vsp = vsp.clone();
        tokio::task::spawn_blocking(move || Command::new(vsp).args(args).output().unwrap())
    };
    let ok = run(vec![
        "call".into(),
        target.clone(),
        "get_user".into(),
        r#"{"user_id":"123"}"#.into(),
        "--compact".into(),
    ])
    .await
    .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let user: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(user["name"], "John Doe");

    let failed = run(vec![
        "call".into(),
        target.clone(),
        "get_user".into(),
        r#"{"user_id":"x"}"#.into(),
    ])
    .await
    .unwrap();
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("no user x"));

    let health = run(vec!["health".into(), target.clone()]).await.unwrap();
    assert!(String::from_utf8_lossy(&health.stdout).contains("\thealthy\t"));

    // Velithon does not describe itself: said plainly, exit code 1.
    let describe = run(vec!["describe".into(), target.clone()]).await.unwrap();
    let said = String::from_utf8_lossy(&describe.stderr);
    assert_eq!(describe.status.code(), Some(1), "{said}");
    assert!(
        said.contains("does not answer `vsp.describe`") && said.contains("Velithon"),
        "{said}"
    );
}

/// With spans recorded, our requests carry a `traceparent` in their `meta` header key: Velithon
/// ignores it both ways (and sends none itself, so our server starts a trace per request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traced_calls_interoperate_with_velithon_both_ways() {
    let Some(python) = python() else { return };
    let recorder = vsp_test_support::spans::Recorder::global();
    let server = PythonServer::start(python.clone()).await;
    let user = server
        .client()
        .call("py-users", "get_user", json!({"user_id": "123"}))
        .await
        .unwrap();
    assert_eq!(user["name"], "John Doe");
    let sent_trace = recorder.spans().into_iter().any(|span| {
        span.name == "vsp.attempt"
            && span.field("vsp.service") == Some("py-users")
            && span.field("trace_id").is_some()
            && span.field("otel.status_code").is_none()
    });
    assert!(
        sent_trace,
        "the call to Velithon went out with a trace and succeeded"
    );

    let manager = VspManager::builder("traced-user-service").build();
    manager
        .serve(UserServiceServer::new(Users::default()))
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let results = run_script(python, "velithon_client.py", addr.port()).await;
    assert_eq!(step(&results, "step", "get_user")["ok"]["id"], "123");
    recorder
        .wait_for(
            "a server span of a Velithon client's call",
            Duration::from_secs(10),
            |spans| {
                spans
                    .iter()
                    .find(|span| {
                        span.name == "vsp.server"
                            && span.field("vsp.service") == Some("traced-user-service")
                            && span.field("vsp.endpoint") == Some("get_user")
                            && span.field("trace_id").is_some()
                            && span.field("parent_span_id").is_none()
                    })
                    .map(|_| ())
            },
        )
        .await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_calls_a_velithon_service_and_says_it_is_not_described() {
    let Some(python) = python() else {
        return;
    };
    let server = PythonServer::start(python).await;
    // An operator's gateway: a service that does not describe itself still shows its instances.
    let router = vsp::gateway::Gateway::new(server.client())
        .service("py-users")
        .expose_internals(true)
        .into_router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::new();

    let user = http
        .post(format!("{base}/py-users/get_user"))
        .header("content-type", "application/json")
        .body(r#"{"user_id":"123"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(user.status(), reqwest::StatusCode::OK);
    let user: Value = user.json().await.unwrap();
    assert_eq!(user["name"], "John Doe");

    // Our client asking a Velithon endpoint for a stream: told plainly that it answers once.
    match server
        .client()
        .call_stream::<Value>("py-users", "get_user", json!({"user_id": "123"}))
        .await
    {
        Err(VspError::Remote {
            code: ErrorCode::NotSupported,
            message,
            ..
        }) => assert!(message.contains("does not know VSP streams"), "{message}"),
        other => panic!("{other:?}"),
    }

    // Velithon's unknown endpoint, said in words only, is still a 404.
    let missing = http
        .post(format!("{base}/py-users/nope"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);

    // It does not describe itself: said so, with the instance the gateway knows.
    let described = http.get(format!("{base}/py-users")).send().await.unwrap();
    assert_eq!(described.status(), reqwest::StatusCode::NOT_FOUND);
    let described: Value = described.json().await.unwrap();
    let message = described["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("does not answer `vsp.describe`"),
        "{described}"
    );
    assert_eq!(
        described["instances"].as_array().map(Vec::len),
        Some(1),
        "{described}"
    );
}
