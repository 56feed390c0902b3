//! Hostile peers, round two (issue 28): each test reproduces what a probe did to a running server
//! (a huge stream window, abandoned streams, a peer that never reads, an 8 MiB endpoint name, a
//! hook that never answers) and ends by waiting until the server's resource ledger is back to
//! zero, so a leak fails the test that caused it.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use vsp::server::Rejection;
use vsp::{Context, Streaming, VspError, VspManager};

/// The bound a connection's write backlog is held to (4 MiB), plus one batch of stream items.
const WRITE_BOUND: usize = 4 * 1024 * 1024 + 256 * 1024;

/// A request opening a stream with `window` items of credit.
fn stream_request(id: &str, endpoint: &str, body: &str, window: u64) -> Vec<u8> {
    frame(&format!(
        r#"{{"header":{{"request_id":{id},"service":"{SERVICE}","endpoint":"{endpoint}","is_response":false,"stream":{window}}},"body":{body}}}"#
    ))
}

/// A control frame granting `credit` more items to stream `id`.
fn credit_frame(id: &str, credit: u64) -> Vec<u8> {
    frame(&format!(
        r#"{{"header":{{"request_id":{id},"service":"{SERVICE}","endpoint":"","is_response":false,"credit":{credit}}},"body":null}}"#
    ))
}

/// The test service with streams: `bulk` (endless 1 KiB items, counted as produced) and `tail`
/// (a line every 100 ms), on an ephemeral port, with many connections allowed from loopback.
async fn stream_server(
    configure: impl FnOnce(vsp::VspManagerBuilder) -> vsp::VspManagerBuilder,
) -> (VspManager, std::net::SocketAddr, Arc<AtomicU64>) {
    let manager = configure(
        VspManager::builder(SERVICE)
            .max_connections_per_peer(8_192)
            .drain_timeout(Duration::from_secs(5)),
    )
    .build();
    register_test_endpoints(&manager);
    let produced = Arc::new(AtomicU64::new(0));
    let counter = produced.clone();
    manager
        .stream_endpoint("bulk", move |_: Value| {
            let counter = counter.clone();
            async move {
                let item = "x".repeat(1024);
                Ok::<_, VspError>(Streaming::iter(std::iter::repeat_with(move || {
                    counter.fetch_add(1, Ordering::Relaxed);
                    item.clone()
                })))
            }
        })
        .unwrap();
    manager
        .stream_endpoint("tail", |_: Value| async move {
            let every = tokio::time::interval(Duration::from_millis(100));
            Ok::<_, VspError>(Streaming::unfold(
                (every, 0u64),
                |(mut every, line)| async move {
                    every.tick().await;
                    Some((format!("log line {line}"), (every, line + 1)))
                },
            ))
        })
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    (manager, addr, produced)
}

