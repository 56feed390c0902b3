//! One request frame, as a pipeline: decode it, admit the call (or refuse it with an answer),
//! then run it, through the auth hook when there is one.
//!
//! Every step that refuses answers the caller itself and ends the pipeline; only a frame that
//! cannot be answered at all (no request id can be read) closes the connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::Instrument;

use super::admission::LARGE_REQUEST;
use super::auth::Rejection;
use super::concurrency::AdaptiveLimiter;
use super::ledger::{Gauge, Held};
use super::not_found::{not_found, ECHOED_NAME};
use super::reply::{response_head, Reply, ResponseHead, ServerConnection};
use super::stream::CallKey;
use super::{EndpointEntry, Lifecycle, Registry};
use crate::context::Context as CallContext;
use crate::error::{ErrorCode, ProtocolError};

use crate::protocol::{
    is_json_object, salvage_request_id, short_text, Envelope, FrameView, Metadata, StreamFrame,
    DEFAULT_STREAM_WINDOW, HEALTH_ENDPOINT,
};
use crate::trace::{self, TraceContext};

/// Handles one request frame. An `Err` means the frame cannot be answered and the connection
/// must close.
pub(super) fn dispatch(
    conn: &Arc<ServerConnection>,
    frame: &Bytes,
    received: Instant,
    cx: &mut Context<'_>,
) -> Result<(), String> {
    let Some((envelope, body)) = decode(conn, frame, received)? else {
        return Ok(());
    };
    let registry = conn.manager().registry.load();
    let arrived = Arrived { frame, received };
    if let Some(call) = admit(conn, arrived, &envelope, body, &registry) {
        run(conn, call, cx);
    }
    Ok(())
}

/// A request frame and when it was read.
#[derive(Clone, Copy)]
struct Arrived<'f> {
    frame: &'f Bytes,
    received: Instant,
}

/// A request admitted: everything running it needs.
struct Call<'f, 'r> {
    reply: Reply,
    entry: &'r Arc<EndpointEntry>,
    context: CallContext,
    body: &'f str,
}

/// How a request stands with the adaptive concurrency limit.
enum Admission {
    /// Not counted (no limit, a stream, `health`).
    Free,
    /// It holds a place under this limit.
    Limited(Arc<AdaptiveLimiter>),
}

/// The frame's header and its body as text; `None` when the frame was answered or handled here
/// (a malformed request, a stray response, a control frame).
fn decode<'f>(
    conn: &Arc<ServerConnection>,
    frame: &'f Bytes,
    received: Instant,
) -> Result<Option<(FrameView<'f>, &'f str)>, String> {
    // The body is left to the endpoint's decoder, which checks it as JSON in its one pass.
    let envelope = match Envelope::parse_view(frame) {
        Ok(envelope) => envelope,
        Err(err) => {
            let ProtocolError::Malformed(detail) = &err else {
                return Err(err.to_string());
            };
            let Some(request_id) = salvage_request_id(frame) else {
                return Err(format!("unreadable frame without a request id: {detail}"));
            };
            let head = response_head(request_id.get(), "", "");
            let reply = Reply::new(conn.clone(), head, None, received);
            reply.error(ErrorCode::Protocol, &format!("malformed request: {detail}"));
            return Ok(None);
        }
    };
    let Ok(body) = std::str::from_utf8(envelope.body()) else {
        let head = response_head(envelope.request_id().get(), "", "");
        let reply = Reply::new(conn.clone(), head, None, received);
        reply.error(
            ErrorCode::Protocol,
            "malformed request: the body is not UTF-8",
        );
        return Ok(None);
    };
    if envelope.is_response() {
        let manager = conn.manager();
        let id = envelope.request_id().get();
        manager
            .stray_log
            .stray_response(&manager.name, &conn.peer.address, id);
        return Ok(None);
    }
    // An item or the end of a caller's own stream goes to its call; it gets no answer.
    if let Some(stream_frame @ (StreamFrame::Item(_) | StreamFrame::End)) = envelope.stream_frame()
    {
        if let Some(key) = CallKey::of(envelope.request_id().get()) {
            conn.controls
                .stream_frame(conn, &key, stream_frame, envelope.body());
        }
        return Ok(None);
    }
    // A control frame steers a call of this connection (more stream items, a cancel); it is not
    // a request and gets no answer.
    if envelope.credit().is_some() || envelope.is_cancel() {
        if let Some(key) = CallKey::of(envelope.request_id().get()) {
            conn.controls
                .apply(&key, envelope.credit(), envelope.is_cancel());
        }
        return Ok(None);
    }
    Ok(Some((envelope, body)))
}

