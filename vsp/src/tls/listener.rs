//! `TlsListener`: TLS on top of any listener.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

use super::names::CertNames;
use super::ServerTls;
use crate::transport::{Address, Io, Listener};
use crate::BoxFuture;

/// The first byte of every TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Serves TLS on the connections another listener (TCP, usually) accepts; pass it to
/// [`VspManager::start_server_on`](crate::VspManager::start_server_on).
///
/// The handshake runs on each connection's own task, bounded by the server's
/// [`handshake_timeout`](crate::VspManagerBuilder::handshake_timeout). A client's identity
/// (mutual TLS) is read from its certificate and shown to handlers and auth hooks as
/// [`Context::identity`](crate::Context::identity). A plaintext VSP client is answered, in
/// plaintext, with a `protocol` error that says the server requires TLS, so it fails at once
/// rather than at its deadline. The server announces `tls=1` to discovery.
pub struct TlsListener<L> {
    inner: L,
    tls: ServerTls,
}

impl<L> std::fmt::Debug for TlsListener<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener").finish_non_exhaustive()
    }
}

impl<L: Listener> TlsListener<L> {
    /// TLS with `tls`'s settings (current at each accept) over `inner`'s connections.
    pub fn new(inner: L, tls: ServerTls) -> Self {
        TlsListener { inner, tls }
    }
}

impl<L: Listener> Listener for TlsListener<L> {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(Io, Address)>> {
        Box::pin(async move {
            let (io, peer) = self.inner.accept().await?;
            let config = self.tls.current();
            let handshake = handshake(io, config, peer.clone());
            Ok((Io::deferred(handshake), peer))
        })
    }

    fn local_addr(&self) -> Address {
        self.inner.local_addr()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

async fn handshake(
    io: Io,
    config: std::sync::Arc<rustls::ServerConfig>,
    peer: Address,
) -> io::Result<Io> {
    let io = io.established(std::time::Duration::from_secs(3600)).await?;
    let (mut read, mut write) = io.into_halves();
    let mut first = [0u8; 1];
    if read.read_exact(&mut first).await.is_err() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the peer closed the connection before its TLS handshake",
        ));
    }
    if first[0] != TLS_HANDSHAKE {
        let _ = write.write_all(&plaintext_refusal()).await;
        let _ = write.shutdown().await;
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a plaintext client connected to a TLS server (it was told so)",
        ));
    }
    let stream = Joined {
        read: std::io::Cursor::new(first).chain(read),
        write,
    };
    let tls = tokio_rustls::TlsAcceptor::from(config)
        .accept(stream)
        .await
        .map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("TLS handshake with {peer} failed: {err}"),
            )
        })?;
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|leaf| CertNames::of(leaf).identity());
    Ok(Io::split(tls).with_identity(identity))
}

/// A VSP error frame, in plaintext, for a client that does not speak TLS: our clients close the
/// connection with its message, Velithon's see a response they cannot match.
fn plaintext_refusal() -> Vec<u8> {
    let json = serde_json::json!({
        "header": {
            "request_id": null,
            "service": "",
            "endpoint": "",
            "is_response": true,
            "error_code": "protocol",
            "vsp": crate::protocol::PROTOCOL_VERSION,
        },
        "body": {"error": "this server requires TLS: connect with a TLS client (vsp::tls::TlsConnector, or --tls-ca in the vsp command)"},
    });
    let body = json.to_string().into_bytes();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

pin_project_lite::pin_project! {
    /// A read half and a write half as one stream, for TLS to run over any transport.
    pub(super) struct Joined<R, W> {
        #[pin]
        pub(super) read: R,
        #[pin]
        pub(super) write: W,
    }
}

impl<R: tokio::io::AsyncRead, W> tokio::io::AsyncRead for Joined<R, W> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.project().read.poll_read(cx, buf)
    }
}

impl<R, W: tokio::io::AsyncWrite> tokio::io::AsyncWrite for Joined<R, W> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        self.project().write.poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.project().write.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.project().write.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        self.project().write.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.write.is_write_vectored()
    }
}
