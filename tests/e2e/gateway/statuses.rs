//! The gateway's status for a service's typed errors: the one its type gives
//! (`vsp::HttpStatus`), 422 without one, 500 only for a handler's failure; and the OpenAPI
//! document listing those responses.

use std::time::Duration;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use vsp::gateway::Gateway;
use vsp::{ServiceInfo, ServiceMesh, VspClient, VspManager};

/// An order refused, with the status each refusal has.
#[derive(Debug, Serialize, Deserialize)]
pub enum OrderError {
    OutOfStock {
        sku: String,
    },
    UnknownCustomer,
    /// A status outside 4xx: not a caller's outcome, so the gateway's default.
    Misdeclared,
}

impl vsp::HttpStatus for OrderError {
    fn http_status(&self) -> u16 {
        match self {
            OrderError::OutOfStock { .. } => 409,
            OrderError::UnknownCustomer => 404,
            OrderError::Misdeclared => 503,
        }
    }
}

/// A typed error without `HttpStatus`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Refused {
    pub reason: String,
}

#[vsp::service(name = "orders")]
pub trait Orders {
    async fn place_order(&self, sku: String, customer: String) -> Result<u64, OrderError>;
    async fn cancel_order(&self, order: u64) -> Result<(), Refused>;
    async fn audit(&self) -> u64;
}

struct Shop;

impl Orders for Shop {
    async fn place_order(&self, sku: String, customer: String) -> Result<u64, OrderError> {
        match (sku.as_str(), customer.as_str()) {
            (_, "stranger") => Err(OrderError::UnknownCustomer),
            ("sold-out", _) => Err(OrderError::OutOfStock { sku }),
            ("odd", _) => Err(OrderError::Misdeclared),
            _ => Ok(7),
        }
    }

    async fn cancel_order(&self, order: u64) -> Result<(), Refused> {
        Err(Refused {
            reason: format!("order {order} has shipped"),
        })
    }

    async fn audit(&self) -> u64 {
        panic!("the audit log is corrupt")
    }
}

struct Setup {
    manager: VspManager,
    base: String,
    http: reqwest::Client,
}

async fn setup() -> Setup {
    let manager = VspManager::builder("orders").build();
    manager.serve(OrdersServer::new(Shop)).unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new("orders", "127.0.0.1", addr.port()))
        .unwrap();
    let client = VspClient::builder(mesh)
        .timeout(Duration::from_secs(5))
        .max_attempts(1)
        .build();
    let base = super::serve_http(Gateway::new(client).service("orders").into_router()).await;
    Setup {
        manager,
        base,
        http: reqwest::Client::new(),
    }
}

impl Setup {
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("{path}: not JSON ({err}): {text}"));
        (status, body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_errors_have_their_types_status_or_422_and_only_failures_are_500() {
    let setup = setup().await;
    let order = |sku: &str, customer: &str| json!({"sku": sku, "customer": customer});

    let (status, body) = setup
        .post("/orders/place_order", order("sold-out", "ada"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "service_error", "{body}");
    assert_eq!(
        body["error"]["data"],
        json!({"OutOfStock": {"sku": "sold-out"}})
    );

    let (status, body) = setup
        .post("/orders/place_order", order("tea", "stranger"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["data"], "UnknownCustomer");

    // A status outside 4xx is not sent: the default.
    let (status, body) = setup.post("/orders/place_order", order("odd", "ada")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "service_error");

    // A typed error without `HttpStatus`: 422, its JSON in `data`.
    let (status, body) = setup
        .post("/orders/cancel_order", json!({"order": 12}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["data"]["reason"], "order 12 has shipped");

    // A handler that fails (here, panics) is the server's fault: 500 `handler`, no data.
    let (status, body) = setup.post("/orders/audit", json!({})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"]["code"], "handler");
    assert!(body["error"].get("data").is_none(), "{body}");

    let (status, body) = setup.post("/orders/place_order", order("tea", "ada")).await;
    assert_eq!((status, body), (StatusCode::OK, json!(7)));
    setup.manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_the_typed_error_under_4xx_and_the_failures() {
    let setup = setup().await;
    let document: Value = setup
        .http
        .get(format!("{}/openapi.json", setup.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let responses = |endpoint: &str| {
        let operation = &document["paths"][format!("/orders/{endpoint}")]["post"];
        let responses = operation["responses"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let mut keys: Vec<String> = responses.keys().cloned().collect();
        keys.sort();
        (keys, responses)
    };
    let (keys, place_order) = responses("place_order");
    assert_eq!(
        keys,
        ["200", "400", "4XX", "500", "503", "504", "default"],
        "{place_order:?}"
    );
    let typed = &place_order["4XX"];
    assert!(
        typed["description"].as_str().unwrap().contains("422"),
        "{typed}"
    );
    assert!(
        typed["content"]["application/json"]["schema"]["properties"]["error"]["properties"]["data"]
            .is_object(),
        "{typed}"
    );
    // A method without a typed error has no `4XX` response.
    let (keys, _) = responses("audit");
    assert!(!keys.iter().any(|key| key == "4XX"), "{keys:?}");
    setup.manager.shutdown().await.unwrap();
}
