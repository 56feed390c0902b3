//! A caller's own stream of items on the server (a client or bidirectional stream): the items
//! it sent that the handler has not read yet, and the credit granted back as the handler reads.
//!
//! Bound: the caller may send only what it was granted: 32 items up front, then what the handler
//! read, granted back half a window at a time; the window doubles at each grant while the items
//! held are under 1 MiB, up to the server's `client_stream_window`. Whatever the window, the
//! bytes held count against the connection's request-byte budget
//! (`max_request_bytes_per_connection`): an item past it, or beyond its credit, is a protocol
//! error that ends the call (the connection carries on). End: the caller's `end` frame ends the
//! handler's stream; a cancel, the peer leaving, the deadline or the server's shutdown ends the
//! whole call, and its held items are let go with it.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_core::Stream;
use serde::de::DeserializeOwned;

use super::{CallKey, StreamControl};
use crate::error::ErrorCode;
use crate::protocol::frame::encode_frame;
use crate::protocol::{write_envelope, Extensions, HeaderOut, RequestIdOut};
use crate::server::reply::ServerConnection;

/// The first window of a caller's stream.
pub(crate) const FIRST_WINDOW: u32 = 32;

/// The window widens while the items held are under this many bytes.
const WIDEN_BELOW: usize = 1024 * 1024;

/// The items a caller sent and the handler has not read.
pub(crate) struct Inbound {
    state: Mutex<InboundState>,
    /// The widest window (`client_stream_window`).
    max_window: u32,
}

struct InboundState {
    items: VecDeque<Bytes>,
    /// The bytes of `items`, charged to the connection's request-byte budget.
    bytes: usize,
    /// Items the caller may still send: granted, not yet received.
    outstanding: u32,
    /// The items granted ahead of what the handler has read.
    window: u32,
    /// Nobody reads any more (the call is over): items are dropped as they come.
    closed: bool,
    /// The next item's sequence number.
    next_seq: u64,
    /// The caller sent its `end`.
    ended: bool,
    /// The handler's stream, waiting for an item.
    waker: Option<Waker>,
}

impl Inbound {
    /// A caller's stream, its window widening up to `max_window`.
    pub(crate) fn new(max_window: u32) -> Self {
        let window = FIRST_WINDOW.min(max_window);
        Inbound {
            state: Mutex::new(InboundState {
                items: VecDeque::new(),
                bytes: 0,
                outstanding: window,
                window,
                closed: false,
                next_seq: 0,
                ended: false,
                waker: None,
            }),
            max_window,
        }
    }

    /// The items granted up front.
    pub(crate) fn first_window(&self) -> u32 {
        self.state().window
    }

