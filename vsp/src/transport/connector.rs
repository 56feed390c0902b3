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
/// use vsp::Address;
/// use vsp::transport::{Connector, DefaultConnector, Io};
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

    /// Opens a connection to the instance `target` describes; what the client calls. The
    /// default dials `target.address`; a connector that checks who answers (TLS with service
    /// identities) or refuses instances it cannot serve (plaintext and a `tls` instance)
    /// overrides it. An error of kind `Unsupported` means "not this instance, from this client":
    /// the call goes to another instance and the instance is not marked unhealthy.
    fn connect_to<'a>(&'a self, target: &'a Target<'a>) -> BoxFuture<'a, io::Result<Io>> {
        self.connect(target.address)
    }
}

/// The instance a client dials: its address, the service it is called for, and whether
/// discovery says it speaks TLS.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Target<'a> {
    /// Where to dial.
    pub address: &'a Address,
    /// The service the client calls there.
    pub service: &'a str,
    /// Discovery says the instance serves TLS (`tls=1`).
    pub tls: bool,
}

impl<'a> Target<'a> {
    /// A target; `tls` as discovery announced it.
    pub fn new(address: &'a Address, service: &'a str, tls: bool) -> Self {
        Target {
            address,
            service,
            tls,
        }
    }
}

impl<C: Connector + ?Sized> Connector for Arc<C> {
    fn connect<'a>(&'a self, address: &'a Address) -> BoxFuture<'a, io::Result<Io>> {
        (**self).connect(address)
    }

    fn connect_to<'a>(&'a self, target: &'a Target<'a>) -> BoxFuture<'a, io::Result<Io>> {
        (**self).connect_to(target)
    }
}

/// The error of a plaintext connector asked to dial an instance that announces TLS.
fn tls_required(target: &Target<'_>) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "instance {} of `{}` announces TLS (tls=1) and this client has no TLS configured (see vsp::tls::TlsConnector)",
            target.address, target.service
        ),
    )
}

/// Dials by the address's kind: TCP (with `TCP_NODELAY`), Unix sockets, in-memory listeners. The
/// client's default. It refuses instances that announce TLS (with an `Unsupported` error, so
/// calls go to the other instances).
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

    fn connect_to<'a>(&'a self, target: &'a Target<'a>) -> BoxFuture<'a, io::Result<Io>> {
        if target.tls {
            return Box::pin(std::future::ready(Err(tls_required(target))));
        }
        self.connect(target.address)
    }
}
