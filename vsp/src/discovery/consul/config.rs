//! Where the Consul agent is and how to use it: [`ConsulConfig`] and [`ConsulCheck`].

use super::*;

/// The default agent address.
pub(crate) const DEFAULT_CONSUL_ADDRESS: &str = "http://127.0.0.1:8500";

/// How an announced server's health is checked by Consul.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
#[cfg_attr(docsrs, doc(cfg(feature = "consul")))]
pub enum ConsulCheck {
    /// The agent dials the server's port every `interval` (the default: every 10 s, 5 s
    /// timeout).
    Tcp {
        /// Time between two dials.
        interval: Duration,
        /// How long a dial may take.
        timeout: Duration,
    },
    /// The server reports in: a heartbeat marks the check passing every `ttl / 3` while the
    /// server runs; if it stops, the check goes critical after `ttl`.
    Ttl {
        /// How long a heartbeat keeps the check passing.
        ttl: Duration,
    },
}

impl Default for ConsulCheck {
    fn default() -> Self {
        ConsulCheck::Tcp {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Settings of a [`ConsulDiscovery`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
#[cfg_attr(docsrs, doc(cfg(feature = "consul")))]
pub struct ConsulConfig {
    /// The agent's URL (default `http://127.0.0.1:8500`).
    pub address: String,
    /// The ACL token, sent as `X-Consul-Token`.
    pub token: Option<String>,
    /// The datacenter to query (default: the agent's).
    pub datacenter: Option<String>,
    /// Tags of announced instances (`vsp` is always added).
    pub tags: Vec<String>,
    /// The health check of announced instances.
    pub check: ConsulCheck,
    /// A critical instance is removed from the catalog after this long (default 1 min).
    pub deregister_critical_after: Duration,
    /// How long the agent may hold a blocking query (default 60 s).
    pub wait: Duration,
    /// Services to watch from the start; others are watched from their first call.
    pub services: Vec<String>,
    /// How long a first call to a service waits for its first answer (default 5 s).
    pub first_resolution_wait: Duration,
    /// The most services watched at once (default 256); a call to one more fails at once with
    /// a [`VspError::Discovery`] that says so. Services in `services` count too.
    pub max_watches: usize,
    /// A watch of a service no call has picked from for this long is stopped and its instances
    /// forgotten (default 10 minutes; checked once per blocking query, so up to `wait` later).
    /// The next call starts it again. Services in `services` are watched for good.
    pub unused_watch_timeout: Duration,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            address: DEFAULT_CONSUL_ADDRESS.to_owned(),
            token: None,
            datacenter: None,
            tags: Vec::new(),
            check: ConsulCheck::default(),
            deregister_critical_after: Duration::from_secs(60),
            wait: Duration::from_secs(60),
            services: Vec::new(),
            first_resolution_wait: Duration::from_secs(5),
            max_watches: 256,
            unused_watch_timeout: Duration::from_secs(10 * 60),
        }
    }
}

impl ConsulConfig {
    /// The defaults, with this agent address.
    pub fn new(address: impl Into<String>) -> Self {
        ConsulConfig {
            address: address.into(),
            ..ConsulConfig::default()
        }
    }

    /// Sets the ACL token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets the datacenter.
    pub fn datacenter(mut self, datacenter: impl Into<String>) -> Self {
        self.datacenter = Some(datacenter.into());
        self
    }

    /// Adds a tag to announced instances.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Sets the health check of announced instances.
    pub fn check(mut self, check: ConsulCheck) -> Self {
        self.check = check;
        self
    }

    /// Sets the blocking query wait (default 60 s).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Watches `service` from the start.
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.services.push(service.into());
        self
    }

    /// Sets how long a first call waits for the first answer (default 5 s).
    pub fn first_resolution_wait(mut self, wait: Duration) -> Self {
        self.first_resolution_wait = wait;
        self
    }

    /// Sets the most services watched at once (default 256).
    pub fn max_watches(mut self, watches: usize) -> Self {
        self.max_watches = watches;
        self
    }

    /// Sets how long an unused watch runs before it stops (default 10 minutes).
    pub fn unused_watch_timeout(mut self, timeout: Duration) -> Self {
        self.unused_watch_timeout = timeout;
        self
    }
}
