//! A TCP proxy on loopback that injects faults between a client and one server: added latency,
//! a reset in the middle of a frame, a blackhole (accepts, never answers), a half-closed peer, a
//! slow reader. The fault can be changed (and healed) while connections are open: each chunk of
//! bytes consults the current fault as it passes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to the bytes passing through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Bytes pass unchanged.
    None,
    /// Each chunk, both ways, is held this long before it is forwarded.
    Latency(Duration),
    /// The next chunk from the server is cut in half and the client's connection is reset.
    ResetMidFrame,
    /// Bytes from the client are swallowed; nothing is forwarded, nothing is answered, and the
    /// connection stays open.
    Blackhole,
    /// The next chunk from the server is dropped and the client's read side is shut (it reads
    /// end of stream) while its writes are still accepted and forwarded.
    HalfClose,
    /// Bytes from the client are read 16 at a time, every 100 ms.
    SlowReader,
}

/// A running proxy; dropping it stops accepting (open connections run on until either side
/// closes).
pub struct FaultProxy {
    addr: SocketAddr,
    fault: Arc<Mutex<Fault>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FaultProxy {
    /// Listens on an ephemeral loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let fault = Arc::new(Mutex::new(Fault::None));
        let shared = fault.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let fault = shared.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return; // the client sees its connection close
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let upstream =
                        tokio::spawn(client_to_server(client_read, server_write, fault.clone()));
                    server_to_client(server_read, client_write, fault).await;
                    upstream.abort();
                });
            }
        });
        FaultProxy {
            addr,
            fault,
            accept,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the fault for the bytes that pass from now on, on every connection.
    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner) = fault;
    }

    fn current(fault: &Mutex<Fault>) -> Fault {
        *fault.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn client_to_server(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    fault: Arc<Mutex<Fault>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let limit = match FaultProxy::current(&fault) {
            Fault::SlowReader => 16,
            _ => buf.len(),
        };
        let n = match from.read(&mut buf[..limit]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match FaultProxy::current(&fault) {
            Fault::Blackhole => continue,
            Fault::Latency(delay) => tokio::time::sleep(delay).await,
            Fault::SlowReader => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn server_to_client(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    fault: Arc<Mutex<Fault>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match FaultProxy::current(&fault) {
            Fault::Blackhole => continue,
            Fault::Latency(delay) => tokio::time::sleep(delay).await,
            Fault::ResetMidFrame => {
                let _ = to.write_all(&buf[..n.div_ceil(2)]).await;
                // A reset, not a close: linger 0; the socket closes when the caller drops the
                // other half too.
                let _ = AsRef::<TcpStream>::as_ref(&to).set_zero_linger();
                return;
            }
            Fault::HalfClose => {
                let _ = to.shutdown().await;
                // Keep swallowing the server's bytes; the client's writes still pass.
                while matches!(from.read(&mut buf).await, Ok(n) if n > 0) {}
                return;
            }
            _ => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
