//! Every bad input gets a typed answer, and the server keeps serving everyone else.

use crate::common;

use std::time::Duration;

use common::{client_for, frame, request_json, start_test_server, RawPeer, SERVICE};
use serde_json::json;
use vsp::{ErrorCode, VspError, VspManager};

fn remote(result: Result<serde_json::Value, VspError>) -> (ErrorCode, String) {
    match result {
        Err(VspError::Remote { code, message, .. }) => (code, message),
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_endpoint_is_not_found_in_velithons_words() {
    let (_manager, addr) = start_test_server().await;
    let (code, message) = remote(client_for(addr).call(SERVICE, "nope", json!({})).await);
    assert_eq!(code, ErrorCode::NotFound);
    assert!(message.starts_with("Endpoint nope not found"), "{message}");
    // Then what there is: the test service's endpoints, and the closest to a typo.
    assert!(
        message.contains(
            "(endpoints: add, echo, error_key, fail, health, panic, sleep, vsp.describe)"
        ),
        "{message}"
    );
    let (_, typo) = remote(client_for(addr).call(SERVICE, "ecko", json!({})).await);
    assert!(typo.contains("did you mean `echo`?"), "{typo}");
}

#[tokio::test]
async fn a_body_that_is_not_an_object_is_a_bad_request() {
    let (_manager, addr) = start_test_server().await;
    let client = client_for(addr);
    for body in [json!([1, 2]), json!("text"), json!(3), json!(null)] {
        let (code, message) = remote(client.call(SERVICE, "add", body.clone()).await);
        assert_eq!(code, ErrorCode::BadRequest, "body {body}");
        assert!(message.contains("must be a JSON object"), "{message}");
    }
}

#[tokio::test]
async fn a_missing_field_is_a_bad_request_naming_it() {
    let (_manager, addr) = start_test_server().await;
    let (code, message) = remote(client_for(addr).call(SERVICE, "add", json!({"a": 1})).await);
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("`b`"), "{message}");
}

#[tokio::test]
async fn a_field_of_the_wrong_type_is_a_bad_request() {
    let (_manager, addr) = start_test_server().await;
    let (code, message) = remote(
        client_for(addr)
            .call(SERVICE, "add", json!({"a": "one", "b": 2}))
            .await,
    );
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("invalid type"), "{message}");
}

#[tokio::test]
async fn a_handler_error_carries_its_message() {
    let (_manager, addr) = start_test_server().await;
    let (code, message) = remote(client_for(addr).call(SERVICE, "fail", json!({})).await);
    assert_eq!(code, ErrorCode::Handler);
    assert_eq!(message, "the handler said no");
}

#[tokio::test]
async fn a_handler_panic_is_a_handler_error_and_the_connection_lives_on() {
    let (manager, addr) = start_test_server().await;
    let client = client_for(addr);
    let (code, message) = remote(client.call(SERVICE, "panic", json!({})).await);
    assert_eq!(code, ErrorCode::Handler);
    assert!(message.contains("handler blew up"), "{message}");
    // Same connection, same server: still serving.
    common::assert_echo(&client, 5).await;
    assert_eq!(manager.get_performance_stats().connections_total, 1);
}

#[tokio::test]
async fn a_frame_that_is_not_json_closes_only_that_connection() {
    let (_manager, addr) = start_test_server().await;
    let client = client_for(addr);
    common::assert_echo(&client, 1).await;

    let mut bad = RawPeer::connect(addr).await;
    bad.send(&frame("this is not json")).await;
    let reply = bad.recv().await.expect("a protocol error before the close");
    assert_eq!(reply["header"]["error_code"], "protocol");
    assert_eq!(reply["header"]["request_id"], serde_json::Value::Null);
    assert!(bad.is_closed_by_server().await);

    common::assert_echo(&client, 2).await;
}

