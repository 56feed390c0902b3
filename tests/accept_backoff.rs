//! A server whose process runs out of file descriptors backs off its accepts instead of
//! spinning, and serves the waiting connections once descriptors are free again.
//!
//! Its own test binary: it lowers the whole process's descriptor limit for a moment.
#![cfg(target_os = "linux")]

#[path = "e2e/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

fn open_files_limit() -> libc::rlimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    limit
}

fn set_open_files_limit(limit: libc::rlimit) {
    // SAFETY: `limit` is a valid rlimit; lowering the soft limit only makes new descriptors fail.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_backs_off_while_out_of_file_descriptors_and_recovers() {
    let (manager, addr) = start_test_server().await;
    // Sockets made while descriptors are plentiful, connected once they are not.
    let sockets: Vec<_> = (0..4)
        .map(|_| tokio::net::TcpSocket::new_v4().unwrap())
        .collect();
    let original = open_files_limit();
    set_open_files_limit(libc::rlimit {
        rlim_cur: 3,
        rlim_max: original.rlim_max,
    });
    let short_since = Instant::now();
    let mut peers = Vec::new();
    for socket in sockets {
        peers.push(RawPeer {
            stream: socket.connect(addr).await.unwrap(),
        });
    }
    wait_until(
        "six failed accepts while out of descriptors",
        Duration::from_secs(10),
        || manager.get_performance_stats().accept_errors >= 6,
    )
    .await;
    let six_took = short_since.elapsed();
    set_open_files_limit(original);
    // Backing off from 10 ms, doubling, puts at least 10 + 20 + 40 + 80 + 160 ms between the
    // first failure and the sixth; retrying every 10 ms, 50 ms. (A lower bound: a slow machine
    // only makes it longer.)
    assert!(
        six_took >= Duration::from_millis(300),
        "six failed accepts within {six_took:?} without descriptors: no backoff"
    );
    for peer in &mut peers {
        assert!(
            peer.is_served().await,
            "a connection that waited out the shortage was not served"
        );
    }
    manager.shutdown().await.unwrap();
}
