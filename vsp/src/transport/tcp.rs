//! TCP: bounded connects with Nagle off.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

/// Why a connect failed.
#[derive(Debug)]
pub(crate) enum ConnectError {
    Io(io::Error),
    TimedOut,
}

/// Opens a TCP connection to `addr` (`host:port`, resolved here) within `timeout`.
pub(crate) async fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::TimedOut)?
        .map_err(ConnectError::Io)?;
    // Frames are written whole; waiting for an ACK before sending the next small one only adds latency.
    stream.set_nodelay(true).map_err(ConnectError::Io)?;
    Ok(stream)
}
