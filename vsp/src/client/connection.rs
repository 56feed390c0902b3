//! One multiplexed client connection: many calls in flight, matched to responses by request id.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::error::ErrorCode;
use crate::protocol::frame::{encode_frame_within, EncodeError, FrameReader, ReadError};
use crate::protocol::{
    parse_int_request_id, salvage_request_id, write_envelope, Envelope, Extensions, HeaderOut,
    Metadata, RequestIdOut,
};
use crate::trace::TraceContext;
use crate::transport::{run_writer, Io, WriteQueue};

/// A response frame handed to its caller; the body is a range of the frame, not a copy.
#[derive(Debug)]
pub(crate) struct RawResponse {
    frame: Bytes,
    body: Range<usize>,
    /// The header's `error_code`, if any.
    pub(crate) error_code: Option<ErrorCode>,
    /// Whether the peer sent the `vsp` version key, i.e. marks errors in the header.
    pub(crate) from_vsp_peer: bool,
}

impl RawResponse {
    pub(crate) fn body(&self) -> &[u8] {
        &self.frame[self.body.clone()]
    }
}

/// Why a call on this connection failed.
#[derive(Debug)]
pub(crate) enum CallFailure {
    /// The connection was already closed: the request was never written.
    NotSent(String),
    /// The connection closed after the request was queued.
    Closed(String),
    /// The request body did not serialize.
    Encode(serde_json::Error),
    /// The encoded request is above the largest frame sent: not sent.
    TooLarge { len: usize, max: usize },
    /// The response could not be matched to the call but named its request id.
    Protocol(String),
    /// The call's deadline passed before its response arrived. `silent`: nothing at all
    /// arrived on the connection since the call was sent (it may have stopped answering).
    TimedOut { silent: bool },
}

type Slot = oneshot::Sender<Result<RawResponse, CallFailure>>;

#[derive(Default)]
struct PendingCalls {
    /// Each call's response slot.
    calls: HashMap<u64, Slot>,
    /// Set once the connection is closed; no call may be added after.
    closed: Option<String>,
}

struct ConnectionState {
    instance: Arc<str>,
    /// The largest frame sent or accepted.
    max_frame_size: usize,
    queue: Arc<WriteQueue>,
    pending: Mutex<PendingCalls>,
    next_id: AtomicU64,
    in_flight: AtomicUsize,
    /// Mirrors `pending.closed`, readable without the lock.
    closed: AtomicBool,
    /// Frames received: a call that times out with this unchanged heard nothing at all.
    frames_received: AtomicU64,
    /// A liveness check of this connection is running.
    checking: AtomicBool,
    /// The server said it is shutting down: calls in flight finish, new ones go elsewhere.
    draining: AtomicBool,
    /// When a call last started, in milliseconds since `epoch` (for the idle timeout).
    last_active_ms: AtomicU64,
    epoch: std::time::Instant,
}

impl ConnectionState {
    fn pending(&self) -> MutexGuard<'_, PendingCalls> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fails every call in flight at once with `reason`; later calls are refused.
    fn close(&self, reason: String) {
        let calls = {
            let mut pending = self.pending();
            if pending.closed.is_some() {
                return;
            }
            pending.closed = Some(reason.clone());
            self.closed.store(true, Ordering::Release);
            std::mem::take(&mut pending.calls)
        };
        self.queue.close();
        if !calls.is_empty() {
            tracing::debug!(instance = %self.instance, calls = calls.len(), "connection closed: {reason}");
        }
        for (_, slot) in calls {
            let _ = slot.send(Err(CallFailure::Closed(reason.clone())));
        }
    }

