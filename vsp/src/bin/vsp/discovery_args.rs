//! The flags every subcommand shares to find instances (`--static`, `--mdns`, `--consul`), and
//! what `<target>` names: one address, or a service found through those flags.

use std::time::Duration;

use clap::Args;
use vsp::discovery::{ConsulConfig, ConsulDiscovery, MdnsDiscovery};
use vsp::Address;
use vsp::{InstanceState, ServiceInfo, ServiceMesh, VspClient};

use crate::{parse_duration, Failure};

/// TLS and metadata flags, shared by every subcommand that calls.
#[derive(Args, Clone, Default)]
pub(crate) struct SecurityArgs {
    /// Dial with TLS, trusting the CA certificates in this PEM file.
    #[arg(long = "tls-ca", value_name = "FILE", env = "VSP_TLS_CA")]
    pub(crate) tls_ca: Option<std::path::PathBuf>,
    /// The client certificate (PEM) for servers that require one (mutual TLS); with --tls-key.
    #[arg(
        long = "tls-cert",
        value_name = "FILE",
        requires = "tls_key",
        env = "VSP_TLS_CERT"
    )]
    pub(crate) tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long = "tls-key",
        value_name = "FILE",
        requires = "tls_cert",
        env = "VSP_TLS_KEY"
    )]
    pub(crate) tls_key: Option<std::path::PathBuf>,
    /// The name to verify the server's certificate against (default: the instance's host).
    #[arg(
        long = "tls-server-name",
        value_name = "NAME",
        env = "VSP_TLS_SERVER_NAME"
    )]
    pub(crate) tls_server_name: Option<String>,
    /// Metadata sent with every call, `key=value` (repeatable): `--meta "authorization=Bearer T"`.
    /// Also from `VSP_META` (`key=value` entries separated by `;`), a flag winning per key.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    pub(crate) meta: Vec<(String, String)>,
}

fn parse_meta(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("`{text}` is not key=value")),
    }
}

impl SecurityArgs {
    /// A client builder for `mesh` with these flags applied.
    pub(crate) fn client_builder(
        &self,
        mesh: ServiceMesh,
    ) -> Result<vsp::VspClientBuilder, Failure> {
        let mut builder = VspClient::builder(mesh);
        for (key, value) in &self.meta {
            builder = builder.metadata(key.clone(), value.clone());
        }
        let wants_tls = self.tls_ca.is_some() || self.tls_cert.is_some();
        if !wants_tls {
            if self.tls_server_name.is_some() {
                return Err(Failure::usage("--tls-server-name needs --tls-ca"));
            }
            return Ok(builder);
        }
        let Some(ca) = &self.tls_ca else {
            return Err(Failure::usage(
                "--tls-cert needs --tls-ca (the CA that signed the server's certificate)",
            ));
        };
        let usage = |err: vsp::tls::TlsError| Failure::usage(err.to_string());
        let mut config = vsp::tls::ClientTlsConfig::new()
            .ca_file(ca)
            .map_err(usage)?;
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config = config.client_cert_files(cert, key).map_err(usage)?;
        }
        if let Some(name) = &self.tls_server_name {
            config = config.server_name(name.clone());
        }
        let tls = vsp::tls::ClientTls::new(config).map_err(usage)?;
        Ok(builder.connector(vsp::tls::TlsConnector::new(tls)))
    }
}

/// Where instances come from: one struct for every subcommand, which builds the mesh.
#[derive(Args, Clone)]
pub(crate) struct DiscoveryArgs {
    /// Instances of the service, as `host:port` or `unix:/path`, comma separated.
    #[arg(long = "static", value_name = "ADDR", value_delimiter = ',')]
    pub(crate) static_instances: Vec<String>,
    /// Finds the service by multicast DNS.
    #[arg(long)]
    pub(crate) mdns: bool,
    /// Finds the service through the Consul agent at this URL.
    #[arg(long, value_name = "URL")]
    pub(crate) consul: Option<String>,
    /// Finds the service in etcd at this URL (repeat for more endpoints of the cluster).
    #[arg(long, value_name = "URL")]
    pub(crate) etcd: Vec<String>,
    /// Finds the service by DNS SRV records `_vsp._tcp.<service>.<DOMAIN>` (for example
    /// `default.svc.cluster.local`).
    #[arg(long, value_name = "DOMAIN")]
    pub(crate) dns_domain: Option<String>,
    /// The DNS resolver to ask with --dns-domain (default: the system's).
    #[arg(long, value_name = "IP:PORT", requires = "dns_domain")]
    pub(crate) dns_server: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub(crate) security: SecurityArgs,
}

