//! `vsp health`: calls the built-in `health` endpoint of every instance, with its round-trip time.

use std::time::Instant;

use clap::Args;

use crate::discovery_args::{direct_client, TargetArgs};
use crate::Failure;

/// Calls the built-in `health` endpoint of every instance, with its round-trip time.
#[derive(Args)]
pub(crate) struct HealthArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
}

pub(crate) async fn run(args: HealthArgs) -> Result<(), Failure> {
    let timeout = args.target.timeout;
    let resolved = args.target.resolve()?;
    let instances = resolved.wait_for_instances(timeout).await?;
    let mut worst: Option<Failure> = None;
    let mut failed = 0;
    let total = instances.len();
    for instance in instances {
        let endpoint = instance.info.address().to_string();
        let client = direct_client(
            &resolved.service,
            instance.info.address(),
            timeout,
            &args.target.discovery.security,
        )?;
        let started = Instant::now();
        match client
            .call(
                &resolved.service,
                vsp::protocol::HEALTH_ENDPOINT,
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
                failed += 1;
                let failure = Failure::from(err);
                if worst.as_ref().is_none_or(|w| failure.code > w.code) {
                    worst = Some(failure);
                }
            }
        }
    }
    // Each failure is on its line above: the summary does not repeat it.
    match worst {
        Some(failure) => Err(Failure {
            code: failure.code,
            message: format!("{failed} of {total} instances did not answer health"),
        }),
        None => Ok(()),
    }
}
