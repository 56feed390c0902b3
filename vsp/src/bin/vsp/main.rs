//! `vsp`: call, describe, health-check, discover and load-test VSP services (and Velithon's)
//! from a shell, and compare service descriptions for changes that break callers.
//!
//! Exit codes: 0 success, 1 the service answered with an error, 2 usage error (bad arguments,
//! bad JSON, a body that does not match the endpoint's schema), 3 connection or discovery failure.

mod commands;
mod config;
mod discovery_args;

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;
use vsp::VspError;

use commands::{bench, call, codegen, compat, describe, discover, health};

#[derive(Parser)]
#[command(
    name = "vsp",
    version,
    about = "Call, health-check, discover and load-test VSP services; compare their descriptions; generate clients"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Calls an endpoint and prints the response body as JSON.
    Call(call::CallArgs),
    /// Prints a service's endpoints with their parameters, docs and schemas (`vsp.describe`).
    Describe(describe::DescribeArgs),
    /// Calls the built-in `health` endpoint of every instance, with its round-trip time.
    Health(health::HealthArgs),
    /// Lists the instances of a service found by mDNS, Consul, etcd or DNS SRV.
    Discover(discover::DiscoverArgs),
    /// Load-tests an endpoint: calls/s, latency percentiles, errors by code.
    Bench(bench::BenchArgs),
    /// Compares two service descriptions (files or live servers): which changes break callers
    /// (exit 1) and which are compatible (exit 0).
    Compat(compat::CompatArgs),
    /// Generates a typed client (Python) from a service's description.
    Codegen(codegen::CodegenArgs),
}

/// A failure, with the exit code it maps to.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: 2,
            message: message.into(),
        }
    }

    pub(crate) fn unreachable(message: impl Into<String>) -> Self {
        Failure {
            code: 3,
            message: message.into(),
        }
    }
}

impl From<VspError> for Failure {
    fn from(err: VspError) -> Self {
        let code = match &err {
            VspError::Remote { .. } | VspError::Decode { .. } => 1,
            VspError::Encode { .. } | VspError::RequestTooLarge { .. } => 2,
            _ => 3,
        };
        Failure {
            code,
            message: err.to_string(),
        }
    }
}

/// Names the target and endpoint in plain words.
pub(crate) fn explain(err: VspError, target: &str, endpoint: &str) -> Failure {
    match err {
        VspError::Remote { code, message, .. } => Failure {
            code: 1,
            message: format!("`{endpoint}` on {target} answered with an error ({code}): {message}"),
        },
        other => {
            // The target and endpoint are said once, up front: the reason alone follows (the
            // error's own text names the service, which for an address target is the address).
            let reason = match &other {
                VspError::Timeout { after, .. } => Some(format!("timed out after {after:?}")),
                VspError::Connect {
                    instance, source, ..
                } => Some(format!("cannot connect to {instance}: {source}")),
                VspError::ConnectTimeout {
                    instance, after, ..
                } => Some(format!(
                    "connecting to {instance} timed out after {after:?}"
                )),
                VspError::ConnectionClosed {
                    instance, reason, ..
                } => Some(format!("the connection to {instance} closed: {reason}")),
                VspError::RequestTooLarge { len, max, .. } => Some(format!(
                    "the request is {len} bytes, above the limit of {max}"
                )),
                VspError::Encode { source, .. } => {
                    Some(format!("cannot encode the request: {source}"))
                }
                VspError::Decode { source, .. } => {
                    Some(format!("cannot decode the response: {source}"))
                }
                // Said without the service's name: for an address target, that is the address.
                VspError::NoInstances { .. } => Some("no instance is known".to_owned()),
                VspError::NoHealthyInstances { last_failure, .. } => Some(match last_failure {
                    Some(cause) => format!("no instance is reachable: {cause}"),
                    None => "no instance is reachable".to_owned(),
                }),
                _ => None,
            };
            let failure = Failure::from(other);
            Failure {
                message: format!(
                    "calling `{endpoint}` on {target}: {}",
                    reason.unwrap_or(failure.message)
                ),
                ..failure
            }
        }
    }
}

/// Parses durations like `500ms`, `2s`, `1.5s`, `1m`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((text, "s"), |at| text.split_at(at));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 500ms, 2s or 1m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|err| format!("`{text}`: {err}"))
}

/// Reads a JSON body from an argument, `@file` or `-` (stdin).
pub(crate) fn read_body(body: Option<&str>) -> Result<Value, Failure> {
    let text = match body {
        None => return Ok(Value::Object(Default::default())),
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|err| Failure::usage(format!("cannot read the body from stdin: {err}")))?;
            text
        }
        Some(path) if path.starts_with('@') => {
            std::fs::read_to_string(&path[1..]).map_err(|err| {
                Failure::usage(format!("cannot read the body from {}: {err}", &path[1..]))
            })?
        }
        Some(text) => text.to_owned(),
    };
    serde_json::from_str(&text)
        .map_err(|err| Failure::usage(format!("the body is not valid JSON: {err}")))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("vsp: cannot start the runtime: {err}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("vsp: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Call(mut args) => {
            args.target = args.target.with_config()?;
            call::run(args).await
        }
        Command::Describe(mut args) => {
            args.target = args.target.with_config()?;
            describe::run(args).await
        }
        Command::Health(mut args) => {
            args.target = args.target.with_config()?;
            health::run(args).await
        }
        Command::Discover(args) => discover::run(args).await,
        Command::Compat(args) => compat::run(args).await,
        Command::Codegen(args) => codegen::run(args).await,
        Command::Bench(mut args) => {
            args.target = args.target.with_config()?;
            bench::run(args).await
        }
    }
}
