//! Reading an envelope: header fields borrowed from the frame, the body left raw.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::*;
use crate::error::{ErrorCode, ProtocolError};

/// A decoded envelope that borrows from its frame.
#[derive(Debug, Deserialize)]
pub(crate) struct Envelope<'a> {
    #[serde(borrow)]
    pub(super) header: Header<'a>,
    #[serde(borrow)]
    pub(super) body: &'a RawValue,
}

#[derive(Debug, Deserialize)]
pub(super) struct Header<'a> {
    #[serde(borrow)]
    pub(super) request_id: &'a RawValue,
    #[serde(borrow)]
    pub(super) service: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) endpoint: Cow<'a, str>,
    #[serde(default)]
    pub(super) is_response: bool,
    #[serde(borrow, default)]
    pub(super) error_code: Option<Cow<'a, str>>,
    /// The HTTP status of a service's typed error.
    #[serde(default)]
    pub(super) http_status: Option<u16>,
    #[serde(default, rename = "vsp")]
    pub(super) version: Option<u32>,
    #[serde(default)]
    pub(super) timeout_ms: Option<u64>,
    #[serde(borrow, default)]
    pub(super) meta: Option<&'a RawValue>,
    /// On a request: the caller wants a stream, granting this many items up front. On a
    /// response: `"open"`, `"item"` or `"end"`.
    #[serde(borrow, default)]
    pub(super) stream: Option<&'a RawValue>,
    /// A stream item's sequence number, from 0.
    #[serde(default)]
    pub(super) seq: Option<u64>,
    /// A caller's grant of more stream items (a frame of its own for a streaming request id).
    #[serde(default)]
    pub(super) credit: Option<u32>,
    /// The caller gave up on this request id.
    #[serde(default)]
    pub(super) cancel: bool,
    /// On a request (revision 3): the caller sends a stream of items too, once the server has
    /// opened the call and granted credit for them.
    #[serde(default)]
    pub(super) client_stream: bool,
    /// The encodings the sender reads (`"zstd"`): compressed frames may go to it.
    #[serde(borrow, default)]
    pub(super) accept_encoding: Option<Cow<'a, str>>,
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
    pub(super) fn parse_general(json: &'a [u8]) -> Result<Self, ProtocolError> {
        serde_json::from_slice(json).map_err(|err| ProtocolError::Malformed(err.to_string()))
    }

    /// The fast path: a frame in exactly the shape [`write_envelope`] writes (its key order, no
    /// whitespace, no escapes in names, integer extensions, no `meta`), read without serde's
    /// per-key matching; the body is still checked by serde as raw JSON. Anything else is
    /// `None` and goes the general way, which decides what it means (or why it is malformed):
    /// this path only ever accepts what the general one reads the same.
    pub(super) fn parse_canonical(json: &'a [u8]) -> Option<Self> {
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
            http_status: None,
            version: None,
            timeout_ms: None,
            meta: None,
            stream: None,
            seq: None,
            credit: None,
            cancel: false,
            client_stream: false,
            accept_encoding: None,
        };
        if c.eat(b",\"timeout_ms\":") {
            header.timeout_ms = Some(c.uint()?);
        }
        if c.eat(b",\"error_code\":") {
            header.error_code = Some(Cow::Borrowed(c.plain_str()?));
        }
        if c.eat(b",\"http_status\":") {
            header.http_status = Some(u16::try_from(c.uint()?).ok()?);
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
        if c.eat(b",\"client_stream\":true") {
            header.client_stream = true;
        }
        if c.eat(b",\"accept_encoding\":") {
            header.accept_encoding = Some(Cow::Borrowed(c.plain_str()?));
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

    /// The HTTP status of a service's typed error (responses).
    pub(crate) fn http_status(&self) -> Option<u16> {
        self.header.http_status
    }

    pub(crate) fn credit(&self) -> Option<u32> {
        self.header.credit
    }

    pub(crate) fn is_cancel(&self) -> bool {
        self.header.cancel
    }

    /// A request that will send items of its own (a client or bidirectional stream).
    pub(crate) fn sends_stream(&self) -> bool {
        self.header.client_stream
    }

    /// The sender reads zstd-compressed frames.
    pub(crate) fn offers_zstd(&self) -> bool {
        self.header
            .accept_encoding
            .as_deref()
            .is_some_and(crate::protocol::compression::offers_zstd)
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
pub(super) fn plain_len(text: &[u8]) -> Option<usize> {
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
