//! VSP's lock-free coordination, compiled from its own sources against loom's atomics and mutex,
//! so `tests/` can check every interleaving (and the weak-memory reorderings loom models) of it.
//!
//! The source files name their primitives through `crate::sync`; here that is loom's.

#![allow(dead_code, unreachable_pub)]

/// What `vsp/src/sync.rs` gives the real crate, from loom.
pub(crate) mod sync {
    pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
    pub(crate) use loom::sync::{Mutex, MutexGuard};
    pub(crate) use std::sync::PoisonError;
}

#[path = "../../../vsp/src/server/limiter.rs"]
pub mod limiter;

#[path = "../../../vsp/src/transport/write_queue.rs"]
pub mod write_queue;

/// The frame compressor of the write queue, as `vsp::transport` names it: off in the models
/// (it works on one frame's bytes under the queue's lock and takes part in no turn-taking).
#[derive(Debug, Default)]
pub(crate) struct Compressing;

impl Compressing {
    pub(crate) fn apply(&self, _out: &mut Vec<u8>, _start: usize) {}
}

/// The write half the write queue writes to, as `vsp::transport` names it.
pub(crate) type BoxWrite = std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

#[cfg(test)]
mod limiter_model;

#[cfg(test)]
mod write_queue_model;
