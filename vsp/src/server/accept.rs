//! The accept loop: admits connections under the caps and backs off when the process is out
//! of file descriptors.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::admission::{AcceptBackoff, RefusalLog};
use super::*;
use crate::transport::Listener;

pub(super) async fn accept_loop(mut listener: Box<dyn Listener>, manager: Arc<ManagerInner>) {
    let mut lifecycle = manager.lifecycle();
    let mut backoff = AcceptBackoff::default();
    let mut refusals = RefusalLog::default();
    let config = &manager.config;
    loop {
        let accepted = tokio::select! {
            _ = lifecycle.wait_for(|state| *state != Lifecycle::Running) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.succeeded();
                let admitted = manager.admission.admit(
                    &peer,
                    config.max_connections,
                    config.max_connections_per_peer,
                );
                match admitted {
                    Ok(admitted) => {
                        tokio::spawn(connection::serve_connection(
                            stream,
                            peer,
                            manager.clone(),
                            admitted,
                        ));
                    }
                    Err(refusal) => {
                        drop(stream);
                        manager
                            .admission
                            .connections_refused
                            .fetch_add(1, Ordering::Relaxed);
                        refusals.refused(&manager.name, &peer, refusal);
                    }
                }
            }
            Err(err) if admission::is_connection_error(&err) => {
                tracing::debug!(service = %manager.name, "accept failed for one connection: {err}");
            }
            Err(err) => {
                // Out of file descriptors or memory: pause, longer while it lasts, instead of
                // spinning (and logging) on a listener that stays ready.
                manager
                    .admission
                    .accept_errors
                    .fetch_add(1, Ordering::Relaxed);
                let pause = backoff.failed();
                tracing::warn!(service = %manager.name, "accept failed: {err}; next try in {pause:?}");
                tokio::select! {
                    _ = lifecycle.wait_for(|state| *state != Lifecycle::Running) => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    tracing::debug!(service = %manager.name, "stopped accepting");
}
