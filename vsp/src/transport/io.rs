//! `Io`: a connected byte stream as its read and write halves.

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::Identity;
use crate::BoxFuture;

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
///
/// A listener whose connections need a handshake (TLS) returns them [`Io::deferred`], so one
/// slow handshake never holds up the accept loop: the server finishes it on the connection's own
/// task with [`Io::established`].
pub struct Io {
    read: BoxRead,
    write: BoxWrite,
    identity: Option<Identity>,
    pending: Option<BoxFuture<'static, std::io::Result<Io>>>,
}

impl fmt::Debug for Io {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Io")
            .field("identity", &self.identity)
            .field("deferred", &self.pending.is_some())
            .finish_non_exhaustive()
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
            identity: None,
            pending: None,
        }
    }

    /// A connection still to be set up (a TLS handshake): `setup` runs when the server calls
    /// [`Io::established`], on the connection's own task.
    pub fn deferred(
        setup: impl std::future::Future<Output = std::io::Result<Io>> + Send + 'static,
    ) -> Self {
        let mut io = Io::new(tokio::io::empty(), tokio::io::sink());
        io.pending = Some(Box::pin(setup));
        io
    }

    /// The connection once set up: runs a deferred setup within `timeout` (a `TimedOut` error
    /// after it); a connection that needs none is returned as is.
    ///
    /// # Errors
    /// What the setup reported, or `TimedOut`.
    pub async fn established(mut self, timeout: Duration) -> std::io::Result<Io> {
        match self.pending.take() {
            None => Ok(self),
            Some(setup) => match tokio::time::timeout(timeout, setup).await {
                Ok(io) => io,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the connection was not set up (TLS handshake) within {timeout:?}"),
                )),
            },
        }
    }

    /// Sets the peer's identity (from its certificate).
    pub fn with_identity(mut self, identity: Option<Identity>) -> Self {
        self.identity = identity;
        self
    }

    /// The peer's identity, if the transport established one (mutual TLS).
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
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
