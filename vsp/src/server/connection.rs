//! One accepted connection: read frames, dispatch each request, write replies as they finish.
//!
//! Requests run as their own tasks, so a slow handler never holds up the next frame and replies
//! leave in completion order. A bad frame is answered (or, when not even its request id can be
//! read, ends this connection) and touches no other connection.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::net::TcpStream;

use super::endpoint::Reply;
use super::{Lifecycle, ManagerInner};
use crate::error::{ErrorCode, ProtocolError};
use crate::protocol::frame::encode_frame;
use crate::protocol::frame::{FrameReader, ReadError};
use crate::protocol::{
    is_json_object, salvage_request_id, write_error_body, write_header_start,
    write_response_header_end, Envelope, RequestIdOut,
};
use crate::transport::{run_writer, WriteQueue};

/// The name of the endpoint every server answers itself.
pub const HEALTH_ENDPOINT: &str = "health";

/// Replies waiting to be written beyond which the connection stops reading requests.
const MAX_WRITE_BACKLOG: usize = 4 * 1024 * 1024;

/// How long a closing connection may take to flush its last replies to a peer that stopped reading.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// What the reader and the handlers of one connection share. When the reader has stopped and the
/// last handler has replied, the last reference drops and the write side closes.
pub(crate) struct ServerConnection {
    manager: Arc<ManagerInner>,
    queue: Arc<WriteQueue>,
    /// Requests of this connection not answered yet.
    pub(crate) in_flight: AtomicUsize,
}

impl ServerConnection {
    pub(crate) fn manager(&self) -> &ManagerInner {
        &self.manager
    }

    pub(crate) fn queue(&self) -> &WriteQueue {
        &self.queue
    }
}

impl Drop for ServerConnection {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// Serves one accepted connection until the peer closes it, it breaks the protocol beyond
/// answering, or the server closes.
pub(crate) async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    manager: Arc<ManagerInner>,
) {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let queue = Arc::new(WriteQueue::new());
    manager.stats.connection_opened();

    let writer = {
        let queue = queue.clone();
        let manager = manager.clone();
        tokio::spawn(async move {
            let mut lifecycle = manager.lifecycle();
            let flush = run_writer(&queue, write);
            tokio::pin!(flush);
            let result = tokio::select! {
                result = &mut flush => result,
                // A peer that stopped reading must not hold a closing server open for ever.
                _ = async {
                    let _ = lifecycle.wait_for(|state| *state == Lifecycle::Closed).await;
                    tokio::time::sleep(CLOSE_FLUSH_TIMEOUT).await;
                } => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "peer did not read the last replies")),
            };
            if let Err(err) = result {
                tracing::debug!(%peer, "connection write side ended: {err}");
            }
            queue.close();
            manager.stats.connection_closed();
        })
    };

    let conn = Arc::new(ServerConnection {
        manager: manager.clone(),
        queue,
        in_flight: AtomicUsize::new(0),
    });
    let mut frames = FrameReader::new(read, manager.config.max_frame_size);
    let mut lifecycle = manager.lifecycle();
    let mut announced = false;
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
            // A peer that sends requests but does not read the answers is no longer read.
            next = async {
                conn.queue.wait_for_backlog_below(MAX_WRITE_BACKLOG).await;
                frames.next_frame().await
            } => next,
        };
        match next {
            Ok(Some(frame)) => {
                let dispatched =
                    std::future::poll_fn(|cx| Poll::Ready(dispatch(&conn, &frame, cx))).await;
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
        }
        if conn.queue.is_closed() {
            break; // the writer failed: the peer is gone
        }
    }
    drop(conn);
    // The writer ends once the in-flight handlers have replied; nothing needs to wait for it here.
    drop(writer);
}