    fn deliver(&self, frame: Bytes) {
        let envelope = match Envelope::parse(&frame) {
            Ok(envelope) => envelope,
            Err(err) => {
                let id = salvage_request_id(&frame).and_then(parse_int_request_id);
                let slot = id.and_then(|id| self.pending().calls.remove(&id));
                match slot {
                    Some(slot) => {
                        let _ = slot.send(Err(CallFailure::Protocol(err.to_string())));
                    }
                    None => {
                        tracing::warn!(instance = %self.instance, "dropped an unreadable response: {err}")
                    }
                }
                return;
            }
        };
        if !envelope.is_response() {
            tracing::warn!(instance = %self.instance, "dropped a request sent to a client");
            return;
        }
        let Some(id) = parse_int_request_id(envelope.request_id()) else {
            if envelope.error_code() == Some(ErrorCode::ShuttingDown) {
                // The server's notice that it drains: no new calls on this connection.
                tracing::debug!(instance = %self.instance, "the server is shutting down");
                self.draining.store(true, Ordering::Release);
            } else if envelope.error_code() == Some(ErrorCode::Protocol) {
                // The server could not tie the error to a request: it is about to close on us.
                let message = serde_json::from_str::<ErrorBody<'_>>(envelope.body().get())
                    .map(|body| body.error.into_owned())
                    .unwrap_or_else(|_| envelope.body().get().to_owned());
                self.close(format!("the server reported a protocol error: {message}"));
            } else {
                tracing::warn!(instance = %self.instance, request_id = envelope.request_id().get(), "dropped a response with a foreign request id");
            }
            return;
        };
        let Some(slot) = self.pending().calls.remove(&id) else {
            tracing::debug!(instance = %self.instance, id, "dropped a late response (its call gave up)");
            return;
        };
        let body = envelope.body().get();
        // The body borrows from `frame`: its offset turns it into a range of the shared bytes.
        let start = body.as_ptr() as usize - frame.as_ptr() as usize;
        let response = RawResponse {
            error_code: envelope.error_code(),
            from_vsp_peer: envelope.version().is_some(),
            body: start..start + body.len(),
            frame: frame.clone(),
        };
        let _ = slot.send(Ok(response));
    }
}

/// An error body, `{"error": "message"}`.
#[derive(serde::Deserialize)]
pub(crate) struct ErrorBody<'a> {
    #[serde(borrow)]
    pub(crate) error: std::borrow::Cow<'a, str>,
}

/// Closes the connection when the task holding it ends, however it ends: a task dropped with
/// its runtime must not leave a connection that looks open and is never written or read.
struct CloseOnDrop(Arc<ConnectionState>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0
            .close("the connection's task ended (its runtime shut down)".to_owned());
    }
}

/// A client connection to one instance. Dropping it closes the connection.
pub(crate) struct Connection {
    state: Arc<ConnectionState>,
    reader: AbortHandle,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        self.state
            .close("the client dropped the connection".to_owned());
    }
}

impl Connection {
    /// Starts the reader and writer tasks of a connected stream.
    pub(crate) fn start(io: Io, instance: Arc<str>, max_frame_size: usize) -> Connection {
        let (read, write) = io.into_halves();
        let state = Arc::new(ConnectionState {
            instance,
            max_frame_size,
            queue: Arc::new(WriteQueue::new()),
            pending: Mutex::new(PendingCalls::default()),
            next_id: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            frames_received: AtomicU64::new(0),
            checking: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            last_active_ms: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        });
        {
            let state = state.clone();
            tokio::spawn(async move {
                let _close = CloseOnDrop(state.clone());
                let reason = match run_writer(&state.queue, write).await {
                    Ok(()) => "closed".to_owned(),
                    Err(err) => format!("write failed: {err}"),
                };
                state.close(reason);
            });
        }
        let reader = {
            let state = state.clone();
            tokio::spawn(async move {
                let _close = CloseOnDrop(state.clone());
                let mut frames = FrameReader::new(read, max_frame_size);
                let reason = loop {
                    match frames.next_frame().await {
                        Ok(Some(frame)) => {
                            state.frames_received.fetch_add(1, Ordering::Relaxed);
                            state.deliver(frame);
                        }
                        Ok(None) => break "the server closed the connection".to_owned(),
                        Err(ReadError::Io(err)) => break format!("read failed: {err}"),
                        Err(ReadError::Protocol(err)) => {
                            break format!("bad frame from the server: {err}")
                        }
                        // Only guarded reads (the server's) give up on their own.
                        Err(ReadError::Stalled { .. } | ReadError::Idle(_)) => {
                            break "the read gave up".to_owned()
                        }
                    }
                };
                state.close(reason);
            })
            .abort_handle()
        };
        Connection { state, reader }
    }

    /// Closes the connection, failing its calls with `reason`.
    pub(crate) fn close(&self, reason: String) {
        self.state.close(reason);
    }

    /// Claims the one liveness check of this connection; false if one is running.
    pub(crate) fn start_check(&self) -> bool {
        !self.state.checking.swap(true, Ordering::AcqRel)
    }

    /// Ends the liveness check claimed with `start_check`.
    pub(crate) fn end_check(&self) {
        self.state.checking.store(false, Ordering::Release);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.closed.load(Ordering::Acquire)
    }

    /// Closed, draining, or suspected dead (a call timed out hearing nothing): takes no new
    /// calls. The calls already on it finish.
    pub(crate) fn is_retired(&self) -> bool {
        self.is_closed() || self.is_draining() || self.state.checking.load(Ordering::Acquire)
    }

