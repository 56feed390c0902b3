//! Connections per instance: up to `max_transports`, opened lazily, least loaded first.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::connection::Connection;
use crate::transport::{connect, ConnectError};

/// Why no connection could be had.
#[derive(Debug)]
pub(crate) enum PoolError {
    Connect(std::io::Error),
    TimedOut(Duration),
}

/// The connections of one client to one instance.
pub(crate) struct InstancePool {
    endpoint: Arc<str>,
    max_transports: usize,
    max_frame_size: usize,
    connections: Mutex<Vec<Arc<Connection>>>,
    /// One connect at a time per instance, so a burst of calls opens connections one by one
    /// up to the limit instead of all at once.
    connecting: tokio::sync::Mutex<()>,
}

impl InstancePool {
    pub(crate) fn new(endpoint: Arc<str>, max_transports: usize, max_frame_size: usize) -> Self {
        InstancePool {
            endpoint,
            max_transports: max_transports.max(1),
            max_frame_size,
            connections: Mutex::new(Vec::new()),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn connections(&self) -> MutexGuard<'_, Vec<Arc<Connection>>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The least-loaded open connection, and whether another should be opened (every open one
    /// is busy and the limit is not reached).
    fn least_loaded(&self) -> (Option<Arc<Connection>>, bool) {
        let mut connections = self.connections();
        if connections.iter().any(|connection| connection.is_closed()) {
            connections.retain(|connection| !connection.is_closed());
        }
        let best = connections.iter().min_by_key(|c| c.in_flight()).cloned();
        let open_another = connections.len() < self.max_transports
            && best.as_ref().is_none_or(|c| c.in_flight() > 0);
        (best, open_another)
    }

    /// A connection for the next call, opening one if needed, within `connect_timeout`.
    pub(crate) async fn get(
        &self,
        connect_timeout: Duration,
    ) -> Result<Arc<Connection>, PoolError> {
        let (best, open_another) = self.least_loaded();
        let best = match (best, open_another) {
            (Some(best), false) => return Ok(best),
            (best, _) => best,
        };
        let _connecting = match (self.connecting.try_lock(), best) {
            (Ok(guard), _) => guard,
            // Someone is already opening one: share the busy connection meanwhile.
            (Err(_), Some(best)) => return Ok(best),
            (Err(_), None) => tokio::time::timeout(connect_timeout, self.connecting.lock())
                .await
                .map_err(|_| PoolError::TimedOut(connect_timeout))?,
        };
        // Another caller may have opened one while this one waited.
        if let (Some(best), false) = self.least_loaded() {
            return Ok(best);
        }
        let stream = connect(&self.endpoint, connect_timeout)
            .await
            .map_err(|err| match err {
                ConnectError::Io(err) => PoolError::Connect(err),
                ConnectError::TimedOut => PoolError::TimedOut(connect_timeout),
            })?;
        let connection = Arc::new(Connection::start(
            stream,
            self.endpoint.clone(),
            self.max_frame_size,
        ));
        self.connections().push(connection.clone());
        tracing::debug!(instance = %self.endpoint, "opened a connection");
        Ok(connection)
    }

    /// Open connections (for tests and stats).
    pub(crate) fn open_connections(&self) -> usize {
        let mut connections = self.connections();
        connections.retain(|connection| !connection.is_closed());
        connections.len()
    }
}