/// Waits (bounded) until nothing a peer made the server hold is left: connections, calls,
/// streams, pending auth checks and queued bytes all back to zero.
async fn wait_for_empty_ledger(manager: &VspManager) {
    wait_until(
        "the server's ledger (connections, calls, streams, auth checks, queued bytes) to be zero",
        Duration::from_secs(20),
        || manager.ledger().is_empty(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_window_from_a_peer_that_never_reads_costs_at_most_the_write_bound() {
    // No window cap: the write backlog alone must bound what a peer that never reads costs.
    let (manager, addr, produced) =
        stream_server(|builder| builder.max_stream_window(u32::MAX)).await;
    // Four peers each ask for every item there is and never read one.
    let mut peers = Vec::new();
    for id in 0..4 {
        let mut peer = RawPeer::connect(addr).await;
        peer.send(&stream_request(
            &id.to_string(),
            "bulk",
            "{}",
            u64::from(u32::MAX),
        ))
        .await;
        peers.push(peer);
    }
    wait_until(
        "the four streams to fill their connections' write backlogs",
        Duration::from_secs(20),
        || manager.ledger().bytes_queued >= 4 * 4 * 1024 * 1024,
    )
    .await;
    // Round trips on another connection give the streams time to run on; a server that pushed
    // items past the backlog would keep growing meanwhile.
    let client = client_for(addr);
    for _ in 0..200 {
        assert_echoes(&client, 1).await;
        let queued = manager.ledger().bytes_queued;
        assert!(
            queued <= 4 * WRITE_BOUND,
            "four peers that never read hold {queued} bytes of the server's memory (bound {} per connection)",
            WRITE_BOUND
        );
    }
    let made = produced.load(Ordering::Relaxed);
    assert!(
        made < 4 * (WRITE_BOUND as u64 / 1024) * 4,
        "the streams produced {made} items of 1 KiB for peers that never read"
    );
    drop(peers);
    drop(client);
    wait_for_empty_ledger(&manager).await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_and_credit_a_peer_asks_are_capped_by_the_servers_maximum() {
    let (manager, addr, produced) = stream_server(|builder| builder.max_stream_window(16)).await;
    let mut peer = RawPeer::connect(addr).await;
    peer.send(&stream_request("1", "bulk", "{}", u64::from(u32::MAX)))
        .await;
    let open = peer.recv().await.expect("the stream did not open");
    assert_eq!(open["header"]["stream"], "open", "{open}");
    // Without credit, the capped window is all that comes; with a grant of every item there
    // is, the cap again.
    assert_eq!(
        items_before_health(&mut peer).await,
        16,
        "items of a window capped at 16"
    );
    assert!(produced.load(Ordering::Relaxed) <= 16 + 1);
    peer.send(&credit_frame("1", u64::from(u32::MAX))).await;
    assert_eq!(
        items_before_health(&mut peer).await,
        16,
        "items of a grant capped at 16"
    );
    let made = produced.load(Ordering::Relaxed);
    assert!(
        made <= 32 + 1,
        "a window and a grant capped at 16 produced {made} items"
    );
    drop(peer);
    wait_for_empty_ledger(&manager).await;
    manager.shutdown().await.unwrap();
}

/// Counts the stream items that arrive before the answer to a `health` call sent now, once the
/// stream has had time to send what its credit allows (the items are always ready, so they are
/// queued before the stream waits for credit; the wait is bounded and named).
async fn items_before_health(peer: &mut RawPeer) -> usize {
    let mut items = 0;
    // The stream sends its credit's worth at once: read until it has stopped (a health round trip
    // finds nothing after it twice in a row).
    let mut quiet = 0;
    let mut round = 0;
    while quiet < 2 {
        round += 1;
        assert!(round < 100, "the stream never stopped sending");
        peer.send_request(&format!(r#""h{round}""#), "health", "{}")
            .await;
        let mut seen = 0;
        loop {
            let next = peer.recv().await.expect("the health answer");
            if next["header"]["request_id"] == format!("h{round}") {
                break;
            }
            seen += 1;
        }
        items += seen;
        quiet = if seen == 0 { quiet + 1 } else { 0 };
    }
    items
}

/// Opens `tail` on `peers` connections, each in the way `open` says, and closes them.
async fn abandon_streams(addr: std::net::SocketAddr, peers: usize, how: Abandon) {
    for n in 0..peers {
        let mut peer = RawPeer::connect(addr).await;
        match how {
            Abandon::AfterOpen => {
                peer.send(&stream_request(&n.to_string(), "tail", "{}", 1))
                    .await;
                let open = peer.recv().await.expect("the stream did not open");
                assert_eq!(open["header"]["stream"], "open", "{open}");
            }
            Abandon::ReusedId => {
                // Two streams under one id: the second is refused, the first stays steerable.
                peer.send(&stream_request("7", "tail", "{}", 1)).await;
                peer.send(&stream_request("7", "tail", "{}", 1)).await;
                let mut refused = false;
                for _ in 0..3 {
                    let next = peer.recv().await.expect("no answer to a reused id");
                    refused |= next["header"]["error_code"] == "bad_request";
                }
                assert!(
                    refused,
                    "a second live stream with the same id was not refused"
                );
            }
            Abandon::StringId => {
                peer.send(&stream_request(&format!(r#""s{n}""#), "tail", "{}", 1))
                    .await;
                peer.recv().await.expect("the stream did not open");
            }
            Abandon::WithTheFin => {
                // The request and the FIN in one read: the reader stops before the stream runs.
                let mut bytes = stream_request(&n.to_string(), "tail", "{}", 1);
                bytes.extend(stream_request(
                    &(n + 1_000_000).to_string(),
                    "sleep",
                    r#"{"ms":3600000,"tag":"x"}"#,
                    1,
                ));
                peer.stream.write_all(&bytes).await.unwrap();
                peer.stream.shutdown().await.unwrap();
            }
        }
        drop(peer);
    }
}

#[derive(Clone, Copy, Debug)]
enum Abandon {
    AfterOpen,
    ReusedId,
    StringId,
    WithTheFin,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_streams_end_and_free_their_sockets_whatever_their_ids() {
    let (manager, addr, _) = stream_server(|builder| builder.max_connections_per_peer(64)).await;
    for how in [
        Abandon::AfterOpen,
        Abandon::ReusedId,
        Abandon::StringId,
        Abandon::WithTheFin,
    ] {
        // More peers than the per-peer cap: dead connections that stayed would lock us out.
        abandon_streams(addr, 100, how).await;
        wait_for_empty_ledger(&manager).await;
    }
    let mut peer = RawPeer::connect(addr).await;
    assert!(
        peer.is_served().await,
        "the address was locked out after abandoned streams"
    );
    drop(peer);
    wait_for_empty_ledger(&manager).await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_handler_whose_peer_left_is_ended_whatever_its_id() {
    let (manager, addr) = start_test_server().await;
    for id in [r#""text-id""#, "42", r#"{"an":"object"}"#] {
        let mut peer = RawPeer::connect(addr).await;
        peer.send_request(id, "sleep", r#"{"ms":3600000,"tag":"forever"}"#)
            .await;
        wait_in_flight(&manager, 1).await;
        drop(peer);
        wait_for_empty_ledger(&manager).await;
    }
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_is_dropped_at_the_write_progress_deadline() {
    let manager = VspManager::builder(SERVICE)
        .write_timeout(Duration::from_millis(500))
        .build();
    register_test_endpoints(&manager);
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    // 64 KiB answers, written for ever and never read.
    let value = "y".repeat(64 * 1024);
    let writer = tokio::spawn(async move {
        let request = frame(&request_json(
            "1",
            "echo",
            &format!(r#"{{"value":"{value}"}}"#),
        ));
        while write.write_all(&request).await.is_ok() {}
    });
    wait_until(
        "the server to drop the peer that never reads",
        Duration::from_secs(30),
        || manager.get_performance_stats().write_timeouts == 1,
    )
    .await;
    // The peer then finds its connection closed (it may still read what was buffered).
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        let mut sink = tokio::io::sink();
        tokio::io::copy(&mut read, &mut sink).await
    })
    .await;
    assert!(
        drained.is_ok(),
        "the dropped connection never reached its end"
    );
    writer.abort();
    let client = client_for(addr);
    assert_echoes(&client, 3).await;
    drop(client);
    wait_for_empty_ledger(&manager).await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_endpoint_of_8_mib_is_answered_with_a_short_message() {
    let (manager, addr) = start_test_server().await;
    let mut peer = RawPeer::connect(addr).await;
    let name = "e".repeat(8 * 1024 * 1024);
    peer.send_request("1", &name, "{}").await;
    let reply = peer.recv().await.expect("no answer to a long unknown name");
    assert_eq!(reply["header"]["error_code"], "not_found");
    let message = reply["body"]["error"].as_str().unwrap();
    assert!(
        message.len() < 1024,
        "the not_found message echoes {} bytes of the unknown name",
        message.len()
    );
    assert!(message.starts_with("Endpoint eee"), "{message}");
    let header = reply["header"].to_string();
    assert!(
        header.len() < 1024,
        "the answer's header echoes {} bytes of the unknown name",
        header.len()
    );
    // A near miss of a real name still gets its suggestion.
    peer.send_request("2", "ech", "{}").await;
    let reply = peer.recv().await.unwrap();
    let message = reply["body"]["error"].as_str().unwrap();
    assert!(message.contains("did you mean `echo`"), "{message}");
    drop(peer);
    wait_for_empty_ledger(&manager).await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_auth_check_ends_with_its_peer_its_cancel_and_the_shutdown() {
    let manager = VspManager::builder(SERVICE)
        // A hook that never answers.
        .auth(|_call: Context| std::future::pending::<Result<(), Rejection>>())
        .drain_timeout(Duration::from_secs(5))
        .build();
    register_test_endpoints(&manager);
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    // The peer leaves.
    let mut peer = RawPeer::connect(addr).await;
    peer.send_request("1", "echo", r#"{"value":1}"#).await;
    wait_until(
        "the auth check to be pending",
        Duration::from_secs(10),
        || manager.ledger().auth_checks_pending == 1,
    )
    .await;
    drop(peer);
    wait_for_empty_ledger(&manager).await;
    // The caller cancels.
    let mut peer = RawPeer::connect(addr).await;
    peer.send_request("2", "echo", r#"{"value":1}"#).await;
    wait_until(
        "the auth check to be pending",
        Duration::from_secs(10),
        || manager.ledger().auth_checks_pending == 1,
    )
    .await;
    peer.send(&frame(&format!(
        r#"{{"header":{{"request_id":2,"service":"{SERVICE}","endpoint":"","is_response":false,"cancel":true}},"body":null}}"#
    )))
    .await;
    wait_until(
        "the cancelled auth check to end",
        Duration::from_secs(10),
        || manager.ledger().auth_checks_pending == 0 && manager.ledger().calls_in_flight == 0,
    )
    .await;
    // Shutdown ends the last one without waiting out its drain timeout.
    peer.send_request("3", "echo", r#"{"value":1}"#).await;
    wait_until(
        "the auth check to be pending",
        Duration::from_secs(10),
        || manager.ledger().auth_checks_pending == 1,
    )
    .await;
    let started = std::time::Instant::now();
    let shut = manager.shutdown().await;
    assert!(
        shut.is_ok(),
        "shutdown waited out its drain timeout for a pending auth check: {shut:?} after {:?}",
        started.elapsed()
    );
    let reply = peer
        .recv()
        .await
        .expect("no answer to the call shutdown ended");
    assert_eq!(reply["header"]["error_code"], "shutting_down", "{reply}");
    wait_for_empty_ledger(&manager).await;
}

/// The docs say `Context::current()` works inside an auth hook; it did not (the hook was not
/// polled in its call's context). Both a hook that answers at once and one that waits see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_hook_sees_its_call_as_context_current_even_when_it_waits() {
    let manager = VspManager::builder(SERVICE)
        .auth(|call: Context| async move {
            if call.endpoint() == "sleep" {
                // One turn of waiting: the check goes on as a task of its own (no timing).
                tokio::task::yield_now().await;
            }
            match Context::current() {
                Some(current) if current.endpoint() == call.endpoint() => Ok(()),
                Some(_) => Err(Rejection::permission_denied("another call's context")),
                None => Err(Rejection::permission_denied(
                    "no Context::current() in the hook",
                )),
            }
        })
        .build();
    register_test_endpoints(&manager);
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let client = client_for(addr);
    let echoed = client
        .call(SERVICE, "echo", serde_json::json!({"value": 1}))
        .await
        .unwrap();
    assert_eq!(echoed, 1);
    let slept = client
        .call(SERVICE, "sleep", serde_json::json!({"ms": 1, "tag": "t"}))
        .await
        .unwrap();
    assert_eq!(slept, "t");
    drop(client);
    wait_for_empty_ledger(&manager).await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_and_writing_is_closed_at_the_write_deadline() {
    let manager = VspManager::builder(SERVICE)
        .write_timeout(Duration::from_millis(500))
        .build();
    register_test_endpoints(&manager);
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut peer = socket.connect(addr).await.unwrap();
    // Answers that fill the socket buffers but stay under the 4 MiB backlog, so the server's
    // reader waits for a next request that never comes, with nothing in flight.
    let value = "z".repeat(64 * 1024);
    let request = frame(&request_json(
        "1",
        "echo",
        &format!(r#"{{"value":"{value}"}}"#),
    ));
    let mut sent = 0;
    while manager.ledger().bytes_queued < 256 * 1024 {
        assert!(sent < 1000, "the answers never backed up in the server");
        peer.write_all(&request).await.unwrap();
        sent += 1;
        // Each answer is queued (or written) before the next request is read.
        wait_until("the echo to be answered", Duration::from_secs(10), || {
            manager.get_performance_stats().messages_processed >= sent
        })
        .await;
    }
    wait_until(
        "the write deadline to drop the peer",
        Duration::from_secs(30),
        || manager.get_performance_stats().write_timeouts == 1,
    )
    .await;
    // The whole connection goes, not only its write side.
    wait_for_empty_ledger(&manager).await;
    drop(peer);
    manager.shutdown().await.unwrap();
}