/// Runs the checks a request meets before its handler, in order; `None` when one refused it
/// (and answered).
fn admit<'f, 'r>(
    conn: &Arc<ServerConnection>,
    Arrived { frame, received }: Arrived<'_>,
    envelope: &FrameView<'_>,
    body: &'f str,
    registry: &'r Registry,
) -> Option<Call<'f, 'r>> {
    let manager = conn.manager();
    // A name longer than every registered one is unknown: neither hashed, nor copied, nor echoed
    // (the answer to a bad request costs a constant, not the request's size).
    let known_length = envelope.endpoint().len() <= manager.longest_name.load(Ordering::Relaxed);
    let head = if known_length {
        ResponseHead::echo(frame, envelope)
    } else {
        response_head(envelope.request_id().get(), envelope.service(), "")
    };
    let offer = envelope.offers_zstd();
    if offer {
        conn.peer_reads_zstd();
    }
    // Parsed now for the span's parent; refused later, in its turn among the checks.
    let metadata = envelope
        .metadata_json()
        .map(|raw| Metadata::from_json(raw.get()));
    let span = server_span(conn, envelope);
    let trace = match &metadata {
        None if span.is_disabled() => None,
        _ => server_trace(conn, &span, metadata.as_ref().and_then(|m| m.as_ref().ok())),
    };
    let (entry, admission) = match lookup(conn, frame, envelope, registry, known_length) {
        Ok(found) => found,
        Err((code, message)) => {
            Reply::new(conn.clone(), head, None, received)
                .with_offer(offer)
                .with_span(span)
                .error(code, &message);
            return None;
        }
    };
    let timeout_ms = envelope.timeout_ms();
    let mut reply = Reply::new(conn.clone(), head, Some(entry.clone()), received)
        .with_offer(offer)
        .with_timeout(timeout_ms)
        .with_stream_window(
            envelope
                .wants_stream()
                .then(|| envelope.stream_window().unwrap_or(DEFAULT_STREAM_WINDOW)),
        )
        .with_client_stream(envelope.sends_stream())
        .with_span(span)
        .with_limited(match admission {
            Admission::Limited(limiter) => Some(limiter),
            Admission::Free => None,
        });
    if frame.len() > LARGE_REQUEST {
        reply = reply.with_large_request(frame.len());
    }
    let name = &entry.name;
    if !is_json_object(body) {
        let kind = json_kind(body);
        reply.error(
            ErrorCode::BadRequest,
            &format!("the body of a request to `{name}` must be a JSON object keyed by parameter name, got {kind}"),
        );
        return None;
    }
    let metadata = match metadata {
        None => Metadata::new(),
        Some(Ok(metadata)) => metadata,
        Some(Err(message)) => {
            reply.error(ErrorCode::BadRequest, &message);
            return None;
        }
    };
    // From the request's arrival: no clock reading of its own.
    let deadline =
        timeout_ms.map(|ms| crate::deadline::after(received.into(), Duration::from_millis(ms)));
    let context = CallContext::new(
        entry.site.clone(),
        conn.peer.clone(),
        metadata,
        deadline,
        trace,
    );
    Some(Call {
        reply,
        entry,
        context,
        body,
    })
}

/// The endpoint the request names, if the server takes calls, the caller still waits, the
/// endpoint exists and the server is not overloaded; else the refusal.
fn lookup<'r>(
    conn: &ServerConnection,
    frame: &Bytes,
    envelope: &FrameView<'_>,
    registry: &'r Registry,
    known_length: bool,
) -> Result<(&'r Arc<EndpointEntry>, Admission), (ErrorCode, String)> {
    let manager = conn.manager();
    if manager.state() != Lifecycle::Running {
        let message = format!("service `{}` is shutting down", manager.name);
        return Err((ErrorCode::ShuttingDown, message));
    }
    if envelope.timeout_ms() == Some(0) {
        let message = "the caller's deadline had passed on arrival".to_owned();
        return Err((ErrorCode::Timeout, message));
    }
    let name = envelope.endpoint();
    let Some(entry) = known_length.then(|| registry.get(name)).flatten() else {
        // Behind an auth hook, an unknown caller learns no endpoint names.
        let message = match manager.auth {
            Some(_) => format!("Endpoint {} not found", short_text(name, ECHOED_NAME)),
            None => not_found(name, registry),
        };
        return Err((ErrorCode::NotFound, message));
    };
    if let Some(message) = overload(conn, frame, entry) {
        return Err((ErrorCode::Overloaded, message));
    }
    // Unary calls only: a stream's length says nothing about queueing.
    let limiter = match entry.concurrency.as_ref().or(manager.concurrency.as_ref()) {
        Some(limiter)
            if !envelope.wants_stream()
                && !envelope.sends_stream()
                && *entry.name != *HEALTH_ENDPOINT =>
        {
            limiter
        }
        _ => return Ok((entry, Admission::Free)),
    };
    if limiter.try_acquire() {
        Ok((entry, Admission::Limited(limiter.clone())))
    } else {
        Err((
            ErrorCode::Overloaded,
            at_limit(&manager.name, entry, limiter),
        ))
    }
}

