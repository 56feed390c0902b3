//! A small PKI made at test time with rcgen: a CA, and certificates it signs for services
//! (DNS `localhost`, IP `127.0.0.1`, URI `spiffe://<domain>/<service>`), valid or expired, each
//! also written to files in a directory of its own.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The SPIFFE trust domain of test certificates.
pub const TRUST_DOMAIN: &str = "vsp.test";

/// A certificate and its key, as PEM, and where they were written.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    pub cert_pem: String,
    pub cert_file: PathBuf,
}

/// A fresh directory under the system's temp dir.
pub fn temp_dir(label: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vsp-{label}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

impl Ca {
    /// A new self-signed CA called `name`.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = temp_dir(name);
        let cert_pem = issuer.pem();
        let cert_file = write(&dir, "ca.pem", &cert_pem);
        Ca {
            issuer,
            dir,
            cert_pem,
            cert_file,
        }
    }

    /// A certificate for `service`, valid now: DNS `localhost`, IP `127.0.0.1`,
    /// `spiffe://vsp.test/<service>`.
    pub fn issue(&self, service: &str) -> Issued {
        self.issue_with(service, false)
    }

    /// As [`issue`](Ca::issue), but expired since 2020.
    pub fn issue_expired(&self, service: &str) -> Issued {
        self.issue_with(service, true)
    }

    fn issue_with(&self, service: &str, expired: bool) -> Issued {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.subject_alt_names.push(SanType::URI(
            format!("spiffe://{TRUST_DOMAIN}/{service}")
                .try_into()
                .unwrap(),
        ));
        params.distinguished_name.push(DnType::CommonName, service);
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2020, 1, 2);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let tag = if expired { "-expired" } else { "" };
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Issued {
            cert_file: write(&self.dir, &format!("{service}{tag}.pem"), &cert_pem),
            key_file: write(&self.dir, &format!("{service}{tag}.key"), &key_pem),
            cert_pem,
            key_pem,
        }
    }
}
