//! What the test suites of the workspace share (the root package's end-to-end tests and the
//! `vsp` command line's tests), without reaching into another package's files.
//!
//! - [`fake_consul`]: a stateful fake Consul agent (no real agent can be installed here).

pub mod fake_consul;