/// The refusal of a call at its adaptive limit.
fn at_limit(service: &str, entry: &EndpointEntry, limiter: &AdaptiveLimiter) -> String {
    let limit = limiter.limit();
    match entry.concurrency {
        Some(_) => format!(
            "endpoint `{}` of service `{service}` is at its adaptive limit of {limit} concurrent requests",
            entry.name
        ),
        None => {
            format!("service `{service}` is at its adaptive limit of {limit} concurrent requests")
        }
    }
}

/// The server span of the request, or a disabled one while nothing records it.
fn server_span(conn: &ServerConnection, envelope: &FrameView<'_>) -> tracing::Span {
    if !trace::observed() {
        return tracing::Span::none();
    }
    let manager = conn.manager();
    trace::server_span(
        &manager.name,
        envelope.endpoint(),
        envelope.request_id().get(),
        manager.bound.get().map(|bound| trace::Peer {
            host: bound.host(),
            port: bound.port(),
            text: bound,
        }),
        &conn.peer.address,
    )
}

/// Why the server cannot take this call now (`overloaded`), if it cannot. `health` is never
/// refused: it must answer even under load.
fn overload(conn: &ServerConnection, frame: &Bytes, entry: &EndpointEntry) -> Option<String> {
    if *entry.name == *HEALTH_ENDPOINT {
        return None;
    }
    let manager = conn.manager();
    let limits = &manager.config;
    if manager.drain.in_flight() >= limits.max_concurrent_requests {
        return Some(format!(
            "service `{}` is at its limit of {} concurrent requests",
            manager.name, limits.max_concurrent_requests
        ));
    }
    if conn.in_flight.load(Ordering::Relaxed) >= limits.max_requests_per_connection {
        return Some(format!(
            "this connection is at its limit of {} requests in flight",
            limits.max_requests_per_connection
        ));
    }
    if frame.len() > LARGE_REQUEST {
        return large_request_refusal(conn, frame.len());
    }
    None
}

/// Runs an admitted call: its handler starts at once, or after the auth hook lets it through.
fn run(conn: &Arc<ServerConnection>, call: Call<'_, '_>, cx: &mut Context<'_>) {
    let Call {
        reply,
        entry,
        context,
        body,
    } = call;
    let hook = match &conn.manager().auth {
        Some(hook) if *entry.name != *HEALTH_ENDPOINT => hook,
        _ => return entry.endpoint.start(body, reply, context, cx),
    };
    let span = reply.span().clone();
    // The hook runs in its call's context, as handlers do: `Context::current()` works there.
    let mut check = context.clone().sync_scoped(|| hook.check(&context));
    let first = context
        .clone()
        .sync_scoped(|| span.in_scope(|| check.as_mut().poll(cx)));
    match first {
        Poll::Ready(Ok(())) => entry.endpoint.start(body, reply, context, cx),
        Poll::Ready(Err(rejection)) => reject(reply, &rejection),
        Poll::Pending => {
            // Registered now, at dispatch: a cancel frame read next finds it.
            let cancel = conn.controls.register_call(conn, reply.call_key());
            let pending = PendingCheck {
                cancel,
                _held: Held::new(conn.manager.clone(), Gauge::AuthChecksPending),
                conn: conn.clone(),
                reply,
                entry: entry.clone(),
                context,
                body: body.to_owned(),
            };
            tokio::spawn(pending.finish(check).instrument(span));
        }
    }
}

/// A call whose auth hook waits (a token lookup): it continues on a task of its own, with a copy
/// of its body (the frame is not kept for it). It ends with its connection, at a cancel frame, at
/// its deadline, or when the server drains.
struct PendingCheck {
    cancel: Option<(tokio::sync::oneshot::Receiver<()>, super::stream::Forget)>,
    /// Counted in the ledger until the check ends.
    _held: Held,
    conn: Arc<ServerConnection>,
    reply: Reply,
    entry: Arc<EndpointEntry>,
    context: CallContext,
    body: String,
}

