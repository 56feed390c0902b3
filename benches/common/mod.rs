//! What the soak and idle-connection benchmarks share: a VSP server in a child process (so the
//! client's and the server's memory are measured apart), the service it serves, and RSS readings.
#![allow(dead_code)] // each benchmark uses its own part

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vsp::VspManager;

/// Set in the child: how many instances to serve.
const SERVE_ENV: &str = "VSP_BENCH_SERVE_INSTANCES";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub email: String,
}

#[vsp::service(name = "bench")]
pub trait BenchApi {
    async fn get_user(&self, user_id: String) -> User;
}

struct BenchImpl;

impl BenchApi for BenchImpl {
    async fn get_user(&self, user_id: String) -> User {
        User {
            id: user_id,
            name: "John Doe".into(),
            email: "john@example.com".into(),
        }
    }
}

/// The resident set size of process `pid` (`"self"` for this one), in bytes.
pub fn rss_bytes(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The benchmarks' runtime: 2 worker threads (one per core on these machines).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Raises this process's open-file limit to its hard limit (at most `want`); returns the limit.
pub fn raise_open_files(want: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    let target = want.min(limit.rlim_max);
    if target > limit.rlim_cur {
        limit.rlim_cur = target;
        // SAFETY: as above; raising the soft limit up to the hard one is always allowed.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
    // SAFETY: as above.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_cur
}

/// The server side, when this process is the child: serves until its stdin closes, then exits.
/// Returns false in the parent.
pub fn serve_if_child() -> bool {
    let Some(instances) = std::env::var(SERVE_ENV).ok().and_then(|n| n.parse().ok()) else {
        return false;
    };
    raise_open_files(30_000);
    runtime().block_on(async move {
        let mut managers = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..instances {
            let manager = VspManager::builder("bench")
                // Every benchmark connection comes from 127.0.0.1.
                .max_connections(30_000)
                .max_connections_per_peer(30_000)
                .build();
            manager.serve(BenchApiServer::new(BenchImpl)).unwrap();
            let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
            ports.push(addr.port().to_string());
            managers.push(manager);
        }
        println!("PORTS {}", ports.join(" "));
        // Serve until the parent closes our stdin (or dies).
        tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        })
        .await
        .unwrap();
        for manager in managers {
            let _ = manager.shutdown().await;
        }
    });
    true
}

/// A server of `instances` instances in a child process.
pub struct ServerProcess {
    child: Child,
    pub ports: Vec<u16>,
}

impl ServerProcess {
    pub fn spawn(instances: usize) -> ServerProcess {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(SERVE_ENV, instances.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start the server process");
        let stdout = child.stdout.take().unwrap();
        let (sender, ports) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let line = ports
            .recv_timeout(Duration::from_secs(30))
            .expect("the server process did not print its ports within 30 s");
        let ports = line
            .trim()
            .strip_prefix("PORTS ")
            .unwrap_or_else(|| panic!("the server process printed {line:?}, not its ports"))
            .split(' ')
            .map(|port| port.parse().unwrap())
            .collect();
        ServerProcess { child, ports }
    }

    pub fn rss(&self) -> u64 {
        rss_bytes(&self.child.id().to_string())
    }
}

impl Drop for ServerProcess {
    /// Closes the child's stdin (it shuts down gracefully) and waits for it to exit, at most
    /// 40 s; then kills it.
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let pid = self.child.id() as libc::pid_t;
        let (exited, exit) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            let child = &mut self.child;
            scope.spawn(move || {
                let _ = child.wait();
                let _ = exited.send(());
            });
            if exit.recv_timeout(Duration::from_secs(40)).is_err() {
                eprintln!("the server process did not stop within 40 s: killed");
                // SAFETY: signalling our own child, which has not been reaped yet.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
    }
}
