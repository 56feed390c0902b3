//! What TLS is configured with: [`ServerTlsConfig`] and [`ClientTlsConfig`], and the handles
//! ([`ServerTls`], [`ClientTls`]) that hold the current one and swap it on reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::transport::Identity;

/// A TLS configuration that cannot be used: unreadable files, PEM without a certificate or a
/// key, a key that does not match, a CA that is not a certificate.
#[derive(Debug, thiserror::Error)]
#[error("TLS configuration: {0}")]
pub struct TlsError(String);

impl TlsError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        TlsError(message.into())
    }
}

/// ring's provider: X25519, P-256 and P-384 key exchange, no post-quantum hybrid. rustls 0.23.48
/// deprecates it for that reason and points to aws-lc-rs; VSP keeps ring because it builds with
/// a C compiler alone on every platform users asked for, and a post-quantum key exchange is
/// worth a provider choice of its own (not a silent switch) when it comes.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path)
        .map_err(|err| TlsError::new(format!("cannot read the {what} {}: {err}", path.display())))
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::new(format!("the {what} is not valid PEM: {err}")))?;
    if certs.is_empty() {
        return Err(TlsError::new(format!(
            "the {what} has no `BEGIN CERTIFICATE` block"
        )));
    }
    Ok(certs)
}

fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|err| {
        TlsError::new(format!(
            "the private key is not a PEM PKCS#8, PKCS#1 or SEC1 key: {err}"
        ))
    })
}

fn root_store(
    certs: &[CertificateDer<'static>],
    what: &str,
) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert.clone()).map_err(|err| {
            TlsError::new(format!(
                "a certificate of the {what} is not a usable CA: {err}"
            ))
        })?;
    }
    Ok(roots)
}

/// A server's TLS settings: its certificate chain and key, and optionally the CA its clients'
/// certificates must be signed by (mutual TLS).
#[derive(Clone)]
pub struct ServerTlsConfig {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    client_ca: Option<Vec<CertificateDer<'static>>>,
    /// A client without a certificate is let in (with no identity); one with a certificate must
    /// still have a good one.
    client_cert_optional: bool,
}

impl std::fmt::Debug for ServerTlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTlsConfig")
            .field("chain", &self.chain.len())
            .field(
                "identity",
                &self.chain.first().and_then(|c| super::identity_of(c)),
            )
            .field("mutual", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTlsConfig {
    /// The certificate chain (leaf first) and private key, as PEM.
    ///
    /// # Errors
    /// If either is not valid PEM of its kind.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        Ok(ServerTlsConfig {
            chain: certificates(chain_pem, "certificate chain")?,
            key: Arc::new(private_key(key_pem)?),
            client_ca: None,
            client_cert_optional: false,
        })
    }

    /// As [`from_pem`](Self::from_pem), from files.
    ///
    /// # Errors
    /// If a file cannot be read or is not valid PEM of its kind.
    pub fn from_pem_files(
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        let chain_pem = read(chain.as_ref(), "certificate chain")?;
        let key_pem = read(key.as_ref(), "private key")?;
        ServerTlsConfig::from_pem(&chain_pem, &key_pem)
    }

    /// Requires every client to present a certificate signed by one of the CAs in `ca_pem`
    /// (mutual TLS); a client without one, or with another, fails its handshake.
    ///
    /// # Errors
    /// If `ca_pem` holds no usable CA certificate.
    pub fn require_client_cert_pem(mut self, ca_pem: &[u8]) -> Result<Self, TlsError> {
        let certs = certificates(ca_pem, "client CA")?;
        root_store(&certs, "client CA")?;
        self.client_ca = Some(certs);
        Ok(self)
    }

    /// As [`require_client_cert_pem`](Self::require_client_cert_pem), from a file.
    ///
    /// # Errors
    /// If the file cannot be read or holds no usable CA certificate.
    pub fn require_client_cert_file(self, ca: impl AsRef<Path>) -> Result<Self, TlsError> {
        let pem = read(ca.as_ref(), "client CA")?;
        self.require_client_cert_pem(&pem)
    }

    /// Asks every client for a certificate signed by one of the CAs in `ca_pem`, but lets in a
    /// client that has none (its calls have no [`Identity`](crate::transport::Identity)); a client that
    /// presents a bad certificate still fails its handshake. What a sidecar with optional client
    /// authentication does.
    ///
    /// # Errors
    /// If `ca_pem` holds no usable CA certificate.
    pub fn request_client_cert_pem(self, ca_pem: &[u8]) -> Result<Self, TlsError> {
        let mut config = self.require_client_cert_pem(ca_pem)?;
        config.client_cert_optional = true;
        Ok(config)
    }

    /// As [`request_client_cert_pem`](Self::request_client_cert_pem), from a file.
    ///
    /// # Errors
    /// If the file cannot be read or holds no usable CA certificate.
    pub fn request_client_cert_file(self, ca: impl AsRef<Path>) -> Result<Self, TlsError> {
        let pem = read(ca.as_ref(), "client CA")?;
        self.request_client_cert_pem(&pem)
    }

    pub(crate) fn build(&self) -> Result<rustls::ServerConfig, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError::new(err.to_string()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(root_store(ca, "client CA")?),
                    provider(),
                );
                let verifier = if self.client_cert_optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier
                    .build()
                    .map_err(|err| TlsError::new(format!("the client CA cannot verify: {err}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        builder
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|err| {
                TlsError::new(format!("the certificate and key do not go together: {err}"))
            })
    }
}

