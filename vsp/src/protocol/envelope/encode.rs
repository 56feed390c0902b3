//! Writing an envelope in place, into the frame's buffer: no intermediate value, no copy of
//! the body.

use serde_json::value::RawValue;

use super::*;
use crate::error::ErrorCode;
use crate::protocol::Metadata;
use crate::trace::{self, TraceContext};

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
    /// `http_status`: the HTTP status of a service's typed error (responses).
    pub(crate) http_status: Option<u16>,
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
    /// `client_stream`: the request will send items of its own (revision 3).
    pub(crate) client_stream: bool,
    /// `accept_encoding`: the encodings this side reads, offered to the peer.
    pub(crate) accept_encoding: Option<&'a str>,
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

    /// A frame of a caller's own stream: an item, or its end (the half-close).
    pub(crate) fn stream_item(frame: StreamFrame) -> Self {
        Extensions {
            stream_frame: Some(frame),
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
        if let Some(status) = self.http_status {
            out.extend_from_slice(b",\"http_status\":");
            out.extend_from_slice(itoa_u64(u64::from(status), &mut [0; 20]));
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
        if self.client_stream {
            out.extend_from_slice(b",\"client_stream\":true");
        }
        if let Some(encodings) = self.accept_encoding {
            out.extend_from_slice(b",\"accept_encoding\":");
            write_json_str(out, encodings);
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
pub(super) fn write_json_str(out: &mut Vec<u8>, s: &str) {
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

pub(super) fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
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
