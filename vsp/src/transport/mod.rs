//! The byte streams under VSP: where a connection comes from ([`Connector`], [`Listener`]) and
//! the write side both ends share.
//!
//! Why a seam of two traits and boxed halves: the client, its pool and the server deal only in
//! [`Io`] (a read half and a write half) and [`Address`], so TCP, Unix domain sockets, the
//! in-memory pipe and whatever comes next (TLS) plug in here without touching them. A new
//! transport is a file in this folder with a `Connector` and a `Listener`, and an [`Address`]
//! kind if it needs one. The boxes cost one virtual call per read or write syscall, not per
//! frame.
//!
//! Why a shared write buffer and one writer task per connection: many callers (or many finished
//! handlers) encode their frames straight into one buffer under a short lock, and the writer task
//! sends whatever accumulated in one syscall. Under load, dozens of frames leave in one write;
//! with one call in flight, the frame leaves at once. Nothing is copied into a channel and no
//! frame allocates.
#![doc = include_str!("../docs/transports.md")]

pub(crate) mod address;
mod connector;
mod identity;
mod io;
mod listener;
mod memory;
mod tcp;
#[cfg(unix)]
mod unix;
mod write_queue;

pub(crate) use crate::protocol::compression::Compressing;
pub(crate) use address::Address;
pub use connector::{Connector, DefaultConnector, Target};
pub use identity::{Identity, IdentityError};
pub use io::{BoxRead, BoxWrite, Io};
pub use listener::{bind, Listener};
pub use memory::MemoryListener;
pub use tcp::TcpListener;
#[cfg(unix)]
pub use unix::UnixListener;
pub(crate) use write_queue::{run_writer, QueueClosed, WriteQueue};
