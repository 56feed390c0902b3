//! The answer each request owes, and the connection state it is written to.
//!
//! Why its own file: the connection task builds a [`Reply`] for every request and the endpoints
//! answer through it; with the reply here, both depend on this file and not on each other.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::concurrency::AdaptiveLimiter;
pub(crate) use super::response_head::{response_head, ResponseHead};
use super::{EndpointEntry, ManagerInner};
use crate::error::ErrorCode;
use crate::protocol::compression;
use crate::protocol::frame::{encode_frame, encode_frame_within, EncodeError};
use crate::protocol::{
    write_envelope, write_error_body, write_service_error_body, Extensions, RequestIdOut,
    StreamFrame,
};
use crate::trace;
use crate::transport::{QueueClosed, WriteQueue};

/// What the reader and the handlers of one connection share. When the reader has stopped and the
/// last handler has replied, the last reference drops and the write side closes.
pub(crate) struct ServerConnection {
    pub(super) manager: Arc<ManagerInner>,
    /// Who is on the other end (address, TLS identity).
    pub(super) peer: Arc<crate::context::Peer>,
    pub(super) queue: Arc<WriteQueue>,
    /// Requests of this connection not answered yet.
    pub(crate) in_flight: AtomicUsize,
    /// When the connection opened: the origin of `idle_since_ms`.
    pub(crate) opened: tokio::time::Instant,
    /// When `in_flight` last fell to zero, in milliseconds since `opened` (for the idle timeout).
    pub(crate) idle_since_ms: AtomicU64,
    /// Bytes of this connection's large requests being handled (see `LARGE_REQUEST`).
    pub(crate) large_bytes: AtomicUsize,
    /// The calls a caller can still steer (grant stream items, cancel).
    pub(crate) controls: super::stream::Controls,
    /// Set when the reader stops: every call and stream of the connection ends then.
    pub(crate) gone: super::stream::PeerGone,
}

/// Bytes waiting to be written on one connection beyond which it stops reading requests and its
/// streams stop producing: what a peer that reads slowly or not at all can make the server hold
/// (plus one batch of stream items, `STREAM_BATCH_BYTES`, and the replies of calls in flight).
pub(crate) const MAX_WRITE_BACKLOG: usize = 4 * 1024 * 1024;

/// A stream's write stops adding items past this many bytes (always at least one item).
const STREAM_BATCH_BYTES: usize = 64 * 1024;

impl ServerConnection {
    pub(crate) fn manager(&self) -> &ManagerInner {
        &self.manager
    }

    pub(crate) fn queue(&self) -> &WriteQueue {
        &self.queue
    }

    /// The peer reads zstd frames: this server's frames above its threshold go compressed from
    /// now on, if it was configured to compress.
    pub(crate) fn peer_reads_zstd(&self) {
        if let Some(compression) = self.manager.config.compression {
            if !self.queue.compressing().is_enabled() {
                self.queue.compressing().enable(compression);
            }
        }
    }

    /// Since when no request of this connection has been in flight (`None` while one is).
    pub(crate) fn idle_since(&self) -> Option<tokio::time::Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.idle_since_ms.load(Ordering::Relaxed);
        Some(self.opened + std::time::Duration::from_millis(ms))
    }
}

