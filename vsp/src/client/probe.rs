//! The client's side of health: the prober it gives the mesh (a `health` call on a fresh
//! connection, dialed as this client dials), liveness checks of connections that went silent,
//! active health checks, and the sweeper that closes idle connections and re-probes orphaned
//! ejections.
//!
//! The health state and its transitions live with the instance
//! ([`HealthPolicy`](crate::HealthPolicy)); the mesh runs the ejection probes, so they outlive
//! any one client.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::connection::Connection;
use super::ClientInner;
use crate::deadline::{self, FOREVER};
use crate::instance::{HealthStatus, Instance};
use crate::mesh::Prober;
use crate::protocol::HEALTH_ENDPOINT;
use crate::transport::Connector;
use crate::BoxFuture;

#[derive(Serialize)]
pub(super) struct EmptyBody {}

/// The longest a liveness check of a silent connection waits for its `health` answer.
const MAX_LIVENESS_WAIT: Duration = Duration::from_secs(5);
/// The shortest.
const MIN_LIVENESS_WAIT: Duration = Duration::from_millis(50);

impl ClientInner {
    /// Calls `health` on `instance` over a fresh connection, bypassing its status; true if it
    /// answered healthy.
    async fn probe(&self, instance: &Instance) -> bool {
        self.prober().probe_now(instance).await
    }

    pub(super) fn prober(&self) -> ClientProber {
        ClientProber {
            connector: self.pools.connector().clone(),
            timeout: self.config.connect_timeout,
            max_frame_size: self.config.limits.max_frame_size,
        }
    }

    /// Checks, in the background, that `connection` still answers after a call on it timed out
    /// without hearing anything: a `health` call on the same connection. The connection takes no
    /// new call meanwhile (the pool retires it; calls on it finish). No answer within `patience`
    /// (the call's own timeout, at most the connect timeout) means the flow is dead (a
    /// blackholing NAT, a stalled server): the connection is closed and the instance is charged
    /// one transport failure. An answer means the endpoint was merely slow: nothing is charged.
    pub(super) fn check_connection(
        self: &Arc<Self>,
        connection: &Arc<Connection>,
        instance: &Arc<Instance>,
        patience: Duration,
    ) {
        if !connection.start_check() {
            return;
        }
        let client = Arc::downgrade(self);
        let connection = connection.clone();
        let instance = instance.clone();
        tokio::spawn(async move {
            let Some(timeout) = client.upgrade().map(|c| {
                patience
                    .min(c.config.connect_timeout)
                    .clamp(MIN_LIVENESS_WAIT, MAX_LIVENESS_WAIT)
            }) else {
                return;
            };
            let now = Instant::now();
            let answered = match connection.send(
                instance.service(),
                HEALTH_ENDPOINT,
                &EmptyBody {},
                None,
                None,
                (now, now + timeout),
                None,
            ) {
                Ok(mut call) => call.wait().await.is_ok(),
                Err(_) => false,
            };
            connection.end_check();
            if answered {
                return;
            }
            let cause =
                format!("the connection stopped answering (no `health` answer within {timeout:?})");
            connection.close(cause.clone());
            if let Some(client) = client.upgrade() {
                client.mesh.report_failure(&instance, false, &cause);
            }
        });
    }

    /// Starts the background tasks once, from the first call (which runs inside a runtime).
    pub(super) fn start_background(self: &Arc<Self>) {
        // A plain load first: after the first call this is a read of a shared cache line.
        if self.background.load(Ordering::Acquire) || self.background.swap(true, Ordering::AcqRel) {
            return;
        }
        let idle = self.config.idle_timeout.min(FOREVER);
        // Every second at most: the sweep also re-probes instances whose probe died.
        let sweep_every = (idle / 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let client = Arc::downgrade(self);
        tokio::spawn(async move {
            // If this task dies with its runtime, the next call (on another runtime) starts it
            // again.
            struct Restart(Weak<ClientInner>);
            impl Drop for Restart {
                fn drop(&mut self) {
                    if let Some(client) = self.0.upgrade() {
                        client.background.store(false, Ordering::Release);
                    }
                }
            }
            let _restart = Restart(client.clone());
            sweep_idle(client, idle, sweep_every).await;
        });
        if let Some(keepalive) = self.config.keepalive {
            tokio::spawn(keep_alive(Arc::downgrade(self), keepalive));
        }
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
        client.mesh.revive_orphans();
        client.pools.sweep(idle, || {
            client
                .mesh
                .services()
                .iter()
                .flat_map(|service| client.mesh.instance_handles(service))
                .map(|instance| instance.key_arc().clone())
                .collect()
        });
    }
}

/// When a client pings its connections (see
/// [`VspClientBuilder::keepalive`](crate::VspClientBuilder::keepalive)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Keepalive {
    pub(crate) busy: Duration,
    pub(crate) idle: Duration,
    pub(crate) timeout: Duration,
}

