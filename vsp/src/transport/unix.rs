//! Unix domain sockets: a server listens on a path, a client dials it.
//!
//! Why a stale socket file is replaced but a live one is not: a server that crashed leaves its
//! socket file behind, and binding over it fails with "address in use" although nobody listens.
//! Before binding, a file that is a socket and refuses a connection is removed; one that accepts
//! belongs to a running server and is an error, and a path that is not a socket is never touched.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::{Address, Io, Listener};
use crate::BoxFuture;

/// Opens a connection to the socket at `path`.
pub(crate) async fn connect(path: &Path) -> io::Result<Io> {
    let stream = tokio::net::UnixStream::connect(path).await?;
    let (read, write) = stream.into_split();
    Ok(Io::new(read, write))
}

/// A Unix domain socket listener; its socket file is removed when it is dropped (when the server
/// shuts down).
#[derive(Debug)]
pub struct UnixListener {
    inner: tokio::net::UnixListener,
    path: PathBuf,
}

impl UnixListener {
    /// Binds `path`, replacing a stale socket file left by a server that is gone.
    ///
    /// # Errors
    /// `AddrInUse` if a server answers on `path`, `AlreadyExists` if `path` is a file that is not
    /// a socket, and what the bind reported (a missing directory, permission denied).
    pub fn bind(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        remove_stale_socket(path)?;
        let inner = tokio::net::UnixListener::bind(path)?;
        Ok(UnixListener {
            inner,
            path: path.to_owned(),
        })
    }
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    if !metadata.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("a server is listening on {}", path.display()),
        )),
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "replacing a stale socket file");
            std::fs::remove_file(path)
        }
        Err(err) => Err(err),
    }
}

impl Listener for UnixListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(Io, Address)>> {
        Box::pin(async move {
            let (stream, _peer) = self.inner.accept().await?;
            let (read, write) = stream.into_split();
            // Client sockets are unnamed: the peer is known only by the path it dialed.
            Ok((Io::new(read, write), Address::Unix(self.path.clone())))
        })
    }

    fn local_addr(&self) -> Address {
        Address::Unix(self.path.clone())
    }
}

impl Drop for UnixListener {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_file(&self.path) {
            if err.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), "cannot remove the socket file: {err}");
            }
        }
    }
}
