//! Connections per instance: up to `max_transports`, opened lazily through the client's
//! [`Connector`] when the open ones are saturated, least loaded first, closed when idle, never
//! more than the limits allow.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;

use super::connection::Connection;
use crate::fast_map::FastMap;
use crate::instance::Instance;
use crate::transport::{Address, Connector, Target};

/// Bytes waiting in a connection's write queue (not yet taken by the socket) from which it
/// counts as saturated: the socket buffers are full and the peer reads slower than calls come.
const SATURATED_BACKLOG: usize = 256 * 1024;

/// Why no connection could be had.
#[derive(Debug)]
pub(crate) enum PoolError {
    Connect(std::io::Error),
    /// The connector does not dial this instance (a plaintext client and a TLS instance).
    Unsupported(std::io::Error),
    TimedOut(Duration),
    /// Every connection is at its in-flight limit and no more may be opened.
    Saturated {
        limit: usize,
    },
}

/// Counters of a client's connection pools.
#[derive(Debug, Default)]
pub(crate) struct PoolCounters {
    created: AtomicU64,
    reused: AtomicU64,
    closed: AtomicU64,
}

impl PoolCounters {
    pub(crate) fn snapshot(&self) -> PoolStats {
        let created = self.created.load(Ordering::Relaxed);
        let closed = self.closed.load(Ordering::Relaxed);
        PoolStats {
            created,
            reused: self.reused.load(Ordering::Relaxed),
            closed,
            active: created.saturating_sub(closed),
        }
    }
}

/// What a client's connection pools have done, over all instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PoolStats {
    /// Connections opened.
    pub created: u64,
    /// Calls that went over a connection already open.
    pub reused: u64,
    /// Connections closed: broken, retired by a draining server, or idle too long.
    pub closed: u64,
    /// Connections open now.
    pub active: u64,
}

/// The limits of one instance's pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolLimits {
    pub(crate) max_transports: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) max_frame_size: usize,
    /// How requests to a server that reads compressed frames are compressed.
    pub(crate) compression: Option<crate::Compression>,
}

/// The connections of one client to one instance.
pub(crate) struct InstancePool {
    endpoint: Arc<str>,
    /// The service these connections call: with identity checks, a connection verified for one
    /// service is never reused for another at the same address.
    service: Box<str>,
    address: Address,
    tls: bool,
    /// The connector refused this instance once already (logged once).
    refused: std::sync::atomic::AtomicBool,
    connector: Arc<dyn Connector>,
    limits: PoolLimits,
    counters: Arc<PoolCounters>,
    /// The open connections, read without a lock on every call...
    connections: ArcSwap<Vec<Arc<Connection>>>,
    /// ...and changed (opened, retired) under this one.
    changing: Mutex<()>,
    /// One connect at a time per instance, so a burst of calls opens connections one by one
    /// up to the limit instead of all at once.
    connecting: tokio::sync::Mutex<()>,
}

