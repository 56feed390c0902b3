//! `Identity`: who a peer is, as its TLS certificate says.

use std::fmt;

/// A peer's identity, read from its certificate's subject alternative names (SAN).
///
/// A certificate with a SPIFFE-style URI SAN (`spiffe://<trust-domain>/<path>`) has that
/// identity; one without has its first DNS name. A plaintext connection has none.
///
/// ```
/// use vsp::transport::Identity;
///
/// let spiffe: Identity = "spiffe://prod.example/user-service".parse().unwrap();
/// assert_eq!(spiffe.service(), "user-service");
/// assert_eq!(spiffe, Identity::spiffe("prod.example", "user-service"));
/// let dns: Identity = "user-service.prod.example".parse().unwrap();
/// assert_eq!(dns.service(), "user-service");
/// assert_eq!(dns.to_string(), "user-service.prod.example");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Identity {
    /// A SPIFFE ID, `spiffe://<trust_domain>/<path>`.
    Spiffe {
        /// The trust domain (`prod.example`).
        trust_domain: String,
        /// The path without its leading slash (`user-service`, or `ns/prod/sa/user-service`).
        path: String,
    },
    /// A DNS name (`user-service.prod.example`).
    Dns(String),
}

impl Identity {
    /// `spiffe://<trust_domain>/<path>`.
    pub fn spiffe(trust_domain: impl Into<String>, path: impl Into<String>) -> Self {
        Identity::Spiffe {
            trust_domain: trust_domain.into().to_ascii_lowercase(),
            path: path.into().trim_start_matches('/').to_owned(),
        }
    }

    /// A DNS name (compared without case).
    pub fn dns(name: impl Into<String>) -> Self {
        Identity::Dns(name.into().to_ascii_lowercase())
    }

    /// The service this identity names: a SPIFFE ID's last path segment, a DNS name's first
    /// label.
    ///
    /// **It ignores the trust domain and the rest of the name**: `spiffe://other.example/x/orders`
    /// and `orders.attacker.example` both say `orders`. Deciding who may call from it is only
    /// sound when one CA issues for one trust domain; otherwise check with
    /// [`service_in`](Identity::service_in).
    pub fn service(&self) -> &str {
        match self {
            Identity::Spiffe { path, .. } => path.rsplit('/').next().unwrap_or(path),
            Identity::Dns(name) => name.split('.').next().unwrap_or(name),
        }
    }

    /// The service this identity names when it is the SPIFFE ID
    /// `spiffe://<trust_domain>/<service>` (the whole path, one segment); `None` for any other
    /// trust domain, a longer path, or a DNS name. What an auth hook should decide on.
    ///
    /// ```
    /// let id: vsp::transport::Identity = "spiffe://prod.example/orders".parse()?;
    /// assert_eq!(id.service_in("prod.example"), Some("orders"));
    /// assert_eq!(id.service_in("dev.example"), None);
    /// # Ok::<_, vsp::transport::IdentityError>(())
    /// ```
    pub fn service_in(&self, trust_domain: &str) -> Option<&str> {
        match self {
            Identity::Spiffe {
                trust_domain: domain,
                path,
            } if domain.eq_ignore_ascii_case(trust_domain) && !path.contains('/') => Some(path),
            _ => None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Spiffe { trust_domain, path } => write!(f, "spiffe://{trust_domain}/{path}"),
            Identity::Dns(name) => f.write_str(name),
        }
    }
}

/// Why a text is not an [`Identity`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not an identity: {reason}")]
pub struct IdentityError {
    text: String,
    reason: &'static str,
}

impl std::str::FromStr for Identity {
    type Err = IdentityError;

    /// `spiffe://domain/path`, or a DNS name.
    fn from_str(text: &str) -> Result<Self, IdentityError> {
        let error = |reason| IdentityError {
            text: text.to_owned(),
            reason,
        };
        if let Some(rest) = text.strip_prefix("spiffe://") {
            let (domain, path) = rest
                .split_once('/')
                .ok_or_else(|| error("a SPIFFE ID needs a path after its trust domain"))?;
            if domain.is_empty() || path.is_empty() {
                return Err(error("a SPIFFE ID needs a trust domain and a path"));
            }
            return Ok(Identity::spiffe(domain, path));
        }
        if text.contains("://") {
            return Err(error("the only URI scheme is spiffe://"));
        }
        let valid = !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'*');
        if !valid {
            return Err(error("a DNS name has letters, digits, `-` and `.` only"));
        }
        Ok(Identity::dns(text))
    }
}
