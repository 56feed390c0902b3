//! The synchronization primitives of the code that is model-checked with loom (`tests/loom`):
//! std's here; loom's when that code is compiled into the model crate, which has a `sync`
//! module of its own with the same names.

pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
pub(crate) use std::sync::{Mutex, MutexGuard, PoisonError};