impl InstancePool {
    fn new(
        instance: &Instance,
        connector: Arc<dyn Connector>,
        limits: PoolLimits,
        counters: Arc<PoolCounters>,
    ) -> Self {
        InstancePool {
            endpoint: instance.key_arc().clone(),
            service: instance.service().into(),
            address: instance.address().clone(),
            tls: instance.is_tls(),
            refused: std::sync::atomic::AtomicBool::new(false),
            connector,
            limits: PoolLimits {
                max_transports: limits.max_transports.max(1),
                max_in_flight: limits.max_in_flight.max(1),
                ..limits
            },
            counters,
            connections: ArcSwap::from_pointee(Vec::new()),
            changing: Mutex::new(()),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// Drops connections that match `retire` from the pool (calls in flight on them finish).
    fn retire(&self, retire: impl Fn(&Connection) -> bool) -> usize {
        let _changing = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.connections.load();
        let kept: Vec<Arc<Connection>> = current.iter().filter(|c| !retire(c)).cloned().collect();
        let removed = (current.len() - kept.len()) as u64;
        if removed > 0 {
            self.counters.closed.fetch_add(removed, Ordering::Relaxed);
            self.connections.store(Arc::new(kept));
        }
        self.connections.load().len()
    }

    /// The least-loaded usable connection, and whether another should be opened (even the
    /// least-loaded one is saturated, and the limit is not reached).
    fn least_loaded(&self) -> (Option<Arc<Connection>>, bool) {
        let mut connections = self.connections.load();
        if connections.iter().any(|connection| connection.is_retired()) {
            self.retire(Connection::is_retired);
            connections = self.connections.load();
        }
        let best = match connections.as_slice() {
            // The common case, one connection: no scan.
            [only] => Some(only.clone()),
            all => all.iter().min_by_key(|c| c.in_flight()).cloned(),
        };
        let open_another = connections.len() < self.limits.max_transports
            && best.as_ref().is_none_or(|c| self.is_saturated(c));
        (best, open_another)
    }

    /// Whether `connection` is saturated, so that another connection would serve the next call
    /// sooner: half its in-flight limit is used, or bytes wait in its write queue that the
    /// socket does not take (the peer reads slower than calls are made).
    ///
    /// Why not "any call in flight" (the rule before 0.1): one multiplexed connection carries
    /// hundreds of thousands of calls a second, and every extra connection splits the batches
    /// each write and read carries; a second connection at 64 calls in flight made the default
    /// pool slower than one connection. A connection is worth opening only when the open ones
    /// cannot take more.
    fn is_saturated(&self, connection: &Connection) -> bool {
        connection.in_flight() >= (self.limits.max_in_flight / 2).max(1)
            || connection.write_backlog() >= SATURATED_BACKLOG
    }

    /// Takes `best` if it has room for one more call.
    fn admit(&self, best: Arc<Connection>) -> Result<Arc<Connection>, PoolError> {
        if best.in_flight() >= self.limits.max_in_flight {
            return Err(PoolError::Saturated {
                limit: self.limits.max_in_flight,
            });
        }
        self.counters.reused.fetch_add(1, Ordering::Relaxed);
        Ok(best)
    }

    /// A connection for the next call, opening one if needed, within `connect_timeout`.
    pub(crate) async fn get(
        &self,
        connect_timeout: Duration,
    ) -> Result<Arc<Connection>, PoolError> {
        let (best, open_another) = self.least_loaded();
        let best = match (best, open_another) {
            (Some(best), false) => return self.admit(best),
            (best, _) => best,
        };
        let _connecting = match (self.connecting.try_lock(), best) {
            (Ok(guard), _) => guard,
            // Someone is already opening one: share the busy connection meanwhile, if it has
            // room; else wait for the one being opened rather than fail the call.
            (Err(_), Some(best)) if best.in_flight() < self.limits.max_in_flight => {
                return self.admit(best)
            }
            (Err(_), _) => tokio::time::timeout(connect_timeout, self.connecting.lock())
                .await
                .map_err(|_| PoolError::TimedOut(connect_timeout))?,
        };
        // Another caller may have opened one while this one waited.
        if let (Some(best), false) = self.least_loaded() {
            return self.admit(best);
        }
        let target = Target::new(&self.address, &self.service, self.tls);
        let io = tokio::time::timeout(connect_timeout, async {
            self.connector
                .connect_to(&target)
                .await?
                .established(connect_timeout)
                .await
        })
        .await
        .map_err(|_| PoolError::TimedOut(connect_timeout))?
        .map_err(|err| {
            if err.kind() != std::io::ErrorKind::Unsupported {
                return PoolError::Connect(err);
            }
            if !self.refused.swap(true, Ordering::Relaxed) {
                tracing::warn!(instance = %self.endpoint, "skipping this instance: {err}");
            }
            PoolError::Unsupported(err)
        })?;
        let connection = Arc::new(Connection::start(
            io,
            self.endpoint.clone(),
            self.limits.max_frame_size,
            self.limits.compression,
        ));
        {
            let _changing = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
            let mut next = Vec::clone(&self.connections.load());
            next.push(connection.clone());
            self.connections.store(Arc::new(next));
        }
        self.counters.created.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(instance = %self.endpoint, "opened a connection");
        Ok(connection)
    }

    /// Closes connections without calls for `idle` or longer; true if none is left open.
    fn close_idle(&self, idle: Duration) -> bool {
        self.retire(|c| c.is_retired() || c.is_idle_for(idle)) == 0
    }

    /// Open connections.
    pub(crate) fn open_connections(&self) -> usize {
        self.retire(Connection::is_retired)
    }
}

/// A client's pools, one per instance, read without a lock on every call and changed (a new
/// instance, a swept one) under a lock.
pub(crate) struct Pools {
    /// By address, then by service (almost always one).
    map: ArcSwap<FastMap<Arc<str>, Vec<Arc<InstancePool>>>>,
    changing: Mutex<()>,
    limits: PoolLimits,
    connector: Arc<dyn Connector>,
    counters: Arc<PoolCounters>,
}

impl Pools {
    pub(crate) fn new(limits: PoolLimits, connector: Arc<dyn Connector>) -> Self {
        Pools {
            map: ArcSwap::from_pointee(FastMap::default()),
            changing: Mutex::new(()),
            limits,
            connector,
            counters: Arc::new(PoolCounters::default()),
        }
    }

    /// The open connections to `instance` (none if it has no pool yet).
    pub(crate) fn connections_of(&self, instance: &Instance) -> Vec<Arc<Connection>> {
        self.map
            .load()
            .get(instance.key_arc())
            .and_then(|pools| {
                pools
                    .iter()
                    .find(|pool| *pool.service == *instance.service())
                    .map(|pool| pool.connections.load().to_vec())
            })
            .unwrap_or_default()
    }

    /// The pool of `instance`, made on first use.
    pub(crate) fn of(&self, instance: &Instance) -> Arc<InstancePool> {
        let find = |pools: &[Arc<InstancePool>]| {
            pools
                .iter()
                .find(|pool| *pool.service == *instance.service())
                .cloned()
        };
        if let Some(pool) = self
            .map
            .load()
            .get(instance.key_arc())
            .and_then(|p| find(p))
        {
            return pool;
        }
        let _changing = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let mut map = FastMap::clone(&self.map.load());
        let pools = map.entry(instance.key_arc().clone()).or_default();
        if let Some(pool) = find(pools) {
            return pool;
        }
        let pool = Arc::new(InstancePool::new(
            instance,
            self.connector.clone(),
            self.limits,
            self.counters.clone(),
        ));
        pools.push(pool.clone());
        self.map.store(Arc::new(map));
        pool
    }

    /// Open connections to the instance at `endpoint`.
    pub(crate) fn open_connections(&self, endpoint: &str) -> usize {
        self.map.load().get(endpoint).map_or(0, |pools| {
            pools.iter().map(|pool| pool.open_connections()).sum()
        })
    }

    /// How this client dials.
    pub(crate) fn connector(&self) -> &Arc<dyn Connector> {
        &self.connector
    }

    pub(crate) fn stats(&self) -> PoolStats {
        self.counters.snapshot()
    }

    /// Closes connections idle for `idle`, and forgets the pools left empty of instances that
    /// `is_known` no longer knows.
    pub(crate) fn sweep(&self, idle: Duration, is_known: impl FnOnce() -> HashSet<Arc<str>>) {
        let pools: Vec<(Arc<str>, Arc<InstancePool>)> = self
            .map
            .load()
            .iter()
            .flat_map(|(endpoint, pools)| pools.iter().map(|pool| (endpoint.clone(), pool.clone())))
            .collect();
        let empty: Vec<Arc<str>> = pools
            .into_iter()
            .filter(|(_, pool)| pool.close_idle(idle))
            .map(|(endpoint, _)| endpoint)
            .collect();
        if empty.is_empty() {
            return;
        }
        let known = is_known();
        let _changing = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let mut map = FastMap::clone(&self.map.load());
        for endpoint in empty.iter().filter(|e| !known.contains(*e)) {
            // Only an address with every pool empty is forgotten.
            if map
                .get(endpoint)
                .is_some_and(|pools| pools.iter().all(|pool| pool.open_connections() == 0))
            {
                map.remove(endpoint);
            }
        }
        self.map.store(Arc::new(map));
    }
}
