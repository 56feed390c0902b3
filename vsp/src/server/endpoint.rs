//! Endpoints: typed async handlers behind one object-safe trait, and the reply each call owes.

use std::any::Any;
use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use super::connection::{ResponseHead, ServerConnection};
use super::worker::Limited;
use super::{EndpointEntry, Lifecycle};
use crate::error::ErrorCode;
use crate::protocol::frame::encode_frame;
use crate::protocol::{write_error_body, write_json_str, write_response_header_end};

/// A registered endpoint with its argument and result types erased.
pub(crate) trait Endpoint: Send + Sync + 'static {
    /// Deserializes the arguments from `body` and starts the handler, which answers through
    /// `reply`. If the arguments do not fit, `reply` comes back with the deserializer's error.
    /// `cx` is the connection task's context, for a first poll of the handler in place.
    /// Arguments that do not fit are answered `bad_request`, naming the field.
    fn start(&self, body: &RawValue, reply: Reply, cx: &mut Context<'_>);
}

/// A handler function registered with [`VspManager::endpoint`](crate::VspManager::endpoint).
pub(crate) struct FnEndpoint<F, A> {
    handler: F,
    _args: PhantomData<fn(A)>,
}

impl<F, A> FnEndpoint<F, A> {
    pub(crate) fn new(handler: F) -> Self {
        FnEndpoint {
            handler,
            _args: PhantomData,
        }
    }
}

/// The built-in `health` endpoint, answered as Velithon does.
pub(crate) struct HealthEndpoint;

impl Endpoint for HealthEndpoint {
    fn start(&self, _body: &RawValue, reply: Reply, _cx: &mut Context<'_>) {
        reply.ok(&Health::now());
    }
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    timestamp: f64,
}

impl Health {
    fn now() -> Self {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_secs_f64())
            .unwrap_or(0.0);
        Health {
            status: "healthy",
            timestamp,
        }
    }
}

/// What a handler's result turns into on the wire.
pub(crate) trait Outcome: Send + 'static {
    fn send(self, reply: Reply);
}

/// A hand-registered endpoint's result: the value, or an error message.
impl<T, E> Outcome for Result<T, E>
where
    T: Serialize + Send + 'static,
    E: Display + Send + 'static,
{
    fn send(self, reply: Reply) {
        match self {
            Ok(value) => reply.ok(&value),
            Err(err) => reply.error(ErrorCode::Handler, &err.to_string()),
        }
    }
}

/// A service method's `Result<T, E>`: the error travels typed, for the generated client.
pub(crate) struct ServiceResult<T, E>(pub(crate) Result<T, E>);

impl<T, E> Outcome for ServiceResult<T, E>
where
    T: Serialize + Send + 'static,
    E: Serialize + Send + 'static,
{
    fn send(self, reply: Reply) {
        match self.0 {
            Ok(value) => reply.ok(&value),
            Err(err) => reply.service_error(&err),
        }
    }
}

/// A service method's plain return value.
pub(crate) struct ServiceValue<T>(pub(crate) T);

impl<T: Serialize + Send + 'static> Outcome for ServiceValue<T> {
    fn send(self, reply: Reply) {
        reply.ok(&self.0);
    }
}

impl<F, A, Fut> Endpoint for FnEndpoint<F, A>
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Outcome,
{
    fn start(&self, body: &RawValue, reply: Reply, cx: &mut Context<'_>) {
        match serde_json::from_str::<A>(body.get()) {
            Ok(args) => run_handler((self.handler)(args), reply, cx),
            Err(err) => {
                let message = format!("invalid arguments for `{}`: {err}", reply.endpoint());
                reply.error(ErrorCode::BadRequest, &message);
            }
        }
    }
}

/// A handler's outcome, or the panic that ended it.
type Caught<T> = Result<T, Box<dyn Any + Send>>;

