//! `Listener`: what a server accepts connections from.

use std::io;

use super::{memory, tcp, Address, Io};
use crate::BoxFuture;

/// Accepts connections for a server; pass one to
/// [`VspManager::start_server_on`](crate::VspManager::start_server_on).
///
/// Dropping the listener stops listening (a Unix listener removes its socket file).
pub trait Listener: Send + 'static {
    /// The next connection and the peer's address.
    ///
    /// An error is logged by the server, which backs off briefly and keeps accepting.
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(Io, Address)>>;

    /// The address this listener is bound to (with the real port when port 0 was asked for).
    fn local_addr(&self) -> Address;

    /// Whether its connections are TLS: the server then announces `tls=1` to discovery.
    fn is_tls(&self) -> bool {
        false
    }
}

impl<L: Listener + ?Sized> Listener for Box<L> {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(Io, Address)>> {
        (**self).accept()
    }

    fn local_addr(&self) -> Address {
        (**self).local_addr()
    }

    fn is_tls(&self) -> bool {
        (**self).is_tls()
    }
}

/// Binds a listener of the address's kind: TCP, a Unix socket (replacing a stale socket file left
/// by a crashed server) or an in-memory name.
///
/// # Errors
/// What binding reported: the address is in use, the directory of a socket path does not exist,
/// permission denied, and so on.
pub async fn bind(address: &Address) -> io::Result<Box<dyn Listener>> {
    Ok(match address {
        Address::Tcp { host, port } => Box::new(tcp::TcpListener::bind(host, *port).await?),
        #[cfg(unix)]
        Address::Unix(path) => Box::new(super::unix::UnixListener::bind(path)?),
        #[cfg(not(unix))]
        Address::Unix(_) => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "Unix domain sockets are not available on this platform",
            ))
        }
        Address::Memory(name) => Box::new(memory::MemoryListener::bind(name.clone())?),
    })
}
