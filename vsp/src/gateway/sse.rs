//! A streaming endpoint over HTTP: its items as Server-Sent Events.
//!
//! Asked with `Accept: text/event-stream`, the gateway opens the stream through the mesh like
//! any call (the same body limit, forwarded headers, auth and admission checks), and answers:
//! a failure before the stream opens with the unary status mapping (a JSON error), else `200`
//! with `Content-Type: text/event-stream` and one event per item, `event: item` with the item's
//! JSON as `data`, then `event: end` (`data: null`), or `event: error` with the error's JSON
//! (`{"error":{"code","message"}}`, as a unary error's body) when the stream fails midway (its
//! deadline, the handler's error, the server's shutdown). The client's timeout bounds the whole
//! stream, as for [`VspClient::call_stream`](crate::VspClient::call_stream). An HTTP caller that
//! goes away (a closed page) drops the stream, which cancels the call on the server at once.
//! Comments every 15 s keep idle connections open through proxies. Event streams are never
//! compressed (each event must reach the page as it is sent).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_core::Stream;

use super::*;
use crate::client::CallStream;

/// Opens `endpoint`'s stream and answers with its items as events.
pub(super) async fn respond(
    gateway: &Gateway,
    service: &str,
    endpoint: &str,
    args: &RawValue,
    options: CallOptions,
) -> Response {
    match gateway
        .caller()
        .call_stream_json(service, endpoint, args, options)
        .await
    {
        Ok(items) => Sse::new(Events {
            items,
            internals: gateway.expose_internals,
            done: false,
        })
        .keep_alive(KeepAlive::default())
        .into_response(),
        Err((err, typed)) => {
            GatewayError::from_vsp(&err, typed, gateway.expose_internals).into_response()
        }
    }
}

/// A call's items as events, then its end (or its error).
struct Events {
    items: CallStream<Box<RawValue>>,
    internals: bool,
    done: bool,
}

impl Stream for Events {
    type Item = Result<Event, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let event = match std::task::ready!(Pin::new(&mut self.items).poll_next(cx)) {
            Some(Ok(item)) => Event::default().event("item").data(item.get()),
            Some(Err(err)) => {
                self.done = true;
                let error = GatewayError::from_vsp(&err, None, self.internals);
                Event::default().event("error").data(error.to_json())
            }
            None => {
                self.done = true;
                Event::default().event("end").data("null")
            }
        };
        Poll::Ready(Some(Ok(event)))
    }
}
