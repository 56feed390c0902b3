//! The wire: frames, envelopes and messages of VSP/1, byte-compatible with Velithon's Python VSP.
//!
//! A frame is a u32 big-endian length `N` and `N` bytes of compact UTF-8 JSON:
//! `{"header":{"request_id":ID,"service":S,"endpoint":E,"is_response":B},"body":BODY}`.
//! `ID` is any JSON value and is echoed verbatim. Extensions ride in the header as optional keys
//! Velithon ignores: `error_code` on error responses, `vsp` (the protocol version) on every
//! response we send, which tells our client that the header, not the body, marks an error,
//! `timeout_ms` (how long the caller still waits) and `meta` (per-call [`Metadata`], an object of
//! strings) on requests, `accept_encoding` (the encodings a peer reads) on both; a frame whose
//! length has its top bit set is zstd-compressed, sent only to a peer that offered to read it.
//!
//! Why a hand-written encoder: the envelope is written straight into the connection's write
//! buffer, with no intermediate `Value` and no allocation per frame. It is the only code that
//! writes envelope punctuation: every request, response and message goes through
//! `write_envelope`, whose `Extensions` is where new header keys are added.
//!
//! Reserved endpoint names, answered by every server itself: [`HEALTH_ENDPOINT`] and
//! [`DESCRIBE_ENDPOINT`] (its answer a [`ServiceDescription`]).
#![doc = include_str!("../docs/wire.md")]
#![doc = include_str!("../docs/velithon.md")]

pub(crate) mod compression;
pub(crate) mod describe;
mod envelope;
pub(crate) mod frame;
pub(crate) mod message;
pub(crate) mod metadata;

pub use describe::{is_open_schema, DESCRIBE_ENDPOINT, NO_SCHEMA_KEY};
pub(crate) use describe::{EndpointDescription, InputStream, ServiceDescription};
#[cfg(feature = "fuzzing")]
pub(crate) use envelope::check_envelope_readers_agree;
pub(crate) use envelope::{
    is_json_object, parse_int_request_id, parse_int_text, salvage_request_id, short_text,
    write_envelope, write_error_body, write_service_error_body, Extensions, FrameView, HeaderOut,
    RequestIdOut, StreamFrame,
};
pub(crate) use envelope::{
    Envelope, CLIENT_STREAM_REVISION, CONTROL_REVISION, DEFAULT_CLIENT_STREAM_WINDOW,
    DEFAULT_STREAM_WINDOW, PROTOCOL_REVISION,
};
pub use envelope::{HEALTH_ENDPOINT, PROTOCOL_VERSION};
pub(crate) use frame::DEFAULT_MAX_FRAME_SIZE;
pub(crate) use metadata::Metadata;
pub use metadata::{MAX_METADATA_BYTES, MAX_METADATA_ENTRIES};
