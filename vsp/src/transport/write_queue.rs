//! One connection's outgoing bytes: a buffer many tasks append frames to, drained by one writer.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// The connection's write side is closed; nothing more can be sent on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueClosed;

/// Frames waiting to be written on one connection.
#[derive(Debug, Default)]
pub(crate) struct WriteQueue {
    state: Mutex<QueueState>,
    wake_writer: Notify,
    /// Bytes queued or being written, readable without the lock.
    backlog: AtomicUsize,
    /// Woken each time the writer finishes a write, for readers waiting on the backlog.
    written: Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    pending: Vec<u8>,
    closed: bool,
}

/// A buffer larger than this is not kept for reuse after a burst.
const KEEP_CAPACITY: usize = 1024 * 1024;

impl WriteQueue {
    pub(crate) fn new() -> Self {
        WriteQueue::default()
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // The state stays consistent across a panic (appends are truncated on failure).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends bytes with `encode` (which must leave the buffer as it found it when it fails)
    /// and wakes the writer.
    pub(crate) fn push<E>(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<Result<(), E>, QueueClosed> {
        let mut state = self.lock();
        if state.closed {
            return Err(QueueClosed);
        }
        let before = state.pending.len();
        let result = encode(&mut state.pending);
        let added = state.pending.len() - before;
        let wake = before == 0 && added > 0;
        // Counted before the lock is released: a writer can take these bytes (and subtract
        // them) only after it takes the lock, so the count never goes below zero and wraps.
        self.backlog.fetch_add(added, Ordering::Relaxed);
        drop(state);
        // The writer only sleeps after it found the buffer empty, so only the push that makes it
        // non-empty needs to wake it.
        if wake {
            self.wake_writer.notify_one();
        }
        Ok(result)
    }

    /// Refuses further frames; the writer sends what is already queued, then shuts the stream.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.wake_writer.notify_one();
        self.written.notify_waiters();
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

/// Writes everything pushed to `queue` until it is closed and empty, then shuts down `io`.
pub(crate) async fn run_writer<W: AsyncWrite + Unpin>(
    queue: &WriteQueue,
    mut io: W,
) -> io::Result<()> {
    let mut sending = Vec::new();
    loop {
        let closed = {
            let mut state = queue.lock();
            std::mem::swap(&mut state.pending, &mut sending);
            state.closed
        };
        if !sending.is_empty() {
            let written = io.write_all(&sending).await;
            queue.backlog.fetch_sub(sending.len(), Ordering::Relaxed);
            queue.written.notify_waiters();
            written?;
            sending.clear();
            if sending.capacity() > KEEP_CAPACITY {
                sending = Vec::new();
            }
            continue;
        }
        if closed {
            return io.shutdown().await;
        }
        queue.wake_writer.notified().await;
        // Let the tasks that are ready now (callers, handlers) append their frames first, so
        // they leave in one write instead of one write each.
        tokio::task::yield_now().await;
    }
}
