//! The envelope `{"header":{...},"body":...}`: a borrowed decoder and an in-place encoder.
//!
//! Decoding never builds a `serde_json::Value` tree: header fields borrow from the frame and the
//! body stays raw JSON until a handler (or a caller) deserializes it into its own type.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::Metadata;
use crate::error::{ErrorCode, ProtocolError};
use crate::trace::{self, TraceContext};

/// The protocol version this crate speaks, sent in the `vsp` header key of every response.
pub const PROTOCOL_VERSION: u32 = 1;

/// What a response's `vsp` header key says this server can do beyond version 1's frames: 2 adds
/// server streams (`stream`, `seq`, `credit`) and cancel frames (`cancel`). A client sends
/// `credit` and `cancel` frames only to a peer that answered with `vsp` 2 or more, so Velithon
/// (which sends no `vsp`) never receives one.
pub(crate) const PROTOCOL_REVISION: u32 = 2;

/// The items a caller grants a stream up front unless it says otherwise. Measured (`cargo bench
/// --bench rpc`, streams section): items per second grow with the window up to 1024 on
/// loopback and no further. What a slow reader can make the server hold is this many items:
/// set a smaller window for large items.
pub(crate) const DEFAULT_STREAM_WINDOW: u32 = 1024;

/// The endpoint every server answers itself, as Velithon's do: `{"status":"healthy",...}`.
pub const HEALTH_ENDPOINT: &str = "health";

/// A decoded envelope that borrows from its frame.
#[derive(Debug, Deserialize)]
pub(crate) struct Envelope<'a> {
    #[serde(borrow)]
    header: Header<'a>,
    #[serde(borrow)]
    body: &'a RawValue,
}

#[derive(Debug, Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    request_id: &'a RawValue,
    #[serde(borrow)]
    service: Cow<'a, str>,
    #[serde(borrow)]
    endpoint: Cow<'a, str>,
    #[serde(default)]
    is_response: bool,
    #[serde(borrow, default)]
    error_code: Option<Cow<'a, str>>,
    #[serde(default, rename = "vsp")]
    version: Option<u32>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(borrow, default)]
    meta: Option<&'a RawValue>,
    /// On a request: the caller wants a stream, granting this many items up front. On a
    /// response: `"open"`, `"item"` or `"end"`.
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    /// A stream item's sequence number, from 0.
    #[serde(default)]
    seq: Option<u64>,
    /// A caller's grant of more stream items (a frame of its own for a streaming request id).
    #[serde(default)]
    credit: Option<u32>,
    /// The caller gave up on this request id.
    #[serde(default)]
    cancel: bool,
}

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

/// Only the request id, for answering a frame whose other parts are unusable.
#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    header: IdOnlyHeader<'a>,
}

#[derive(Deserialize)]
struct IdOnlyHeader<'a> {
    #[serde(borrow)]
    request_id: &'a RawValue,
}

impl<'a> Envelope<'a> {
    /// Decodes the JSON of one frame (without its length prefix).
    pub fn parse(json: &'a [u8]) -> Result<Self, ProtocolError> {
        if let Some(envelope) = Self::parse_canonical(json) {
            return Ok(envelope);
        }
        Self::parse_general(json)
    }

    /// Any JSON a peer may send: serde's decoder, every key in any order, escapes, whitespace.
    fn parse_general(json: &'a [u8]) -> Result<Self, ProtocolError> {
        serde_json::from_slice(json).map_err(|err| ProtocolError::Malformed(err.to_string()))
    }

    /// The fast path: a frame in exactly the shape [`write_envelope`] writes (its key order, no
    /// whitespace, no escapes in names, integer extensions, no `meta`), read without serde's
    /// per-key matching; the body is still checked by serde as raw JSON. Anything else is
    /// `None` and goes the general way, which decides what it means (or why it is malformed):
    /// this path only ever accepts what the general one reads the same.
    fn parse_canonical(json: &'a [u8]) -> Option<Self> {
        let (header, body) = Self::canonical_head(json)?;
        let body = serde_json::from_str(std::str::from_utf8(body).ok()?).ok()?;
        Some(Envelope { header, body })
    }

