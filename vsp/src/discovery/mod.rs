//! Discovery: where a mesh's instances come from.
//!
//! Why discovery pushes: a discovery source (a static list, an mDNS browser, a Consul watch)
//! learns of changes on its own schedule, so it writes them into the mesh through a
//! [`MeshRegistry`] as they happen, and a call never waits on discovery.

mod static_list;

pub use static_list::StaticDiscovery;

use crate::mesh::MeshRegistry;

/// A source of service instances; pass one to
/// [`ServiceMeshBuilder::discovery`](crate::ServiceMeshBuilder::discovery).
///
/// ```
/// use vsp::discovery::Discovery;
/// use vsp::mesh::MeshRegistry;
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
    /// (synchronously here, or from a task that runs until [`MeshRegistry::is_closed`]).
    fn start(&self, registry: MeshRegistry);
}
