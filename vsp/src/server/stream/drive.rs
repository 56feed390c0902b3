//! One stream's task: the handler's opening, then items under the caller's credit, written in
//! batches under the connection's write bound, until the end, an error, a cancel, the deadline
//! or the server's shutdown.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::{watch, TryAcquireError};
use tokio::time::Instant;

use super::{Forget, Opening, StreamControl, MAX_BATCH};
use crate::error::ErrorCode;
use crate::protocol::StreamFrame;
use crate::server::ledger::Held;
use crate::server::reply::{Reply, ServerConnection, MAX_WRITE_BACKLOG};
use crate::server::Lifecycle;
use crate::stream::Streaming;

/// How a stream's wait ended, when not with what it waited for.
enum Stop {
    Cancelled,
    PastDeadline,
    ShuttingDown,
}

/// Why a stream is over before its end frame: stopped, or it already answered (or cannot).
enum Over {
    Stopped(Stop),
    /// The stream's credit closed: nothing more to send.
    Done,
    /// An item could not be written (it does not serialize, or is too large).
    Failed(ErrorCode, String),
}

/// The last poll of a batch, when it was not an item: an error, the end, or more to come.
type Last = Option<Option<Result<(), String>>>;

/// Runs one stream: the handler's opening, then items under the caller's credit, until the end,
/// an error, a cancel, the deadline or the server's shutdown.
pub(super) async fn drive<Fut>(
    opening: Fut,
    reply: Reply,
    control: Arc<StreamControl>,
    _held: (Option<Forget>, Held),
) where
    Fut: Future,
    Fut::Output: Opening,
{
    let conn: Arc<ServerConnection> = reply.conn.clone();
    let mut stream = Stream {
        deadline: reply
            .timeout_ms
            .map(|ms| crate::deadline::after(Instant::now(), Duration::from_millis(ms))),
        lifecycle: conn.manager().lifecycle(),
        conn,
        control,
    };
    let opened = or_stop(
        &stream.conn,
        &stream.control,
        stream.deadline,
        &mut stream.lifecycle,
        opening,
    );
    let (items, reply) = match opened.await {
        Ok(opened) => match opened.open(reply) {
            Some(opened) => opened,
            None => return,
        },
        Err(stop) => return not_opened(reply, stop, &stream.control),
    };
    // A call that sends items was opened before its handler ran.
    if !reply.is_open() && reply.stream_frame(StreamFrame::Open, &()).is_err() {
        return;
    }
    match stream.run(items, &reply).await {
        Ok(end) => reply.stream_end(end.as_ref().map(|message| (ErrorCode::Handler, &**message))),
        Err(Over::Stopped(stop)) => ended(reply, stop, &stream.control),
        Err(Over::Failed(code, message)) => reply.stream_end(Some((code, &message))),
        Err(Over::Done) => {}
    }
}

/// What a running stream waits with.
struct Stream {
    conn: Arc<ServerConnection>,
    control: Arc<StreamControl>,
    deadline: Option<Instant>,
    lifecycle: watch::Receiver<Lifecycle>,
}

impl Stream {
    /// Sends items until the handler's stream ends: `Ok(None)` at its end, `Ok(Some(error))` when
    /// it failed; `Err` when something else stopped it.
    async fn run<T: serde::Serialize>(
        &mut self,
        mut items: Streaming<T>,
        reply: &Reply,
    ) -> Result<Option<String>, Over> {
        let mut seq = 0u64;
        // The items of one write, kept between writes so a stream allocates it once.
        let mut ready = Vec::new();
        loop {
            self.check()?;
            self.take_credit().await?;
            let last = self.gather(&mut items, &mut ready).await?;
            self.write(reply, &mut ready, &mut seq).await?;
            match last {
                None | Some(Some(Ok(()))) => {}
                Some(Some(Err(message))) => return Ok(Some(message)),
                Some(None) => return Ok(None),
            }
            // A stream whose items are always ready must still let the runtime's other tasks run.
            tokio::task::consume_budget().await;
        }
    }

    /// The fast path, per item: a permit at hand and an item ready cost no timer, no
    /// notification and no lifecycle watch; the full wait is for when one is missing.
    fn check(&self) -> Result<(), Over> {
        let stop = if self.control.cancelled.load(Ordering::Acquire) || self.conn.gone.is_set() {
            Stop::Cancelled
        } else if self.conn.manager.state() != Lifecycle::Running {
            Stop::ShuttingDown
        } else if self.deadline.is_some_and(|at| Instant::now() >= at) {
            Stop::PastDeadline
        } else {
            return Ok(());
        };
        Err(Over::Stopped(stop))
    }

