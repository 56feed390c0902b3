//! `Connector`: how a client dials an [`Address`].

use std::io;
use std::sync::Arc;

use super::{memory, tcp, Address, Io};
use crate::BoxFuture;

/// Dials an [`Address`] and returns the connected stream; pass one to
/// [`VspClientBuilder::connector`](crate::VspClientBuilder::connector).
///
/// The client bounds every dial with its connect timeout, so a connector need not.
///
/// ```
/// use vsp::transport::{Address, Connector, DefaultConnector, Io};
/// use vsp::BoxFuture;
///
/// /// Logs every dial, then dials as usual.
/// struct Logged(DefaultConnector);
///
/// impl Connector for Logged {
///     fn connect<'a>(&'a self, address: &'a Address) -> BoxFuture<'a, std::io::Result<Io>> {
///         eprintln!("dialing {address}");
///         self.0.connect(address)
///     }
/// }
///
/// let mesh = vsp::ServiceMesh::new();
/// let client = vsp::VspClient::builder(mesh).connector(Logged(DefaultConnector::new())).build();
/// # drop(client);
/// ```
pub trait Connector: Send + Sync + 'static {
    /// Opens a connection to `address`.
    fn connect<'a>(&'a self, address: &'a Address) -> BoxFuture<'a, io::Result<Io>>;
}

impl<C: Connector + ?Sized> Connector for Arc<C> {
    fn connect<'a>(&'a self, address: &'a Address) -> BoxFuture<'a, io::Result<Io>> {
        (**self).connect(address)
    }
}

/// Dials by the address's kind: TCP (with `TCP_NODELAY`), Unix sockets, in-memory listeners. The
/// client's default.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultConnector {
    _private: (),
}

impl DefaultConnector {
    /// The default connector.
    pub fn new() -> Self {
        DefaultConnector::default()
    }
}

impl Connector for DefaultConnector {
    fn connect<'a>(&'a self, address: &'a Address) -> BoxFuture<'a, io::Result<Io>> {
        Box::pin(async move {
            match address {
                Address::Tcp { host, port } => tcp::connect(host, *port).await,
                #[cfg(unix)]
                Address::Unix(path) => super::unix::connect(path).await,
                #[cfg(not(unix))]
                Address::Unix(_) => Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "Unix domain sockets are not available on this platform",
                )),
                Address::Memory(name) => memory::connect(name),
            }
        })
    }
}
