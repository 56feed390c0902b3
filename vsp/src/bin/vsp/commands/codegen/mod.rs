//! `vsp codegen python|typescript SOURCE`: a typed client in another language, generated from a
//! service's description (a `vsp describe --json` file, or a live server).

mod python;
mod typescript;

use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::discovery_args::SecurityArgs;
use crate::Failure;

/// The languages clients are generated in.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Language {
    /// An asyncio module that speaks VSP over TCP or TLS itself (Python 3.11 or newer).
    Python,
    /// A module that calls through a VSP gateway with `fetch` and Server-Sent Events.
    Typescript,
}

/// Generates a typed client of a service from its description.
#[derive(Args)]
pub(crate) struct CodegenArgs {
    /// The language of the client.
    language: Language,
    /// The service's description: a `vsp describe --json` file, or a live server as `host:port`
    /// or `unix:/path`.
    source: String,
    /// Where to write the client (default: standard output).
    #[arg(long, short)]
    out: Option<std::path::PathBuf>,
    /// The service name written in requests to a live server (default: the address).
    #[arg(long)]
    service: Option<String>,
    /// The deadline of the `vsp.describe` call to a live server.
    #[arg(long, value_parser = crate::parse_duration, default_value = "10s")]
    timeout: Duration,
    #[command(flatten)]
    security: SecurityArgs,
}

pub(crate) async fn run(args: CodegenArgs) -> Result<(), Failure> {
    let description = super::compat::load(
        &args.source,
        args.service.as_deref(),
        args.timeout,
        &args.security,
    )
    .await?;
    let code = match args.language {
        Language::Python => python::generate(&description),
        Language::Typescript => typescript::generate(&description),
    };
    match &args.out {
        Some(path) => std::fs::write(path, code)
            .map_err(|err| Failure::unreachable(format!("cannot write {}: {err}", path.display()))),
        None => {
            print!("{code}");
            Ok(())
        }
    }
}
