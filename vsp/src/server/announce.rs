//! Announcing a started server through its mesh's discovery, and withdrawing it.

use std::sync::{Mutex, PoisonError};

use crate::error::VspError;
use crate::instance::ServiceInfo;
use crate::mesh::ServiceMesh;
use crate::transport::Address;

pub(super) struct Announcement {
    pub(super) mesh: ServiceMesh,
    pub(super) weight: f64,
    pub(super) advertise_host: Option<String>,
    /// What was announced, to withdraw it.
    pub(super) announced: Mutex<Option<ServiceInfo>>,
}

impl Announcement {
    pub(super) async fn announce(
        &self,
        service: &str,
        addr: &Address,
        tls: bool,
    ) -> Result<(), VspError> {
        let address = match (addr, &self.advertise_host) {
            (Address::Tcp { port, .. }, Some(host)) => Address::tcp(host.clone(), *port),
            _ => addr.clone(),
        };
        let info = ServiceInfo::at(service, address)
            .with_weight(self.weight)
            .with_tls(tls);
        self.mesh.announce(&info).await?;
        *self
            .announced
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(info);
        Ok(())
    }

    pub(super) async fn withdraw(&self) {
        let announced = self
            .announced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(info) = announced {
            if let Err(err) = self.mesh.withdraw(&info).await {
                tracing::warn!(
                    service = info.name(),
                    "could not withdraw the announcement: {err}"
                );
            }
        }
    }
}
