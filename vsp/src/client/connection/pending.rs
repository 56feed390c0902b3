//! A call waiting for its answer on a client connection: its slot, its deadline, and what it
//! takes over when it opens a stream.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{read_turn, CallFailure, Connection, RawResponse, StreamHandle, Upload};

/// A call waiting for its response. Dropping it (a timeout, a cancelled caller) frees its slot,
/// so a late response is dropped.
pub(crate) struct PendingCall {
    /// Keeps the connection open until the call is settled, even if the pool retired it.
    pub(super) connection: Arc<Connection>,
    pub(super) id: u64,
    pub(super) response: oneshot::Receiver<Result<RawResponse, CallFailure>>,
    pub(super) deadline: Instant,
    /// The connection's `frames_received` when the call was queued.
    pub(super) frames_at_send: u64,
    /// The reader already took the slot out of the table.
    pub(super) answered: bool,
    /// Alone on its connection when sent: it reads its own answer (see `read_turn`).
    pub(super) reads_own: bool,
    /// A stream call's item channel and window, handed to the stream once it opens.
    pub(super) items: Option<(
        mpsc::UnboundedReceiver<Result<RawResponse, CallFailure>>,
        u32,
    )>,
    /// A call that sends a stream: the server's credit for its items, handed to the stream.
    pub(super) upload: Option<Arc<Upload>>,
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
        let deadline = self.deadline;
        let outcome =
            tokio::time::timeout_at(deadline, std::future::poll_fn(|cx| self.poll_answer(cx)))
                .await;
        match outcome {
            Ok(mut outcome) => {
                // Whoever sent into the slot (reader, close) took it out of the table.
                self.answered = true;
                if let Ok(response) = &mut outcome {
                    if response.stream_end == Some(false) {
                        if let Some((items, window)) = self.items.take() {
                            response.stream = Some(Box::new(StreamHandle::new(
                                self.connection.clone(),
                                self.id,
                                items,
                                window,
                                self.upload.take(),
                            )));
                        }
                    }
                }
                outcome
            }
            Err(_elapsed) => {
                self.stop_reading();
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

    fn poll_answer(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<RawResponse, CallFailure>> {
        use std::task::Poll;
        if let Some(outcome) = self.try_answer() {
            return Poll::Ready(outcome);
        }
        if self.reads_own {
            match self.connection.state.read_own(self.id, cx) {
                read_turn::Reading::Routed => {
                    return match self.try_answer() {
                        Some(outcome) => Poll::Ready(outcome),
                        None => Poll::Pending,
                    };
                }
                read_turn::Reading::AlsoWaitSlot => {}
                read_turn::Reading::HandedBack => {
                    self.reads_own = false;
                    if let Some(outcome) = self.try_answer() {
                        return Poll::Ready(outcome);
                    }
                }
            }
        }
        match std::future::Future::poll(std::pin::Pin::new(&mut self.response), cx) {
            Poll::Ready(outcome) => {
                self.stop_reading();
                Poll::Ready(outcome.unwrap_or_else(|_| Err(dropped())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// The answer, if it is in the slot already (no waker registered).
    fn try_answer(&mut self) -> Option<Result<RawResponse, CallFailure>> {
        let outcome = match self.response.try_recv() {
            Ok(outcome) => outcome,
            Err(oneshot::error::TryRecvError::Empty) => return None,
            Err(oneshot::error::TryRecvError::Closed) => Err(dropped()),
        };
        self.stop_reading();
        Some(outcome)
    }

    /// The call no longer reads its own answer; the reader task reads for everyone.
    fn stop_reading(&mut self) {
        if std::mem::take(&mut self.reads_own) {
            self.connection.state.hand_back(self.id);
        }
    }
}

fn dropped() -> CallFailure {
    CallFailure::Closed("the connection was dropped".to_owned())
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        self.stop_reading();
        let state = &self.connection.state;
        state.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.items.is_some() {
            // A stream that never opened (or whose opening was not taken).
            state.pending().streams.remove(&self.id);
        }
        if let Some(upload) = self.upload.take() {
            state.pending().uploads.remove(&self.id);
            upload.stop();
        }
        if !self.answered {
            state.pending().calls.remove(&self.id);
            // The caller gave up (dropped, timed out): the server may stop the work now.
            state.control(self.id, None, true);
        }
    }
}
