//! Discovery: where a mesh's instances come from.
//!
//! Why discovery pushes: a discovery source (a static list, an mDNS browser, a Consul watch)
//! learns of changes on its own schedule, so it writes them into the mesh through a
//! [`MeshRegistry`] as they happen, and a call never waits on discovery.
// Its examples use every backend: doctests only when all four are built.
#![cfg_attr(
    any(
        not(doctest),
        all(feature = "mdns", feature = "consul", feature = "etcd", feature = "dns")
    ),
    doc = include_str!("../docs/discovery.md")
)]

#[cfg(feature = "consul")]
mod consul;
#[cfg(feature = "dns")]
mod dns;
#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "mdns")]
mod mdns;
mod registry;
pub(crate) mod static_list;

use std::time::Duration;

#[cfg(feature = "consul")]
#[cfg_attr(docsrs, doc(cfg(feature = "consul")))]
pub use consul::{ConsulCheck, ConsulConfig, ConsulDiscovery};
#[cfg(feature = "dns")]
#[cfg_attr(docsrs, doc(cfg(feature = "dns")))]
pub use dns::{DnsConfig, DnsDiscovery};
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub use etcd::{EtcdConfig, EtcdDiscovery};
#[cfg(feature = "mdns")]
#[cfg_attr(docsrs, doc(cfg(feature = "mdns")))]
pub use mdns::MdnsDiscovery;
pub(crate) use registry::Membership;
pub use registry::MeshRegistry;
pub(crate) use static_list::StaticDiscovery;

use crate::error::VspError;
use crate::instance::ServiceInfo;
use crate::BoxFuture;

/// A source of service instances; pass one to
/// [`ServiceMeshBuilder::discovery`](crate::ServiceMeshBuilder::discovery).
///
/// ```
/// use vsp::discovery::Discovery;
/// use vsp::discovery::MeshRegistry;
/// use vsp::ServiceInfo;
///
/// /// Instances read once from an environment variable like `host:port,host:port`.
/// struct FromEnv(&'static str);
///
/// impl Discovery for FromEnv {
///     fn start(&self, registry: MeshRegistry) {
///         for addr in std::env::var(self.0).unwrap_or_default().split(',') {
///             if let Some((host, port)) = addr.rsplit_once(':') {
///                 if let Ok(port) = port.parse() {
///                     let _ = registry.upsert(ServiceInfo::new("user-service", host, port));
///                 }
///             }
///         }
///     }
/// }
///
/// let mesh = vsp::ServiceMesh::builder().discovery(FromEnv("USER_SERVICE_ADDRS")).build();
/// # drop(mesh);
/// ```
pub trait Discovery: Send + Sync + 'static {
    /// Called once, when the mesh is built: from now on, feed instances into `registry`
    /// (synchronously here, or from a task or thread that runs until
    /// [`MeshRegistry::is_closed`]). It may be called outside a tokio runtime.
    fn start(&self, registry: MeshRegistry);

    /// Makes a local server known to others: a [`VspManager`](crate::VspManager) built with
    /// this mesh calls it from `start_server`. `info.host()` is the advertised host, `0.0.0.0`
    /// or `::` when the server listens on every address. The default does nothing.
    fn announce<'a>(&'a self, info: &'a ServiceInfo) -> BoxFuture<'a, Result<(), VspError>> {
        let _ = info;
        Box::pin(async { Ok(()) })
    }

    /// Withdraws what [`announce`](Discovery::announce) published; called from `shutdown`.
    fn withdraw<'a>(&'a self, info: &'a ServiceInfo) -> BoxFuture<'a, Result<(), VspError>> {
        let _ = info;
        Box::pin(async { Ok(()) })
    }

    /// How long a call to a service with no instance yet may wait for this discovery's first
    /// answer before failing with `NoInstances` (default zero: static lists have nothing to
    /// wait for).
    fn first_resolution_wait(&self) -> Duration {
        Duration::ZERO
    }

    /// True once this discovery's answer about `service` is complete, even if it listed no
    /// instance: a call that finds none then fails with `NoInstances` at once instead of
    /// waiting [`first_resolution_wait`](Discovery::first_resolution_wait). Call
    /// [`MeshRegistry::answered`] when it turns true, to wake calls already waiting.
    /// Default: `false` (calls wait up to `first_resolution_wait`).
    fn has_answered(&self, service: &str) -> bool {
        let _ = service;
        false
    }

    /// A call found no instance of `service`: start looking for it, if this discovery looks per
    /// service (Consul watches one service per query). Called from inside the runtime. The
    /// default does nothing.
    fn watch(&self, service: &str) {
        let _ = service;
    }

    /// Why `service` has no instance when that is the discovery's fault (it never answered),
    /// reported instead of `NoInstances`. Default: `None`.
    fn resolution_error(&self, service: &str) -> Option<VspError> {
        let _ = service;
        None
    }
}

/// mDNS and Consul publish TCP addresses only: a Unix socket or in-memory name means nothing on
/// another host.
#[cfg(any(feature = "mdns", feature = "consul"))]
fn require_tcp(backend: &'static str, info: &ServiceInfo) -> Result<(), VspError> {
    if info.address().is_tcp() {
        return Ok(());
    }
    Err(VspError::Discovery {
        backend,
        reason: format!(
            "cannot announce {} of `{}`: {backend} announces TCP addresses only",
            info.address(),
            info.name()
        ),
    })
}
