//! One multiplexed client connection: many calls in flight, matched to responses by request id.

mod control;
mod deliver;
mod pending;
mod read_turn;
mod stream_handle;
mod upload;

pub(crate) use pending::PendingCall;
pub(crate) use stream_handle::StreamHandle;
pub(crate) use upload::Upload;

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::error::ErrorCode;
use crate::fast_map::FastMap;
use crate::protocol::compression;
use crate::protocol::frame::{encode_frame_within, EncodeError};
use crate::protocol::{
    write_envelope, Extensions, HeaderOut, Metadata, RequestIdOut, CLIENT_STREAM_REVISION,
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
    /// The header's `http_status` (a typed error's), if any; only the gateway reads it.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) http_status: Option<u16>,
    /// Whether the peer sent the `vsp` version key, i.e. marks errors in the header.
    pub(crate) from_vsp_peer: bool,
    /// A stream frame: `Some(true)` for its end, `Some(false)` for an item (or the opening).
    pub(crate) stream_end: Option<bool>,
    /// The opening of a stream: where its items arrive (boxed: a unary response stays small).
    pub(crate) stream: Option<Box<StreamHandle>>,
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
    /// The server cannot take this call (a stream from its caller, to an older revision).
    Unsupported(String),
}

type Slot = oneshot::Sender<Result<RawResponse, CallFailure>>;

/// Where a stream's items go, in order.
type StreamSlot = mpsc::UnboundedSender<Result<RawResponse, CallFailure>>;

#[derive(Default)]
struct PendingCalls {
    /// Each call's response slot.
    calls: FastMap<u64, Slot>,
    /// Each open (or opening) stream's item channel. Unbounded, but never holding more than the
    /// stream's window: the server sends no further than the credit granted.
    streams: FastMap<u64, StreamSlot>,
    /// Each call that sends a stream: the server's credit for its items. Removed (and stopped)
    /// when the call ends, is dropped, or the connection closes.
    uploads: FastMap<u64, Arc<Upload>>,
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
    /// The keepalive's view, written only by its ticks: `frames_received` at the last tick,
    /// since when (ms since `epoch`) nothing was received, and whether calls were in flight.
    keepalive_seen: AtomicU64,
    keepalive_quiet_since_ms: AtomicU64,
    keepalive_busy: AtomicBool,
    /// A keepalive ping is waiting for its answer (the connection stays in use meanwhile).
    pinging: AtomicBool,
    /// When a call last started, in milliseconds since `epoch` (for the idle timeout).
    last_active_ms: AtomicU64,
    epoch: std::time::Instant,
    /// The highest `vsp` revision the server answered with: control frames (`credit`, `cancel`)
    /// go only to a server of revision 2 or more (never to Velithon, which sends none).
    peer_revision: AtomicU32,
    /// Calls cancelled before the server's revision was known (no answer yet on this
    /// connection): their cancels go out with the next answer if it shows the server reads
    /// them, and are forgotten if it does not (Velithon). At most `DEFERRED_CANCELS`.
    deferred_cancels: std::sync::Mutex<Vec<u64>>,
    /// `deferred_cancels` is not empty: the next answer settles them, and the keepalive pings
    /// the connection as if a call were in flight, so that answer comes soon.
    owes_cancels: AtomicBool,
    /// The read side, and whether the reader task or a lone caller reads it.
    read: read_turn::ReadTurn,
    /// How requests are compressed once the server offers to read zstd (`None`: never).
    compression: Option<crate::Compression>,
}

/// The reader's own copy of the open streams' slots, so an item takes no lock.
///
/// Bound: a stream dropped while no item comes (its caller cancelled an idle stream) would stay
/// until the connection closes; so when the table has doubled since it was last pruned, the
/// routes of dropped streams are removed. It holds at most about twice the open streams.
#[derive(Default)]
struct Routes {
    map: FastMap<u64, StreamSlot>,
    prune_at: usize,
}

impl Routes {
    /// The fewest routes worth pruning.
    const PRUNE_FLOOR: usize = 64;

    fn insert(&mut self, id: u64, slot: StreamSlot) -> &StreamSlot {
        if self.map.len() >= self.prune_at.max(Self::PRUNE_FLOOR) {
            self.map.retain(|_, slot| !slot.is_closed());
            self.prune_at = self.map.len() * 2;
        }
        self.map.entry(id).or_insert(slot)
    }
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
            for (_, stream) in pending.streams.drain() {
                let _ = stream.send(Err(CallFailure::Closed(reason.clone())));
            }
            for (_, upload) in pending.uploads.drain() {
                upload.stop();
            }
            std::mem::take(&mut pending.calls)
        };
        self.queue.close();
        // A caller reading its own answer is woken by the socket, not by its slot.
        self.read.wake_all();
        if !calls.is_empty() {
            tracing::debug!(instance = %self.instance, calls = calls.len(), "connection closed: {reason}");
        }
        for (_, slot) in calls {
            let _ = slot.send(Err(CallFailure::Closed(reason.clone())));
        }
    }
}

