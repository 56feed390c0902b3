//! The service explorer: one self-contained HTML page (no CDN, no build step), compiled into the
//! crate, that lists the gateway's services and endpoints with their docs, makes a form of each
//! endpoint's argument schema, calls it through the gateway and shows the result or the error
//! with its code and the call's latency, and each instance's health from the mesh.

use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::response::Response;

const PAGE: &str = include_str!("explorer.html");

/// The page, with the list of services written into it.
pub(super) fn page(services: &[String]) -> Response {
    let list = serde_json::to_string(services).unwrap_or_else(|_| "[]".to_owned());
    // Inside a <script> element: no `<` may close it early.
    let list = list
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    let mut response = Response::new(Body::from(PAGE.replacen("__VSP_SERVICES__", &list, 1)));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn service_names_cannot_break_out_of_the_script() {
        let response = page(&["</script><script>alert(1)</script>".to_owned()]);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(!text.contains("</script><script>alert"));
        assert!(text
            .contains(r#"["\u003c/script\u003e\u003cscript\u003ealert(1)\u003c/script\u003e"]"#));
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "no outside asset"
        );
    }
}