/// Handles one request frame. An `Err` means the frame cannot be answered and the connection
/// must close.
fn dispatch(
    conn: &Arc<ServerConnection>,
    frame: &Bytes,
    cx: &mut Context<'_>,
) -> Result<(), String> {
    let envelope = match Envelope::parse(frame) {
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
    if envelope.is_response() {
        tracing::warn!(
            request_id = envelope.request_id().get(),
            "dropped a response sent to a server"
        );
        return Ok(());
    }
    let manager = conn.manager();
    let head = ResponseHead::echo(frame, &envelope);
    let endpoint_name = envelope.endpoint();

    if manager.state() != Lifecycle::Running {
        let reply = Reply::new(conn.clone(), head, None);
        let message = format!("service `{}` is shutting down", manager.name);
        reply.error(ErrorCode::ShuttingDown, &message);
        return Ok(());
    }
    let timeout_ms = envelope.timeout_ms();
    if timeout_ms == Some(0) {
        let reply = Reply::new(conn.clone(), head, None);
        reply.error(
            ErrorCode::Timeout,
            "the caller's deadline had passed on arrival",
        );
        return Ok(());
    }
    let registry = manager.registry.load();
    let Some(entry) = registry.get(endpoint_name) else {
        let reply = Reply::new(conn.clone(), head, None);
        // Velithon's wording, which its clients may match on.
        reply.error(
            ErrorCode::NotFound,
            &format!("Endpoint {endpoint_name} not found"),
        );
        return Ok(());
    };
    let name = &entry.name;
    if **name != *HEALTH_ENDPOINT {
        let limits = &manager.config;
        let refusal = if manager.stats.in_flight() >= limits.max_concurrent_requests {
            Some(format!(
                "service `{}` is at its limit of {} concurrent requests",
                manager.name, limits.max_concurrent_requests
            ))
        } else if conn.in_flight.load(Ordering::Relaxed) >= limits.max_requests_per_connection {
            Some(format!(
                "this connection is at its limit of {} requests in flight",
                limits.max_requests_per_connection
            ))
        } else {
            None
        };
        if let Some(message) = refusal {
            Reply::new(conn.clone(), head, None).error(ErrorCode::Overloaded, &message);
            return Ok(());
        }
    }
    let reply = Reply::new(conn.clone(), head, Some(entry.clone())).with_timeout(timeout_ms);
    let body = envelope.body();
    if !is_json_object(body) {
        reply.error(
            ErrorCode::BadRequest,
            &format!("the body of a request to `{name}` must be a JSON object keyed by parameter name, got {}", json_kind(body)),
        );
        return Ok(());
    }
    entry.endpoint.start(body, reply, cx);
    Ok(())
}

impl ServerConnection {
    /// Tells the peer, with a `shutting_down` notice under a `null` request id, to send no new
    /// calls here: the calls in flight still get their answers. Velithon clients drop it.
    fn announce_shutdown(&self) {
        let message = format!("service `{}` is shutting down", self.manager.name);
        let head = response_head("null", &self.manager.name, "");
        let _ = self.queue.push(|out| {
            encode_frame(out, |out| {
                head.write(out);
                write_response_header_end(out, Some(&ErrorCode::ShuttingDown));
                write_error_body(out, &message);
                out.push(b'}');
                Ok::<_, std::convert::Infallible>(())
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

fn response_head(request_id: &str, service: &str, endpoint: &str) -> ResponseHead {
    let mut head = Vec::with_capacity(80 + request_id.len() + service.len() + endpoint.len());
    write_header_start(
        &mut head,
        RequestIdOut::Raw(request_id),
        service,
        endpoint,
        true,
    );
    ResponseHead::Built(head)
}

/// What a response echoes of its request's header.
///
/// Why it points into the request frame: the id, service and endpoint are already there, so a
/// reply costs no allocation to remember them; only header strings that had JSON escapes (not
/// borrowable) are copied out.
pub(crate) enum ResponseHead {
    Echo {
        frame: Bytes,
        request_id: Range<usize>,
        service: Range<usize>,
        endpoint: Range<usize>,
    },
    /// The header start, written out.
    Built(Vec<u8>),
}

impl ResponseHead {
    fn echo(frame: &Bytes, envelope: &Envelope<'_>) -> ResponseHead {
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

    /// Writes `{"header":{...,"is_response":true`.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        match self {
            ResponseHead::Built(head) => out.extend_from_slice(head),
            ResponseHead::Echo {
                frame,
                request_id,
                service,
                endpoint,
            } => {
                // The ranges came from `&str`s of this frame: always UTF-8.
                let text =
                    |range: &Range<usize>| std::str::from_utf8(&frame[range.clone()]).unwrap_or("");
                write_header_start(
                    out,
                    RequestIdOut::Raw(text(request_id)),
                    text(service),
                    text(endpoint),
                    true,
                );
            }
        }
    }
}

fn json_kind(raw: &RawValue) -> &'static str {
    match raw.get().trim_start().as_bytes().first() {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        _ => "a number",
    }
}
