//! One accepted connection: read frames, dispatch each request, write replies as they finish.
//!
//! Requests run as their own tasks, so a slow handler never holds up the next frame and replies
//! leave in completion order. A bad frame is answered (or, when not even its request id can be
//! read, ends this connection) and touches no other connection.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tracing::Instrument;

use super::admission::{Admitted, LARGE_REQUEST};
use super::auth::Rejection;
use super::ledger::{Gauge, Held, LedgerCounts};
use super::reply::{response_head, Reply, ResponseHead, ServerConnection, MAX_WRITE_BACKLOG};
use super::stream::CallKey;
use super::{Lifecycle, ManagerInner};
use crate::context::{Context as CallContext, Peer};
use crate::error::{ErrorCode, ProtocolError};
use crate::protocol::frame::encode_frame;
use crate::protocol::frame::{FrameReader, Patience, ReadError};
use crate::protocol::{
    is_json_object, salvage_request_id, short_text, write_envelope, write_error_body, Envelope,
    Extensions, HeaderOut, Metadata, RequestIdOut, DEFAULT_STREAM_WINDOW, HEALTH_ENDPOINT,
};
use crate::trace::{self, TraceContext};
use crate::transport::{run_writer, Address, Io, WriteQueue};

/// Requests answered in one batch before their replies are written (see `serve_connection`).
const MAX_BATCH: usize = 16;

