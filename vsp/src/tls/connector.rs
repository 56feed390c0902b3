//! `TlsConnector`: dials TLS, checks the server's identity, and says plainly why a handshake
//! failed.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

use super::config::ClientState;
use super::listener::Joined;
use super::names::CertNames;
use super::ClientTls;
use crate::transport::{Address, Connector, DefaultConnector, Io, Target};
use crate::BoxFuture;

/// Dials instances with TLS (over TCP, Unix sockets or in-memory pipes, through
/// [`DefaultConnector`]); pass it to
/// [`VspClientBuilder::connector`](crate::VspClientBuilder::connector).
///
/// Every instance is dialed with TLS unless the settings
/// [`allow_plaintext`](super::ClientTlsConfig::allow_plaintext) and discovery does not say
/// `tls=1`. The server's certificate is verified against the trusted CAs and the server name
/// (the instance's host by default), then against the
/// [`ExpectedIdentity`](super::ExpectedIdentity) of the service called, if one is required. A
/// failure is an error that names the reason (unknown CA, expired, wrong name, wrong identity,
/// a server that requires a client certificate, a server that is not TLS), and it ejects the
/// instance as any connection failure does.
#[derive(Debug, Clone)]
pub struct TlsConnector {
    tls: ClientTls,
    plain: DefaultConnector,
}

impl TlsConnector {
    /// A connector with `tls`'s settings (current at each dial).
    pub fn new(tls: ClientTls) -> Self {
        TlsConnector {
            tls,
            plain: DefaultConnector::new(),
        }
    }

    async fn dial(&self, target: &Target<'_>) -> io::Result<Io> {
        let state = self.tls.current();
        let io = self.plain.connect(target.address).await?;
        if state.allow_plaintext && !target.tls {
            return Ok(io);
        }
        let name = server_name(&state, target)?;
        // Without a certificate of our own, notice a server that asks for one: in TLS 1.3 the
        // client finishes its handshake before the server checks, so the refusal would only
        // show at the first read.
        let asked = Arc::new(AtomicBool::new(false));
        let config = if state.has_client_cert {
            state.config.clone()
        } else {
            let mut config = (*state.config).clone();
            config.client_auth_cert_resolver = Arc::new(NoticeCertRequest(asked.clone()));
            Arc::new(config)
        };
        let (read, write) = io.into_halves();
        let stream = Joined { read, write };
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|err| handshake_error(target.address, &err))?;
        // A server that asks for a certificate may not require one (a sidecar with optional
        // client auth): go on without, and let the server decide. In TLS 1.3 its refusal comes
        // as an alert at the first read, which is then reported in these words.
        let asked = asked.load(Ordering::Acquire);
        let names = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|leaf| CertNames::of(leaf))
            .unwrap_or_default();
        if let Some(expected) = &state.identity {
            if let Err(mismatch) = expected.check(target.service, &names) {
                return Err(failed(
                    target.address,
                    io::ErrorKind::PermissionDenied,
                    &format!(
                        "the instance may not answer for `{}`: {mismatch}",
                        target.service
                    ),
                ));
            }
        }
        let (read, write) = tokio::io::split(tls);
        let io = if asked {
            Io::new(
                RefusalReader {
                    inner: read,
                    address: target.address.to_string(),
                },
                write,
            )
        } else {
            Io::new(read, write)
        };
        Ok(io.with_identity(names.identity()))
    }
}

/// The read half of a connection whose server asked for a client certificate this client does
/// not have: the server's refusal (a TLS alert at the first read) becomes an error that says so.
struct RefusalReader<R> {
    inner: R,
    address: String,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for RefusalReader<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match std::pin::Pin::new(&mut self.inner).poll_read(cx, buf) {
            std::task::Poll::Ready(Err(err)) => {
                std::task::Poll::Ready(Err(refusal_error(&self.address, err)))
            }
            other => other,
        }
    }
}

