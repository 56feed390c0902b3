//! Client and bidirectional streams over HTTP: a WebSocket per call.
//!
//! `GET /{service}/{endpoint}` upgraded to a WebSocket (the same host, origin, exposure and
//! forwarded-header checks as a call; the headers of the upgrade request are the call's
//! metadata, so the service's auth hook sees them). The caller's first text message is the
//! arguments object; each later one is `{"item": ITEM}`, and `{"end": true}` ends its stream
//! (the half-close). The gateway sends `{"item": ITEM}` for each answer (one for a client
//! stream), then `{"end": true}` and closes (1000); or `{"error": {"code", "message", ...},
//! "status": S}` with the status a unary call would have had, and closes with code `4000 + S`
//! (4404, 4401, 4501, ...). Every message is at most the gateway's body limit. Items from the
//! page wait while the service has no credit for them (the WebSocket is read no further, so the
//! browser's socket fills, not the gateway). A closed page (or a close without `{"end": true}`)
//! cancels the call on the service at once. The client's timeout bounds the whole call.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use futures_util::{SinkExt, StreamExt};

use super::*;

/// Items read from the page but not yet taken by the call.
const QUEUED_ITEMS: usize = 16;

/// What the caller sent after its arguments.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FromPage {
    #[serde(default)]
    item: Option<Box<RawValue>>,
    #[serde(default)]
    end: bool,
}

pub(super) async fn upgrade(
    State(gateway): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let (service, endpoint) = match path {
        Ok(Path(path)) => path,
        Err(rejection) => return bad_path(&rejection),
    };
    let Ok(upgrade) = upgrade else {
        return GatewayError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "call an endpoint with `POST /{service}/{endpoint}`; a `GET` there opens a WebSocket, for endpoints that take a stream",
        )
        .into_response();
    };
    if let Err(err) = gateway
        .admits(&headers)
        .and_then(|()| gateway.exposes(&service))
    {
        return err.into_response();
    }
    let options = gateway.call_options(&headers);
    let limit = gateway.max_body_bytes;
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| async move {
            run(&gateway, &service, &endpoint, socket, options).await;
        })
}

/// Serves one call over `socket`.
async fn run(
    gateway: &Gateway,
    service: &str,
    endpoint: &str,
    socket: WebSocket,
    options: CallOptions,
) {
    let (mut sink, mut from_page) = socket.split();
    let args = match next_text(&mut from_page).await {
        Some(Ok(text)) => text,
        Some(Err(problem)) => return refuse(&mut sink, &bad_request(problem)).await,
        None => return,
    };
    let args: Box<RawValue> = match serde_json::from_str(&args) {
        Ok(args) => args,
        Err(err) => {
            let problem = format!("the first message must be the arguments as JSON: {err}");
            return refuse(&mut sink, &bad_request(problem)).await;
        }
    };
    let (items, queued) = tokio::sync::mpsc::channel::<Box<RawValue>>(QUEUED_ITEMS);
    let opened = gateway
        .caller()
        .call_sending_json(service, endpoint, &args, ItemsOf(queued), options)
        .await;
    let mut answers = match opened {
        Ok(answers) => answers,
        Err((err, typed)) => {
            let error = GatewayError::from_vsp(&err, typed, gateway.expose_internals);
            return refuse(&mut sink, &error).await;
        }
    };
    // The page's messages go to the call on a task of their own: a page that sends nothing
    // holds up no answer.
    let (gone, mut page_left) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let why = read_items(&mut from_page, items).await;
        let _ = gone.send(why);
    });
    let _reader = AbortOnDrop(reader);
    let mut page_sends = true;
    loop {
        tokio::select! {
            answer = answers.next() => {
                let sent = match answer {
                    Some(Ok(item)) => {
                        let text = format!("{{\"item\":{}}}", item.get());
                        sink.send(Message::Text(text.into())).await
                    }
                    Some(Err(err)) => {
                        let typed = answers.typed_error_json();
                        let error = GatewayError::from_vsp(&err, typed, gateway.expose_internals);
                        return refuse(&mut sink, &error).await;
                    }
                    None => {
                        let _ = sink.send(Message::Text(Utf8Bytes::from_static("{\"end\":true}"))).await;
                        let _ = sink.send(Message::Close(Some(CloseFrame { code: 1000, reason: Utf8Bytes::from_static("") }))).await;
                        return;
                    }
                };
                if sent.is_err() {
                    // The page is gone: dropping the stream cancels the call.
                    return;
                }
            }
            why = &mut page_left, if page_sends => match why {
                // The page ended its stream (the sender is gone): the answers go on.
                Ok(Ok(())) => page_sends = false,
                // A bad message, or a page that closed without ending its stream: the call is
                // cancelled (its stream dropped while the page's sender still lives, so the
                // service never sees an end), and the page told why if it still listens.
                Ok(Err((problem, items))) => {
                    drop(answers);
                    drop(items);
                    return refuse(&mut sink, &bad_request(problem)).await;
                }
                Err(_) => return,
            },
        }
    }
}

