//! The envelope's decoder and encoder, against each other and against serde.

use super::decode::plain_len;
use super::encode::{itoa_u64, write_json_str};
use super::*;
use crate::error::ErrorCode;
use crate::protocol::Metadata;

/// The request captured from Velithon's Python VSP.
const CAPTURED_REQUEST: &str = r#"{"header":{"request_id":"046ec970-f55c-404e-8467-72f328b1a792","service":"user-service","endpoint":"get_user","is_response":false},"body":{"user_id":"42"}}"#;

#[test]
fn decoding_borrows_header_and_keeps_the_body_raw() {
    let envelope = Envelope::parse(CAPTURED_REQUEST.as_bytes()).unwrap();
    assert_eq!(
        envelope.request_id().get(),
        r#""046ec970-f55c-404e-8467-72f328b1a792""#
    );
    assert_eq!(envelope.service(), "user-service");
    assert_eq!(envelope.endpoint(), "get_user");
    assert!(!envelope.is_response());
    // The body is a slice of the frame itself, not a re-encoding.
    let body = envelope.body().get();
    let frame_range = CAPTURED_REQUEST.as_bytes().as_ptr_range();
    assert!(frame_range.contains(&body.as_ptr()));
    assert_eq!(body, r#"{"user_id":"42"}"#);
}

/// Found by the `envelope` fuzz target: a canonical frame whose object goes on after the
/// body. serde ignores the extra key; the header-only fast path hands the endpoint a body
/// that is not one JSON value, which its decoder refuses (a bad request), never other
/// arguments.
#[test]
fn keys_after_the_body_never_read_as_other_arguments() {
    let frame = br#"{"header":{"request_id":1,"service":"svc","endpoint":"echo","is_response":false},"body":{"a":1},"body2":{"a":2}}"#;
    let view = Envelope::parse_view(frame).unwrap();
    assert!(serde_json::from_slice::<serde::de::IgnoredAny>(view.body()).is_err());
    let general = Envelope::parse_general(frame).unwrap();
    assert_eq!(general.body.get(), r#"{"a":1}"#);
}

#[test]
fn the_chunked_string_scan_finds_what_a_byte_by_byte_one_finds() {
    let naive = |text: &[u8]| {
        text.iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
    };
    for len in 0..70 {
        for special in [None, Some(b'"'), Some(b'\\'), Some(b'\n'), Some(0x1f)] {
            for at in 0..=len {
                let mut text = vec![b'a'; len];
                text.extend("é".as_bytes());
                if let (Some(byte), true) = (special, at < len) {
                    text[at] = byte;
                }
                assert_eq!(plain_len(&text), naive(&text), "{len} {special:?} {at}");
            }
        }
    }
}

/// Both ways of reading a frame agree: the fast path either declines or reads exactly what
/// serde reads.
fn assert_same_reading(frame: &[u8]) {
    let general = Envelope::parse_general(frame);
    let parsed = Envelope::parse(frame);
    assert_eq!(
        format!("{parsed:?}"),
        format!("{general:?}"),
        "{}",
        String::from_utf8_lossy(frame)
    );
}

#[test]
fn the_fast_path_reads_what_serde_reads() {
    let code = ErrorCode::Handler;
    let meta = Metadata::new();
    let written = [
        Extensions::request(Some(250), None, None),
        Extensions::request(None, None, None),
        Extensions::response(None),
        Extensions::response(Some(&code)),
        Extensions::control(Some(16), false),
        Extensions::control(None, true),
        Extensions::stream(StreamFrame::Item(41), None),
        Extensions::stream(StreamFrame::Open, None),
        Extensions::stream(StreamFrame::End, Some(&code)),
        Extensions {
            stream_window: Some(1024),
            ..Extensions::request(Some(5), None, None)
        },
        Extensions::request(Some(5), Some(&meta), None),
        Extensions {
            http_status: Some(409),
            ..Extensions::response(Some(&code))
        },
    ];
    for extensions in &written {
        for (id, service, body) in [
            (RequestIdOut::Int(0), "users", r#"{"user_id":"123"}"#),
            (RequestIdOut::Int(u64::MAX), "ü✓", "null"),
            (
                RequestIdOut::Raw(r#""a-b-c""#),
                "s",
                r#"{"error":"x\"y","data":[1,{"a":{}}]}"#,
            ),
            (RequestIdOut::Raw("null"), "", "\"text\""),
        ] {
            let mut out = Vec::new();
            write_envelope::<()>(
                &mut out,
                &HeaderOut {
                    request_id: id,
                    service,
                    endpoint: "get_user",
                    is_response: true,
                },
                extensions,
                |out| {
                    out.extend_from_slice(body.as_bytes());
                    Ok(())
                },
            )
            .unwrap();
            assert_same_reading(&out);
            if !matches!(id, RequestIdOut::Raw("null")) && extensions.meta.is_none() {
                assert!(
                    Envelope::parse_canonical(&out).is_some(),
                    "{}",
                    String::from_utf8_lossy(&out)
                );
            }
        }
    }
}

#[test]
fn the_fast_path_declines_the_rest_and_serde_reads_it_alike() {
    // Declined (and read by serde, or refused by it with its message).
    for frame in [
        r#"{"header":{"request_id":01,"service":"s","endpoint":"e","is_response":false},"body":{}}"#,
        r#"{"header":{"request_id":-1,"service":"s","endpoint":"e","is_response":false},"body":{}}"#,
        r#"{"header":{"request_id":1,"service":"s\u0041","endpoint":"e","is_response":false},"body":{}}"#,
        r#"{"header":{"request_id":1,"service":"s","endpoint":"e","is_response":false},"body":{}} "#,
        r#"{"header":{"request_id":1,"service":"s","endpoint":"e","is_response":false},"body":{},"x":1}"#,
        r#"{"header":{"request_id":1,"service":"s","endpoint":"e","is_response":false},"body":{"a":}}"#,
        r#"{"header":{"request_id":1,"service":"s","endpoint":"e","is_response":false,"vsp":99999999999},"body":{}}"#,
        r#"{"header":{"request_id":1,"service":"s","endpoint":"e","is_response":true,"error_code":"handler","http_status":70000},"body":{}}"#,
        r#"{"header":{"request_id":1,"service":"s","endpoint":"e","is_response":true,"http_status":"409"},"body":{}}"#,
        r#"{"header":{"request_id":1,"service":"s","endpoint":"e","is_response":false,"cancel":false},"body":{}}"#,
        r#"{"header":{"request_id":1,"service":"s","endpoint":"e","is_response":false,"timeout_ms":1.5},"body":{}}"#,
        r#"{"header":{"request_id":1,"service":"s","endpoint":"e","is_response":false,"service":"t"},"body":{}}"#,
        r#"{"header":{"request_id":1,"service":"s","endpoint":"e"},"body":{}}"#,
        r#"{"header":{"service":"s","request_id":1,"endpoint":"e","is_response":true},"body":1}"#,
        r#"{"header":{"request_id":1,"service":"s","endpoint":"e","is_response":false},"body":{}}}"#,
    ] {
        assert!(
            Envelope::parse_canonical(frame.as_bytes()).is_none(),
            "{frame}"
        );
        assert_same_reading(frame.as_bytes());
    }
    // Whitespace inside the body: serde's raw value leaves it out, and so does the fast path.
    let frame = br#"{"header":{"request_id":1,"service":"s","endpoint":"e","is_response":false},"body": {} }"#;
    assert_same_reading(frame);
    assert_eq!(Envelope::parse(frame).unwrap().body().get(), "{}");
    // Not UTF-8 inside a name: both refuse.
    let mut frame = br#"{"header":{"request_id":1,"service":"s"#.to_vec();
    frame.push(0xff);
    frame.extend_from_slice(br#"","endpoint":"e","is_response":false},"body":{}}"#);
    assert!(Envelope::parse(&frame).is_err());
}

#[test]
fn escapes_like_serde_json() {
    for s in [
        "plain",
        "quote\"back\\slash",
        "ctl\u{1}\n\t\r\u{8}\u{c}",
        "ünï ✓",
        "",
    ] {
        let mut out = Vec::new();
        write_json_str(&mut out, s);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(s).unwrap()
        );
    }
}

#[test]
fn writes_what_the_decoder_reads() {
    let code = ErrorCode::Timeout;
    let mut out = Vec::new();
    write_envelope::<()>(
        &mut out,
        &HeaderOut {
            request_id: RequestIdOut::Int(7),
            service: "svc",
            endpoint: "e\"p",
            is_response: true,
        },
        &Extensions {
            timeout_ms: Some(250),
            ..Extensions::response(Some(&code))
        },
        |out| {
            write_error_body(out, "late");
            Ok(())
        },
    )
    .unwrap();
    let envelope = Envelope::parse(&out).unwrap();
    assert_eq!(envelope.request_id().get(), "7");
    assert_eq!(envelope.endpoint(), "e\"p");
    assert!(envelope.is_response());
    assert_eq!(envelope.header.timeout_ms, Some(250));
    assert_eq!(envelope.header.error_code.as_deref(), Some("timeout"));
    assert_eq!(envelope.header.version, Some(PROTOCOL_REVISION));
    assert_eq!(envelope.body().get(), r#"{"error":"late"}"#);
}

#[test]
fn stream_and_control_keys_round_trip() {
    let header = HeaderOut {
        request_id: RequestIdOut::Int(9),
        service: "s",
        endpoint: "e",
        is_response: true,
    };
    let frame = |extensions: &Extensions<'_>| {
        let mut out = Vec::new();
        write_envelope(&mut out, &header, extensions, |out| {
            out.extend_from_slice(b"1");
            Ok::<_, std::convert::Infallible>(())
        })
        .unwrap();
        out
    };
    let item = frame(&Extensions::stream(StreamFrame::Item(5), None));
    let item = Envelope::parse_view(&item).unwrap();
    assert_eq!(item.stream_frame(), Some(StreamFrame::Item(5)));
    let end = frame(&Extensions::stream(StreamFrame::End, None));
    assert_eq!(
        Envelope::parse_view(&end).unwrap().stream_frame(),
        Some(StreamFrame::End)
    );
    let request = frame(&Extensions {
        stream_window: Some(64),
        ..Extensions::default()
    });
    let request = Envelope::parse_view(&request).unwrap();
    assert_eq!(
        (request.wants_stream(), request.stream_window()),
        (true, Some(64))
    );
    let control = frame(&Extensions::control(Some(3), true));
    let control = Envelope::parse_view(&control).unwrap();
    assert_eq!((control.credit(), control.is_cancel()), (Some(3), true));
    assert_eq!(control.stream_frame(), None);
}

#[test]
fn integer_ids_round_trip() {
    for id in [0, 7, 1234567890, u64::MAX] {
        let text = itoa_u64(id, &mut [0; 20]).to_vec();
        let raw = RawValue::from_string(String::from_utf8(text).unwrap()).unwrap();
        assert_eq!(parse_int_request_id(&raw), Some(id));
    }
    let uuid = RawValue::from_string("\"046ec970\"".into()).unwrap();
    assert_eq!(parse_int_request_id(&uuid), None);
}

#[test]
fn salvages_the_id_of_a_frame_without_body() {
    let frame = br#"{"header":{"request_id":"abc"}}"#;
    assert!(Envelope::parse(frame).is_err());
    assert_eq!(salvage_request_id(frame).unwrap().get(), "\"abc\"");
    assert!(salvage_request_id(b"not json").is_none());
}