/// `err` in words, when it is the server refusing a client without a certificate.
fn refusal_error(address: &str, err: io::Error) -> io::Error {
    let alert = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|tls| match tls {
            rustls::Error::AlertReceived(alert) => Some(*alert),
            _ => None,
        });
    match alert {
        Some(alert) => io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "TLS with {address} failed: the server requires a client certificate (mutual TLS) and refused this client, which has none (alert {alert:?}): configure one (ClientTlsConfig::client_cert_files, or --tls-cert and --tls-key)"
            ),
        ),
        None => err,
    }
}

impl Connector for TlsConnector {
    fn connect<'a>(&'a self, address: &'a Address) -> BoxFuture<'a, io::Result<Io>> {
        Box::pin(async move { self.dial(&Target::new(address, "", true)).await })
    }

    fn connect_to<'a>(&'a self, target: &'a Target<'a>) -> BoxFuture<'a, io::Result<Io>> {
        Box::pin(self.dial(target))
    }
}

/// The name the server's certificate must be valid for.
fn server_name(state: &ClientState, target: &Target<'_>) -> io::Result<ServerName<'static>> {
    let name = match (&state.server_name, target.address) {
        (Some(template), _) => template.replace("{service}", target.service),
        (None, Address::Tcp { host, .. }) => host.clone(),
        (None, other) => {
            return Err(failed(
                other,
                io::ErrorKind::InvalidInput,
                "a Unix or in-memory address has no host name to verify: set ClientTlsConfig::server_name",
            ))
        }
    };
    ServerName::try_from(name.clone()).map_err(|_| {
        failed(
            target.address,
            io::ErrorKind::InvalidInput,
            &format!("`{name}` is not a DNS name or an IP address to verify the server against"),
        )
    })
}

fn failed(address: &Address, kind: io::ErrorKind, reason: &str) -> io::Error {
    io::Error::new(kind, format!("TLS with {address} failed: {reason}"))
}

/// A handshake error in words that say what to fix.
fn handshake_error(address: &Address, err: &io::Error) -> io::Error {
    let tls = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let reason = match tls {
        Some(rustls::Error::InvalidCertificate(cert)) => certificate_reason(cert),
        Some(rustls::Error::AlertReceived(alert)) => {
            format!("the server refused the handshake ({alert:?}): it may not accept this client's certificate")
        }
        Some(rustls::Error::InvalidMessage(_))
        | Some(rustls::Error::InappropriateMessage { .. }) => {
            "the server did not answer with TLS (is it a plaintext VSP server?)".to_owned()
        }
        Some(other) => other.to_string(),
        None if err.kind() == io::ErrorKind::UnexpectedEof => {
            "the server closed the connection during the handshake (is it a plaintext VSP server?)"
                .to_owned()
        }
        None => err.to_string(),
    };
    failed(address, io::ErrorKind::InvalidData, &reason)
}

fn certificate_reason(err: &rustls::CertificateError) -> String {
    use rustls::CertificateError as E;
    match err {
        E::UnknownIssuer => {
            "the server's certificate is not signed by a trusted CA (unknown issuer)".to_owned()
        }
        E::Expired | E::ExpiredContext { .. } => "the server's certificate has expired".to_owned(),
        E::NotValidYet | E::NotValidYetContext { .. } => {
            "the server's certificate is not valid yet".to_owned()
        }
        E::NotValidForName | E::NotValidForNameContext { .. } => {
            format!("the server's certificate is not valid for the name it was dialed by ({err})")
        }
        E::Revoked => "the server's certificate is revoked".to_owned(),
        E::BadSignature => "the server's certificate has a bad signature".to_owned(),
        other => format!("the server's certificate was refused: {other}"),
    }
}

/// A client certificate resolver with nothing to offer that notes the server asked.
#[derive(Debug)]
struct NoticeCertRequest(Arc<AtomicBool>);

impl rustls::client::ResolvesClientCert for NoticeCertRequest {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.store(true, Ordering::Release);
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}
