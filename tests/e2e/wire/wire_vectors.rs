//! The wire format, byte for byte against frames captured from Velithon's Python VSP.

use crate::common;

use common::{start_test_server, RawPeer};
use serde_json::json;
use vsp::VspMessage;

const REQUEST: &str = r#"{"header":{"request_id":"046ec970-f55c-404e-8467-72f328b1a792","service":"user-service","endpoint":"get_user","is_response":false},"body":{"user_id":"42"}}"#;
const RESPONSE: &str = r#"{"header":{"request_id":"046ec970-f55c-404e-8467-72f328b1a792","service":"user-service","endpoint":"get_user","is_response":true},"body":{"id":"42","name":"John Doe"}}"#;

#[test]
fn captured_request_has_the_captured_length_prefix() {
    assert_eq!(REQUEST.len(), 0x9b);
}

#[test]
fn a_request_message_encodes_to_the_captured_bytes() {
    let msg = VspMessage::request(
        "046ec970-f55c-404e-8467-72f328b1a792",
        "user-service",
        "get_user",
        &json!({"user_id": "42"}),
    )
    .unwrap();
    assert_eq!(&msg.serialize()[..], REQUEST.as_bytes());
}

#[test]
fn captured_frames_decode_and_reencode_identically() {
    for captured in [REQUEST, RESPONSE] {
        let msg = VspMessage::decode(captured.as_bytes()).unwrap();
        assert_eq!(&msg.serialize()[..], captured.as_bytes());
    }
    let response = VspMessage::decode(RESPONSE.as_bytes()).unwrap();
    assert!(response.is_response());
    assert_eq!(response.body().get(), r#"{"id":"42","name":"John Doe"}"#);
}

#[test]
fn serialize_returns_cached_bytes_on_the_second_call() {
    let msg = VspMessage::decode(REQUEST.as_bytes()).unwrap();
    let first = msg.serialize();
    let second = msg.serialize();
    // Same allocation: the second call did not encode again.
    assert_eq!(first.as_ptr(), second.as_ptr());
}

#[test]
fn changing_the_message_invalidates_the_cache() {
    let mut msg = VspMessage::decode(REQUEST.as_bytes()).unwrap();
    let before = msg.serialize();
    msg.set_body(&json!({"user_id": "43"})).unwrap();
    let after = msg.serialize();
    assert_ne!(before.as_ptr(), after.as_ptr());
    assert!(std::str::from_utf8(&after)
        .unwrap()
        .ends_with(r#""body":{"user_id":"43"}}"#));

    msg.set_is_response(true);
    assert!(std::str::from_utf8(&msg.serialize())
        .unwrap()
        .contains(r#""is_response":true"#));
    msg.set_request_id(7).unwrap();
    assert!(msg
        .serialize()
        .starts_with(br#"{"header":{"request_id":7,"#));
}

#[test]
fn missing_is_response_means_request_and_any_id_is_kept_verbatim() {
    let frame =
        br#"{"header":{"request_id":{"n":[1,2.50]},"service":"s","endpoint":"e"},"body":{}}"#;
    let msg = VspMessage::decode(frame).unwrap();
    assert!(!msg.is_response());
    assert_eq!(msg.request_id().get(), r#"{"n":[1,2.50]}"#);
}

#[tokio::test]
async fn the_server_echoes_the_header_verbatim_and_adds_only_extensions() {
    let (_manager, addr) = start_test_server().await;
    let mut peer = RawPeer::connect(addr).await;
    let request = r#"{"header":{"request_id":"046ec970-f55c-404e-8467-72f328b1a792","service":"test-service","endpoint":"echo","is_response":false},"body":{"value":{"id":"42","name":"John Doe"}}}"#;
    peer.send(&common::frame(request)).await;
    let mut len = [0u8; 4];
    use tokio::io::AsyncReadExt;
    peer.stream.read_exact(&mut len).await.unwrap();
    let mut json = vec![0; u32::from_be_bytes(len) as usize];
    peer.stream.read_exact(&mut json).await.unwrap();
    assert_eq!(
        std::str::from_utf8(&json).unwrap(),
        r#"{"header":{"request_id":"046ec970-f55c-404e-8467-72f328b1a792","service":"test-service","endpoint":"echo","is_response":true,"vsp":3},"body":{"id":"42","name":"John Doe"}}"#
    );
}

#[tokio::test]
async fn health_answers_as_velithon_does() {
    let (_manager, addr) = start_test_server().await;
    let mut peer = RawPeer::connect(addr).await;
    peer.send_request(r#""629882cd""#, "health", "{}").await;
    let reply = peer.recv().await.unwrap();
    assert_eq!(reply["header"]["request_id"], "629882cd");
    assert_eq!(reply["header"]["is_response"], true);
    assert_eq!(reply["body"]["status"], "healthy");
    let timestamp = reply["body"]["timestamp"].as_f64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - timestamp).abs() < 60.0,
        "timestamp {timestamp} is not now ({now})"
    );
}

#[tokio::test]
async fn escaped_header_strings_are_echoed_with_their_meaning() {
    let (_manager, addr) = start_test_server().await;
    let mut peer = RawPeer::connect(addr).await;
    let request = r#"{"header":{"request_id":"a\"b","service":"odd \u00e9 \"service\"","endpoint":"echo"},"body":{"value":1}}"#;
    peer.send(&common::frame(request)).await;
    let reply = peer.recv().await.unwrap();
    assert_eq!(reply["header"]["request_id"], "a\"b");
    assert_eq!(reply["header"]["service"], "odd é \"service\"");
    assert_eq!(reply["body"], 1);
}
