//! `vsp call`: calls an endpoint and prints the response body as JSON.

use clap::Args;
use vsp::trace::{TraceContext, TRACEPARENT};

use serde_json::Value;
use vsp::VspClient;

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
    /// Sends the body without checking it against the endpoint's argument schema first (by
    /// default the service's `vsp.describe` is asked, when it answers, and a body that does not
    /// match is refused with exit code 2).
    #[arg(long)]
    no_validate: bool,
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
    if !args.no_validate {
        validate(&client, &resolved.service, &args.endpoint, &body).await?;
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

/// Checks `body` against `endpoint`'s argument schema, when the service describes itself and
/// the schema says something; a mismatch is a usage error naming each wrong field.
///
/// A peer that does not describe itself (Velithon) or an endpoint it does not list is left to
/// the call itself; so is a describe that fails for any other reason (the call then fails the
/// same way, and says so in its own words).
async fn validate(
    client: &VspClient,
    service: &str,
    endpoint: &str,
    body: &Value,
) -> Result<(), Failure> {
    let description = match client.describe(service).await {
        Ok(description) => description,
        Err(_) => return Ok(()),
    };
    let Some(described) = description.endpoint(endpoint) else {
        return Ok(());
    };
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
