//! The HTTP gateway over real HTTP (reqwest, HTTP/1.1) against real VSP servers on loopback TCP:
//! calls, descriptions, the OpenAPI document, every error mapping, body limits, forwarded headers.

use crate::users;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use users::{UserServiceServer, Users};
use vsp::gateway::Gateway;
use vsp::server::Rejection;
use vsp::{Context, ServiceInfo, ServiceMesh, VspClient, VspError, VspManager};

use super::serve_http;

async fn start(manager: &VspManager) -> SocketAddr {
    manager.start_server("127.0.0.1", 0).await.unwrap()
}

/// What every test stands on: the example `user-service` and a gateway exposing it.
struct Fixture {
    users: VspManager,
    mesh: ServiceMesh,
    base: String,
    http: reqwest::Client,
}

impl Fixture {
    async fn new(configure: impl FnOnce(Gateway) -> Gateway) -> Fixture {
        let users = VspManager::builder("user-service").build();
        users
            .serve(UserServiceServer::new(Users::default()))
            .unwrap();
        let addr = start(&users).await;
        let mesh = ServiceMesh::new();
        mesh.register(ServiceInfo::new("user-service", "127.0.0.1", addr.port()))
            .unwrap();
        let client = VspClient::builder(mesh.clone())
            .timeout(Duration::from_secs(2))
            .max_attempts(1)
            .build();
        let gateway = configure(Gateway::new(client).service("user-service"));
        let base = serve_http(gateway.into_router()).await;
        Fixture {
            users,
            mesh,
            base,
            http: reqwest::Client::new(),
        }
    }

    async fn post(
        &self,
        path: &str,
        body: &str,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("{path}: not JSON ({err}): {text}"));
        (status, headers, body)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    /// Registers one more service in the gateway's mesh.
    fn add(&self, service: &str, addr: SocketAddr) {
        self.mesh
            .register(ServiceInfo::new(service, "127.0.0.1", addr.port()))
            .unwrap();
    }
}