impl Drop for ServerConnection {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// The answer one request owes. Dropping it unanswered (the server closed) still settles the
/// request's accounting, so `in_flight` can never leak.
pub(crate) struct Reply {
    pub(super) conn: Arc<ServerConnection>,
    /// The response header up to and including `"is_response":true`.
    head: ResponseHead,
    /// The endpoint called; `None` for requests no endpoint took (unknown, malformed, refused).
    pub(super) entry: Option<Arc<EndpointEntry>>,
    /// When the request arrived: when the read that brought its frame returned (one clock
    /// reading for every frame of that read). Its deadline counts from here.
    pub(super) received: Instant,
    /// The accounting is done (see `settle`).
    settled: bool,
    /// The caller's remaining wait (`timeout_ms`), past which the handler is stopped.
    pub(super) timeout_ms: Option<u64>,
    /// The request's size when it counts against the byte budgets, given back on settling.
    large_bytes: usize,
    /// The request's `vsp.server` span: the handler runs in it, errors are recorded on it.
    span: tracing::Span,
    /// A stream's first grant of items (the request's `stream` key).
    pub(super) stream_window: Option<u32>,
    /// The request offered to read compressed frames: the answer offers too.
    offer: bool,
    /// The request sends a stream of items of its own (`client_stream`, revision 3).
    pub(super) client_stream: bool,
    /// The adaptive concurrency limit the call holds a place under, given back on settling.
    limited: Option<Arc<AdaptiveLimiter>>,
    /// The stream was opened before the handler answered (a client stream, whose caller needs
    /// credit first): every answer after that, an error too, is a frame of the stream.
    pub(super) opened: bool,
}

impl Reply {
    pub(crate) fn new(
        conn: Arc<ServerConnection>,
        head: ResponseHead,
        entry: Option<Arc<EndpointEntry>>,
        received: Instant,
    ) -> Self {
        let manager = conn.manager();
        manager.drain.request_started();
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        Reply {
            conn,
            head,
            entry,
            received,
            settled: false,
            timeout_ms: None,
            large_bytes: 0,
            span: tracing::Span::none(),
            stream_window: None,
            offer: false,
            client_stream: false,
            opened: false,
            limited: None,
        }
    }

    /// The request offered the encodings it reads (`accept_encoding`): the answer says which
    /// this server reads.
    pub(crate) fn with_offer(mut self, offer: bool) -> Self {
        self.offer = offer;
        self
    }

