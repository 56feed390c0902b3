//! What the test suites of the workspace share (the root package's end-to-end tests and the
//! `vsp` command line's tests), without reaching into another package's files.
//!
//! - [`fake_consul`]: a stateful fake Consul agent (no real agent can be installed here).
//! - [`fault_proxy`]: a TCP proxy that injects faults (latency, resets, blackholes, half-closes,
//!   slow reads) between a client and a server.

pub mod fake_consul;
pub mod fault_proxy;
