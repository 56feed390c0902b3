//! What a response echoes of its request's header.

use std::ops::Range;

use bytes::Bytes;

use super::admission::LARGE_REQUEST;
use crate::protocol::{FrameView, HeaderOut, RequestIdOut};

/// A response head that owns its strings: for requests whose header could not be borrowed, and
/// for notices without a request.
pub(crate) fn response_head(request_id: &str, service: &str, endpoint: &str) -> ResponseHead {
    ResponseHead::Owned {
        request_id: request_id.to_owned(),
        service: service.to_owned(),
        endpoint: endpoint.to_owned(),
    }
}

/// What a response echoes of its request's header.
///
/// Why it points into the request frame: the id, service and endpoint are already there, so a
/// reply costs no allocation to remember them; only header strings that had JSON escapes (not
/// borrowable) are copied out, and so are those of a large frame, which would otherwise stay in
/// memory, whole, until its call is answered.
pub(crate) enum ResponseHead {
    Echo {
        frame: Bytes,
        request_id: Range<usize>,
        service: Range<usize>,
        endpoint: Range<usize>,
    },
    /// The header's strings, copied.
    Owned {
        request_id: String,
        service: String,
        endpoint: String,
    },
}

impl ResponseHead {
    pub(crate) fn echo(frame: &Bytes, envelope: &FrameView<'_>) -> ResponseHead {
        if frame.len() > LARGE_REQUEST {
            return response_head(
                envelope.request_id().get(),
                envelope.service(),
                envelope.endpoint(),
            );
        }
        let bounds = frame.as_ptr_range();
        let range = |s: &str| {
            let start = s.as_ptr();
            (bounds.contains(&start) && start.wrapping_add(s.len()) <= bounds.end).then(|| {
                let offset = start as usize - bounds.start as usize;
                offset..offset + s.len()
            })
        };
        match (
            range(envelope.request_id().get()),
            range(envelope.service()),
            range(envelope.endpoint()),
        ) {
            (Some(request_id), Some(service), Some(endpoint)) => ResponseHead::Echo {
                frame: frame.clone(),
                request_id,
                service,
                endpoint,
            },
            _ => response_head(
                envelope.request_id().get(),
                envelope.service(),
                envelope.endpoint(),
            ),
        }
    }

    /// The response header's four keys.
    pub(crate) fn header(&self) -> HeaderOut<'_> {
        let (request_id, service, endpoint) = match self {
            ResponseHead::Owned {
                request_id,
                service,
                endpoint,
            } => (request_id.as_str(), service.as_str(), endpoint.as_str()),
            ResponseHead::Echo {
                frame,
                request_id,
                service,
                endpoint,
            } => {
                // The ranges came from `&str`s of this frame: always UTF-8.
                let text =
                    |range: &Range<usize>| std::str::from_utf8(&frame[range.clone()]).unwrap_or("");
                (text(request_id), text(service), text(endpoint))
            }
        };
        HeaderOut {
            request_id: RequestIdOut::Raw(request_id),
            service,
            endpoint,
            is_response: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(frame: &Bytes) -> ResponseHead {
        let envelope = crate::protocol::Envelope::parse_view(frame).unwrap();
        ResponseHead::echo(frame, &envelope)
    }

    fn request(body: &str) -> Bytes {
        Bytes::from(format!(
            r#"{{"header":{{"request_id":"r1","service":"s","endpoint":"e","is_response":false}},"body":{body}}}"#
        ))
    }

    #[test]
    fn a_small_request_is_echoed_in_place_and_a_large_ones_header_is_copied_out() {
        let small = request("{}");
        assert!(matches!(head_of(&small), ResponseHead::Echo { .. }));
        let large = request(&format!(r#"{{"pad":"{}"}}"#, "x".repeat(LARGE_REQUEST)));
        let head = head_of(&large);
        assert!(
            matches!(head, ResponseHead::Owned { .. }),
            "a large request frame would stay alive until its reply"
        );
        let header = head.header();
        assert_eq!(
            (header.service, header.endpoint),
            ("s", "e"),
            "the copied header lost its strings"
        );
    }
}
