//! Named targets from a config file, as kubectl's contexts: `vsp call orders place_order ...`
//! reaches `orders` with the address or discovery, TLS files, metadata and timeout the file
//! gives it. Flags win over the environment (`VSP_TLS_CA`, ...), which wins over the file.
//!
//! The file is `$VSP_CONFIG`, else `$XDG_CONFIG_HOME/vsp/config.toml`, else
//! `~/.config/vsp/config.toml`; a missing default file is no file, a missing `$VSP_CONFIG` is an
//! error. Relative paths in it are relative to the file's directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::discovery_args::{DiscoveryArgs, SecurityArgs};
use crate::{parse_duration, Failure};

/// The environment variable naming the config file.
pub(crate) const CONFIG_ENV: &str = "VSP_CONFIG";

/// The deadline of a call when neither a flag, the environment nor the file gives one.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    targets: BTreeMap<String, TargetConfig>,
}

/// One named target: where it is, how to reach it.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct TargetConfig {
    /// One instance, `host:port` or `unix:/path`.
    pub(crate) address: Option<String>,
    /// The service name (default: the target's name).
    pub(crate) service: Option<String>,
    #[serde(rename = "static", default)]
    static_instances: Vec<String>,
    #[serde(default)]
    mdns: bool,
    consul: Option<String>,
    #[serde(default)]
    etcd: Vec<String>,
    dns_domain: Option<String>,
    dns_server: Option<SocketAddr>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_server_name: Option<String>,
    #[serde(default)]
    meta: BTreeMap<String, String>,
    timeout: Option<String>,
}

/// The target called `name` in the config file, if there is a file and it names one; paths
/// made absolute.
pub(crate) fn target(name: &str) -> Result<Option<TargetConfig>, Failure> {
    let Some((path, explicit)) = config_path() else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if !explicit && err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(Failure::usage(format!(
                "cannot read the config file {}: {err}",
                path.display()
            )))
        }
    };
    let file: ConfigFile = toml::from_str(&text).map_err(|err| {
        Failure::usage(format!(
            "the config file {} is invalid: {err}",
            path.display()
        ))
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    Ok(file.targets.get(name).cloned().map(|mut target| {
        for file in [
            &mut target.tls_ca,
            &mut target.tls_cert,
            &mut target.tls_key,
        ]
        .into_iter()
        .flatten()
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        target
    }))
}

/// The config file, and whether the user named it (`$VSP_CONFIG`).
fn config_path() -> Option<(PathBuf, bool)> {
    if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|path| !path.is_empty()) {
        return Some((PathBuf::from(path), true));
    }
    let dir = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some((dir.join("vsp").join("config.toml"), false))
}

impl TargetConfig {
    /// Whether it says where the instances are (an address, or a discovery).
    pub(crate) fn has_discovery(&self) -> bool {
        !self.static_instances.is_empty()
            || self.mdns
            || self.consul.is_some()
            || !self.etcd.is_empty()
            || self.dns_domain.is_some()
    }

    /// The timeout it gives, if any.
    pub(crate) fn timeout(&self) -> Result<Option<Duration>, Failure> {
        self.timeout
            .as_deref()
            .map(|text| {
                parse_duration(text).map_err(|err| Failure::usage(format!("config: {err}")))
            })
            .transpose()
    }

    /// Fills what the flags and the environment left unset.
    pub(crate) fn fill(&self, discovery: &mut DiscoveryArgs) {
        if !discovery.given() {
            discovery
                .static_instances
                .clone_from(&self.static_instances);
            discovery.mdns = self.mdns;
            discovery.consul.clone_from(&self.consul);
            discovery.etcd.clone_from(&self.etcd);
            discovery.dns_domain.clone_from(&self.dns_domain);
            discovery.dns_server = discovery.dns_server.or(self.dns_server);
        }
        self.fill_security(&mut discovery.security);
    }

    fn fill_security(&self, security: &mut SecurityArgs) {
        // The client certificate and key go together: both from one place.
        if security.tls_cert.is_none() && security.tls_key.is_none() {
            security.tls_cert.clone_from(&self.tls_cert);
            security.tls_key.clone_from(&self.tls_key);
        }
        if security.tls_ca.is_none() {
            security.tls_ca.clone_from(&self.tls_ca);
        }
        if security.tls_server_name.is_none() {
            security.tls_server_name.clone_from(&self.tls_server_name);
        }
        // Per key: the flags' (and the environment's) value wins.
        for (key, value) in &self.meta {
            if !security.meta.iter().any(|(given, _)| given == key) {
                security.meta.push((key.clone(), value.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_reads_every_key_and_rejects_unknown_ones() {
        let file: ConfigFile = toml::from_str(
            r#"
            [targets.orders]
            address = "127.0.0.1:8443"
            service = "orders"
            tls-ca = "certs/ca.pem"
            tls-cert = "certs/cli.pem"
            tls-key = "certs/cli.key"
            tls-server-name = "orders.internal"
            meta = { authorization = "Bearer t" }
            timeout = "2s"

            [targets.inventory]
            etcd = ["http://127.0.0.1:2379"]
            "#,
        )
        .unwrap();
        let orders = &file.targets["orders"];
        assert_eq!(orders.address.as_deref(), Some("127.0.0.1:8443"));
        assert_eq!(orders.meta["authorization"], "Bearer t");
        assert_eq!(orders.timeout().unwrap(), Some(Duration::from_secs(2)));
        assert!(file.targets["inventory"].has_discovery());
        let unknown = toml::from_str::<ConfigFile>("[targets.x]\ntls_ca = \"a\"\n");
        assert!(unknown.is_err(), "a misspelt key is an error, not ignored");
    }
}
