//! `vsp bench`: a load generator in the manner of ghz.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use serde_json::Value;
use vsp::VspError;

use crate::discovery_args::{Resolved, TargetArgs};
use crate::{parse_duration, read_body, Failure};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("amount").required(true).args(["calls", "duration"])))]
/// Load-tests an endpoint: calls/s, latency percentiles, errors by code.
pub(crate) struct BenchArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// The endpoint to call.
    endpoint: String,
    /// The request body: JSON, `@file.json`, or `-` for stdin (default `{}`).
    body: Option<String>,
    /// Calls in flight at once.
    #[arg(short = 'c', long, default_value_t = 10)]
    concurrency: usize,
    /// Total calls to make.
    #[arg(short = 'n', long)]
    calls: Option<u64>,
    /// How long to keep calling (like 10s).
    #[arg(short = 'd', long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Prints the report as JSON.
    #[arg(long)]
    json: bool,
    /// Calls the endpoint as a stream, each call reading it to its end, and reports items per
    /// second too (found on its own when the service describes the endpoint as streaming).
    #[arg(long)]
    stream: bool,
    /// Each call sends this many items as its own stream (a client or bidirectional stream;
    /// 100 when the service describes the endpoint as taking a stream and this is not given),
    /// and the report counts the items sent per second too.
    #[arg(long)]
    send_items: Option<u64>,
    /// The item each call sends `--send-items` times, as JSON (default `{}`).
    #[arg(long, default_value = "{}")]
    item: String,
}

#[derive(Serialize)]
struct Report {
    calls: u64,
    ok: u64,
    seconds: f64,
    calls_per_sec: f64,
    latency_ms: Latency,
    errors: BTreeMap<String, u64>,
    /// Streams: the items read, over all calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    items: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    items_per_sec: Option<f64>,
    /// Calls that send a stream: the items sent, over all calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    items_sent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    items_sent_per_sec: Option<f64>,
}

#[derive(Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

/// What one caller saw.
#[derive(Default)]
struct Tally {
    latencies: Vec<u64>,
    errors: BTreeMap<String, u64>,
}

/// Opens the stream and reads it to its end; the number of items.
async fn read_stream(
    client: &vsp::VspClient,
    service: &str,
    endpoint: &str,
    body: &Value,
) -> Result<u64, VspError> {
    let items = client
        .call_stream::<serde::de::IgnoredAny>(service, endpoint, body)
        .await?;
    read_to_end(items).await
}

/// Sends `sending` copies of `item` as the call's stream; for a bidirectional call, reads what
/// comes back to its end. The number of items read.
async fn send_stream(run: &Run, sending: u64) -> Result<u64, VspError> {
    let client = &run.resolved.client;
    let items = repeat(run.item.clone(), sending);
    if run.streaming {
        let answers = client
            .call_bidi_stream::<serde::de::IgnoredAny, _>(
                &run.resolved.service,
                &run.endpoint,
                &run.body,
                items,
            )
            .await?;
        return read_to_end(answers).await;
    }
    client
        .call_client_stream::<serde::de::IgnoredAny, _>(
            &run.resolved.service,
            &run.endpoint,
            &run.body,
            items,
        )
        .await
        .map(|_| 0)
}

/// `count` copies of `item`, as a stream.
fn repeat(item: Value, count: u64) -> impl futures_core::Stream<Item = Value> + Send + 'static {
    struct Repeat(Value, u64);
    impl futures_core::Stream for Repeat {
        type Item = Value;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Value>> {
            if self.1 == 0 {
                return std::task::Poll::Ready(None);
            }
            self.1 -= 1;
            std::task::Poll::Ready(Some(self.0.clone()))
        }
    }
    Repeat(item, count)
}

