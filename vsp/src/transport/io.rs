//! `Io`: a connected byte stream as its read and write halves.

use std::fmt;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

/// The read half of a connection, boxed so any transport fits.
pub type BoxRead = Pin<Box<dyn AsyncRead + Send>>;
/// The write half of a connection, boxed so any transport fits.
pub type BoxWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// A connected byte stream, split: what a [`Connector`](super::Connector) dials and a
/// [`Listener`](super::Listener) accepts.
///
/// Why halves: a VSP connection has one reader task and one writer task, which must not contend
/// for one lock. A stream with a native split (TCP, Unix sockets) hands over its owned halves;
/// any other stream (a TLS session, a pipe) can use [`Io::split`].
pub struct Io {
    read: BoxRead,
    write: BoxWrite,
}

impl fmt::Debug for Io {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Io").finish_non_exhaustive()
    }
}

impl Io {
    /// A stream from its two halves.
    pub fn new(
        read: impl AsyncRead + Send + 'static,
        write: impl AsyncWrite + Send + 'static,
    ) -> Self {
        Io {
            read: Box::pin(read),
            write: Box::pin(write),
        }
    }

    /// Splits any bidirectional stream (with `tokio::io::split`).
    pub fn split(stream: impl AsyncRead + AsyncWrite + Send + 'static) -> Self {
        let (read, write) = tokio::io::split(stream);
        Io::new(read, write)
    }

    /// The two halves.
    pub fn into_halves(self) -> (BoxRead, BoxWrite) {
        (self.read, self.write)
    }
}
