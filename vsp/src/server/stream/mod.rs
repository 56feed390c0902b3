//! Server streams and cancellation: the per-connection table of calls a caller can still steer
//! (grant stream items, cancel), and the task that drives one stream under its credit.
//!
//! Why credit: the caller grants `n` items (`stream` on the request, then `credit` frames as it
//! reads); the server sends at most that many ahead, so a slow reader holds at most its window
//! of items in the server's write buffer, and one slow stream never fills the connection for
//! the others.

mod drive;
mod inbound;
mod register;

use drive::drive;
pub(crate) use inbound::{Inbound, InboundItems};
pub(crate) use register::one_item;
use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Context;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{oneshot, Notify, Semaphore};

use super::endpoint::Endpoint;
use super::ledger::{Gauge, Held};
use super::reply::{Reply, ServerConnection};
use crate::__private::{Codec, ErrorWays, Wire};
use crate::context::Context as CallContext;
use crate::error::ErrorCode;
use crate::protocol::StreamFrame;
use crate::stream::Streaming;

/// The most items one write of a stream carries.
pub(super) const MAX_BATCH: usize = 128;

/// What a caller can still do to one of its calls on this connection.
pub(crate) enum Control {
    /// A call running as a task of its own (a handler that waits, or a pending auth check):
    /// sending (or dropping) stops it.
    Call(oneshot::Sender<()>),
    /// A stream.
    Stream(Arc<StreamControl>),
}

/// A request id as control frames name it: our clients' integers without an allocation, any
/// other JSON value by its text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum CallKey {
    Int(u64),
    Text(Box<str>),
}

/// Ids longer than this are not kept as keys (their calls still end with the connection); it
/// bounds what one entry of the table costs.
const MAX_KEY_LEN: usize = 256;

impl CallKey {
    /// The key of the raw JSON request id `raw`; `None` for ids too long to keep.
    pub(crate) fn of(raw: &str) -> Option<CallKey> {
        if let Some(id) = crate::protocol::parse_int_text(raw) {
            return Some(CallKey::Int(id));
        }
        (raw.len() <= MAX_KEY_LEN).then(|| CallKey::Text(raw.into()))
    }
}

impl std::fmt::Display for CallKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallKey::Int(id) => write!(f, "{id}"),
            CallKey::Text(text) => f.write_str(text),
        }
    }
}

/// A live call already holds the request id another one asked for.
#[derive(Debug)]
pub(crate) struct IdInUse;

/// The calls of one connection that a caller can steer, by request id.
///
/// Bounds: one entry per call in flight on the connection (at most
/// `max_requests_per_connection`), each at most `MAX_KEY_LEN` bytes of key. Ends: an entry is
/// removed when its call ends (its [`Forget`] drops), and the table is emptied when the
/// connection's reader stops.
#[derive(Default)]
pub(crate) struct Controls(Mutex<ControlTable>);

#[derive(Default)]
pub(crate) struct ControlTable {
    calls: HashMap<CallKey, (u64, Control)>,
    /// The generation of the next entry: a [`Forget`] removes only its own entry, never a later
    /// call's that reused the id.
    next: u64,
}

impl Controls {
    fn table(&self) -> std::sync::MutexGuard<'_, ControlTable> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `control` under `key`, unless a live call holds that id. Registered at dispatch,
    /// before the call's task is spawned, so a control frame or the connection's end read next
    /// always finds it.
    pub(crate) fn register(
        &self,
        conn: &Arc<ServerConnection>,
        key: CallKey,
        control: Control,
    ) -> Result<Forget, IdInUse> {
        let mut table = self.table();
        let generation = table.next;
        match table.calls.entry(key.clone()) {
            std::collections::hash_map::Entry::Occupied(_) => return Err(IdInUse),
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert((generation, control));
            }
        }
        table.next += 1;
        Ok(Forget {
            conn: conn.clone(),
            key,
            generation,
        })
    }

    /// Registers a call that goes on as a task of its own; the receiver fires on cancel. `None`
    /// when its id cannot be kept or is taken (the call still ends with its connection).
    pub(crate) fn register_call(
        &self,
        conn: &Arc<ServerConnection>,
        key: Option<CallKey>,
    ) -> Option<(oneshot::Receiver<()>, Forget)> {
        let (cancel, cancelled) = oneshot::channel();
        let forget = self.register(conn, key?, Control::Call(cancel)).ok()?;
        Some((cancelled, forget))
    }

    /// Forgets a call or stream that ended (if the entry is still its own).
    fn forget(&self, key: &CallKey, generation: u64) -> Option<Control> {
        let mut table = self.table();
        if table.calls.get(key).is_some_and(|(g, _)| *g == generation) {
            return table.calls.remove(key).map(|(_, control)| control);
        }
        None
    }

    /// The connection's reader stopped: no control frame can come any more. The entries go (the
    /// calls themselves end on the connection's [`PeerGone`]).
    pub(crate) fn clear(&self) {
        let calls = std::mem::take(&mut self.table().calls);
        drop(calls);
    }

    /// Hands an item or the end of a caller's stream to its call; a frame that breaks the
    /// rules (more items than granted, out of order, after the end) fails that call alone.
    pub(crate) fn stream_frame(
        &self,
        conn: &ServerConnection,
        key: &CallKey,
        frame: StreamFrame,
        body: &[u8],
    ) {
        let stream = match self.table().calls.get(key) {
            Some((_, Control::Stream(stream))) => stream.clone(),
            _ => {
                tracing::trace!(%key, "an item of a call that has ended");
                return;
            }
        };
        let Some(inbound) = &stream.inbound else {
            stream.fail(
                ErrorCode::Protocol,
                "an item arrived for a call that did not ask to send a stream".to_owned(),
            );
            return;
        };
        let refused = match frame {
            StreamFrame::Item(seq) => inbound.push(conn, seq, body).err(),
            StreamFrame::End => {
                inbound.end();
                None
            }
            StreamFrame::Open => Some("a caller cannot open a stream".to_owned()),
        };
        if let Some(message) = refused {
            stream.fail(ErrorCode::Protocol, message);
        }
    }

    /// Applies a control frame: a `credit` grant or a `cancel` for request `key`.
    pub(crate) fn apply(&self, key: &CallKey, credit: Option<u32>, cancel: bool) {
        let mut table = self.table();
        match table.calls.get(key) {
            Some((_, Control::Stream(stream))) => {
                if let Some(credit) = credit {
                    stream.grant(credit);
                }
                if cancel {
                    stream.cancel();
                }
            }
            Some((_, Control::Call(_))) if cancel => {
                if let Some((_, Control::Call(stop))) = table.calls.remove(key) {
                    drop(table);
                    let _ = stop.send(());
                }
            }
            _ => tracing::trace!(%key, "a control frame for a call that has ended"),
        }
    }
}

