//! A caller's own stream of items on the server (a client or bidirectional stream): the items
//! it sent that the handler has not read yet, and the credit granted back as the handler reads.
//!
//! Bound: the caller may send only what it was granted (the server's `client_stream_window`
//! up front, then half a window at a time as the handler reads), so at most a window of items
//! is held, each at most the largest frame; an item beyond its credit is a protocol error that
//! ends the call. End: the caller's `end` frame ends the handler's stream; a cancel, the peer
//! leaving, the deadline or the server's shutdown ends the whole call, and this with it.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::pin::Pin;
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

/// The items a caller sent and the handler has not read.
pub(crate) struct Inbound {
    state: Mutex<InboundState>,
    window: u32,
}

struct InboundState {
    items: VecDeque<Bytes>,
    /// Items the caller may still send: granted, not yet received.
    outstanding: u32,
    /// The next item's sequence number.
    next_seq: u64,
    /// The caller sent its `end`.
    ended: bool,
    /// The handler's stream, waiting for an item.
    waker: Option<Waker>,
}

impl Inbound {
    pub(crate) fn new(window: u32) -> Self {
        Inbound {
            state: Mutex::new(InboundState {
                items: VecDeque::new(),
                outstanding: window,
                next_seq: 0,
                ended: false,
                waker: None,
            }),
            window,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, InboundState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An item the caller sent (its body, copied out of the read buffer so that a held item
    /// pins nothing else). `Err` with why when the caller broke the rules (more than its credit,
    /// out of order, after its end).
    pub(crate) fn push(&self, seq: u64, body: &[u8]) -> Result<(), String> {
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
                self.window
            ));
        }
        state.outstanding -= 1;
        state.next_seq += 1;
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

    /// Grants the caller the items read since the last grant, once they are half a window.
    fn grant(&mut self, inbound: &Inbound) {
        self.read += 1;
        if self.read < (inbound.window / 2).max(1) {
            return;
        }
        let credit = std::mem::take(&mut self.read);
        inbound.state().outstanding += credit;
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
                Some(body) => body,
                None if state.ended => return Poll::Ready(None),
                None => {
                    state.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        };
        match serde_json::from_slice::<T>(&body) {
            Ok(item) => {
                if !inbound.state().ended {
                    this.grant(inbound);
                }
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