impl PendingCheck {
    async fn finish(self, check: crate::BoxFuture<'static, Result<(), Rejection>>) {
        let PendingCheck {
            cancel,
            _held: pending,
            conn,
            reply,
            entry,
            context,
            body,
        } = self;
        let checked = {
            let mut lifecycle = conn.manager().lifecycle();
            let deadline = context.deadline();
            let (cancelled, _forget) = match cancel {
                Some((cancelled, forget)) => (Some(cancelled), Some(forget)),
                None => (None, None),
            };
            tokio::select! {
                checked = context.clone().scoped(check) => Checked::Answered(checked),
                _ = async {
                    match deadline {
                        Some(deadline) => tokio::time::sleep_until(deadline).await,
                        None => std::future::pending().await,
                    }
                } => Checked::PastDeadline,
                Ok(()) = async {
                    match cancelled {
                        Some(cancelled) => cancelled.await,
                        None => std::future::pending().await,
                    }
                } => Checked::Ended,
                _ = conn.gone.wait() => Checked::Ended,
                _ = lifecycle.wait_for(|state| *state != Lifecycle::Running) => Checked::ShuttingDown,
            }
        };
        drop(pending);
        match checked {
            Checked::Answered(Ok(())) => {
                let mut start = Some((reply, context));
                std::future::poll_fn(|cx| {
                    if let Some((reply, context)) = start.take() {
                        entry.endpoint.start(&body, reply, context, cx);
                    }
                    Poll::Ready(())
                })
                .await;
            }
            Checked::Answered(Err(rejection)) => reject(reply, &rejection),
            Checked::PastDeadline => reply.error(
                ErrorCode::Timeout,
                "the caller's deadline passed while its credentials were checked",
            ),
            Checked::ShuttingDown => {
                let message = format!("service `{}` is shutting down", conn.manager().name);
                reply.error(ErrorCode::ShuttingDown, &message);
            }
            // Cancelled, or the peer left: nobody waits for an answer.
            Checked::Ended => drop(reply),
        }
    }
}

/// How a pending auth check ended.
enum Checked {
    Answered(Result<(), Rejection>),
    PastDeadline,
    /// Cancelled by its caller, or its connection's reader stopped.
    Ended,
    ShuttingDown,
}

/// The trace of the request `span` serves: the caller's `traceparent` as its parent (a malformed
/// one is logged and starts a new trace). `None` while nothing records the span and the caller
/// sent no trace: no ids are made for nobody.
fn server_trace(
    conn: &ServerConnection,
    span: &tracing::Span,
    metadata: Option<&Metadata>,
) -> Option<TraceContext> {
    let incoming = metadata.and_then(|metadata| {
        let text = metadata.get(trace::TRACEPARENT)?;
        match TraceContext::parse(text) {
            Ok(parent) => Some(match metadata.get(trace::TRACESTATE) {
                Some(state) => parent.with_tracestate(state),
                None => parent,
            }),
            Err(err) => {
                let manager = conn.manager();
                manager
                    .trace_log
                    .bad_traceparent(&manager.name, &conn.peer.address, &err);
                None
            }
        }
    });
    if span.is_disabled() {
        return incoming;
    }
    Some(trace::open(span, incoming.as_ref(), true))
}

/// Answers a call the auth hook refused.
fn reject(reply: Reply, rejection: &Rejection) {
    tracing::debug!(
        endpoint = reply.endpoint(),
        "refused by the auth hook: {}",
        rejection.message()
    );
    reply.error(rejection.code(), rejection.message());
}

/// Why a large request of `bytes` would break a byte budget, if it would. A request that is the
/// only large one in flight is always taken (the frame limit bounds it), so no size is refused
/// for ever.
fn large_request_refusal(conn: &ServerConnection, bytes: usize) -> Option<String> {
    let limits = &conn.manager.config;
    let over = |taken: usize, budget: usize| taken > 0 && taken.saturating_add(bytes) > budget;
    let server = conn.manager.admission.large_bytes.load(Ordering::Acquire);
    if over(server, limits.max_request_bytes) {
        return Some(format!(
            "service `{}` is at its budget of {} request bytes in flight",
            conn.manager.name, limits.max_request_bytes
        ));
    }
    let connection = conn.large_bytes.load(Ordering::Acquire);
    if over(connection, limits.max_request_bytes_per_connection) {
        return Some(format!(
            "this connection is at its budget of {} request bytes in flight",
            limits.max_request_bytes_per_connection
        ));
    }
    None
}

fn json_kind(json: &str) -> &'static str {
    match json.trim_start().as_bytes().first() {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        _ => "a number",
    }
}
