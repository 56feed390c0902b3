//! The sending half of a client or bidirectional stream: the caller's items go out as frames of
//! their own, each under a unit of the server's credit, then an end (the half-close).
//!
//! Bound: the server grants its window up front and more only as its handler reads, so at most
//! that many items are queued ahead of it, and the connection's write backlog caps the bytes
//! too. End: the task stops at the caller's last item, when the call ends (the server's end
//! frame), when the caller drops its stream, or when the connection closes; whichever comes
//! first, while it waits for credit or for the next item alike.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use futures_core::Stream;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};

use super::{CallFailure, Connection};
use crate::protocol::frame::{encode_frame, encode_frame_within, EncodeError};
use crate::protocol::{write_envelope, Extensions, HeaderOut, RequestIdOut, StreamFrame};

/// The most credit a server can hold out to one stream (a larger grant is cut to it): it keeps
/// the semaphore from overflowing, whatever a server sends.
const MAX_CREDIT: usize = 1 << 20;

/// Bytes queued on the connection past which an item waits to be written.
const MAX_BACKLOG: usize = 4 * 1024 * 1024;

/// The most items one write carries.
const MAX_BATCH: usize = 128;

/// The server's credit for one call's items, and its stop.
pub(crate) struct Upload {
    credit: Semaphore,
    stopped: AtomicBool,
    wake: Notify,
}

impl Upload {
    pub(super) fn new() -> Self {
        Upload {
            credit: Semaphore::new(0),
            stopped: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// The server granted `items` more.
    pub(super) fn grant(&self, items: u32) {
        let room = MAX_CREDIT.saturating_sub(self.credit.available_permits());
        self.credit.add_permits((items as usize).min(room));
    }

    /// No more items go: the call ended, was dropped, or its connection closed.
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.credit.close();
        self.wake.notify_waiters();
    }

    /// The caller's items ended: `Some(true)` (send the end), or `None` if the call was
    /// stopped meanwhile (its items dropped with it are no half-close).
    fn ends(&self) -> Option<bool> {
        (!self.stopped.load(Ordering::Acquire)).then_some(true)
    }

    async fn stopped(&self) {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            // Registered before the check: a `stop` between the check and the await still wakes.
            woken.as_mut().enable();
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            woken.await;
        }
    }
}

/// Sends the items of call `id` until one of the ends above.
pub(super) async fn pump<S>(connection: Arc<Connection>, id: u64, upload: Arc<Upload>, items: S)
where
    S: Stream + Send + 'static,
    S::Item: Serialize + Send,
{
    let state = &connection.state;
    tokio::pin!(items);
    let mut seq = 0u64;
    // The items of one write, kept between writes so a call allocates it once.
    let mut batch = Vec::new();
    loop {
        let Some(last) = gather(&upload, items.as_mut(), &mut batch).await else {
            return;
        };
        let below = state.queue.wait_for_backlog_below(MAX_BACKLOG);
        tokio::select! {
            () = below => {}
            () = upload.stopped() => return,
        }
        if last && upload.ends().is_none() {
            return;
        }
        let failure = match write(state, id, seq, &batch, last) {
            Ok(()) if last => return,
            Ok(()) => {
                seq += batch.len() as u64;
                batch.clear();
                // A stream whose items are always ready must still let other tasks run.
                tokio::task::consume_budget().await;
                continue;
            }
            Err(None) => return,
            Err(Some(failure)) => failure,
        };
        // An item that cannot go ends the call: the caller reads why, the server is told. (The
        // items before it in the batch were sent.)
        if let Some(slot) = state.pending().streams.remove(&id) {
            let _ = slot.send(Err(failure));
        }
        state.pending().uploads.remove(&id);
        state.control(id, None, true);
        return;
    }
}

/// The next item (waited for, under a unit of credit), and more at hand under the credit left,
/// up to a batch: they leave in one write (one lock, one wake of the writer). `Some(true)` when
/// the caller's stream ended, `None` when the call was stopped.
async fn gather<S: Stream>(
    upload: &Upload,
    mut items: std::pin::Pin<&mut S>,
    batch: &mut Vec<S::Item>,
) -> Option<bool> {
    let credit = tokio::select! {
        permit = upload.credit.acquire() => permit,
        () = upload.stopped() => return None,
    };
    credit.ok()?.forget();
    let next = tokio::select! {
        next = std::future::poll_fn(|cx| items.as_mut().poll_next(cx)) => next,
        () = upload.stopped() => return None,
    };
    let Some(item) = next else {
        return upload.ends();
    };
    batch.push(item);
    while batch.len() < MAX_BATCH {
        let Ok(permit) = upload.credit.try_acquire() else {
            break;
        };
        match std::future::poll_fn(|cx| Poll::Ready(items.as_mut().poll_next(cx))).await {
            Poll::Ready(Some(item)) => {
                permit.forget();
                batch.push(item);
            }
            // The unused permit goes back as it drops.
            Poll::Ready(None) => return upload.ends(),
            Poll::Pending => break,
        }
    }
    Some(false)
}

/// Queues `batch` as items `seq..` of call `id`, and the end after them if `last`. `Err(None)`
/// when the connection is closed, `Err(Some(why))` for an item that cannot be sent.
fn write<T: Serialize>(
    state: &super::ConnectionState,
    id: u64,
    seq: u64,
    batch: &[T],
    last: bool,
) -> Result<(), Option<CallFailure>> {
    let header = HeaderOut {
        request_id: RequestIdOut::Int(id),
        service: "",
        endpoint: "",
        is_response: false,
    };
    let mut failed = None;
    let pushed = state.queue.push(|out| {
        for (seq, item) in (seq..).zip(batch) {
            let encoded = encode_frame_within(out, state.max_frame_size, |out| {
                let extensions = Extensions::stream_item(StreamFrame::Item(seq));
                write_envelope(out, &header, &extensions, |out| {
                    serde_json::to_writer(&mut *out, item)
                })
            });
            if let Err(err) = encoded {
                failed = Some(err);
                return Ok(());
            }
        }
        if last {
            // The half-close: the server's handler sees the end of its stream.
            let _ = encode_frame(out, |out| {
                let extensions = Extensions::stream_item(StreamFrame::End);
                write_envelope(out, &header, &extensions, |out| {
                    out.extend_from_slice(b"null");
                    Ok::<_, std::convert::Infallible>(())
                })
            });
        }
        Ok::<_, std::convert::Infallible>(())
    });
    if pushed.is_err() {
        return Err(None);
    }
    match failed {
        None => Ok(()),
        Some(EncodeError::Json(err)) => Err(Some(CallFailure::Encode(err))),
        Some(EncodeError::TooLarge { len, max }) => Err(Some(CallFailure::TooLarge { len, max })),
    }
}