    /// The server announced it is shutting down.
    pub(crate) fn is_draining(&self) -> bool {
        self.state.draining.load(Ordering::Acquire)
    }

    /// No call in flight, and none started for `idle` or longer.
    pub(crate) fn is_idle_for(&self, idle: std::time::Duration) -> bool {
        let now_ms = self.state.epoch.elapsed().as_millis() as u64;
        self.in_flight() == 0
            && now_ms.saturating_sub(self.state.last_active_ms.load(Ordering::Relaxed))
                >= idle.as_millis() as u64
    }

    /// Calls not answered yet on this connection.
    pub(crate) fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::Relaxed)
    }

    /// Queues a request and returns the slot its response will arrive in. `timeout_ms` goes in
    /// the header, so the server stops the work when the caller has given up.
    pub(crate) fn send(
        self: &Arc<Self>,
        service: &str,
        endpoint: &str,
        body: &(impl Serialize + ?Sized),
        meta: Option<&Metadata>,
        trace: Option<&TraceContext>,
        deadline: Instant,
    ) -> Result<PendingCall, CallFailure> {
        let id = self.state.next_id.fetch_add(1, Ordering::Relaxed);
        let (slot, response) = oneshot::channel();
        {
            let mut pending = self.state.pending();
            if let Some(reason) = &pending.closed {
                return Err(CallFailure::NotSent(reason.clone()));
            }
            pending.calls.insert(id, slot);
        }
        let frames_at_send = self.state.frames_received.load(Ordering::Relaxed);
        let now = Instant::now();
        let timeout_ms = deadline.saturating_duration_since(now).as_millis().max(1) as u64;
        self.state.in_flight.fetch_add(1, Ordering::Relaxed);
        self.state.last_active_ms.store(
            now.into_std()
                .saturating_duration_since(self.state.epoch)
                .as_millis() as u64,
            Ordering::Relaxed,
        );
        let call = PendingCall {
            connection: self.clone(),
            id,
            response,
            deadline,
            frames_at_send,
            answered: false,
        };
        let header = HeaderOut {
            request_id: RequestIdOut::Int(id),
            service,
            endpoint,
            is_response: false,
        };
        let queued = self.state.queue.push(|out| {
            encode_frame_within(out, self.state.max_frame_size, |out| {
                write_envelope(
                    out,
                    &header,
                    &Extensions::request(timeout_ms, meta, trace),
                    |out| serde_json::to_writer(&mut *out, body),
                )
            })
        });
        match queued {
            Ok(Ok(())) => Ok(call),
            Ok(Err(EncodeError::Json(err))) => Err(CallFailure::Encode(err)),
            Ok(Err(EncodeError::TooLarge { len, max })) => Err(CallFailure::TooLarge { len, max }),
            Err(_closed) => Err(CallFailure::NotSent("the connection is closed".to_owned())),
        }
    }
}

/// A call waiting for its response. Dropping it (a timeout, a cancelled caller) frees its slot,
/// so a late response is dropped.
pub(crate) struct PendingCall {
    /// Keeps the connection open until the call is settled, even if the pool retired it.
    connection: Arc<Connection>,
    id: u64,
    response: oneshot::Receiver<Result<RawResponse, CallFailure>>,
    deadline: Instant,
    /// The connection's `frames_received` when the call was queued.
    frames_at_send: u64,
    /// The reader already took the slot out of the table.
    answered: bool,
}

impl PendingCall {
    /// The request id the call went out with.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Waits for the response, or for the deadline given to `send` (`TimedOut`).
    ///
    /// Why a timer in the caller's own future: the deadline must hold whatever happens to the
    /// connection's tasks (a runtime that shut down, a reader stuck behind a stalled peer), so
    /// nothing else is trusted to end the wait.
    pub(crate) async fn wait(&mut self) -> Result<RawResponse, CallFailure> {
        match tokio::time::timeout_at(self.deadline, &mut self.response).await {
            Ok(outcome) => {
                // Whoever sent into the slot (reader, close) took it out of the table.
                self.answered = true;
                outcome.unwrap_or_else(|_| {
                    Err(CallFailure::Closed("the connection was dropped".to_owned()))
                })
            }
            Err(_elapsed) => {
                let received = self
                    .connection
                    .state
                    .frames_received
                    .load(Ordering::Relaxed);
                Err(CallFailure::TimedOut {
                    silent: received == self.frames_at_send,
                })
            }
        }
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        let state = &self.connection.state;
        state.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.answered {
            state.pending().calls.remove(&self.id);
        }
    }
}