/// The TLS settings a server's [`TlsListener`](super::TlsListener) uses now; clones share them.
/// [`reload`](ServerTls::reload) swaps them for new connections.
#[derive(Clone)]
pub struct ServerTls {
    current: Arc<ArcSwap<rustls::ServerConfig>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Settings from `config`.
    ///
    /// # Errors
    /// If the certificate and key do not go together, or the client CA cannot verify.
    pub fn new(config: ServerTlsConfig) -> Result<Self, TlsError> {
        Ok(ServerTls {
            current: Arc::new(ArcSwap::from_pointee(config.build()?)),
        })
    }

    /// Settings from a rustls configuration you built yourself (ALPN, session tickets, your own
    /// client verifier). Peer identities are still read from client certificates.
    pub fn from_rustls(config: rustls::ServerConfig) -> Self {
        ServerTls {
            current: Arc::new(ArcSwap::from_pointee(config)),
        }
    }

    /// Uses `config` for every connection accepted from now on; open connections keep theirs.
    ///
    /// # Errors
    /// As [`new`](ServerTls::new); the settings in use stay if it fails.
    pub fn reload(&self, config: ServerTlsConfig) -> Result<(), TlsError> {
        self.current.store(Arc::new(config.build()?));
        Ok(())
    }

    /// Watches `files` (read every `interval`) and, when any changes, calls `build` and reloads
    /// with what it returns: certificates rotated on disk (by cert-manager, a cron job) are taken
    /// up without a restart. A `build` that fails is logged and the settings in use stay. The
    /// watch runs on the current Tokio runtime until the guard is dropped.
    pub fn reload_on_change(
        &self,
        files: Vec<PathBuf>,
        interval: std::time::Duration,
        build: impl Fn() -> Result<ServerTlsConfig, TlsError> + Send + 'static,
    ) -> super::ReloadGuard {
        let tls = self.clone();
        super::reload::watch(files, interval, "server", move || tls.reload(build()?))
    }

    pub(crate) fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current.load_full()
    }
}

/// A rule of [`ExpectedIdentity::Custom`]: the service called, the identity presented.
pub type IdentityRule = Arc<dyn Fn(&str, Option<&Identity>) -> bool + Send + Sync>;

/// Whose certificate a client accepts for the service it calls, on top of the chain and server
/// name checks: so an instance that gets into discovery under `user-service` cannot answer for
/// it without `user-service`'s certificate.
#[derive(Clone)]
#[non_exhaustive]
pub enum ExpectedIdentity {
    /// `spiffe://<trust_domain>/<service>`: the SPIFFE ID's whole path is the service name (a
    /// longer path, `spiffe://<trust_domain>/ns/prod/<service>`, does not match).
    Spiffe {
        /// The trust domain the fleet's CA issues for.
        trust_domain: String,
    },
    /// A DNS SAN made from `template`, `{service}` replaced by the service called
    /// (`{service}.prod.example`).
    Dns {
        /// The template.
        template: String,
    },
    /// Your own rule: the service called and the identity presented (`None`: the certificate
    /// names none).
    Custom(IdentityRule),
}