    /// Reads a frame for a reader that decodes the body itself, checking it as JSON in that one
    /// pass (a client decoding a result, an endpoint decoding its arguments): the header, and
    /// the body's bytes as they are.
    pub(crate) fn parse_view(json: &'a [u8]) -> Result<FrameView<'a>, ProtocolError> {
        if let Some((header, body)) = Self::canonical_head(json) {
            return Ok(FrameView { header, body });
        }
        let envelope = Self::parse_general(json)?;
        Ok(FrameView {
            body: envelope.body.get().as_bytes(),
            header: envelope.header,
        })
    }

    /// The header of a canonical frame, and its body's bytes, unchecked.
    fn canonical_head(json: &'a [u8]) -> Option<(Header<'a>, &'a [u8])> {
        let mut c = Cursor { json, at: 0 };
        c.expect(b"{\"header\":{\"request_id\":")?;
        let request_id = c.raw_scalar()?;
        c.expect(b",\"service\":")?;
        let service = c.plain_str()?;
        c.expect(b",\"endpoint\":")?;
        let endpoint = c.plain_str()?;
        c.expect(b",\"is_response\":")?;
        let is_response = if c.eat(b"true") {
            true
        } else {
            c.expect(b"false")?;
            false
        };
        let mut header = Header {
            request_id,
            service: Cow::Borrowed(service),
            endpoint: Cow::Borrowed(endpoint),
            is_response,
            error_code: None,
            version: None,
            timeout_ms: None,
            meta: None,
            stream: None,
            seq: None,
            credit: None,
            cancel: false,
        };
        if c.eat(b",\"timeout_ms\":") {
            header.timeout_ms = Some(c.uint()?);
        }
        if c.eat(b",\"error_code\":") {
            header.error_code = Some(Cow::Borrowed(c.plain_str()?));
        }
        if c.eat(b",\"vsp\":") {
            header.version = Some(u32::try_from(c.uint()?).ok()?);
        }
        if c.eat(b",\"stream\":") {
            header.stream = Some(c.raw_scalar()?);
        }
        if c.eat(b",\"seq\":") {
            header.seq = Some(c.uint()?);
        }
        if c.eat(b",\"credit\":") {
            header.credit = Some(u32::try_from(c.uint()?).ok()?);
        }
        if c.eat(b",\"cancel\":true") {
            header.cancel = true;
        }
        c.expect(b"},\"body\":")?;
        let body = json[c.at..].strip_suffix(b"}")?;
        Some((header, body))
    }

    /// The request id as raw JSON, to be echoed verbatim.
    pub fn request_id(&self) -> &'a RawValue {
        self.header.request_id
    }

    /// The target service's name.
    pub fn service(&self) -> &str {
        &self.header.service
    }

    /// The endpoint's name.
    pub fn endpoint(&self) -> &str {
        &self.header.endpoint
    }

    /// Whether this is a response; a missing key means a request.
    pub fn is_response(&self) -> bool {
        self.header.is_response
    }

    /// The body, as raw JSON.
    pub fn body(&self) -> &'a RawValue {
        self.body
    }
}

/// A frame whose body is left to its decoder (see [`Envelope::parse_view`]).
#[derive(Debug)]
pub(crate) struct FrameView<'a> {
    header: Header<'a>,
    body: &'a [u8],
}

impl<'a> FrameView<'a> {
    pub(crate) fn request_id(&self) -> &'a RawValue {
        self.header.request_id
    }

    pub(crate) fn service(&self) -> &str {
        &self.header.service
    }

    pub(crate) fn endpoint(&self) -> &str {
        &self.header.endpoint
    }

    pub(crate) fn is_response(&self) -> bool {
        self.header.is_response
    }

    pub(crate) fn error_code(&self) -> Option<ErrorCode> {
        self.header.error_code.as_deref().map(ErrorCode::parse)
    }

    pub(crate) fn version(&self) -> Option<u32> {
        self.header.version
    }

    pub(crate) fn timeout_ms(&self) -> Option<u64> {
        self.header.timeout_ms
    }

    pub(crate) fn metadata_json(&self) -> Option<&'a RawValue> {
        self.header.meta
    }

    pub(crate) fn stream_window(&self) -> Option<u32> {
        self.header
            .stream
            .and_then(|raw| raw.get().parse::<u32>().ok())
    }

    pub(crate) fn wants_stream(&self) -> bool {
        self.header.stream.is_some()
    }

    pub(crate) fn stream_frame(&self) -> Option<StreamFrame> {
        self.header.stream_frame()
    }

    pub(crate) fn credit(&self) -> Option<u32> {
        self.header.credit
    }

    pub(crate) fn is_cancel(&self) -> bool {
        self.header.cancel
    }

    /// The body's bytes, not checked as JSON (the decoder does).
    pub(crate) fn body(&self) -> &'a [u8] {
        self.body
    }
}

