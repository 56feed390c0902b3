//! One accepted connection: read frames, dispatch each request, write replies as they finish.
//!
//! Requests run as their own tasks, so a slow handler never holds up the next frame and replies
//! leave in completion order. A bad frame is answered (or, when not even its request id can be
//! read, ends this connection) and touches no other connection.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;

use super::admission::Admitted;
use super::dispatch::dispatch;
use super::ledger::LedgerCounts;
use super::reply::{response_head, Reply, ServerConnection, MAX_WRITE_BACKLOG};
use super::{Lifecycle, ManagerInner};
use crate::context::Peer;
use crate::error::ErrorCode;
use crate::protocol::frame::encode_frame;
use crate::protocol::frame::{FrameReader, Patience, ReadError};
use crate::protocol::{write_envelope, write_error_body, Extensions, HeaderOut, RequestIdOut};
use crate::transport::{run_writer, Address, BoxRead, BoxWrite, Io, WriteQueue};

/// Requests answered in one batch before their replies are written (see `serve_connection`).
const MAX_BATCH: usize = 16;

/// How long a closing connection may take to flush its last replies to a peer that stopped reading.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves one accepted connection until the peer closes it, it breaks the protocol beyond
/// answering, or the server closes: its writer on a task of its own, its read loop here.
pub(crate) async fn serve_connection(
    io: Io,
    peer: Address,
    manager: Arc<ManagerInner>,
    admitted: Admitted,
) {
    let Some(io) = establish(io, &peer, &manager).await else {
        return;
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
    let writer = spawn_writer(open.clone(), queue.clone(), write, &manager, peer);
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
    read_loop(&conn, &mut frames).await;
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

/// Finishes the connection's setup (a TLS handshake runs here, on this connection's task, so a
/// slow one delays no other); `None` if it failed or the server closed meanwhile.
async fn establish(io: Io, peer: &Address, manager: &ManagerInner) -> Option<Io> {
    let mut lifecycle = manager.lifecycle();
    tokio::select! {
        io = io.established(manager.config.handshake_timeout) => match io {
            Ok(io) => Some(io),
            Err(err) => {
                manager.handshake_log.handshake_failed(&manager.name, peer, &err);
                None
            }
        },
        _ = lifecycle.wait_for(|state| *state == Lifecycle::Closed) => None,
    }
}

/// The connection's writer: flushes the queue until it closes, the write-progress deadline
/// passes, or the server has closed and the peer still does not read.
fn spawn_writer(
    open: Arc<OpenConnection>,
    queue: Arc<WriteQueue>,
    write: BoxWrite,
    manager: &Arc<ManagerInner>,
    peer: Address,
) -> tokio::task::JoinHandle<()> {
    let manager = manager.clone();
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
}

/// Reads and dispatches frames until the peer closes, breaks the protocol, stalls, idles out,
/// stops reading answers past the write deadline, or the server closes.
async fn read_loop(conn: &Arc<ServerConnection>, frames: &mut FrameReader<BoxRead>) {
    let manager = conn.manager();
    let idle_since = || conn.idle_since();
    let patience = Patience {
        frame: manager.config.frame_timeout,
        idle: manager.config.idle_timeout,
        idle_since: &idle_since,
    };
    let mut lifecycle = manager.lifecycle();
    // The writer gave up on the peer (the write-progress deadline): stop reading at once too,
    // so the socket closes, rather than wait for a request or the idle timeout.
    let queue_closed = conn.queue.closed();
    tokio::pin!(queue_closed);
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
            () = &mut queue_closed => break,
            next = next_frame(conn, frames, &patience) => next,
        };
        let carry_on = match next {
            Some(Ok(Some(frame))) => on_frames(conn, frames, frame).await,
            Some(Ok(None)) | None => false,
            Some(Err(err)) => on_read_error(conn, err),
        };
        // After a frame, the writer may have failed: the peer is gone.
        if !carry_on || conn.queue.is_closed() {
            break;
        }
    }
}