impl DiscoveryArgs {
    pub(crate) fn given(&self) -> bool {
        !self.static_instances.is_empty()
            || self.mdns
            || self.consul.is_some()
            || self.dns_domain.is_some()
            || !self.etcd.is_empty()
    }

    /// A mesh that finds `service` the way the flags say, waiting up to `timeout` for a first
    /// answer.
    pub(crate) fn mesh(&self, service: &str, timeout: Duration) -> Result<ServiceMesh, Failure> {
        let sources = usize::from(!self.static_instances.is_empty())
            + usize::from(self.mdns)
            + usize::from(self.consul.is_some())
            + usize::from(self.dns_domain.is_some())
            + usize::from(!self.etcd.is_empty());
        if sources > 1 {
            return Err(Failure::usage(
                "--static, --mdns, --consul, --etcd and --dns-domain exclude each other",
            ));
        }
        if let Some((first, more)) = self.etcd.split_first() {
            let mut config = vsp::discovery::EtcdConfig::new(first).first_resolution_wait(timeout);
            for endpoint in more {
                config = config.member(endpoint);
            }
            return Ok(ServiceMesh::builder()
                .discovery(vsp::discovery::EtcdDiscovery::new(config))
                .build());
        }
        if let Some(domain) = &self.dns_domain {
            let mut config = vsp::discovery::DnsConfig::srv(domain)
                .services([service])
                .first_resolution_wait(timeout);
            if let Some(server) = self.dns_server {
                config = config.server(server);
            }
            let dns = vsp::discovery::DnsDiscovery::new(config).map_err(Failure::from)?;
            return Ok(ServiceMesh::builder().discovery(dns).build());
        }
        if self.mdns {
            return Ok(ServiceMesh::builder()
                .discovery(MdnsDiscovery::new().first_resolution_wait(timeout))
                .build());
        }
        if let Some(url) = &self.consul {
            return Ok(ServiceMesh::builder()
                .discovery(ConsulDiscovery::new(
                    ConsulConfig::new(url)
                        .service(service)
                        .first_resolution_wait(timeout),
                ))
                .build());
        }
        if self.static_instances.is_empty() {
            return Err(Failure::usage(
                "give --static, --mdns, --consul, --etcd or --dns-domain",
            ));
        }
        let mesh = ServiceMesh::new();
        for instance in &self.static_instances {
            let address = parse_address(instance)
                .map_err(|reason| Failure::usage(format!("--static {reason}")))?;
            mesh.register(ServiceInfo::at(service, address))
                .map_err(|err| Failure::usage(err.to_string()))?;
        }
        Ok(mesh)
    }
}

/// An address a separate process can dial: `host:port` or `unix:/path` (`memory:` names live
/// inside one process only).
pub(crate) fn parse_address(text: &str) -> Result<Address, String> {
    match text.parse::<Address>() {
        Ok(Address::Memory(_)) => Err(format!(
            "`{text}`: in-memory addresses exist only inside the process that binds them"
        )),
        Ok(address) => Ok(address),
        Err(_) => Err(format!("`{text}` is not host:port or unix:/path")),
    }
}

/// `<target>` and how to reach it.
#[derive(Args, Clone)]
pub(crate) struct TargetArgs {
    /// `host:port` or `unix:/path`, a service name resolved with --static, --mdns, --consul,
    /// --etcd or --dns-domain, or a target named in the config file ($VSP_CONFIG, else
    /// ~/.config/vsp/config.toml).
    pub(crate) target: String,
    #[command(flatten)]
    pub(crate) discovery: DiscoveryArgs,
    /// The deadline of each call, discovery included (default 10s).
    #[arg(long = "timeout", value_parser = parse_duration, env = "VSP_TIMEOUT")]
    timeout_arg: Option<Duration>,
    /// The deadline in effect: the flag's, the environment's, the config file's, or 10s (set by
    /// `with_config`).
    #[arg(skip = crate::config::DEFAULT_TIMEOUT)]
    pub(crate) timeout: Duration,
    /// The service name written in requests to an address target (default: the target).
    #[arg(long)]
    pub(crate) service: Option<String>,
}

