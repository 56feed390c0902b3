//! What the test suites of the workspace share (the root package's end-to-end tests and the
//! `vsp` command line's tests), without reaching into another package's files.
//!
//! - [`dnsmasq`]: a real dnsmasq serving SRV and A records on a loopback port.
//! - [`etcd`]: a real etcd on loopback ports that a test can stop and start again.
//! - [`fake_consul`]: a stateful fake Consul agent (no real agent can be installed here).
//! - [`fault_proxy`]: a TCP proxy that injects faults (latency, resets, blackholes, half-closes,
//!   slow reads) between a client and a server.
//! - [`pki`]: certificate authorities and certificates made at test time, written to files.
//! - [`spans`]: a `tracing` layer that records spans and events, to assert on traces.
//! - [`wait_until`]: a bounded wait on a condition that names what it waited for.

pub mod dnsmasq;
pub mod etcd;
pub mod fake_consul;
pub mod fault_proxy;
pub mod pki;
pub mod spans;

use std::path::PathBuf;
use std::time::Duration;

/// The first of `candidates` that exists; `None` (after printing SKIPPED) when none does, and a
/// failure in CI (`CI` set), which installs `package`.
pub fn installed_binary(candidates: &[&str], package: &str) -> Option<PathBuf> {
    let found = candidates
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists());
    if found.is_none() {
        let name = candidates
            .first()
            .and_then(|path| path.rsplit('/').next())
            .unwrap_or("");
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is not installed (Debian package {package})"
        );
        println!("SKIPPED: {name} is not installed (apt-get install {package})");
    }
    found
}

/// As [`wait_until`], for a condition that must be asked over the network (a port that
/// listens, a server that answers): polls `condition` every 5 ms until it holds; panics naming
/// `what` once `bound` has passed.
pub async fn wait_until_async<F, Fut>(what: &str, bound: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + bound;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {bound:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `condition` every 5 ms until it holds; panics naming `what` once `bound` has passed.
pub async fn wait_until(what: &str, bound: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + bound;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {bound:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
