//! A real etcd (Debian's `etcd-server`; `.ci/run` installs it) on free loopback ports with a
//! temporary data directory, that a test can stop and start again on the same ports and data.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// etcd's binary; `None` (after printing SKIPPED) when it is not installed, a failure in CI.
pub fn etcd_binary() -> Option<PathBuf> {
    crate::installed_binary(&["/usr/bin/etcd", "/usr/local/bin/etcd"], "etcd-server")
}

/// A single-member etcd cluster; killed (and its data removed) when dropped.
pub struct Etcd {
    binary: PathBuf,
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    /// Starts etcd and waits (bounded) until it answers.
    ///
    /// A port picked free can be taken by a parallel test before etcd binds it: etcd then exits,
    /// and it is started again on new ports (up to five times).
    pub async fn start(binary: PathBuf) -> Etcd {
        let mut tries = 0;
        loop {
            tries += 1;
            let client_port = free_port();
            let mut peer_port = free_port();
            while peer_port == client_port {
                peer_port = free_port();
            }
            let mut etcd = Etcd {
                binary: binary.clone(),
                child: None,
                client_port,
                peer_port,
                dir: crate::pki::temp_dir("etcd"),
            };
            match etcd.run().await {
                Ok(()) => return etcd,
                Err(exited) if tries < 5 => {
                    eprintln!("etcd on ports {client_port}/{peer_port} exited ({exited}); again");
                }
                Err(exited) => panic!("etcd on {} exited: {exited}", etcd.url()),
            }
        }
    }

    /// The client URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd (SIGKILL): its clients see it gone at once.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub async fn restart(&mut self) {
        self.stop();
        if let Err(exited) = self.run().await {
            panic!("etcd restarted on {} exited: {exited}", self.url());
        }
    }

    /// Runs etcd until it answers (`Ok`) or exits (`Err` with its exit status).
    async fn run(&mut self) -> Result<(), String> {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(&self.binary)
            .args(["--name", "vsp-test", "--data-dir"])
            .arg(self.dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("vsp-test={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let port = self.client_port;
        let child = self.child.insert(child);
        // Ready once it answers a range read; failed once it has exited.
        let mut exited = None;
        crate::wait_until_async(
            &format!("etcd to answer on {client}"),
            Duration::from_secs(20),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    exited = Some(status);
                }
                let gone = exited.is_some();
                async move {
                    gone || post_to(port, "/v3/kv/range", r#"{"key":"AA=="}"#)
                        .await
                        .is_ok_and(|answer| answer.contains("header"))
                }
            },
        )
        .await;
        match exited {
            Some(status) => {
                self.child = None;
                Err(status.to_string())
            }
            None => Ok(()),
        }
    }

    /// POSTs `body` (JSON) to `path` of its JSON gateway; the answer's body.
    pub async fn post(&self, path: &str, body: &str) -> std::io::Result<String> {
        post_to(self.client_port, path, body).await
    }

    /// Puts `key` = `value` (plain text; base64-encoded here).
    pub async fn put(&self, key: &str, value: &str) {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            base64(key.as_bytes()),
            base64(value.as_bytes())
        );
        let answer = self.post("/v3/kv/put", &body).await.unwrap();
        assert!(answer.contains("header"), "etcd refused the put: {answer}");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn base64(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                DIGITS[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// POSTs `body` (JSON) to `path` of the JSON gateway of the etcd on `port`; the answer's body.
async fn post_to(port: u16, path: &str, body: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    Ok(response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned()))
}