/// Reads the page's items into `items` until `{"end": true}`, which drops `items` (the
/// half-close). A close without it, or a bad message, is `Err` with why, and `items` handed
/// back: the caller decides when it goes, after the call is cancelled.
async fn read_items(
    from_page: &mut futures_util::stream::SplitStream<WebSocket>,
    items: tokio::sync::mpsc::Sender<Box<RawValue>>,
) -> Result<(), (String, tokio::sync::mpsc::Sender<Box<RawValue>>)> {
    loop {
        let text = match next_text(from_page).await {
            Some(Ok(text)) => text,
            Some(Err(problem)) => return Err((problem, items)),
            None => {
                let problem = "the page closed before it ended its stream".to_owned();
                return Err((problem, items));
            }
        };
        let message: FromPage = match serde_json::from_str(&text) {
            Ok(message) => message,
            Err(err) => {
                let problem =
                    format!("a message must be {{\"item\": ...}} or {{\"end\": true}}: {err}");
                return Err((problem, items));
            }
        };
        if let Some(item) = message.item {
            if items.send(item).await.is_err() {
                // The call is over: nothing reads the page's items any more.
                return Ok(());
            }
        }
        if message.end {
            return Ok(());
        }
    }
}

/// The next text message; `None` when the page closed; binary messages are refused.
async fn next_text(
    from_page: &mut futures_util::stream::SplitStream<WebSocket>,
) -> Option<Result<String, String>> {
    loop {
        match from_page.next().await? {
            Ok(Message::Text(text)) => return Some(Ok(text.as_str().to_owned())),
            Ok(Message::Binary(_)) => {
                return Some(Err("messages must be text (JSON), not binary".to_owned()))
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
        }
    }
}

fn bad_request(problem: String) -> GatewayError {
    GatewayError::new(StatusCode::BAD_REQUEST, "bad_request", problem)
}

/// Sends `error` with its status and closes with `4000 + status`.
async fn refuse(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    error: &GatewayError,
) {
    let status = error.status.as_u16();
    let mut message: Value = serde_json::from_str(&error.to_json()).unwrap_or(Value::Null);
    message["status"] = status.into();
    let _ = sink.send(Message::Text(message.to_string().into())).await;
    let close = CloseFrame {
        code: 4000 + status,
        reason: Utf8Bytes::from_static(""),
    };
    let _ = sink.send(Message::Close(Some(close))).await;
}

/// The page's items, as the call's stream.
struct ItemsOf(tokio::sync::mpsc::Receiver<Box<RawValue>>);

impl futures_core::Stream for ItemsOf {
    type Item = Box<RawValue>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Box<RawValue>>> {
        self.0.poll_recv(cx)
    }
}

/// Aborts the page's reader when the call is over, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
