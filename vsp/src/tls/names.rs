//! The names a certificate carries in its subject alternative names, and the identity they make.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::transport::Identity;

/// The SAN entries VSP reads.
#[derive(Debug, Default)]
pub(crate) struct CertNames {
    pub(crate) spiffe: Vec<Identity>,
    pub(crate) dns: Vec<String>,
}

impl CertNames {
    /// Reads a DER certificate's SANs; an unreadable certificate has none.
    pub(crate) fn of(der: &[u8]) -> CertNames {
        let mut names = CertNames::default();
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            return names;
        };
        let Ok(Some(san)) = cert.subject_alternative_name() else {
            return names;
        };
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => {
                    if let Ok(identity @ Identity::Spiffe { .. }) = uri.parse::<Identity>() {
                        names.spiffe.push(identity);
                    }
                }
                GeneralName::DNSName(dns) => names.dns.push(dns.to_ascii_lowercase()),
                _ => {}
            }
        }
        names
    }

    /// The identity: the SPIFFE ID if there is one, else the first DNS name.
    pub(crate) fn identity(&self) -> Option<Identity> {
        self.spiffe
            .first()
            .cloned()
            .or_else(|| self.dns.first().map(Identity::dns))
    }
}

/// The identity a DER certificate carries: its SPIFFE URI SAN, else its first DNS SAN.
///
/// The server and [`TlsConnector`](super::TlsConnector) call it on the peer's verified
/// certificate; it is public for tests and tools.
pub fn identity_of(certificate_der: &[u8]) -> Option<Identity> {
    CertNames::of(certificate_der).identity()
}
