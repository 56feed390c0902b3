//! `MeshRegistry`: the handle a discovery writes instances into.

use std::sync::Weak;

use crate::error::VspError;
use crate::instance::ServiceInfo;
use crate::transport::Address;

/// What a registry handle writes into: implemented by the mesh, which hands a discovery a
/// [`MeshRegistry`] over itself. Kept here, below the mesh, so discovery never depends on it.
pub(crate) trait Membership: Send + Sync {
    fn upsert(&self, info: ServiceInfo) -> Result<(), VspError>;
    fn remove(&self, service: &str, address: &Address) -> bool;
    fn instances(&self, service: &str) -> Vec<ServiceInfo>;
    fn answered(&self, service: &str);
    fn take_picked(&self, service: &str) -> bool;
}

/// The handle a [`Discovery`](super::Discovery) uses to feed the mesh it serves. It does not keep
/// the mesh alive: once the mesh is dropped, updates are ignored and [`MeshRegistry::is_closed`]
/// turns true, so a discovery task knows to stop.
#[derive(Clone)]
pub struct MeshRegistry {
    mesh: Weak<dyn Membership>,
}

impl std::fmt::Debug for MeshRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshRegistry")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl MeshRegistry {
    pub(crate) fn new(mesh: Weak<dyn Membership>) -> Self {
        MeshRegistry { mesh }
    }

    /// Adds an instance, or replaces the one at the same address.
    ///
    /// # Errors
    /// As [`ServiceMesh::register`](crate::ServiceMesh::register). Ignored (`Ok`) once the mesh
    /// is gone.
    pub fn upsert(&self, info: ServiceInfo) -> Result<(), VspError> {
        match self.mesh.upgrade() {
            Some(mesh) => mesh.upsert(info),
            None => Ok(()),
        }
    }

    /// Removes the TCP instance of `service` at `host:port`; true if it was registered.
    pub fn remove(&self, service: &str, host: &str, port: u16) -> bool {
        self.remove_at(service, &Address::tcp(host, port))
    }

    /// Removes the instance of `service` at `address`; true if it was registered.
    pub fn remove_at(&self, service: &str, address: &Address) -> bool {
        self.mesh
            .upgrade()
            .is_some_and(|mesh| mesh.remove(service, address))
    }

    /// The instances of `service` now in the mesh.
    pub fn instances(&self, service: &str) -> Vec<ServiceInfo> {
        match self.mesh.upgrade() {
            Some(mesh) => mesh.instances(service),
            None => Vec::new(),
        }
    }

    /// Tells calls waiting for a first instance of `service` that this discovery has answered
    /// for it (see [`Discovery::has_answered`](super::Discovery::has_answered)): those that
    /// found none stop waiting. Adding an instance wakes them anyway; this is for an answer that
    /// listed none.
    pub fn answered(&self, service: &str) {
        if let Some(mesh) = self.mesh.upgrade() {
            mesh.answered(service);
        }
    }

    /// True if a call picked an instance of `service` since the last time this was asked, for
    /// a discovery that stops watching services nobody calls any more.
    pub fn take_picked(&self, service: &str) -> bool {
        self.mesh
            .upgrade()
            .is_some_and(|mesh| mesh.take_picked(service))
    }

    /// True once the mesh has been dropped.
    pub fn is_closed(&self) -> bool {
        self.mesh.strong_count() == 0
    }
}