/// Runs one handler to its answer.
///
/// Why the first poll happens here: most handlers finish without waiting, and polling them on the
/// connection's own task answers them without spawning, scheduling and waking a task each. A
/// handler that waits continues as a task of its own; in `Multicore` mode every handler runs on
/// the worker pool.
fn run_handler<Fut>(handler: Fut, reply: Reply, cx: &mut Context<'_>)
where
    Fut: Future + Send + 'static,
    Fut::Output: Outcome,
{
    let conn = reply.conn.clone();
    let manager = conn.manager();
    manager.stats.active_workers.fetch_add(1, Ordering::Relaxed);
    let limiter = reply.entry.as_ref().and_then(|entry| entry.limiter.clone());
    let running = CatchUnwind {
        inner: Limited::new(handler, limiter),
    };
    if let Some(pool) = manager.worker_pool() {
        pool.spawn(finish_handler(running, reply));
        return;
    }
    let mut running = Box::pin(running);
    match running.as_mut().poll(cx) {
        Poll::Ready(outcome) => {
            manager.stats.active_workers.fetch_sub(1, Ordering::Relaxed);
            answer(outcome, reply);
        }
        Poll::Pending => {
            tokio::spawn(finish_handler(running, reply));
        }
    }
}

/// How a handler running as its own task ended.
enum Ended<T> {
    Finished(Caught<T>),
    /// The caller's deadline passed first: the handler was dropped.
    PastDeadline(u64),
    /// The server closed after its drain timeout: nobody reads a reply.
    ServerClosed,
}

/// Drives a handler to completion as its own task, unless its deadline passes or the server
/// closes first.
async fn finish_handler<F, O>(running: F, reply: Reply)
where
    F: Future<Output = Caught<O>>,
    O: Outcome,
{
    let ended = {
        let mut lifecycle = reply.conn.manager().lifecycle();
        // Counted from the request's arrival; the clock is read only for handlers that wait.
        let deadline = reply.timeout_ms.map(|ms| {
            let arrived = reply
                .received
                .map_or_else(tokio::time::Instant::now, Into::into);
            (arrived + std::time::Duration::from_millis(ms), ms)
        });
        tokio::select! {
            outcome = running => Ended::Finished(outcome),
            _ = lifecycle.wait_for(|state| *state == Lifecycle::Closed) => Ended::ServerClosed,
            _ = async {
                match deadline {
                    Some((at, _)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => Ended::PastDeadline(deadline.map_or(0, |(_, ms)| ms)),
        }
    };
    reply
        .conn
        .manager()
        .stats
        .active_workers
        .fetch_sub(1, Ordering::Relaxed);
    match ended {
        Ended::Finished(outcome) => answer(outcome, reply),
        Ended::PastDeadline(ms) => {
            let message = format!(
                "`{}` was stopped: the caller's deadline of {ms} ms passed",
                reply.endpoint()
            );
            reply.error(ErrorCode::Timeout, &message);
        }
        Ended::ServerClosed => {}
    }
}

fn answer<O: Outcome>(outcome: Caught<O>, reply: Reply) {
    match outcome {
        Ok(outcome) => outcome.send(reply),
        Err(panic) => {
            let message = format!(
                "handler of `{}` panicked: {}",
                reply.endpoint(),
                panic_message(&*panic)
            );
            tracing::error!(endpoint = reply.endpoint(), "{message}");
            reply.error(ErrorCode::Handler, &message);
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

pin_project_lite::pin_project! {
    /// Turns a panic inside a handler into an error reply instead of a dead task.
    struct CatchUnwind<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        // The handler's state is dropped right after a panic, never polled again.
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// The answer one request owes. Dropping it unanswered (the server closed) still settles the
/// request's accounting, so `in_flight` can never leak.
pub(crate) struct Reply {
    conn: Arc<ServerConnection>,
    /// The response header up to and including `"is_response":true`.
    head: ResponseHead,
    /// The endpoint called; `None` for requests no endpoint took (unknown, malformed, refused).
    entry: Option<Arc<EndpointEntry>>,
    /// When the request arrived; `None` when stats are off.
    received: Option<Instant>,
    /// The accounting is done (see `settle`).
    settled: bool,
    /// The caller's remaining wait (`timeout_ms`), past which the handler is stopped.
    timeout_ms: Option<u64>,
}

impl Reply {
    pub(crate) fn new(
        conn: Arc<ServerConnection>,
        head: ResponseHead,
        entry: Option<Arc<EndpointEntry>>,
    ) -> Self {
        let manager = conn.manager();
        manager.stats.request_started();
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        let received = manager.stats_enabled().then(Instant::now);
        Reply {
            conn,
            head,
            entry,
            received,
            settled: false,
            timeout_ms: None,
        }
    }

    pub(crate) fn with_timeout(mut self, timeout_ms: Option<u64>) -> Self {
        self.timeout_ms = timeout_ms;
        self
    }

    fn endpoint(&self) -> &str {
        self.entry.as_ref().map_or("", |entry| &entry.name)
    }

    /// Answers with `value` as the body; a value that fails to serialize becomes a `handler`
    /// error.
    pub(crate) fn ok<T: Serialize + ?Sized>(mut self, value: &T) {
        self.settle(false);
        let pushed = self.conn.queue().push(|out| {
            encode_frame(out, |out| {
                self.head.write(out);
                write_response_header_end(out, None);
                serde_json::to_writer(&mut *out, value)?;
                out.push(b'}');
                Ok::<_, serde_json::Error>(())
            })
        });
        match pushed {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                let message = format!(
                    "cannot serialize the result of `{}`: {err}",
                    self.endpoint()
                );
                tracing::error!(endpoint = self.endpoint(), "{message}");
                // Already counted as a success: count the failure it turned out to be.
                if let Some(entry) = &self.entry {
                    entry.counters.count_error();
                }
                self.error(ErrorCode::Handler, &message);
            }
            Err(_closed) => {
                tracing::debug!(
                    endpoint = self.endpoint(),
                    "reply dropped: connection closed"
                )
            }
        }
    }

    /// Answers with a service method's typed error: code `handler`, the error as JSON under
    /// `data` for our clients, and as text under `error` for Velithon's.
    pub(crate) fn service_error<E: Serialize + ?Sized>(mut self, err: &E) {
        let data = match serde_json::value::to_raw_value(err) {
            Ok(data) => data,
            Err(ser) => {
                let message = format!("cannot serialize the error of `{}`: {ser}", self.endpoint());
                return self.error(ErrorCode::Handler, &message);
            }
        };
        // A string error reads as itself; anything else as its JSON.
        let message =
            serde_json::from_str::<String>(data.get()).unwrap_or_else(|_| data.get().to_owned());
        self.conn.manager().stats.error_sent(&ErrorCode::Handler);
        self.settle(true);
        let pushed = self.conn.queue().push(|out| {
            encode_frame(out, |out| {
                self.head.write(out);
                write_response_header_end(out, Some(&ErrorCode::Handler));
                out.extend_from_slice(b"{\"error\":");
                write_json_str(out, &message);
                out.extend_from_slice(b",\"data\":");
                out.extend_from_slice(data.get().as_bytes());
                out.extend_from_slice(b"}}");
                Ok::<_, std::convert::Infallible>(())
            })
        });
        if pushed.is_err() {
            tracing::debug!(
                endpoint = self.endpoint(),
                "error reply dropped: connection closed"
            );
        }
    }

    /// Answers with an error: `{"error": message}` in the body, `code` in the header.
    pub(crate) fn error(mut self, code: ErrorCode, message: &str) {
        self.conn.manager().stats.error_sent(&code);
        self.settle(true);
        let pushed = self.conn.queue().push(|out| {
            encode_frame(out, |out| {
                self.head.write(out);
                write_response_header_end(out, Some(&code));
                write_error_body(out, message);
                out.push(b'}');
                Ok::<_, std::convert::Infallible>(())
            })
        });
        if pushed.is_err() {
            tracing::debug!(
                endpoint = self.endpoint(),
                "error reply dropped: connection closed"
            );
        }
    }
}

impl Reply {
    /// Settles the request's accounting, once: before the answer is queued, so a caller that has
    /// its answer also finds it in the stats.
    fn settle(&mut self, failed: bool) {
        if self.settled {
            return;
        }
        self.settled = true;
        self.conn.in_flight.fetch_sub(1, Ordering::Relaxed);
        let elapsed = self.received.map(|received| received.elapsed());
        self.conn.manager().stats.request_finished(elapsed);
        if let (Some(entry), Some(elapsed)) = (&self.entry, elapsed) {
            entry.counters.record(elapsed, failed);
        }
    }
}

impl Drop for Reply {
    /// A reply dropped unanswered (the server closed) still settles, so `in_flight` never leaks.
    fn drop(&mut self) {
        self.settle(false);
    }
}