/// Asserts an error answer: its status and `error.code`; the body.
fn assert_error(
    answer: &(StatusCode, reqwest::header::HeaderMap, Value),
    status: StatusCode,
    code: &str,
) {
    let (got, _, body) = answer;
    assert_eq!(
        (*got, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    assert!(body["error"]["message"].is_string(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_returns_the_result_as_json_and_typed_errors_keep_their_data() {
    let fixture = Fixture::new(|gateway| gateway).await;
    let (status, headers, user) = fixture
        .post("/user-service/get_user", r#"{"user_id":"123"}"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        user,
        json!({"id": "123", "name": "John Doe", "email": "john@example.com"})
    );

    // The service's typed error has the status its type gives (`UserError::NotFound` is 404),
    // and travels in `data`.
    let missing = fixture
        .post("/user-service/get_user", r#"{"user_id":"9"}"#)
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "service_error");
    assert_eq!(missing.2["error"]["message"], "no user with id 9");
    assert_eq!(
        missing.2["error"]["data"],
        json!({"NotFound": {"user_id": "9"}})
    );

    let created = fixture
        .post(
            "/user-service/create_user",
            r#"{"name":"Ada","email":"a@b"}"#,
        )
        .await;
    assert_eq!(created.0, StatusCode::OK);
    assert_eq!(created.2["name"], "Ada");
    // An empty body is the empty arguments object: here, one without its required field.
    let empty = fixture.post("/user-service/get_user", "").await;
    assert_error(&empty, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(empty.2["error"]["field"], "user_id", "{}", empty.2);
    fixture.users.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_endpoints_services_and_routes_are_404_in_json() {
    let fixture = Fixture::new(|gateway| gateway).await;
    let no_endpoint = fixture.post("/user-service/delete_everything", "{}").await;
    assert_error(&no_endpoint, StatusCode::NOT_FOUND, "not_found");
    // A streaming endpoint cannot be answered once.
    let streaming = fixture.post("/user-service/watch_users", "{}").await;
    assert_error(&streaming, StatusCode::NOT_IMPLEMENTED, "not_supported");
    // A service the gateway does not expose is not reachable, even if the mesh knows it.
    let hidden = VspManager::builder("admin-service").build();
    hidden
        .endpoint("wipe", |_: Value| async move {
            Ok::<_, VspError>(json!("wiped"))
        })
        .unwrap();
    fixture.add("admin-service", start(&hidden).await);
    let not_exposed = fixture.post("/admin-service/wipe", "{}").await;
    assert_error(&not_exposed, StatusCode::NOT_FOUND, "not_found");
    assert!(not_exposed.2["error"]["message"]
        .as_str()
        .unwrap()
        .contains("user-service"));
    let (status, body) = fixture.get("/admin-service").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, body) = fixture.get("/a/b/c").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let wrong_method = fixture
        .http
        .get(format!("{}/user-service/get_user", fixture.base))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = wrong_method.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
    hidden.shutdown().await.unwrap();
    fixture.users.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_400_naming_the_field_and_large_ones_413() {
    let fixture = Fixture::new(|gateway| gateway.max_body_bytes(1024)).await;
    let wrong_type = fixture
        .post("/user-service/get_user", r#"{"user_id":123}"#)
        .await;
    assert_error(&wrong_type, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(
        wrong_type.2["error"]["field"], "user_id",
        "{}",
        wrong_type.2
    );
    let missing = fixture.post("/user-service/get_user", "{}").await;
    assert_error(&missing, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(missing.2["error"]["field"], "user_id", "{}", missing.2);
    let not_json = fixture.post("/user-service/get_user", "user_id=123").await;
    assert_error(&not_json, StatusCode::BAD_REQUEST, "bad_request");
    assert!(not_json.2["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not JSON"));
    let not_object = fixture.post("/user-service/get_user", "[1, 2]").await;
    assert_error(&not_object, StatusCode::BAD_REQUEST, "bad_request");

    // Over the limit, by its Content-Length...
    let big = format!(r#"{{"user_id":"{}"}}"#, "x".repeat(2000));
    let too_large = fixture.post("/user-service/get_user", &big).await;
    assert_error(&too_large, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    // ...and chunked, with no length said up front.
    let addr = fixture.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut request = String::from("POST /user-service/get_user HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    request.push_str(&format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len()));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("the gateway's answer to a chunked body within 10 s")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"too_large""#), "{answer}");
    fixture.users.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_rejections_are_401_and_403_and_forwarded_headers_reach_the_handler() {
    let fixture = Fixture::new(|gateway| gateway.service("vault")).await;
    // A service that knows one token, lets it read but not write, and echoes what it was sent.
    let vault = VspManager::builder("vault")
        .auth(|cx: Context| async move {
            match (cx.endpoint(), cx.metadata().get("authorization")) {
                (_, None) => Err(Rejection::unauthenticated("missing `authorization`")),
                (_, Some(token)) if token != "Bearer reader" => {
                    Err(Rejection::unauthenticated("unknown token"))
                }
                ("write", _) => Err(Rejection::permission_denied("readers cannot write")),
                _ => Ok(()),
            }
        })
        .build();
    vault
        .endpoint("read", |_: Value| async move {
            let cx = Context::current().unwrap();
            let trace = cx.trace().map(|trace| trace.trace_id().to_string());
            let id = cx.metadata().get("x-request-id").map(str::to_owned);
            let secret = cx.metadata().get("x-not-forwarded").map(str::to_owned);
            Ok::<_, VspError>(json!({ "trace_id": trace, "request_id": id, "secret": secret }))
        })
        .unwrap();
    vault
        .endpoint("write", |_: Value| async move {
            Ok::<_, VspError>(json!("written"))
        })
        .unwrap();
    fixture.add("vault", start(&vault).await);

    let anonymous = fixture.post("/vault/read", "{}").await;
    assert_error(&anonymous, StatusCode::UNAUTHORIZED, "unauthenticated");
    let send = |path: &str, token: &str| {
        fixture
            .http
            .post(format!("{}{path}", fixture.base))
            .header("authorization", token)
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .header("x-request-id", "req-42")
            .header("x-not-forwarded", "hidden")
            .header("content-type", "application/json")
            .body("{}")
            .send()
    };
    let wrong = send("/vault/read", "Bearer guess").await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let denied = send("/vault/write", "Bearer reader").await.unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    let denied: Value = denied.json().await.unwrap();
    assert_eq!(denied["error"]["code"], "permission_denied");
    let read = send("/vault/read", "Bearer reader").await.unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    let read: Value = read.json().await.unwrap();
    // The handler's trace continues the HTTP caller's; only the chosen headers travel.
    assert_eq!(
        read,
        json!({"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "request_id": "req-42", "secret": null})
    );

    // The description is asked with the caller's headers too (the hook checks it).
    let (status, _) = fixture.get("/vault").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let described = fixture
        .http
        .get(format!("{}/vault", fixture.base))
        .header("authorization", "Bearer reader")
        .send()
        .await
        .unwrap();
    assert_eq!(described.status(), StatusCode::OK);
    vault.shutdown().await.unwrap();
    fixture.users.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_services_are_503_with_retry_after_timeouts_504_and_dead_instances_502() {
    let fixture = Fixture::new(|gateway| gateway.services(["busy", "slow", "ghost", "dead"])).await;

    // `overloaded`: a server at its limit of one request, the one in flight held.
    let busy = VspManager::builder("busy")
        .max_concurrent_requests(1)
        .build();
    let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (entered_by, released_by) = (entered.clone(), release.clone());
    busy.endpoint("hold", move |_: Value| {
        let (entered, release) = (entered_by.clone(), released_by.clone());
        async move {
            entered.notify_one();
            release.notified().await;
            Ok::<_, VspError>(json!("done"))
        }
    })
    .unwrap();
    fixture.add("busy", start(&busy).await);
    let held = {
        let http = fixture.http.clone();
        let url = format!("{}/busy/hold", fixture.base);
        tokio::spawn(async move {
            http.post(url)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::timeout(Duration::from_secs(10), entered.notified())
        .await
        .expect("the first call to reach the held handler within 10 s");
    let overloaded = fixture.post("/busy/hold", "{}").await;
    assert_error(&overloaded, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    assert_eq!(overloaded.1["retry-after"], "1");
    release.notify_one();
    assert_eq!(held.await.unwrap(), StatusCode::OK);

    // No instance at all.
    let ghost = fixture.post("/ghost/anything", "{}").await;
    assert_error(&ghost, StatusCode::SERVICE_UNAVAILABLE, "no_instances");
    assert_eq!(ghost.1["retry-after"], "1");

    // A deadline that passes (the client's 2 s): 504.
    let slow = VspManager::builder("slow").build();
    slow.endpoint("never", |_: Value| async move {
        std::future::pending::<()>().await;
        Ok::<_, VspError>(json!(null))
    })
    .unwrap();
    fixture.add("slow", start(&slow).await);
    let timed_out = fixture.post("/slow/never", "{}").await;
    assert_error(&timed_out, StatusCode::GATEWAY_TIMEOUT, "timeout");

    // An instance whose port is closed: 502.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    fixture.add("dead", closed_addr);
    let refused = fixture.post("/dead/anything", "{}").await;
    assert_error(&refused, StatusCode::BAD_GATEWAY, "connect");
    // What went wrong, not where: no internal address reaches the caller.
    let message = refused.2["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains(&closed_addr.port().to_string()),
        "the caller learned an internal address: {message}"
    );
    assert!(message.contains("`dead`"), "{message}");

    busy.shutdown().await.unwrap();
    slow.shutdown().await.unwrap();
    fixture.users.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_service_describes_it_and_its_instances_only_when_internals_are_exposed() {
    let hidden = Fixture::new(|gateway| gateway).await;
    let (status, body) = hidden.get("/user-service").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.get("instances").is_none(),
        "instance addresses reached a caller: {body}"
    );
    hidden.users.shutdown().await.unwrap();

    let fixture = Fixture::new(|gateway| gateway.expose_internals(true)).await;
    let (status, body) = fixture.get("/user-service").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["service"], "user-service");
    let names: Vec<&str> = body["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["create_user", "get_user", "update_user", "watch_users"]
    );
    assert_eq!(body["endpoints"][3]["streaming"], true);
    assert_eq!(body["endpoints"][1]["doc"], "The user with this id.");
    assert_eq!(body["endpoints"][1]["idempotent"], true);
    let instances = body["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1);
    assert!(instances[0]["address"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(instances[0]["status"].is_string());
    fixture.users.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_openapi_3_1_with_every_endpoint() {
    let fixture = Fixture::new(|gateway| gateway.service("ghost")).await;
    let response = fixture
        .http
        .get(format!("{}/openapi.json", fixture.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let document: Value = serde_json::from_str(&text).unwrap();

    // A real OpenAPI 3.1 parser reads it.
    let spec =
        oas3::from_json(&text).unwrap_or_else(|err| panic!("not OpenAPI 3.1: {err}\n{text}"));
    assert_eq!(spec.openapi, "3.1.0");
    let paths = spec.paths.as_ref().expect("paths");
    for endpoint in ["create_user", "get_user", "update_user"] {
        let path = paths
            .get(&format!("/user-service/{endpoint}"))
            .unwrap_or_else(|| panic!("no path for {endpoint}"));
        let post = path.post.as_ref().expect("a POST operation");
        assert_eq!(
            post.operation_id.as_deref(),
            Some(format!("user-service.{endpoint}").as_str())
        );
        assert!(post.request_body.is_some());
        assert!(post.responses.as_ref().unwrap().contains_key("200"));
    }
    assert!(paths.get("/user-service").unwrap().get.is_some());

    // Every `$ref` resolves inside the document, and none is left pointing at a schema's own
    // `$defs`.
    fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    match (key.as_str(), inner.as_str()) {
                        ("$ref", Some(reference)) => found.push(reference),
                        _ => refs(inner, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| refs(item, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(&document, &mut found);
    assert!(
        found.iter().any(|r| r.ends_with("user-service.User")),
        "{found:?}"
    );
    for reference in found {
        let pointer = reference.strip_prefix('#').expect("a local reference");
        assert!(
            document.pointer(pointer).is_some(),
            "{reference} does not resolve"
        );
    }
    let get_user = &document["paths"]["/user-service/get_user"]["post"];
    assert_eq!(get_user["summary"], "The user with this id.");
    assert_eq!(get_user["x-vsp-idempotent"], true);
    assert_eq!(
        get_user["requestBody"]["content"]["application/json"]["schema"]["required"],
        json!(["user_id"])
    );
    // A service that could not be described is said so, not dropped silently.
    assert_eq!(document["x-vsp-undescribed"][0]["service"], "ghost");
    fixture.users.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_not_declared_json_is_415_and_cannot_come_from_another_site() {
    let fixture =
        Fixture::new(|gateway| gateway.allowed_origins(["https://app.example.com"])).await;
    let url = format!("{}/user-service/get_user", fixture.base);
    let body = r#"{"user_id":"123"}"#;
    // What a page on any site can send without a preflight: text/plain, a form, no type.
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut request = fixture.http.post(&url).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a {content_type:?} body was taken"
        );
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "unsupported_media_type");
    }
    for content_type in [
        "application/json; charset=utf-8",
        "application/merge-patch+json",
    ] {
        let response = fixture
            .http
            .post(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{content_type}");
    }
    // Origins: another site is refused, the allowed one and the gateway's own are not.
    let from = |origin: &str| {
        fixture
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("origin", origin)
            .body(body)
            .send()
    };
    let other = from("https://evil.example").await.unwrap();
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    let other: Value = other.json().await.unwrap();
    assert_eq!(other["error"]["code"], "forbidden_origin");
    assert_eq!(
        from("https://app.example.com").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(from(&fixture.base).await.unwrap().status(), StatusCode::OK);
    fixture.users.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_host_names_are_answered() {
    let fixture = Fixture::new(|gateway| gateway.allowed_hosts(["localhost", "127.0.0.1"])).await;
    let port = fixture.base.rsplit(':').next().unwrap().to_owned();
    let (status, _) = fixture.get("/user-service").await;
    assert_eq!(status, StatusCode::OK);
    let rebound = fixture
        .http
        .get(format!("{}/user-service", fixture.base))
        .header("host", format!("attacker.example:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), StatusCode::FORBIDDEN);
    fixture.users.shutdown().await.unwrap();
}

/// A service whose one endpoint tells what `authorization` it was sent.
async fn token_echo() -> VspManager {
    let echo = VspManager::builder("echo").build();
    echo.endpoint("who", |_: Value| async move {
        let cx = Context::current().unwrap();
        let token = cx.metadata().get("authorization").map(str::to_owned);
        Ok::<_, VspError>(json!({ "authorization": token }))
    })
    .unwrap();
    echo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_caller_never_borrows_the_gateways_own_credentials() {
    let echo = token_echo().await;
    let addr = start(&echo).await;
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new("echo", "127.0.0.1", addr.port()))
        .unwrap();
    let client = VspClient::builder(mesh)
        .build()
        .with_metadata("authorization", "Bearer gateway-secret");
    let http = reqwest::Client::new();
    let who = |base: String, token: Option<&'static str>| {
        let http = http.clone();
        async move {
            let mut request = http
                .post(format!("{base}/echo/who"))
                .header("content-type", "application/json")
                .body("{}");
            if let Some(token) = token {
                request = request.header("authorization", token);
            }
            let answer: Value = request.send().await.unwrap().json().await.unwrap();
            answer["authorization"].clone()
        }
    };
    let default = serve_http(Gateway::new(client.clone()).service("echo").into_router()).await;
    assert_eq!(
        who(default.clone(), None).await,
        Value::Null,
        "the gateway lent its credentials"
    );
    assert_eq!(who(default, Some("Bearer caller")).await, "Bearer caller");
    let opted_in = serve_http(
        Gateway::new(client)
            .service("echo")
            .send_own_metadata(true)
            .into_router(),
    )
    .await;
    assert_eq!(who(opted_in.clone(), None).await, "Bearer gateway-secret");
    assert_eq!(who(opted_in, Some("Bearer caller")).await, "Bearer caller");
    echo.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_and_the_openapi_document_can_be_turned_off() {
    let fixture = Fixture::new(|gateway| gateway.explorer(false).openapi(false)).await;
    let (explorer, _) = fixture.get("/").await;
    assert_eq!(explorer, StatusCode::NOT_FOUND);
    let (openapi, _) = fixture.get("/openapi.json").await;
    assert_eq!(openapi, StatusCode::NOT_FOUND);
    fixture.users.shutdown().await.unwrap();
}

/// Found by the `gateway` fuzz target: a path segment that is not UTF-8 once decoded got axum's
/// plain-text rejection instead of the gateway's JSON error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_does_not_decode_is_a_json_400() {
    let fixture = Fixture::new(|gateway| gateway).await;
    let (status, body) = fixture.get("/heal%ec").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, _, body) = fixture.post("/user-service/get%ff", "{}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "bad_request");
    fixture.users.shutdown().await.unwrap();
}

#[tokio::test]
async fn responses_are_compressed_when_the_caller_accepts_it_unless_turned_off() {
    for compress in [true, false] {
        let fixture = Fixture::new(|gateway| gateway.compress_responses(compress)).await;
        let url = format!("{}/openapi.json", fixture.base);
        for (accept, expected) in [("gzip", "gzip"), ("zstd", "zstd"), ("identity", "")] {
            let response = fixture
                .http
                .get(&url)
                .header("accept-encoding", accept)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let encoding = response
                .headers()
                .get("content-encoding")
                .map(|value| value.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let body = response.bytes().await.unwrap();
            let want = if compress { expected } else { "" };
            assert_eq!(
                encoding, want,
                "accept-encoding {accept}, compress {compress}"
            );
            if want.is_empty() {
                serde_json::from_slice::<Value>(&body).expect("a plain JSON document");
            } else {
                assert!(
                    serde_json::from_slice::<Value>(&body).is_err(),
                    "a body said to be {want} reads as plain JSON"
                );
            }
        }
        // A call's answer too.
        let response = fixture
            .http
            .post(format!("{}/user-service/get_user", fixture.base))
            .header("content-type", "application/json")
            .header("accept-encoding", "gzip")
            .body(r#"{"user_id":"123"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers().contains_key("content-encoding"),
            compress,
            "{:?}",
            response.headers()
        );
    }
}
