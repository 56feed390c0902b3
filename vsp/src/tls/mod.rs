//! TLS and mutual TLS between services, with rustls (no OpenSSL): a [`TlsListener`] for servers,
//! a [`TlsConnector`] for clients, service identities from certificates, and certificate reload
//! without a restart.
//!
//! ```no_run
//! use vsp::tls::{ClientTls, ClientTlsConfig, ExpectedIdentity, ServerTls, ServerTlsConfig, TlsConnector, TlsListener};
//! use vsp::transport::TcpListener;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // A server that requires client certificates signed by the fleet's CA.
//! let server_tls = ServerTls::new(
//!     ServerTlsConfig::from_pem_files("user-service.pem", "user-service.key")?
//!         .require_client_cert_file("fleet-ca.pem")?,
//! )?;
//! let manager = vsp::VspManager::builder("user-service").build();
//! let listener = TlsListener::new(TcpListener::bind("0.0.0.0", 9090).await?, server_tls);
//! manager.start_server_on(listener).await?;
//!
//! // A client that trusts the fleet's CA, presents its own certificate, and checks that whoever
//! // answers for `user-service` is `spiffe://fleet.example/user-service`.
//! let client_tls = ClientTls::new(
//!     ClientTlsConfig::new()
//!         .ca_file("fleet-ca.pem")?
//!         .client_cert_files("order-service.pem", "order-service.key")?
//!         .require_identity(ExpectedIdentity::spiffe("fleet.example")),
//! )?;
//! let client = vsp::VspClient::builder(vsp::ServiceMesh::new())
//!     .connector(TlsConnector::new(client_tls))
//!     .build();
//! # drop(client);
//! # Ok(())
//! # }
//! ```
//!
//! Why the server's handshake runs on the connection's task (the listener returns
//! [`Io::deferred`](crate::transport::Io::deferred) connections): one peer that opens TCP and
//! never finishes its handshake must not stall the accept loop for everyone else; it is dropped
//! at the server's handshake timeout (10 s by default). Why handles ([`ServerTls`],
//! [`ClientTls`]) and not configs: a reload swaps what the handle holds, so new connections use
//! the new certificates while open ones carry on with theirs.
#![doc = include_str!("../docs/security.md")]

mod config;
mod connector;
mod listener;
mod names;
mod reload;

pub use config::{
    ClientTls, ClientTlsConfig, ExpectedIdentity, ServerTls, ServerTlsConfig, TlsError,
};
pub use connector::TlsConnector;
pub use listener::TlsListener;
pub use names::identity_of;
pub use reload::ReloadGuard;
