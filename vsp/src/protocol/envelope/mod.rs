//! The envelope `{"header":{...},"body":...}`: a borrowed decoder and an in-place encoder.
//!
//! Decoding never builds a `serde_json::Value` tree: header fields borrow from the frame and the
//! body stays raw JSON until a handler (or a caller) deserializes it into its own type.
//!
//! `decode.rs` reads frames (a fast path over the header's own layout, serde for everything
//! else, and both agree: the `envelope` fuzz target checks it); `encode.rs` writes them, the
//! only writer of headers in the crate.

use serde_json::value::RawValue;

mod decode;
mod encode;
#[cfg(test)]
mod tests;

#[cfg(feature = "fuzzing")]
pub(crate) use decode::check_envelope_readers_agree;
pub(crate) use decode::{salvage_request_id, Envelope, FrameView};
pub(crate) use encode::{
    write_envelope, write_error_body, write_service_error_body, Extensions, HeaderOut, RequestIdOut,
};

/// The protocol version this crate speaks, sent in the `vsp` header key of every response.
pub const PROTOCOL_VERSION: u32 = 1;

/// What a response's `vsp` header key says this server can do beyond version 1's frames: 2 adds
/// server streams (`stream`, `seq`, `credit`) and cancel frames (`cancel`); 3 adds client and
/// bidirectional streams (`client_stream` on a request, then the caller's own `item` and `end`
/// frames under the server's `credit`). A client sends `credit` and `cancel` frames only to a
/// peer that answered with `vsp` 2 or more, and its stream's items only to one that answered 3
/// or more, so Velithon (which sends no `vsp`) never receives one.
pub(crate) const PROTOCOL_REVISION: u32 = 3;

/// The first revision that reads `credit` and `cancel` frames.
pub(crate) const CONTROL_REVISION: u32 = 2;

/// The first revision that reads a caller's stream of items (`client_stream`).
pub(crate) const CLIENT_STREAM_REVISION: u32 = 3;

/// The widest window a server grants a caller's stream (it starts at 32 items and doubles while
/// the items held are under 1 MiB). Measured (`cargo bench --bench rpc`, streams section): a
/// client stream of small items carries 0.21 million items/s at a window of 32 and 0.82 million
/// at 1,024, as server streams do.
pub(crate) const DEFAULT_CLIENT_STREAM_WINDOW: u32 = 1024;

/// The items a caller grants a stream up front unless it says otherwise. Measured (`cargo bench
/// --bench rpc`, streams section): items per second grow with the window up to 1024 on
/// loopback and no further. What a slow reader can make the server hold is this many items:
/// set a smaller window for large items.
pub(crate) const DEFAULT_STREAM_WINDOW: u32 = 1024;

/// The endpoint every server answers itself, as Velithon's do: `{"status":"healthy",...}`.
pub const HEALTH_ENDPOINT: &str = "health";

/// What a response frame of a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamFrame {
    /// The endpoint accepted the stream; items follow.
    Open,
    /// One item, with its sequence number.
    Item(u64),
    /// The end: the body is `null`, or an error (with its `error_code`).
    End,
}

impl StreamFrame {
    fn as_str(self) -> &'static str {
        match self {
            StreamFrame::Open => "open",
            StreamFrame::Item(_) => "item",
            StreamFrame::End => "end",
        }
    }
}

/// Parses a request id that our client wrote (a plain non-negative integer).
pub(crate) fn parse_int_request_id(raw: &RawValue) -> Option<u64> {
    parse_int_text(raw.get())
}

/// Parses a plain non-negative integer (no sign, no exponent, at most 20 digits).
pub(crate) fn parse_int_text(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// At most `max` bytes of `text` (cut at a char boundary), with `…` when cut: what error
/// messages echo of a peer's text, so their size never depends on the request's.
pub(crate) fn short_text(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}… ({} bytes)", &text[..end], text.len()))
}

/// Whether a JSON text (a request body, checked or not) starts as an object must.
pub(crate) fn is_json_object(json: &str) -> bool {
    json.trim_start().starts_with('{')
}
