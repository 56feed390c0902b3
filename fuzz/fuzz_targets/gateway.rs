//! The gateway's path and body handling: an HTTP request with a path, headers and a body from the
//! input, through the gateway's router to a real service over the in-memory transport. Never a
//! panic, never a 500 (the service's one endpoint cannot fail), every answer JSON.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Method, Request};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;
use vsp::Address;
use vsp::{ServiceInfo, ServiceMesh, VspClient, VspManager};

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    _service: VspManager,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (service, router) = runtime.block_on(async {
            let service = VspManager::builder("svc").build();
            service
                .endpoint("echo", |args: serde_json::Value| async move {
                    Ok::<_, vsp::VspError>(args)
                })
                .unwrap();
            let address = Address::memory("fuzz-gateway");
            service.start_server_at(&address).await.unwrap();
            let mesh = ServiceMesh::new();
            mesh.register(ServiceInfo::at("svc", address)).unwrap();
            let client = VspClient::builder(mesh).build();
            let router = vsp::gateway::Gateway::new(client)
                .service("svc")
                .max_body_bytes(64 * 1024)
                .into_router();
            (service, router)
        });
        Fixture {
            runtime,
            router,
            _service: service,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let [method, content_type, origin, rest @ ..] = data else {
        return;
    };
    let (path, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let method = if method % 2 == 0 {
        Method::POST
    } else {
        Method::GET
    };
    let mut request = Request::builder().method(method).uri(format!("/{path}"));
    request = match content_type % 4 {
        0 => request.header("content-type", "application/json"),
        1 => request.header("content-type", "text/plain"),
        2 => request.header("content-type", "application/problem+json; charset=utf-8"),
        _ => request,
    };
    if origin % 3 == 0 {
        request = request.header("origin", "https://elsewhere.example");
    }
    let Ok(request) = request.body(Body::from(body.to_vec())) else {
        return; // not a URI: the HTTP server would refuse it before the gateway
    };
    let fixture = fixture();
    fixture.runtime.block_on(async {
        let response = fixture.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let html = response
            .headers()
            .get("content-type")
            .is_some_and(|value| value.as_bytes().starts_with(b"text/html"));
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        assert_ne!(status.as_u16(), 500, "{}", String::from_utf8_lossy(&bytes));
        if !html {
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .unwrap_or_else(|err| panic!("an answer that is not JSON ({status}): {err}"));
        }
    });
});
