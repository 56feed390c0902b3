//! Client and bidirectional streams (revision 3) end to end: every kind over TCP, Unix sockets
//! and TLS; order; credit both ways (a slow handler holds back the caller's producer, a slow
//! reader holds back the handler); cancel both ways; a peer that leaves; the deadline; the
//! server's shutdown; errors (a handler's, an item that does not decode, an item beyond its
//! credit from a raw peer); and calls of the wrong kind.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::Notify;
use vsp::tls::{ClientTls, ClientTlsConfig, ServerTls, ServerTlsConfig, TlsConnector, TlsListener};
use vsp::transport::TcpListener;
use vsp::{
    Address, CallOptions, CallStream, ErrorCode, ServiceInfo, ServiceMesh, Streaming, VspClient,
    VspError, VspManager,
};
use vsp_test_support::pki::Ca;
use vsp_test_support::wait_until;

use crate::common::{frame, RawPeer};

const SERVICE: &str = "pipes";

/// Sets its flag when dropped: a handler's future, or a caller's stream, observing its end.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// `collect`: answers with every item it read, in order. `sum`: their sum. `shout`: each line
/// upper-cased, as it comes. `add {to}`: each number plus `to`.
fn pipes(builder: vsp::VspManagerBuilder) -> VspManager {
    let manager = builder.build();
    manager
        .client_stream_endpoint("collect", |_: Value, items: Streaming<u64>| async move {
            Ok::<_, VspError>(items.collect::<Vec<u64>>().await)
        })
        .unwrap();
    manager
        .client_stream_endpoint("sum", |_: Value, items: Streaming<i64>| async move {
            Ok::<_, VspError>(items.fold(0i64, |sum, n| async move { sum + n }).await)
        })
        .unwrap();
    manager
        .bidi_stream_endpoint("shout", |_: Value, lines: Streaming<String>| async move {
            Ok::<_, VspError>(Streaming::new(lines.map(|line| line.to_uppercase())))
        })
        .unwrap();
    manager
        .bidi_stream_endpoint("add", |args: Value, numbers: Streaming<u64>| async move {
            let to = args["to"].as_u64().unwrap_or(0);
            Ok::<_, VspError>(Streaming::new(numbers.map(move |n| n + to)))
        })
        .unwrap();
    manager
}

fn client_at(address: Address, tls: Option<&Ca>) -> VspClient {
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::at(SERVICE, address).with_tls(tls.is_some()))
        .unwrap();
    let builder = VspClient::builder(mesh).timeout(Duration::from_secs(30));
    match tls {
        None => builder.build(),
        Some(ca) => {
            let config = ClientTlsConfig::new()
                .ca_pem(ca.cert_pem.as_bytes())
                .unwrap();
            builder
                .connector(TlsConnector::new(ClientTls::new(config).unwrap()))
                .build()
        }
    }
}

async fn tcp_pair(builder: vsp::VspManagerBuilder) -> (VspManager, VspClient, SocketAddr) {
    let manager = pipes(builder);
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let client = client_at(Address::tcp("127.0.0.1", addr.port()), None);
    (manager, client, addr)
}