impl Header<'_> {
    fn stream_frame(&self) -> Option<StreamFrame> {
        match self.stream?.get() {
            "\"open\"" => Some(StreamFrame::Open),
            "\"item\"" => Some(StreamFrame::Item(self.seq.unwrap_or(0))),
            "\"end\"" => Some(StreamFrame::End),
            _ => None,
        }
    }
}

/// Reads the canonical shape of an envelope (see `Envelope::parse_canonical`).
struct Cursor<'a> {
    json: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// Steps over `literal` if it comes next.
    fn eat(&mut self, literal: &[u8]) -> bool {
        let found = self.json[self.at..].starts_with(literal);
        if found {
            self.at += literal.len();
        }
        found
    }

    fn expect(&mut self, literal: &[u8]) -> Option<()> {
        self.eat(literal).then_some(())
    }

    /// A JSON integer as JSON writes it (no sign, no leading zero) that fits a `u64`.
    fn uint(&mut self) -> Option<u64> {
        let digits = self.json[self.at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let text = &self.json[self.at..self.at + digits];
        if digits == 0 || digits > 20 || (digits > 1 && text[0] == b'0') {
            return None;
        }
        let value = std::str::from_utf8(text).ok()?.parse().ok()?;
        self.at += digits;
        Some(value)
    }

    /// A string without escapes or control characters; its text.
    fn plain_str(&mut self) -> Option<&'a str> {
        let rest = self.json.get(self.at..)?.strip_prefix(b"\"")?;
        let len = plain_len(rest)?;
        if rest[len] != b'"' {
            return None;
        }
        let text = std::str::from_utf8(&rest[..len]).ok()?;
        self.at += len + 2;
        Some(text)
    }

    /// An integer or a plain string, as raw JSON.
    fn raw_scalar(&mut self) -> Option<&'a RawValue> {
        let start = self.at;
        if self.json.get(start) == Some(&b'"') {
            self.plain_str()?;
        } else {
            self.uint()?;
        }
        serde_json::from_slice(&self.json[start..self.at]).ok()
    }
}

/// The fuzz target's property (`fuzzing::envelope`): the fast path declines or reads exactly
/// what serde reads; the header-only fast path agrees with serde on the header whenever serde
/// reads the frame, and on the body's text unless the top-level object goes on after the body
/// (`..."body":{},"more":1}`, which serde ignores): then what it hands the endpoint's decoder is
/// not one JSON value, and the call is refused as a bad request, never read as other arguments.
#[cfg(feature = "fuzzing")]
pub(crate) fn check_envelope_readers_agree(bytes: &[u8]) {
    let general = Envelope::parse_general(bytes);
    let parsed = Envelope::parse(bytes);
    assert_eq!(
        format!("{parsed:?}"),
        format!("{general:?}"),
        "the fast path read a frame differently"
    );
    if let (Some((header, body)), Ok(general)) = (Envelope::canonical_head(bytes), &general) {
        assert_eq!(
            format!("{header:?}"),
            format!("{:?}", general.header),
            "the header-only fast path read the header differently"
        );
        if body.trim_ascii() != general.body.get().as_bytes() {
            assert!(
                serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err(),
                "the header-only fast path found another body, one that decodes"
            );
        }
    }
}

/// Where the first `"`, `\\` or control character of `text` is: the end of a string without
/// escapes. Sixteen bytes at a time without branching on each (the compiler vectorizes it), so
/// a long string, a peer's or not, is scanned at memory speed.
fn plain_len(text: &[u8]) -> Option<usize> {
    let special = |b: u8| (b == b'"') | (b == b'\\') | (b < 0x20);
    let mut chunks = text.chunks_exact(16);
    let mut at = 0;
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |found, &b| found | special(b)) {
            break;
        }
        at += 16;
    }
    text[at..]
        .iter()
        .position(|&b| special(b))
        .map(|offset| at + offset)
}

