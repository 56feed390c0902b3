//! Multicast DNS discovery (DNS-SD), with mdns-sd: servers announce themselves on the LAN,
//! callers browse for them.
//!
//! What is announced, for a server of service `user-service` on port 9090 of host `web1`:
//! an instance `user-service-web1-9090._vsp._tcp.local.` with the standard DNS-SD records
//! (PTR from the service type, SRV to `web1.local.:9090`, A/AAAA for its addresses) and a TXT
//! record `service=user-service`, `weight=1`, `vsp=1` (the protocol version) and `tls=1` for a TLS
//! server, so avahi or
//! Bonjour list it too. Browsing is continuous: every resolved instance joins the mesh, a
//! goodbye or an expiry takes it out, a change updates it.
//!
//! Why a thread for browsing: mdns-sd runs its own daemon thread and hands events over a
//! channel; a plain thread that forwards them into the mesh needs no runtime, so a mesh built
//! outside one still discovers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent};

use super::MeshRegistry;
use super::{BoxFuture, Discovery};
use crate::error::VspError;
use crate::instance::ServiceInfo;
use crate::protocol::PROTOCOL_VERSION;

/// The default DNS-SD service type.
pub(crate) const DEFAULT_SERVICE_TYPE: &str = "_vsp._tcp.local.";

/// Discovery over multicast DNS on the local network segment.
///
/// ```no_run
/// use std::time::Duration;
/// use vsp::{ServiceMesh, VspClient, VspManager};
/// use vsp::discovery::{MdnsDiscovery};
///
/// # async fn example() -> Result<(), vsp::VspError> {
/// // A server that announces itself...
/// let server_mesh = ServiceMesh::builder().discovery(MdnsDiscovery::new()).build();
/// let manager = VspManager::builder("user-service").mesh(server_mesh).build();
/// manager.start_server("0.0.0.0", 9090).await?;
///
/// // ...and a caller that finds it, waiting up to 2 s for the first answer.
/// let mesh = ServiceMesh::builder()
///     .discovery(MdnsDiscovery::new().first_resolution_wait(Duration::from_secs(2)))
///     .build();
/// let client = VspClient::builder(mesh).build();
/// let health = client.call("user-service", "health", serde_json::json!({})).await?;
/// # Ok(())
/// # }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "mdns")))]
pub struct MdnsDiscovery {
    service_type: String,
    interfaces: Vec<String>,
    first_resolution_wait: Duration,
    /// Started by the first `start` or `announce`.
    daemon: OnceLock<Result<ServiceDaemon, String>>,
    /// Full names of the instances this discovery announced, by `host:port` of the server.
    announced: Mutex<HashMap<String, String>>,
    /// When browsing began: once it has run for `first_resolution_wait`, whatever answers
    /// exist have come in, and a call that finds no instance fails at once.
    browsing_since: OnceLock<std::time::Instant>,
}

impl std::fmt::Debug for MdnsDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MdnsDiscovery")
            .field("service_type", &self.service_type)
            .field("interfaces", &self.interfaces)
            .field("first_resolution_wait", &self.first_resolution_wait)
            .finish_non_exhaustive()
    }
}

impl Default for MdnsDiscovery {
    fn default() -> Self {
        MdnsDiscovery::new()
    }
}

impl MdnsDiscovery {
    /// Service type `_vsp._tcp.local.`, every interface, calls wait up to 3 s for a first
    /// resolution.
    pub fn new() -> Self {
        MdnsDiscovery {
            service_type: DEFAULT_SERVICE_TYPE.to_owned(),
            interfaces: Vec::new(),
            first_resolution_wait: Duration::from_secs(3),
            daemon: OnceLock::new(),
            announced: Mutex::new(HashMap::new()),
            browsing_since: OnceLock::new(),
        }
    }

    /// The DNS-SD service type to announce and browse (default `_vsp._tcp.local.`).
    pub fn service_type(mut self, service_type: impl Into<String>) -> Self {
        self.service_type = service_type.into();
        self
    }

