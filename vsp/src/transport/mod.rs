//! The byte stream under VSP: TCP connections and the write side both ends share.
//!
//! Why a shared write buffer and one writer task per connection: many callers (or many finished
//! handlers) encode their frames straight into one buffer under a short lock, and the writer task
//! sends whatever accumulated in one syscall. Under load, dozens of frames leave in one write;
//! with one call in flight, the frame leaves at once. Nothing is copied into a channel and no
//! frame allocates.

mod tcp;
mod write_queue;

pub(crate) use tcp::{connect, ConnectError};
pub(crate) use write_queue::{run_writer, WriteQueue};
