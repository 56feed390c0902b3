//! DNS SRV discovery against a real dnsmasq serving SRV and A records on a free loopback port.
//!
//! dnsmasq comes from Debian's `dnsmasq-base` (`.ci/run` installs it). Without it the tests
//! print SKIPPED, except in CI (`CI` set), where that is a failure.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use vsp::discovery::{DnsConfig, DnsDiscovery};
use vsp::{ServiceMesh, VspClient, VspError, VspManager, WeightedBalancer};
use vsp_test_support::dnsmasq::{dnsmasq_binary, host, srv, Dnsmasq, DOMAIN};
use vsp_test_support::wait_until;

/// A server of `users` whose `whoami` counts its calls.
async fn counted_server() -> (VspManager, u16, Arc<AtomicUsize>) {
    let manager = VspManager::builder("users").build();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    manager
        .endpoint("whoami", move |_: Value| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                Ok::<_, VspError>(json!("ok"))
            }
        })
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    (manager, addr.port(), calls)
}

fn client_of(dns: &Dnsmasq) -> VspClient {
    let discovery = DnsDiscovery::new(
        DnsConfig::srv(DOMAIN)
            .server(dns.addr())
            .min_interval(Duration::from_millis(200)),
    )
    .unwrap();
    let mesh = ServiceMesh::builder()
        .discovery(discovery)
        .load_balancer(WeightedBalancer::new())
        .build();
    VspClient::builder(mesh).build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_weights_and_priorities_route_calls() {
    let Some(binary) = dnsmasq_binary() else {
        return;
    };
    let (a, a_port, a_calls) = counted_server().await;
    let (b, b_port, b_calls) = counted_server().await;
    let (c, c_port, c_calls) = counted_server().await;
    let dns = Dnsmasq::start(
        &binary,
        0,
        &[
            srv("users", "a", a_port, 10, 3),
            srv("users", "b", b_port, 10, 1),
            // A backup at a higher priority value: used only when the others are gone.
            srv("users", "c", c_port, 20, 100),
            host("a"),
            host("b"),
            host("c"),
        ],
    )
    .await;
    let client = client_of(&dns);
    for _ in 0..400 {
        client.call("users", "whoami", json!({})).await.unwrap();
    }
    let (a_n, b_n, c_n) = (
        a_calls.load(Ordering::Relaxed),
        b_calls.load(Ordering::Relaxed),
        c_calls.load(Ordering::Relaxed),
    );
    assert_eq!(c_n, 0, "the higher priority value is not used");
    assert_eq!(a_n + b_n, 400);
    assert!((290..=310).contains(&a_n), "3:1 weights gave {a_n}:{b_n}");
    let instances = client.mesh().instances("users");
    assert_eq!(instances.len(), 2, "{instances:?}");
    for manager in [a, b, c] {
        manager.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_added_and_removed_join_and_leave_within_the_ttl() {
    let Some(binary) = dnsmasq_binary() else {
        return;
    };
    let (a, a_port, _) = counted_server().await;
    let (b, b_port, b_calls) = counted_server().await;
    let dns = Dnsmasq::start(&binary, 0, &[srv("users", "a", a_port, 0, 1), host("a")]).await;
    let port = dns.port;
    let client = client_of(&dns);
    client.call("users", "whoami", json!({})).await.unwrap();
    assert_eq!(client.mesh().instances("users").len(), 1);

    // dnsmasq reloaded with a second record: it joins.
    drop(dns);
    let dns = Dnsmasq::start(
        &binary,
        port,
        &[
            srv("users", "a", a_port, 0, 1),
            srv("users", "b", b_port, 0, 1),
            host("a"),
            host("b"),
        ],
    )
    .await;
    let mesh = client.mesh().clone();
    wait_until(
        "the added SRV record's instance",
        Duration::from_secs(10),
        || mesh.instances("users").len() == 2,
    )
    .await;
    for _ in 0..10 {
        client.call("users", "whoami", json!({})).await.unwrap();
    }
    assert!(
        b_calls.load(Ordering::Relaxed) > 0,
        "the new instance is called"
    );

    // And reloaded without the first: it leaves.
    drop(dns);
    let _dns = Dnsmasq::start(&binary, port, &[srv("users", "b", b_port, 0, 1), host("b")]).await;
    wait_until(
        "the removed SRV record's instance to leave",
        Duration::from_secs(10),
        || {
            let instances = mesh.instances("users");
            instances.len() == 1 && instances[0].info.port() == b_port
        },
    )
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_exist_is_no_instances() {
    let Some(binary) = dnsmasq_binary() else {
        return;
    };
    let dns = Dnsmasq::start(&binary, 0, &[host("a")]).await;
    let client = client_of(&dns);
    let started = std::time::Instant::now();
    let err = client
        .call("nobody", "whoami", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, VspError::NoInstances { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "NXDOMAIN is an answer, not a wait for the first resolution ({:?})",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_that_stops_answering_keeps_the_last_instances() {
    let Some(binary) = dnsmasq_binary() else {
        return;
    };
    let (a, a_port, _) = counted_server().await;
    let dns = Dnsmasq::start(&binary, 0, &[srv("users", "a", a_port, 0, 1), host("a")]).await;
    let client = client_of(&dns);
    client.call("users", "whoami", json!({})).await.unwrap();
    let port = dns.port;
    drop(dns);
    // A resolver that takes queries on the same port and never answers: count them.
    let silent = tokio::net::UdpSocket::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let queries = Arc::new(AtomicUsize::new(0));
    let counted = queries.clone();
    let listener = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while silent.recv_from(&mut buf).await.is_ok() {
            counted.fetch_add(1, Ordering::Relaxed);
        }
    });
    wait_until(
        "two re-resolutions sent to the silent resolver",
        Duration::from_secs(15),
        || queries.load(Ordering::Relaxed) >= 2,
    )
    .await;
    listener.abort();
    client.call("users", "whoami", json!({})).await.unwrap();
    assert_eq!(client.mesh().instances("users").len(), 1);
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_mode_takes_every_address_of_a_name_on_a_fixed_port() {
    let Some(binary) = dnsmasq_binary() else {
        return;
    };
    let (a, a_port, a_calls) = counted_server().await;
    // `users.vsp.test` has one address; every instance is on the configured port.
    let dns = Dnsmasq::start(&binary, 0, &[host("users")]).await;
    let discovery = DnsDiscovery::new(DnsConfig::host(DOMAIN, a_port).server(dns.addr())).unwrap();
    let client = VspClient::builder(ServiceMesh::builder().discovery(discovery).build()).build();
    client.call("users", "whoami", json!({})).await.unwrap();
    assert_eq!(a_calls.load(Ordering::Relaxed), 1);
    let instances = client.mesh().instances("users");
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(instances[0].info.port(), a_port);
    a.shutdown().await.unwrap();
}
