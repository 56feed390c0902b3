//! TCP: connections with Nagle off.

use std::io;
use std::time::Duration;

use super::{Address, Io, Listener};
use crate::BoxFuture;

/// Opens a TCP connection to `host:port` (resolved here).
pub(crate) async fn connect(host: &str, port: u16) -> io::Result<Io> {
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    into_io(stream)
}

fn into_io(stream: tokio::net::TcpStream) -> io::Result<Io> {
    // Frames are written whole; waiting for an ACK before sending the next small one only adds latency.
    stream.set_nodelay(true)?;
    keep_alive(&stream);
    let (read, write) = stream.into_split();
    Ok(Io::new(read, write))
}

/// The first keepalive probe after this much silence on a connection.
pub(crate) const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Between keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Turns on TCP keepalive (30 s idle, probes every 10 s): a peer that vanished without a word
/// (a crashed host, a NAT that dropped the flow) is noticed in about a minute and a half instead
/// of the kernel's two hours. Best effort: a socket that refuses the option still works.
fn keep_alive(stream: &tokio::net::TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_vendor = "apple",
        target_os = "freebsd"
    ))]
    let keepalive = keepalive.with_retries(6);
    if let Err(err) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!("TCP keepalive not set: {err}");
    }
}

/// A TCP listener for [`VspManager::start_server_on`](crate::VspManager::start_server_on).
#[derive(Debug)]
pub struct TcpListener {
    inner: tokio::net::TcpListener,
    bound: std::net::SocketAddr,
}

impl TcpListener {
    /// Binds `host:port` (port 0 for an ephemeral port).
    ///
    /// # Errors
    /// What the bind reported (address in use, permission denied, unknown host).
    pub async fn bind(host: &str, port: u16) -> io::Result<Self> {
        TcpListener::from_tokio(tokio::net::TcpListener::bind((host, port)).await?)
    }

    /// Serves a tokio listener bound elsewhere.
    ///
    /// # Errors
    /// If its local address cannot be read.
    pub fn from_tokio(inner: tokio::net::TcpListener) -> io::Result<Self> {
        let bound = inner.local_addr()?;
        Ok(TcpListener { inner, bound })
    }

    /// The bound socket address.
    pub fn socket_addr(&self) -> std::net::SocketAddr {
        self.bound
    }
}

impl Listener for TcpListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(Io, Address)>> {
        Box::pin(async move {
            let (stream, peer) = self.inner.accept().await?;
            // Best effort: a socket that refuses the option still works, only slower.
            let _ = stream.set_nodelay(true);
            keep_alive(&stream);
            let (read, write) = stream.into_split();
            Ok((
                Io::new(read, write),
                Address::tcp(peer.ip().to_string(), peer.port()),
            ))
        })
    }

    fn local_addr(&self) -> Address {
        Address::tcp(self.bound.ip().to_string(), self.bound.port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keep_alive_turns_on_keepalive_with_our_idle_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let socket = socket2::SockRef::from(&stream);
        assert!(!socket.keepalive().unwrap(), "on before we set it");
        keep_alive(&stream);
        assert!(socket.keepalive().unwrap());
        #[cfg(any(target_os = "linux", target_vendor = "apple"))]
        assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
    }
}