    /// Uses only this network interface (by name, like `eth0`); call again to add more.
    /// Default: every interface.
    pub fn interface(mut self, name: impl Into<String>) -> Self {
        self.interfaces.push(name.into());
        self
    }

    /// How long a call to a service not resolved yet waits before `NoInstances` (default 3 s).
    /// Once the browse has run this long, a call that finds no instance fails at once.
    pub fn first_resolution_wait(mut self, wait: Duration) -> Self {
        self.first_resolution_wait = wait;
        self
    }

    fn daemon(&self) -> Result<&ServiceDaemon, VspError> {
        self.daemon
            .get_or_init(|| {
                let daemon = ServiceDaemon::new().map_err(|err| err.to_string())?;
                if !self.interfaces.is_empty() {
                    daemon
                        .disable_interface(IfKind::All)
                        .map_err(|err| err.to_string())?;
                    for name in &self.interfaces {
                        daemon
                            .enable_interface(IfKind::Name(name.clone()))
                            .map_err(|err| err.to_string())?;
                    }
                }
                Ok(daemon)
            })
            .as_ref()
            .map_err(|reason| VspError::Discovery {
                backend: "mdns",
                reason: format!("cannot start the mDNS daemon: {reason}"),
            })
    }
}

impl Drop for MdnsDiscovery {
    fn drop(&mut self) {
        if let Some(Ok(daemon)) = self.daemon.get() {
            // Unregisters (goodbye packets) whatever is still announced, and stops the thread.
            let _ = daemon.shutdown();
        }
    }
}

