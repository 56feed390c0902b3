//! Client and bidirectional streams through the gateway over a WebSocket, over real HTTP: items
//! both ways in order, a client stream's one answer, errors before and after the call opens
//! (with the unary statuses in the close code), the auth hook with the upgrade's headers, bad
//! messages, and a page that goes away (which cancels the call on the service).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use vsp::gateway::Gateway;
use vsp::{ServiceInfo, ServiceMesh, Streaming, VspClient, VspManager};
use vsp_test_support::wait_until;

use super::serve_http;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// `sum` adds the numbers sent (refusing negative ones, typed), `shout` answers each line in
/// capitals, `hold` reads nothing and never answers (its drop is flagged).
fn pipes(held_dropped: Arc<AtomicBool>, builder: vsp::VspManagerBuilder) -> VspManager {
    let manager = builder.build();
    manager
        .client_stream_endpoint("sum", |_: Value, numbers: Streaming<i64>| async move {
            let mut sum = 0;
            let mut numbers = numbers;
            while let Some(n) = numbers.next().await {
                if n < 0 {
                    return Err(format!("{n} is negative"));
                }
                sum += n;
            }
            Ok(sum)
        })
        .unwrap();
    manager
        .bidi_stream_endpoint("shout", |_: Value, lines: Streaming<String>| async move {
            Ok::<_, String>(Streaming::new(lines.map(|line| line.to_uppercase())))
        })
        .unwrap();
    manager
        .client_stream_endpoint("hold", move |_: Value, _numbers: Streaming<i64>| {
            let guard = DropFlag(held_dropped.clone());
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Ok::<_, String>(0)
            }
        })
        .unwrap();
    manager
}

async fn gateway_of(manager: &VspManager) -> String {
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new("pipes", "127.0.0.1", addr.port()))
        .unwrap();
    let client = VspClient::builder(mesh)
        .timeout(Duration::from_secs(10))
        .build();
    let base = serve_http(
        Gateway::new(client)
            .service("pipes")
            .max_body_bytes(4096)
            .into_router(),
    )
    .await;
    base.replacen("http://", "ws://", 1)
}

async fn connect(base: &str, endpoint: &str, token: Option<&str>) -> Socket {
    let mut request = format!("{base}/pipes/{endpoint}")
        .into_client_request()
        .unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", token.parse().unwrap());
    }
    let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::text(message.to_string()))
        .await
        .unwrap();
}

