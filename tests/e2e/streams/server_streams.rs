//! Server streams and cancellation over real loopback TCP: order and completeness, credit (a
//! slow reader bounds the server), fairness on one connection, cancel on drop (streams and unary
//! calls), errors mid-stream, shutdown, and calls of the wrong kind.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use vsp::{
    CallOptions, CallStream, ErrorCode, ServiceInfo, ServiceMesh, Streaming, VspClient, VspError,
    VspManager,
};
use vsp_test_support::wait_until;

use crate::users;

/// Sets its flag when dropped: the handler's stream or future observing its own end.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn client_of(manager: &VspManager, transports: usize) -> VspClient {
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new(manager.name(), "127.0.0.1", addr.port()))
        .unwrap();
    VspClient::builder(mesh)
        .max_transports(transports)
        .timeout(Duration::from_secs(60))
        .build()
}

/// `count {n}`: 0..n as fast as the caller takes them.
fn counting(manager: &VspManager) {
    manager
        .stream_endpoint("count", |args: Value| async move {
            let n = args["n"].as_u64().unwrap_or(0);
            Ok::<_, VspError>(Streaming::iter(0..n))
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_items_arrive_in_order_with_none_lost() {
    let manager = VspManager::builder("numbers").build();
    counting(&manager);
    let client = client_of(&manager, 1).await;
    let mut items: CallStream<u64> = client
        .call_stream("numbers", "count", json!({"n": 1_000_000}))
        .await
        .unwrap();
    let mut expected = 0u64;
    while let Some(item) = items.next().await {
        assert_eq!(item.unwrap(), expected, "out of order or lost");
        expected += 1;
    }
    assert_eq!(expected, 1_000_000);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_bounds_what_the_server_produces_to_its_window() {
    let manager = VspManager::builder("numbers").build();
    let produced = Arc::new(AtomicU64::new(0));
    let counter = produced.clone();
    manager
        .stream_endpoint("endless", move |_: Value| {
            let counter = counter.clone();
            async move {
                let items = futures::stream::unfold(counter, |counter| async move {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    Some((n, counter))
                });
                Ok::<_, VspError>(Streaming::new(items))
            }
        })
        .unwrap();
    manager
        .endpoint("echo", |args: Value| async move { Ok::<_, VspError>(args) })
        .unwrap();
    let client = client_of(&manager, 1).await;
    let window = 8;
    let mut items: CallStream<u64> = client
        .call_stream_with(
            "numbers",
            "endless",
            json!({}),
            CallOptions::new().stream_window(window),
        )
        .await
        .unwrap();
    for expected in 0..3u64 {
        assert_eq!(items.next().await.unwrap().unwrap(), expected);
    }
    // The reader stops. The server may fill the window (and the credit granted for the three
    // read), never more: what it produced stays within read + window + one it holds.
    wait_until(
        "the server to fill the reader's window",
        Duration::from_secs(10),
        || produced.load(Ordering::SeqCst) >= u64::from(window),
    )
    .await;
    // Then a round trip on the same connection: a server that ignored credit would go on
    // producing while it answers (items are made as fast as the stream is polled).
    for _ in 0..10 {
        client.call("numbers", "echo", json!({})).await.unwrap();
    }
    let bound = 3 + u64::from(window) + 1;
    let made = produced.load(Ordering::SeqCst);
    assert!(
        made <= bound,
        "the server produced {made} items for a reader that read 3 with a window of {window}"
    );
    // Reading on releases it again.
    for expected in 3..100u64 {
        assert_eq!(items.next().await.unwrap().unwrap(), expected);
    }
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_does_not_hold_up_others_or_unary_calls_on_its_connection() {
    let manager = VspManager::builder("numbers").build();
    counting(&manager);
    manager
        .endpoint("echo", |args: Value| async move { Ok::<_, VspError>(args) })
        .unwrap();
    let client = client_of(&manager, 1).await;
    // Opened and never read.
    let stalled: CallStream<u64> = client
        .call_stream("numbers", "count", json!({"n": 1_000_000}))
        .await
        .unwrap();
    let reader = {
        let client = client.clone();
        tokio::spawn(async move {
            let items: CallStream<u64> = client
                .call_stream("numbers", "count", json!({"n": 20_000}))
                .await
                .unwrap();
            items.map(|item| item.unwrap()).collect::<Vec<u64>>().await
        })
    };
    for i in 0..200 {
        let echoed = client
            .call("numbers", "echo", json!({"i": i}))
            .await
            .unwrap();
        assert_eq!(echoed["i"], i);
    }
    let read = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the second stream to finish within 60 s beside a stalled one")
        .unwrap();
    assert_eq!(read.len(), 20_000);
    assert!(read.iter().enumerate().all(|(i, n)| *n == i as u64));
    assert_eq!(
        client.pool_stats().created,
        1,
        "everything shared one connection"
    );
    drop(stalled);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_cancels_the_handler_within_100_ms() {
    let manager = VspManager::builder("numbers").build();
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    manager
        .stream_endpoint("tail", move |_: Value| {
            let guard = DropFlag(flag.clone());
            async move {
                // One item, then nothing for ever: only a cancel ends it.
                let items = futures::stream::once(async { 1u64 })
                    .chain(futures::stream::pending())
                    .map(move |item| {
                        let _ = &guard;
                        item
                    });
                Ok::<_, VspError>(Streaming::new(items))
            }
        })
        .unwrap();
    let client = client_of(&manager, 1).await;
    let mut items: CallStream<u64> = client
        .call_stream("numbers", "tail", json!({}))
        .await
        .unwrap();
    assert_eq!(items.next().await.unwrap().unwrap(), 1);
    assert!(!dropped.load(Ordering::SeqCst));
    drop(items);
    wait_until(
        "the handler's stream to be dropped after the cancel",
        Duration::from_millis(100),
        || dropped.load(Ordering::SeqCst),
    )
    .await;
    wait_until(
        "the stream's slot to be freed",
        Duration::from_secs(5),
        || manager.get_performance_stats().in_flight == 0,
    )
    .await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_dropped_by_its_caller_is_cancelled_on_the_server() {
    let manager = VspManager::builder("slow").build();
    let (entered, dropped) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (entered_by, flag) = (entered.clone(), dropped.clone());
    manager
        .endpoint("wait", move |_: Value| {
            let guard = DropFlag(flag.clone());
            entered_by.store(true, Ordering::SeqCst);
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Ok::<_, VspError>(json!(null))
            }
        })
        .unwrap();
    let client = client_of(&manager, 1).await;
    // A first answered call tells the client this server knows cancel frames.
    let _ = client.call("slow", "health", json!({})).await.unwrap();
    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.call("slow", "wait", json!({})).await })
    };
    wait_until("the handler to start", Duration::from_secs(10), || {
        entered.load(Ordering::SeqCst)
    })
    .await;
    call.abort();
    wait_until(
        "the handler to be dropped after its caller gave up",
        Duration::from_millis(100),
        || dropped.load(Ordering::SeqCst),
    )
    .await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_error_mid_stream_is_the_last_item() {
    let manager = VspManager::builder("numbers").build();
    manager
        .stream_endpoint("flaky", |_: Value| async move {
            let items = futures::stream::iter([Ok(1u64), Ok(2), Err("the cursor broke"), Ok(3)]);
            Ok::<_, VspError>(Streaming::try_new(items))
        })
        .unwrap();
    manager
        .stream_endpoint("refuses", |_: Value| async move {
            Err::<Streaming<u64>, _>("no stream for you")
        })
        .unwrap();
    let client = client_of(&manager, 1).await;
    let items: Vec<Result<u64, VspError>> = client
        .call_stream("numbers", "flaky", json!({}))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(items.len(), 3, "{items:?}");
    assert_eq!(
        (items[0].as_ref().unwrap(), items[1].as_ref().unwrap()),
        (&1, &2)
    );
    match &items[2] {
        Err(VspError::Remote {
            code: ErrorCode::Handler,
            message,
            ..
        }) => {
            assert_eq!(message, "the cursor broke")
        }
        other => panic!("{other:?}"),
    }
    // An error before the stream opens is the call's own.
    match client
        .call_stream::<u64>("numbers", "refuses", json!({}))
        .await
    {
        Err(VspError::Remote {
            code: ErrorCode::Handler,
            message,
            ..
        }) => {
            assert_eq!(message, "no stream for you")
        }
        other => panic!("{other:?}"),
    }
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_ends_open_streams_with_shutting_down() {
    let manager = VspManager::builder("numbers").build();
    manager
        .stream_endpoint("tail", |_: Value| async move {
            let items = futures::stream::once(async { 0u64 }).chain(futures::stream::pending());
            Ok::<_, VspError>(Streaming::new(items))
        })
        .unwrap();
    let client = client_of(&manager, 1).await;
    let mut items: CallStream<u64> = client
        .call_stream("numbers", "tail", json!({}))
        .await
        .unwrap();
    assert_eq!(items.next().await.unwrap().unwrap(), 0);
    let shutdown = {
        let manager = manager.clone();
        tokio::spawn(async move { manager.shutdown().await })
    };
    match tokio::time::timeout(Duration::from_secs(10), items.next()).await {
        Ok(Some(Err(VspError::Remote {
            code: ErrorCode::ShuttingDown,
            ..
        }))) => {}
        other => panic!("expected the stream to end with shutting_down within 10 s, got {other:?}"),
    }
    assert!(items.next().await.is_none());
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("the shutdown to finish within 10 s")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_the_wrong_kind_are_not_supported() {
    let manager = VspManager::builder("numbers").build();
    counting(&manager);
    manager
        .endpoint("echo", |args: Value| async move { Ok::<_, VspError>(args) })
        .unwrap();
    let client = client_of(&manager, 1).await;
    match client.call("numbers", "count", json!({"n": 3})).await {
        Err(VspError::Remote {
            code: ErrorCode::NotSupported,
            message,
            ..
        }) => {
            assert!(message.contains("streaming endpoint"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    match client
        .call_stream::<Value>("numbers", "echo", json!({}))
        .await
    {
        Err(VspError::Remote {
            code: ErrorCode::NotSupported,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // The server carries on.
    let items: Vec<u64> = client
        .call_stream::<u64>("numbers", "count", json!({"n": 3}))
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(items, [0, 1, 2]);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_timeout_ends_a_silent_stream_and_the_deadline_a_long_one() {
    let manager = VspManager::builder("numbers").build();
    manager
        .stream_endpoint("tail", |_: Value| async move {
            let items = futures::stream::once(async { 0u64 }).chain(futures::stream::pending());
            Ok::<_, VspError>(Streaming::new(items))
        })
        .unwrap();
    let client = client_of(&manager, 1).await;
    let options = CallOptions::new().idle_timeout(Duration::from_millis(200));
    let mut items: CallStream<u64> = client
        .call_stream_with("numbers", "tail", json!({}), options)
        .await
        .unwrap();
    assert_eq!(items.next().await.unwrap().unwrap(), 0);
    assert!(matches!(
        items.next().await,
        Some(Err(VspError::Timeout { .. }))
    ));
    assert!(items.next().await.is_none());
    // The whole-stream deadline: the server ends it with `timeout` (or the client does).
    let options = CallOptions::new().timeout(Duration::from_millis(300));
    let mut items: CallStream<u64> = client
        .call_stream_with("numbers", "tail", json!({}), options)
        .await
        .unwrap();
    assert_eq!(items.next().await.unwrap().unwrap(), 0);
    match items.next().await {
        Some(Err(VspError::Timeout { .. }))
        | Some(Err(VspError::Remote {
            code: ErrorCode::Timeout,
            ..
        })) => {}
        other => panic!("{other:?}"),
    }
    manager.shutdown().await.unwrap();
}

/// Why a log cannot be read.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum LogError {
    NoSuchLog(String),
}

/// A typed service with streaming methods.
#[vsp::service(name = "logs")]
pub trait Logs {
    /// Counts from 0 to `n - 1`.
    async fn ticks(&self, n: u64) -> Streaming<u64>;
    /// The lines of a log, or why there are none.
    async fn lines(&self, log: String) -> Result<Streaming<String>, LogError>;
    async fn size(&self, log: String) -> u64;
}

struct LogStore;

impl Logs for LogStore {
    async fn ticks(&self, n: u64) -> Streaming<u64> {
        Streaming::iter(0..n)
    }

    async fn lines(&self, log: String) -> Result<Streaming<String>, LogError> {
        match log.as_str() {
            "app" => Ok(Streaming::iter(["started", "ready"].map(String::from))),
            _ => Err(LogError::NoSuchLog(log)),
        }
    }

    async fn size(&self, _log: String) -> u64 {
        2
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_service_streams_through_its_generated_client() {
    let manager = VspManager::builder(LogsClient::SERVICE_NAME).build();
    manager.serve(LogsServer::new(LogStore)).unwrap();
    let client = LogsClient::new(client_of(&manager, 1).await);
    let ticks: Vec<u64> = client
        .ticks(4)
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(ticks, [0, 1, 2, 3]);
    let lines: Vec<String> = client
        .lines("app".into())
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(lines, ["started", "ready"]);
    match client.lines("nope".into()).await {
        Err(vsp::CallError::Service(LogError::NoSuchLog(log))) => assert_eq!(log, "nope"),
        other => panic!("{other:?}"),
    }
    assert_eq!(client.size("app".into()).await.unwrap(), 2);
    // Described as streams, each with its item's schema.
    let description = manager.description();
    let ticks = description.endpoint("ticks").unwrap();
    assert!(ticks.streaming);
    assert_eq!(ticks.result_schema["type"], "integer");
    assert!(description.endpoint("lines").unwrap().streaming);
    assert!(!description.endpoint("size").unwrap().streaming);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_users_streams_the_users_created_from_then_on() {
    use users::{UserServiceClient, UserServiceServer, Users};
    let manager = VspManager::builder(UserServiceClient::SERVICE_NAME).build();
    manager
        .serve(UserServiceServer::new(Users::default()))
        .unwrap();
    let users = UserServiceClient::new(client_of(&manager, 1).await);
    users
        .create_user("before".into(), "b@x".into())
        .await
        .unwrap();
    let mut watched = users.watch_users().await.unwrap();
    for name in ["Ada", "Grace"] {
        users
            .create_user(name.into(), format!("{name}@x"))
            .await
            .unwrap();
    }
    let first = watched.next().await.unwrap().unwrap();
    let second = watched.next().await.unwrap().unwrap();
    assert_eq!(
        (first.name.as_str(), second.name.as_str()),
        ("Ada", "Grace")
    );
    manager.shutdown().await.unwrap();
}

/// Reads one length-prefixed frame as JSON.
async fn read_frame(stream: &mut tokio::net::TcpStream) -> Value {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).await.unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// Writes `value` as one frame.
async fn write_frame(stream: &mut tokio::net::TcpStream, value: &Value) {
    use tokio::io::AsyncWriteExt;
    let body = serde_json::to_vec(value).unwrap();
    stream
        .write_all(&(body.len() as u32).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&body).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_say_vsp_2_never_receives_a_cancel_frame() {
    // A Velithon-like peer: answers without the `vsp` key, and records what it receives.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        loop {
            let frame = read_frame(&mut stream).await;
            let endpoint = frame["header"]["endpoint"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            let _ = seen_tx.send(frame.clone());
            if endpoint != "slow" {
                let mut header = frame["header"].clone();
                header["is_response"] = json!(true);
                write_frame(
                    &mut stream,
                    &json!({ "header": header, "body": {"ok": true} }),
                )
                .await;
            }
        }
    });
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new("py", "127.0.0.1", port))
        .unwrap();
    let client = VspClient::builder(mesh).max_transports(1).build();
    client.call("py", "first", json!({})).await.unwrap();
    // A call it never answers, given up by its caller.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(200),
        client.call("py", "slow", json!({})),
    )
    .await;
    assert!(gave_up.is_err(), "the slow call was answered");
    client.call("py", "third", json!({})).await.unwrap();
    let mut endpoints = Vec::new();
    while let Ok(frame) = seen.try_recv() {
        assert_ne!(
            frame["header"]["cancel"],
            json!(true),
            "a cancel reached a peer that does not know it: {frame}"
        );
        endpoints.push(
            frame["header"]["endpoint"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        );
    }
    assert_eq!(endpoints, ["first", "slow", "third"]);
}
