//! One connection's outgoing bytes: a buffer many tasks append frames to, written by whoever
//! holds the write turn.
//!
//! The connection's writer task is the writer of last resort: it writes whatever it is woken
//! for, and waits on the socket when the peer reads slowly. But a task that just queued bytes
//! and knows nothing else is coming (the server's reader at the end of a batch of requests
//! answered inline; a caller on a connection with nothing else in flight) can write them itself,
//! at once, without waking the writer task: one task wake-up (often across threads) fewer per
//! batch. It writes only while the socket takes the bytes without waiting; whatever the socket
//! does not take is handed to the writer task, in order.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
// Through `crate::sync`: the loom model crate (`tests/loom`) compiles this file against loom's.
use crate::sync::{AtomicUsize, Mutex, MutexGuard, Ordering, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::sync::Notify;

use super::{BoxWrite, Compressing};

/// The connection's write side is closed; nothing more can be sent on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueClosed;

/// Frames waiting to be written on one connection.
#[derive(Default)]
pub(crate) struct WriteQueue {
    state: Mutex<QueueState>,
    /// The write half, once the writer task started. Only the holder of the write turn
    /// (`QueueState::writing`) locks it, so the lock is never contended.
    io: Mutex<Option<BoxWrite>>,
    wake_writer: Notify,
    /// Bytes queued or being written, readable without the lock.
    backlog: AtomicUsize,
    /// Woken each time a write finishes, for readers waiting on the backlog.
    written: Notify,
    /// Woken once, when the queue closes.
    closing: Notify,
    /// Whether frames are compressed as they are queued (the peer reads them).
    compressing: Compressing,
}

#[derive(Debug, Default)]
struct QueueState {
    pending: Vec<u8>,
    closed: bool,
    /// Someone holds the write turn: the writer task, or a task writing inline.
    writing: bool,
    /// A task queues a batch and flushes it itself when done (`hold`/`flush`): pushes meanwhile
    /// do not wake the writer task.
    held: bool,
    /// An inline writer's spare buffer, kept so writing inline allocates nothing.
    spare: Vec<u8>,
    /// Bytes taken by a buffering transport (TLS) that an inline write could not flush: the
    /// writer task flushes them.
    unflushed: bool,
}

/// A buffer larger than this is not kept for reuse after a burst.
const KEEP_CAPACITY: usize = 1024 * 1024;

/// Rounds of inline writing (each writes all that was queued meanwhile) before the rest is left
/// to the writer task: a task writing inline soon goes back to its own work.
const INLINE_ROUNDS: usize = 4;

impl std::fmt::Debug for WriteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteQueue")
            .field("backlog", &self.backlog.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl WriteQueue {
    pub(crate) fn new() -> Self {
        WriteQueue::default()
    }

    /// Whether (and how) the frames queued are compressed.
    pub(crate) fn compressing(&self) -> &Compressing {
        &self.compressing
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // The state stays consistent across a panic (appends are truncated on failure).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn io(&self) -> MutexGuard<'_, Option<BoxWrite>> {
        self.io.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends bytes with `encode` (which must leave the buffer as it found it when it fails)
    /// and wakes the writer (unless the queue is held: its holder flushes).
    pub(crate) fn push<E>(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<Result<(), E>, QueueClosed> {
        self.push_then(encode, false)
    }

    /// As [`push`](WriteQueue::push), but when nothing else was queued and nobody is writing,
    /// the bytes are written at once on the calling task (see the module docs), as far as the
    /// socket takes them without waiting.
    pub(crate) fn push_and_write<E>(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<Result<(), E>, QueueClosed> {
        self.push_then(encode, true)
    }

    fn push_then<E>(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
        write_now: bool,
    ) -> Result<Result<(), E>, QueueClosed> {
        let mut state = self.lock();
        if state.closed {
            return Err(QueueClosed);
        }
        let before = state.pending.len();
        let result = encode(&mut state.pending);
        self.compressing.apply(&mut state.pending, before);
        let added = state.pending.len() - before;
        // Counted before the lock is released: a writer can take these bytes (and subtract
        // them) only after it takes the lock, so the count never goes below zero and wraps.
        self.backlog.fetch_add(added, Ordering::Relaxed);
        if before > 0 || added == 0 || state.held {
            // Whoever made the buffer non-empty (or holds it) sees to it being written.
            return Ok(result);
        }
        if write_now && !state.writing {
            self.write_inline(state);
        } else {
            drop(state);
            // The writer only sleeps after it found the buffer empty, so only the push that
            // makes it non-empty needs to wake it.
            self.wake_writer.notify_one();
        }
        Ok(result)
    }

    /// As [`push`](WriteQueue::push), but only while fewer than `limit` bytes wait to be
    /// written: `Ok(None)` when the backlog is at `limit` and nothing was queued. The check and
    /// the append happen under one lock, so callers that all wait for room overshoot `limit` by
    /// at most one append, not one append each.
    pub(crate) fn push_below<E>(
        &self,
        limit: usize,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<Option<Result<(), E>>, QueueClosed> {
        let mut state = self.lock();
        if state.closed {
            return Err(QueueClosed);
        }
        if self.backlog.load(Ordering::Relaxed) >= limit {
            return Ok(None);
        }
        let before = state.pending.len();
        let result = encode(&mut state.pending);
        self.compressing.apply(&mut state.pending, before);
        let added = state.pending.len() - before;
        self.backlog.fetch_add(added, Ordering::Relaxed);
        if before > 0 || added == 0 || state.held {
            return Ok(Some(result));
        }
        drop(state);
        self.wake_writer.notify_one();
        Ok(Some(result))
    }

    /// Holds the queue for a batch: frames pushed until [`flush`](WriteQueue::flush) do not
    /// wake the writer task; `flush` writes them all at once.
    pub(crate) fn hold(&self) {
        self.lock().held = true;
    }

    /// Ends a [`hold`](WriteQueue::hold): writes what was queued, on this task if nobody else is
    /// writing (the writer task otherwise, which then finds it).
    pub(crate) fn flush(&self) {
        let mut state = self.lock();
        state.held = false;
        if state.pending.is_empty() || state.writing {
            return;
        }
        self.write_inline(state);
    }

    /// Takes the write turn and writes the queued bytes on this task, as long as the socket
    /// takes them without waiting; hands the rest (and the turn) to the writer task.
    fn write_inline(&self, mut state: MutexGuard<'_, QueueState>) {
        state.writing = true;
        let mut sending = std::mem::take(&mut state.spare);
        std::mem::swap(&mut state.pending, &mut sending);
        drop(state);
        let mut io = self.io();
        let mut rounds = 0;
        loop {
            let (done, flushed) = match io.as_mut() {
                // The writer task has not started yet: it writes everything once it does.
                None => (0, true),
                Some(io) => write_without_waiting(io.as_mut(), &sending),
            };
            if done > 0 {
                self.backlog.fetch_sub(done, Ordering::Relaxed);
                self.written.notify_waiters();
            }
            rounds += 1;
            let mut state = self.lock();
            if done < sending.len() || !flushed || rounds == INLINE_ROUNDS {
                state.unflushed |= !flushed;
                // The socket is full (or this task wrote enough): the rest goes first, before
                // what was queued meanwhile, and the writer task takes over.
                sending.drain(..done);
                sending.extend_from_slice(&state.pending);
                std::mem::swap(&mut state.pending, &mut sending);
                sending.clear();
                state.spare = sending;
                state.writing = false;
                drop(state);
                drop(io);
                self.wake_writer.notify_one();
                return;
            }
            sending.clear();
            if state.pending.is_empty() || state.held {
                state.writing = false;
                if sending.capacity() <= KEEP_CAPACITY {
                    state.spare = sending;
                }
                let closed = state.closed;
                drop(state);
                if closed {
                    // The writer task waits for the turn to shut the stream down.
                    self.wake_writer.notify_one();
                }
                return;
            }
            std::mem::swap(&mut state.pending, &mut sending);
        }
    }

    /// Refuses further frames; the writer sends what is already queued, then shuts the stream.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.wake_writer.notify_one();
        self.written.notify_waiters();
        self.closing.notify_waiters();
    }

    /// Returns once the queue is closed (the writer gave up on the peer, or the connection
    /// ended). Pinned once and polled across many waits, it registers once.
    pub(crate) async fn closed(&self) {
        loop {
            let closing = self.closing.notified();
            tokio::pin!(closing);
            closing.as_mut().enable();
            if self.is_closed() {
                return;
            }
            closing.await;
        }
    }

    /// Bytes queued or being written.
    pub(crate) fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Waits until fewer than `limit` bytes wait to be written (or the queue closes): a reader
    /// calls this before taking more requests, so a peer that does not read its answers stops
    /// being read instead of filling memory.
    pub(crate) async fn wait_for_backlog_below(&self, limit: usize) {
        // The common case, a backlog under the limit, costs one atomic load.
        while self.backlog.load(Ordering::Relaxed) >= limit {
            let written = self.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            if self.backlog.load(Ordering::Relaxed) < limit || self.is_closed() {
                return;
            }
            written.await;
        }
    }
}

/// A waker that does nothing: an inline write never waits, so nothing needs waking (the writer
/// task polls again with its own waker when it takes over).
fn noop_waker() -> &'static Waker {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: std::sync::Arc<Self>) {}
    }
    static NOOP: std::sync::OnceLock<Waker> = std::sync::OnceLock::new();
    NOOP.get_or_init(|| Waker::from(std::sync::Arc::new(Noop)))
}

/// Writes as much of `bytes` as `io` takes without waiting, then flushes it the same way: how
/// many bytes it took, and whether they were flushed (a buffering transport, TLS, may hold some
/// back). An error counts as nothing more taken: the writer task meets it again and reports it.
fn write_without_waiting(mut io: Pin<&mut (dyn AsyncWrite + Send)>, bytes: &[u8]) -> (usize, bool) {
    let mut cx = Context::from_waker(noop_waker());
    let mut done = 0;
    while done < bytes.len() {
        match io.as_mut().poll_write(&mut cx, &bytes[done..]) {
            Poll::Ready(Ok(n)) if n > 0 => done += n,
            _ => return (done, true),
        }
    }
    let flushed = matches!(io.poll_flush(&mut cx), Poll::Ready(Ok(())));
    (done, flushed)
}

/// Writes everything pushed to `queue` (and not written inline) until it is closed and empty,
/// then shuts down `io`.
///
/// `progress` is the write-progress deadline: a write of which the socket takes no byte for that
/// long fails with [`io::ErrorKind::TimedOut`] (a peer that stopped reading), and the write half is
/// dropped at once, so a peer that never reads cannot pin the connection.
pub(crate) async fn run_writer(
    queue: &WriteQueue,
    io: BoxWrite,
    progress: Option<Duration>,
) -> io::Result<()> {
    let ended = write_until_closed(queue, io, progress).await;
    if ended.is_err() {
        // Nothing more can be written: the socket's write half goes now, not when the last
        // reference to the queue does.
        queue.close();
        drop(queue.io().take());
    }
    ended
}

async fn write_until_closed(
    queue: &WriteQueue,
    io: BoxWrite,
    progress: Option<Duration>,
) -> io::Result<()> {
    queue.attach(io);
    let mut sending = Vec::new();
    loop {
        match queue.writer_turn(&mut sending) {
            WriterTurn::Flush => {
                let flushed = write_all(queue, &[], progress).await;
                queue.end_turn(0);
                flushed?;
            }
            WriterTurn::Write => {
                let written = write_all(queue, &sending, progress).await;
                queue.end_turn(sending.len());
                written?;
                sending.clear();
                if sending.capacity() > KEEP_CAPACITY {
                    sending = Vec::new();
                }
            }
            WriterTurn::Shutdown => {
                let io = queue.io().take();
                return match io {
                    Some(mut io) => poll_fn(|cx| io.as_mut().poll_shutdown(cx)).await,
                    None => Ok(()),
                };
            }
            WriterTurn::Wait => {
                queue.wake_writer.notified().await;
                // Let the tasks that are ready now (callers, handlers) append their frames
                // first, so they leave in one write instead of one write each.
                tokio::task::yield_now().await;
            }
        }
    }
}

/// What the writer task does with its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriterTurn {
    /// Write the bytes taken (the turn is held).
    Write,
    /// Flush what an inline write left in the transport's buffer (the turn is held).
    Flush,
    /// Closed and nothing left: shut the stream down.
    Shutdown,
    /// Nothing to do, or someone is writing inline: wait to be woken.
    Wait,
}

impl WriteQueue {
    /// Gives the queue its write half (the writer task does, as it starts).
    pub(crate) fn attach(&self, io: BoxWrite) {
        *self.io() = Some(io);
    }

    /// Takes the write turn if nobody holds it, with the queued bytes (into `sending`, which
    /// must be empty), and says what to do with it. The turn is held after `Write` and `Flush`
    /// until [`end_turn`](WriteQueue::end_turn).
    pub(crate) fn writer_turn(&self, sending: &mut Vec<u8>) -> WriterTurn {
        let mut state = self.lock();
        if state.writing {
            return WriterTurn::Wait; // a task is writing inline: it wakes us if it leaves any
        }
        std::mem::swap(&mut state.pending, sending);
        if !sending.is_empty() {
            state.writing = true;
            return WriterTurn::Write;
        }
        // An inline write may have left bytes in the transport's buffer (TLS).
        if std::mem::take(&mut state.unflushed) {
            state.writing = true;
            return WriterTurn::Flush;
        }
        if state.closed {
            WriterTurn::Shutdown
        } else {
            WriterTurn::Wait
        }
    }

    /// Gives the write turn back once `written` bytes taken by `writer_turn` left (or failed to).
    pub(crate) fn end_turn(&self, written: usize) {
        if written > 0 {
            self.backlog.fetch_sub(written, Ordering::Relaxed);
            self.written.notify_waiters();
        }
        self.lock().writing = false;
    }
}

/// Writes all of `bytes` and flushes, waiting on the socket as needed (holding the write turn),
/// for at most `progress` without the socket taking a byte.
async fn write_all(queue: &WriteQueue, bytes: &[u8], progress: Option<Duration>) -> io::Result<()> {
    let mut done = 0;
    // Armed only once the socket makes us wait: a write that goes through costs no timer.
    let mut stalled: Option<Pin<Box<tokio::time::Sleep>>> = None;
    poll_fn(|cx| {
        let mut io = queue.io();
        let Some(io) = io.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let before = done;
        while done < bytes.len() {
            match io.as_mut().poll_write(cx, &bytes[done..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => done += n,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => break,
            }
        }
        let flushed = if done == bytes.len() {
            io.as_mut().poll_flush(cx)
        } else {
            Poll::Pending
        };
        if flushed.is_ready() {
            return flushed;
        }
        let Some(progress) = progress else {
            return Poll::Pending;
        };
        if done > before {
            stalled = None; // progress: the deadline starts again
        }
        let timer = stalled.get_or_insert_with(|| {
            Box::pin(tokio::time::sleep(
                progress.min(Duration::from_secs(86_400 * 365)),
            ))
        });
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer took no byte for {progress:?} (write-progress deadline)"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

// Not in the loom model crate, which compiles this file against loom's primitives.
#[cfg(all(test, not(loom_model)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;

    fn frame(out: &mut Vec<u8>, byte: u8, len: usize) -> Result<(), std::convert::Infallible> {
        out.extend(std::iter::repeat_n(byte, len));
        Ok(())
    }

    /// Reads exactly `len` bytes from `read`, or fails naming what it waited for.
    async fn read_exactly(read: &mut tokio::io::DuplexStream, len: usize) -> Vec<u8> {
        let mut got = vec![0; len];
        tokio::time::timeout(std::time::Duration::from_secs(5), read.read_exact(&mut got))
            .await
            .expect("timed out waiting for the queued bytes")
            .unwrap();
        got
    }

    #[tokio::test]
    async fn a_push_with_nothing_else_queued_is_written_inline_without_the_writer_task() {
        let (write, mut read) = tokio::io::duplex(1024);
        let queue = WriteQueue::new();
        // The write half is attached as the writer task would, but no writer task runs.
        *queue.io() = Some(Box::pin(write));
        queue
            .push_and_write(|out| frame(out, b'a', 10))
            .unwrap()
            .unwrap();
        assert_eq!(read_exactly(&mut read, 10).await, vec![b'a'; 10]);
        assert_eq!(queue.backlog.load(Ordering::Relaxed), 0);
        assert!(!queue.lock().writing);
    }

    #[tokio::test]
    async fn a_held_batch_leaves_in_one_write_at_flush() {
        let (write, mut read) = tokio::io::duplex(1024);
        let queue = WriteQueue::new();
        *queue.io() = Some(Box::pin(write));
        queue.hold();
        queue.push(|out| frame(out, b'a', 5)).unwrap().unwrap();
        queue
            .push_and_write(|out| frame(out, b'b', 5))
            .unwrap()
            .unwrap();
        assert_eq!(
            queue.lock().pending.len(),
            10,
            "nothing is written while held"
        );
        queue.flush();
        let mut expected = vec![b'a'; 5];
        expected.extend([b'b'; 5]);
        assert_eq!(read_exactly(&mut read, 10).await, expected);
    }

    #[tokio::test]
    async fn what_the_socket_does_not_take_inline_goes_to_the_writer_task_in_order() {
        // A pipe of 16 bytes: an inline write of 40 stops at 16, the writer task sends the rest
        // (and what was queued after it) once the reader makes room.
        let (write, mut read) = tokio::io::duplex(16);
        let queue = Arc::new(WriteQueue::new());
        let writer = {
            let queue = queue.clone();
            tokio::spawn(async move { run_writer(&queue, Box::pin(write), None).await })
        };
        // Wait until the writer task attached the write half (bounded, named).
        for _ in 0..1000 {
            if queue.io().is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            queue.io().is_some(),
            "the writer task never attached the write half"
        );
        queue
            .push_and_write(|out| frame(out, b'a', 40))
            .unwrap()
            .unwrap();
        queue.push(|out| frame(out, b'b', 8)).unwrap().unwrap();
        let mut expected = vec![b'a'; 40];
        expected.extend([b'b'; 8]);
        assert_eq!(read_exactly(&mut read, 48).await, expected);
        queue.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), writer)
            .await
            .expect("timed out waiting for the writer task to end after close")
            .unwrap()
            .unwrap();
        let mut rest = Vec::new();
        read.read_to_end(&mut rest).await.unwrap();
        assert!(
            rest.is_empty(),
            "the stream was shut down after the queued bytes"
        );
    }
}
