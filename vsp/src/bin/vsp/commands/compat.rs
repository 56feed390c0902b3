//! `vsp compat OLD NEW`: compares two service descriptions (`vsp describe --json` files, or live
//! servers) and says which changes break callers. Exit 0 when none does, 1 when one does, 2 for
//! a file that cannot be read or is no description, 3 when a live server cannot be reached.

use std::time::Duration;

use clap::Args;
use vsp::compat::{compare, Impact, Report};
use vsp::ServiceDescription;

use crate::discovery_args::{direct_client, parse_address, SecurityArgs};
use crate::Failure;

/// Compares two service descriptions and lists every change, breaking for callers or compatible.
#[derive(Args)]
pub(crate) struct CompatArgs {
    /// The description callers were built against: a `vsp describe --json` file (the committed
    /// contract), or a live server as `host:port` or `unix:/path`.
    old: String,
    /// The new description: a file or a live server.
    new: String,
    /// Prints the report as JSON (`breaking`, and every change with its `impact`, `endpoint`,
    /// `at` and `reason`).
    #[arg(long)]
    json: bool,
    /// The service name written in requests to a live server (default: the address).
    #[arg(long)]
    service: Option<String>,
    /// The deadline of each `vsp.describe` call to a live server.
    #[arg(long, value_parser = crate::parse_duration, default_value = "10s")]
    timeout: Duration,
    #[command(flatten)]
    security: SecurityArgs,
}

pub(crate) async fn run(args: CompatArgs) -> Result<(), Failure> {
    let service = args.service.as_deref();
    let old = load(&args.old, service, args.timeout, &args.security).await?;
    let new = load(&args.new, service, args.timeout, &args.security).await?;
    let report = compare(&old, &new);
    if args.json {
        let json =
            serde_json::json!({ "breaking": report.is_breaking(), "changes": report.changes });
        println!(
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        );
    } else {
        print!("{report}");
        println!("{}", summary(&report));
    }
    if report.is_breaking() {
        return Err(Failure {
            code: 1,
            message: format!("{} breaks callers of {}", args.new, old.service),
        });
    }
    Ok(())
}

/// `3 breaking changes, 1 compatible`, or that callers see no change.
fn summary(report: &Report) -> String {
    let count = |impact| {
        report
            .changes
            .iter()
            .filter(|change| change.impact == impact)
            .count()
    };
    let (breaking, compatible) = (count(Impact::Breaking), count(Impact::Compatible));
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    match (breaking, compatible) {
        (0, 0) => "no change for callers".to_owned(),
        (0, n) => format!("compatible: {n} change{}, none breaks callers", plural(n)),
        (b, n) => format!("{b} breaking change{}, {n} compatible", plural(b)),
    }
}

/// A description from a file, or from the live server at an address (called `service`, by
/// default the address).
pub(crate) async fn load(
    source: &str,
    service: Option<&str>,
    timeout: Duration,
    security: &SecurityArgs,
) -> Result<ServiceDescription, Failure> {
    let path = std::path::Path::new(source);
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .map_err(|err| Failure::usage(format!("cannot read {source}: {err}")))?;
        return serde_json::from_str(&text).map_err(|err| {
            Failure::usage(format!(
                "{source} is not a service description (the output of `vsp describe --json`): {err}"
            ))
        });
    }
    let address = parse_address(source).map_err(|reason| {
        Failure::usage(format!(
            "{source} is neither a description file nor a server address: {reason}"
        ))
    })?;
    let service = service.unwrap_or(source).to_owned();
    let client = direct_client(&service, &address, timeout, security)?;
    super::describe::describe(&client, &service, source).await
}