impl Discovery for MdnsDiscovery {
    fn start(&self, registry: MeshRegistry) {
        let daemon = match self.daemon() {
            Ok(daemon) => daemon,
            Err(err) => {
                tracing::error!("mDNS discovery is off: {err}");
                return;
            }
        };
        let events = match daemon.browse(&self.service_type) {
            Ok(events) => events,
            Err(err) => {
                tracing::error!(service_type = %self.service_type, "cannot browse mDNS: {err}");
                return;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("vsp-mdns-browse".into())
            .spawn(move || {
                let mut browser = Browser {
                    registry,
                    known: HashMap::new(),
                };
                // Ends when the daemon shuts down (the discovery was dropped) or the mesh is gone.
                while let Ok(event) = events.recv() {
                    if browser.registry.is_closed() {
                        return;
                    }
                    browser.handle(event);
                }
            });
        match spawned {
            Ok(_) => {
                let _ = self.browsing_since.set(std::time::Instant::now());
            }
            Err(err) => tracing::error!("cannot start the mDNS browser thread: {err}"),
        }
    }

    fn announce<'a>(&'a self, info: &'a ServiceInfo) -> BoxFuture<'a, Result<(), VspError>> {
        Box::pin(async move {
            super::require_tcp("mdns", info)?;
            let daemon = self.daemon()?;
            let hostname = local_hostname();
            let instance = instance_name(info.name(), &hostname, info.port());
            let mut properties = vec![
                ("service", info.name().to_owned()),
                ("weight", info.weight().to_string()),
                ("vsp", PROTOCOL_VERSION.to_string()),
            ];
            if info.is_tls() {
                properties.push(("tls", "1".to_owned()));
            }
            let host_name = format!("{hostname}.local.");
            let unspecified = matches!(info.host(), "0.0.0.0" | "::");
            let address = if unspecified { "" } else { info.host() };
            let mut record = mdns_sd::ServiceInfo::new(
                &self.service_type,
                &instance,
                &host_name,
                address,
                info.port(),
                &properties[..],
            )
            .map_err(|err| VspError::Discovery {
                backend: "mdns",
                reason: format!("cannot describe {instance}: {err}"),
            })?;
            if unspecified {
                // Every address of every enabled interface, kept current by the daemon.
                record = record.enable_addr_auto();
            }
            let fullname = record.get_fullname().to_owned();
            daemon.register(record).map_err(|err| VspError::Discovery {
                backend: "mdns",
                reason: format!("cannot announce {fullname}: {err}"),
            })?;
            tracing::info!(%fullname, "announced over mDNS");
            self.announced
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(info.address().to_string(), fullname);
            Ok(())
        })
    }

    fn withdraw<'a>(&'a self, info: &'a ServiceInfo) -> BoxFuture<'a, Result<(), VspError>> {
        Box::pin(async move {
            let fullname = self
                .announced
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&info.address().to_string());
            let Some(fullname) = fullname else {
                return Ok(());
            };
            let daemon = self.daemon()?;
            let status = daemon
                .unregister(&fullname)
                .map_err(|err| VspError::Discovery {
                    backend: "mdns",
                    reason: format!("cannot withdraw {fullname}: {err}"),
                })?;
            // The goodbye packets go out before the daemon answers; wait for that, boundedly.
            let answered = tokio::time::timeout(Duration::from_secs(2), status.recv_async()).await;
            if answered.is_err() {
                tracing::warn!(%fullname, "the mDNS daemon did not confirm the withdrawal within 2 s");
            }
            Ok(())
        })
    }

    fn first_resolution_wait(&self) -> Duration {
        self.first_resolution_wait
    }

    /// Multicast answers have no end; once the browse has run for `first_resolution_wait`,
    /// the instances that were there have answered.
    fn has_answered(&self, _service: &str) -> bool {
        self.browsing_since
            .get()
            .is_some_and(|since| since.elapsed() >= self.first_resolution_wait)
    }
}

/// Turns browse events into mesh changes.
struct Browser {
    registry: MeshRegistry,
    /// What each resolved full name was registered as, to remove or replace it.
    known: HashMap<String, ServiceInfo>,
}

impl Browser {
    fn handle(&mut self, event: ServiceEvent) {
        match event {
            ServiceEvent::ServiceResolved(resolved) => {
                let fullname = resolved.fullname.clone();
                let addresses: Vec<IpAddr> = resolved
                    .addresses
                    .iter()
                    .map(|scoped| scoped.to_ip_addr())
                    .collect();
                let txt = |key: &str| {
                    resolved
                        .txt_properties
                        .get_property_val_str(key)
                        .map(str::to_owned)
                };
                match instance_from_txt(
                    &fullname,
                    txt("service"),
                    txt("weight"),
                    txt("vsp"),
                    &addresses,
                    resolved.port,
                ) {
                    Ok(info) => {
                        let tls = txt("tls").is_some_and(|tls| tls.trim() == "1");
                        self.upsert(fullname, info.with_tls(tls))
                    }
                    Err(reason) => {
                        tracing::warn!(%fullname, "ignoring an mDNS instance: {reason}");
                        self.remove(&fullname);
                    }
                }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => self.remove(&fullname),
            _ => {}
        }
    }

    fn upsert(&mut self, fullname: String, info: ServiceInfo) {
        if let Some(previous) = self.known.get(&fullname) {
            if previous.address().to_string() != info.address().to_string()
                || previous.name() != info.name()
            {
                self.registry.remove_at(previous.name(), previous.address());
            }
        }
        match self.registry.upsert(info.clone()) {
            Ok(()) => {
                tracing::debug!(%fullname, endpoint = %info.address().to_string(), "mDNS instance resolved");
                self.known.insert(fullname, info);
            }
            Err(err) => tracing::warn!(%fullname, "ignoring an mDNS instance: {err}"),
        }
    }

    fn remove(&mut self, fullname: &str) {
        if let Some(info) = self.known.remove(fullname) {
            tracing::debug!(%fullname, "mDNS instance removed");
            self.registry.remove_at(info.name(), info.address());
        }
    }
}

/// Reads an instance from its TXT record and addresses. A missing or unreadable weight falls
/// back to 1 (with a warning for the unreadable); a missing service name, an unknown protocol
/// version or no address skips the instance.
fn instance_from_txt(
    fullname: &str,
    service: Option<String>,
    weight: Option<String>,
    version: Option<String>,
    addresses: &[IpAddr],
    port: u16,
) -> Result<ServiceInfo, String> {
    let service = service
        .filter(|s| !s.is_empty())
        .ok_or("its TXT record has no `service`")?;
    if let Some(version) = version {
        if version.trim() != PROTOCOL_VERSION.to_string() {
            return Err(format!(
                "it speaks protocol version {version:?}, this client speaks {PROTOCOL_VERSION}"
            ));
        }
    }
    let weight = match weight {
        None => 1.0,
        Some(text) => match text.trim().parse::<f64>() {
            Ok(weight) if weight.is_finite() && weight > 0.0 => weight,
            _ => {
                tracing::warn!(%fullname, weight = %text, "unreadable weight in the TXT record; using 1");
                1.0
            }
        },
    };
    // IPv4 first, then global IPv6; a link-local IPv6 address needs a scope we cannot dial by.
    let address = addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| {
            addresses
                .iter()
                .find(|a| matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) != 0xfe80))
        })
        .ok_or("it has no address that can be dialed")?;
    Ok(ServiceInfo::new(service, address.to_string(), port).with_weight(weight))
}

