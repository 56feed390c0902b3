//! The client's background work: probes that re-admit ejected instances, active health checks,
//! and the sweeper that closes idle connections.
//!
//! The health state and its transitions live with the instance
//! ([`HealthPolicy`](crate::HealthPolicy)); this file only runs the loops that feed them.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::ClientInner;
use crate::instance::{HealthStatus, Instance, Verdict};
use crate::protocol::HEALTH_ENDPOINT;

#[derive(Serialize)]
struct EmptyBody {}

impl ClientInner {
    pub(super) fn report_failure(self: &Arc<Self>, instance: &Arc<Instance>, connect: bool) {
        let verdict = self.mesh.health().record_failure(instance, connect);
        self.follow_up(instance, verdict);
    }

    pub(super) fn eject(self: &Arc<Self>, instance: &Arc<Instance>) {
        let verdict = self.mesh.health().eject(instance);
        self.follow_up(instance, verdict);
    }

    fn follow_up(self: &Arc<Self>, instance: &Arc<Instance>, verdict: Verdict) {
        if let Verdict::ProbeAfter(wait) = verdict {
            self.spawn_probe(instance, wait);
        }
    }

    /// Probes an ejected instance after `wait`, backing off, until it answers `health` (then it
    /// is re-admitted), it leaves the mesh, or this client is dropped.
    fn spawn_probe(self: &Arc<Self>, instance: &Arc<Instance>, wait: Duration) {
        let client = Arc::downgrade(self);
        let service = instance.service().to_owned();
        let endpoint = instance.endpoint_arc().clone();
        tokio::spawn(async move {
            let mut wait = wait;
            loop {
                tokio::time::sleep(wait).await;
                let Some(client) = client.upgrade() else {
                    return;
                };
                // Looked up each time: a re-registration replaces the instance, not its health.
                let Some(instance) = client
                    .mesh
                    .instance_handles(&service)
                    .into_iter()
                    .find(|i| **i.endpoint_arc() == *endpoint)
                else {
                    return;
                };
                if client.probe(&instance).await {
                    client.mesh.health().readmit(&instance);
                    return;
                }
                wait = client.mesh.health().probe_failed(&instance);
            }
        });
    }

    /// Calls `health` on `instance` directly, bypassing its status; true if it answered healthy.
    async fn probe(&self, instance: &Instance) -> bool {
        let timeout = self.config.connect_timeout;
        let deadline = Instant::now() + timeout;
        let pool = self.pools.of(instance);
        let Ok(connection) = pool.get(timeout).await else {
            return false;
        };
        let Ok(mut call) =
            connection.send(instance.service(), HEALTH_ENDPOINT, &EmptyBody {}, deadline)
        else {
            return false;
        };
        matches!(call.wait().await, Ok(response) if response.error_code.is_none())
    }

    /// Starts the background tasks once, from the first call (which runs inside a runtime).
    pub(super) fn start_background(self: &Arc<Self>) {
        // A plain load first: after the first call this is a read of a shared cache line.
        if self.background.load(Ordering::Acquire) || self.background.swap(true, Ordering::AcqRel) {
            return;
        }
        let idle = self.config.idle_timeout;
        let sweep_every = (idle / 2).clamp(Duration::from_millis(10), Duration::from_secs(30));
        tokio::spawn(sweep_idle(Arc::downgrade(self), idle, sweep_every));
        if let Some(interval) = self.config.health_check_interval {
            tokio::spawn(check_health(Arc::downgrade(self), interval));
        }
    }
}

/// Closes idle connections and forgets pools of instances that left the mesh.
async fn sweep_idle(client: Weak<ClientInner>, idle: Duration, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(client) = client.upgrade() else {
            return;
        };
        client.pools.sweep(idle, || {
            client
                .mesh
                .services()
                .iter()
                .flat_map(|service| client.mesh.instance_handles(service))
                .map(|instance| instance.endpoint_arc().clone())
                .collect()
        });
    }
}

/// Active health checks: pings every instance's `health` endpoint at `interval`.
async fn check_health(client: Weak<ClientInner>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(client) = client.upgrade() else {
            return;
        };
        for service in client.mesh.services() {
            for instance in client.mesh.instance_handles(&service) {
                if instance.is_probing() {
                    continue; // an ejection probe owns it
                }
                if client.probe(&instance).await {
                    if instance.status() != HealthStatus::Healthy {
                        client.mesh.health().readmit(&instance);
                    }
                } else {
                    client.eject(&instance);
                }
            }
        }
    }
}
