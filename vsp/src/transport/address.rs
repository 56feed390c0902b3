//! `Address`: where an instance listens, as TCP `host:port`, a Unix socket path, or an in-memory
//! name.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Where a VSP server listens and a client dials.
///
/// Written as text wherever an address is accepted (the CLI, `--static` lists, the examples):
/// `host:port` (`[::1]:9090` for IPv6), `unix:/run/vsp/user.sock` or `unix:///run/vsp/user.sock`,
/// and `memory:<name>` for the in-process transport.
///
/// ```
/// use vsp::Address;
///
/// let tcp: Address = "127.0.0.1:9090".parse()?;
/// assert_eq!(tcp, Address::tcp("127.0.0.1", 9090));
/// let unix: Address = "unix:///run/vsp/user.sock".parse()?;
/// assert_eq!(unix.to_string(), "unix:/run/vsp/user.sock");
/// assert_eq!("[::1]:80".parse::<Address>()?.to_string(), "[::1]:80");
/// assert!("no-port".parse::<Address>().is_err());
/// # Ok::<(), vsp::AddressError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Address {
    /// A TCP address; `host` is a name or an IP address, without brackets.
    Tcp {
        /// The host name or IP address.
        host: String,
        /// The port.
        port: u16,
    },
    /// A Unix domain socket at this path.
    Unix(PathBuf),
    /// A listener of this process bound with
    /// [`MemoryListener::bind`](crate::transport::MemoryListener::bind).
    Memory(String),
}

/// Text that is not an [`Address`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not an address: {reason} (expected host:port, unix:/path or memory:name)")]
pub struct AddressError {
    text: String,
    reason: &'static str,
}

impl Address {
    /// A TCP address; brackets around an IPv6 host are removed.
    pub fn tcp(host: impl Into<String>, port: u16) -> Self {
        let host = host.into();
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(inner) => inner.to_owned(),
            None => host,
        };
        Address::Tcp { host, port }
    }

    /// A Unix domain socket path.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Address::Unix(path.into())
    }

    /// An in-memory listener's name.
    pub fn memory(name: impl Into<String>) -> Self {
        Address::Memory(name.into())
    }

    /// The host of a TCP address.
    pub fn host(&self) -> Option<&str> {
        match self {
            Address::Tcp { host, .. } => Some(host),
            _ => None,
        }
    }

    /// The port of a TCP address.
    pub fn port(&self) -> Option<u16> {
        match self {
            Address::Tcp { port, .. } => Some(*port),
            _ => None,
        }
    }

    /// The path of a Unix socket address.
    pub fn unix_path(&self) -> Option<&Path> {
        match self {
            Address::Unix(path) => Some(path),
            _ => None,
        }
    }

    /// True for a TCP address (the only kind mDNS and Consul announce).
    pub fn is_tcp(&self) -> bool {
        matches!(self, Address::Tcp { .. })
    }

    /// Why this address cannot be dialed or bound, if it is empty somewhere.
    pub(crate) fn problem(&self) -> Option<&'static str> {
        match self {
            Address::Tcp { host, .. } if host.is_empty() => Some("the host is empty"),
            // Brackets only ever enclose a whole IPv6 host (`[::1]:9`), which `tcp` unwraps.
            Address::Tcp { host, .. } if host.contains(['[', ']']) => {
                Some("the host has brackets that do not enclose an IPv6 address")
            }
            Address::Unix(path) if path.as_os_str().is_empty() => Some("the socket path is empty"),
            Address::Memory(name) if name.is_empty() => Some("the in-memory name is empty"),
            _ => None,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Brackets for IPv6, and for the hosts named like a scheme (`unix:9` is a path).
            Address::Tcp { host, port }
                if host.contains(':') || host == "unix" || host == "memory" =>
            {
                write!(f, "[{host}]:{port}")
            }
            Address::Tcp { host, port } => write!(f, "{host}:{port}"),
            // A path that starts with `//` reads back only in the URL form (`unix://` + path).
            Address::Unix(path) if path.to_string_lossy().starts_with("//") => {
                write!(f, "unix://{}", path.display())
            }
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::Memory(name) => write!(f, "memory:{name}"),
        }
    }
}

