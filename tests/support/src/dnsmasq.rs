//! A real dnsmasq answering from its configuration on a free loopback port, for the DNS
//! discovery tests (Debian's `dnsmasq-base`; `.ci/run` installs it).

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The zone the tests serve.
pub const DOMAIN: &str = "vsp.test";

/// dnsmasq's binary; `None` (after printing SKIPPED) when it is not installed, a failure in CI.
pub fn dnsmasq_binary() -> Option<PathBuf> {
    crate::installed_binary(&["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"], "dnsmasq-base")
}

/// An SRV record line: `_vsp._tcp.<service>.vsp.test` → `<target>.vsp.test:<port>`.
pub fn srv(service: &str, target: &str, port: u16, priority: u16, weight: u16) -> String {
    format!("srv-host=_vsp._tcp.{service}.{DOMAIN},{target}.{DOMAIN},{port},{priority},{weight}")
}

/// An A record line: `<target>.vsp.test` → 127.0.0.1.
pub fn host(target: &str) -> String {
    format!("host-record={target}.{DOMAIN},127.0.0.1")
}

/// A dnsmasq answering only from its configuration, on a loopback port; killed when dropped.
pub struct Dnsmasq {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Dnsmasq {
    /// Starts dnsmasq on `port` (0: a free one) with `records` (dnsmasq option lines).
    ///
    /// dnsmasq listens on UDP and TCP on its port, so a port free for UDP can still be taken on
    /// TCP by a parallel test: dnsmasq then exits at once, and a port of our choosing is picked
    /// again (up to five times); a given port that cannot be bound fails with dnsmasq's message.
    pub async fn start(binary: &PathBuf, port: u16, records: &[String]) -> Dnsmasq {
        let mut tries = 0;
        loop {
            tries += 1;
            let chosen = if port == 0 { free_port() } else { port };
            match Self::try_start(binary, chosen, records).await {
                Ok(server) => return server,
                Err(exited) if port == 0 && tries < 5 => {
                    eprintln!("dnsmasq on port {chosen} exited ({exited}); trying another port");
                }
                Err(exited) => panic!("dnsmasq on 127.0.0.1:{chosen} exited: {exited}"),
            }
        }
    }

    /// One start: `Err` with dnsmasq's stderr when it exits before answering.
    async fn try_start(binary: &PathBuf, port: u16, records: &[String]) -> Result<Dnsmasq, String> {
        let dir = crate::pki::temp_dir("dnsmasq");
        let conf = dir.join("dnsmasq.conf");
        let mut text = format!(
            "port={port}\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\n\
             no-poll\nlocal-ttl=1\nauth-ttl=1\nneg-ttl=1\nuser=root\npid-file=\n\
             local=/{DOMAIN}/\n"
        );
        for record in records {
            text.push_str(record);
            text.push('\n');
        }
        std::fs::write(&conf, text).unwrap();
        let child = Command::new(binary)
            .arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", conf.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut server = Dnsmasq {
            child,
            port,
            _dir: TempDir(dir),
        };
        // Ready once it answers a query on its port; failed once it has exited.
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let _ = socket.send_to(&probe_query(), addr).await;
            let mut buf = [0u8; 512];
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(100), socket.recv_from(&mut buf)).await
            {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = server.child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                return Err(format!("{status}: {}", stderr.trim()));
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "dnsmasq did not answer on 127.0.0.1:{port} within 10 s"
            );
        }
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DNS query for `probe.vsp.test` A (any answer, even NXDOMAIN, means it is up).
fn probe_query() -> Vec<u8> {
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["probe", "vsp", "test"] {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    query
}

/// A loopback port free for UDP and for TCP at the moment of asking.
fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