/// The messages until the gateway closes, and its close code (bounded).
async fn until_closed(socket: &mut Socket) -> (Vec<Value>, Option<u16>) {
    let mut messages = Vec::new();
    let read = async {
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Text(text)) => messages.push(serde_json::from_str(&text).unwrap()),
                Ok(Message::Close(frame)) => return frame.map(|frame| u16::from(frame.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    };
    let code = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the gateway did not close the WebSocket within 10 s");
    (messages, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_sends_items_and_reads_answers_over_a_websocket() {
    let manager = pipes(Arc::default(), VspManager::builder("pipes"));
    let base = gateway_of(&manager).await;

    // A client stream: the arguments, the items, the end; then the one answer and the end.
    let mut socket = connect(&base, "sum", None).await;
    send(&mut socket, json!({})).await;
    for n in 1..=100 {
        send(&mut socket, json!({ "item": n })).await;
    }
    send(&mut socket, json!({ "end": true })).await;
    let (messages, code) = until_closed(&mut socket).await;
    assert_eq!(messages, vec![json!({"item": 5050}), json!({"end": true})]);
    assert_eq!(code, Some(1000));

    // A bidirectional stream: each answer as its item is sent, before the page's end.
    let mut socket = connect(&base, "shout", None).await;
    send(&mut socket, json!({})).await;
    for line in ["hello", "world"] {
        send(&mut socket, json!({ "item": line })).await;
        let answer = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("no answer to an item within 10 s")
            .unwrap()
            .unwrap();
        let answer: Value = serde_json::from_str(answer.to_text().unwrap()).unwrap();
        assert_eq!(answer, json!({ "item": line.to_uppercase() }));
    }
    send(&mut socket, json!({ "end": true })).await;
    let (messages, code) = until_closed(&mut socket).await;
    assert_eq!(messages, vec![json!({"end": true})]);
    assert_eq!(code, Some(1000));
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_come_as_a_message_with_the_unary_status_in_the_close_code() {
    let manager = pipes(Arc::default(), VspManager::builder("pipes"));
    let base = gateway_of(&manager).await;

    // Before the call opens: an unknown endpoint.
    let mut socket = connect(&base, "nope", None).await;
    send(&mut socket, json!({})).await;
    let (messages, code) = until_closed(&mut socket).await;
    assert_eq!(messages[0]["status"], 404, "{messages:?}");
    assert_eq!(messages[0]["error"]["code"], "not_found", "{messages:?}");
    assert_eq!(code, Some(4404));

    // After it opened: the handler's error, once it read a negative number.
    let mut socket = connect(&base, "sum", None).await;
    send(&mut socket, json!({})).await;
    for n in [1, -2] {
        send(&mut socket, json!({ "item": n })).await;
    }
    let (messages, code) = until_closed(&mut socket).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(
        messages[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("-2 is negative"),
        "{messages:?}"
    );
    assert_eq!(
        code,
        Some(4000 + messages[0]["status"].as_u64().unwrap() as u16)
    );

    // A message that is neither an item nor the end.
    let mut socket = connect(&base, "sum", None).await;
    send(&mut socket, json!({})).await;
    send(&mut socket, json!({ "items": [1, 2] })).await;
    let (messages, code) = until_closed(&mut socket).await;
    assert_eq!(messages[0]["error"]["code"], "bad_request", "{messages:?}");
    assert_eq!(code, Some(4400));

    // A message above the gateway's body limit closes the socket (no call is left behind).
    let mut socket = connect(&base, "sum", None).await;
    send(&mut socket, json!({})).await;
    send(&mut socket, json!({ "item": "x".repeat(10_000) })).await;
    let (_, code) = until_closed(&mut socket).await;
    assert_ne!(
        code,
        Some(1000),
        "closed normally after a message above the limit"
    );

    // A plain GET is told what the path is for.
    let http = reqwest::Client::new();
    let plain = http
        .get(format!(
            "{}/pipes/sum",
            base.replacen("ws://", "http://", 1)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), reqwest::StatusCode::METHOD_NOT_ALLOWED);
    wait_until("no stream left open", Duration::from_secs(10), || {
        manager.ledger().streams_open == 0
    })
    .await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_hook_sees_the_upgrades_headers() {
    let builder = VspManager::builder("pipes").auth(|cx: vsp::Context| async move {
        match cx.metadata().get("authorization") {
            Some("Bearer writer") => Ok(()),
            Some(_) => Err(vsp::server::Rejection::permission_denied("not a writer")),
            None => Err(vsp::server::Rejection::unauthenticated(
                "missing `authorization`",
            )),
        }
    });
    let manager = pipes(Arc::default(), builder);
    let base = gateway_of(&manager).await;
    for (token, code) in [(None, 4401), (Some("Bearer reader"), 4403)] {
        let mut socket = connect(&base, "sum", token).await;
        send(&mut socket, json!({})).await;
        let (_, closed) = until_closed(&mut socket).await;
        assert_eq!(closed, Some(code), "{token:?}");
    }
    let mut socket = connect(&base, "sum", Some("Bearer writer")).await;
    send(&mut socket, json!({})).await;
    send(&mut socket, json!({ "item": 2 })).await;
    send(&mut socket, json!({ "end": true })).await;
    let (messages, _) = until_closed(&mut socket).await;
    assert_eq!(messages[0], json!({"item": 2}));
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_goes_away_cancels_the_call_on_the_service() {
    let dropped = Arc::new(AtomicBool::new(false));
    let manager = pipes(dropped.clone(), VspManager::builder("pipes"));
    let base = gateway_of(&manager).await;
    let mut socket = connect(&base, "hold", None).await;
    send(&mut socket, json!({})).await;
    send(&mut socket, json!({ "item": 1 })).await;
    wait_until(
        "the call to be open on the service",
        Duration::from_secs(10),
        || manager.ledger().streams_open == 1,
    )
    .await;
    drop(socket);
    wait_until(
        "the handler to be dropped after the page went away",
        Duration::from_secs(10),
        || dropped.load(Ordering::SeqCst),
    )
    .await;
    wait_until("no stream left open", Duration::from_secs(10), || {
        manager.ledger().streams_open == 0
    })
    .await;

    // A page that closes without `{"end": true}` cancels: the handler never sees an end.
    let saw_end = Arc::new(AtomicBool::new(false));
    let flag = saw_end.clone();
    manager
        .client_stream_endpoint("count", move |_: Value, mut items: Streaming<i64>| {
            let flag = flag.clone();
            async move {
                let mut n = 0;
                while items.next().await.is_some() {
                    n += 1;
                }
                flag.store(true, Ordering::SeqCst);
                Ok::<_, String>(n)
            }
        })
        .unwrap();
    let mut socket = connect(&base, "count", None).await;
    send(&mut socket, json!({})).await;
    send(&mut socket, json!({ "item": 1 })).await;
    wait_until(
        "the call to be open on the service",
        Duration::from_secs(10),
        || manager.ledger().streams_open == 1,
    )
    .await;
    socket.close(None).await.unwrap();
    drop(socket);
    wait_until("no stream left open", Duration::from_secs(10), || {
        manager.ledger().streams_open == 0
    })
    .await;
    assert!(
        !saw_end.load(Ordering::SeqCst),
        "a page that closed without ending its stream half-closed the call instead of cancelling it"
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_says_how_to_call_an_endpoint_that_takes_a_stream() {
    let manager = pipes(Arc::default(), VspManager::builder("pipes"));
    let base = gateway_of(&manager).await.replacen("ws://", "http://", 1);
    let document: Value = reqwest::get(format!("{base}/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = document.to_string();
    oas3::from_json(&text).expect("the document is not OpenAPI 3.1");
    let sum = &document["paths"]["/pipes/sum"]["post"];
    assert_eq!(sum["x-vsp-websocket"]["param"], "items", "{sum}");
    assert!(sum["responses"]["501"].is_object(), "{sum}");
    let shout = &document["paths"]["/pipes/shout"]["post"];
    assert!(shout["x-vsp-websocket"].is_object(), "{shout}");
    manager.shutdown().await.unwrap();
}