    /// The call is over: the items held are let go (and their bytes given back to `conn`'s
    /// budget), later ones dropped as they come. Idempotent.
    pub(crate) fn close(&self, conn: &ServerConnection) {
        let mut state = self.state();
        state.closed = true;
        state.items.clear();
        let bytes = std::mem::take(&mut state.bytes);
        conn.large_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, InboundState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An item the caller sent (its body, copied out of the read buffer so that a held item
    /// pins nothing else). `Err` with why when the caller broke the rules (more than its credit,
    /// out of order, after its end).
    pub(crate) fn push(
        &self,
        conn: &ServerConnection,
        seq: u64,
        body: &[u8],
    ) -> Result<(), String> {
        let mut state = self.state();
        if state.ended {
            return Err("an item arrived after the caller's end of its stream".to_owned());
        }
        if seq != state.next_seq {
            return Err(format!(
                "item {seq} of the caller's stream arrived where item {} was due",
                state.next_seq
            ));
        }
        if state.outstanding == 0 {
            return Err(format!(
                "the caller sent more items than it was granted (a window of {})",
                state.window
            ));
        }
        if state.closed {
            // Nobody reads: the item is dropped (its credit is not given back).
            state.outstanding -= 1;
            state.next_seq += 1;
            return Ok(());
        }
        let budget = conn.manager().config.max_request_bytes_per_connection;
        let held = conn.large_bytes.fetch_add(body.len(), Ordering::AcqRel) + body.len();
        if held > budget {
            conn.large_bytes.fetch_sub(body.len(), Ordering::AcqRel);
            return Err(format!(
                "the caller's items held unread would pass the connection's budget of {budget} bytes"
            ));
        }
        state.outstanding -= 1;
        state.next_seq += 1;
        state.bytes += body.len();
        state.items.push_back(Bytes::copy_from_slice(body));
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        Ok(())
    }

    /// The caller half-closed: no more items come.
    pub(crate) fn end(&self) {
        let mut state = self.state();
        state.ended = true;
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }
}

/// The handler's view of the caller's items: each decoded as `T`; credit goes back to the
/// caller as they are read. An item that does not decode fails the call (`bad_request`) and
/// the stream waits for the driver to end it.
pub(crate) struct InboundItems<T> {
    control: Arc<StreamControl>,
    conn: Arc<ServerConnection>,
    key: CallKey,
    /// Items read since the last grant.
    read: u32,
    endpoint: Arc<str>,
    _items: PhantomData<fn() -> T>,
}

impl<T> InboundItems<T> {
    pub(crate) fn new(
        control: Arc<StreamControl>,
        conn: Arc<ServerConnection>,
        key: CallKey,
        endpoint: Arc<str>,
    ) -> Self {
        InboundItems {
            control,
            conn,
            key,
            read: 0,
            endpoint,
            _items: PhantomData,
        }
    }

    /// Grants the caller the items read since the last grant, once they are half a window; the
    /// window doubles while the items held are few bytes.
    fn grant(&mut self, inbound: &Inbound) {
        self.read += 1;
        let credit = {
            let mut state = inbound.state();
            if state.ended || self.read < (state.window / 2).max(1) {
                return;
            }
            let mut credit = std::mem::take(&mut self.read);
            if state.bytes < WIDEN_BELOW && state.window < inbound.max_window {
                let wider = state.window.min(inbound.max_window - state.window);
                state.window += wider;
                credit += wider;
            }
            state.outstanding += credit;
            credit
        };
        let request_id = match &self.key {
            CallKey::Int(id) => RequestIdOut::Int(*id),
            CallKey::Text(raw) => RequestIdOut::Raw(raw),
        };
        let header = HeaderOut {
            request_id,
            service: "",
            endpoint: "",
            is_response: true,
        };
        let extensions = Extensions {
            credit: Some(credit),
            ..Extensions::response(None)
        };
        let _ = self.conn.queue().push(|out| {
            encode_frame(out, |out| {
                write_envelope(out, &header, &extensions, |out| {
                    out.extend_from_slice(b"{}");
                    Ok::<_, std::convert::Infallible>(())
                })
            })
        });
    }
}

impl<T: DeserializeOwned> Stream for InboundItems<T> {
    type Item = Result<T, String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let control = this.control.clone();
        let Some(inbound) = control.inbound.as_ref() else {
            return Poll::Ready(None);
        };
        let body = {
            let mut state = inbound.state();
            match state.items.pop_front() {
                Some(body) => {
                    state.bytes -= body.len();
                    this.conn
                        .large_bytes
                        .fetch_sub(body.len(), Ordering::AcqRel);
                    body
                }
                None if state.ended => return Poll::Ready(None),
                None => {
                    state.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        };
        match serde_json::from_slice::<T>(&body) {
            Ok(item) => {
                this.grant(inbound);
                Poll::Ready(Some(Ok(item)))
            }
            Err(err) => {
                let message = format!(
                    "an item of the caller's stream to `{}` is not a valid item: {err}",
                    this.endpoint
                );
                control.fail(ErrorCode::BadRequest, message);
                // The driver ends the call; nothing more is read.
                Poll::Pending
            }
        }
    }
}

impl<T> Drop for InboundItems<T> {
    fn drop(&mut self) {
        // The handler reads no more: what is held is let go.
        if let Some(inbound) = &self.control.inbound {
            inbound.close(&self.conn);
        }
    }
}
