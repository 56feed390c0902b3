//! `vsp call`: calls an endpoint and prints the response body as JSON.

use clap::Args;
use vsp::trace::{TraceContext, TRACEPARENT};

use crate::discovery_args::TargetArgs;
use crate::{explain, read_body, Failure};

/// Calls an endpoint and prints the response body as JSON.
#[derive(Args)]
pub(crate) struct CallArgs {
    #[command(flatten)]
    target: TargetArgs,
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
