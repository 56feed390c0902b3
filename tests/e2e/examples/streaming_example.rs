//! `examples/streaming.rs`, run as built: it serves `ticks` and `tail`, its `--client` mode reads
//! some items and drops the streams, and SIGTERM ends an open stream with `shutting_down`.

use crate::common;

use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use vsp::{CallStream, ErrorCode, ServiceInfo, ServiceMesh, VspClient, VspError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streaming_example_serves_ticks_and_tail_and_ends_streams_on_sigterm() {
    let (mut server, line, output) =
        common::start_example("streaming", &["--addr", "127.0.0.1:0"]).await;
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();

    // The example's own client mode.
    let client_mode = tokio::task::spawn_blocking(move || {
        Command::new(common::example_binary("streaming"))
            .args(["--client", "--addr", &addr.to_string()])
            .output()
            .unwrap()
    });
    let ran = tokio::time::timeout(Duration::from_secs(30), client_mode)
        .await
        .expect("the --client run to finish within 30 s")
        .unwrap();
    let said = String::from_utf8_lossy(&ran.stdout).into_owned();
    assert!(
        ran.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert_eq!(
        said,
        "ticks: [0, 1, 2, 3, 4]\nlog line 0\nlog line 1\nlog line 2\nsum: 5050\nHELLO\nWORLD\ndone\n"
    );

    // A stream open when the server is told to stop ends with `shutting_down`.
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new("stream-service", "127.0.0.1", addr.port()))
        .unwrap();
    let client = VspClient::builder(mesh).build();
    let mut tail: CallStream<String> = client
        .call_stream("stream-service", "tail", json!({}))
        .await
        .unwrap();
    assert_eq!(tail.next().await.unwrap().unwrap(), "log line 0");
    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tail.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the open stream to end within 10 s of SIGTERM");
    assert!(
        matches!(
            ended,
            Some(Err(VspError::Remote {
                code: ErrorCode::ShuttingDown,
                ..
            }))
        ),
        "{ended:?}"
    );
    let exit = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || server.wait()),
    )
    .await
    .expect("the example to exit within 30 s of SIGTERM")
    .unwrap()
    .unwrap();
    assert!(exit.success(), "exited with {exit}");
    assert_eq!(output.await.unwrap(), ["shutting down"]);
}
