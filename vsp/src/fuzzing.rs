//! Entry points for the fuzz targets (`fuzz/`, feature `fuzzing`): every parser a peer reaches,
//! each with the property its target checks. Not a public API: it changes without notice.
//!
//! Each function panics when its property is broken; that is what the fuzzer looks for (beside
//! crashes, hangs and excessive memory).

use std::future::Future;
use std::pin::pin;
use std::str::FromStr;
use std::task::{Context, Poll, Waker};

use crate::protocol::frame::{FrameReader, ReadError};
use crate::protocol::{
    salvage_request_id, write_envelope, Envelope, Extensions, HeaderOut, Metadata, RequestIdOut,
    MAX_METADATA_ENTRIES,
};

/// Polls a future whose every wait is already satisfied (a reader over bytes at hand).
fn ready<F: Future>(future: F) -> F::Output {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: std::sync::Arc<Self>) {}
    }
    let waker = Waker::from(std::sync::Arc::new(Noop));
    let mut future = pin!(future);
    let mut cx = Context::from_waker(&waker);
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a read of bytes already at hand waited"),
    }
}

/// The frame reader over `bytes` with a frame limit of `max_frame_size`: every frame it yields
/// is within the limit (inflated too, for a compressed one) and the frames and the rest account
/// for the input exactly; a length above the limit, or a compressed frame that would inflate past
/// it, is a protocol error, never an allocation of that size.
pub fn frames(bytes: &[u8], max_frame_size: usize) {
    use crate::protocol::compression::COMPRESSED;
    let mut reader = FrameReader::new(bytes, max_frame_size);
    let mut consumed = 0;
    loop {
        match ready(std::future::poll_fn(|cx| reader.poll_frame(cx))) {
            Ok(Some(frame)) => {
                assert!(frame.len() <= max_frame_size, "a frame above the limit");
                let prefix: [u8; 4] = bytes[consumed..consumed + 4].try_into().unwrap();
                let prefix = u32::from_be_bytes(prefix);
                let sent = (prefix & !COMPRESSED) as usize;
                if prefix & COMPRESSED == 0 {
                    assert_eq!(sent, frame.len(), "a plain frame changed size");
                }
                consumed += 4 + sent;
                assert!(consumed <= bytes.len(), "frames out of nothing");
            }
            Ok(None) => {
                assert_eq!(consumed, bytes.len(), "bytes lost between frames");
                return;
            }
            Err(ReadError::Protocol(_)) | Err(ReadError::Io(_)) => return,
            Err(other) => panic!("a reader without deadlines reported {other:?}"),
        }
    }
}

/// The envelope's two readers: the fast path declines or reads exactly what serde reads; the
/// header-only fast path (`parse_view`, whose body the endpoint's decoder checks) agrees with
/// serde on every header key and on the body's text whenever serde reads the frame.
pub fn envelope(bytes: &[u8]) {
    crate::protocol::check_envelope_readers_agree(bytes);
    // What a server reads of a frame it cannot decode: only ever a request id.
    let _ = salvage_request_id(bytes);
}

/// Call metadata from a peer's header: within its bounds, and what it read writes back the same.
pub fn metadata(text: &str) {
    let Ok(metadata) = Metadata::from_json(text) else {
        return;
    };
    assert!(metadata.len() <= MAX_METADATA_ENTRIES);
    if metadata.is_empty() {
        return; // an empty `meta` is not written at all
    }
    // Written in a request header as our client writes it, and read back as a server reads it.
    let mut frame = Vec::new();
    let header = HeaderOut {
        request_id: RequestIdOut::Int(1),
        service: "s",
        endpoint: "e",
        is_response: false,
    };
    write_envelope(
        &mut frame,
        &header,
        &Extensions::request(None, Some(&metadata), None),
        |out| {
            out.extend_from_slice(b"{}");
            Ok::<_, std::convert::Infallible>(())
        },
    )
    .unwrap();
    let envelope = Envelope::parse_view(&frame).expect("a header we wrote does not read");
    let raw = envelope
        .metadata_json()
        .expect("the metadata was not written");
    let again = Metadata::from_json(raw.get()).expect("metadata written back does not read");
    assert_eq!(
        again, metadata,
        "metadata changed on its way through a header"
    );
}

/// A `traceparent` from a peer's metadata: what parses writes back as what parses the same.
pub fn traceparent(text: &str) {
    let Ok(trace) = crate::trace::TraceContext::parse(text) else {
        return;
    };
    let written = trace.traceparent();
    let again = crate::trace::TraceContext::parse(&written).expect("a traceparent written back");
    assert_eq!(again.traceparent(), written);
}

/// Address text (discovery answers, a peer's registration): what parses displays as what parses
/// the same.
pub fn address(text: &str) {
    let Ok(address) = crate::transport::Address::from_str(text) else {
        return;
    };
    let shown = address.to_string();
    let again = crate::transport::Address::from_str(&shown).expect("an address shown back");
    assert_eq!(again, address);
}
