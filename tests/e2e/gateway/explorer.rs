//! The service explorer page in a real browser: Debian's headless Chromium, driven through
//! chromedriver (WebDriver), against a live gateway and `user-service` on loopback. It fills the
//! `get_user` form, submits it from the keyboard, and finds John Doe; a screenshot is saved as
//! `target/tmp/explorer.png` for a person to look at. It opens server streams (Server-Sent
//! Events) from the page: one that ends, one that fails, and one it stops, which ends the call.
//!
//! `.ci/run` installs `chromium` and `chromium-driver`; without them the test prints SKIPPED (and
//! fails in CI).

use crate::users;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use users::{UserServiceServer, Users};
use vsp::{ServiceInfo, ServiceMesh, Streaming, VspClient, VspManager};
use vsp_test_support::{installed_binary, wait_until_async};

/// How long any one thing in the page may take to appear.
const PAGE_WAIT: Duration = Duration::from_secs(20);

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
    profile: std::path::PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

async fn start_driver(chromedriver: &std::path::Path) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let profile = vsp_test_support::pki::temp_dir("chromium-profile");
    let mut driver = Driver {
        child,
        port,
        profile,
    };
    let child = &mut driver.child;
    wait_until_async(
        &format!("chromedriver to listen on 127.0.0.1:{port}"),
        Duration::from_secs(20),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("chromedriver exited at start: {status}");
            }
            async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            }
        },
    )
    .await;
    driver
}

async fn browser(driver: &Driver, chromium: &std::path::Path) -> Client {
    // Headless, and with nothing that reaches for the network on its own (this machine's network
    // is closed but for loopback).
    let args = [
        "--headless=new".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-quic".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--window-size=1200,1000".to_owned(),
        format!("--user-data-dir={}", driver.profile.display()),
    ];
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": chromium, "args": args },
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", driver.port)),
    )
    .await
    .expect("a Chromium session from chromedriver within 60 s")
    .expect("a Chromium session from chromedriver")
}