/// The next frame, once the connection's write backlog is under its bound: a peer that sends
/// requests but does not read the answers is no longer read. `None` if the writer gave up on
/// the peer (the write-progress deadline).
async fn next_frame(
    conn: &ServerConnection,
    frames: &mut FrameReader<BoxRead>,
    patience: &Patience<'_>,
) -> Option<Result<Option<Bytes>, ReadError>> {
    if conn.queue.backlog() >= MAX_WRITE_BACKLOG {
        conn.queue.flush(); // a held batch must not wait on itself
    }
    conn.queue.wait_for_backlog_below(MAX_WRITE_BACKLOG).await;
    if conn.queue.is_closed() {
        return None;
    }
    Some(frames.next_frame_within(patience).await)
}

/// Dispatches `first` and every frame read whole with it, in one poll; false if the connection
/// must close.
///
/// Why in one poll: the frames of one read arrived together, so they share one clock reading
/// for their arrival, and the reader does not go back through its `select!` (the lifecycle
/// watch, the queue's close, the backlog bound) between them. A batch ends early when the write
/// backlog reaches its bound, so the next frame waits for room as usual, and after `MAX_BATCH`
/// frames: each frame then spends one unit of the task's cooperative budget (as the reader's
/// `select!` did per frame before), so a peer's burst yields the worker to other connections
/// every 128 frames instead of holding it for a whole read buffer.
async fn on_frames(
    conn: &Arc<ServerConnection>,
    frames: &mut FrameReader<BoxRead>,
    first: Bytes,
) -> bool {
    let received = std::time::Instant::now();
    let mut frame = first;
    let mut handled = 0;
    // The replies of requests answered inline leave together, written by this task once no
    // further request is already read (or the batch grew large): one write per batch and no
    // wake-up of the writer task, as a hand-written loop would. (A batch cut short by an error
    // is flushed when the connection closes.)
    conn.queue.hold();
    let carry_on = std::future::poll_fn(|cx| {
        Poll::Ready(loop {
            let dispatched = dispatch(conn, &frame, received, cx);
            handled += 1;
            let more = frames.has_buffered_frame();
            let backlogged = conn.queue.backlog() >= MAX_WRITE_BACKLOG;
            let at_cap = handled == MAX_BATCH;
            if !more || backlogged || at_cap {
                conn.queue.flush();
            }
            if let Err(reason) = dispatched {
                tracing::warn!(peer = %conn.peer.address, "closing connection: {reason}");
                conn.reply_without_id(ErrorCode::Protocol, &reason);
                break false;
            }
            if !more || backlogged || at_cap || conn.queue.is_closed() {
                break true;
            }
            frame = match frames.buffered_frame() {
                Ok(Some(next)) => next,
                Ok(None) => break true,
                Err(err) => break on_read_error(conn, err),
            };
        })
    })
    .await;
    for _ in 0..handled {
        tokio::task::coop::consume_budget().await;
    }
    carry_on
}

/// Logs why reading stopped and tells the peer when it broke the protocol; always false (the
/// connection closes).
// Four log lines: clippy counts the branches inside `tracing`'s macros after expansion.
#[allow(clippy::cognitive_complexity)]
fn on_read_error(conn: &Arc<ServerConnection>, err: ReadError) -> bool {
    let peer = &conn.peer.address;
    match err {
        ReadError::Protocol(err) => {
            tracing::warn!(%peer, "closing connection: {err}");
            conn.reply_without_id(ErrorCode::Protocol, &err.to_string());
        }
        ReadError::Io(err) => tracing::debug!(%peer, "connection read side ended: {err}"),
        ReadError::Stalled { after, buffered } => {
            tracing::warn!(%peer, "closing connection: {buffered} bytes of a frame, then nothing for {after:?}");
        }
        ReadError::Idle(after) => {
            tracing::debug!(%peer, "closing connection: idle for {after:?}");
        }
    }
    false
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
            std::time::Instant::now(),
        )
        .error(code, message);
    }
}
