//! A whole server connection fed the input, over the in-memory transport: never a panic or a
//! hang, every count of the server's ledger back to zero once the peer leaves (nothing held for
//! a gone peer), and, when the input is made of well-formed calls, each answered exactly once.
//!
//! The first byte picks the mode: raw bytes as they come (frames, garbage, stream requests,
//! control frames, a caller's own stream items: whatever the fuzzer finds), or a sequence of unary calls with distinct ids
//! whose endpoints and argument text come from the input.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vsp::transport::{Connector, DefaultConnector};
use vsp::Address;
use vsp::{Streaming, VspManager};

const ADDRESS: &str = "fuzz-server";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    manager: VspManager,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let manager = runtime.block_on(async {
            let manager = VspManager::builder("svc")
                .max_frame_size(64 * 1024)
                .max_stream_window(64)
                .build();
            manager
                .endpoint(
                    "echo",
                    |args: Value| async move { Ok::<_, vsp::VspError>(args) },
                )
                .unwrap();
            manager
                .endpoint("fail", |_: Value| async move {
                    Err::<Value, _>("the handler said no")
                })
                .unwrap();
            manager
                .stream_endpoint("count", |args: Value| async move {
                    let n = args["n"].as_u64().unwrap_or(3).min(1000);
                    Ok::<_, vsp::VspError>(Streaming::iter(0..n))
                })
                .unwrap();
            manager
                .client_stream_endpoint("sum", |_: Value, numbers: Streaming<i64>| async move {
                    use futures::StreamExt;
                    Ok::<_, vsp::VspError>(
                        numbers.fold(0i64, |sum, n| async move { sum.wrapping_add(n) }).await,
                    )
                })
                .unwrap();
            manager
                .bidi_stream_endpoint("echo_each", |_: Value, items: Streaming<Value>| async move {
                    Ok::<_, vsp::VspError>(Streaming::new(items))
                })
                .unwrap();
            manager
                .start_server_at(&Address::memory(ADDRESS))
                .await
                .unwrap();
            manager
        });
        Fixture { runtime, manager }
    })
}

/// Unary calls with ids 0.. built from the input: (request frames, ids expecting an answer).
fn calls(data: &[u8]) -> (Vec<u8>, usize) {
    const ENDPOINTS: [&str; 5] = ["echo", "fail", "health", "no_such_endpoint", "count"];
    let mut out = Vec::new();
    let mut id = 0;
    for chunk in data.chunks(8) {
        let endpoint = ENDPOINTS[usize::from(chunk[0]) % ENDPOINTS.len()];
        let text = String::from_utf8_lossy(&chunk[1..]);
        // The argument is an object, or (one time in four) something that is not.
        let body = if chunk[0] % 4 == 3 {
            serde_json::to_string(&text).unwrap()
        } else {
            serde_json::json!({ "value": text }).to_string()
        };
        let json = format!(
            r#"{{"header":{{"request_id":{id},"service":"svc","endpoint":"{endpoint}","is_response":false}},"body":{body}}}"#
        );
        out.extend((json.len() as u32).to_be_bytes());
        out.extend(json.as_bytes());
        id += 1;
    }
    (out, id)
}

/// The frames in `bytes` (a server's output), as JSON.
fn frames(bytes: &[u8]) -> Vec<Value> {
    let mut frames = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        let frame = rest.get(4..4 + len).expect("the server sent a cut frame");
        frames
            .push(serde_json::from_slice(frame).expect("the server sent a frame that is not JSON"));
        rest = &rest[4 + len..];
    }
    assert!(
        rest.is_empty(),
        "the server's output ends in the middle of a length"
    );
    frames
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let structured = mode % 2 == 1;
    let (input, expected) = if structured {
        calls(rest)
    } else {
        (rest.to_vec(), 0)
    };
    let fixture = fixture();
    fixture.runtime.block_on(async {
        let io = DefaultConnector::new()
            .connect(&Address::memory(ADDRESS))
            .await
            .unwrap();
        let (mut read, mut write) = io.into_halves();
        let reader = tokio::spawn(async move {
            let mut output = Vec::new();
            let _ = read.read_to_end(&mut output).await;
            output
        });
        let _ = write.write_all(&input).await;
        let _ = write.shutdown().await;
        drop(write);
        let output = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the server kept the connection of a peer that left for 10 s")
            .unwrap();
        if structured {
            let mut answers: HashMap<u64, usize> = HashMap::new();
            for frame in frames(&output) {
                let header = &frame["header"];
                // A stream's items are not its answer; its open frame or its error is.
                if header["stream"] == "item" || header["stream"] == "end" {
                    continue;
                }
                if let Some(id) = header["request_id"].as_u64() {
                    *answers.entry(id).or_default() += 1;
                }
            }
            for id in 0..expected as u64 {
                assert_eq!(
                    answers.get(&id).copied().unwrap_or(0),
                    1,
                    "call {id} was not answered exactly once: {answers:?}"
                );
            }
        }
        // Nothing is held for the peer that left.
        let mut waited = Duration::ZERO;
        while !fixture.manager.ledger().is_empty() {
            assert!(
                waited < Duration::from_secs(10),
                "the server still holds {:?} for a peer that left",
                fixture.manager.ledger()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
            waited += Duration::from_millis(1);
        }
    });
});
