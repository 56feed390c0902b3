//! Server streams and cancellation: the per-connection table of calls a caller can still steer
//! (grant stream items, cancel), and the task that drives one stream under its credit.
//!
//! Why credit: the caller grants `n` items (`stream` on the request, then `credit` frames as it
//! reads); the server sends at most that many ahead, so a slow reader holds at most its window
//! of items in the server's write buffer, and one slow stream never fills the connection for
//! the others.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{oneshot, Notify, Semaphore, TryAcquireError};

use super::endpoint::Endpoint;
use super::reply::{Reply, ServerConnection};
use super::Lifecycle;
use crate::context::Context as CallContext;
use crate::error::ErrorCode;
use crate::protocol::StreamFrame;
use crate::stream::Streaming;

pub use crate::protocol::DEFAULT_STREAM_WINDOW;

/// The most items one write of a stream carries.
const MAX_BATCH: usize = 128;

/// What a caller can still do to one of its calls on this connection.
pub(crate) enum Control {
    /// A unary call running as a task of its own: sending (or dropping) stops it.
    Call(oneshot::Sender<()>),
    /// A stream.
    Stream(Arc<StreamControl>),
}

/// The calls of one connection that a caller can steer, by request id (our clients' integers;
/// other callers send no control frames).
#[derive(Default)]
pub(crate) struct Controls(Mutex<HashMap<u64, Control>>);

impl Controls {
    fn insert(&self, id: u64, control: Control) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, control);
    }

    fn remove(&self, id: u64) -> Option<Control> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
    }

    /// Registers a unary call that went on as a task of its own; the receiver fires on cancel.
    pub(crate) fn register_call(&self, id: u64) -> oneshot::Receiver<()> {
        let (cancel, cancelled) = oneshot::channel();
        self.insert(id, Control::Call(cancel));
        cancelled
    }

    /// Forgets a call or stream that ended.
    pub(crate) fn forget(&self, id: u64) {
        self.remove(id);
    }

    /// The connection stopped reading: its streams can get no more credit and no cancel, so
    /// they end now (unary calls still finish: a caller may have half-closed and still read).
    pub(crate) fn end_streams(&self) {
        let guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for control in guard.values() {
            if let Control::Stream(stream) = control {
                stream.cancel();
            }
        }
    }

    /// Applies a control frame: a `credit` grant or a `cancel` for request `id`.
    pub(crate) fn apply(&self, id: u64, credit: Option<u32>, cancel: bool) {
        let guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.get(&id) {
            Some(Control::Stream(stream)) => {
                if let Some(credit) = credit {
                    stream.grant(credit);
                }
                if cancel {
                    stream.cancel();
                }
            }
            Some(Control::Call(_)) if cancel => {
                drop(guard);
                if let Some(Control::Call(stop)) = self.remove(id) {
                    let _ = stop.send(());
                }
            }
            _ => tracing::trace!(id, "a control frame for a call that has ended"),
        }
    }
}

/// One stream's credit and cancel.
pub(crate) struct StreamControl {
    credit: Semaphore,
    cancelled: AtomicBool,
    wake: Notify,
}