/// The text of the element `css` once it is there and says something.
async fn text_of(browser: &Client, css: &str) -> String {
    let element = browser
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|err| panic!("no `{css}` in the page within {PAGE_WAIT:?}: {err}"));
    element.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_calls_get_user_from_its_form_and_shows_john_doe() {
    let (Some(chromium), Some(chromedriver)) = (
        installed_binary(&["/usr/bin/chromium"], "chromium"),
        installed_binary(&["/usr/bin/chromedriver"], "chromium-driver"),
    ) else {
        return;
    };
    // A live user-service and a gateway to it.
    let users = VspManager::builder("user-service").build();
    users
        .serve(UserServiceServer::new(Users::default()))
        .unwrap();
    let addr = users.start_server("127.0.0.1", 0).await.unwrap();
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new("user-service", "127.0.0.1", addr.port()))
        .unwrap();
    let client = VspClient::builder(mesh).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    // An operator's gateway: the explorer shows where the instances are.
    let router = vsp::gateway::Gateway::new(client)
        .service("user-service")
        .expose_internals(true)
        .into_router();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let driver = start_driver(&chromedriver).await;
    let browser = browser(&driver, &chromium).await;
    browser.goto(&base).await.unwrap();

    // The services and endpoints with their docs, and the instance's health from the mesh.
    let instances = text_of(&browser, "section[data-service='user-service'] .instances").await;
    assert!(instances.contains(&addr.port().to_string()), "{instances}");
    let doc = text_of(&browser, "form[data-endpoint='get_user']").await;
    assert!(doc.contains("user_id"), "{doc}");
    let nav = text_of(&browser, "nav").await;
    assert!(
        nav.contains("get_user") && nav.contains("update_user"),
        "{nav}"
    );

    // Fill the form and submit it from the keyboard (Enter in the field).
    let field = browser
        .find(Locator::Css(
            "form[data-endpoint='get_user'] input[name='user_id']",
        ))
        .await
        .unwrap();
    field.send_keys("123\u{E007}").await.unwrap();
    let result = text_of(
        &browser,
        "form[data-endpoint='get_user'] + .outcome pre.result",
    )
    .await;
    assert!(result.contains("John Doe"), "{result}");
    let meta = text_of(&browser, "form[data-endpoint='get_user'] + .outcome .meta").await;
    assert!(
        meta.starts_with("200 OK") && meta.ends_with(" ms"),
        "{meta}"
    );

    let screenshot = browser.screenshot().await.unwrap();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("explorer.png");
    std::fs::write(&path, screenshot).unwrap();
    println!("screenshot: {}", path.display());

    // An error shows its code and message: a user that does not exist, with the button.
    field.clear().await.unwrap();
    field.send_keys("nobody").await.unwrap();
    browser
        .find(Locator::Css(
            "form[data-endpoint='get_user'] button[type='submit']",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The outcome's status line saying `404 service_error`, once the page has it.
    let status = text_of(
        &browser,
        "form[data-endpoint='get_user'] + .outcome .meta .bad",
    )
    .await;
    assert_eq!(status, "404 service_error");
    let error = text_of(
        &browser,
        "form[data-endpoint='get_user'] + .outcome pre.result",
    )
    .await;
    assert!(error.contains("no user with id nobody"), "{error}");

    browser.close().await.unwrap();
    drop(driver);
    users.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_opens_a_stream_shows_its_items_and_stops_one() {
    let (Some(chromium), Some(chromedriver)) = (
        installed_binary(&["/usr/bin/chromium"], "chromium"),
        installed_binary(&["/usr/bin/chromedriver"], "chromium-driver"),
    ) else {
        return;
    };
    let feed = VspManager::builder("feed").build();
    feed.serve(super::sse::FeedServer::new(super::sse::Feeds))
        .unwrap();
    let addr = feed.start_server("127.0.0.1", 0).await.unwrap();
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new("feed", "127.0.0.1", addr.port()))
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    let router = vsp::gateway::Gateway::new(VspClient::builder(mesh).build())
        .service("feed")
        .into_router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let driver = start_driver(&chromedriver).await;
    let browser = browser(&driver, &chromium).await;
    browser.goto(&base).await.unwrap();

    // A stream that ends: its items in order, then its end.
    let field = browser
        .find(Locator::Css("form[data-endpoint='ticks'] input[name='n']"))
        .await
        .unwrap();
    field.send_keys("3\u{E007}").await.unwrap();
    let ended = text_of(
        &browser,
        "form[data-endpoint='ticks'] + .outcome[data-ended='ok'] .meta",
    )
    .await;
    assert!(ended.starts_with("ended after 3 items"), "{ended}");
    let items = text_of(&browser, "form[data-endpoint='ticks'] + .outcome ol.items").await;
    assert_eq!(
        items.split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "2"]
    );

    // A stream that fails midway shows its error.
    browser
        .find(Locator::Css(
            "form[data-endpoint='broken'] input[name='after']",
        ))
        .await
        .unwrap()
        .send_keys("2\u{E007}")
        .await
        .unwrap();
    let failed = text_of(
        &browser,
        "form[data-endpoint='broken'] + .outcome[data-ended='bad'] pre.result",
    )
    .await;
    assert!(failed.contains("the feed broke"), "{failed}");

    // A stream that never ends, stopped from the page: the call ends on the server.
    browser
        .find(Locator::Css(
            "form[data-endpoint='forever'] button[type='submit']",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    text_of(
        &browser,
        "form[data-endpoint='forever'] + .outcome ol.items li:nth-child(3)",
    )
    .await;
    assert_eq!(feed.ledger().streams_open, 1);
    browser
        .find(Locator::Css(
            "form[data-endpoint='forever'] + .outcome button.stop",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let stopped = text_of(
        &browser,
        "form[data-endpoint='forever'] + .outcome[data-ended='bad'] .meta",
    )
    .await;
    assert!(stopped.starts_with("stopped after"), "{stopped}");
    vsp_test_support::wait_until(
        "the server's stream to end after the page stopped it",
        Duration::from_secs(10),
        || feed.ledger().streams_open == 0,
    )
    .await;

    browser.close().await.unwrap();
    drop(driver);
    feed.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_sends_streams_over_a_websocket_and_shows_what_comes_back() {
    let (Some(chromium), Some(chromedriver)) = (
        installed_binary(&["/usr/bin/chromium"], "chromium"),
        installed_binary(&["/usr/bin/chromedriver"], "chromium-driver"),
    ) else {
        return;
    };
    let sinks = VspManager::builder("sinks").build();
    sinks.serve(SinksServer::new(Sink)).unwrap();
    let addr = sinks.start_server("127.0.0.1", 0).await.unwrap();
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new("sinks", "127.0.0.1", addr.port()))
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    let router = vsp::gateway::Gateway::new(VspClient::builder(mesh).build())
        .service("sinks")
        .into_router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let driver = start_driver(&chromedriver).await;
    let browser = browser(&driver, &chromium).await;
    browser.goto(&base).await.unwrap();

    // A client stream: the items typed in its box go, then its end; the one answer shows.
    browser
        .find(Locator::Css("form[data-endpoint='sum'] textarea.items-out"))
        .await
        .unwrap()
        .send_keys("1\n2\n39")
        .await
        .unwrap();
    browser
        .find(Locator::Css(
            "form[data-endpoint='sum'] button[type='submit']",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let ended = text_of(
        &browser,
        "form[data-endpoint='sum'] + .outcome[data-ended='ok'] .meta",
    )
    .await;
    assert!(ended.starts_with("ended after 1 items"), "{ended}");
    let answer = text_of(&browser, "form[data-endpoint='sum'] + .outcome ol.items").await;
    assert_eq!(answer, "42");

    // A bidirectional stream: each item sent from the page is answered while it stays open,
    // then End ends it.
    browser
        .find(Locator::Css(
            "form[data-endpoint='echo'] input[name='prefix']",
        ))
        .await
        .unwrap()
        .send_keys("> ")
        .await
        .unwrap();
    browser
        .find(Locator::Css(
            "form[data-endpoint='echo'] button[type='submit']",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let outcome = "form[data-endpoint='echo'] + .outcome";
    for (n, word) in ["\"hello\"", "\"world\""].into_iter().enumerate() {
        let input = browser
            .wait()
            .at_most(PAGE_WAIT)
            .for_element(Locator::Css(&format!("{outcome} input.item-in")))
            .await
            .unwrap();
        input.send_keys(word).await.unwrap();
        browser
            .find(Locator::Css(&format!("{outcome} button.send")))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        text_of(
            &browser,
            &format!("{outcome} ol.items li:nth-child({})", n + 1),
        )
        .await;
    }
    assert_eq!(sinks.ledger().streams_open, 1);
    browser
        .find(Locator::Css(&format!("{outcome} button.end")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let ended = text_of(&browser, &format!("{outcome}[data-ended='ok'] .meta")).await;
    assert!(ended.starts_with("ended after 2 items"), "{ended}");
    let items = text_of(&browser, &format!("{outcome} ol.items")).await;
    assert_eq!(items, "\"> hello\"\n\"> world\"");

    // Stopped from the page while open: the call ends on the server.
    browser
        .find(Locator::Css(
            "form[data-endpoint='echo'] button[type='submit']",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    vsp_test_support::wait_until(
        "the page's second stream to be open on the server",
        Duration::from_secs(10),
        || sinks.ledger().streams_open == 1,
    )
    .await;
    browser
        .find(Locator::Css(&format!("{outcome} button.stop")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    vsp_test_support::wait_until(
        "the server's stream to end after the page stopped it",
        Duration::from_secs(10),
        || sinks.ledger().streams_open == 0,
    )
    .await;

    browser.close().await.unwrap();
    drop(driver);
    sinks.shutdown().await.unwrap();
}

/// Streams from the caller, for the page.
#[vsp::service(name = "sinks")]
pub trait Sinks {
    /// Adds up the numbers sent.
    async fn sum(&self, numbers: Streaming<i64>) -> i64;
    /// Each line sent, prefixed, as it comes.
    async fn echo(&self, prefix: String, lines: Streaming<String>) -> Streaming<String>;
}

struct Sink;

impl Sinks for Sink {
    async fn sum(&self, numbers: Streaming<i64>) -> i64 {
        use futures::StreamExt;
        numbers.fold(0, |sum, n| async move { sum + n }).await
    }

    async fn echo(&self, prefix: String, lines: Streaming<String>) -> Streaming<String> {
        use futures::StreamExt;
        Streaming::new(lines.map(move |line| format!("{prefix}{line}")))
    }
}