/// How long a closing connection may take to flush its last replies to a peer that stopped reading.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves one accepted connection until the peer closes it, it breaks the protocol beyond
/// answering, or the server closes.
pub(crate) async fn serve_connection(
    io: Io,
    peer: Address,
    manager: Arc<ManagerInner>,
    admitted: Admitted,
) {
    // A TLS handshake runs here, on this connection's task, so a slow one delays no other.
    let io = {
        let mut lifecycle = manager.lifecycle();
        tokio::select! {
            io = io.established(manager.config.handshake_timeout) => match io {
                Ok(io) => io,
                Err(err) => {
                    manager.handshake_log.handshake_failed(&manager.name, &peer, &err);
                    return;
                }
            },
            _ = lifecycle.wait_for(|state| *state == Lifecycle::Closed) => return,
        }
    };
    let peer_info = Peer::new(peer.clone(), io.identity().cloned());
    let (read, write) = io.into_halves();
    let queue = Arc::new(WriteQueue::new());
    manager.stats.connection_opened();
    manager.drain.connection_opened();
    // Open until both its reader (this task) and its writer have let go of their halves: only
    // then is the socket closed, and only then does it leave the counts and its peer's slot.
    let open = Arc::new(OpenConnection {
        manager: manager.clone(),
        _admitted: admitted,
    });

    let writer = {
        let open = open.clone();
        let queue = queue.clone();
        let manager = manager.clone();
        let peer = peer.clone();
        let listed = LedgerCounts::queue_opened(&manager, &queue);
        let progress = Some(manager.config.write_timeout).filter(|t| *t < Duration::MAX);
        tokio::spawn(async move {
            let _listed = listed;
            let mut lifecycle = manager.lifecycle();
            let flush = run_writer(&queue, write, progress);
            tokio::pin!(flush);
            let result = tokio::select! {
                result = &mut flush => result,
                // A peer that stopped reading must not hold a closing server open for ever.
                _ = async {
                    let _ = lifecycle.wait_for(|state| *state == Lifecycle::Closed).await;
                    tokio::time::sleep(CLOSE_FLUSH_TIMEOUT).await;
                } => Err(std::io::Error::other("the peer did not read the last replies before the server closed")),
            };
            match result {
                Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {
                    manager.stats.write_timed_out();
                    tracing::info!(%peer, "closing connection: {err}");
                }
                Err(err) => tracing::debug!(%peer, "connection write side ended: {err}"),
                Ok(()) => {}
            }
            queue.close();
            drop(open);
        })
    };

    let conn = Arc::new(ServerConnection {
        manager: manager.clone(),
        peer: peer_info,
        queue,
        in_flight: AtomicUsize::new(0),
        opened: tokio::time::Instant::now(),
        idle_since_ms: AtomicU64::new(0),
        large_bytes: AtomicUsize::new(0),
        controls: Default::default(),
        gone: Default::default(),
    });
    let mut frames = FrameReader::new(read, manager.config.max_frame_size);
    let idle_since = || conn.idle_since();
    let patience = Patience {
        frame: manager.config.frame_timeout,
        idle: manager.config.idle_timeout,
        idle_since: &idle_since,
    };
    let mut lifecycle = manager.lifecycle();
    // The writer gave up on the peer (the write-progress deadline): stop reading at once too,
    // so the socket closes, rather than wait for a request or the idle timeout.
    let queue = conn.queue.clone();
    let queue_closed = queue.closed();
    tokio::pin!(queue_closed);
    let mut announced = false;
    // Requests dispatched since the queue was last flushed (see below).
    let mut batch = 0;
    loop {
        let state = *lifecycle.borrow_and_update();
        if state == Lifecycle::Closed {
            break;
        }
        if state == Lifecycle::Draining && !announced {
            announced = true;
            conn.announce_shutdown();
        }
        let next = tokio::select! {
            biased;
            changed = lifecycle.changed() => match changed {
                Ok(()) => continue,
                Err(_) => break,
            },
            () = &mut queue_closed => break,
            // A peer that sends requests but does not read the answers is no longer read.
            next = async {
                if conn.queue.backlog() >= MAX_WRITE_BACKLOG {
                    conn.queue.flush(); // a held batch must not wait on itself
                }
                conn.queue.wait_for_backlog_below(MAX_WRITE_BACKLOG).await;
                if conn.queue.is_closed() {
                    return None; // the writer gave up on the peer (write-progress deadline)
                }
                Some(frames.next_frame_within(&patience).await)
            } => next,
        };
        let Some(next) = next else {
            break;
        };
        match next {
            Ok(Some(frame)) => {
                // The replies of requests answered inline leave together, written by this task
                // once no further request is already read (or the batch grew large): one write
                // per batch and no wake-up of the writer task, as a hand-written loop would.
                if batch == 0 {
                    conn.queue.hold();
                }
                batch += 1;
                let dispatched =
                    std::future::poll_fn(|cx| Poll::Ready(dispatch(&conn, &frame, cx))).await;
                if batch >= MAX_BATCH
                    || !frames.has_buffered_frame()
                    || conn.queue.backlog() >= MAX_WRITE_BACKLOG
                {
                    conn.queue.flush();
                    batch = 0;
                }
                if let Err(reason) = dispatched {
                    tracing::warn!(%peer, "closing connection: {reason}");
                    conn.reply_without_id(ErrorCode::Protocol, &reason);
                    break;
                }
            }
            Ok(None) => break,
            Err(ReadError::Protocol(err)) => {
                tracing::warn!(%peer, "closing connection: {err}");
                conn.reply_without_id(ErrorCode::Protocol, &err.to_string());
                break;
            }
            Err(ReadError::Io(err)) => {
                tracing::debug!(%peer, "connection read side ended: {err}");
                break;
            }
            Err(ReadError::Stalled { after, buffered }) => {
                tracing::warn!(%peer, "closing connection: {buffered} bytes of a frame, then nothing for {after:?}");
                break;
            }
            Err(ReadError::Idle(after)) => {
                tracing::debug!(%peer, "closing connection: idle for {after:?}");
                break;
            }
        }
        if conn.queue.is_closed() {
            break; // the writer failed: the peer is gone
        }
    }
    // Whatever a held batch queued goes out (the writer task writes it if this task cannot).
    conn.queue.flush();
    // Every call and stream of this connection ends now, whatever its id: nobody can steer them
    // any more, and a peer that left reads no answer.
    conn.gone.set();
    conn.controls.clear();
    drop(conn);
    drop(frames); // the read half
    drop(open);
    // The writer ends once the in-flight handlers have replied; nothing needs to wait for it here.
    drop(writer);
}

/// A connection accepted and not yet closed: its place in the counts and under the caps.
struct OpenConnection {
    manager: Arc<ManagerInner>,
    /// Its slot under `max_connections` and `max_connections_per_peer`.
    _admitted: Admitted,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.manager.drain.connection_closed();
    }
}