    /// A response's extensions, with this server's offer if the request made one.
    fn extensions<'a>(&self, code: Option<&'a ErrorCode>) -> Extensions<'a> {
        Extensions {
            accept_encoding: self.offer.then_some(compression::ZSTD),
            ..Extensions::response(code)
        }
    }

    pub(crate) fn with_stream_window(mut self, window: Option<u32>) -> Self {
        self.stream_window = window;
        self
    }

    pub(crate) fn with_limited(mut self, limited: Option<Arc<AdaptiveLimiter>>) -> Self {
        self.limited = limited;
        self
    }

    pub(crate) fn with_client_stream(mut self, client_stream: bool) -> Self {
        self.client_stream = client_stream;
        self
    }

    /// Opens a client or bidirectional stream before its handler runs, granting the caller
    /// `credit` items: from now on every answer is a frame of the stream.
    pub(crate) fn open_for_items(&mut self, credit: u32) -> Result<(), QueueClosed> {
        let header = self.head.header();
        let extensions = Extensions {
            accept_encoding: self.offer.then_some(compression::ZSTD),
            credit: Some(credit),
            ..Extensions::stream(StreamFrame::Open, None)
        };
        self.conn.queue().push_and_write(|out| {
            encode_frame(out, |out| {
                write_envelope(out, &header, &extensions, |out| {
                    out.extend_from_slice(b"null");
                    Ok::<_, std::convert::Infallible>(())
                })
            })
        })?;
        self.opened = true;
        Ok(())
    }

    /// Opened by [`open_for_items`](Self::open_for_items).
    pub(crate) fn is_open(&self) -> bool {
        self.opened
    }

    /// The key control frames name this call by (`None` for an id too long to keep).
    pub(crate) fn call_key(&self) -> Option<super::stream::CallKey> {
        match self.head.header().request_id {
            RequestIdOut::Raw(raw) => super::stream::CallKey::of(raw),
            RequestIdOut::Int(id) => Some(super::stream::CallKey::Int(id)),
        }
    }

    /// The request id as the request wrote it (JSON).
    pub(crate) fn request_id_text(&self) -> &str {
        match self.head.header().request_id {
            RequestIdOut::Raw(raw) => raw,
            RequestIdOut::Int(_) => "",
        }
    }

    /// Sends one frame of a stream (open or an item); an item that cannot be sent is the
    /// error that ends the stream.
    pub(crate) fn stream_frame<T: Serialize + ?Sized>(
        &self,
        frame: StreamFrame,
        value: &T,
    ) -> Result<(), (ErrorCode, String)> {
        let header = self.head.header();
        let max = self.conn.manager().config.max_frame_size;
        let pushed = self.conn.queue().push(|out| {
            encode_frame_within(out, max, |out| {
                let extensions = Extensions {
                    accept_encoding: (self.offer && frame == StreamFrame::Open)
                        .then_some(compression::ZSTD),
                    ..Extensions::stream(frame, None)
                };
                write_envelope(out, &header, &extensions, |out| {
                    serde_json::to_writer(&mut *out, value)
                })
            })
        });
        match pushed {
            Ok(Ok(())) => Ok(()),
            Ok(Err(EncodeError::TooLarge { len, max })) => Err((
                ErrorCode::TooLarge,
                format!(
                    "an item of `{}` is {len} bytes, above the largest frame of {max} bytes",
                    self.endpoint()
                ),
            )),
            Ok(Err(EncodeError::Json(err))) => Err((
                ErrorCode::Handler,
                format!("cannot serialize an item of `{}`: {err}", self.endpoint()),
            )),
            Err(_closed) => Err((ErrorCode::Protocol, "the connection is closed".to_owned())),
        }
    }

    /// Sends items `first_seq..` of a stream in one write (one lock and one wake of the writer),
    /// as many as fit in `STREAM_BATCH_BYTES` and only while the connection's backlog is under
    /// `limit`: how many were queued (0 when the backlog is full). An item that cannot be sent
    /// is the error that ends the stream (those before it are sent).
    pub(crate) fn stream_items<T: Serialize>(
        &self,
        first_seq: u64,
        items: &[T],
        limit: usize,
    ) -> Result<usize, (ErrorCode, String)> {
        let header = self.head.header();
        let max = self.conn.manager().config.max_frame_size;
        let mut failed = None;
        let mut sent = 0;
        let pushed = self.conn.queue().push_below(limit, |out| {
            let start = out.len();
            for (seq, item) in (first_seq..).zip(items) {
                if out.len() - start >= STREAM_BATCH_BYTES {
                    break;
                }
                let encoded = encode_frame_within(out, max, |out| {
                    write_envelope(
                        out,
                        &header,
                        &Extensions::stream(StreamFrame::Item(seq), None),
                        |out| serde_json::to_writer(&mut *out, item),
                    )
                });
                if let Err(err) = encoded {
                    failed = Some(err);
                    break;
                }
                sent += 1;
            }
            Ok::<_, std::convert::Infallible>(())
        });
        match (pushed, failed) {
            (Err(_closed), _) => Err((ErrorCode::Protocol, "the connection is closed".to_owned())),
            (Ok(None), _) => Ok(0),
            (Ok(Some(_)), None) => Ok(sent),
            (Ok(Some(_)), Some(EncodeError::TooLarge { len, max })) => Err((
                ErrorCode::TooLarge,
                format!(
                    "an item of `{}` is {len} bytes, above the largest frame of {max} bytes",
                    self.endpoint()
                ),
            )),
            (Ok(Some(_)), Some(EncodeError::Json(err))) => Err((
                ErrorCode::Handler,
                format!("cannot serialize an item of `{}`: {err}", self.endpoint()),
            )),
        }
    }

    /// Ends a stream: cleanly, or with an error.
    pub(crate) fn stream_end(mut self, error: Option<(ErrorCode, &str)>) {
        self.settle(error.is_some());
        let header = self.head.header();
        let code = error.as_ref().map(|(code, _)| code);
        if let Some((code, message)) = &error {
            self.conn.manager().stats.error_sent(code);
            trace::record_error(&self.span, code.as_str(), message);
        }
        let _ = self.conn.queue().push(|out| {
            encode_frame(out, |out| {
                write_envelope(
                    out,
                    &header,
                    &Extensions::stream(StreamFrame::End, code),
                    |out| {
                        match &error {
                            Some((_, message)) => write_error_body(out, message),
                            None => out.extend_from_slice(b"null"),
                        }
                        Ok::<_, std::convert::Infallible>(())
                    },
                )
            })
        });
    }

    pub(crate) fn with_span(mut self, span: tracing::Span) -> Self {
        self.span = span;
        self
    }

    /// The request's span.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Counts a large request's `bytes` against its connection's and the server's budgets
    /// until it is answered.
    pub(crate) fn with_large_request(mut self, bytes: usize) -> Self {
        self.conn.large_bytes.fetch_add(bytes, Ordering::AcqRel);
        let manager = self.conn.manager();
        manager
            .admission
            .large_bytes
            .fetch_add(bytes, Ordering::AcqRel);
        self.large_bytes = bytes;
        self
    }

    pub(crate) fn with_timeout(mut self, timeout_ms: Option<u64>) -> Self {
        self.timeout_ms = timeout_ms;
        self
    }

    pub(crate) fn endpoint(&self) -> &str {
        self.entry.as_ref().map_or("", |entry| &entry.name)
    }

    /// Answers with `value` as the body; a value that fails to serialize becomes a `handler`
    /// error. Written at once when the connection is free, else by whoever holds the write turn.
    pub(crate) fn ok<T: Serialize + ?Sized>(mut self, value: &T) {
        self.settle(false);
        let header = self.head.header();
        let max = self.conn.manager().config.max_frame_size;
        let pushed = self.conn.queue().push_and_write(|out| {
            encode_frame_within(out, max, |out| {
                write_envelope(out, &header, &self.extensions(None), |out| {
                    serde_json::to_writer(&mut *out, value)
                })
            })
        });
        let failed = match pushed {
            Ok(Ok(())) => return,
            Ok(Err(EncodeError::TooLarge { len, max })) => (
                ErrorCode::TooLarge,
                format!(
                    "the result of `{}` is {len} bytes, above the largest frame of {max} bytes",
                    self.endpoint()
                ),
            ),
            Ok(Err(EncodeError::Json(err))) => (
                ErrorCode::Handler,
                format!(
                    "cannot serialize the result of `{}`: {err}",
                    self.endpoint()
                ),
            ),
            Err(_closed) => {
                tracing::debug!(
                    endpoint = self.endpoint(),
                    "reply dropped: connection closed"
                );
                return;
            }
        };
        let (code, message) = failed;
        tracing::error!(endpoint = self.endpoint(), "{message}");
        // Already counted as a success: count the failure it turned out to be.
        if let Some(entry) = &self.entry {
            entry.counters.count_error();
        }
        self.error(code, &message);
    }

    /// Answers with a service method's typed error: code `handler`, the error as JSON under
    /// `data` for our clients, and as text under `error` for Velithon's; its HTTP status (4xx,
    /// see [`ErrorWays`](crate::__private::ErrorWays)) under the header's `http_status`.
    pub(crate) fn service_error<E: Serialize + ?Sized>(
        mut self,
        err: &E,
        text: Option<String>,
        status: Option<u16>,
    ) {
        let data = match serde_json::value::to_raw_value(err) {
            Ok(data) => data,
            Err(ser) => {
                let message = format!("cannot serialize the error of `{}`: {ser}", self.endpoint());
                return self.error(ErrorCode::Handler, &message);
            }
        };
        // Its `Display` when it has one; else a string error reads as itself, anything else as
        // its JSON.
        let message = text.unwrap_or_else(|| {
            serde_json::from_str::<String>(data.get()).unwrap_or_else(|_| data.get().to_owned())
        });
        self.conn.manager().stats.error_sent(&ErrorCode::Handler);
        trace::record_error(&self.span, ErrorCode::Handler.as_str(), &message);
        self.settle(true);
        let pushed = self.push_error(&ErrorCode::Handler, status, |out| {
            write_service_error_body(out, &message, &data)
        });
        if pushed.is_err() {
            tracing::debug!(
                endpoint = self.endpoint(),
                "error reply dropped: connection closed"
            );
        }
    }

    /// Answers with an error: `{"error": message}` in the body, `code` in the header.
    pub(crate) fn error(mut self, code: ErrorCode, message: &str) {
        self.conn.manager().stats.error_sent(&code);
        trace::record_error(&self.span, code.as_str(), &message);
        self.settle(true);
        let pushed = self.push_error(&code, None, |out| write_error_body(out, message));
        if pushed.is_err() {
            tracing::debug!(
                endpoint = self.endpoint(),
                "error reply dropped: connection closed"
            );
        }
    }
}

