//! mDNS discovery with real mdns-sd daemons, each test inside a private network namespace that
//! has nothing but `lo`: mdns-sd announces on every interface it sees, and these tests must never
//! reach the machine's real network.
//!
//! Each test re-runs this test binary, for that test alone, under `unshare --net` (root, or
//! where user namespaces allow `unshare --net --map-root-user`). With `CI` set, failing to make the
//! namespace fails the test; elsewhere it is skipped with a message.

use std::future::Future;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use vsp::discovery::MdnsDiscovery;
use vsp::{ServiceMesh, VspClient, VspManager};

const INSIDE: &str = "VSP_MDNS_NETNS";

/// The namespace's network: `lo` alone, or `lo` and a veth pair `vspa`/`vspb` joined to each
/// other, carrying IPv6 (`fd00::1`, `fd00::2`) where loopback's multicast has none.
#[derive(Clone, Copy, PartialEq)]
enum Network {
    Loopback,
    VethPair,
}

impl Network {
    fn setup(self) -> &'static str {
        match self {
            Network::Loopback => "ip link set lo up && ip link set lo multicast on",
            Network::VethPair => {
                "ip link set lo up && ip link add vspa type veth peer name vspb \
                 && ip link set vspa up && ip link set vspb up \
                 && ip addr add fd00::1/64 dev vspa nodad && ip addr add fd00::2/64 dev vspb nodad"
            }
        }
    }

    fn interfaces(self) -> &'static [&'static str] {
        match self {
            Network::Loopback => &["lo"],
            Network::VethPair => &["lo", "vspa", "vspb"],
        }
    }
}

/// Runs `body` in a private network namespace: re-executes this test there, or, once there,
/// checks that only `lo` exists and runs it.
fn isolated<F, Fut>(test: &str, body: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    isolated_on(Network::Loopback, test, body)
}

fn isolated_on<F, Fut>(network: Network, test: &str, body: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    if std::env::var_os(INSIDE).is_some() {
        // /proc/net/dev belongs to this process's namespace (sysfs may show the host's).
        let interfaces: Vec<String> = std::fs::read_to_string("/proc/net/dev")
            .unwrap()
            .lines()
            .skip(2)
            .filter_map(|line| line.split(':').next().map(|name| name.trim().to_owned()))
            .collect();
        let mut sorted = interfaces.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            network.interfaces(),
            "refusing to run mDNS outside a private network namespace"
        );
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(body());
        return;
    }
    let Some(unshare) = namespace_command() else {
        let message = "cannot create a private network namespace (needs root or user namespaces)";
        if std::env::var_os("CI").is_some() {
            panic!("{message}: the mDNS tests must run in CI");
        }
        eprintln!("SKIPPED {test}: {message}");
        return;
    };
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("unshare")
        .args(unshare)
        .args([
            "--",
            "sh",
            "-c",
            &format!("{} && exec \"$@\"", network.setup()),
            "sh",
        ])
        .arg(exe)
        .args([
            "--exact",
            &in_suite(test),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INSIDE, "1")
        .status()
        .expect("cannot run unshare");
    assert!(
        status.success(),
        "{test} failed inside its network namespace ({status})"
    );
}

/// `test`'s full name in this test binary (`discovery::mdns::<test>`), for `--exact`.
fn in_suite(test: &str) -> String {
    let module = module_path!();
    let path = module
        .split_once("::")
        .map_or(module, |(_crate, path)| path);
    format!("{path}::{test}")
}

/// The `unshare` flags that work on this machine, if any.
fn namespace_command() -> Option<&'static [&'static str]> {
    [&["--net"][..], &["--net", "--map-root-user"][..]]
        .into_iter()
        .find(|flags| {
            Command::new("unshare")
                .args(*flags)
                .args(["--", "sh", "-c", "ip link set lo up"])
                .status()
                .is_ok_and(|s| s.success())
        })
}

fn mdns_mesh() -> ServiceMesh {
    ServiceMesh::builder()
        .discovery(MdnsDiscovery::new().first_resolution_wait(Duration::from_secs(10)))
        .build()
}

async fn announced_server(weight: f64) -> VspManager {
    let manager = VspManager::builder("echo-service")
        .mesh(mdns_mesh())
        .weight(weight)
        .build();
    manager
        .endpoint("whoami", |_: serde_json::Value| async {
            Ok::<_, String>(std::process::id())
        })
        .unwrap();
    manager.start_server("127.0.0.1", 0).await.unwrap();
    manager
}

async fn wait_for_instances(mesh: &ServiceMesh, n: usize) {
    for _ in 0..300 {
        if mesh.instances("echo-service").len() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "expected {n} instances, mesh has {:?}",
        mesh.instances("echo-service")
    );
}

#[test]
fn a_client_finds_an_announced_server() {
    isolated("a_client_finds_an_announced_server", || async {
        let _server = announced_server(1.0).await;
        let client = VspClient::builder(mdns_mesh()).build();
        // The first call waits for the first resolution.
        let health = client
            .call("echo-service", "health", json!({}))
            .await
            .unwrap();
        assert_eq!(health["status"], "healthy");
    });
}

