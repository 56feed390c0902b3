//! Endpoints: typed async handlers behind one object-safe trait, and the reply each call owes.

use std::any::Any;
use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Instrument;

use crate::__private::{Codec, ErrorWays, Wire};

use super::reply::Reply;
use super::stream::Forget;
use super::worker::Limited;
use super::Lifecycle;
use crate::context::Context as CallContext;
use crate::error::ErrorCode;
use tokio::sync::oneshot;

/// A registered endpoint with its argument and result types erased.
pub(crate) trait Endpoint: Send + Sync + 'static {
    /// Deserializes the arguments from `body` and starts the handler, which answers through
    /// `reply`. If the arguments do not fit, `reply` comes back with the deserializer's error.
    /// `cx` is the connection task's context, for a first poll of the handler in place.
    /// Arguments that do not fit are answered `bad_request`, naming the field. The handler runs
    /// inside `call` (what [`Context::current`](crate::Context::current) returns).
    fn start(&self, body: &str, reply: Reply, call: CallContext, cx: &mut Context<'_>);
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
    fn start(&self, _body: &str, reply: Reply, _call: CallContext, _cx: &mut Context<'_>) {
        reply.ok(&Health::now());
    }
}

/// The built-in `vsp.describe` endpoint: the service's description, read from its registry at
/// the time of the call (so endpoints added while serving are listed).
pub(crate) struct DescribeEndpoint;

impl Endpoint for DescribeEndpoint {
    fn start(&self, _body: &str, reply: Reply, _call: CallContext, _cx: &mut Context<'_>) {
        let description = reply.conn.manager().description();
        reply.ok(&description);
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

/// A service method's `Result<T, E>`: the error travels typed (through its codec `C`), for the
/// generated client, and as text, for Velithon's clients and for logs.
pub(crate) struct ServiceResult<T, E, C>(pub(crate) Result<T, Wire<E, C>>, pub(crate) ErrorWays<E>);

impl<T, E, C> Outcome for ServiceResult<T, E, C>
where
    T: Serialize + Send + 'static,
    E: Send + 'static,
    C: Codec<E>,
{
    fn send(self, reply: Reply) {
        match self.0 {
            Ok(value) => reply.ok(&value),
            Err(err) => {
                let (text, status) = self.1.of(&err.0);
                reply.service_error(&err, text, status);
            }
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
    fn start(&self, body: &str, reply: Reply, call: CallContext, cx: &mut Context<'_>) {
        if reply.stream_window.is_some() {
            let message = format!(
                "`{}` answers once: call it with `call`, not as a stream",
                reply.endpoint()
            );
            reply.error(ErrorCode::NotSupported, &message);
            return;
        }
        match serde_json::from_str::<A>(body) {
            Ok(args) => {
                // The handler function's own (synchronous) part runs in the context and the
                // span too, and a panic there is the call's error, not the connection's end.
                let span = reply.span().clone();
                let made = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    let _entered = (!span.is_disabled()).then(|| span.enter());
                    call.clone().sync_scoped(|| (self.handler)(args))
                }));
                match made {
                    // Not even a disabled span's enter and exit per poll while nobody records.
                    Ok(handler) if span.is_disabled() => {
                        run_handler(call.scoped(handler), reply, cx)
                    }
                    Ok(handler) => run_handler(call.scoped(handler).instrument(span), reply, cx),
                    Err(panic) => answer::<Fut::Output>(Err(panic), reply),
                }
            }
            Err(err) => {
                let message = format!(
                    "invalid arguments for `{}`: {}",
                    reply.endpoint(),
                    name_the_field::<A>(body, err)
                );
                reply.error(ErrorCode::BadRequest, &message);
            }
        }
    }
}

/// serde's error, with the path of the field it is about (`field `user.age`: invalid type ...`)
/// when its own text does not say (only `missing field` does). Found by deserializing again with
/// the path tracked: only the failing call pays for it.
pub(super) fn name_the_field<A: DeserializeOwned>(body: &str, err: serde_json::Error) -> String {
    if err.is_syntax() || err.is_eof() || err.to_string().starts_with("missing field") {
        return err.to_string();
    }
    let mut deserializer = serde_json::Deserializer::from_str(body);
    match serde_path_to_error::deserialize::<_, A>(&mut deserializer) {
        Err(tracked) if tracked.path().iter().next().is_some() => {
            format!("field `{}`: {err}", tracked.path())
        }
        _ => err.to_string(),
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
    manager.stats.active_workers.increment();
    let limiter = reply.entry.as_ref().and_then(|entry| entry.limiter.clone());
    let running = CatchUnwind {
        inner: Limited::new(handler, limiter),
    };
    if let Some(pool) = manager.worker_pool() {
        let cancel = cancellable(&reply);
        pool.spawn(finish_handler(running, reply, cancel));
        return;
    }
    let mut running = Box::pin(running);
    match running.as_mut().poll(cx) {
        Poll::Ready(outcome) => {
            manager.stats.active_workers.decrement();
            answer(outcome, reply);
        }
        Poll::Pending => {
            let cancel = cancellable(&reply);
            tokio::spawn(finish_handler(running, reply, cancel));
        }
    }
}

/// A handler that goes on as a task of its own can be cancelled by its caller (a `cancel`
/// frame for its request id): registered now, before the connection reads its next frame.
/// Handlers answered in place never are: they are done before a cancel could arrive.
fn cancellable(reply: &Reply) -> Option<(oneshot::Receiver<()>, Forget)> {
    reply
        .conn
        .controls
        .register_call(&reply.conn, reply.call_key())
}

/// How a handler running as its own task ended.
enum Ended<T> {
    Finished(Caught<T>),
    /// The caller's deadline passed first: the handler was dropped.
    PastDeadline(u64),
    /// The server closed after its drain timeout: nobody reads a reply.
    ServerClosed,
    /// The caller cancelled: the handler was dropped, nobody waits for a reply.
    Cancelled,
}

/// Drives a handler to completion as its own task, unless its deadline passes or the server
/// closes first.
async fn finish_handler<F, O>(
    running: F,
    reply: Reply,
    cancel: Option<(oneshot::Receiver<()>, Forget)>,
) where
    F: Future<Output = Caught<O>>,
    O: Outcome,
{
    let (cancelled, _forget) = match cancel {
        Some((cancelled, forget)) => (Some(cancelled), Some(forget)),
        None => (None, None),
    };
    let ended = {
        let mut lifecycle = reply.conn.manager().lifecycle();
        // Counted from the request's arrival.
        let deadline = reply.timeout_ms.map(|ms| {
            (
                crate::deadline::after(reply.received.into(), std::time::Duration::from_millis(ms)),
                ms,
            )
        });
        tokio::select! {
            outcome = running => Ended::Finished(outcome),
            Ok(()) = async {
                match cancelled {
                    Some(cancelled) => cancelled.await,
                    None => std::future::pending().await,
                }
            } => Ended::Cancelled,
            _ = lifecycle.wait_for(|state| *state == Lifecycle::Closed) => Ended::ServerClosed,
            // Its connection's reader stopped: the peer left, nobody reads an answer.
            _ = reply.conn.gone.wait() => Ended::Cancelled,
            _ = async {
                match deadline {
                    Some((at, _)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => Ended::PastDeadline(deadline.map_or(0, |(_, ms)| ms)),
        }
    };
    reply.conn.manager().stats.active_workers.decrement();
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
        Ended::Cancelled => {
            tracing::debug!(endpoint = reply.endpoint(), "cancelled by the caller");
        }
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
