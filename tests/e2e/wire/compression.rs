//! Compressed frames: offered by every peer of this version, sent only to a peer that offered,
//! inflated within the frame limit.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{frame, request_json, RawPeer, SERVICE};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vsp::{Compression, VspManager};

/// The top bit of a length prefix: a zstd frame follows.
const COMPRESSED: u32 = 0x8000_0000;

/// A raw frame: whether it came compressed, and its JSON (inflated).
async fn read_raw_frame(stream: &mut TcpStream) -> Option<(bool, Value)> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut prefix = [0u8; 4];
        stream.read_exact(&mut prefix).await.ok()?;
        let prefix = u32::from_be_bytes(prefix);
        let mut bytes = vec![0u8; (prefix & !COMPRESSED) as usize];
        stream.read_exact(&mut bytes).await.ok()?;
        let compressed = prefix & COMPRESSED != 0;
        if compressed {
            bytes = zstd::bulk::decompress(&bytes, 64 << 20).expect("a zstd frame");
        }
        Some((compressed, serde_json::from_slice(&bytes).expect("JSON")))
    })
    .await
    .expect("no frame and no close within 10 s")
}

fn compressed_frame(json: &str) -> Vec<u8> {
    let bytes = zstd::bulk::compress(json.as_bytes(), 1).unwrap();
    let mut out = (COMPRESSED | bytes.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&bytes);
    out
}

async fn compressing_server() -> (VspManager, SocketAddr) {
    let manager = VspManager::builder(SERVICE)
        .compression(Compression::zstd())
        .build();
    common::register_test_endpoints(&manager);
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    (manager, addr)
}

/// A large, compressible body: a list of records.
fn records(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"id": i, "name": format!("user {i}"), "email": format!("user{i}@example.com"), "active": i % 3 == 0}))
            .collect(),
    )
}

#[tokio::test]
async fn a_server_compresses_answers_only_to_a_peer_that_offered() {
    let (_manager, addr) = compressing_server().await;
    let value = records(500);
    let body = json!({ "value": value }).to_string();
    let offer = request_json("1", "echo", &body).replacen(
        r#""is_response":false"#,
        r#""is_response":false,"accept_encoding":"zstd""#,
        1,
    );
    let mut offering = RawPeer::connect(addr).await;
    offering.send(&frame(&offer)).await;
    let (compressed, answer) = read_raw_frame(&mut offering.stream)
        .await
        .expect("an answer");
    assert!(
        compressed,
        "a large answer to a peer that offered zstd went plain"
    );
    assert_eq!(
        answer["header"]["accept_encoding"], "zstd",
        "{}",
        answer["header"]
    );
    assert_eq!(answer["body"], value);
    // A small answer goes plain, compressed or not being the server's choice per frame.
    offering.send_request("2", "echo", r#"{"value":1}"#).await;
    let (compressed, answer) = read_raw_frame(&mut offering.stream).await.unwrap();
    assert!(!compressed);
    assert_eq!(answer["body"], 1);

    // Velithon's request: no offer, so a plain answer and no offer back.
    let mut plain = RawPeer::connect(addr).await;
    plain.send_request("1", "echo", &body).await;
    let (compressed, answer) = read_raw_frame(&mut plain.stream).await.unwrap();
    assert!(
        !compressed,
        "a peer that offered nothing got a compressed frame"
    );
    assert!(answer["header"].get("accept_encoding").is_none());
    assert_eq!(answer["body"], value);
}

#[tokio::test]
async fn a_server_reads_compressed_requests_and_refuses_one_that_inflates_past_its_limit() {
    let manager = VspManager::builder(SERVICE).max_frame_size(1 << 20).build();
    common::register_test_endpoints(&manager);
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let value = records(200);
    let body = json!({ "value": value }).to_string();
    let mut peer = RawPeer::connect(addr).await;
    peer.send(&compressed_frame(&request_json("1", "echo", &body)))
        .await;
    let answer = peer
        .recv()
        .await
        .expect("an answer to a compressed request");
    assert_eq!(answer["body"], value);

    // 64 MiB of spaces in a few KiB: refused from the size it declares, the connection closed.
    let bomb = format!(
        r#"{{"header":{{"request_id":"2","service":"{SERVICE}","endpoint":"echo","is_response":false}},"body":{{"value":"{}"}}}}"#,
        " ".repeat(64 << 20)
    );
    let bomb = compressed_frame(&bomb);
    assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
    let mut attacker = RawPeer::connect(addr).await;
    attacker.send(&bomb).await;
    let answer = attacker.recv().await;
    if let Some(answer) = &answer {
        assert_eq!(answer["header"]["error_code"], "protocol", "{answer}");
    }
    assert!(attacker.is_closed_by_server().await);
    // The other connection carries on.
    assert!(peer.is_served().await);
    common::wait_until(
        "the bomb's connection to be counted closed",
        Duration::from_secs(10),
        || manager.get_performance_stats().connections_active == 1,
    )
    .await;
}

/// A server that records the client's frames: answers the first with (or without) the offer,
/// then reads the second.
async fn server_seeing_requests(
    offer: bool,
) -> (SocketAddr, tokio::task::JoinHandle<Vec<(bool, Value)>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (compressed, request) = read_raw_frame(&mut stream).await.expect("a request");
            let id = &request["header"]["request_id"];
            let extra = if offer {
                r#","accept_encoding":"zstd""#
            } else {
                ""
            };
            let answer = format!(
                r#"{{"header":{{"request_id":{id},"service":"{SERVICE}","endpoint":"echo","is_response":true,"vsp":2{extra}}},"body":1}}"#
            );
            stream.write_all(&frame(&answer)).await.unwrap();
            seen.push((compressed, request));
        }
        seen
    });
    (addr, seen)
}