#[test]
fn once_the_browse_has_run_its_first_wait_an_absent_service_fails_at_once() {
    isolated(
        "once_the_browse_has_run_its_first_wait_an_absent_service_fails_at_once",
        || async {
            let mesh = ServiceMesh::builder()
                .discovery(MdnsDiscovery::new().first_resolution_wait(Duration::from_secs(1)))
                .build();
            let client = VspClient::builder(mesh).build();
            // The first call waits out the browse's first second.
            let first = client.call("absent-service", "health", json!({})).await;
            assert!(
                matches!(first, Err(vsp::VspError::NoInstances { .. })),
                "{first:?}"
            );
            // Then the answer is in: twenty more calls do not wait a second each.
            let more = tokio::time::timeout(Duration::from_secs(10), async {
                for _ in 0..20 {
                    let err = client
                        .call("absent-service", "health", json!({}))
                        .await
                        .unwrap_err();
                    assert!(matches!(err, vsp::VspError::NoInstances { .. }), "{err:?}");
                }
            })
            .await;
            assert!(
                more.is_ok(),
                "calls to an absent service kept waiting for mDNS"
            );
        },
    );
}

fn whoami_counts(managers: &[&VspManager]) -> Vec<u64> {
    managers
        .iter()
        .map(|m| m.get_performance_stats().endpoints["whoami"].calls)
        .collect()
}

#[test]
fn two_announced_instances_share_calls_by_weight_and_one_leaves_on_shutdown() {
    isolated(
        "two_announced_instances_share_calls_by_weight_and_one_leaves_on_shutdown",
        || async {
            let heavy = announced_server(3.0).await;
            let light = announced_server(1.0).await;
            let mesh = ServiceMesh::builder()
                .discovery(MdnsDiscovery::new())
                .load_balancer(vsp::WeightedBalancer::new())
                .build();
            wait_for_instances(&mesh, 2).await;
            let weights: Vec<f64> = mesh
                .instances("echo-service")
                .iter()
                .map(|i| i.info.weight())
                .collect();
            assert!(
                weights.contains(&3.0) && weights.contains(&1.0),
                "{weights:?}"
            );
            let client = VspClient::builder(mesh.clone()).build();
            for _ in 0..400 {
                client
                    .call("echo-service", "whoami", json!({}))
                    .await
                    .unwrap();
            }
            assert_eq!(whoami_counts(&[&heavy, &light]), [300, 100]);

            // The goodbye takes it out of the mesh within 3 s; calls keep succeeding throughout.
            let stopping = tokio::spawn(async move { light.shutdown().await });
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while mesh.instances("echo-service").len() != 1 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still announced: {:?}",
                    mesh.instances("echo-service")
                );
                client
                    .call("echo-service", "whoami", json!({}))
                    .await
                    .unwrap();
            }
            stopping.await.unwrap().unwrap();
            for _ in 0..50 {
                client
                    .call("echo-service", "whoami", json!({}))
                    .await
                    .unwrap();
            }
        },
    );
}

#[test]
fn an_instance_started_after_the_client_is_found() {
    isolated("an_instance_started_after_the_client_is_found", || async {
        let first = announced_server(1.0).await;
        let mesh = mdns_mesh();
        let client = VspClient::builder(mesh.clone()).build();
        client
            .call("echo-service", "whoami", json!({}))
            .await
            .unwrap();
        assert_eq!(mesh.instances("echo-service").len(), 1);

        // Listens on every address: announced with the addresses the daemon finds (here, lo's).
        let second = VspManager::builder("echo-service")
            .mesh(mdns_mesh())
            .build();
        second
            .endpoint("whoami", |_: serde_json::Value| async {
                Ok::<_, String>(0)
            })
            .unwrap();
        second.start_server("0.0.0.0", 0).await.unwrap();
        wait_for_instances(&mesh, 2).await;
        for _ in 0..10 {
            client
                .call("echo-service", "whoami", json!({}))
                .await
                .unwrap();
        }
        assert_eq!(whoami_counts(&[&first, &second]), [6, 5]);
    });
}

