//! Complaints about peers, logged once per peer host per minute.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::transport::Address;

/// Says whether a complaint about a peer should be logged at `warn`: once per peer host per
/// minute, not per occurrence, so a misconfigured client retrying in a loop cannot flood the log.
#[derive(Default)]
pub(crate) struct PeerLog {
    last: Mutex<HashMap<String, std::time::Instant>>,
}

impl PeerLog {
    const EVERY: Duration = Duration::from_secs(60);
    /// Hosts remembered at most; older entries are forgotten first.
    const HOSTS: usize = 4096;

    /// True the first time for `peer`'s host in a minute.
    fn first_in_a_minute(&self, peer: &Address) -> bool {
        let host = peer.host().unwrap_or("local");
        let now = std::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.len() >= Self::HOSTS {
            last.retain(|_, at| now.duration_since(*at) < Self::EVERY);
        }
        match last.get(host) {
            Some(at) if now.duration_since(*at) < Self::EVERY => false,
            _ if last.len() >= Self::HOSTS => false,
            _ => {
                last.insert(host.to_owned(), now);
                true
            }
        }
    }

    /// Logs a failed connection setup (a TLS handshake); true if at `warn`.
    pub(crate) fn handshake_failed(
        &self,
        service: &str,
        peer: &Address,
        err: &std::io::Error,
    ) -> bool {
        let log = self.first_in_a_minute(peer);
        if log {
            tracing::warn!(service, %peer, "connection setup failed: {err} (logged once a minute per peer)");
        } else {
            tracing::debug!(service, %peer, "connection setup failed: {err}");
        }
        log
    }

    /// Logs a response frame sent to this server (a peer that is confused or probing); true if
    /// at `warn`.
    pub(crate) fn stray_response(&self, service: &str, peer: &Address, request_id: &str) -> bool {
        let log = self.first_in_a_minute(peer);
        let request_id = crate::protocol::short_text(request_id, 64);
        if log {
            tracing::warn!(service, %peer, %request_id, "dropped a response sent to a server (logged once a minute per peer)");
        } else {
            tracing::debug!(service, %peer, %request_id, "dropped a response sent to a server");
        }
        log
    }

    /// Logs a request whose `traceparent` was not taken (it starts a new trace); true if at
    /// `warn`.
    pub(crate) fn bad_traceparent(
        &self,
        service: &str,
        peer: &Address,
        err: &crate::trace::InvalidTraceParent,
    ) -> bool {
        let log = self.first_in_a_minute(peer);
        if log {
            tracing::warn!(service, %peer, "{err}; the request starts a new trace (logged once a minute per peer)");
        } else {
            tracing::debug!(service, %peer, "{err}; the request starts a new trace");
        }
        log
    }
}

#[cfg(test)]
mod peer_log_tests {
    use super::*;

    #[test]
    fn a_failed_handshake_is_logged_once_per_peer_host_per_minute() {
        let log = PeerLog::default();
        let err = std::io::Error::other("bad certificate");
        assert!(log.handshake_failed("svc", &Address::tcp("10.0.0.1", 1000), &err));
        assert!(
            !log.handshake_failed("svc", &Address::tcp("10.0.0.1", 1001), &err),
            "same host, new port"
        );
        assert!(
            log.handshake_failed("svc", &Address::tcp("10.0.0.2", 1000), &err),
            "another host"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that sends response frames to a server in a loop is logged at `warn` once a
    /// minute, not once a frame; another peer still gets its own line.
    #[test]
    fn stray_responses_are_logged_once_a_minute_per_peer() {
        let log = PeerLog::default();
        let peer = Address::tcp("10.0.0.7", 4000);
        assert!(log.stray_response("s", &peer, "1"));
        for id in 0..1000 {
            assert!(!log.stray_response("s", &peer, &id.to_string()));
        }
        let other = Address::tcp("10.0.0.8", 4000);
        assert!(log.stray_response("s", &other, "1"));
    }

    /// Peers from ever new addresses (an IPv6 /64 has plenty) cannot grow the table: it holds
    /// at most `HOSTS` hosts, and beyond them a new host is simply not logged at `warn`.
    #[test]
    fn the_table_of_logged_hosts_is_bounded() {
        let log = PeerLog::default();
        for n in 0..(PeerLog::HOSTS as u32 + 1000) {
            let host = std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(n));
            log.stray_response("s", &Address::tcp(host.to_string(), 1), "1");
        }
        let held = log.last.lock().unwrap().len();
        assert_eq!(held, PeerLog::HOSTS, "hosts remembered");
    }
}
