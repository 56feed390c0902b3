//! The observability examples run as a person runs them: `tracing` prints one trace across three
//! services as a tree, `metrics` serves both sides' figures on `/metrics` for Prometheus.

use crate::common;

use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Waits (bounded) for the example to exit; returns its status and the rest of its output.
async fn wait_exit(
    mut child: std::process::Child,
    output: tokio::task::JoinHandle<Vec<String>>,
    name: &str,
) -> (std::process::ExitStatus, Vec<String>) {
    let status = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .unwrap_or_else(|_| panic!("{name} did not exit within 30 s"))
    .unwrap()
    .unwrap();
    (status, output.await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracing_example_prints_one_trace_across_three_services() {
    let (child, first, output) = common::start_example("tracing", &[]).await;
    let (status, lines) = wait_exit(child, output, "the tracing example").await;
    assert!(status.success(), "{first}\n{}", lines.join("\n"));
    let trace_id = first
        .strip_prefix("trace ")
        .and_then(|rest| rest.strip_suffix(" (9 spans)"))
        .unwrap_or_else(|| panic!("not a trace line: {first}"));
    assert!(
        trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "one trace id: {first}"
    );
    let expected = [
        "client gateway/checkout",
        "attempt #1 gateway/checkout",
        "server gateway/checkout",
        "client orders/create_order",
        "attempt #1 orders/create_order",
        "server orders/create_order",
        "client users/get_user",
        "attempt #1 users/get_user",
        "server users/get_user",
    ];
    for (depth, (line, span)) in lines.iter().zip(expected).enumerate() {
        let indent = "  ".repeat(depth);
        assert!(
            line.starts_with(&format!("{indent}{span} ")),
            "line {depth} should be `{span}` indented {depth} times: {line}\n{}",
            lines.join("\n")
        );
        assert!(line.contains("127.0.0.1:"), "the instance: {line}");
    }
    assert!(
        lines.iter().any(|line| line.starts_with("answer: ")),
        "{}",
        lines.join("\n")
    );
}

/// `GET path` over HTTP/1.1; the body.
async fn http_get(addr: &str, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("no HTTP response within 10 s")
    .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_example_serves_server_and_client_metrics_for_prometheus() {
    let (child, first, output) =
        common::start_example("metrics", &["--listen", "127.0.0.1:0"]).await;
    let addr = first
        .strip_prefix("metrics on http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("not a ready line: {first}"))
        .to_owned();
    // The example's client calls in the background: wait until a failed lookup was counted.
    let error_line =
        "vsp_client_errors_total{service=\"user-service\",endpoint=\"get_user\",code=\"handler\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = http_get(&addr, "/metrics").await;
        if body.contains(error_line) {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{error_line}` within 10 s:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for expected in [
        "# TYPE vsp_messages_processed_total counter",
        "vsp_endpoint_calls_total{service=\"user-service\",endpoint=\"get_user\"}",
        "vsp_client_calls_total{service=\"user-service\",endpoint=\"get_user\"}",
        "vsp_client_call_seconds{service=\"user-service\",endpoint=\"get_user\",quantile=\"0.99\"}",
        "vsp_client_pool_connections{service=\"user-service\",instance=\"127.0.0.1:",
    ] {
        assert!(body.contains(expected), "missing `{expected}` in:\n{body}");
    }
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let (status, _) = wait_exit(child, output, "the metrics example").await;
    assert!(status.success(), "{status}");
}
