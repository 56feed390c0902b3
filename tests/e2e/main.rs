//! The end-to-end suite: real servers and clients on loopback, one module per subsystem.
//!
//! One test binary instead of one per file: each binary links every dependency, which cost CI
//! minutes and gigabytes. Three suites stay apart because they change the whole process:
//! `tests/accept_backoff.rs` (it lowers the open-files limit), `tests/traces.rs` and
//! `tests/otel_export.rs` (each installs its own global tracing subscriber, which would make
//! every other test's calls traced).

mod common;
// The example services' types, shared with `examples/`.
mod client;
mod discovery;
mod examples;
mod gateway;
mod mesh;
mod observability;
mod security;
mod server;
mod streams;
#[path = "../../examples/users/mod.rs"]
mod users;
mod wire;
