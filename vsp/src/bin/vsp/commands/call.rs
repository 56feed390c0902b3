//! `vsp call`: calls an endpoint and prints the response body as JSON.

use clap::Args;

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
}

pub(crate) async fn run(args: CallArgs) -> Result<(), Failure> {
    let body = read_body(args.body.as_deref())?;
    let resolved = args.target.resolve()?;
    let response = resolved
        .client
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