impl Reply {
    /// Queues an error response whose body `write_body` writes.
    fn push_error(
        &self,
        code: &ErrorCode,
        http_status: Option<u16>,
        write_body: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), QueueClosed> {
        let header = self.head.header();
        let max = self.conn.manager().config.max_frame_size;
        let pushed = self.conn.queue().push_and_write(|out| {
            let encoded = encode_frame_within(out, max, |out| {
                let extensions = Extensions {
                    http_status,
                    // After an early opening, the error ends the stream.
                    stream_frame: self.opened.then_some(StreamFrame::End),
                    ..self.extensions(Some(code))
                };
                write_envelope(out, &header, &extensions, |out| {
                    write_body(out);
                    Ok::<_, std::convert::Infallible>(())
                })
            });
            if let Err(EncodeError::TooLarge { len, max }) = encoded {
                // An error too large to send (a huge message or typed error): say so instead.
                let message = format!(
                    "the error reply is {len} bytes, above the largest frame of {max} bytes"
                );
                let too_large = ErrorCode::TooLarge;
                let _ = encode_frame(out, |out| {
                    write_envelope(out, &header, &self.extensions(Some(&too_large)), |out| {
                        write_error_body(out, &message);
                        Ok::<_, std::convert::Infallible>(())
                    })
                });
            }
            Ok::<_, std::convert::Infallible>(())
        });
        pushed.map(|_| ())
    }