/// What a stream call asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamAsk {
    /// The items granted to the server up front.
    pub(crate) window: u32,
    /// An idle timeout, not the deadline, bounds it: no `timeout_ms` goes to the server.
    pub(crate) idle: bool,
    /// The call sends a stream of items of its own (revision 3).
    pub(crate) upload: bool,
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
    pub(crate) fn start(
        io: Io,
        instance: Arc<str>,
        max_frame_size: usize,
        compression: Option<crate::Compression>,
    ) -> Connection {
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
            keepalive_seen: AtomicU64::new(0),
            keepalive_quiet_since_ms: AtomicU64::new(0),
            keepalive_busy: AtomicBool::new(false),
            pinging: AtomicBool::new(false),
            last_active_ms: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            peer_revision: AtomicU32::new(0),
            deferred_cancels: std::sync::Mutex::new(Vec::new()),
            owes_cancels: AtomicBool::new(false),
            read: read_turn::ReadTurn::new(read, max_frame_size),
            compression,
        });
        {
            let state = state.clone();
            tokio::spawn(async move {
                let _close = CloseOnDrop(state.clone());
                let reason = match run_writer(&state.queue, write, None).await {
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
                let reason = std::future::poll_fn(|cx| state.poll_reader(cx)).await;
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

    /// Claims the one keepalive ping of this connection; false if one is waiting.
    pub(crate) fn start_ping(&self) -> bool {
        !self.state.pinging.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn end_ping(&self) {
        self.state.pinging.store(false, Ordering::Release);
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

    /// One keepalive tick: true if the connection is due a ping, having received nothing for
    /// `busy` while calls were in flight (counted from when the first of them was seen), or
    /// for `idle` without any.
    pub(crate) fn keepalive_due(
        &self,
        busy: std::time::Duration,
        idle: std::time::Duration,
    ) -> bool {
        let state = &self.state;
        let now_ms = state.epoch.elapsed().as_millis() as u64;
        let frames = state.frames_received.load(Ordering::Relaxed);
        let in_flight = self.in_flight() > 0 || state.owes_cancels.load(Ordering::Relaxed);
        let was_busy = state.keepalive_busy.swap(in_flight, Ordering::Relaxed);
        if frames != state.keepalive_seen.swap(frames, Ordering::Relaxed)
            || (in_flight && !was_busy)
        {
            state
                .keepalive_quiet_since_ms
                .store(now_ms, Ordering::Relaxed);
            return false;
        }
        let quiet = now_ms.saturating_sub(state.keepalive_quiet_since_ms.load(Ordering::Relaxed));
        let due = if in_flight { busy } else { idle };
        if quiet < due.as_millis() as u64 || self.is_closed() {
            return false;
        }
        state
            .keepalive_quiet_since_ms
            .store(now_ms, Ordering::Relaxed);
        true
    }

    /// When a call last started (ms since the connection's epoch): a ping puts it back, so it
    /// does not keep an idle connection from closing.
    pub(crate) fn last_active(&self) -> u64 {
        self.state.last_active_ms.load(Ordering::Relaxed)
    }

    /// Puts `last_active` back to `before` if it still says `after` (no call started since).
    pub(crate) fn restore_last_active(&self, before: u64, after: u64) {
        let _ = self.state.last_active_ms.compare_exchange(
            after,
            before,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Calls not answered yet on this connection.
    pub(crate) fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::Relaxed)
    }

    /// Bytes queued on this connection that the socket has not taken yet.
    pub(crate) fn write_backlog(&self) -> usize {
        self.state.queue.backlog()
    }

    /// A call that sends a stream goes only to a server that may read it: one that has not
    /// answered yet, or has answered with revision 3 or more.
    fn check_takes_streams(&self) -> Result<(), CallFailure> {
        let revision = self.state.peer_revision.load(Ordering::Relaxed);
        if revision != 0 && revision < CLIENT_STREAM_REVISION {
            return Err(CallFailure::Unsupported(format!(
                "the server speaks VSP revision {revision}, which takes no stream from its caller (revision {CLIENT_STREAM_REVISION} does)"
            )));
        }
        Ok(())
    }

    /// Queues a request and returns the slot its response will arrive in. `timeout_ms` (from
    /// `now`, the caller's last clock reading, to `deadline`) goes in the header, so the server
    /// stops the work when the caller has given up. `stream`: the
    /// call asks for a stream with this window (and, `true`, no server-side deadline: the
    /// caller's idle timeout bounds it instead).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send(
        self: &Arc<Self>,
        service: &str,
        endpoint: &str,
        body: &(impl Serialize + ?Sized),
        meta: Option<&Metadata>,
        trace: Option<&TraceContext>,
        (now, deadline): (Instant, Instant),
        stream: Option<StreamAsk>,
    ) -> Result<PendingCall, CallFailure> {
        let upload = stream.is_some_and(|ask| ask.upload);
        if upload {
            self.check_takes_streams()?;
        }
        let id = self.state.next_id.fetch_add(1, Ordering::Relaxed);
        let (slot, response) = oneshot::channel();
        let items = stream.map(|_| mpsc::unbounded_channel());
        let upload = upload.then(|| Arc::new(Upload::new()));
        {
            let mut pending = self.state.pending();
            if let Some(reason) = &pending.closed {
                return Err(CallFailure::NotSent(reason.clone()));
            }
            pending.calls.insert(id, slot);
            if let Some((sender, _)) = &items {
                pending.streams.insert(id, sender.clone());
            }
            if let Some(upload) = &upload {
                pending.uploads.insert(id, upload.clone());
            }
        }
        let frames_at_send = self.state.frames_received.load(Ordering::Relaxed);
        let timeout_ms = deadline.saturating_duration_since(now).as_millis().max(1) as u64;
        // The only call in flight here: nothing to batch it with, so it is written at once on
        // this task (one wake-up of the writer task fewer on the round trip).
        let alone = self.state.in_flight.fetch_add(1, Ordering::Relaxed) == 0;
        if !alone && self.state.read.is_routed() {
            // A lone caller reads its own answer: the reader task takes over for both.
            self.state.read.wake_reader();
        }
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
            reads_own: alone && stream.is_none(),
            items: items.map(|(_, receiver)| (receiver, stream.map_or(0, |ask| ask.window))),
            upload,
        };
        let (stream_window, idle, client_stream) = match stream {
            Some(ask) => (Some(ask.window), ask.idle, ask.upload),
            None => (None, false, false),
        };
        let header = HeaderOut {
            request_id: RequestIdOut::Int(id),
            service,
            endpoint,
            is_response: false,
        };
        let encode = |out: &mut Vec<u8>| {
            encode_frame_within(out, self.state.max_frame_size, |out| {
                let extensions = Extensions {
                    stream_window,
                    client_stream,
                    // Until the server has answered, each request offers to read zstd.
                    accept_encoding: (frames_at_send == 0).then_some(compression::ZSTD),
                    ..Extensions::request((!idle).then_some(timeout_ms), meta, trace)
                };
                write_envelope(out, &header, &extensions, |out| {
                    serde_json::to_writer(&mut *out, body)
                })
            })
        };
        let queued = if alone {
            self.state.queue.push_and_write(encode)
        } else {
            self.state.queue.push(encode)
        };
        match queued {
            Ok(Ok(())) => Ok(call),
            Ok(Err(EncodeError::Json(err))) => Err(CallFailure::Encode(err)),
            Ok(Err(EncodeError::TooLarge { len, max })) => Err(CallFailure::TooLarge { len, max }),
            Err(_closed) => Err(CallFailure::NotSent("the connection is closed".to_owned())),
        }
    }
}

#[cfg(test)]
mod routes_tests {
    use super::*;

    #[test]
    fn the_routes_of_streams_dropped_while_idle_are_pruned() {
        let mut routes = Routes::default();
        let mut open = Vec::new();
        for id in 0..10_000u64 {
            let (slot, receiver) = mpsc::unbounded_channel();
            routes.insert(id, slot);
            // One stream in a hundred stays open; the others are dropped by their callers
            // before another item comes.
            if id % 100 == 0 {
                open.push(receiver);
            }
        }
        assert!(
            routes.map.len() <= 2 * open.len() + Routes::PRUNE_FLOOR,
            "{} routes kept for {} open streams",
            routes.map.len(),
            open.len()
        );
        for id in (0..10_000u64).step_by(100) {
            assert!(
                routes.map.contains_key(&id),
                "the route of open stream {id} was pruned"
            );
        }
    }
}