impl StreamControl {
    fn new(window: u32) -> Self {
        StreamControl {
            credit: Semaphore::new(window as usize),
            cancelled: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn grant(&self, items: u32) {
        // A caller cannot make the semaphore overflow: grants beyond its maximum are capped.
        let room = Semaphore::MAX_PERMITS.saturating_sub(self.credit.available_permits());
        self.credit.add_permits((items as usize).min(room));
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    async fn cancelled(&self) {
        while !self.cancelled.load(Ordering::Acquire) {
            self.wake.notified().await;
        }
    }
}

/// A streaming handler registered with
/// [`VspManager::stream_endpoint`](crate::VspManager::stream_endpoint).
pub(crate) struct StreamEndpoint<F, A> {
    handler: F,
    _args: PhantomData<fn(A)>,
}

impl<F, A> StreamEndpoint<F, A> {
    pub(crate) fn new(handler: F) -> Self {
        StreamEndpoint {
            handler,
            _args: PhantomData,
        }
    }
}

/// What a streaming handler's future gives: the stream, or an error answered in its place.
pub(crate) trait Opening: Send + 'static {
    type Item: Serialize + Send + 'static;

    /// The stream, with the reply it owes; or `None` once `reply` has been answered with the
    /// error.
    fn open(self, reply: Reply) -> Option<(Streaming<Self::Item>, Reply)>;
}

/// A hand-registered stream's opening: the error's text is a `handler` error.
impl<T, E> Opening for Result<Streaming<T>, E>
where
    T: Serialize + Send + 'static,
    E: Display + Send + 'static,
{
    type Item = T;

    fn open(self, reply: Reply) -> Option<(Streaming<T>, Reply)> {
        match self {
            Ok(items) => Some((items, reply)),
            Err(err) => {
                reply.error(ErrorCode::Handler, &err.to_string());
                None
            }
        }
    }
}

/// A service method's `Result<Streaming<T>, E>`: the error travels typed, as unary ones do.
pub(crate) struct ServiceStreamResult<T, E>(
    pub(crate) Result<Streaming<T>, E>,
    pub(crate) super::endpoint::ErrorTextFn<E>,
);

impl<T, E> Opening for ServiceStreamResult<T, E>
where
    T: Serialize + Send + 'static,
    E: Serialize + Send + 'static,
{
    type Item = T;

    fn open(self, reply: Reply) -> Option<(Streaming<T>, Reply)> {
        match self.0 {
            Ok(items) => Some((items, reply)),
            Err(err) => {
                let text = self.1.map(|text| text(&err));
                reply.service_error(&err, text);
                None
            }
        }
    }
}

/// A service method's plain `Streaming<T>`.
pub(crate) struct ServiceStreamValue<T>(pub(crate) Streaming<T>);

impl<T: Serialize + Send + 'static> Opening for ServiceStreamValue<T> {
    type Item = T;

    fn open(self, reply: Reply) -> Option<(Streaming<T>, Reply)> {
        Some((self.0, reply))
    }
}

impl<F, A, Fut> Endpoint for StreamEndpoint<F, A>
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Opening,
{
    fn start(&self, body: &str, reply: Reply, call: CallContext, _cx: &mut Context<'_>) {
        if reply.stream_window.is_none() {
            let message = format!(
                "`{}` is a streaming endpoint: call it as a stream (VspClient::call_stream)",
                reply.endpoint()
            );
            reply.error(ErrorCode::NotSupported, &message);
            return;
        }
        let args = match serde_json::from_str::<A>(body) {
            Ok(args) => args,
            Err(err) => {
                let message = format!(
                    "invalid arguments for `{}`: {}",
                    reply.endpoint(),
                    super::endpoint::name_the_field::<A>(body, err)
                );
                reply.error(ErrorCode::BadRequest, &message);
                return;
            }
        };
        let opening = call.clone().sync_scoped(|| (self.handler)(args));
        tokio::spawn(drive(call.scoped(opening), reply));
    }
}

/// How a stream's wait ended, when not with what it waited for.
enum Stop {
    Cancelled,
    PastDeadline,
    ShuttingDown,
}

/// Runs one stream: the handler's opening, then items under the caller's credit, until the end,
/// an error, a cancel, the deadline or the server's shutdown.
async fn drive<Fut>(opening: Fut, reply: Reply)
where
    Fut: Future,
    Fut::Output: Opening,
{
    let conn: Arc<ServerConnection> = reply.conn.clone();
    let window = reply.stream_window.unwrap_or(DEFAULT_STREAM_WINDOW);
    let control = Arc::new(StreamControl::new(window));
    let id = reply.call_id();
    if let Some(id) = id {
        conn.controls.insert(id, Control::Stream(control.clone()));
    }
    let _forget = Forget(conn.clone(), id);
    let deadline = reply
        .timeout_ms
        .map(|ms| crate::deadline::after(tokio::time::Instant::now(), Duration::from_millis(ms)));
    let mut lifecycle = conn.manager().lifecycle();
    // Whatever ends a wait other than what it waits for.
    macro_rules! or_stop {
        ($wait:expr) => {
            tokio::select! {
                outcome = $wait => Ok(outcome),
                _ = control.cancelled() => Err(Stop::Cancelled),
                _ = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => Err(Stop::PastDeadline),
                _ = lifecycle.wait_for(|state| *state != Lifecycle::Running) => Err(Stop::ShuttingDown),
            }
        };
    }
    let ended = |reply: Reply, stop: Stop| match stop {
        // The caller is gone: nothing is sent; the reply settles as it drops.
        Stop::Cancelled => drop(reply),
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
    };
    let (mut items, reply) = match or_stop!(opening) {
        Ok(opened) => match opened.open(reply) {
            Some(opened) => opened,
            None => return,
        },
        Err(stop) => {
            // Not opened yet: an ordinary error answer (or none, for a cancel).
            match stop {
                Stop::Cancelled => {}
                Stop::PastDeadline => reply.error(
                    ErrorCode::Timeout,
                    "the caller's deadline passed before the stream opened",
                ),
                Stop::ShuttingDown => {
                    let message =
                        format!("service `{}` is shutting down", &reply.conn.manager().name);
                    reply.error(ErrorCode::ShuttingDown, &message);
                }
            }
            return;
        }
    };
    if reply.stream_frame(StreamFrame::Open, &()).is_err() {
        return;
    }
    let mut seq = 0u64;
    let manager = conn.manager.clone();
    // The items of one write, kept between writes so a stream allocates it once.
    let mut ready = Vec::new();
    loop {
        // The fast path, per item: a permit at hand and an item ready cost no timer, no
        // notification and no lifecycle watch; the full wait is for when one is missing.
        if control.cancelled.load(Ordering::Acquire) {
            return ended(reply, Stop::Cancelled);
        }
        if manager.state() != Lifecycle::Running {
            return ended(reply, Stop::ShuttingDown);
        }
        if deadline.is_some_and(|at| tokio::time::Instant::now() >= at) {
            return ended(reply, Stop::PastDeadline);
        }
        match control.credit.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::Closed) => return,
            Err(TryAcquireError::NoPermits) => match or_stop!(control.credit.acquire()) {
                Ok(Ok(permit)) => permit.forget(),
                Ok(Err(_closed)) => return,
                Err(stop) => return ended(reply, stop),
            },
        }
        let polled = std::future::poll_fn(|cx| Poll::Ready(items.poll_item(cx))).await;
        let next = match polled {
            Poll::Ready(next) => next,
            Poll::Pending => match or_stop!(std::future::poll_fn(|cx| items.poll_item(cx))) {
                Ok(next) => next,
                Err(stop) => return ended(reply, stop),
            },
        };
        let mut last = match next {
            Some(Ok(item)) => {
                ready.push(item);
                None
            }
            other => Some(other),
        };
        // More items at hand under the credit left join this one in a single write.
        while last.is_none() && ready.len() < MAX_BATCH {
            let Ok(permit) = control.credit.try_acquire() else {
                break;
            };
            match std::future::poll_fn(|cx| Poll::Ready(items.poll_item(cx))).await {
                Poll::Ready(Some(Ok(item))) => {
                    permit.forget();
                    ready.push(item);
                }
                Poll::Ready(other) => {
                    permit.forget();
                    last = Some(other);
                }
                // Not ready: the permit stays unused, for the next turn.
                Poll::Pending => break,
            }
        }
        if !ready.is_empty() {
            let sent = reply.stream_items(seq, &ready);
            seq += ready.len() as u64;
            ready.clear();
            if let Err((code, message)) = sent {
                return reply.stream_end(Some((code, &message)));
            }
        }
        match last {
            None | Some(Some(Ok(_))) => {}
            Some(Some(Err(message))) => {
                return reply.stream_end(Some((ErrorCode::Handler, &message)));
            }
            Some(None) => return reply.stream_end(None),
        }
        // A stream whose items are always ready must still let the runtime's other tasks run.
        tokio::task::consume_budget().await;
    }
}

/// Takes a call out of its connection's control table when its task ends, however it ends.
pub(crate) struct Forget(pub(crate) Arc<ServerConnection>, pub(crate) Option<u64>);

impl Drop for Forget {
    fn drop(&mut self) {
        if let Some(id) = self.1 {
            self.0.controls.forget(id);
        }
    }
}