/// Reads `items` to its end; how many there were.
async fn read_to_end(mut items: vsp::CallStream<serde::de::IgnoredAny>) -> Result<u64, VspError> {
    let mut read = 0;
    while let Some(item) = std::future::poll_fn(|cx| {
        futures_core::Stream::poll_next(std::pin::Pin::new(&mut items), cx)
    })
    .await
    {
        item?;
        read += 1;
    }
    Ok(read)
}

fn error_kind(err: &VspError) -> String {
    match err {
        VspError::Remote { code, .. } => format!("remote: {code}"),
        VspError::Timeout { .. } => "timeout".into(),
        VspError::Connect { .. } | VspError::ConnectTimeout { .. } => "connect".into(),
        VspError::ConnectionClosed { .. } => "connection closed".into(),
        VspError::NoInstances { .. } | VspError::NoHealthyInstances { .. } => "no instance".into(),
        VspError::TooManyInFlight { .. } => "too many in flight".into(),
        other => format!("other: {other}"),
    }
}

/// What every caller task of one run shares.
struct Run {
    resolved: Resolved,
    endpoint: String,
    body: Value,
    streaming: bool,
    /// Items each call sends as its own stream, if it sends one.
    sending: Option<u64>,
    item: Value,
    started: Instant,
    until: Option<Instant>,
    budget: u64,
    issued: AtomicU64,
    done: AtomicU64,
    items_read: AtomicU64,
    first_error: Mutex<Option<VspError>>,
}

