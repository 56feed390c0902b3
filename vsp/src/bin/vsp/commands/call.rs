//! `vsp call`: calls an endpoint and prints the response body as JSON.

use clap::Args;
use vsp::trace::{TraceContext, TRACEPARENT};

use futures_core::Stream;
use serde_json::Value;
use vsp::VspClient;

use crate::discovery_args::TargetArgs;
use crate::{explain, read_body, Failure};

/// Calls an endpoint and prints the response body as JSON.
#[derive(Args)]
pub(crate) struct CallArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// The endpoint to call.
    endpoint: String,
    /// The request body: JSON, `@file.json`, or `-` for stdin (default `{}`).
    body: Option<String>,
    /// Prints the response on one line.
    #[arg(long)]
    compact: bool,
    /// Prints the call's trace id on stderr (every call starts a trace and sends its W3C
    /// `traceparent`, or continues the one given with `--meta traceparent=...`), to find the
    /// request in the servers' logs and traces.
    #[arg(long)]
    trace: bool,
    /// Sends the body without checking it against the endpoint's argument schema first (by
    /// default the service's `vsp.describe` is asked, when it answers, and a body that does not
    /// match is refused with exit code 2).
    #[arg(long)]
    no_validate: bool,
    /// Calls the endpoint as a stream (found on its own when the service describes the
    /// endpoint as streaming): one JSON value per line as items arrive; closing stdout (`| head
    /// -3`) cancels the stream.
    #[arg(long)]
    stream: bool,
    /// Sends standard input, one JSON value per line (NDJSON), as the call's own stream, then
    /// prints the answer (or, for a bidirectional stream, each item back on its own line as it
    /// arrives). Found on its own when the service describes the endpoint as taking a stream.
    #[arg(long)]
    send_stdin: bool,
}

pub(crate) async fn run(args: CallArgs) -> Result<(), Failure> {
    let resolved = args.target.resolve()?;
    let given = resolved
        .client
        .metadata()
        .and_then(|metadata| metadata.get(TRACEPARENT))
        .map(TraceContext::parse);
    let (client, trace) = match given {
        Some(Ok(trace)) => (resolved.client.clone(), trace),
        Some(Err(err)) => return Err(Failure::usage(format!("--meta {TRACEPARENT}: {err}"))),
        None => {
            let trace = TraceContext::new_root();
            (
                resolved
                    .client
                    .with_metadata(TRACEPARENT, trace.traceparent()),
                trace,
            )
        }
    };
    if args.trace {
        eprintln!("trace id: {}", trace.trace_id());
    }
    // What the service says of the endpoint, when it describes itself.
    let described = match client.describe(&resolved.service).await {
        Ok(description) => description.endpoint(&args.endpoint).cloned(),
        Err(_) => None,
    };
    let takes_stream =
        args.send_stdin || described.as_ref().is_some_and(|d| d.input_stream.is_some());
    if takes_stream && args.body.as_deref() == Some("-") {
        return Err(Failure::usage(
            "standard input carries the call's stream: give the body as JSON or @file.json",
        ));
    }
    let body = read_body(args.body.as_deref())?;
    if !args.no_validate {
        if let Some(described) = &described {
            validate(described, &args.endpoint, &body)?;
        }
    }
    if takes_stream {
        let returns_stream = args.stream || described.as_ref().is_some_and(|d| d.streaming);
        let call = Sending {
            client: &client,
            service: &resolved.service,
            endpoint: &args.endpoint,
            target: &args.target.target,
        };
        return call.run(body, returns_stream, args.compact).await;
    }
    if args.stream || described.as_ref().is_some_and(|d| d.streaming) {
        return stream(
            &client,
            &resolved.service,
            &args.endpoint,
            body,
            &args.target.target,
        )
        .await;
    }
    let response = client
        .call(&resolved.service, &args.endpoint, body)
        .await
        .map_err(|err| explain(err, &args.target.target, &args.endpoint))?;
    let text = if args.compact {
        serde_json::to_string(&response)
    } else {
        serde_json::to_string_pretty(&response)
    };
    println!("{}", text.unwrap_or_default());
    Ok(())
}

/// Calls `endpoint` as a stream and prints each item on its own line as it arrives. A closed
/// stdout (a reader such as `head` that has had enough) ends it cleanly: the stream is dropped,
/// which cancels it on the server.
async fn stream(
    client: &VspClient,
    service: &str,
    endpoint: &str,
    body: Value,
    target: &str,
) -> Result<(), Failure> {
    let items = client
        .call_stream::<Value>(service, endpoint, body)
        .await
        .map_err(|err| explain(err, target, endpoint))?;
    print_items(items, target, endpoint).await
}

