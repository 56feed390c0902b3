//! The `vsp` command line, run as a built binary against real servers started in the test.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use vsp::discovery::{ConsulCheck, ConsulConfig, ConsulDiscovery};
use vsp::{ServiceMesh, VspManager};

async fn server() -> (VspManager, SocketAddr) {
    let manager = VspManager::builder("echo-service").build();
    manager
        .endpoint("echo", |body: Value| async move { Ok::<_, String>(body) })
        .unwrap();
    manager
        .endpoint("fail", |_: Value| async move {
            Err::<Value, _>("nope, not today")
        })
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    (manager, addr)
}

/// Runs `vsp` with `args` (and `stdin`), off the runtime's threads, in an environment of its
/// own: no `VSP_*` variable and no config file from the machine.
async fn vsp(args: Vec<String>, stdin: Option<&str>) -> Output {
    vsp_with_env(args, stdin, &[]).await
}

/// [`vsp`] with `env` set.
async fn vsp_with_env(args: Vec<String>, stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    let stdin = stdin.map(str::to_owned);
    let no_config = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-no-config");
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_vsp"));
        for (key, _) in std::env::vars() {
            if key.starts_with("VSP_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .env("XDG_CONFIG_HOME", &no_config)
            .envs(env)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The command exited with `code`, and its standard error says `why`.
fn assert_failed(output: &Output, code: i32, why: &str) {
    assert_eq!(output.status.code(), Some(code), "{}", stderr(output));
    assert!(stderr(output).contains(why), "{}", stderr(output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_prints_the_response_as_pretty_or_compact_json() {
    let (_server, addr) = server().await;
    let target = addr.to_string();
    let output = vsp(args(&["call", &target, "echo", r#"{"a":[1,2]}"#]), None).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("\n  \"a\": ["),
        "pretty: {}",
        stdout(&output)
    );
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&output)).unwrap(),
        json!({"a": [1, 2]})
    );

    let output = vsp(
        args(&["call", &target, "echo", r#"{"a":1}"#, "--compact"]),
        None,
    )
    .await;
    assert_eq!(stdout(&output), "{\"a\":1}\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_comes_from_a_file_or_stdin() {
    let (_server, addr) = server().await;
    let target = addr.to_string();
    let path = std::env::temp_dir().join(format!("vsp-cli-body-{}.json", std::process::id()));
    std::fs::write(&path, r#"{"from":"file"}"#).unwrap();
    let output = vsp(
        args(&[
            "call",
            &target,
            "echo",
            &format!("@{}", path.display()),
            "--compact",
        ]),
        None,
    )
    .await;
    assert_eq!(
        stdout(&output),
        "{\"from\":\"file\"}\n",
        "{}",
        stderr(&output)
    );
    let _ = std::fs::remove_file(path);

    let output = vsp(
        args(&["call", &target, "echo", "-", "--compact"]),
        Some(r#"{"from":"stdin"}"#),
    )
    .await;
    assert_eq!(
        stdout(&output),
        "{\"from\":\"stdin\"}\n",
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_say_what_went_wrong() {
    let (_server, addr) = server().await;
    let target = addr.to_string();

    let remote = vsp(args(&["call", &target, "fail"]), None).await;
    assert_eq!(remote.status.code(), Some(1));
    assert!(
        stderr(&remote).contains("`fail`") && stderr(&remote).contains("nope, not today"),
        "{}",
        stderr(&remote)
    );

    let bad_json = vsp(args(&["call", &target, "echo", "{not json"]), None).await;
    assert_eq!(bad_json.status.code(), Some(2));
    assert!(
        stderr(&bad_json).contains("not valid JSON"),
        "{}",
        stderr(&bad_json)
    );

    let usage = vsp(args(&["call", &target]), None).await;
    assert_eq!(usage.status.code(), Some(2));
    let not_a_target = vsp(args(&["call", "echo-service", "echo"]), None).await;
    assert_eq!(not_a_target.status.code(), Some(2));
    assert!(
        stderr(&not_a_target).contains("--static, --mdns, --consul, --etcd or --dns-domain"),
        "{}",
        stderr(&not_a_target)
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let unreachable = vsp(
        args(&["call", &closed.to_string(), "echo", "--timeout", "2s"]),
        None,
    )
    .await;
    assert_eq!(unreachable.status.code(), Some(3));
    assert!(
        stderr(&unreachable).contains(&closed.to_string()),
        "{}",
        stderr(&unreachable)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_name_resolves_through_static_instances() {
    let (_a, a) = server().await;
    let (_b, b) = server().await;
    let instances = format!("{a},{b}");
    let output = vsp(
        args(&[
            "call",
            "echo-service",
            "echo",
            r#"{"x":1}"#,
            "--static",
            &instances,
            "--compact",
        ]),
        None,
    )
    .await;
    assert_eq!(stdout(&output), "{\"x\":1}\n", "{}", stderr(&output));

    let health = vsp(
        args(&["health", "echo-service", "--static", &instances]),
        None,
    )
    .await;
    assert!(health.status.success(), "{}", stderr(&health));
    let lines: Vec<String> = stdout(&health).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in lines {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields[1], "healthy", "{line}");
        assert!(fields[2].ends_with(" ms"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_an_unreachable_instance_and_exits_3() {
    let (_a, a) = server().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let instances = format!("{a},{closed}");
    let health = vsp(
        args(&[
            "health",
            "echo-service",
            "--static",
            &instances,
            "--timeout",
            "2s",
        ]),
        None,
    )
    .await;
    assert_eq!(health.status.code(), Some(3));
    let out = stdout(&health);
    assert!(out.contains(&format!("{a}\thealthy")), "{out}");
    assert!(out.contains(&format!("{closed}\tunreachable")), "{out}");
    // The failure is told once, on its line; stderr only sums up.
    let err = stderr(&health);
    assert!(!err.contains("refused"), "the failure printed twice: {err}");
    assert!(err.contains("1 of 2 instances"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_calls_latencies_and_errors_as_json() {
    let (server, addr) = server().await;
    let target = addr.to_string();
    let output = vsp(
        args(&[
            "bench",
            &target,
            "echo",
            r#"{"k":"v"}"#,
            "-c",
            "4",
            "-n",
            "300",
            "--json",
        ]),
        None,
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(
        (report["calls"].as_u64(), report["ok"].as_u64()),
        (Some(300), Some(300))
    );
    assert!(report["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(report["latency_ms"]["p99"].as_f64() <= report["latency_ms"]["max"].as_f64());
    assert_eq!(report["errors"], json!({}));
    assert_eq!(server.get_performance_stats().endpoints["echo"].calls, 300);

    let failing = vsp(
        args(&["bench", &target, "fail", "-c", "2", "-d", "200ms", "--json"]),
        None,
    )
    .await;
    assert_eq!(failing.status.code(), Some(1), "every call failed remotely");
    let report: Value = serde_json::from_str(&stdout(&failing)).unwrap();
    assert!(
        report["errors"]["remote: handler"].as_u64().unwrap() > 0,
        "{report}"
    );

    let text = vsp(args(&["bench", &target, "echo", "-n", "50"]), None).await;
    assert!(
        stdout(&text).contains("Calls/s:") && stdout(&text).contains("p99"),
        "{}",
        stdout(&text)
    );
}

/// An `echo-service` manager that announces itself to the Consul agent at `url` with `weight`.
fn announced_to_consul(url: String, weight: f64) -> VspManager {
    let check = ConsulCheck::Tcp {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(200),
    };
    VspManager::builder("echo-service")
        .mesh(
            ServiceMesh::builder()
                .discovery(ConsulDiscovery::new(ConsulConfig::new(url).check(check)))
                .build(),
        )
        .weight(weight)
        .build()
}

/// `vsp discover echo-service` against the Consul agent at `url`, looking for `timeout`.
async fn discover_on_consul(url: String, timeout: &str) -> Output {
    vsp(
        args(&[
            "discover",
            "echo-service",
            "--consul",
            &url,
            "--timeout",
            timeout,
        ]),
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_lists_the_instances_consul_knows() {
    let fake = vsp_test_support::fake_consul::FakeConsul::start().await;
    let manager = announced_to_consul(fake.url(), 2.0);
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let output = discover_on_consul(fake.url(), "5s").await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), format!("{addr}\tweight 2\tUnknown\n"));

    let usage = vsp(args(&["discover", "echo-service"]), None).await;
    assert_eq!(usage.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_looks_for_the_whole_timeout_before_listing() {
    let fake = vsp_test_support::fake_consul::FakeConsul::start().await;
    let first = announced_to_consul(fake.url(), 1.0);
    let first_addr = first.start_server("127.0.0.1", 0).await.unwrap();
    let discover = tokio::spawn(discover_on_consul(fake.url(), "3s"));
    // Once `vsp discover` has asked (and found the first), a second instance appears.
    vsp_test_support::wait_until(
        "`vsp discover` to query Consul",
        Duration::from_secs(10),
        || {
            fake.requests()
                .iter()
                .any(|r| r.method == "GET" && r.path.contains("/v1/health/service/echo-service"))
        },
    )
    .await;
    // The scenario, not a synchronisation: the second instance is published a second after the
    // first was found (the old `discover` listed 200 ms after its first answer and missed it).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = announced_to_consul(fake.url(), 2.0);
    let second_addr = second.start_server("127.0.0.1", 0).await.unwrap();
    let output = discover.await.unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let listed = stdout(&output);
    for addr in [first_addr, second_addr] {
        assert!(
            listed.contains(&addr.to_string()),
            "{addr} missing: `vsp discover --timeout 3s` listed before its timeout:\n{listed}"
        );
    }
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_health_and_bench_reach_a_server_on_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("vsp-cli-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("echo.sock");
    let manager = VspManager::builder("echo-service").build();
    manager
        .endpoint("echo", |body: Value| async move { Ok::<_, String>(body) })
        .unwrap();
    let address = vsp::Address::unix(&path);
    manager.start_server_at(&address).await.unwrap();

    for target in [
        format!("unix:{}", path.display()),
        format!("unix://{}", path.display()),
    ] {
        let call = vsp(
            args(&["call", &target, "echo", r#"{"a":1}"#, "--compact"]),
            None,
        )
        .await;
        assert!(call.status.success(), "{target}: {}", stderr(&call));
        assert_eq!(stdout(&call).trim(), r#"{"a":1}"#);
    }
    let target = address.to_string();
    let health = vsp(args(&["health", &target]), None).await;
    assert!(health.status.success(), "{}", stderr(&health));
    assert!(
        stdout(&health).starts_with(&format!("{target}\thealthy\t")),
        "{}",
        stdout(&health)
    );
    let by_name = vsp(
        args(&[
            "call",
            "echo-service",
            "echo",
            "--static",
            &target,
            "--compact",
        ]),
        None,
    )
    .await;
    assert!(by_name.status.success(), "{}", stderr(&by_name));
    let bench = vsp(
        args(&["bench", &target, "echo", "-c", "4", "-n", "200", "--json"]),
        None,
    )
    .await;
    assert!(bench.status.success(), "{}", stderr(&bench));
    let report: Value = serde_json::from_str(&stdout(&bench)).unwrap();
    assert_eq!(report["ok"].as_u64(), Some(200), "{report}");

    let memory = vsp(args(&["call", "memory:x", "echo"]), None).await;
    assert_eq!(memory.status.code(), Some(2));
    assert!(
        stderr(&memory).contains("only inside the process"),
        "{}",
        stderr(&memory)
    );
    manager.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_on_an_address_target_names_the_address_once() {
    let manager = VspManager::builder("slow-service").build();
    manager
        .endpoint("slow_op", |_: Value| async move {
            // The scenario: work that outlasts the caller's --timeout.
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            Ok::<_, String>("late")
        })
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let target = addr.to_string();
    let output = vsp(
        args(&["call", &target, "slow_op", "{}", "--timeout", "300ms"]),
        None,
    )
    .await;
    assert_eq!(output.status.code(), Some(3));
    let err = stderr(&output);
    assert!(
        err.contains(&format!("calling `slow_op` on {target}: timed out after")),
        "{err}"
    );
    assert!(
        !err.contains(&format!("`{target}.slow_op`")),
        "the address shown as a service name: {err}"
    );
    manager.close().await;
}

/// A mutual-TLS server of `echo-service` that also wants `authorization: Bearer t0ken`.
async fn secure_server(ca: &vsp_test_support::pki::Ca) -> (VspManager, SocketAddr) {
    use vsp::tls::{ServerTls, ServerTlsConfig, TlsListener};
    let cert = ca.issue("echo-service");
    let tls = ServerTls::new(
        ServerTlsConfig::from_pem_files(&cert.cert_file, &cert.key_file)
            .unwrap()
            .require_client_cert_file(&ca.cert_file)
            .unwrap(),
    )
    .unwrap();
    let manager = VspManager::builder("echo-service")
        .auth(vsp::server::BearerToken::new(["t0ken"]))
        .build();
    manager
        .endpoint("whoami", |_: Value| async move {
            let cx = vsp::Context::current().unwrap();
            Ok::<_, String>(json!({"identity": cx.identity().map(|i| i.to_string())}))
        })
        .unwrap();
    let listener = vsp::transport::TcpListener::bind("127.0.0.1", 0)
        .await
        .unwrap();
    let addr = listener.socket_addr();
    manager
        .start_server_on(TlsListener::new(listener, tls))
        .await
        .unwrap();
    (manager, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_metadata_flags_reach_a_secure_server_and_failures_exit_3_or_1() {
    let ca = vsp_test_support::pki::Ca::new("cli-ca");
    let (server, addr) = secure_server(&ca).await;
    let client = ca.issue("cli");
    let target = addr.to_string();
    let (ca_file, cert, key) = (
        ca.cert_file.to_string_lossy().into_owned(),
        client.cert_file.to_string_lossy().into_owned(),
        client.key_file.to_string_lossy().into_owned(),
    );
    let tls = ["--tls-ca", &ca_file, "--tls-cert", &cert, "--tls-key", &key];
    let with = |extra: &[&str]| {
        let mut all = vec!["call", target.as_str(), "whoami", "--compact"];
        all.extend_from_slice(extra);
        args(&all)
    };

    let mut good = tls.to_vec();
    good.extend(["--meta", "authorization=Bearer t0ken"]);
    let output = vsp(with(&good), None).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output).trim(),
        r#"{"identity":"spiffe://vsp.test/cli"}"#
    );

    // The token missing: the server's refusal, exit 1.
    let output = vsp(with(&tls), None).await;
    assert_failed(&output, 1, "unauthenticated");

    // Plaintext against TLS, a CA that did not sign, no client certificate: exit 3, saying why.
    let output = vsp(with(&[]), None).await;
    assert_failed(&output, 3, "requires TLS");
    let other = vsp_test_support::pki::Ca::new("cli-other");
    let other_ca = other.cert_file.to_string_lossy().into_owned();
    let output = vsp(
        with(&[
            "--tls-ca",
            &other_ca,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ]),
        None,
    )
    .await;
    assert_failed(&output, 3, "unknown issuer");
    let output = vsp(with(&["--tls-ca", &ca_file]), None).await;
    assert_failed(&output, 3, "requires a client certificate");
    // A wrong server name.
    let output = vsp(
        with(&[&tls[..], &["--tls-server-name", "elsewhere.example"]].concat()),
        None,
    )
    .await;
    assert_failed(&output, 3, "not valid for the name");
    // A key without its certificate is a usage error.
    let output = vsp(with(&["--tls-ca", &ca_file, "--tls-key", &key]), None).await;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));

    // health and bench take the same flags (health stays open without a token).
    let mut health = vec!["health", target.as_str(), "--service", "echo-service"];
    health.extend_from_slice(&tls);
    let output = vsp(args(&health), None).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("healthy"), "{}", stdout(&output));
    let mut bench = vec![
        "bench",
        target.as_str(),
        "whoami",
        "-c",
        "2",
        "-n",
        "50",
        "--json",
    ];
    bench.extend_from_slice(&good);
    let output = vsp(args(&bench), None).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["calls"], 50, "{report}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_starts_a_trace_and_trace_prints_its_id() {
    let manager = VspManager::builder("traced-cli").build();
    manager
        .endpoint("whose_trace", |_: Value| async move {
            let cx = vsp::Context::current().expect("inside a handler");
            Ok::<_, String>(json!(cx.trace().map(|t| t.trace_id().to_string())))
        })
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let target = addr.to_string();
    let call = |extra: &[&str]| {
        let mut all = args(&[
            "call",
            &target,
            "whose_trace",
            "--service",
            "traced-cli",
            "--compact",
        ]);
        all.extend(args(extra));
        vsp(all, None)
    };
    let output = call(&["--trace"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stderr(&output);
    let trace_id = printed
        .lines()
        .find_map(|line| line.strip_prefix("trace id: "))
        .unwrap_or_else(|| panic!("no trace id on stderr: {printed}"));
    assert_eq!(trace_id.len(), 32, "{printed}");
    assert_eq!(
        stdout(&output).trim(),
        format!("\"{trace_id}\""),
        "the server saw it"
    );
    // Without --trace the call still carries a trace, just not printed.
    let output = call(&[]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stderr(&output).contains("trace id"), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim().len(), 34, "{}", stdout(&output));
    // A trace given with --meta is continued.
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let meta = format!("traceparent={given}");
    let output = call(&["--trace", "--meta", &meta]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("trace id: 4bf92f3577b34da6a3ce929d0e0e4736"));
    assert_eq!(
        stdout(&output).trim(),
        "\"4bf92f3577b34da6a3ce929d0e0e4736\""
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_domain_finds_a_service_by_srv_records() {
    use vsp_test_support::dnsmasq::{dnsmasq_binary, host, srv, Dnsmasq, DOMAIN};
    let Some(binary) = dnsmasq_binary() else {
        return;
    };
    let (manager, addr) = server().await;
    let dns = Dnsmasq::start(
        &binary,
        0,
        &[srv("echo-service", "a", addr.port(), 0, 1), host("a")],
    )
    .await;
    let server_flag = dns.addr().to_string();
    let output = vsp(
        args(&[
            "call",
            "echo-service",
            "echo",
            r#"{"x":1}"#,
            "--compact",
            "--dns-domain",
            DOMAIN,
            "--dns-server",
            &server_flag,
        ]),
        None,
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), r#"{"x":1}"#);
    let output = vsp(
        args(&[
            "call",
            "nobody",
            "echo",
            "--dns-domain",
            DOMAIN,
            "--dns-server",
            &server_flag,
        ]),
        None,
    )
    .await;
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_finds_a_registered_service() {
    use vsp::discovery::{EtcdConfig, EtcdDiscovery};
    use vsp_test_support::etcd::{etcd_binary, Etcd};
    let Some(binary) = etcd_binary() else { return };
    let etcd = Etcd::start(binary).await;
    let mesh = ServiceMesh::builder()
        .discovery(EtcdDiscovery::new(EtcdConfig::new(etcd.url())))
        .build();
    let manager = VspManager::builder("etcd-echo").mesh(mesh).build();
    manager
        .endpoint("echo", |body: Value| async move { Ok::<_, String>(body) })
        .unwrap();
    manager.start_server("127.0.0.1", 0).await.unwrap();
    let url = etcd.url();
    let output = vsp(
        args(&[
            "call",
            "etcd-echo",
            "echo",
            r#"{"y":2}"#,
            "--compact",
            "--etcd",
            &url,
        ]),
        None,
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), r#"{"y":2}"#);
    let output = vsp(
        args(&["discover", "etcd-echo", "--etcd", &url, "--timeout", "1s"]),
        None,
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("127.0.0.1:"),
        "{}",
        stdout(&output)
    );
    // The same through a named target of a config file: `call` and `discover` read it.
    let config = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-etcd.toml");
    std::fs::write(
        &config,
        format!("[targets.echoes]\nservice = \"etcd-echo\"\netcd = [\"{url}\"]\n"),
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    let env = [("VSP_CONFIG", config.as_str())];
    let output = vsp_with_env(
        args(&["call", "echoes", "echo", r#"{"z":3}"#, "--compact"]),
        None,
        &env,
    )
    .await;
    assert_eq!(stdout(&output).trim(), r#"{"z":3}"#, "{}", stderr(&output));
    let output = vsp_with_env(args(&["discover", "echoes", "--timeout", "1s"]), None, &env).await;
    assert!(
        stdout(&output).contains("127.0.0.1:"),
        "{}",
        stderr(&output)
    );
    manager.shutdown().await.unwrap();
}

/// A typed service with argument schemas, for `describe` and the body checks of `call`.
#[vsp::service(name = "greeter")]
trait Greeter {
    /// Greets someone.
    #[vsp(idempotent)]
    async fn greet(&self, name: String, times: Option<u8>) -> String;
}

#[derive(Default)]
struct Greetings {
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Greeter for Greetings {
    async fn greet(&self, name: String, times: Option<u8>) -> String {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        format!("hello {name}").repeat(usize::from(times.unwrap_or(1)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_prints_endpoints_readably_or_as_json() {
    let manager = VspManager::builder("greeter").build();
    manager
        .serve(GreeterServer::new(Greetings::default()))
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let target = addr.to_string();

    let output = vsp(args(&["describe", &target]), None).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.starts_with("greeter (VSP/1 revision 3), 1 endpoint\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "greet(name: string, times?: integer) -> string  [idempotent]\n    Greets someone.\n"
        ),
        "{text}"
    );

    let output = vsp(args(&["describe", &target, "--json"]), None).await;
    let description: vsp::ServiceDescription = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(description, manager.description());
    manager.shutdown().await.unwrap();
}

/// A type without a JSON Schema (as one deriving schemars 0.8's `JsonSchema` is to vsp).
#[derive(serde::Serialize, serde::Deserialize)]
struct Receipt {
    id: u64,
}

#[vsp::service(name = "till")]
trait Till {
    async fn pay(&self, amount: u64) -> Receipt;
}

struct Cash;

impl Till for Cash {
    async fn pay(&self, amount: u64) -> Receipt {
        Receipt { id: amount }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_says_which_types_have_no_schema_and_why() {
    let manager = VspManager::builder("till").build();
    manager.serve(TillServer::new(Cash)).unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let output = vsp(args(&["describe", &addr.to_string()]), None).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("pay(amount: integer) -> any*\n"), "{text}");
    assert!(
        text.contains("any*: no JSON Schema") && text.contains("schemars 0.8 derive is not read"),
        "{text}"
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_checks_the_body_against_the_schema_and_names_the_wrong_field() {
    let greetings = Greetings::default();
    let calls = greetings.calls.clone();
    let manager = VspManager::builder("greeter").build();
    manager.serve(GreeterServer::new(greetings)).unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let target = addr.to_string();

    let good = vsp(
        args(&["call", &target, "greet", r#"{"name":"ada"}"#, "--compact"]),
        None,
    )
    .await;
    assert_eq!(stdout(&good), "\"hello ada\"\n", "{}", stderr(&good));

    // A wrong type and a missing field: exit 2, each field named, nothing sent.
    let bad = vsp(
        args(&["call", &target, "greet", r#"{"times":"twice"}"#]),
        None,
    )
    .await;
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    let said = stderr(&bad);
    assert!(
        said.contains("field /times: \"twice\" is not of type"),
        "{said}"
    );
    assert!(said.contains("\"name\" is a required property"), "{said}");
    let out_of_range = vsp(
        args(&["call", &target, "greet", r#"{"name":"x","times":300}"#]),
        None,
    )
    .await;
    assert_eq!(
        out_of_range.status.code(),
        Some(2),
        "{}",
        stderr(&out_of_range)
    );
    assert!(
        stderr(&out_of_range).contains("field /times"),
        "{}",
        stderr(&out_of_range)
    );
    // The handler ran for the good call only.
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "a refused body was sent"
    );

    // --no-validate sends it anyway: the server's own check answers (exit 1).
    let unchecked = vsp(
        args(&[
            "call",
            &target,
            "greet",
            r#"{"times":"twice"}"#,
            "--no-validate",
        ]),
        None,
    )
    .await;
    assert_eq!(unchecked.status.code(), Some(1), "{}", stderr(&unchecked));
    assert!(
        stderr(&unchecked).contains("bad_request"),
        "{}",
        stderr(&unchecked)
    );

    // An endpoint with an open schema is not checked.
    let (_echo, echo_addr) = server().await;
    let open = vsp(
        args(&[
            "call",
            &echo_addr.to_string(),
            "echo",
            r#"{"x":[1]}"#,
            "--compact",
        ]),
        None,
    )
    .await;
    assert_eq!(stdout(&open), "{\"x\":[1]}\n", "{}", stderr(&open));
    manager.shutdown().await.unwrap();
}

/// A server with a finite and an endless stream; the flag says the endless one was dropped.
async fn streaming_server() -> (
    VspManager,
    SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    struct DropFlag(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let manager = VspManager::builder("streams").build();
    manager
        .stream_endpoint("ticks", |args: Value| async move {
            let n = args["n"].as_u64().unwrap_or(0);
            Ok::<_, String>(vsp::Streaming::iter(0..n))
        })
        .unwrap();
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = dropped.clone();
    manager
        .stream_endpoint("endless", move |_: Value| {
            let guard = DropFlag(flag.clone());
            async move {
                Ok::<_, String>(vsp::Streaming::unfold(
                    (guard, 0u64),
                    |(guard, n)| async move { Some((json!({ "line": n }), (guard, n + 1))) },
                ))
            }
        })
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    (manager, addr, dropped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_prints_a_stream_one_value_per_line_and_bench_counts_items() {
    let (manager, addr, _) = streaming_server().await;
    let target = addr.to_string();
    let output = vsp(args(&["call", &target, "ticks", r#"{"n":4}"#]), None).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "0\n1\n2\n3\n");

    let output = vsp(
        args(&[
            "bench",
            &target,
            "ticks",
            r#"{"n":50}"#,
            "-n",
            "20",
            "-c",
            "2",
            "--json",
        ]),
        None,
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["ok"], 20);
    assert_eq!(report["items"], 1000, "{report}");
    assert!(report["items_per_sec"].as_f64().unwrap() > 0.0);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_printed_into_a_closed_pipe_stops_and_cancels() {
    use std::io::{BufRead, BufReader};
    let (manager, addr, dropped) = streaming_server().await;
    let target = addr.to_string();
    // `vsp call ... endless | head -3`: read three lines, then close the pipe.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vsp"))
        .args(["call", &target, "endless"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first: Vec<String> = (&mut lines).take(3).map(Result::unwrap).collect();
        drop(lines); // closes the read end, as `head` does on exit
        first
    })
    .await
    .unwrap();
    assert_eq!(lines, [r#"{"line":0}"#, r#"{"line":1}"#, r#"{"line":2}"#]);
    let exit = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("vsp to exit within 10 s of its stdout closing")
    .unwrap()
    .unwrap();
    assert!(
        exit.status.success(),
        "{}",
        String::from_utf8_lossy(&exit.stderr)
    );
    vsp_test_support::wait_until(
        "the server's stream to be dropped after vsp went away",
        Duration::from_secs(5),
        || dropped.load(std::sync::atomic::Ordering::SeqCst),
    )
    .await;
    manager.shutdown().await.unwrap();
}

fn path_text(file: &std::path::Path) -> String {
    file.to_string_lossy().into_owned()
}

/// `vsp call <target> whoami --compact <extra>`.
fn whoami(target: &str, extra: &[&str]) -> Vec<String> {
    let mut all = vec!["call", target, "whoami", "--compact"];
    all.extend_from_slice(extra);
    args(&all)
}

const CLI_IDENTITY: &str = r#"{"identity":"spiffe://vsp.test/cli"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_metadata_come_from_the_environment_flags_winning() {
    let ca = vsp_test_support::pki::Ca::new("cli-env-ca");
    let (server, addr) = secure_server(&ca).await;
    let client = ca.issue("cli");
    let target = addr.to_string();
    let (ca_file, cert, key) = (
        path_text(&ca.cert_file),
        path_text(&client.cert_file),
        path_text(&client.key_file),
    );
    let expected = CLI_IDENTITY;
    // Everything from the environment.
    let env = [
        ("VSP_TLS_CA", ca_file.as_str()),
        ("VSP_TLS_CERT", cert.as_str()),
        ("VSP_TLS_KEY", key.as_str()),
        ("VSP_META", "authorization=Bearer t0ken; x-team=orders"),
    ];
    let output = vsp_with_env(whoami(&target, &[]), None, &env).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), expected);
    // A flag wins over the environment, key by key.
    let output = vsp_with_env(
        whoami(&target, &["--meta", "authorization=Bearer wrong"]),
        None,
        &env,
    )
    .await;
    assert_failed(&output, 1, "unauthenticated");
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_target_of_the_config_file_gives_what_flags_and_the_environment_do_not() {
    let ca = vsp_test_support::pki::Ca::new("cli-config-ca");
    let (server, addr) = secure_server(&ca).await;
    let client = ca.issue("cli");
    let target = addr.to_string();
    let path = path_text;
    let expected = CLI_IDENTITY;
    // A named target in a config file: TLS files relative to it, its metadata and service.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-config");
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    for (from, to) in [
        (&ca.cert_file, "ca.pem"),
        (&client.cert_file, "cli.pem"),
        (&client.key_file, "cli.key"),
    ] {
        std::fs::copy(from, dir.join("certs").join(to)).unwrap();
    }
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[targets.echo]
address = "{target}"
service = "echo-service"
tls-ca = "certs/ca.pem"
tls-cert = "certs/cli.pem"
tls-key = "certs/cli.key"
meta = {{ authorization = "Bearer t0ken" }}
timeout = "5s"
"#
        ),
    )
    .unwrap();
    let config = path(&config);
    let with_file = [("VSP_CONFIG", config.as_str())];
    let output = vsp_with_env(whoami("echo", &[]), None, &with_file).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), expected);
    // The other commands read it too.
    let output = vsp_with_env(args(&["health", "echo"]), None, &with_file).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    // The environment wins over the file, and a flag over both.
    let wrong = [
        ("VSP_CONFIG", config.as_str()),
        ("VSP_META", "authorization=Bearer wrong"),
    ];
    let output = vsp_with_env(whoami("echo", &[]), None, &wrong).await;
    assert_failed(&output, 1, "unauthenticated");
    let output = vsp_with_env(
        whoami("echo", &["--meta", "authorization=Bearer t0ken"]),
        None,
        &wrong,
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));

    // A named config file that is missing, or a key misspelt: usage errors saying so.
    let missing = [("VSP_CONFIG", "/nonexistent/vsp.toml")];
    let output = vsp_with_env(whoami("echo", &[]), None, &missing).await;
    assert_failed(&output, 2, "cannot read the config file");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[targets.echo]\ntls_ca = \"x\"\n").unwrap();
    let bad = path(&bad);
    let output = vsp_with_env(whoami("echo", &[]), None, &[("VSP_CONFIG", &bad)]).await;
    assert_failed(&output, 2, "tls_ca");

    // Once the server is gone, the failure names the target, never the address as a service.
    server.close().await;
    let output = vsp_with_env(whoami("echo", &[]), None, &with_file).await;
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(!err.contains("service `127.0.0.1"), "{err}");
    assert!(!err.contains(&format!("`{target}.")), "{err}");
}

/// Streams from the caller: a client stream and a bidirectional one.
#[vsp::service(name = "sinks")]
trait Sinks {
    /// Adds up the numbers sent.
    async fn sum(&self, numbers: vsp::Streaming<i64>) -> i64;
    /// Each line sent, prefixed.
    async fn echo(&self, prefix: String, lines: vsp::Streaming<String>) -> vsp::Streaming<String>;
}

struct Sink;

impl Sinks for Sink {
    async fn sum(&self, numbers: vsp::Streaming<i64>) -> i64 {
        use futures::StreamExt;
        numbers.fold(0, |sum, n| async move { sum + n }).await
    }

    async fn echo(&self, prefix: String, lines: vsp::Streaming<String>) -> vsp::Streaming<String> {
        use futures::StreamExt;
        vsp::Streaming::new(lines.map(move |line| format!("{prefix}{line}")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_sends_ndjson_from_stdin_describe_says_stream_of_and_bench_sends_items() {
    let manager = VspManager::builder("sinks").build();
    manager.serve(SinksServer::new(Sink)).unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let target = addr.to_string();

    let output = vsp(args(&["call", &target, "sum"]), Some("1\n2\n\n3\n")).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "6\n");

    let output = vsp(
        args(&["call", &target, "echo", r#"{"prefix":"> "}"#]),
        Some("\"a\"\n\"b\"\n"),
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "\"> a\"\n\"> b\"\n");

    // A line that is not JSON cancels the call: a usage error naming the line.
    let output = vsp(args(&["call", &target, "sum"]), Some("1\ntwo\n3\n")).await;
    assert_failed(&output, 2, "line 2 of standard input is not JSON");
    // The body cannot come from standard input too.
    let output = vsp(args(&["call", &target, "sum", "-"]), Some("1\n")).await;
    assert_failed(&output, 2, "standard input carries the call's stream");

    let output = vsp(args(&["describe", &target]), None).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let described = stdout(&output);
    assert!(
        described.contains("sum(numbers: stream of integer) -> integer"),
        "{described}"
    );
    assert!(
        described.contains("echo(prefix: string, lines: stream of string) -> stream of string"),
        "{described}"
    );

    let output = vsp(
        args(&[
            "bench",
            &target,
            "sum",
            "-n",
            "10",
            "-c",
            "2",
            "--send-items",
            "30",
            "--item",
            "2",
            "--json",
        ]),
        None,
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["ok"], 10, "{report}");
    assert_eq!(report["items_sent"], 300, "{report}");

    let output = vsp(
        args(&[
            "bench",
            &target,
            "echo",
            r#"{"prefix":""}"#,
            "-n",
            "10",
            "-c",
            "2",
            "--item",
            "\"x\"",
            "--json",
        ]),
        None,
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["ok"], 10, "{report}");
    // Found from the description: 100 items a call, each echoed back.
    assert_eq!(report["items_sent"], 1000, "{report}");
    assert_eq!(report["items"], 1000, "{report}");
    manager.shutdown().await.unwrap();
}