#[test]
fn bad_txt_records_get_defaults_or_are_skipped_without_a_panic() {
    isolated(
        "bad_txt_records_get_defaults_or_are_skipped_without_a_panic",
        || async {
            let (_server, addr) = {
                let manager = VspManager::builder("echo-service").build();
                let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
                (manager, addr)
            };
            let daemon = mdns_sd::ServiceDaemon::new().unwrap();
            let announce = |name: &str, txt: &[(&str, &str)]| {
                let info = mdns_sd::ServiceInfo::new(
                    "_vsp._tcp.local.",
                    name,
                    "testhost.local.",
                    "127.0.0.1",
                    addr.port(),
                    txt,
                )
                .unwrap();
                daemon.register(info).unwrap();
            };
            announce("no-weight", &[("service", "no-weight"), ("vsp", "1")]);
            announce(
                "word-weight",
                &[
                    ("service", "word-weight"),
                    ("weight", "heavy"),
                    ("vsp", "1"),
                ],
            );
            announce(
                "future",
                &[("service", "future"), ("weight", "1"), ("vsp", "2")],
            );
            announce("anonymous", &[("weight", "1"), ("vsp", "1")]);
            announce(
                "fine",
                &[("service", "fine"), ("weight", "1.0"), ("vsp", "1")],
            );

            let mesh = mdns_mesh();
            for _ in 0..300 {
                if mesh.services().len() == 3 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(mesh.services(), ["fine", "no-weight", "word-weight"]);
            for service in ["no-weight", "word-weight", "fine"] {
                assert_eq!(mesh.instances(service)[0].info.weight(), 1.0, "{service}");
            }
            // Discovered instances are callable like any other.
            let client = VspClient::builder(mesh).build();
            client.call("fine", "health", json!({})).await.unwrap();
            let _ = daemon.shutdown();
        },
    );
}

#[test]
fn an_ipv6_instance_is_found_and_called() {
    isolated_on(
        Network::VethPair,
        "an_ipv6_instance_is_found_and_called",
        || async {
            let manager = VspManager::builder("echo-service")
                .mesh(mdns_mesh())
                .build();
            let addr = manager.start_server("fd00::1", 0).await.unwrap();
            let mesh = mdns_mesh();
            let client = VspClient::builder(mesh.clone()).build();
            client
                .call("echo-service", "health", json!({}))
                .await
                .unwrap();
            assert_eq!(
                mesh.instances("echo-service")[0].info.address().to_string(),
                format!("[fd00::1]:{}", addr.port())
            );
        },
    );
}

/// `target/debug` (or the profile's folder), where cargo puts binaries and examples.
fn target_dir() -> std::path::PathBuf {
    let mut path = std::env::current_exe().unwrap();
    path.pop();
    if path.ends_with("deps") {
        path.pop();
    }
    path
}

fn example_binary(name: &str) -> std::path::PathBuf {
    target_dir().join("examples").join(name)
}

#[test]
fn the_examples_find_each_other_over_mdns() {
    isolated("the_examples_find_each_other_over_mdns", || async {
        use std::io::{BufRead, BufReader};
        use std::process::Stdio;
        let mut server = Command::new(example_binary("user_service"))
            .args(["--addr", "127.0.0.1:0", "--mdns"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("build the examples first: cargo test builds them");
        let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        assert!(first.starts_with("listening on "), "{first}");
        let drain = std::thread::spawn(move || lines.map_while(Result::ok).count());

        let client = tokio::task::spawn_blocking(|| {
            Command::new(example_binary("mdns_client"))
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&client.stdout);
        assert!(
            client.status.success(),
            "mdns_client failed: {stdout}{}",
            String::from_utf8_lossy(&client.stderr)
        );
        assert!(
            stdout.contains("get_user -> User { id: \"123\""),
            "{stdout}"
        );
        assert!(stdout.contains("found 127.0.0.1:"), "{stdout}");

        Command::new("kill")
            .args(["-TERM", &server.id().to_string()])
            .status()
            .unwrap();
        assert!(server.wait().unwrap().success());
        drain.join().unwrap();
    });
}

#[test]
fn discovery_can_be_limited_to_named_interfaces() {
    isolated("discovery_can_be_limited_to_named_interfaces", || async {
        let on_lo = || {
            ServiceMesh::builder()
                .discovery(
                    MdnsDiscovery::new()
                        .interface("lo")
                        .service_type("_vsptest._tcp.local.")
                        .first_resolution_wait(Duration::from_secs(10)),
                )
                .build()
        };
        let manager = VspManager::builder("echo-service").mesh(on_lo()).build();
        manager.start_server("127.0.0.1", 0).await.unwrap();
        // Same interface and service type: found.
        let client = VspClient::builder(on_lo()).build();
        client
            .call("echo-service", "health", json!({}))
            .await
            .unwrap();
        // Another service type sees nothing.
        let other = ServiceMesh::builder()
            .discovery(MdnsDiscovery::new().first_resolution_wait(Duration::from_millis(500)))
            .build();
        let err = VspClient::builder(other)
            .build()
            .call("echo-service", "health", json!({}))
            .await
            .unwrap_err();
        assert!(matches!(err, vsp::VspError::NoInstances { .. }), "{err:?}");
    });
}

#[test]
fn the_command_line_discovers_over_mdns() {
    isolated("the_command_line_discovers_over_mdns", || async {
        let _server = announced_server(2.0).await;
        // Built by `cargo test --workspace` for the vsp package's own tests.
        let binary = target_dir().join("vsp");
        assert!(
            binary.exists(),
            "{} is missing: run `cargo test --workspace`",
            binary.display()
        );
        let output = tokio::task::spawn_blocking(move || {
            Command::new(binary)
                .args(["discover", "echo-service", "--mdns", "--timeout", "5s"])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.starts_with("127.0.0.1:") && stdout.contains("\tweight 2\t"),
            "{stdout}"
        );
    });
}
