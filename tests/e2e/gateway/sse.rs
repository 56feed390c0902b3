//! Server streams through the gateway as Server-Sent Events, over real HTTP: items in order, the
//! end, an error midway, a failure before the stream opens, and a caller that goes away.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use vsp::gateway::Gateway;
use vsp::{ServiceInfo, ServiceMesh, Streaming, VspClient, VspManager};

use super::serve_http;

/// A service with streams that end, fail and never end.
#[vsp::service(name = "feed")]
pub trait Feed {
    /// Counts from 0 to `n - 1`.
    async fn ticks(&self, n: u64) -> Streaming<u64>;
    /// Counts to `after`, then fails.
    async fn broken(&self, after: u64) -> Streaming<u64>;
    /// Counts forever, one item every 10 ms.
    async fn forever(&self) -> Streaming<u64>;
    /// Answers once.
    async fn once(&self) -> u64;
}

pub(super) struct Feeds;

impl Feed for Feeds {
    async fn ticks(&self, n: u64) -> Streaming<u64> {
        Streaming::iter(0..n)
    }

    async fn broken(&self, after: u64) -> Streaming<u64> {
        let items = (0..=after).map(move |i| {
            if i < after {
                Ok(i)
            } else {
                Err("the feed broke")
            }
        });
        Streaming::try_new(futures::stream::iter(items))
    }

    async fn forever(&self) -> Streaming<u64> {
        Streaming::unfold(0u64, |i| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Some((i, i + 1))
        })
    }

    async fn once(&self) -> u64 {
        7
    }
}

struct Fixture {
    feed: VspManager,
    base: String,
    http: reqwest::Client,
}

impl Fixture {
    async fn new() -> Fixture {
        let feed = VspManager::builder("feed").build();
        feed.serve(FeedServer::new(Feeds)).unwrap();
        let addr = feed.start_server("127.0.0.1", 0).await.unwrap();
        let mesh = ServiceMesh::new();
        mesh.register(ServiceInfo::new("feed", "127.0.0.1", addr.port()))
            .unwrap();
        let client = VspClient::builder(mesh)
            .timeout(Duration::from_secs(10))
            .build();
        let base = serve_http(Gateway::new(client).service("feed").into_router()).await;
        Fixture {
            feed,
            base,
            http: reqwest::Client::new(),
        }
    }

    async fn open(&self, endpoint: &str, body: &str) -> reqwest::Response {
        open(&self.http, &self.base, endpoint, body, None).await
    }
}

/// `POST /feed/{endpoint}` asking for events, with an `authorization` header if given.
async fn open(
    http: &reqwest::Client,
    base: &str,
    endpoint: &str,
    body: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let mut request = http
        .post(format!("{base}/feed/{endpoint}"))
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.header("authorization", token);
    }
    request.send().await.unwrap()
}

/// The events of an answer, `(event, data)`, until it ends (bounded).
async fn events(response: reqwest::Response) -> Vec<(String, Value)> {
    let text = tokio::time::timeout(Duration::from_secs(10), response.text())
        .await
        .expect("the event stream did not end within 10 s")
        .unwrap();
    parse(&text)
}

fn parse(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .filter_map(|block| {
            let mut event = String::from("message");
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    event = name.to_owned();
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data.push(value);
                }
            }
            // A keep-alive comment has no data; an event cut by a chunk's end does not decode yet.
            let data = serde_json::from_str(&data.join("\n")).ok()?;
            Some((event, data))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_arrives_as_events_in_order_then_its_end() {
    let fixture = Fixture::new().await;
    let response = fixture.open("ticks", r#"{"n":3}"#).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "{:?}",
        response.headers()
    );
    assert!(!response.headers().contains_key("content-encoding"));
    let events = events(response).await;
    let expected: Vec<(String, Value)> = vec![
        ("item".into(), 0.into()),
        ("item".into(), 1.into()),
        ("item".into(), 2.into()),
        ("end".into(), Value::Null),
    ];
    assert_eq!(events, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_fails_midway_ends_with_an_error_event() {
    let fixture = Fixture::new().await;
    let events = events(fixture.open("broken", r#"{"after":2}"#).await).await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(
        events[..2],
        [("item".into(), 0.into()), ("item".into(), 1.into())]
    );
    let (name, error) = &events[2];
    assert_eq!(name, "error");
    assert_eq!(error["error"]["code"], "handler", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("the feed broke")),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_before_a_stream_opens_keep_the_unary_statuses() {
    let fixture = Fixture::new().await;
    // Bad arguments: 400 naming the field, as JSON.
    let response = fixture.open("ticks", r#"{"n":"many"}"#).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    // No such endpoint: 404.
    let response = fixture.open("nothing", "{}").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    // An endpoint that answers once, asked for events: 501, and without events it answers.
    let response = fixture.open("once", "{}").await;
    assert_eq!(response.status(), StatusCode::NOT_IMPLEMENTED);
    let once: Value = fixture
        .http
        .post(format!("{}/feed/once", fixture.base))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(once, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_cancels_the_stream_on_the_server() {
    let fixture = Fixture::new().await;
    let mut response = fixture.open("forever", "{}").await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut text = String::new();
    while parse(&text).len() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("three events within 10 s")
            .unwrap()
            .expect("the stream ended early");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(fixture.feed.ledger().streams_open, 1);
    // The page closes: the HTTP connection goes, and with it the call.
    drop(response);
    vsp_test_support::wait_until(
        "the server's stream to end after its HTTP caller left",
        Duration::from_secs(10),
        || fixture.feed.ledger().streams_open == 0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_a_stream_as_events() {
    let fixture = Fixture::new().await;
    let document: Value = fixture
        .http
        .get(format!("{}/openapi.json", fixture.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ok = &document["paths"]["/feed/ticks"]["post"]["responses"]["200"];
    assert!(ok["content"]["text/event-stream"].is_object(), "{ok}");
    assert!(
        ok["content"]["text/event-stream"]["x-vsp-item"].is_object(),
        "{ok}"
    );
    let unary = &document["paths"]["/feed/once"]["post"]["responses"]["200"];
    assert!(unary["content"]["application/json"].is_object(), "{unary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_asks_the_services_auth_hook_with_the_forwarded_headers() {
    let feed = VspManager::builder("feed")
        .auth(|cx: vsp::Context| async move {
            match cx.metadata().get("authorization") {
                Some("Bearer reader") => Ok(()),
                Some(_) => Err(vsp::server::Rejection::permission_denied("not a reader")),
                None => Err(vsp::server::Rejection::unauthenticated(
                    "missing `authorization`",
                )),
            }
        })
        .build();
    feed.serve(FeedServer::new(Feeds)).unwrap();
    let addr = feed.start_server("127.0.0.1", 0).await.unwrap();
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new("feed", "127.0.0.1", addr.port()))
        .unwrap();
    let base = serve_http(
        Gateway::new(VspClient::builder(mesh).build())
            .service("feed")
            .into_router(),
    )
    .await;
    let http = reqwest::Client::new();
    for (token, status, code) in [
        (None, StatusCode::UNAUTHORIZED, "unauthenticated"),
        (
            Some("Bearer writer"),
            StatusCode::FORBIDDEN,
            "permission_denied",
        ),
    ] {
        let response = open(&http, &base, "ticks", r#"{"n":2}"#, token).await;
        assert_eq!(response.status(), status, "{token:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    let events =
        events(open(&http, &base, "ticks", r#"{"n":2}"#, Some("Bearer reader")).await).await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[2].0, "end");
    feed.shutdown().await.unwrap();
}