/// Set once a connection's reader has stopped (the peer left, broke the protocol, stalled, or the
/// server closed): every call and stream of that connection ends then, whatever its id, so
/// nothing a gone peer started holds a task, a slot or the socket.
#[derive(Default)]
pub(crate) struct PeerGone {
    gone: AtomicBool,
    wake: Notify,
}

impl PeerGone {
    pub(crate) fn set(&self) {
        self.gone.store(true, Ordering::Release);
        self.wake.notify_waiters();
    }

    pub(crate) fn is_set(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// Returns once the reader has stopped.
    pub(crate) async fn wait(&self) {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            // Registered before the check: a `set` between the check and the await still wakes.
            woken.as_mut().enable();
            if self.is_set() {
                return;
            }
            woken.await;
        }
    }
}

/// One stream's credit and cancel.
pub(crate) struct StreamControl {
    pub(super) credit: Semaphore,
    /// The most items a caller may have granted and not yet received (the server's
    /// `max_stream_window`): neither the window nor any credit takes the grant past it.
    max_window: usize,
    pub(super) cancelled: AtomicBool,
    wake: Notify,
    /// The caller's own items, for a client or bidirectional stream.
    pub(crate) inbound: Option<Inbound>,
    /// Why the call failed on the caller's side (a bad item): the error its end frame carries.
    failure: Mutex<Option<(ErrorCode, String)>>,
}

impl StreamControl {
    pub(crate) fn new(window: u32, max_window: u32) -> Self {
        let max_window = max_window as usize;
        StreamControl {
            credit: Semaphore::new((window as usize).min(max_window)),
            max_window,
            cancelled: AtomicBool::new(false),
            wake: Notify::new(),
            inbound: None,
            failure: Mutex::new(None),
        }
    }

    /// The same, receiving the caller's items too.
    pub(crate) fn with_inbound(mut self, inbound: Inbound) -> Self {
        self.inbound = Some(inbound);
        self
    }

    /// Ends the call with an error from the caller's side (the first one counts).
    pub(crate) fn fail(&self, code: ErrorCode, message: String) {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert((code, message));
        self.cancel();
    }

