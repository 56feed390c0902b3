//! A server whose process runs out of file descriptors backs off its accepts instead of
//! spinning, and serves the waiting connections once descriptors are free again.
//!
//! Its own test binary: it lowers the whole process's descriptor limit for a moment.
#![cfg(target_os = "linux")]

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
        "the server's accept to fail for lack of descriptors",
        Duration::from_secs(5),
        || manager.get_performance_stats().accept_errors >= 1,
    )
    .await;
    // The scenario, not a synchronisation: a shortage that lasts a second and a half.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let errors = manager.get_performance_stats().accept_errors;
    let short_for = short_since.elapsed();
    set_open_files_limit(original);
    // Backing off from 10 ms, doubling to 1 s, makes about 8 tries in 1.5 s; retrying every
    // 10 ms makes 150.
    assert!(
        errors <= 12,
        "{errors} failed accepts in {short_for:?} without descriptors: no backoff"
    );
    for peer in &mut peers {
        assert!(
            peer.is_served().await,
            "a connection that waited out the shortage was not served"
        );
    }
    manager.shutdown().await.unwrap();
}
