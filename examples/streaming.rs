//! A streaming service: `cargo run --example streaming -- --addr 127.0.0.1:9091` serves
//! `stream-service` with `ticks(n)` (the integers 0 to n-1, as fast as the caller takes them),
//! `tail` (a log that grows by a line every 100 ms, from its first line on), `sum` (a client
//! stream: adds up the numbers the caller sends) and `shout` (a bidirectional stream: each line
//! the caller sends comes back in capitals as it arrives). Prints
//! `listening on <addr>` once ready and shuts down gracefully on Ctrl-C or SIGTERM (open streams
//! end with `shutting_down`).
//!
//! `--client` instead calls a running one at `--addr`: reads five ticks of a long stream and the
//! first three lines of the log, then drops both streams (which cancels them on the server);
//! sends 1 to 100 to `sum` and two lines to `shout`.
//!
//! From a shell: `vsp call 127.0.0.1:9091 tail | head -3` prints three lines and cancels;
//! `seq 1 100 | vsp call 127.0.0.1:9091 sum` sends a line per number and prints 5050.
//!
//! Copied into a crate of your own, it needs the Getting started dependencies (README) and:
//! cargo add tokio --features signal,time
//! cargo add futures

use std::time::Duration;

use futures::StreamExt;
use vsp::{ServiceInfo, ServiceMesh, Streaming, VspClient, VspManager};

const USAGE: &str = "usage: streaming [--addr HOST:PORT] [--client]   (default 127.0.0.1:9091)";

/// A service whose methods answer with streams.
#[vsp::service(name = "stream-service")]
pub trait StreamService {
    /// The integers 0 to `n - 1`, as fast as the caller takes them.
    async fn ticks(&self, n: u64) -> Streaming<u64>;
    /// A growing log: a line every 100 ms, for as long as the caller reads.
    async fn tail(&self) -> Streaming<String>;
    /// The sum of the numbers the caller sends.
    async fn sum(&self, numbers: Streaming<i64>) -> i64;
    /// Each line the caller sends, in capitals, as it arrives.
    async fn shout(&self, lines: Streaming<String>) -> Streaming<String>;
}

struct Streams;

impl StreamService for Streams {
    async fn ticks(&self, n: u64) -> Streaming<u64> {
        Streaming::iter(0..n)
    }

    async fn tail(&self) -> Streaming<String> {
        let every = tokio::time::interval(Duration::from_millis(100));
        Streaming::unfold((every, 0u64), |(mut every, line)| async move {
            every.tick().await;
            Some((format!("log line {line}"), (every, line + 1)))
        })
    }

    async fn sum(&self, numbers: Streaming<i64>) -> i64 {
        numbers.fold(0, |sum, n| async move { sum + n }).await
    }

    async fn shout(&self, lines: Streaming<String>) -> Streaming<String> {
        Streaming::new(lines.map(|line| line.to_uppercase()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut addr = "127.0.0.1:9091".to_owned();
    let mut client = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or(USAGE)?,
            "--client" => client = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}").into()),
        }
    }
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host.to_owned(), port.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("bad --addr {addr}: expected HOST:PORT\n{USAGE}"))?;
    if client {
        return read_some(&host, port).await;
    }

    let manager = VspManager::builder(StreamServiceClient::SERVICE_NAME).build();
    manager.serve(StreamServiceServer::new(Streams))?;
    let bound = manager
        .start_server(&host, port)
        .await
        .map_err(|err| format!("cannot serve on {addr}: {err}"))?;
    // Listening for the signals before saying so: a SIGTERM right after the line still drains.
    let stop = stop_signal()?;
    println!("listening on {bound}");
    stop.await?;
    println!("shutting down");
    manager.shutdown().await?;
    Ok(())
}

/// The `--client` mode: some items of each stream, then the streams are dropped.
async fn read_some(host: &str, port: u16) -> Result<(), Box<dyn std::error::Error>> {
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new(
        StreamServiceClient::SERVICE_NAME,
        host,
        port,
    ))?;
    let streams = StreamServiceClient::new(VspClient::builder(mesh).build());
    let ticks: Vec<u64> = streams
        .ticks(1_000_000)
        .await?
        .take(5)
        .map(|tick| tick.unwrap_or(u64::MAX))
        .collect()
        .await;
    println!("ticks: {ticks:?}");
    let mut log = streams.tail().await?;
    for _ in 0..3 {
        match log.next().await {
            Some(line) => println!("{}", line?),
            None => break,
        }
    }
    // Dropping the streams cancels them on the server.
    drop(log);
    // Streams the other way: any `Stream` of the items.
    let sum = streams.sum(futures::stream::iter(1..=100)).await?;
    println!("sum: {sum}");
    let lines = futures::stream::iter(["hello".to_owned(), "world".to_owned()]);
    let mut shouted = streams.shout(lines).await?;
    while let Some(line) = shouted.next().await {
        println!("{}", line?);
    }
    println!("done");
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM; the handlers are installed when this returns.
#[cfg(unix)]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        Ok(())
    })
}

/// Resolves on the first Ctrl-C (there is no SIGTERM outside Unix).
#[cfg(not(unix))]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    Ok(tokio::signal::ctrl_c())
}
