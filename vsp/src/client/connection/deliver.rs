//! A connection's reader hands each response frame to whoever waits for it: the call with its
//! request id, or the stream it belongs to; a frame for nobody is logged and dropped.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{CallFailure, ConnectionState, ErrorBody, RawResponse, Routes};
use crate::error::ErrorCode;
use crate::protocol::{parse_int_request_id, salvage_request_id, Envelope, FrameView, StreamFrame};

impl ConnectionState {
    /// Hands `frame` to its call or stream; returns the id of the unary call it answered, if any.
    pub(super) fn deliver(&self, frame: Bytes, routes: &mut Routes) -> Option<u64> {
        let envelope = match Envelope::parse_view(&frame) {
            Ok(envelope) => envelope,
            Err(err) => {
                self.unreadable(&frame, &err.to_string());
                return None;
            }
        };
        if !envelope.is_response() {
            tracing::warn!(instance = %self.instance, "dropped a request sent to a client");
            return None;
        }
        let Some(id) = parse_int_request_id(envelope.request_id()) else {
            self.without_id(&envelope);
            return None;
        };
        if envelope.offers_zstd() {
            if let Some(compression) = self.compression {
                if !self.queue.compressing().is_enabled() {
                    self.queue.compressing().enable(compression);
                }
            }
        }
        if let Some(revision) = envelope.version() {
            if revision > self.peer_revision.load(Ordering::Relaxed) {
                self.peer_revision.store(revision, Ordering::Relaxed);
            }
        }
        if self.owes_cancels.load(Ordering::Relaxed) {
            self.settle_deferred_cancels();
        }
        let stream_frame = envelope.stream_frame();
        if let Some(credit) = envelope.credit() {
            // Credit for the items a call sends: on its own frame, or on the opening.
            if let Some(upload) = self.pending().uploads.get(&id) {
                upload.grant(credit);
            }
            // A frame of credit alone answers nothing.
            stream_frame?;
        }
        let body = envelope.body();
        // The body borrows from `frame`: its offset turns it into a range of the shared bytes.
        let start = body.as_ptr() as usize - frame.as_ptr() as usize;
        let response = RawResponse {
            error_code: envelope.error_code(),
            http_status: envelope.http_status(),
            from_vsp_peer: envelope.version().is_some(),
            body: start..start + body.len(),
            frame: frame.clone(),
            stream_end: stream_frame.map(|frame| frame == StreamFrame::End),
            stream: None,
        };
        match stream_frame {
            Some(StreamFrame::Item(_) | StreamFrame::End) => {
                self.to_stream(id, response, routes);
                None
            }
            _ => {
                self.to_call(id, response);
                Some(id)
            }
        }
    }

    /// A frame that does not decode: its call (if its id can be read) fails with why.
    fn unreadable(&self, frame: &Bytes, err: &str) {
        let id = salvage_request_id(frame).and_then(parse_int_request_id);
        match id.and_then(|id| self.pending().calls.remove(&id)) {
            Some(slot) => {
                let _ = slot.send(Err(CallFailure::Protocol(err.to_owned())));
            }
            None => {
                tracing::warn!(instance = %self.instance, "dropped an unreadable response: {err}")
            }
        }
    }

    /// A response without one of our ids: the server's drain notice, a protocol error it could
    /// not tie to a request (it is about to close on us), or a stray.
    fn without_id(&self, envelope: &FrameView<'_>) {
        match envelope.error_code() {
            Some(ErrorCode::ShuttingDown) => {
                // The server's notice that it drains: no new calls on this connection.
                tracing::debug!(instance = %self.instance, "the server is shutting down");
                self.draining.store(true, Ordering::Release);
            }
            Some(ErrorCode::Protocol) => {
                let message = serde_json::from_slice::<ErrorBody<'_>>(envelope.body())
                    .map(|body| body.error.into_owned())
                    .unwrap_or_else(|_| String::from_utf8_lossy(envelope.body()).into_owned());
                self.close(format!("the server reported a protocol error: {message}"));
            }
            _ => {
                let request_id = envelope.request_id().get();
                tracing::warn!(instance = %self.instance, request_id, "dropped a response with a foreign request id");
            }
        }
    }

    /// An item or the end of stream `id`.
    fn to_stream(&self, id: u64, response: RawResponse, routes: &mut Routes) {
        if response.stream_end == Some(true) {
            routes.map.remove(&id);
            let (slot, upload) = {
                let mut pending = self.pending();
                (pending.streams.remove(&id), pending.uploads.remove(&id))
            };
            // The server ended the call: it reads no more of the caller's items.
            if let Some(upload) = upload {
                upload.stop();
            }
            if let Some(slot) = slot {
                let _ = slot.send(Ok(response));
            }
            return;
        }
        let slot = match routes.map.get(&id) {
            Some(slot) => slot,
            None => {
                let Some(slot) = self.pending().streams.get(&id).cloned() else {
                    tracing::debug!(instance = %self.instance, id, "dropped an item of a stream its caller dropped");
                    return;
                };
                routes.insert(id, slot)
            }
        };
        if slot.send(Ok(response)).is_err() {
            // The caller dropped the stream (and cancelled it): forget its route.
            routes.map.remove(&id);
        }
    }

    /// The answer of call `id`, if its caller still waits.
    fn to_call(&self, id: u64, response: RawResponse) {
        let Some(slot) = self.pending().calls.remove(&id) else {
            tracing::debug!(instance = %self.instance, id, "dropped a late response (its call gave up)");
            return;
        };
        let _ = slot.send(Ok(response));
    }
}