/// This machine's host name, for the SRV target and the instance name.
fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "vsp-host".to_owned())
}

/// `service-host-port`: unique per host and port, within DNS's 63-byte label limit.
fn instance_name(service: &str, hostname: &str, port: u16) -> String {
    let suffix = format!("-{hostname}-{port}");
    let room = 63usize.saturating_sub(suffix.len());
    let service: String = service.chars().take(room).collect();
    format!("{service}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> Vec<IpAddr> {
        vec!["127.0.0.1".parse().unwrap()]
    }

    fn txt(
        service: &str,
        weight: Option<&str>,
        version: Option<&str>,
    ) -> Result<ServiceInfo, String> {
        instance_from_txt(
            "x._vsp._tcp.local.",
            Some(service.to_owned()),
            weight.map(str::to_owned),
            version.map(str::to_owned),
            &v4(),
            9090,
        )
    }

    #[test]
    fn weights_like_1_0_and_3_parse() {
        assert_eq!(txt("svc", Some("1.0"), Some("1")).unwrap().weight(), 1.0);
        assert_eq!(txt("svc", Some("3"), None).unwrap().weight(), 3.0);
    }

    #[test]
    fn a_missing_or_bad_weight_defaults_to_one() {
        assert_eq!(txt("svc", None, Some("1")).unwrap().weight(), 1.0);
        assert_eq!(txt("svc", Some("heavy"), Some("1")).unwrap().weight(), 1.0);
        assert_eq!(txt("svc", Some("-2"), Some("1")).unwrap().weight(), 1.0);
        assert_eq!(txt("svc", Some("NaN"), Some("1")).unwrap().weight(), 1.0);
    }

    #[test]
    fn an_unknown_version_or_no_service_is_skipped() {
        assert!(txt("svc", Some("1"), Some("2"))
            .unwrap_err()
            .contains("version"));
        assert!(txt("", Some("1"), Some("1"))
            .unwrap_err()
            .contains("service"));
        let none = instance_from_txt("x", None, None, None, &v4(), 1);
        assert!(none.is_err());
    }

    #[test]
    fn ipv4_is_preferred_and_link_local_ipv6_is_not_dialed() {
        let link_local: IpAddr = "fe80::1".parse().unwrap();
        let global: IpAddr = "2001:db8::1".parse().unwrap();
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let pick =
            |addrs: &[IpAddr]| instance_from_txt("x", Some("s".into()), None, None, addrs, 1);
        assert_eq!(pick(&[global, v4]).unwrap().host(), "10.0.0.1");
        assert_eq!(pick(&[link_local, global]).unwrap().host(), "2001:db8::1");
        assert_eq!(
            pick(&[global]).unwrap().address().to_string(),
            "[2001:db8::1]:1"
        );
        assert!(pick(&[link_local]).is_err());
    }

    #[test]
    fn instance_names_fit_a_dns_label() {
        assert_eq!(
            instance_name("user-service", "web1", 9090),
            "user-service-web1-9090"
        );
        assert!(instance_name(&"s".repeat(100), "host", 1).len() <= 63);
    }
}
