//! What a server admits: connections (a total and a per-peer cap) and large request bytes in
//! flight (a per-server budget), and how its accept loop backs off when the process runs out of
//! file descriptors.
//!
//! Why caps refuse instead of queueing: a connection beyond the cap already holds a descriptor;
//! closing it at once frees it and tells the peer (its connect succeeded, its first read sees the
//! close) to go elsewhere, which its client does on a connection error.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::transport::Address;

/// Requests up to this size are bounded by the request-count limits; larger ones also count
/// against the byte budgets, and their response header is copied out so the frame is freed as
/// soon as the arguments are read.
pub(crate) const LARGE_REQUEST: usize = crate::protocol::frame::SHARED_FRAME_MAX;

/// The first pause after an accept failed for lack of resources; it doubles up to
/// [`ACCEPT_BACKOFF_MAX`] while the failures last.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest pause between accepts that fail.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one "refused a connection" line per this period (with the count since the last one).
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(1);

/// The server-wide admission state.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    /// Connections admitted and not closed yet.
    connections: AtomicUsize,
    /// Connections per peer IP (TCP peers only).
    per_peer: Mutex<HashMap<Box<str>, usize>>,
    /// Bytes of large requests being handled.
    pub(crate) large_bytes: AtomicUsize,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Total(usize),
    PerPeer(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Total(max) => write!(f, "the server is at its limit of {max} connections"),
            Refusal::PerPeer(max) => {
                write!(f, "this peer is at its limit of {max} connections")
            }
        }
    }
}

/// A connection's place under the caps; dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    peer: Option<Box<str>>,
}

impl Admission {
    /// Takes a place for a connection from `peer`, or says which cap it would break.
    pub(crate) fn admit(
        self: &Arc<Self>,
        peer: &Address,
        max_total: usize,
        max_per_peer: usize,
    ) -> Result<Admitted, Refusal> {
        let admission = self;
        let taken = admission.connections.fetch_add(1, Ordering::AcqRel);
        if taken >= max_total {
            admission.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Total(max_total));
        }
        let key = peer.is_tcp().then(|| peer.host()).flatten();
        if let Some(host) = key {
            let mut per_peer = admission
                .per_peer
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let count = per_peer.entry(Box::from(host)).or_insert(0);
            if *count >= max_per_peer {
                drop(per_peer);
                admission.connections.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::PerPeer(max_per_peer));
            }
            *count += 1;
        }
        Ok(Admitted {
            admission: self.clone(),
            peer: key.map(Box::from),
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let admission = &self.admission;
        if let Some(peer) = &self.peer {
            let mut per_peer = admission
                .per_peer
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = per_peer.get_mut(peer) {
                *count -= 1;
                if *count == 0 {
                    per_peer.remove(peer);
                }
            }
        }
        admission.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether an accept error concerns only the connection being accepted (retry at once) rather
/// than the process (out of descriptors or memory: back off).
pub(crate) fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// The accept loop's pause after failures: doubling from 10 ms to 1 s, reset by a success.
#[derive(Debug, Default)]
pub(crate) struct AcceptBackoff {
    next: Option<Duration>,
}

impl AcceptBackoff {
    pub(crate) fn succeeded(&mut self) {
        self.next = None;
    }

    /// The pause before the next accept.
    pub(crate) fn failed(&mut self) -> Duration {
        let pause = self.next.unwrap_or(ACCEPT_BACKOFF_MIN);
        self.next = Some((pause * 2).min(ACCEPT_BACKOFF_MAX));
        pause
    }
}

/// Logs refused connections at most once a period, with how many were refused since.
#[derive(Debug, Default)]
pub(crate) struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    pub(crate) fn refused(&mut self, service: &str, peer: &Address, refusal: Refusal) {
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < REFUSAL_LOG_PERIOD)
        {
            return;
        }
        tracing::warn!(
            service,
            %peer,
            refused = self.unlogged,
            "closed a new connection at once: {refusal} ({} refused since the last such line)",
            self.unlogged
        );
        self.last = Some(now);
        self.unlogged = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_peer_and_in_total_and_give_places_back() {
        let handle = Arc::new(Admission::default());
        let a = Address::tcp("10.0.0.1", 1000);
        let b = Address::tcp("10.0.0.2", 1000);
        let first = handle.admit(&a, 3, 2).unwrap();
        let _second = handle.admit(&a, 3, 2).unwrap();
        assert_eq!(handle.admit(&a, 3, 2).unwrap_err(), Refusal::PerPeer(2));
        let _third = handle.admit(&b, 3, 2).unwrap();
        assert_eq!(handle.admit(&b, 3, 2).unwrap_err(), Refusal::Total(3));
        drop(first);
        let _again = handle.admit(&a, 3, 2).unwrap();
        // Peers without an IP count only in the total.
        drop(_again);
        let _memory = handle.admit(&Address::memory("m"), 3, 0).unwrap();
    }

    #[test]
    fn accept_backoff_doubles_to_a_second_and_resets() {
        let mut backoff = AcceptBackoff::default();
        let pauses: Vec<Duration> = (0..9).map(|_| backoff.failed()).collect();
        assert_eq!(pauses[0], Duration::from_millis(10));
        assert_eq!(pauses[1], Duration::from_millis(20));
        assert_eq!(pauses[8], Duration::from_secs(1));
        backoff.succeeded();
        assert_eq!(backoff.failed(), Duration::from_millis(10));
    }
}