impl std::fmt::Debug for ExpectedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedIdentity::Spiffe { trust_domain } => {
                write!(f, "spiffe://{trust_domain}/{{service}}")
            }
            ExpectedIdentity::Dns { template } => f.write_str(template),
            ExpectedIdentity::Custom(_) => f.write_str("custom"),
        }
    }
}

impl ExpectedIdentity {
    /// `spiffe://<trust_domain>/<service>`.
    pub fn spiffe(trust_domain: impl Into<String>) -> Self {
        ExpectedIdentity::Spiffe {
            trust_domain: trust_domain.into().to_ascii_lowercase(),
        }
    }

    /// A DNS SAN `template` with `{service}` replaced.
    pub fn dns(template: impl Into<String>) -> Self {
        ExpectedIdentity::Dns {
            template: template.into().to_ascii_lowercase(),
        }
    }

    /// Your own rule.
    pub fn custom(rule: impl Fn(&str, Option<&Identity>) -> bool + Send + Sync + 'static) -> Self {
        ExpectedIdentity::Custom(Arc::new(rule))
    }

    /// Whether a certificate with `names` may answer for `service`; `Err` says what was expected.
    pub(crate) fn check(
        &self,
        service: &str,
        names: &super::names::CertNames,
    ) -> Result<(), String> {
        let ok = match self {
            ExpectedIdentity::Spiffe { trust_domain } => names
                .spiffe
                .contains(&Identity::spiffe(trust_domain.clone(), service)),
            ExpectedIdentity::Dns { template } => {
                let wanted = template.replace("{service}", &service.to_ascii_lowercase());
                names.dns.contains(&wanted)
            }
            ExpectedIdentity::Custom(rule) => rule(service, names.identity().as_ref()),
        };
        if ok {
            return Ok(());
        }
        let wanted = match self {
            ExpectedIdentity::Spiffe { trust_domain } => {
                format!("spiffe://{trust_domain}/{service}")
            }
            ExpectedIdentity::Dns { template } => template.replace("{service}", service),
            ExpectedIdentity::Custom(_) => "an identity your rule accepts".to_owned(),
        };
        let presented = names.identity().map_or_else(
            || "no identity".to_owned(),
            |identity| format!("`{identity}`"),
        );
        Err(format!("it presented {presented}, not `{wanted}`"))
    }
}

/// A client's TLS settings: the CAs it trusts, optionally its own certificate (for mutual TLS),
/// the server name it verifies, and the identity it requires of each service.
#[derive(Clone, Default)]
pub struct ClientTlsConfig {
    roots: Vec<CertificateDer<'static>>,
    client_cert: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    server_name: Option<String>,
    identity: Option<ExpectedIdentity>,
    allow_plaintext: bool,
}

impl std::fmt::Debug for ClientTlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTlsConfig")
            .field("roots", &self.roots.len())
            .field("client_cert", &self.client_cert.is_some())
            .field("server_name", &self.server_name)
            .field("identity", &self.identity)
            .field("allow_plaintext", &self.allow_plaintext)
            .finish()
    }
}

impl ClientTlsConfig {
    /// No trusted CA yet: add some with [`ca_pem`](Self::ca_pem), [`ca_file`](Self::ca_file) or
    /// [`platform_roots`](Self::platform_roots).
    pub fn new() -> Self {
        ClientTlsConfig::default()
    }

    /// Trusts the CA certificates in `pem`.
    ///
    /// # Errors
    /// If `pem` holds no usable CA certificate.
    pub fn ca_pem(mut self, pem: &[u8]) -> Result<Self, TlsError> {
        let certs = certificates(pem, "CA")?;
        root_store(&certs, "CA")?;
        self.roots.extend(certs);
        Ok(self)
    }

    /// Trusts the CA certificates in the PEM file `path`.
    ///
    /// # Errors
    /// If the file cannot be read or holds no usable CA certificate.
    pub fn ca_file(self, path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let pem = read(path.as_ref(), "CA")?;
        self.ca_pem(&pem)
    }

    /// Trusts the platform's CAs too (`/etc/ssl/certs` and the like): for services whose
    /// certificates come from a public CA.
    ///
    /// # Errors
    /// If the platform has none that can be loaded.
    pub fn platform_roots(mut self) -> Result<Self, TlsError> {
        let loaded = rustls_native_certs::load_native_certs();
        if loaded.certs.is_empty() {
            return Err(TlsError::new(format!(
                "no platform CA certificates could be loaded: {:?}",
                loaded.errors
            )));
        }
        self.roots.extend(loaded.certs);
        Ok(self)
    }