    /// The error the call failed with on the caller's side, if any.
    pub(super) fn take_failure(&self) -> Option<(ErrorCode, String)> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn grant(&self, items: u32) {
        // Capped by the server's maximum window (which also keeps the semaphore from overflowing).
        let room = self
            .max_window
            .saturating_sub(self.credit.available_permits());
        self.credit.add_permits((items as usize).min(room));
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    pub(super) async fn cancelled(&self) {
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
pub(crate) struct ServiceStreamResult<T, E, C>(
    pub(crate) Result<Streaming<T>, Wire<E, C>>,
    pub(crate) ErrorWays<E>,
);

impl<T, E, C> Opening for ServiceStreamResult<T, E, C>
where
    T: Serialize + Send + 'static,
    E: Send + 'static,
    C: Codec<E>,
{
    type Item = T;

    fn open(self, reply: Reply) -> Option<(Streaming<T>, Reply)> {
        match self.0 {
            Ok(items) => Some((items, reply)),
            Err(err) => {
                let (text, status) = self.1.of(&err.0);
                reply.service_error(&err, text, status);
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
        if reply.client_stream {
            let message = format!(
                "`{}` sends a stream but takes none: call it as a stream (VspClient::call_stream)",
                reply.endpoint()
            );
            return reply.error(ErrorCode::NotSupported, &message);
        }
        let Some((args, reply, control, held)) = accept::<A>(body, reply, None) else {
            return;
        };
        let opening = call.clone().sync_scoped(|| (self.handler)(args));
        tokio::spawn(drive(call.scoped(opening), reply, control, held));
    }
}

/// A handler that takes the caller's stream of `T` beside its arguments (a client or
/// bidirectional stream), registered with
/// [`VspManager::client_stream_endpoint`](crate::VspManager::client_stream_endpoint) or
/// [`VspManager::bidi_stream_endpoint`](crate::VspManager::bidi_stream_endpoint).
pub(crate) struct ItemsEndpoint<F, A, T> {
    handler: F,
    _args: PhantomData<fn(A, T)>,
}

impl<F, A, T> ItemsEndpoint<F, A, T> {
    pub(crate) fn new(handler: F) -> Self {
        ItemsEndpoint {
            handler,
            _args: PhantomData,
        }
    }
}

impl<F, A, T, Fut> Endpoint for ItemsEndpoint<F, A, T>
where
    F: Fn(A, Streaming<T>) -> Fut + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    T: DeserializeOwned + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Opening,
{
    fn start(&self, body: &str, reply: Reply, call: CallContext, _cx: &mut Context<'_>) {
        if !reply.client_stream || reply.stream_window.is_none() {
            let message = format!(
                "`{}` takes a stream of items: call it with VspClient::call_client_stream or call_bidi_stream",
                reply.endpoint()
            );
            return reply.error(ErrorCode::NotSupported, &message);
        }
        let Some(key) = reply.call_key() else {
            return reply.error(
                ErrorCode::BadRequest,
                "the request id of a call that sends a stream must be at most 256 bytes",
            );
        };
        let inbound = Inbound::new(reply.conn.manager().config.client_stream_window);
        let window = inbound.first_window();
        let Some((args, mut reply, control, held)) = accept::<A>(body, reply, Some(inbound)) else {
            return;
        };
        // Open at once: the caller may send nothing before it has credit, and the handler may
        // wait for an item before it answers.
        if reply.open_for_items(window).is_err() {
            return;
        }
        let endpoint: Arc<str> = reply.endpoint().into();
        let items = Streaming::from_inbound(InboundItems::<T>::new(
            control.clone(),
            reply.conn.clone(),
            key,
            endpoint,
        ));
        let opening = call.clone().sync_scoped(|| (self.handler)(args, items));
        tokio::spawn(drive(call.scoped(opening), reply, control, held));
    }
}

/// What a started stream holds until it ends: its entry in the control table, and its place in
/// the count of open streams.
type HeldStream = (Option<Forget>, Held);

/// The checks a streaming call meets before its handler: asked as a stream, its arguments, its
/// entry in the connection's control table. `None` when one refused it (and answered).
fn accept<A: DeserializeOwned>(
    body: &str,
    reply: Reply,
    inbound: Option<Inbound>,
) -> Option<(A, Reply, Arc<StreamControl>, HeldStream)> {
    let Some(window) = reply.stream_window else {
        let message = format!(
            "`{}` is a streaming endpoint: call it as a stream (VspClient::call_stream)",
            reply.endpoint()
        );
        reply.error(ErrorCode::NotSupported, &message);
        return None;
    };
    let args = match serde_json::from_str::<A>(body) {
        Ok(args) => args,
        Err(err) => {
            let message = format!(
                "invalid arguments for `{}`: {}",
                reply.endpoint(),
                super::endpoint::name_the_field::<A>(body, err)
            );
            reply.error(ErrorCode::BadRequest, &message);
            return None;
        }
    };
    let conn = reply.conn.clone();
    let mut control = StreamControl::new(window, conn.manager().config.max_stream_window);
    if let Some(inbound) = inbound {
        control = control.with_inbound(inbound);
    }
    let control = Arc::new(control);
    // Registered now, before the connection reads its next frame (a credit, a cancel, an item,
    // or its end), and never over a live call's entry.
    let forget = match reply.call_key() {
        None => None,
        Some(key) => match conn
            .controls
            .register(&conn, key, Control::Stream(control.clone()))
        {
            Ok(forget) => Some(forget),
            Err(IdInUse) => {
                let message = format!(
                    "request id {} is already in use by a live call on this connection",
                    crate::protocol::short_text(reply.request_id_text(), 64)
                );
                reply.error(ErrorCode::BadRequest, &message);
                return None;
            }
        },
    };
    let open = Held::new(conn.manager.clone(), Gauge::StreamsOpen);
    Some((args, reply, control, (forget, open)))
}

/// Takes a call out of its connection's control table when its task ends, however it ends.
pub(crate) struct Forget {
    conn: Arc<ServerConnection>,
    key: CallKey,
    generation: u64,
}

impl Drop for Forget {
    fn drop(&mut self) {
        let forgotten = self.conn.controls.forget(&self.key, self.generation);
        // The caller's items still held are let go with the call.
        if let Some(Control::Stream(stream)) = forgotten {
            if let Some(inbound) = &stream.inbound {
                inbound.close(&self.conn);
            }
        }
    }
}
