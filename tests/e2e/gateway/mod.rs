//! The HTTP gateway, its OpenAPI document and the explorer page in headless Chromium.

mod explorer;
mod http;
mod sse;
mod statuses;
mod ws;

/// A gateway serving `router` on a free port; its base URL.
async fn serve_http(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}