    /// Presents this certificate chain and key to servers that require client certificates.
    ///
    /// # Errors
    /// If either is not valid PEM of its kind.
    pub fn client_cert_pem(mut self, chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        self.client_cert = Some((
            certificates(chain_pem, "client certificate")?,
            Arc::new(private_key(key_pem)?),
        ));
        Ok(self)
    }

    /// As [`client_cert_pem`](Self::client_cert_pem), from files.
    ///
    /// # Errors
    /// If a file cannot be read or is not valid PEM of its kind.
    pub fn client_cert_files(
        self,
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        let chain_pem = read(chain.as_ref(), "client certificate")?;
        let key_pem = read(key.as_ref(), "client key")?;
        self.client_cert_pem(&chain_pem, &key_pem)
    }

    /// The name to verify the server's certificate against (default: the instance's host, a
    /// DNS name or an IP address). `{service}` is replaced by the service called:
    /// `"{service}.prod.example"`.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Requires the instance that answers for a service to present that service's identity
    /// (see [`ExpectedIdentity`]). A mismatch fails the connection and ejects the instance.
    pub fn require_identity(mut self, identity: ExpectedIdentity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Also dials instances that do not announce TLS, in plaintext (default off: every instance
    /// is dialed with TLS, whatever discovery says, so a forged announcement cannot downgrade
    /// a call). For migrating a fleet to TLS one service at a time.
    pub fn allow_plaintext(mut self, allow: bool) -> Self {
        self.allow_plaintext = allow;
        self
    }

    pub(crate) fn build(&self) -> Result<ClientState, TlsError> {
        if self.roots.is_empty() {
            return Err(TlsError::new(
                "no CA is trusted: add one with ca_file, ca_pem or platform_roots",
            ));
        }
        let roots = Arc::new(root_store(&self.roots, "CA")?);
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError::new(err.to_string()))?
            .with_root_certificates(roots);
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|err| {
                    TlsError::new(format!(
                        "the client certificate and key do not go together: {err}"
                    ))
                })?,
        };
        Ok(ClientState {
            config: Arc::new(config),
            has_client_cert: self.client_cert.is_some(),
            server_name: self.server_name.clone(),
            identity: self.identity.clone(),
            allow_plaintext: self.allow_plaintext,
        })
    }
}

/// A built client configuration.
pub(crate) struct ClientState {
    pub(crate) config: Arc<rustls::ClientConfig>,
    pub(crate) has_client_cert: bool,
    pub(crate) server_name: Option<String>,
    pub(crate) identity: Option<ExpectedIdentity>,
    pub(crate) allow_plaintext: bool,
}

/// The TLS settings a [`TlsConnector`](super::TlsConnector) uses now; clones share them.
/// [`reload`](ClientTls::reload) swaps them for new connections.
#[derive(Clone)]
pub struct ClientTls {
    current: Arc<ArcSwap<ClientState>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Settings from `config`.
    ///
    /// # Errors
    /// If no CA is trusted or the client certificate and key do not go together.
    pub fn new(config: ClientTlsConfig) -> Result<Self, TlsError> {
        Ok(ClientTls {
            current: Arc::new(ArcSwap::from_pointee(config.build()?)),
        })
    }

    /// Uses `config` for every connection opened from now on; open connections keep theirs.
    ///
    /// # Errors
    /// As [`new`](ClientTls::new); the settings in use stay if it fails.
    pub fn reload(&self, config: ClientTlsConfig) -> Result<(), TlsError> {
        self.current.store(Arc::new(config.build()?));
        Ok(())
    }

    /// As [`ServerTls::reload_on_change`], for a client.
    pub fn reload_on_change(
        &self,
        files: Vec<PathBuf>,
        interval: std::time::Duration,
        build: impl Fn() -> Result<ClientTlsConfig, TlsError> + Send + 'static,
    ) -> super::ReloadGuard {
        let tls = self.clone();
        super::reload::watch(files, interval, "client", move || tls.reload(build()?))
    }

    pub(crate) fn current(&self) -> Arc<ClientState> {
        self.current.load_full()
    }
}
