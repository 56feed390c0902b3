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
    loop {
        let accepted = tokio::select! {
            _ = lifecycle.wait_for(|state| *state != Lifecycle::Running) => break,
            accepted = listener.accept() => accepted,
        };
        let pause = match accepted {
            Ok((stream, peer)) => {
                backoff.succeeded();
                serve_if_admitted(&manager, stream, peer, &mut refusals);
                continue;
            }
            Err(err) => match accept_failed(&manager, &err, &mut backoff) {
                Some(pause) => pause,
                None => continue,
            },
        };
        tokio::select! {
            _ = lifecycle.wait_for(|state| *state != Lifecycle::Running) => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    tracing::debug!(service = %manager.name, "stopped accepting");
}

/// Serves a new connection on a task of its own if the caps admit it; else closes it at once.
fn serve_if_admitted(
    manager: &Arc<ManagerInner>,
    stream: crate::transport::Io,
    peer: crate::transport::Address,
    refusals: &mut RefusalLog,
) {
    let config = &manager.config;
    let admitted = manager.admission.admit(
        &peer,
        config.max_connections,
        config.max_connections_per_peer,
    );
    match admitted {
        Ok(admitted) => {
            let serving = connection::serve_connection(stream, peer, manager.clone(), admitted);
            tokio::spawn(serving);
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

/// How long to pause after a failed accept: none when only that one connection failed; when
/// the process is out of file descriptors or memory, longer while it lasts, instead of spinning
/// (and logging) on a listener that stays ready.
fn accept_failed(
    manager: &ManagerInner,
    err: &std::io::Error,
    backoff: &mut AcceptBackoff,
) -> Option<std::time::Duration> {
    if admission::is_connection_error(err) {
        tracing::debug!(service = %manager.name, "accept failed for one connection: {err}");
        return None;
    }
    manager
        .admission
        .accept_errors
        .fetch_add(1, Ordering::Relaxed);
    let pause = backoff.failed();
    tracing::warn!(service = %manager.name, "accept failed: {err}; next try in {pause:?}");
    Some(pause)
}