/// Prints each item of `items` on its own line as it arrives, until its end (or a closed stdout).
async fn print_items(
    mut items: vsp::CallStream<Value>,
    target: &str,
    endpoint: &str,
) -> Result<(), Failure> {
    use std::io::Write;
    let stdout = std::io::stdout();
    loop {
        let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut items).poll_next(cx)).await;
        let item = match next {
            None => return Ok(()),
            Some(Ok(item)) => item,
            Some(Err(err)) => return Err(explain(err, target, endpoint)),
        };
        let mut out = stdout.lock();
        let written = serde_json::to_writer(&mut out, &item)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        if let Err(err) = written {
            if err.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(Failure::usage(format!("cannot write to stdout: {err}")));
        }
    }
}

/// A call that sends standard input as its stream.
struct Sending<'a> {
    client: &'a VspClient,
    service: &'a str,
    endpoint: &'a str,
    target: &'a str,
}

impl Sending<'_> {
    /// Sends the lines of stdin as items and prints what comes back. A line that is not JSON
    /// stops the call (cancelled on the server, nothing more sent) with a usage error.
    async fn run(&self, body: Value, returns_stream: bool, compact: bool) -> Result<(), Failure> {
        let (items, mut bad_line) = stdin_items();
        let (service, endpoint, target) = (self.service, self.endpoint, self.target);
        let call = async {
            if returns_stream {
                let answers = self
                    .client
                    .call_bidi_stream::<Value, Value>(service, endpoint, body, items)
                    .await
                    .map_err(|err| explain(err, target, endpoint))?;
                return print_items(answers, target, endpoint).await;
            }
            let answer: Value = self
                .client
                .call_client_stream(service, endpoint, body, items)
                .await
                .map_err(|err| explain(err, target, endpoint))?;
            let text = if compact {
                serde_json::to_string(&answer)
            } else {
                serde_json::to_string_pretty(&answer)
            };
            println!("{}", text.unwrap_or_default());
            Ok(())
        };
        tokio::select! {
            outcome = call => outcome,
            Some(problem) = bad_line.recv() => Err(Failure::usage(problem)),
        }
    }
}

/// The lines of standard input as a stream of JSON values, read on a thread of their own (a
/// blocking read); the first line that is not JSON goes to the receiver instead, and the
/// stream then never ends (so no end is sent: the call is dropped, and cancelled).
fn stdin_items() -> (
    impl futures_core::Stream<Item = Value> + Send + 'static,
    tokio::sync::mpsc::Receiver<String>,
) {
    let (sender, lines) = tokio::sync::mpsc::channel::<Value>(64);
    let (bad, bad_line) = tokio::sync::mpsc::channel::<String>(1);
    std::thread::spawn(move || {
        use std::io::BufRead;
        for (number, line) in std::io::stdin().lock().lines().enumerate() {
            let line = match line {
                Ok(line) => line,
                Err(err) => {
                    let _ = bad.blocking_send(format!("cannot read standard input: {err}"));
                    return;
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(&line) {
                Ok(item) => {
                    if sender.blocking_send(item).is_err() {
                        return;
                    }
                }
                Err(err) => {
                    let _ = bad.blocking_send(format!(
                        "line {} of standard input is not JSON ({err}): the call was cancelled",
                        number + 1
                    ));
                    // Held, so the stream does not end before the call is dropped.
                    std::thread::park();
                    return;
                }
            }
        }
    });
    (Lines(lines), bad_line)
}

/// The values a channel receives, as a stream, until its senders are gone.
struct Lines(tokio::sync::mpsc::Receiver<Value>);

impl futures_core::Stream for Lines {
    type Item = Value;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Value>> {
        self.0.poll_recv(cx)
    }
}

/// Checks `body` against the endpoint's argument schema, when it says something; a mismatch
/// is a usage error naming each wrong field.
fn validate(
    described: &vsp::EndpointDescription,
    endpoint: &str,
    body: &Value,
) -> Result<(), Failure> {
    if !described.has_args_schema() {
        return Ok(());
    }
    let validator = match jsonschema::validator_for(&described.args_schema) {
        Ok(validator) => validator,
        Err(err) => {
            eprintln!("vsp: `{endpoint}`'s argument schema is not usable ({err}); not checked");
            return Ok(());
        }
    };
    let problems: Vec<String> = validator
        .iter_errors(body)
        .map(|error| {
            let at = error.instance_path.to_string();
            let at = if at.is_empty() {
                "the body".to_owned()
            } else {
                format!("field {at}")
            };
            format!("  {at}: {error}")
        })
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    Err(Failure::usage(format!(
        "the body does not match the arguments of `{endpoint}` (nothing was sent; --no-validate sends it anyway):\n{}",
        problems.join("\n")
    )))
}
