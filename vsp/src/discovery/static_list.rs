//! Static discovery: the instances registered by hand, nothing else.

use std::sync::{Arc, Mutex, PoisonError};

use super::MeshRegistry;
use super::{BoxFuture, Discovery};
use crate::error::VspError;
use crate::instance::ServiceInfo;
use crate::transport::Address;

/// A fixed list of instances, kept up to date by hand: the default discovery.
///
/// Instances given before the mesh is built are registered when it starts; afterwards,
/// `register` and `deregister` change the mesh directly (as
/// [`ServiceMesh::register`](crate::ServiceMesh::register) does). Clones share one list.
///
/// ```
/// use vsp::{ServiceInfo, ServiceMesh, StaticDiscovery};
///
/// let discovery = StaticDiscovery::new();
/// discovery.register(ServiceInfo::new("user-service", "127.0.0.1", 9090))?;
/// let mesh = ServiceMesh::builder().discovery(discovery.clone()).build();
/// discovery.register(ServiceInfo::new("user-service", "127.0.0.1", 9091))?;
/// assert_eq!(mesh.instances("user-service").len(), 2);
/// assert_eq!(discovery.instances("user-service").len(), 2);
/// # Ok::<(), vsp::VspError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct StaticDiscovery {
    state: Arc<Mutex<StaticState>>,
}

#[derive(Debug)]
enum StaticState {
    /// Not attached to a mesh yet: instances wait here.
    Pending(Vec<ServiceInfo>),
    Attached(MeshRegistry),
}

impl Default for StaticState {
    fn default() -> Self {
        StaticState::Pending(Vec::new())
    }
}

impl StaticDiscovery {
    /// An empty list.
    pub fn new() -> Self {
        StaticDiscovery::default()
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut StaticState) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Adds an instance, or updates the one at the same host and port.
    ///
    /// # Errors
    /// [`VspError::InvalidInstance`] for an empty name or host or a bad weight.
    pub fn register(&self, info: ServiceInfo) -> Result<(), VspError> {
        info.validate()?;
        self.with_state(|state| match state {
            StaticState::Attached(registry) => registry.upsert(info),
            StaticState::Pending(list) => {
                list.retain(|known| {
                    !(known.name() == info.name() && known.address() == info.address())
                });
                list.push(info);
                Ok(())
            }
        })
    }

    /// Removes the TCP instance of `service` at `host:port`; true if it was registered.
    pub fn deregister(&self, service: &str, host: &str, port: u16) -> bool {
        self.deregister_at(service, &Address::tcp(host, port))
    }

    /// Removes the instance of `service` at `address`; true if it was registered.
    pub fn deregister_at(&self, service: &str, address: &Address) -> bool {
        self.with_state(|state| match state {
            StaticState::Attached(registry) => registry.remove_at(service, address),
            StaticState::Pending(list) => {
                let before = list.len();
                list.retain(|known| !(known.name() == service && known.address() == address));
                list.len() != before
            }
        })
    }

    /// The instances of `service`.
    pub fn instances(&self, service: &str) -> Vec<ServiceInfo> {
        self.with_state(|state| match state {
            StaticState::Attached(registry) => registry.instances(service),
            StaticState::Pending(list) => list
                .iter()
                .filter(|i| i.name() == service)
                .cloned()
                .collect(),
        })
    }
}

impl Discovery for StaticDiscovery {
    /// Registers a local server in the list (an unspecified host becomes loopback).
    fn announce<'a>(&'a self, info: &'a ServiceInfo) -> BoxFuture<'a, Result<(), VspError>> {
        Box::pin(async move { self.register(local(info)) })
    }

    fn withdraw<'a>(&'a self, info: &'a ServiceInfo) -> BoxFuture<'a, Result<(), VspError>> {
        Box::pin(async move {
            let info = local(info);
            self.deregister_at(info.name(), info.address());
            Ok(())
        })
    }

    fn start(&self, registry: MeshRegistry) {
        self.with_state(|state| {
            if let StaticState::Pending(list) = std::mem::take(state) {
                for info in list {
                    // Validated when it was registered here.
                    let _ = registry.upsert(info);
                }
            }
            *state = StaticState::Attached(registry);
        });
    }
}

/// A server listening on every address is reachable on loopback from this process.
fn local(info: &ServiceInfo) -> ServiceInfo {
    let loopback = match info.address().host() {
        Some("0.0.0.0") => "127.0.0.1",
        Some("::") => "::1",
        _ => return info.clone(),
    };
    ServiceInfo::new(info.name(), loopback, info.port()).with_weight(info.weight())
}
