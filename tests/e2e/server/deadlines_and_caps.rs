//! Read deadlines, frame limits and connection caps: a peer that stalls, floods or sends too
//! much is cut off; the others carry on.

use std::time::Duration;

use crate::common::*;
use vsp::VspManager;

/// A server with the test endpoints and short read deadlines.
async fn impatient_server(frame: Duration, idle: Duration) -> (VspManager, std::net::SocketAddr) {
    let manager = VspManager::builder(SERVICE)
        .frame_timeout(frame)
        .idle_timeout(idle)
        // Thousands of stalled peers, all from 127.0.0.1.
        .max_connections_per_peer(4_096)
        .build();
    register_test_endpoints(&manager);
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    (manager, addr)
}

#[tokio::test]
async fn a_peer_stalled_mid_frame_is_dropped_at_the_frame_deadline() {
    let (manager, addr) = impatient_server(Duration::from_millis(200), Duration::MAX).await;
    let mut stalled = RawPeer::connect(addr).await;
    let whole = frame(&request_json("1", "echo", r#"{"value":1}"#));
    stalled.send(&whole[..whole.len() / 2]).await;
    assert!(
        stalled.is_closed_within(Duration::from_secs(5)).await,
        "the server kept a peer stalled mid-frame open for 5 s (frame deadline 200 ms)"
    );
    // Half a length prefix is a frame started, too.
    let mut prefix_only = RawPeer::connect(addr).await;
    prefix_only.send(&[0, 0]).await;
    assert!(prefix_only.is_closed_within(Duration::from_secs(5)).await);
    // A well-behaved peer on another connection is untouched, and the count comes back down.
    let client = client_for(addr);
    assert_echoes(&client, 3).await;
    wait_until(
        "the stalled connections to be counted closed",
        Duration::from_secs(5),
        || manager.get_performance_stats().connections_active == 1,
    )
    .await;
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_slow_but_steady_frame_within_the_deadline_is_served() {
    let (manager, addr) = impatient_server(Duration::from_secs(5), Duration::MAX).await;
    let mut peer = RawPeer::connect(addr).await;
    let whole = frame(&request_json("7", "echo", r#"{"value":"slow"}"#));
    for chunk in whole.chunks(whole.len() / 4 + 1) {
        peer.send(chunk).await;
        // The scenario, not a synchronisation: a sender that trickles its frame.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = peer
        .recv()
        .await
        .expect("the server closed a steady sender");
    assert_eq!(reply["body"], "slow");
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_idle_connection_is_closed_but_not_one_with_a_call_in_flight() {
    let (manager, addr) =
        impatient_server(Duration::from_secs(30), Duration::from_millis(300)).await;
    let mut idle = RawPeer::connect(addr).await;
    assert!(
        idle.is_closed_within(Duration::from_secs(5)).await,
        "an idle connection outlived its idle timeout (300 ms) by 5 s"
    );
    // A call that runs three idle timeouts keeps its connection open and gets its answer.
    let mut busy = RawPeer::connect(addr).await;
    busy.send_request("9", "sleep", r#"{"ms":900,"tag":"long"}"#)
        .await;
    let reply = busy.recv().await.expect("closed with a call in flight");
    assert_eq!(reply["body"], "long");
    // Then it goes idle and is closed in turn.
    assert!(busy.is_closed_within(Duration::from_secs(5)).await);
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_thousand_stalled_peers_are_all_dropped() {
    let (manager, addr) = impatient_server(Duration::from_millis(300), Duration::MAX).await;
    let mut peers = Vec::new();
    for _ in 0..2_000 {
        let mut peer = RawPeer::connect(addr).await;
        peer.send(&[0, 0, 0, 50, b'{']).await;
        peers.push(peer);
    }
    wait_until(
        "2,000 stalled connections to be dropped",
        Duration::from_secs(20),
        || manager.get_performance_stats().connections_active == 0,
    )
    .await;
    for peer in &mut peers {
        assert!(peer.is_closed_within(Duration::from_secs(5)).await);
    }
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_reply_above_the_frame_limit_is_refused_and_the_connection_carries_on() {
    let manager = VspManager::builder(SERVICE).max_frame_size(1024).build();
    register_test_endpoints(&manager);
    #[derive(serde::Deserialize)]
    struct Repeat {
        n: usize,
    }
    manager
        .endpoint("repeat", |args: Repeat| async move {
            Ok::<_, String>("x".repeat(args.n))
        })
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let client = client_builder_for(addr)
        .max_transports(1)
        .max_frame_size(1024)
        .build();
    let held = held_call(&client, &manager, 300).await;
    client
        .call(SERVICE, "repeat", serde_json::json!({ "n": 500 }))
        .await
        .unwrap();
    // This reply would be above the limit: an error instead of a frame the peer refuses.
    match client
        .call(SERVICE, "repeat", serde_json::json!({ "n": 5000 }))
        .await
    {
        Err(vsp::VspError::Remote {
            code: vsp::ErrorCode::TooLarge,
            message,
            ..
        }) => {
            assert!(message.contains("above the largest frame"), "{message}")
        }
        // Before the fix the server sent it anyway (and a client with the same 1 KiB limit
        // closed the connection on it, failing every call it carried).
        other => panic!("expected a too_large error, got {other:?}"),
    }
    // The call in flight on the same connection is untouched.
    assert_eq!(held.await.unwrap().unwrap(), "held");
    assert_echoes(&client, 2).await;
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_request_above_the_frame_limit_is_refused_before_sending() {
    let (manager, addr) = start_test_server().await;
    let client = client_builder_for(addr).max_frame_size(1024).build();
    let big = serde_json::json!({ "value": "x".repeat(2048) });
    match client.call(SERVICE, "echo", big).await {
        Err(vsp::VspError::RequestTooLarge { len, max: 1024, .. }) => assert!(len > 2048),
        other => panic!("expected RequestTooLarge, got {other:?}"),
    }
    assert_eq!(
        manager.get_performance_stats().messages_processed,
        0,
        "it was sent"
    );
    assert_echoes(&client, 2).await;
    manager.shutdown().await.unwrap();
}

/// A server with the test endpoints, built by `configure`.
async fn server_with(
    configure: impl FnOnce(vsp::VspManagerBuilder) -> vsp::VspManagerBuilder,
) -> (VspManager, std::net::SocketAddr) {
    let manager = configure(VspManager::builder(SERVICE)).build();
    register_test_endpoints(&manager);
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    (manager, addr)
}

#[tokio::test]
async fn connections_beyond_the_caps_are_closed_at_once_and_their_places_come_back() {
    let (manager, addr) =
        server_with(|builder| builder.max_connections(3).max_connections_per_peer(2)).await;
    let one: std::net::IpAddr = [127, 0, 0, 1].into();
    let two: std::net::IpAddr = [127, 0, 0, 2].into();
    let three: std::net::IpAddr = [127, 0, 0, 3].into();
    let mut first = RawPeer::connect_from(addr, one).await;
    let mut second = RawPeer::connect_from(addr, one).await;
    assert!(first.is_served().await && second.is_served().await);
    let mut third_from_one = RawPeer::connect_from(addr, one).await;
    assert!(
        third_from_one
            .is_closed_within(Duration::from_secs(5))
            .await,
        "a third connection from one peer (cap 2) was kept"
    );
    let mut from_two = RawPeer::connect_from(addr, two).await;
    assert!(
        from_two.is_served().await,
        "another peer was refused under the caps"
    );
    let mut from_three = RawPeer::connect_from(addr, three).await;
    assert!(
        from_three.is_closed_within(Duration::from_secs(5)).await,
        "a fourth connection (cap 3) was kept"
    );
    assert_eq!(manager.get_performance_stats().connections_refused, 2);
    // A closed connection gives its place back, for its peer and in the total.
    drop(first);
    wait_until(
        "the closed connection to be counted closed",
        Duration::from_secs(5),
        || manager.get_performance_stats().connections_active == 2,
    )
    .await;
    let mut again = RawPeer::connect_from(addr, one).await;
    assert!(again.is_served().await, "a place given back was not reused");
    assert!(second.is_served().await && from_two.is_served().await);
    manager.shutdown().await.unwrap();
}

/// A request of about `bytes` bytes to the test service's `sleep` endpoint, which holds it `ms`
/// on the server (its tag is the padding, echoed back).
fn large_request(id: &str, ms: u64, bytes: usize) -> Vec<u8> {
    let tag = "x".repeat(bytes);
    frame(&request_json(
        id,
        "sleep",
        &format!(r#"{{"ms":{ms},"tag":"{tag}"}}"#),
    ))
}

#[tokio::test]
async fn large_requests_beyond_a_connections_byte_budget_are_answered_overloaded() {
    let (manager, addr) =
        server_with(|builder| builder.max_request_bytes_per_connection(100_000)).await;
    let mut peer = RawPeer::connect(addr).await;
    peer.send(&large_request("1", 1_000, 60_000)).await;
    wait_in_flight(&manager, 1).await;
    peer.send(&large_request("2", 0, 60_000)).await;
    let refused = peer.recv().await.expect("closed instead of answering");
    assert_eq!(refused["header"]["request_id"], 2);
    assert_eq!(refused["header"]["error_code"], "overloaded", "{refused}");
    // Another connection has its own budget.
    let mut other = RawPeer::connect(addr).await;
    other.send(&large_request("3", 0, 60_000)).await;
    let served = other.recv().await.unwrap();
    assert_eq!(served["body"].as_str().map(str::len), Some(60_000));
    // Once the first is answered, its bytes are given back.
    let first = peer.recv().await.unwrap();
    assert_eq!(first["header"]["request_id"], 1);
    peer.send(&large_request("4", 0, 60_000)).await;
    let fourth = peer.recv().await.unwrap();
    assert_eq!(
        fourth["body"].as_str().map(str::len),
        Some(60_000),
        "{}",
        fourth["header"]
    );
    // A request larger than the whole budget is still served when it is the only one.
    peer.send(&large_request("5", 0, 150_000)).await;
    let alone = peer.recv().await.unwrap();
    assert_eq!(alone["body"].as_str().map(str::len), Some(150_000));
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn large_requests_beyond_the_servers_byte_budget_are_answered_overloaded() {
    let (manager, addr) = server_with(|builder| builder.max_request_bytes(100_000)).await;
    let mut first = RawPeer::connect(addr).await;
    first.send(&large_request("1", 1_000, 60_000)).await;
    wait_in_flight(&manager, 1).await;
    let mut second = RawPeer::connect(addr).await;
    second.send(&large_request("2", 0, 60_000)).await;
    let refused = second.recv().await.expect("closed instead of answering");
    assert_eq!(refused["header"]["error_code"], "overloaded", "{refused}");
    // Small requests are not held by the byte budget.
    second
        .send_request("3", "echo", r#"{"value":"small"}"#)
        .await;
    assert_eq!(second.recv().await.unwrap()["body"], "small");
    assert_eq!(first.recv().await.unwrap()["header"]["request_id"], 1);
    second.send(&large_request("4", 0, 60_000)).await;
    let served = second.recv().await.unwrap();
    assert_eq!(served["body"].as_str().map(str::len), Some(60_000));
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_of_a_running_manager_stops_its_server() {
    let (manager, addr) = start_test_server().await;
    let copy = manager.clone();
    drop(manager);
    // A handle is left: it serves on.
    let client = client_for(addr);
    assert_echoes(&client, 2).await;
    drop(copy);
    wait_until(
        "the port to refuse connections once the last handle was dropped",
        Duration::from_secs(10),
        || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(),
    )
    .await;
}
