//! `examples/gateway.rs`, run as built: the seed's HTTP app in Rust in front of the
//! `user_service` example and an `order-service`, and its graceful stop on SIGTERM.

use crate::common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Notify;
use vsp::{VspError, VspManager};

fn address_of(line: &str) -> String {
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_example_routes_http_to_services_and_drains_on_sigterm() {
    let (users, users_line, users_output) =
        common::start_example("user_service", &["--addr", "127.0.0.1:0"]).await;
    let users_addr = address_of(&users_line);

    // An order-service whose `create_order` can be held, to stop the gateway mid-request.
    let orders = VspManager::builder("order-service").build();
    let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (entered_by, released_by) = (entered.clone(), release.clone());
    orders
        .endpoint("create_order", move |order: Value| {
            let (entered, release) = (entered_by.clone(), released_by.clone());
            async move {
                if order["hold"] == true {
                    entered.notify_one();
                    release.notified().await;
                }
                Ok::<_, VspError>(json!({ "order_id": "o-1", "user_id": order["user_id"], "item": order["item"] }))
            }
        })
        .unwrap();
    let orders_addr = orders.start_server("127.0.0.1", 0).await.unwrap();

    let (gateway, line, output) = common::start_example(
        "gateway",
        &[
            "--listen",
            "127.0.0.1:0",
            "--static",
            &format!("user-service={users_addr}"),
            "--static",
            &format!("order-service={orders_addr}"),
        ],
    )
    .await;
    let base = format!("http://{}", address_of(&line));
    let http = reqwest::Client::new();

    let user: Value = http
        .get(format!("{base}/users/123"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(user["name"], "John Doe");
    let missing = http.get(format!("{base}/users/9")).send().await.unwrap();
    assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);
    let missing: Value = missing.json().await.unwrap();
    assert_eq!(missing["error"]["code"], "not_found");

    let created = http
        .post(format!("{base}/orders"))
        .body(r#"{"user_id":"123","item":"book"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    assert_eq!(
        created,
        json!({"order_id": "o-1", "user_id": "123", "item": "book"})
    );
    let not_json = http
        .post(format!("{base}/orders"))
        .body("item=book")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), reqwest::StatusCode::BAD_REQUEST);

    // The generic routes are there too.
    let generic: Value = http
        .post(format!("{base}/user-service/get_user"))
        .header("content-type", "application/json")
        .body(r#"{"user_id":"123"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(generic["id"], "123");
    let described: Value = http
        .get(format!("{base}/order-service"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(described["endpoints"][0]["name"], "create_order");
    let page = http
        .get(format!("{base}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("VSP service explorer")
            && page.contains(r#"["user-service","order-service"]"#)
    );

    // SIGTERM with an order in flight: it completes, then the gateway exits.
    let held = {
        let (http, url) = (http.clone(), format!("{base}/orders"));
        tokio::spawn(async move {
            http.post(url)
                .body(r#"{"user_id":"123","item":"pen","hold":true}"#)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::timeout(Duration::from_secs(10), entered.notified())
        .await
        .expect("the held order to reach order-service within 10 s");
    let killed = Command::new("kill")
        .args(["-TERM", &gateway.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // The gateway said it is stopping (it no longer takes connections) before the order ends.
    let addr = base.trim_start_matches("http://").to_owned();
    vsp_test_support::wait_until_async(
        "the gateway to refuse new connections after SIGTERM",
        Duration::from_secs(10),
        || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.is_err() }
        },
    )
    .await;
    release.notify_one();
    assert_eq!(
        held.await.unwrap(),
        reqwest::StatusCode::CREATED,
        "the order in flight completed"
    );
    let mut gateway = gateway;
    let exit = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || gateway.wait()),
    )
    .await
    .expect("the gateway to exit within 30 s of SIGTERM")
    .unwrap()
    .unwrap();
    assert!(exit.success(), "the gateway exited with {exit}");
    assert_eq!(output.await.unwrap(), ["shutting down"]);

    let _ = Command::new("kill")
        .args(["-TERM", &users.id().to_string()])
        .status();
    let mut users = users;
    let _ = tokio::task::spawn_blocking(move || users.wait()).await;
    drop(users_output);
    orders.shutdown().await.unwrap();
}
