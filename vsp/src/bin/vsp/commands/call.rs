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
}

pub(crate) async fn run(args: CallArgs) -> Result<(), Failure> {
    let body = read_body(args.body.as_deref())?;
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
    if !args.no_validate {
        if let Some(described) = &described {
            validate(described, &args.endpoint, &body)?;
        }
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
    use std::io::Write;
    let mut items = client
        .call_stream::<Value>(service, endpoint, body)
        .await
        .map_err(|err| explain(err, target, endpoint))?;
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
