//! `vsp discover`: lists the instances of a service found by mDNS, Consul, etcd or DNS SRV.

use std::time::Duration;

use clap::Args;

use crate::discovery_args::{DiscoveryArgs, Resolved};
use crate::{parse_duration, Failure};

/// Lists the instances of a service found by mDNS, Consul, etcd or DNS SRV.
#[derive(Args)]
pub(crate) struct DiscoverArgs {
    /// The service name.
    service: String,
    #[command(flatten)]
    discovery: DiscoveryArgs,
    /// How long to look before listing (default 3s).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    timeout: Duration,
    /// Keeps running and prints every change.
    #[arg(long)]
    watch: bool,
}

pub(crate) async fn run(mut args: DiscoverArgs) -> Result<(), Failure> {
    args.discovery.security = args.discovery.security.with_env_meta()?;
    // A target of the config file gives its discovery and service name.
    if let Some(config) = crate::config::target(&args.service)? {
        config.fill(&mut args.discovery);
        if let Some(service) = config.service {
            args.service = service;
        }
    }
    if !args.discovery.given() || !args.discovery.static_instances.is_empty() {
        return Err(Failure::usage(
            "give --mdns, --consul, --etcd or --dns-domain",
        ));
    }
    let resolved = Resolved::new(
        &args.service,
        args.discovery.mesh(&args.service, args.timeout)?,
        args.timeout,
        &args.discovery.security,
    )?;
    let print = |instances: &[vsp::InstanceState]| {
        for instance in instances {
            println!(
                "{}\tweight {}\t{:?}{}",
                instance.info.address(),
                instance.info.weight(),
                instance.info.status(),
                if instance.info.is_tls() { "\ttls" } else { "" }
            );
        }
    };
    let found = if args.watch {
        // Watching lists what is there as soon as something is, then every change.
        resolved.wait_for_instances(args.timeout).await
    } else {
        resolved.look_for(args.timeout).await
    };
    let mut seen = match found {
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
        let key =
            |i: &vsp::InstanceState| (i.info.address().to_string(), i.info.weight().to_bits());
        for gone in seen
            .iter()
            .filter(|old| !now.iter().any(|new| key(new) == key(old)))
        {
            println!("- {}\tweight {}", gone.info.address(), gone.info.weight());
        }
        for added in now
            .iter()
            .filter(|new| !seen.iter().any(|old| key(new) == key(old)))
        {
            println!("+ {}\tweight {}", added.info.address(), added.info.weight());
        }
        seen = now;
    }
}
