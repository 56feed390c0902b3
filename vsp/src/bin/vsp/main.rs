//! `vsp`: call, health-check, discover and load-test VSP services (and Velithon's) from a shell.
//!
//! Exit codes: 0 success, 1 the service answered with an error, 2 usage error (bad arguments,
//! bad JSON), 3 connection or discovery failure.

mod bench;
mod target;

use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use vsp::VspError;

use target::{Resolved, TargetArgs};

#[derive(Parser)]
#[command(
    name = "vsp",
    version,
    about = "Call, health-check, discover and load-test VSP services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Calls an endpoint and prints the response body as JSON.
    Call {
        #[command(flatten)]
        target: TargetArgs,
        /// The endpoint to call.
        endpoint: String,
        /// The request body: JSON, `@file.json`, or `-` for stdin (default `{}`).
        body: Option<String>,
        /// Prints the response on one line.
        #[arg(long)]
        compact: bool,
    },
    /// Calls the built-in `health` endpoint of every instance, with its round-trip time.
    Health {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Lists the instances of a service found by mDNS or Consul.
    Discover(DiscoverArgs),
    /// Load-tests an endpoint: calls/s, latency percentiles, errors by code.
    Bench(bench::BenchArgs),
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["mdns", "consul"])))]
struct DiscoverArgs {
    /// The service name.
    service: String,
    /// Browses multicast DNS.
    #[arg(long)]
    mdns: bool,
    /// Asks the Consul agent at this URL.
    #[arg(long, value_name = "URL")]
    consul: Option<String>,
    /// How long to look before listing (default 3s).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    timeout: Duration,
    /// Keeps running and prints every change.
    #[arg(long)]
    watch: bool,
}

/// A failure, with the exit code it maps to.
pub(crate) struct Failure {
    code: u8,
    message: String,
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
            VspError::Encode { .. } => 2,
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
            let failure = Failure::from(other);
            Failure {
                message: format!("calling `{endpoint}` on {target}: {}", failure.message),
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
        Command::Call {
            target,
            endpoint,
            body,
            compact,
        } => {
            let body = read_body(body.as_deref())?;
            let resolved = target.resolve()?;
            let response = resolved
                .client
                .call(&resolved.service, &endpoint, body)
                .await
                .map_err(|err| explain(err, &target.target, &endpoint))?;
            let text = if compact {
                serde_json::to_string(&response)
            } else {
                serde_json::to_string_pretty(&response)
            };
            println!("{}", text.unwrap_or_default());
            Ok(())
        }
        Command::Health { target } => health(target.resolve()?, target.timeout).await,
        Command::Discover(args) => discover(args).await,
        Command::Bench(args) => bench::run(args).await,
    }
}

async fn health(resolved: Resolved, timeout: Duration) -> Result<(), Failure> {
    let instances = resolved.wait_for_instances(timeout).await?;
    let mut worst: Option<Failure> = None;
    for instance in instances {
        let endpoint = instance.info.endpoint();
        let client = target::direct_client(
            &resolved.service,
            instance.info.host(),
            instance.info.port(),
            timeout,
        )?;
        let started = Instant::now();
        match client
            .call(
                &resolved.service,
                vsp::server::HEALTH_ENDPOINT,
                serde_json::json!({}),
            )
            .await
        {
            Ok(answer) => {
                let status = answer["status"].as_str().unwrap_or("unknown").to_owned();
                println!(
                    "{endpoint}\t{status}\t{:.2} ms",
                    started.elapsed().as_secs_f64() * 1000.0
                );
            }
            Err(err) => {
                println!("{endpoint}\tunreachable\t{err}");
                let failure = Failure::from(err);
                if worst.as_ref().is_none_or(|w| failure.code > w.code) {
                    worst = Some(failure);
                }
            }
        }
    }
    match worst {
        Some(failure) => Err(failure),
        None => Ok(()),
    }
}

async fn discover(args: DiscoverArgs) -> Result<(), Failure> {
    let resolved = target::discovering(
        &args.service,
        args.mdns,
        args.consul.as_deref(),
        args.timeout,
    )?;
    let print = |instances: &[vsp::InstanceState]| {
        for instance in instances {
            println!(
                "{}\tweight {}\t{:?}",
                instance.info.endpoint(),
                instance.info.weight(),
                instance.info.status()
            );
        }
    };
    let mut seen = match resolved.wait_for_instances(args.timeout).await {
        Ok(instances) => instances,
        Err(failure) if args.watch => {
            eprintln!("vsp: {}", failure.message);
            Vec::new()
        }
        Err(failure) => return Err(failure),
    };
    print(&seen);
    if !args.watch {
        return Ok(());
    }
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let now = resolved.mesh.instances(&resolved.service);
        let key = |i: &vsp::InstanceState| (i.info.endpoint(), i.info.weight().to_bits());
        for gone in seen
            .iter()
            .filter(|old| !now.iter().any(|new| key(new) == key(old)))
        {
            println!("- {}\tweight {}", gone.info.endpoint(), gone.info.weight());
        }
        for added in now
            .iter()
            .filter(|new| !seen.iter().any(|old| key(new) == key(old)))
        {
            println!(
                "+ {}\tweight {}",
                added.info.endpoint(),
                added.info.weight()
            );
        }
        seen = now;
    }
}