/// A TCP address: `Address::from("127.0.0.1:9090".parse::<SocketAddr>()?)`.
impl From<std::net::SocketAddr> for Address {
    fn from(addr: std::net::SocketAddr) -> Self {
        Address::tcp(addr.ip().to_string(), addr.port())
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason| AddressError {
            text: text.to_owned(),
            reason,
        };
        if let Some(rest) = text.strip_prefix("unix:") {
            // `unix:///p` (URL form, empty authority) and `unix:/p` name the same path.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(error("the socket path is empty"));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if let Some(name) = text.strip_prefix("memory:") {
            if name.is_empty() {
                return Err(error("the in-memory name is empty"));
            }
            return Ok(Address::Memory(name.to_owned()));
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(|| error("no port"))?;
        let port = port
            .parse()
            .map_err(|_| error("the port is not a number from 0 to 65535"))?;
        let address = Address::tcp(host, port);
        match address.problem() {
            Some(reason) => Err(error(reason)),
            None => Ok(address),
        }
    }
}

impl serde::Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `address` fuzz target: the host `unix` (from `[unix]:9`) was shown as
    /// `unix:9`, which reads as a socket path.
    #[test]
    fn a_host_named_like_a_scheme_is_shown_in_brackets() {
        for address in [Address::tcp("unix", 9), Address::tcp("memory", 9)] {
            let again: Address = address.to_string().parse().unwrap();
            assert_eq!(again, address);
        }
    }

    /// Found by the `address` fuzz target: `[[]]:9` read as the host `[]`, shown as `[]:9`,
    /// which does not read back.
    #[test]
    fn a_host_with_stray_brackets_is_refused() {
        for text in ["[[]]:9", "[]]:9", "a]:9", "[[::1]]:9"] {
            assert!(text.parse::<Address>().is_err(), "{text} was taken");
        }
        assert_eq!("[::1]:9".parse::<Address>().unwrap().host(), Some("::1"));
    }

    /// Found by the `address` fuzz target: `unix:////x` (a path `//x`) was shown as `unix://x`,
    /// which reads back as the path `x`.
    #[test]
    fn a_unix_path_that_starts_with_two_slashes_reads_back_as_itself() {
        for text in ["unix:////#/u", "unix:////run/x", "unix://x"] {
            let address: Address = text.parse().unwrap();
            let again: Address = address.to_string().parse().unwrap();
            assert_eq!(again, address, "{text} -> {address}");
        }
    }

    #[test]
    fn parses_every_written_form() {
        let cases = [
            ("127.0.0.1:9090", Address::tcp("127.0.0.1", 9090)),
            ("localhost:1", Address::tcp("localhost", 1)),
            ("[fd00::1]:80", Address::tcp("fd00::1", 80)),
            (
                "unix:/run/vsp/user.sock",
                Address::unix("/run/vsp/user.sock"),
            ),
            (
                "unix:///run/vsp/user.sock",
                Address::unix("/run/vsp/user.sock"),
            ),
            ("unix:relative.sock", Address::unix("relative.sock")),
            ("memory:users", Address::memory("users")),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<Address>().unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn displays_what_parses_back() {
        for text in [
            "127.0.0.1:9090",
            "[fd00::1]:80",
            "unix:/tmp/a.sock",
            "memory:x",
        ] {
            assert_eq!(text.parse::<Address>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn rejects_what_is_not_an_address() {
        for text in [
            "",
            "host",
            "host:",
            ":80",
            "host:99999",
            "unix:",
            "unix://",
            "memory:",
        ] {
            let err = text.parse::<Address>().unwrap_err();
            assert!(
                err.to_string().contains("is not an address"),
                "{text}: {err}"
            );
        }
    }
}
