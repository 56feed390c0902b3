//! W3C trace context passed through (the span tests are `tests/traces.rs`: they install the global
//! subscriber).

mod trace_passthrough;
