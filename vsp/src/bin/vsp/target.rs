//! What `<target>` names: one `host:port`, or a service found through a discovery.

use std::time::Duration;

use clap::Args;
use vsp::{
    ConsulConfig, ConsulDiscovery, InstanceState, MdnsDiscovery, ServiceInfo, ServiceMesh,
    VspClient,
};

use crate::{parse_duration, Failure};

#[derive(Args)]
pub(crate) struct TargetArgs {
    /// `host:port`, or a service name resolved with --static, --mdns or --consul.
    pub(crate) target: String,
    /// Instances of the service, as `host:port[,host:port...]`.
    #[arg(long = "static", value_name = "HOST:PORT", value_delimiter = ',')]
    pub(crate) static_instances: Vec<String>,
    /// Finds the service by multicast DNS.
    #[arg(long)]
    pub(crate) mdns: bool,
    /// Finds the service through the Consul agent at this URL.
    #[arg(long, value_name = "URL")]
    pub(crate) consul: Option<String>,
    /// The deadline of each call, discovery included (default 10s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// The service name written in requests to a `host:port` target (default: the target).
    #[arg(long)]
    pub(crate) service: Option<String>,
}

/// A client that reaches the target, and the service name to call.
pub(crate) struct Resolved {
    pub(crate) service: String,
    pub(crate) mesh: ServiceMesh,
    pub(crate) client: VspClient,
}

fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// A client for one instance, registered under `service`.
pub(crate) fn direct_client(
    service: &str,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<VspClient, Failure> {
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new(service, host, port))
        .map_err(|err| Failure::usage(err.to_string()))?;
    Ok(VspClient::builder(mesh).timeout(timeout).build())
}

/// A mesh that finds `service` by mDNS or Consul.
pub(crate) fn discovering(
    service: &str,
    mdns: bool,
    consul: Option<&str>,
    timeout: Duration,
) -> Result<Resolved, Failure> {
    let mesh = match (mdns, consul) {
        (true, Some(_)) => return Err(Failure::usage("--mdns and --consul exclude each other")),
        (true, None) => ServiceMesh::builder()
            .discovery(MdnsDiscovery::new().first_resolution_wait(timeout))
            .build(),
        (false, Some(url)) => ServiceMesh::builder()
            .discovery(ConsulDiscovery::new(
                ConsulConfig::new(url)
                    .service(service)
                    .first_resolution_wait(timeout),
            ))
            .build(),
        (false, None) => return Err(Failure::usage("give --mdns or --consul")),
    };
    Ok(Resolved {
        service: service.to_owned(),
        client: VspClient::builder(mesh.clone()).timeout(timeout).build(),
        mesh,
    })
}

impl TargetArgs {
    pub(crate) fn resolve(&self) -> Result<Resolved, Failure> {
        let discovery_given =
            !self.static_instances.is_empty() || self.mdns || self.consul.is_some();
        if !discovery_given {
            let Some((host, port)) = split_host_port(&self.target) else {
                return Err(Failure::usage(format!(
                    "`{}` is not host:port; to call a service by name, give --static, --mdns or --consul",
                    self.target
                )));
            };
            let service = self.service.clone().unwrap_or_else(|| self.target.clone());
            let client = direct_client(&service, &host, port, self.timeout)?;
            return Ok(Resolved {
                mesh: client.mesh().clone(),
                client,
                service,
            });
        }
        if !self.static_instances.is_empty() {
            if self.mdns || self.consul.is_some() {
                return Err(Failure::usage(
                    "--static, --mdns and --consul exclude each other",
                ));
            }
            let mesh = ServiceMesh::new();
            for instance in &self.static_instances {
                let (host, port) = split_host_port(instance).ok_or_else(|| {
                    Failure::usage(format!("--static `{instance}` is not host:port"))
                })?;
                mesh.register(ServiceInfo::new(&self.target, host, port))
                    .map_err(|err| Failure::usage(err.to_string()))?;
            }
            return Ok(Resolved {
                service: self.target.clone(),
                client: VspClient::builder(mesh.clone())
                    .timeout(self.timeout)
                    .build(),
                mesh,
            });
        }
        discovering(
            &self.target,
            self.mdns,
            self.consul.as_deref(),
            self.timeout,
        )
    }
}

impl Resolved {
    /// The instances of the service, once discovery found at least one (within `timeout`).
    pub(crate) async fn wait_for_instances(
        &self,
        timeout: Duration,
    ) -> Result<Vec<InstanceState>, Failure> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let instances = self.mesh.instances(&self.service);
            if !instances.is_empty() {
                // A moment more, for the others answering at about the same time.
                tokio::time::sleep(Duration::from_millis(200).min(timeout / 4)).await;
                return Ok(self.mesh.instances(&self.service));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Failure::unreachable(format!(
                    "no instance of `{}` found within {timeout:?}",
                    self.service
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