/// Reads just the request id of a frame that failed to decode as an envelope, so the error can
/// still be answered.
pub(crate) fn salvage_request_id(json: &[u8]) -> Option<&RawValue> {
    serde_json::from_slice::<IdOnly<'_>>(json)
        .ok()
        .map(|frame| frame.header.request_id)
}

/// The request id written into a header.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RequestIdOut<'a> {
    /// Our client's ids: integers, cheap to match.
    Int(u64),
    /// An id echoed verbatim from a peer.
    Raw(&'a str),
}

/// The four header keys every VSP peer, Velithon included, writes and reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeaderOut<'a> {
    pub(crate) request_id: RequestIdOut<'a>,
    pub(crate) service: &'a str,
    pub(crate) endpoint: &'a str,
    pub(crate) is_response: bool,
}

/// The optional header keys (extensions) a frame carries; Velithon ignores them all.
///
/// One struct for every extension, so features agree on the keys and their order. Planned next
/// (see the header registry in the README): the stream and cancel fields.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Extensions<'a> {
    /// `timeout_ms`: how long the caller still waits (requests).
    pub(crate) timeout_ms: Option<u64>,
    /// `error_code`: a typed error (responses).
    pub(crate) error_code: Option<&'a ErrorCode>,
    /// `vsp`: the sender's protocol version; on every response we send, which tells our client
    /// that the header, not the body, marks an error.
    pub(crate) version: Option<u32>,
    /// `meta`: per-call metadata (requests); left out when empty.
    pub(crate) meta: Option<&'a Metadata>,
    /// The call's W3C `traceparent` (and `tracestate`), written into `meta` in place of any the
    /// metadata has.
    pub(crate) trace: Option<&'a TraceContext>,
    /// `stream` on a request: the items granted up front.
    pub(crate) stream_window: Option<u32>,
    /// `stream` (and `seq`) on a response of a stream.
    pub(crate) stream_frame: Option<StreamFrame>,
    /// `credit`: more items granted (a control frame).
    pub(crate) credit: Option<u32>,
    /// `cancel`: the caller gave up (a control frame).
    pub(crate) cancel: bool,
}

impl<'a> Extensions<'a> {
    /// A request's extensions.
    pub(crate) fn request(
        timeout_ms: Option<u64>,
        meta: Option<&'a Metadata>,
        trace: Option<&'a TraceContext>,
    ) -> Self {
        Extensions {
            timeout_ms,
            meta: meta.filter(|meta| !meta.is_empty()),
            trace,
            ..Extensions::default()
        }
    }

    /// A response's extensions: our revision, and the error code of an error.
    pub(crate) fn response(error_code: Option<&'a ErrorCode>) -> Self {
        Extensions {
            error_code,
            version: Some(PROTOCOL_REVISION),
            ..Extensions::default()
        }
    }

    /// A caller's control frame: a grant of more items, or a cancel.
    pub(crate) fn control(credit: Option<u32>, cancel: bool) -> Self {
        Extensions {
            credit,
            cancel,
            ..Extensions::default()
        }
    }

