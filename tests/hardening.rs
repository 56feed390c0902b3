//! Regression tests of the hardening review (issue 13): each one failed before its fix.

mod common;

use std::time::Duration;

use common::*;
use vsp::VspManager;

/// A server with the test endpoints and short read deadlines.
async fn impatient_server(frame: Duration, idle: Duration) -> (VspManager, std::net::SocketAddr) {
    let manager = VspManager::builder(SERVICE)
        .frame_timeout(frame)
        .idle_timeout(idle)
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
        tokio::time::sleep(Duration::from_millis(50)).await; // pacing the sender, not syncing
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
