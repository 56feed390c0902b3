//! In-memory connections: a duplex pipe between a client and a server of the same process.
//!
//! Why a process-wide table of names: an in-memory listener is found by its address
//! (`memory:<name>`) like any other, so a mesh, a client and a server use it through exactly the
//! code paths they use for TCP, and tests exercise those paths without a socket.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use tokio::sync::mpsc;

use super::{Address, Io, Listener};
use crate::BoxFuture;

/// Bytes each direction of an in-memory connection buffers before a writer waits.
const PIPE_CAPACITY: usize = 256 * 1024;
/// Connections dialed but not accepted yet, per listener.
const BACKLOG: usize = 1024;

type Table = HashMap<String, mpsc::Sender<tokio::io::DuplexStream>>;

fn table() -> std::sync::MutexGuard<'static, Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Dials the in-memory listener called `name`.
pub(crate) fn connect(name: &str) -> io::Result<Io> {
    let listener = table().get(name).cloned();
    let refused = || {
        io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("no in-memory listener is bound to `memory:{name}`"),
        )
    };
    let listener = listener.ok_or_else(refused)?;
    let (client, server) = tokio::io::duplex(PIPE_CAPACITY);
    listener.try_send(server).map_err(|err| match err {
        mpsc::error::TrySendError::Full(_) => io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("`memory:{name}` has {BACKLOG} connections waiting to be accepted"),
        ),
        mpsc::error::TrySendError::Closed(_) => refused(),
    })?;
    Ok(Io::split(client))
}

/// A listener for connections from the same process, at `memory:<name>`: for tests, and for
/// services that call each other in one process without a socket.
///
/// ```
/// use vsp::Address;
/// use vsp::transport::{MemoryListener};
/// use vsp::{ServiceInfo, ServiceMesh, VspClient, VspManager};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = VspManager::builder("echo").build();
/// manager.endpoint("echo", |v: serde_json::Value| async move { Ok::<_, vsp::VspError>(v) })?;
/// let addr = manager.start_server_on(MemoryListener::bind("echo-doc")?).await?;
/// assert_eq!(addr, Address::memory("echo-doc"));
///
/// let mesh = ServiceMesh::new();
/// mesh.register(ServiceInfo::at("echo", addr))?;
/// let client = VspClient::builder(mesh).build();
/// let answer = client.call("echo", "echo", serde_json::json!({"x": 1})).await?;
/// assert_eq!(answer["x"], 1);
/// manager.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryListener {
    name: String,
    incoming: mpsc::Receiver<tokio::io::DuplexStream>,
}

impl MemoryListener {
    /// Binds `name`; clients reach it at `memory:<name>`.
    ///
    /// # Errors
    /// `AddrInUse` if a listener of this process holds the name.
    pub fn bind(name: impl Into<String>) -> io::Result<Self> {
        let name = name.into();
        let mut table = table();
        if table.get(&name).is_some_and(|open| !open.is_closed()) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("`memory:{name}` is already bound"),
            ));
        }
        Ok(Self::insert(&mut table, name))
    }

    /// Binds a name no listener of this process holds, `<prefix>-<n>`: the in-memory port 0.
    /// Tests that run in parallel in one process each get their own.
    ///
    /// ```
    /// use vsp::transport::{Listener, MemoryListener};
    ///
    /// let first = MemoryListener::bind_unique("inventory");
    /// let second = MemoryListener::bind_unique("inventory");
    /// assert_ne!(first.local_addr(), second.local_addr());
    /// assert!(first.local_addr().to_string().starts_with("memory:inventory-"));
    /// ```
    pub fn bind_unique(prefix: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let mut table = table();
        loop {
            // A name bound by hand may already hold the number: take the next.
            let name = format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
            if table.get(&name).is_none_or(|open| open.is_closed()) {
                return Self::insert(&mut table, name);
            }
        }
    }

    fn insert(table: &mut Table, name: String) -> Self {
        let (sender, incoming) = mpsc::channel(BACKLOG);
        table.insert(name.clone(), sender);
        MemoryListener { name, incoming }
    }
}

impl Listener for MemoryListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(Io, Address)>> {
        Box::pin(async move {
            match self.incoming.recv().await {
                Some(stream) => Ok((Io::split(stream), Address::Memory(self.name.clone()))),
                // Unreachable while the listener holds its table entry, but never a panic.
                None => Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the in-memory listener was unbound",
                )),
            }
        })
    }

    fn local_addr(&self) -> Address {
        Address::Memory(self.name.clone())
    }
}

impl Drop for MemoryListener {
    fn drop(&mut self) {
        // The name cannot have been bound again while this listener held it.
        table().remove(&self.name);
    }
}