    /// A frame of a stream: open, an item, or the end (with the error code of an error).
    pub(crate) fn stream(frame: StreamFrame, error_code: Option<&'a ErrorCode>) -> Self {
        Extensions {
            stream_frame: Some(frame),
            ..Extensions::response(error_code)
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        if let Some(timeout_ms) = self.timeout_ms {
            out.extend_from_slice(b",\"timeout_ms\":");
            out.extend_from_slice(itoa_u64(timeout_ms, &mut [0; 20]));
        }
        if let Some(code) = self.error_code {
            out.extend_from_slice(b",\"error_code\":");
            write_json_str(out, code.as_str());
        }
        if let Some(version) = self.version {
            out.extend_from_slice(b",\"vsp\":");
            out.extend_from_slice(itoa_u64(u64::from(version), &mut [0; 20]));
        }
        if let Some(window) = self.stream_window {
            out.extend_from_slice(b",\"stream\":");
            out.extend_from_slice(itoa_u64(u64::from(window), &mut [0; 20]));
        }
        if let Some(frame) = self.stream_frame {
            out.extend_from_slice(b",\"stream\":");
            write_json_str(out, frame.as_str());
            if let StreamFrame::Item(seq) = frame {
                out.extend_from_slice(b",\"seq\":");
                out.extend_from_slice(itoa_u64(seq, &mut [0; 20]));
            }
        }
        if let Some(credit) = self.credit {
            out.extend_from_slice(b",\"credit\":");
            out.extend_from_slice(itoa_u64(u64::from(credit), &mut [0; 20]));
        }
        if self.cancel {
            out.extend_from_slice(b",\"cancel\":true");
        }
        if self.meta.is_none() && self.trace.is_none() {
            return;
        }
        out.extend_from_slice(b",\"meta\":{");
        let mut first = true;
        let mut entry = |out: &mut Vec<u8>, key: &str, value: &str| {
            if !first {
                out.push(b',');
            }
            first = false;
            write_json_str(out, key);
            out.push(b':');
            write_json_str(out, value);
        };
        for (key, value) in self.meta.into_iter().flat_map(Metadata::iter) {
            if self.trace.is_some() && (key == trace::TRACEPARENT || key == trace::TRACESTATE) {
                continue;
            }
            entry(out, key, value);
        }
        if let Some(context) = self.trace {
            entry(
                out,
                trace::TRACEPARENT,
                context.write_traceparent(&mut [0; 55]),
            );
            if let Some(state) = context.tracestate() {
                entry(out, trace::TRACESTATE, state);
            }
        }
        out.push(b'}');
    }
}

/// Writes a whole envelope, `{"header":{..},"body":..}`: the header's four keys byte for byte
/// as Velithon writes them, then `extensions`, then the body that `write_body` writes. The only
/// writer of envelopes; if `write_body` fails, what was written stays for the caller to drop
/// (the frame encoder does).
pub(crate) fn write_envelope<E>(
    out: &mut Vec<u8>,
    header: &HeaderOut<'_>,
    extensions: &Extensions<'_>,
    write_body: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    out.extend_from_slice(b"{\"header\":{\"request_id\":");
    match header.request_id {
        RequestIdOut::Int(id) => out.extend_from_slice(itoa_u64(id, &mut [0; 20])),
        RequestIdOut::Raw(raw) => out.extend_from_slice(raw.as_bytes()),
    }
    out.extend_from_slice(b",\"service\":");
    write_json_str(out, header.service);
    out.extend_from_slice(b",\"endpoint\":");
    write_json_str(out, header.endpoint);
    out.extend_from_slice(if header.is_response {
        b",\"is_response\":true"
    } else {
        b",\"is_response\":false"
    });
    extensions.write(out);
    out.extend_from_slice(b"},\"body\":");
    write_body(out)?;
    out.push(b'}');
    Ok(())
}

/// Writes an error body `{"error":"message"}`, the shape Velithon reads.
pub(crate) fn write_error_body(out: &mut Vec<u8>, message: &str) {
    out.extend_from_slice(b"{\"error\":");
    write_json_str(out, message);
    out.push(b'}');
}

/// Writes a service method's typed error: `{"error":"message","data":DATA}`, the text for
/// Velithon's clients and the JSON for generated ones.
pub(crate) fn write_service_error_body(out: &mut Vec<u8>, message: &str, data: &RawValue) {
    out.extend_from_slice(b"{\"error\":");
    write_json_str(out, message);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data.get().as_bytes());
    out.push(b'}');
}

/// Writes `s` as a JSON string literal.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(byte >> 4) as usize]);
                out.push(HEX[(byte & 0xf) as usize]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_fast_path_reads_what_serde_reads_and_declines_the_rest() {
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
        // Declined (and read by serde, or refused by it with its message).
        for frame in [
            r#"{"header":{"request_id":01,"service":"s","endpoint":"e","is_response":false},"body":{}}"#,
            r#"{"header":{"request_id":-1,"service":"s","endpoint":"e","is_response":false},"body":{}}"#,
            r#"{"header":{"request_id":1,"service":"s\u0041","endpoint":"e","is_response":false},"body":{}}"#,
            r#"{"header":{"request_id":1,"service":"s","endpoint":"e","is_response":false},"body":{}} "#,
            r#"{"header":{"request_id":1,"service":"s","endpoint":"e","is_response":false},"body":{},"x":1}"#,
            r#"{"header":{"request_id":1,"service":"s","endpoint":"e","is_response":false},"body":{"a":}}"#,
            r#"{"header":{"request_id":1,"service":"s","endpoint":"e","is_response":false,"vsp":99999999999},"body":{}}"#,
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
}