/// Handles one request frame. An `Err` means the frame cannot be answered and the connection
/// must close.
fn dispatch(
    conn: &Arc<ServerConnection>,
    frame: &Bytes,
    cx: &mut Context<'_>,
) -> Result<(), String> {
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
            let reply = Reply::new(conn.clone(), response_head(request_id.get(), "", ""), None);
            reply.error(ErrorCode::Protocol, &format!("malformed request: {detail}"));
            return Ok(());
        }
    };
    let Ok(body) = std::str::from_utf8(envelope.body()) else {
        let reply = Reply::new(
            conn.clone(),
            response_head(envelope.request_id().get(), "", ""),
            None,
        );
        reply.error(
            ErrorCode::Protocol,
            "malformed request: the body is not UTF-8",
        );
        return Ok(());
    };
    if envelope.is_response() {
        conn.manager().stray_log.stray_response(
            &conn.manager().name,
            &conn.peer.address,
            envelope.request_id().get(),
        );
        return Ok(());
    }
    // A control frame steers a call of this connection (more stream items, a cancel); it is not
    // a request and gets no answer.
    if envelope.credit().is_some() || envelope.is_cancel() {
        if let Some(key) = CallKey::of(envelope.request_id().get()) {
            conn.controls
                .apply(&key, envelope.credit(), envelope.is_cancel());
        }
        return Ok(());
    }
    let manager = conn.manager();
    let endpoint_name = envelope.endpoint();
    // A name longer than every registered one is unknown: neither hashed, nor copied, nor echoed
    // (the answer to a bad request costs a constant, not the request's size).
    let known_length = endpoint_name.len() <= manager.longest_name.load(Ordering::Relaxed);
    let head = if known_length {
        ResponseHead::echo(frame, &envelope)
    } else {
        response_head(envelope.request_id().get(), envelope.service(), "")
    };
    // Parsed now for the span's parent; refused later, in its turn among the checks.
    let metadata = envelope
        .metadata_json()
        .map(|raw| Metadata::from_json(raw.get()));
    let span = if trace::observed() {
        trace::server_span(
            &manager.name,
            endpoint_name,
            envelope.request_id().get(),
            manager.bound.get().map(|bound| trace::Endpoint {
                host: bound.host(),
                port: bound.port(),
                text: bound,
            }),
            &conn.peer.address,
        )
    } else {
        tracing::Span::none()
    };
    let trace = match &metadata {
        None if span.is_disabled() => None,
        _ => server_trace(conn, &span, metadata.as_ref().and_then(|m| m.as_ref().ok())),
    };

    if manager.state() != Lifecycle::Running {
        let reply = Reply::new(conn.clone(), head, None).with_span(span);
        let message = format!("service `{}` is shutting down", manager.name);
        reply.error(ErrorCode::ShuttingDown, &message);
        return Ok(());
    }
    let timeout_ms = envelope.timeout_ms();
    if timeout_ms == Some(0) {
        let reply = Reply::new(conn.clone(), head, None).with_span(span);
        reply.error(
            ErrorCode::Timeout,
            "the caller's deadline had passed on arrival",
        );
        return Ok(());
    }
    let registry = manager.registry.load();
    let Some(entry) = known_length.then(|| registry.get(endpoint_name)).flatten() else {
        let reply = Reply::new(conn.clone(), head, None).with_span(span);
        // Behind an auth hook, an unknown caller learns no endpoint names.
        let message = match manager.auth {
            Some(_) => format!(
                "Endpoint {} not found",
                short_text(endpoint_name, ECHOED_NAME)
            ),
            None => not_found(endpoint_name, &registry),
        };
        reply.error(ErrorCode::NotFound, &message);
        return Ok(());
    };
    let name = &entry.name;
    if **name != *HEALTH_ENDPOINT {
        let limits = &manager.config;
        let refusal = if manager.drain.in_flight() >= limits.max_concurrent_requests {
            Some(format!(
                "service `{}` is at its limit of {} concurrent requests",
                manager.name, limits.max_concurrent_requests
            ))
        } else if conn.in_flight.load(Ordering::Relaxed) >= limits.max_requests_per_connection {
            Some(format!(
                "this connection is at its limit of {} requests in flight",
                limits.max_requests_per_connection
            ))
        } else if frame.len() > LARGE_REQUEST {
            large_request_refusal(conn, frame.len())
        } else {
            None
        };
        if let Some(message) = refusal {
            Reply::new(conn.clone(), head, None)
                .with_span(span)
                .error(ErrorCode::Overloaded, &message);
            return Ok(());
        }
    }
    let mut reply = Reply::new(conn.clone(), head, Some(entry.clone()))
        .with_timeout(timeout_ms)
        .with_stream_window(
            envelope
                .wants_stream()
                .then(|| envelope.stream_window().unwrap_or(DEFAULT_STREAM_WINDOW)),
        )
        .with_span(span);
    if frame.len() > LARGE_REQUEST {
        reply = reply.with_large_request(frame.len());
    }
    if !is_json_object(body) {
        reply.error(
            ErrorCode::BadRequest,
            &format!("the body of a request to `{name}` must be a JSON object keyed by parameter name, got {}", json_kind(body)),
        );
        return Ok(());
    }
    let metadata = match metadata {
        None => Metadata::new(),
        Some(Ok(metadata)) => metadata,
        Some(Err(message)) => {
            reply.error(ErrorCode::BadRequest, &message);
            return Ok(());
        }
    };
    let deadline = timeout_ms
        .map(|ms| crate::deadline::after(tokio::time::Instant::now(), Duration::from_millis(ms)));
    let context = CallContext::new(
        manager.service.clone(),
        name.clone(),
        conn.peer.clone(),
        metadata,
        deadline,
        trace,
    );
    if let (Some(hook), false) = (&manager.auth, **name == *HEALTH_ENDPOINT) {
        let span = reply.span().clone();
        // The hook runs in its call's context, as handlers do: `Context::current()` works there.
        let mut check = context.clone().sync_scoped(|| hook.check(&context));
        let first = context
            .clone()
            .sync_scoped(|| span.in_scope(|| check.as_mut().poll(cx)));
        match first {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(rejection)) => {
                reject(reply, &rejection);
                return Ok(());
            }
            Poll::Pending => {
                // The hook waits (a token lookup): the call continues on a task of its own,
                // with a copy of its body (the frame is not kept for it). It ends with its
                // connection, at a cancel frame, at its deadline, or when the server drains.
                let cancel = conn.controls.register_call(conn, reply.call_key());
                let pending = Held::new(conn.manager.clone(), Gauge::AuthChecksPending);
                let body = body.to_owned();
                let entry = entry.clone();
                let conn = conn.clone();
                tokio::spawn(
                    async move {
                        let checked = {
                            let mut lifecycle = conn.manager().lifecycle();
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
                    .instrument(span),
                );
                return Ok(());
            }
        }
    }
    entry.endpoint.start(body, reply, context, cx);
    Ok(())
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

impl ServerConnection {
    /// Tells the peer, with a `shutting_down` notice under a `null` request id, to send no new
    /// calls here: the calls in flight still get their answers. Velithon clients drop it.
    fn announce_shutdown(&self) {
        let message = format!("service `{}` is shutting down", self.manager.name);
        let header = HeaderOut {
            request_id: RequestIdOut::Raw("null"),
            service: &self.manager.name,
            endpoint: "",
            is_response: true,
        };
        let code = ErrorCode::ShuttingDown;
        let _ = self.queue.push(|out| {
            encode_frame(out, |out| {
                write_envelope(out, &header, &Extensions::response(Some(&code)), |out| {
                    write_error_body(out, &message);
                    Ok::<_, std::convert::Infallible>(())
                })
            })
        });
    }

    /// Tells the peer why the connection is about to close when no request id can be echoed.
    fn reply_without_id(self: &Arc<Self>, code: ErrorCode, message: &str) {
        Reply::new(
            self.clone(),
            response_head("null", &self.manager.name, ""),
            None,
        )
        .error(code, message);
    }
}

/// The longest unknown name a `not_found` message echoes, and the longest one compared with the
/// registered names: the work and the text a bad request costs are bounded by constants, not by
/// its size.
const ECHOED_NAME: usize = 64;

/// The `not_found` message: Velithon's wording first (its clients may match on it), then the
/// closest registered name and the endpoints there are.
fn not_found(name: &str, registry: &super::Registry) -> String {
    let mut names: Vec<&str> = registry.keys().map(|name| &**name).collect();
    names.sort_unstable();
    let mut message = format!("Endpoint {} not found", short_text(name, ECHOED_NAME));
    if let Some(closest) = closest_name(name, &names) {
        message.push_str(&format!("; did you mean `{closest}`?"));
    }
    const LISTED: usize = 20;
    let listed = names
        .iter()
        .take(LISTED)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    let more = names.len().saturating_sub(LISTED);
    message.push_str(&format!(" (endpoints: {listed}"));
    if more > 0 {
        message.push_str(&format!(" and {more} more"));
    }
    message.push(')');
    message
}

/// The registered name closest to `name` within a third of its length (at least 2 edits), if
/// any. Names whose lengths differ by more than that cannot be that close and are skipped
/// unmeasured; a name longer than any suggestion could match is not measured at all.
fn closest_name<'a>(name: &str, names: &[&'a str]) -> Option<&'a str> {
    if name.len() > 4 * ECHOED_NAME {
        return None;
    }
    names
        .iter()
        .filter_map(|candidate| {
            let allowed = (candidate.len() / 3).max(2);
            if name.len().abs_diff(candidate.len()) > allowed || candidate.len() > 4 * ECHOED_NAME {
                return None;
            }
            let distance = edit_distance(name, candidate);
            (distance <= allowed).then_some((distance, *candidate))
        })
        .min()
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance over chars, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
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
