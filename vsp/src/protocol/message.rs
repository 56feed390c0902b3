//! `VspMessage`: an owned envelope that caches its encoding.

use std::sync::OnceLock;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use super::envelope::{write_envelope, Envelope, Extensions, HeaderOut, RequestIdOut};
use crate::error::ProtocolError;

/// An owned VSP message, as Velithon's `VSPMessage`: a request id, the service and endpoint, the
/// body, and whether it is a response.
///
/// [`serialize`](VspMessage::serialize) encodes the envelope once and caches the bytes; every
/// setter drops the cache, so the cached bytes always match the message.
///
/// ```
/// use vsp::VspMessage;
///
/// let mut msg = VspMessage::request("req-1", "user-service", "get_user", &serde_json::json!({"user_id": "42"}))?;
/// assert_eq!(
///     &msg.serialize()[..],
///     br#"{"header":{"request_id":"req-1","service":"user-service","endpoint":"get_user","is_response":false},"body":{"user_id":"42"}}"#
/// );
/// msg.set_endpoint("delete_user");
/// assert!(msg.serialize().windows(11).any(|w| w == b"delete_user"));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct VspMessage {
    request_id: Box<RawValue>,
    service: String,
    endpoint: String,
    body: Box<RawValue>,
    is_response: bool,
    encoded: OnceLock<Bytes>,
}

impl VspMessage {
    /// A request for `endpoint` of `service`; the body should be an object keyed by the
    /// handler's parameter names.
    pub fn request(
        request_id: impl Serialize,
        service: impl Into<String>,
        endpoint: impl Into<String>,
        body: &impl Serialize,
    ) -> Result<Self, serde_json::Error> {
        Ok(VspMessage {
            request_id: serde_json::value::to_raw_value(&request_id)?,
            service: service.into(),
            endpoint: endpoint.into(),
            body: serde_json::value::to_raw_value(body)?,
            is_response: false,
            encoded: OnceLock::new(),
        })
    }

    /// Decodes one frame's JSON (without the length prefix).
    pub fn decode(json: &[u8]) -> Result<Self, ProtocolError> {
        let envelope = Envelope::parse(json)?;
        Ok(VspMessage {
            request_id: envelope.request_id().to_owned(),
            service: envelope.service().to_owned(),
            endpoint: envelope.endpoint().to_owned(),
            body: envelope.body().to_owned(),
            is_response: envelope.is_response(),
            encoded: OnceLock::new(),
        })
    }

    /// The envelope as compact JSON, the frame's payload (the length prefix is
    /// `(len as u32).to_be_bytes()`). Encoded on the first call, then served from a cache
    /// until the message changes.
    pub fn serialize(&self) -> Bytes {
        self.encoded
            .get_or_init(|| {
                let mut out = Vec::with_capacity(
                    96 + self.request_id.get().len()
                        + self.service.len()
                        + self.endpoint.len()
                        + self.body.get().len(),
                );
                let header = HeaderOut {
                    request_id: RequestIdOut::Raw(self.request_id.get()),
                    service: &self.service,
                    endpoint: &self.endpoint,
                    is_response: self.is_response,
                };
                // Velithon's envelope exactly: no extensions.
                let written = write_envelope(&mut out, &header, &Extensions::default(), |out| {
                    out.extend_from_slice(self.body.get().as_bytes());
                    Ok::<_, std::convert::Infallible>(())
                });
                match written {
                    Ok(()) => Bytes::from(out),
                    Err(never) => match never {},
                }
            })
            .clone()
    }

    /// The request id, as raw JSON.
    pub fn request_id(&self) -> &RawValue {
        &self.request_id
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The endpoint name.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The body, as raw JSON.
    pub fn body(&self) -> &RawValue {
        &self.body
    }

    /// Whether this is a response.
    pub fn is_response(&self) -> bool {
        self.is_response
    }

    /// Replaces the request id.
    pub fn set_request_id(&mut self, request_id: impl Serialize) -> Result<(), serde_json::Error> {
        self.request_id = serde_json::value::to_raw_value(&request_id)?;
        self.encoded = OnceLock::new();
        Ok(())
    }

    /// Replaces the service name.
    pub fn set_service(&mut self, service: impl Into<String>) {
        self.service = service.into();
        self.encoded = OnceLock::new();
    }

    /// Replaces the endpoint name.
    pub fn set_endpoint(&mut self, endpoint: impl Into<String>) {
        self.endpoint = endpoint.into();
        self.encoded = OnceLock::new();
    }

    /// Replaces the body.
    pub fn set_body(&mut self, body: &impl Serialize) -> Result<(), serde_json::Error> {
        self.body = serde_json::value::to_raw_value(body)?;
        self.encoded = OnceLock::new();
        Ok(())
    }

    /// Marks the message as a response or a request.
    pub fn set_is_response(&mut self, is_response: bool) {
        self.is_response = is_response;
        self.encoded = OnceLock::new();
    }
}