#[tokio::test]
async fn a_client_compresses_requests_only_after_the_server_offered() {
    for offer in [true, false] {
        let (addr, seen) = server_seeing_requests(offer).await;
        let client = common::client_builder_for(addr)
            .max_transports(1)
            .compression(Compression::zstd())
            .build();
        let large = json!({ "value": records(300) });
        for _ in 0..2 {
            let answer = client.call(SERVICE, "echo", large.clone()).await.unwrap();
            assert_eq!(answer, 1);
        }
        let seen = seen.await.unwrap();
        // The first request offers (and goes plain: nothing was offered to the client yet).
        assert!(!seen[0].0);
        assert_eq!(seen[0].1["header"]["accept_encoding"], "zstd");
        assert_eq!(seen[0].1["body"], large);
        // The second: compressed only if the server offered; no more offers once answered.
        assert_eq!(seen[1].0, offer, "offer {offer}: {:?}", seen[1].1["header"]);
        assert!(seen[1].1["header"].get("accept_encoding").is_none());
        assert_eq!(seen[1].1["body"], large);
    }
}

#[tokio::test]
async fn a_client_and_a_server_that_compress_round_trip_large_bodies() {
    let (_manager, addr) = compressing_server().await;
    let client = common::client_builder_for(addr)
        .compression(Compression::zstd().level(3))
        .build();
    for n in [0, 10, 5_000] {
        let value = records(n);
        let answer = client
            .call(SERVICE, "echo", json!({ "value": value }))
            .await
            .unwrap();
        assert_eq!(answer, value);
    }
}

/// A server that answers with a few KiB of zstd that would inflate to 64 MiB: the client refuses
/// it from the size it declares (above the client's frame limit), fails the call at once, and
/// drops the connection; the next call gets a new one.
#[tokio::test]
async fn a_client_refuses_an_answer_that_inflates_past_its_limit() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let (mut stream, _) = listener.accept().await.unwrap();
            let (_, request) = read_raw_frame(&mut stream).await.expect("a request");
            let id = &request["header"]["request_id"];
            let answer = format!(
                r#"{{"header":{{"request_id":{id},"service":"{SERVICE}","endpoint":"echo","is_response":true,"vsp":2}},"body":"{}"}}"#,
                " ".repeat(64 << 20)
            );
            stream.write_all(&compressed_frame(&answer)).await.unwrap();
            // Held open: the client, not this server, must end the connection.
            tokio::spawn(async move {
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
            });
        }
    });
    let client = common::client_builder_for(addr)
        .max_transports(1)
        .max_frame_size(1 << 20)
        .timeout(Duration::from_secs(30))
        .build();
    for _ in 0..2 {
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            client.call(SERVICE, "echo", json!({ "value": 1 })),
        )
        .await
        .expect("the call's failure, long before its 30 s deadline");
        let err = outcome.expect_err("a 64 MiB answer under a 1 MiB limit was accepted");
        assert!(
            err.to_string().contains("frame"),
            "the error does not say why: {err}"
        );
    }
    // Each failure closed its connection: the second call needed a new one.
    assert_eq!(client.pool_stats().created, 2);
    server.await.unwrap();
}