    /// Settles the request's accounting, once: before the answer is queued, so a caller that has
    /// its answer also finds it in the stats.
    fn settle(&mut self, failed: bool) {
        if self.settled {
            return;
        }
        self.settled = true;
        if self.conn.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let idle_ms = self.conn.opened.elapsed().as_millis();
            let idle_ms = u64::try_from(idle_ms).unwrap_or(u64::MAX);
            self.conn.idle_since_ms.store(idle_ms, Ordering::Relaxed);
        }
        let manager = self.conn.manager();
        let elapsed = manager.stats_enabled().then(|| self.received.elapsed());
        if self.large_bytes > 0 {
            self.conn
                .large_bytes
                .fetch_sub(self.large_bytes, Ordering::AcqRel);
            manager
                .admission
                .large_bytes
                .fetch_sub(self.large_bytes, Ordering::AcqRel);
        }
        manager.drain.request_finished();
        if let Some(limiter) = self.limited.take() {
            limiter.release(elapsed.unwrap_or_else(|| self.received.elapsed()));
        }
        if let Some(elapsed) = elapsed {
            manager.stats.request_finished(elapsed);
        }
        if let (Some(entry), Some(elapsed)) = (&self.entry, elapsed) {
            entry.counters.record(elapsed, failed);
        }
    }
}

impl Drop for Reply {
    /// A reply dropped unanswered (the server closed) still settles, so `in_flight` never leaks.
    fn drop(&mut self) {
        self.settle(false);
    }
}