    /// One unit of the caller's credit, waited for if none is left.
    async fn take_credit(&mut self) -> Result<(), Over> {
        match self.control.credit.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::Closed) => return Err(Over::Done),
            Err(TryAcquireError::NoPermits) => {
                let acquire = self.control.credit.acquire();
                let acquired = or_stop(
                    &self.conn,
                    &self.control,
                    self.deadline,
                    &mut self.lifecycle,
                    acquire,
                )
                .await;
                match acquired {
                    Ok(Ok(permit)) => permit.forget(),
                    Ok(Err(_closed)) => return Err(Over::Done),
                    Err(stop) => return Err(Over::Stopped(stop)),
                }
            }
        }
        Ok(())
    }

    /// The next item (waited for), and more at hand under the credit left, up to a batch: they
    /// leave in one write. Returns how the batch ended when not with an item.
    async fn gather<T>(
        &mut self,
        items: &mut Streaming<T>,
        ready: &mut Vec<T>,
    ) -> Result<Last, Over> {
        let polled = std::future::poll_fn(|cx| Poll::Ready(items.poll_item(cx))).await;
        let next = match polled {
            Poll::Ready(next) => next,
            Poll::Pending => {
                let item = std::future::poll_fn(|cx| items.poll_item(cx));
                or_stop(
                    &self.conn,
                    &self.control,
                    self.deadline,
                    &mut self.lifecycle,
                    item,
                )
                .await
                .map_err(Over::Stopped)?
            }
        };
        let mut last = match next {
            Some(Ok(item)) => {
                ready.push(item);
                None
            }
            other => Some(other.map(|end| end.map(|_| ()))),
        };
        while last.is_none() && ready.len() < MAX_BATCH {
            let Ok(permit) = self.control.credit.try_acquire() else {
                break;
            };
            match std::future::poll_fn(|cx| Poll::Ready(items.poll_item(cx))).await {
                Poll::Ready(Some(Ok(item))) => {
                    permit.forget();
                    ready.push(item);
                }
                Poll::Ready(other) => {
                    permit.forget();
                    last = Some(other.map(|end| end.map(|_| ())));
                }
                // Not ready: the permit stays unused, for the next turn.
                Poll::Pending => break,
            }
        }
        Ok(last)
    }

    /// Writes the batch. Items wait while the connection's write backlog is at its bound, as
    /// the reader does: a reader that is slow or gone costs the bound, whatever window it asked
    /// for.
    async fn write<T: serde::Serialize>(
        &mut self,
        reply: &Reply,
        ready: &mut Vec<T>,
        seq: &mut u64,
    ) -> Result<(), Over> {
        while !ready.is_empty() {
            match reply.stream_items(*seq, ready, MAX_WRITE_BACKLOG) {
                Ok(0) => {
                    let below = self.conn.queue().wait_for_backlog_below(MAX_WRITE_BACKLOG);
                    or_stop(
                        &self.conn,
                        &self.control,
                        self.deadline,
                        &mut self.lifecycle,
                        below,
                    )
                    .await
                    .map_err(Over::Stopped)?;
                }
                Ok(sent) => {
                    *seq += sent as u64;
                    ready.drain(..sent);
                }
                Err((code, message)) => return Err(Over::Failed(code, message)),
            }
        }
        Ok(())
    }
}

/// `wait`, unless a cancel, the peer leaving, the deadline or the server's shutdown comes first.
/// (A function of the stream's parts, not a method: `wait` often borrows one of them.)
async fn or_stop<F: Future>(
    conn: &ServerConnection,
    control: &StreamControl,
    deadline: Option<Instant>,
    lifecycle: &mut watch::Receiver<Lifecycle>,
    wait: F,
) -> Result<F::Output, Stop> {
    tokio::select! {
        outcome = wait => Ok(outcome),
        _ = control.cancelled() => Err(Stop::Cancelled),
        // The peer left: nobody reads, and no credit or cancel can come.
        _ = conn.gone.wait() => Err(Stop::Cancelled),
        _ = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        } => Err(Stop::PastDeadline),
        _ = lifecycle.wait_for(|state| *state != Lifecycle::Running) => Err(Stop::ShuttingDown),
    }
}

/// A stream stopped before it opened: an ordinary error answer (or none, for a cancel), or the
/// end frame of a stream opened early.
fn not_opened(reply: Reply, stop: Stop, control: &StreamControl) {
    match stop {
        Stop::Cancelled => {
            if let Some((code, message)) = control.take_failure() {
                reply.error(code, &message);
            }
        }
        Stop::PastDeadline => {
            let message = match reply.is_open() {
                true => "the caller's deadline passed before the handler answered",
                false => "the caller's deadline passed before the stream opened",
            };
            reply.error(ErrorCode::Timeout, message)
        }
        Stop::ShuttingDown => {
            let message = format!("service `{}` is shutting down", &reply.conn.manager().name);
            reply.error(ErrorCode::ShuttingDown, &message);
        }
    }
}

/// A stream stopped after it opened: its end frame says why (none for a cancel).
fn ended(reply: Reply, stop: Stop, control: &StreamControl) {
    match stop {
        Stop::Cancelled => match control.take_failure() {
            // The caller's own stream broke the rules: the end says how.
            Some((code, message)) => reply.stream_end(Some((code, &message))),
            // The caller is gone: nothing is sent; the reply settles as it drops.
            None => drop(reply),
        },
        Stop::PastDeadline => {
            let message = format!(
                "the stream of `{}` was stopped: the caller's deadline passed",
                reply.endpoint()
            );
            reply.stream_end(Some((ErrorCode::Timeout, &message)));
        }
        Stop::ShuttingDown => {
            let message = format!("service `{}` is shutting down", &reply.conn.manager().name);
            reply.stream_end(Some((ErrorCode::ShuttingDown, &message)));
        }
    }
}