/// Keepalive pings: every tick, each open connection that has heard nothing for `busy` with
/// calls in flight (or `idle` without) gets a `health` call on it; no answer within `timeout`
/// closes it (its calls fail at once, and idempotent ones go elsewhere) and ejects its instance.
async fn keep_alive(client: Weak<ClientInner>, keepalive: Keepalive) {
    let tick = (keepalive.busy / 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        let Some(client) = client.upgrade() else {
            return;
        };
        for service in client.mesh.services() {
            for instance in client.mesh.instance_handles(&service) {
                for connection in client.pools.connections_of(&instance) {
                    if connection.keepalive_due(keepalive.busy, keepalive.idle)
                        && connection.start_ping()
                    {
                        tokio::spawn(ping(
                            Arc::downgrade(&client),
                            connection,
                            instance.clone(),
                            keepalive.timeout,
                        ));
                    }
                }
            }
        }
    }
}

/// One keepalive ping; see [`keep_alive`].
async fn ping(
    client: Weak<ClientInner>,
    connection: Arc<Connection>,
    instance: Arc<Instance>,
    timeout: Duration,
) {
    let before = connection.last_active();
    let now = Instant::now();
    let sent = connection.send(
        instance.service(),
        HEALTH_ENDPOINT,
        &EmptyBody {},
        None,
        None,
        (now, now + timeout),
        None,
    );
    connection.restore_last_active(before, connection.last_active());
    // Any answer will do, an error too (a peer without `health`, such as Velithon, answers
    // `not_found`): it shows the peer reads and writes.
    let answered = match sent {
        Ok(mut call) => call.wait().await.is_ok(),
        Err(_) => false,
    };
    connection.end_ping();
    if answered || connection.is_closed() {
        return;
    }
    let cause = format!("no answer to a keepalive ping within {timeout:?}");
    tracing::warn!(instance = instance.key(), "{cause}: closing the connection");
    connection.close(cause.clone());
    if let Some(client) = client.upgrade() {
        client.mesh.eject(&instance, &cause);
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
                if instance.is_probing() || instance.health().is_pinned_out() {
                    continue; // an ejection probe owns it, or the user took it out
                }
                if client.probe(&instance).await {
                    if instance.status() != HealthStatus::Healthy {
                        client.mesh.readmit(&instance);
                    }
                } else {
                    client
                        .mesh
                        .eject(&instance, &"an active health check got no answer");
                }
            }
        }
    }
}

/// Probes with a client's connector and limits, on a connection of its own: a dead pooled
/// connection cannot fool it, and it refreshes no pooled connection's idle clock.
pub(super) struct ClientProber {
    connector: Arc<dyn Connector>,
    timeout: Duration,
    max_frame_size: usize,
}

impl ClientProber {
    async fn probe_now(&self, instance: &Instance) -> bool {
        let deadline = deadline::after(Instant::now(), self.timeout);
        let target = instance.target();
        let connect = async {
            let io = self.connector.connect_to(&target).await?;
            io.established(self.timeout).await
        };
        let Ok(Ok(io)) = tokio::time::timeout_at(deadline, connect).await else {
            return false;
        };
        let connection = Arc::new(Connection::start(
            io,
            instance.key_arc().clone(),
            self.max_frame_size,
            None,
        ));
        let Ok(mut call) = connection.send(
            instance.service(),
            HEALTH_ENDPOINT,
            &EmptyBody {},
            None,
            None,
            (Instant::now(), deadline),
            None,
        ) else {
            return false;
        };
        let answered = matches!(call.wait().await, Ok(response) if response.error_code.is_none());
        drop(call);
        connection.close("probe done".to_owned());
        answered
    }
}

impl Prober for ClientProber {
    fn probe<'a>(&'a self, instance: &'a Instance) -> BoxFuture<'a, bool> {
        Box::pin(self.probe_now(instance))
    }
}