/// A client that reaches the target, and the service name to call.
pub(crate) struct Resolved {
    pub(crate) service: String,
    pub(crate) mesh: ServiceMesh,
    pub(crate) client: VspClient,
}

/// A client for the one instance at `address`, registered under `service`.
pub(crate) fn direct_client(
    service: &str,
    address: &Address,
    timeout: Duration,
    security: &SecurityArgs,
) -> Result<VspClient, Failure> {
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::at(service, address.clone()))
        .map_err(|err| Failure::usage(err.to_string()))?;
    Ok(security.client_builder(mesh)?.timeout(timeout).build())
}

impl SecurityArgs {
    /// Adds `VSP_META`'s entries (`key=value;key=value`) whose keys no flag gave.
    pub(crate) fn with_env_meta(mut self) -> Result<Self, Failure> {
        let Ok(entries) = std::env::var("VSP_META") else {
            return Ok(self);
        };
        for entry in entries.split(';').filter(|entry| !entry.trim().is_empty()) {
            let (key, value) =
                parse_meta(entry).map_err(|err| Failure::usage(format!("VSP_META: {err}")))?;
            if !self.meta.iter().any(|(given, _)| *given == key) {
                self.meta.push((key, value));
            }
        }
        Ok(self)
    }
}

impl TargetArgs {
    /// The target with what the environment and the config file add: flags win over the
    /// environment, which wins over the file's target of this name (see `config`).
    pub(crate) fn with_config(mut self) -> Result<Self, Failure> {
        self.discovery.security = self.discovery.security.with_env_meta()?;
        let config = crate::config::target(&self.target)?;
        let file_timeout = match &config {
            Some(config) => config.timeout()?,
            None => None,
        };
        self.timeout = self
            .timeout_arg
            .or(file_timeout)
            .unwrap_or(crate::config::DEFAULT_TIMEOUT);
        let Some(config) = config else {
            return Ok(self);
        };
        config.fill(&mut self.discovery);
        // The target's name is the service's unless the file says otherwise.
        let service = self
            .service
            .clone()
            .or_else(|| config.service.clone())
            .unwrap_or_else(|| self.target.clone());
        match (&config.address, self.discovery.given()) {
            (Some(address), false) => {
                self.target.clone_from(address);
                self.service = Some(service);
            }
            (Some(_), true) if config.has_discovery() => {
                return Err(Failure::usage(format!(
                    "config target `{}`: give `address` or a discovery, not both",
                    self.target
                )))
            }
            _ => self.target = service,
        }
        Ok(self)
    }

    pub(crate) fn resolve(&self) -> Result<Resolved, Failure> {
        if !self.discovery.given() {
            let address = parse_address(&self.target).map_err(|reason| {
                Failure::usage(format!(
                    "{reason}; to call a service by name, give --static, --mdns, --consul, --etcd or --dns-domain"
                ))
            })?;
            let service = self.service.clone().unwrap_or_else(|| self.target.clone());
            let client = direct_client(&service, &address, self.timeout, &self.discovery.security)?;
            return Ok(Resolved {
                mesh: client.mesh().clone(),
                client,
                service,
            });
        }
        Resolved::new(
            &self.target,
            self.discovery.mesh(&self.target, self.timeout)?,
            self.timeout,
            &self.discovery.security,
        )
    }
}

impl Resolved {
    pub(crate) fn new(
        service: &str,
        mesh: ServiceMesh,
        timeout: Duration,
        security: &SecurityArgs,
    ) -> Result<Resolved, Failure> {
        Ok(Resolved {
            service: service.to_owned(),
            client: security
                .client_builder(mesh.clone())?
                .timeout(timeout)
                .build(),
            mesh,
        })
    }

    /// The instances of the service found by discovery over the whole of `timeout`: an
    /// instance that answers late (another DNS-SD stack, a Consul agent catching up) is still
    /// listed.
    pub(crate) async fn look_for(&self, timeout: Duration) -> Result<Vec<InstanceState>, Failure> {
        tokio::time::sleep(timeout).await;
        let instances = self.mesh.instances(&self.service);
        if instances.is_empty() {
            return Err(Failure::unreachable(format!(
                "no instance of `{}` found within {timeout:?}",
                self.service
            )));
        }
        Ok(instances)
    }

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