pub(crate) async fn run(args: BenchArgs) -> Result<(), Failure> {
    let body = read_body(args.body.as_deref())?;
    if args.concurrency == 0 {
        return Err(Failure::usage("-c must be at least 1"));
    }
    let item: Value = serde_json::from_str(&args.item)
        .map_err(|err| Failure::usage(format!("--item is not JSON: {err}")))?;
    let resolved = args.target.resolve()?;
    let described = match resolved.client.describe(&resolved.service).await {
        Ok(description) => description.endpoint(&args.endpoint).cloned(),
        Err(_) => None,
    };
    let streaming = args.stream || described.as_ref().is_some_and(|d| d.streaming);
    let sending = args.send_items.or_else(|| {
        described
            .as_ref()
            .is_some_and(|d| d.input_stream.is_some())
            .then_some(100)
    });
    let started = Instant::now();
    let run = Arc::new(Run {
        resolved,
        endpoint: args.endpoint,
        body,
        streaming,
        sending,
        item,
        started,
        until: args.duration.map(|d| started + d),
        budget: args.calls.unwrap_or(u64::MAX),
        issued: AtomicU64::new(0),
        done: AtomicU64::new(0),
        items_read: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    let callers: Vec<_> = (0..args.concurrency)
        .map(|_| tokio::spawn(call_until_done(run.clone())))
        .collect();
    let progress =
        (!args.json && std::io::stderr().is_terminal()).then(|| spawn_progress(run.clone()));
    let mut tally = Tally::default();
    for caller in callers {
        let one = caller
            .await
            .map_err(|err| Failure::unreachable(format!("a caller task failed: {err}")))?;
        tally.latencies.extend(one.latencies);
        for (kind, count) in one.errors {
            *tally.errors.entry(kind).or_default() += count;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    let report = Report::of(
        tally,
        seconds,
        streaming.then(|| run.items_read.load(Ordering::Relaxed)),
        sending,
    );
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        report.print();
    }
    // A run in which nothing succeeded exits like the failure it met.
    let first_error = run
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    match (report.ok, first_error) {
        (0, Some(err)) => Err(err.into()),
        _ => Ok(()),
    }
}

/// One caller: calls one after another until the run's duration or call count is reached.
async fn call_until_done(run: Arc<Run>) -> Tally {
    let mut tally = Tally::default();
    let client = &run.resolved.client;
    let service = &run.resolved.service;
    loop {
        if run.until.is_some_and(|until| Instant::now() >= until)
            || run.issued.fetch_add(1, Ordering::Relaxed) >= run.budget
        {
            return tally;
        }
        let t0 = Instant::now();
        let outcome: Result<u64, VspError> = if let Some(sending) = run.sending {
            send_stream(&run, sending).await
        } else if run.streaming {
            read_stream(client, service, &run.endpoint, &run.body).await
        } else {
            client
                .call(service, &run.endpoint, &run.body)
                .await
                .map(|_| 0)
        };
        match outcome {
            Ok(items) => {
                run.items_read.fetch_add(items, Ordering::Relaxed);
                tally.latencies.push(t0.elapsed().as_nanos() as u64);
            }
            Err(err) => {
                *tally.errors.entry(error_kind(&err)).or_default() += 1;
                run.first_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(err);
            }
        }
        run.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// A progress bar on a terminal's standard error, redrawn every 200 ms.
fn spawn_progress(run: Arc<Run>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let elapsed = run.started.elapsed();
            let calls = run.done.load(Ordering::Relaxed);
            let fraction = match (run.until, run.budget) {
                (Some(until), _) => elapsed.as_secs_f64() / (until - run.started).as_secs_f64(),
                (None, budget) => calls as f64 / budget as f64,
            }
            .min(1.0);
            let filled = (fraction * 30.0) as usize;
            eprint!(
                "\r[{}{}] {calls} calls, {:.0}/s ",
                "#".repeat(filled),
                ".".repeat(30 - filled),
                calls as f64 / elapsed.as_secs_f64().max(1e-9)
            );
            let _ = std::io::stderr().flush();
        }
    })
}

impl Report {
    /// The figures of a finished run.
    /// `sending`: the items each call sent as its own stream, if it sent one.
    fn of(mut tally: Tally, seconds: f64, items: Option<u64>, sending: Option<u64>) -> Report {
        tally.latencies.sort_unstable();
        let at = |q: f64| {
            if tally.latencies.is_empty() {
                return 0.0;
            }
            let index = ((tally.latencies.len() - 1) as f64 * q).round() as usize;
            tally.latencies[index] as f64 / 1e6
        };
        let ok = tally.latencies.len() as u64;
        let failed: u64 = tally.errors.values().sum();
        Report {
            calls: ok + failed,
            ok,
            seconds,
            calls_per_sec: (ok + failed) as f64 / seconds.max(1e-9),
            latency_ms: Latency {
                p50: at(0.50),
                p90: at(0.90),
                p99: at(0.99),
                max: at(1.0),
            },
            errors: tally.errors,
            items,
            items_per_sec: items.map(|items| items as f64 / seconds.max(1e-9)),
            items_sent: sending.map(|each| each * ok),
            items_sent_per_sec: sending.map(|each| (each * ok) as f64 / seconds.max(1e-9)),
        }
    }

    /// The report for a person, on standard output.
    fn print(&self) {
        println!("Summary:");
        let failed = self.calls - self.ok;
        println!(
            "  Calls:     {} ({} ok, {failed} failed)",
            self.calls, self.ok
        );
        println!("  Duration:  {:.2} s", self.seconds);
        println!("  Calls/s:   {:.1}", self.calls_per_sec);
        if let (Some(items), Some(per_sec)) = (self.items, self.items_per_sec) {
            println!("  Items:     {items} ({per_sec:.1}/s)");
        }
        if let (Some(sent), Some(per_sec)) = (self.items_sent, self.items_sent_per_sec) {
            println!("  Sent:      {sent} items ({per_sec:.1}/s)");
        }
        println!("Latency (ok calls):");
        println!("  p50  {:>10.3} ms", self.latency_ms.p50);
        println!("  p90  {:>10.3} ms", self.latency_ms.p90);
        println!("  p99  {:>10.3} ms", self.latency_ms.p99);
        println!("  max  {:>10.3} ms", self.latency_ms.max);
        if !self.errors.is_empty() {
            println!("Errors:");
            for (kind, count) in &self.errors {
                println!("  {count:>8}  {kind}");
            }
        }
    }
}
