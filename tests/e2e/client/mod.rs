//! The client: failover, retries, faults, pooling and its metrics.

mod client_metrics;
mod failover;
mod failures;
mod faults;
mod pool;
mod resilience;