/// Checks every kind of stream on `client`: a client stream, a bidirectional one and their
/// order over 2,000 items each (more than many windows).
async fn every_kind_works(client: &VspClient, transport: &str) {
    let collected: Vec<u64> = client
        .call_client_stream(
            SERVICE,
            "collect",
            json!({}),
            futures::stream::iter(0..2000u64),
        )
        .await
        .unwrap_or_else(|err| panic!("client stream over {transport}: {err}"));
    assert_eq!(collected, (0..2000).collect::<Vec<_>>(), "over {transport}");

    let mut added: CallStream<u64> = client
        .call_bidi_stream(
            SERVICE,
            "add",
            json!({"to": 1000}),
            futures::stream::iter(0..2000u64),
        )
        .await
        .unwrap_or_else(|err| panic!("bidi stream over {transport}: {err}"));
    let mut expected = 1000u64;
    while let Some(item) = added.next().await {
        assert_eq!(
            item.unwrap(),
            expected,
            "out of order or lost over {transport}"
        );
        expected += 1;
    }
    assert_eq!(expected, 3000, "items lost over {transport}");

    let empty: i64 = client
        .call_client_stream(SERVICE, "sum", json!({}), futures::stream::empty::<i64>())
        .await
        .unwrap();
    assert_eq!(empty, 0, "an empty client stream over {transport}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_bidirectional_streams_carry_every_item_in_order_over_tcp_unix_and_tls() {
    // TCP.
    let (manager, client, _) = tcp_pair(VspManager::builder(SERVICE)).await;
    every_kind_works(&client, "TCP").await;
    manager.shutdown().await.unwrap();

    // A Unix domain socket.
    let dir = vsp_test_support::pki::temp_dir("client-streams-unix");
    let manager = pipes(VspManager::builder(SERVICE));
    let address = manager
        .start_server_at(&Address::unix(dir.join("pipes.sock")))
        .await
        .unwrap();
    every_kind_works(&client_at(address, None), "a Unix socket").await;
    manager.shutdown().await.unwrap();

    // TLS.
    let ca = Ca::new("client-streams");
    let cert = ca.issue(SERVICE);
    let tls = ServerTls::new(
        ServerTlsConfig::from_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let manager = pipes(VspManager::builder(SERVICE));
    let listener = TcpListener::bind("127.0.0.1", 0).await.unwrap();
    let port = listener.socket_addr().port();
    manager
        .start_server_on(TlsListener::new(listener, tls))
        .await
        .unwrap();
    every_kind_works(
        &client_at(Address::tcp("127.0.0.1", port), Some(&ca)),
        "TLS",
    )
    .await;
    manager.shutdown().await.unwrap();
}

/// An endless stream of numbers that counts how many were taken from it and flags its drop.
fn counted_numbers(
    taken: Arc<AtomicU64>,
    dropped: Arc<AtomicBool>,
) -> impl futures::Stream<Item = u64> {
    let flag = DropFlag(dropped);
    futures::stream::unfold((taken, flag), |(taken, flag)| async move {
        let n = taken.fetch_add(1, Ordering::SeqCst);
        Some((n, (taken, flag)))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_reads_slowly_holds_back_the_callers_producer_to_the_servers_window() {
    let window = 4u32;
    let manager = VspManager::builder(SERVICE)
        .client_stream_window(window)
        .build();
    let go_on = Arc::new(Notify::new());
    let resume = go_on.clone();
    manager
        .client_stream_endpoint(
            "two_then_wait",
            move |_: Value, mut items: Streaming<u64>| {
                let resume = resume.clone();
                async move {
                    let mut read = Vec::new();
                    for _ in 0..2 {
                        read.push(items.next().await.unwrap());
                    }
                    resume.notified().await;
                    while let Some(item) = items.next().await {
                        read.push(item);
                        if read.len() == 20 {
                            break;
                        }
                    }
                    Ok::<_, VspError>(read)
                }
            },
        )
        .unwrap();
    manager
        .endpoint("echo", |args: Value| async move { Ok::<_, VspError>(args) })
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let client = client_at(Address::tcp("127.0.0.1", addr.port()), None);
    let taken = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let call = {
        let client = client.clone();
        let items = counted_numbers(taken.clone(), dropped.clone());
        tokio::spawn(async move {
            client
                .call_client_stream::<Vec<u64>, _>(SERVICE, "two_then_wait", json!({}), items)
                .await
        })
    };
    wait_until(
        "the caller to fill the server's window",
        Duration::from_secs(10),
        || taken.load(Ordering::SeqCst) >= u64::from(window),
    )
    .await;
    // Round trips on the same connection: a caller that ignored credit would go on sending.
    for _ in 0..10 {
        client.call(SERVICE, "echo", json!({})).await.unwrap();
    }
    // The window, the half-window granted back for the two read, and one item in hand.
    let bound = u64::from(window) + 2 + 1;
    let made = taken.load(Ordering::SeqCst);
    assert!(
        made <= bound,
        "the caller produced {made} items for a handler that read 2 with a window of {window}"
    );
    go_on.notify_one();
    let read = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call did not end once the handler read on")
        .unwrap()
        .unwrap();
    assert_eq!(read, (0..20).collect::<Vec<_>>());
    // The handler answered before the caller's stream ended: the caller stops sending.
    wait_until(
        "the caller's endless stream to be dropped once the server answered",
        Duration::from_secs(10),
        || dropped.load(Ordering::SeqCst),
    )
    .await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_reads_slowly_holds_back_a_bidirectional_handler_to_its_window() {
    let manager = VspManager::builder(SERVICE).build();
    let produced = Arc::new(AtomicU64::new(0));
    let counter = produced.clone();
    manager
        .bidi_stream_endpoint("each_tenfold", move |_: Value, items: Streaming<u64>| {
            let counter = counter.clone();
            async move {
                // Ten answers per item: a producer far faster than the caller reads.
                let answers = items.flat_map(move |n| {
                    let counter = counter.clone();
                    futures::stream::iter(0..10u64).map(move |k| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        n * 10 + k
                    })
                });
                Ok::<_, VspError>(Streaming::new(answers))
            }
        })
        .unwrap();
    manager
        .endpoint("echo", |args: Value| async move { Ok::<_, VspError>(args) })
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let client = client_at(Address::tcp("127.0.0.1", addr.port()), None);
    let window = 8u32;
    let mut answers: CallStream<u64> = client
        .call_bidi_stream_with(
            SERVICE,
            "each_tenfold",
            json!({}),
            futures::stream::iter(0..1000u64),
            CallOptions::new().stream_window(window),
        )
        .await
        .unwrap();
    for expected in 0..3u64 {
        assert_eq!(answers.next().await.unwrap().unwrap(), expected);
    }
    wait_until(
        "the handler to fill the caller's window",
        Duration::from_secs(10),
        || produced.load(Ordering::SeqCst) >= u64::from(window),
    )
    .await;
    // Round trips on the same connection: a server that ignored credit would go on producing
    // while it answers.
    for _ in 0..10 {
        client.call(SERVICE, "echo", json!({})).await.unwrap();
    }
    let made = produced.load(Ordering::SeqCst);
    // The window, the credit for the three read, and the rest of the ten of the item in hand.
    let bound = 3 + u64::from(window) + 10;
    assert!(
        made <= bound,
        "the handler produced {made} items for a caller that read 3 with a window of {window}"
    );
    drop(answers);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_bidirectional_stream_stops_the_handler_and_the_callers_producer() {
    let manager = VspManager::builder(SERVICE).build();
    let handler_dropped = Arc::new(AtomicBool::new(false));
    let flag = handler_dropped.clone();
    manager
        .bidi_stream_endpoint("echo_forever", move |_: Value, items: Streaming<u64>| {
            let flag = flag.clone();
            async move {
                let guard = DropFlag(flag);
                let answers = items.map(move |n| {
                    let _ = &guard;
                    n
                });
                Ok::<_, VspError>(Streaming::new(answers))
            }
        })
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let client = client_at(Address::tcp("127.0.0.1", addr.port()), None);
    let taken = Arc::new(AtomicU64::new(0));
    let producer_dropped = Arc::new(AtomicBool::new(false));
    let mut answers: CallStream<u64> = client
        .call_bidi_stream(
            SERVICE,
            "echo_forever",
            json!({}),
            counted_numbers(taken.clone(), producer_dropped.clone()),
        )
        .await
        .unwrap();
    for expected in 0..5u64 {
        assert_eq!(answers.next().await.unwrap().unwrap(), expected);
    }
    drop(answers);
    wait_until(
        "the handler's stream to be dropped after the caller dropped its own",
        Duration::from_secs(10),
        || handler_dropped.load(Ordering::SeqCst),
    )
    .await;
    wait_until(
        "the caller's producer to be dropped with its call",
        Duration::from_secs(10),
        || producer_dropped.load(Ordering::SeqCst),
    )
    .await;
    wait_until(
        "the server's open streams to be back to zero",
        Duration::from_secs(10),
        || manager.ledger().streams_open == 0,
    )
    .await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_leaves_ends_its_calls_on_the_server_and_a_server_that_leaves_fails_the_caller(
) {
    let manager = VspManager::builder(SERVICE).build();
    let handler_dropped = Arc::new(AtomicBool::new(false));
    let flag = handler_dropped.clone();
    manager
        .client_stream_endpoint("never_done", move |_: Value, items: Streaming<u64>| {
            let flag = flag.clone();
            async move {
                let _guard = DropFlag(flag);
                Ok::<_, VspError>(items.count().await)
            }
        })
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let client = client_at(Address::tcp("127.0.0.1", addr.port()), None);
    let taken = Arc::new(AtomicU64::new(0));
    let producer_dropped = Arc::new(AtomicBool::new(false));
    let call = {
        let client = client.clone();
        let items = counted_numbers(taken.clone(), producer_dropped.clone());
        tokio::spawn(async move {
            client
                .call_client_stream::<usize, _>(SERVICE, "never_done", json!({}), items)
                .await
        })
    };
    wait_until("the caller to send items", Duration::from_secs(10), || {
        taken.load(Ordering::SeqCst) > 10
    })
    .await;
    // The caller goes away with its client: the server's handler ends with the connection.
    call.abort();
    drop(client);
    wait_until(
        "the handler to be dropped after its caller left",
        Duration::from_secs(10),
        || handler_dropped.load(Ordering::SeqCst),
    )
    .await;
    wait_until(
        "the server's open streams to be back to zero",
        Duration::from_secs(10),
        || manager.ledger().streams_open == 0 && manager.ledger().connections == 0,
    )
    .await;

    manager.shutdown().await.unwrap();

    // The other way round: a server that opens the call, takes items, then goes away.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut len = [0u8; 4];
        socket.read_exact(&mut len).await.unwrap();
        let mut request = vec![0u8; u32::from_be_bytes(len) as usize];
        socket.read_exact(&mut request).await.unwrap();
        let request: Value = serde_json::from_slice(&request).unwrap();
        let id = &request["header"]["request_id"];
        socket
            .write_all(&frame(&format!(
                r#"{{"header":{{"request_id":{id},"service":"{SERVICE}","endpoint":"never_done","is_response":true,"vsp":3,"stream":"open","credit":4}},"body":null}}"#
            )))
            .await
            .unwrap();
        // The first item, then the server is gone.
        socket.read_exact(&mut len).await.unwrap();
    });
    let client = client_at(Address::tcp("127.0.0.1", port), None);
    let producer_dropped = Arc::new(AtomicBool::new(false));
    let items = counted_numbers(Arc::new(AtomicU64::new(0)), producer_dropped.clone());
    let call = client.call_client_stream::<usize, _>(SERVICE, "never_done", json!({}), items);
    let outcome = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call did not end when its server went away");
    server.await.unwrap();
    let err = outcome.expect_err("the call should fail");
    assert!(
        matches!(err, VspError::ConnectionClosed { .. }),
        "expected the closed connection, got {err:?}"
    );
    wait_until(
        "the caller's producer to be dropped when its connection closed",
        Duration::from_secs(10),
        || producer_dropped.load(Ordering::SeqCst),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_covers_the_whole_client_stream_and_ends_it_on_both_sides() {
    let (manager, client, _) = tcp_pair(VspManager::builder(SERVICE)).await;
    let producer_dropped = Arc::new(AtomicBool::new(false));
    // A caller whose items never end: the sum is never due.
    let items = counted_numbers(Arc::new(AtomicU64::new(0)), producer_dropped.clone())
        .map(|n| n as i64)
        .then(|n| async move {
            // A paced producer (the workload, not a wait): the caller's stream outlives the
            // deadline without spinning a core.
            tokio::time::sleep(Duration::from_millis(10)).await;
            n
        });
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        client.call_client_stream_with::<i64, _>(
            SERVICE,
            "sum",
            json!({}),
            items,
            CallOptions::new().timeout(Duration::from_millis(500)),
        ),
    )
    .await
    .expect("the call outlived its deadline");
    let err = outcome.expect_err("the call should time out");
    assert!(matches!(err, VspError::Timeout { .. }), "{err:?}");
    wait_until(
        "the caller's producer to be dropped at the deadline",
        Duration::from_secs(10),
        || producer_dropped.load(Ordering::SeqCst),
    )
    .await;
    wait_until(
        "the server's stream to end at the deadline",
        Duration::from_secs(10),
        || manager.ledger().streams_open == 0,
    )
    .await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_ends_open_bidirectional_streams_with_shutting_down() {
    let (manager, client, _) =
        tcp_pair(VspManager::builder(SERVICE).drain_timeout(Duration::from_secs(5))).await;
    let (sender, receiver) = tokio::sync::mpsc::channel::<String>(4);
    let lines = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|line| (line, receiver))
    });
    let mut shouted: CallStream<String> = client
        .call_bidi_stream(SERVICE, "shout", json!({}), lines)
        .await
        .unwrap();
    sender.send("hello".to_owned()).await.unwrap();
    assert_eq!(shouted.next().await.unwrap().unwrap(), "HELLO");
    let shutdown = tokio::spawn(async move { manager.shutdown().await });
    let last = tokio::time::timeout(Duration::from_secs(10), shouted.next())
        .await
        .expect("the open stream did not end at the shutdown")
        .expect("the stream ended without saying why");
    let err = last.expect_err("the stream should end with an error");
    assert!(
        matches!(
            &err,
            VspError::Remote {
                code: ErrorCode::ShuttingDown,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(shouted.next().await.is_none());
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("the shutdown did not finish")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_end_the_call_typed_a_handlers_an_item_that_does_not_decode_and_the_wrong_kind() {
    let manager = pipes(VspManager::builder(SERVICE));
    manager
        .client_stream_endpoint(
            "fail_at_three",
            |_: Value, mut items: Streaming<u64>| async move {
                let mut read = 0;
                while items.next().await.is_some() {
                    read += 1;
                    if read == 3 {
                        return Err(format!("refused after {read} items"));
                    }
                }
                Ok(read)
            },
        )
        .unwrap();
    manager
        .endpoint("plain", |_: Value| async move { Ok::<_, VspError>(1) })
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let client = client_at(Address::tcp("127.0.0.1", addr.port()), None);

    // A handler's error after it read some items.
    let err = client
        .call_client_stream::<u64, _>(
            SERVICE,
            "fail_at_three",
            json!({}),
            futures::stream::iter(0..100u64),
        )
        .await
        .unwrap_err();
    match &err {
        VspError::Remote {
            code: ErrorCode::Handler,
            message,
            ..
        } => {
            assert_eq!(message, "refused after 3 items")
        }
        other => panic!("expected the handler's error, got {other:?}"),
    }

    // An item that is not a number, to a stream of numbers.
    let err = client
        .call_client_stream::<i64, _>(
            SERVICE,
            "sum",
            json!({}),
            futures::stream::iter(vec![json!(1), json!("two"), json!(3)]),
        )
        .await
        .unwrap_err();
    match &err {
        VspError::Remote {
            code: ErrorCode::BadRequest,
            message,
            ..
        } => {
            assert!(message.contains("not a valid item"), "{message}")
        }
        other => panic!("expected bad_request for the bad item, got {other:?}"),
    }

    // The wrong kind of call, each way, answered at once with `not_supported`.
    let err = client.call(SERVICE, "sum", json!({})).await.unwrap_err();
    assert!(
        matches!(
            &err,
            VspError::Remote {
                code: ErrorCode::NotSupported,
                ..
            }
        ),
        "{err:?}"
    );
    let err = client
        .call_stream::<i64>(SERVICE, "sum", json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            VspError::Remote {
                code: ErrorCode::NotSupported,
                ..
            }
        ),
        "{err:?}"
    );
    let err = client
        .call_client_stream::<i64, _>(SERVICE, "plain", json!({}), futures::stream::iter(0..3))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            VspError::Remote {
                code: ErrorCode::NotSupported,
                ..
            }
        ),
        "{err:?}"
    );
    // And the connection serves on.
    let sum: i64 = client
        .call_client_stream(SERVICE, "sum", json!({}), futures::stream::iter(1..=4i64))
        .await
        .unwrap();
    assert_eq!(sum, 10);
    wait_until("no stream left open", Duration::from_secs(10), || {
        manager.ledger().streams_open == 0
    })
    .await;
    manager.shutdown().await.unwrap();
}

/// A raw request frame for a call that sends a stream, and its frames.
fn raw(id: u64, endpoint: &str, extra: &str, body: &str) -> Vec<u8> {
    frame(&format!(
        r#"{{"header":{{"request_id":{id},"service":"{SERVICE}","endpoint":"{endpoint}","is_response":false{extra}}},"body":{body}}}"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_sends_past_its_credit_fails_that_call_alone() {
    let (manager, _client, addr) =
        tcp_pair(VspManager::builder(SERVICE).client_stream_window(2)).await;
    // A handler that reads nothing: no credit comes back.
    manager
        .client_stream_endpoint("deaf", |_: Value, _items: Streaming<u64>| async move {
            std::future::pending::<()>().await;
            Ok::<_, VspError>(0)
        })
        .unwrap();
    let mut peer = RawPeer::connect(addr).await;
    peer.send(&raw(
        1,
        "deaf",
        r#","stream":16,"client_stream":true"#,
        "{}",
    ))
    .await;
    let open = peer.recv().await.expect("no opening");
    assert_eq!(open["header"]["stream"], "open", "{open}");
    assert_eq!(open["header"]["credit"], 2, "{open}");
    assert_eq!(open["header"]["vsp"], 3, "{open}");
    // Three items on a credit of two: the call fails with a protocol error.
    for seq in 0..3 {
        peer.send(&raw(
            1,
            "",
            &format!(r#","stream":"item","seq":{seq}"#),
            "5",
        ))
        .await;
    }
    let end = peer.recv().await.expect("no end");
    assert_eq!(end["header"]["stream"], "end", "{end}");
    assert_eq!(end["header"]["error_code"], "protocol", "{end}");
    assert!(
        end["body"]["error"]
            .as_str()
            .unwrap()
            .contains("more items than it was granted"),
        "{end}"
    );
    // A second call on the same connection runs as it should: items in order, then the end.
    peer.send(&raw(2, "sum", r#","stream":16,"client_stream":true"#, "{}"))
        .await;
    let open = peer.recv().await.unwrap();
    assert_eq!(open["header"]["request_id"], 2);
    for seq in 0..2 {
        peer.send(&raw(
            2,
            "",
            &format!(r#","stream":"item","seq":{seq}"#),
            "20",
        ))
        .await;
    }
    peer.send(&raw(2, "", r#","stream":"end""#, "null")).await;
    let mut frames = Vec::new();
    loop {
        let next = peer.recv().await.expect("the server closed");
        if next["header"]["credit"].is_number() {
            continue; // credit granted back as the handler read
        }
        let end = next["header"]["stream"] == "end";
        frames.push(next);
        if end {
            break;
        }
    }
    assert_eq!(frames[0]["header"]["stream"], "item", "{frames:?}");
    assert_eq!(frames[0]["body"], 40, "{frames:?}");
    assert_eq!(frames[1]["header"]["error_code"], Value::Null, "{frames:?}");
    drop(peer);
    wait_until(
        "the server's connections and streams to be back to zero",
        Duration::from_secs(10),
        || {
            let ledger = manager.ledger();
            ledger.connections == 0 && ledger.streams_open == 0
        },
    )
    .await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_items_a_server_holds_unread_stay_within_the_connections_byte_budget() {
    let (manager, _client, addr) =
        tcp_pair(VspManager::builder(SERVICE).max_request_bytes_per_connection(10_000)).await;
    // A handler that keeps its stream and reads nothing: every item sent is held.
    manager
        .client_stream_endpoint("hoard", |_: Value, items: Streaming<String>| async move {
            let _held = items;
            std::future::pending::<()>().await;
            Ok::<_, VspError>(0)
        })
        .unwrap();
    let mut peer = RawPeer::connect(addr).await;
    peer.send(&raw(
        1,
        "hoard",
        r#","stream":16,"client_stream":true"#,
        "{}",
    ))
    .await;
    let open = peer.recv().await.expect("no opening");
    assert_eq!(open["header"]["credit"], 32, "{open}");
    // Three items of 4,000 bytes are within the credit, not within 10,000 bytes.
    let big = format!("\"{}\"", "x".repeat(4000));
    for seq in 0..3 {
        peer.send(&raw(
            1,
            "",
            &format!(r#","stream":"item","seq":{seq}"#),
            &big,
        ))
        .await;
    }
    let end = peer.recv().await.expect("no end");
    assert_eq!(end["header"]["stream"], "end", "{end}");
    assert_eq!(end["header"]["error_code"], "protocol", "{end}");
    assert!(
        end["body"]["error"]
            .as_str()
            .unwrap()
            .contains("budget of 10000 bytes"),
        "{end}"
    );
    // The connection serves on, and nothing is held for it any more.
    assert!(peer.is_served().await);
    drop(peer);
    wait_until(
        "the server's connections and streams to be back to zero",
        Duration::from_secs(10),
        || manager.ledger().is_empty(),
    )
    .await;
    manager.shutdown().await.unwrap();
}