#[tokio::test]
async fn a_wrong_shape_frame_with_a_readable_id_gets_a_protocol_reply() {
    let (_manager, addr) = start_test_server().await;
    let mut peer = RawPeer::connect(addr).await;
    // No body, no endpoint.
    peer.send(&frame(
        r#"{"header":{"request_id":17,"service":"test-service"}}"#,
    ))
    .await;
    let reply = peer.recv().await.unwrap();
    assert_eq!(reply["header"]["request_id"], 17);
    assert_eq!(reply["header"]["error_code"], "protocol");
    assert!(reply["body"]["error"]
        .as_str()
        .unwrap()
        .contains("malformed request"));
    // The connection stays usable.
    peer.send_request("18", "add", r#"{"a":1,"b":2}"#).await;
    let reply = peer.recv().await.unwrap();
    assert_eq!(
        (reply["header"]["request_id"].clone(), reply["body"].clone()),
        (json!(18), json!(3))
    );
}

#[tokio::test]
async fn an_oversize_length_prefix_is_refused_and_the_connection_closed() {
    let manager = VspManager::builder(SERVICE).max_frame_size(1024).build();
    common::register_test_endpoints(&manager);
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let client = client_for(addr);

    let mut bad = RawPeer::connect(addr).await;
    // Claims 4 GiB; the server must neither allocate it nor wait for it.
    bad.send(&u32::MAX.to_be_bytes()).await;
    let reply = bad.recv().await.expect("an error before the close");
    assert_eq!(reply["header"]["error_code"], "protocol");
    assert!(reply["body"]["error"]
        .as_str()
        .unwrap()
        .contains("exceeds the maximum of 1024"));
    assert!(bad.is_closed_by_server().await);

    common::assert_echo(&client, 3).await;
}

#[tokio::test]
async fn a_peer_stalled_in_the_middle_of_a_frame_blocks_nobody() {
    let (_manager, addr) = start_test_server().await;
    let mut stalled = RawPeer::connect(addr).await;
    let whole = frame(&request_json("1", "echo", r#"{"value":1}"#));
    stalled.send(&whole[..whole.len() / 2]).await;

    let client = client_for(addr);
    common::assert_echoes(&client, 10).await;
    // The stalled peer finishes its frame later and is answered.
    stalled.send(&whole[whole.len() / 2..]).await;
    assert_eq!(stalled.recv().await.unwrap()["body"], json!(1));
}

#[tokio::test]
async fn pipelined_frames_in_one_write_are_all_answered() {
    let (_manager, addr) = start_test_server().await;
    let mut peer = RawPeer::connect(addr).await;
    let mut batch = Vec::new();
    for id in 0..50 {
        batch.extend(frame(&request_json(
            &id.to_string(),
            "add",
            &format!(r#"{{"a":{id},"b":1000}}"#),
        )));
    }
    peer.send(&batch).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let reply = peer.recv().await.unwrap();
        let id = reply["header"]["request_id"].as_i64().unwrap();
        assert_eq!(reply["body"], json!(id + 1000));
        seen.insert(id);
    }
    assert_eq!(seen.len(), 50);
}

#[tokio::test]
async fn string_and_integer_request_ids_are_echoed_and_is_response_may_be_missing() {
    let (_manager, addr) = start_test_server().await;
    let mut peer = RawPeer::connect(addr).await;
    peer.send(&frame(r#"{"header":{"request_id":"abc","service":"test-service","endpoint":"add"},"body":{"a":1,"b":1}}"#)).await;
    let reply = peer.recv().await.unwrap();
    assert_eq!(reply["header"]["request_id"], "abc");
    assert_eq!(reply["body"], 2);
    peer.send_request("99", "add", r#"{"a":2,"b":2}"#).await;
    assert_eq!(peer.recv().await.unwrap()["header"]["request_id"], 99);
}

#[tokio::test]
async fn a_response_sent_to_the_server_is_ignored() {
    let (_manager, addr) = start_test_server().await;
    let mut peer = RawPeer::connect(addr).await;
    peer.send(&frame(r#"{"header":{"request_id":1,"service":"test-service","endpoint":"add","is_response":true},"body":{}}"#)).await;
    peer.send_request("2", "add", r#"{"a":1,"b":1}"#).await;
    // The first reply is the second frame's: the response got none.
    assert_eq!(peer.recv().await.unwrap()["header"]["request_id"], 2);
}

#[tokio::test]
async fn registering_an_endpoint_twice_is_an_error() {
    let manager = common::test_manager();
    let err = manager
        .endpoint("echo", |_: serde_json::Value| async { Ok::<_, String>(0) })
        .unwrap_err();
    assert!(matches!(err, VspError::DuplicateEndpoint { ref endpoint, .. } if endpoint == "echo"));
    let err = manager
        .endpoint("health", |_: serde_json::Value| async {
            Ok::<_, String>(0)
        })
        .unwrap_err();
    assert!(
        matches!(err, VspError::DuplicateEndpoint { ref endpoint, .. } if endpoint == "health")
    );
}

#[tokio::test]
async fn endpoints_can_be_added_while_serving() {
    let (manager, addr) = start_test_server().await;
    let client = client_for(addr);
    assert!(client.call(SERVICE, "late", json!({})).await.is_err());
    manager
        .endpoint("late", |_: serde_json::Value| async {
            Ok::<_, String>("here")
        })
        .unwrap();
    assert_eq!(
        client.call(SERVICE, "late", json!({})).await.unwrap(),
        json!("here")
    );
}

#[tokio::test]
async fn many_bad_peers_at_once_leave_the_server_responsive() {
    let (manager, addr) = start_test_server().await;
    let mut peers = Vec::new();
    for i in 0..20 {
        let mut peer = RawPeer::connect(addr).await;
        match i % 3 {
            0 => peer.send(&frame("garbage")).await,
            1 => peer.send(&[0, 0, 1]).await, // half a length prefix, then silence
            _ => peer.send(&u32::MAX.to_be_bytes()).await,
        }
        peers.push(peer);
    }
    let client = client_for(addr);
    assert_eq!(
        client
            .call(SERVICE, "echo", json!({"value": "ok"}))
            .await
            .unwrap(),
        json!("ok")
    );
    drop(peers);
    // Every bad connection is cleaned up once its peer is gone.
    let mut active = usize::MAX;
    for _ in 0..200 {
        active = manager.get_performance_stats().connections_active;
        if active == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(active, 1, "only the good client's connection should remain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_its_answers_stops_being_read() {
    let (manager, addr) = start_test_server().await;
    let greedy = RawPeer::connect(addr).await;
    let (mut read, mut write) = greedy.stream.into_split();
    // 1,000 requests whose answers total 64 MiB, and not one answer read.
    let payload = "x".repeat(64 * 1024);
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for id in 0..1000 {
            let request = request_json(
                &id.to_string(),
                "echo",
                &format!(r#"{{"value":"{payload}"}}"#),
            );
            if write.write_all(&frame(&request)).await.is_err() {
                return;
            }
        }
    });
    // The server stops reading once 4 MiB of answers wait (about 64 of them, plus what the
    // sockets hold): the count stays there however long we wait. Without that push-back it
    // would take all 64 MiB and buffer every answer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let processed = manager.get_performance_stats().messages_processed;
    assert!(
        processed < 300,
        "{processed} requests read from a peer that reads nothing"
    );

    // Others are served meanwhile.
    let client = client_for(addr);
    assert_eq!(
        client
            .call(SERVICE, "echo", json!({"value": "fine"}))
            .await
            .unwrap(),
        json!("fine")
    );

    // Once the peer reads, every answer arrives.
    let mut answered = 0;
    let mut len = [0u8; 4];
    use tokio::io::AsyncReadExt;
    while answered < 1000 {
        read.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        read.read_exact(&mut body).await.unwrap();
        answered += 1;
    }
    writer.await.unwrap();
}

/// A server that answers each request with `bodies` in turn, in the header shape VSP writes
/// (the client's fast path), echoing the request id.
async fn scripted_server(bodies: Vec<&'static str>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        for body in bodies {
            let mut len = [0u8; 4];
            stream.read_exact(&mut len).await.unwrap();
            let mut json = vec![0u8; u32::from_be_bytes(len) as usize];
            stream.read_exact(&mut json).await.unwrap();
            let request: serde_json::Value = serde_json::from_slice(&json).unwrap();
            let id = &request["header"]["request_id"];
            let reply = format!(
                r#"{{"header":{{"request_id":{id},"service":"{SERVICE}","endpoint":"add","is_response":true,"vsp":2}},"body":{body}}}"#
            );
            stream.write_all(&frame(&reply)).await.unwrap();
        }
        // Keep the connection open until the client goes.
        let _ = stream.read(&mut [0u8; 1]).await;
    });
    addr
}

#[tokio::test]
async fn a_response_whose_body_is_not_json_is_a_decode_error_and_the_connection_carries_on() {
    // The client reads a response's header and leaves its body to the decoder: a broken body
    // must still be a typed error for that call only, with the next call on the same
    // connection answered.
    let addr = scripted_server(vec![r#"{"sum":"#, r#"{"sum":3}"#, "3\u{1}"]).await;
    let client = client_for(addr);
    let broken = client
        .call_typed::<serde_json::Value>(SERVICE, "add", json!({"a": 1, "b": 2}))
        .await;
    assert!(
        matches!(&broken, Err(VspError::Decode { endpoint, .. }) if endpoint == "add"),
        "{broken:?}"
    );
    let fine: serde_json::Value = client
        .call_typed(SERVICE, "add", json!({"a": 1, "b": 2}))
        .await
        .unwrap();
    assert_eq!(fine, json!({"sum": 3}));
    let trailing = client
        .call_typed::<u64>(SERVICE, "add", json!({"a": 1, "b": 2}))
        .await;
    assert!(
        matches!(trailing, Err(VspError::Decode { .. })),
        "{trailing:?}"
    );
    assert_eq!(client.open_connections(&addr_text(addr)), 1);
}

fn addr_text(addr: std::net::SocketAddr) -> String {
    format!("127.0.0.1:{}", addr.port())
}

#[tokio::test]
async fn a_request_whose_body_is_broken_json_is_a_bad_request_and_the_connection_carries_on() {
    // The server leaves a request's body to the endpoint's decoder (one pass over it): broken
    // JSON in a frame of the usual shape is that call's `bad_request`, not a protocol error,
    // and bytes that are not UTF-8 are refused as a malformed request.
    let (_manager, addr) = start_test_server().await;
    let mut peer = RawPeer::connect(addr).await;
    peer.send(&frame(&request_json("1", "add", r#"{"a":1,"b":"#)))
        .await;
    let reply = peer.recv().await.unwrap();
    assert_eq!(reply["header"]["request_id"], 1);
    assert_eq!(reply["header"]["error_code"], "bad_request", "{reply}");
    let message = reply["body"]["error"].as_str().unwrap();
    assert!(message.contains("invalid arguments for `add`"), "{message}");
    let mut not_utf8 = br#"{"header":{"request_id":2,"service":"test-service","endpoint":"add","is_response":false},"body":{"a":1,"b":2,"c":""#.to_vec();
    not_utf8.extend_from_slice(&[0xff, b'"', b'}', b'}']);
    let mut framed = (not_utf8.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&not_utf8);
    peer.send(&framed).await;
    let reply = peer.recv().await.unwrap();
    assert_eq!(reply["header"]["request_id"], 2);
    assert_eq!(reply["header"]["error_code"], "protocol", "{reply}");
    assert!(reply["body"]["error"]
        .as_str()
        .unwrap()
        .contains("malformed request"));
    peer.send_request("3", "add", r#"{"a":1,"b":2}"#).await;
    let reply = peer.recv().await.unwrap();
    assert_eq!(
        (reply["header"]["request_id"].clone(), reply["body"].clone()),
        (json!(3), json!(3))
    );
}
