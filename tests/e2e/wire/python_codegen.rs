//! `vsp codegen python` end to end: a client generated from the live user service's
//! description, type-checked with mypy in strict mode, then run by a real Python against the
//! service (a unary call, a typed error, an optional argument, a server stream, a deadline, and
//! the same service over TLS).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use vsp::tls::{ServerTls, ServerTlsConfig, TlsListener};
use vsp::VspManager;

use super::velithon::{python, unavailable, vsp_binary};
use crate::users::{UserServiceServer, Users};

/// Runs `program` with `args` to its end (at most 120 s).
async fn run(program: PathBuf, args: Vec<String>, env: Vec<(&'static str, PathBuf)>) -> Output {
    let shown = format!("{} {}", program.display(), args.join(" "));
    tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || {
            Command::new(program).args(args).envs(env).output().unwrap()
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("`{shown}` did not finish in 120 s"))
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_calls_the_user_service() {
    let (Some(python), Some(vsp)) = (python(), vsp_binary()) else {
        return;
    };
    let mypy = Command::new(&python)
        .args(["-m", "mypy", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !mypy {
        let message = format!("no mypy for {} (pip install mypy)", python.display());
        if unavailable::<()>(message).is_none() {
            return;
        }
    }
    let manager = VspManager::builder("user-service").build();
    manager
        .serve(UserServiceServer::new(Users::default()))
        .unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let ca = vsp_test_support::pki::Ca::new("codegen-ca");
    let cert = ca.issue("user-service");
    let secure = VspManager::builder("user-service").build();
    secure
        .serve(UserServiceServer::new(Users::default()))
        .unwrap();
    let listener = vsp::transport::TcpListener::bind("127.0.0.1", 0)
        .await
        .unwrap();
    let secure_addr = listener.socket_addr();
    let tls = ServerTls::new(
        ServerTlsConfig::from_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    secure
        .start_server_on(TlsListener::new(listener, tls))
        .await
        .unwrap();

    let dir = std::env::temp_dir().join(format!("vsp-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let module = dir.join("users_client.py");
    let generated = run(
        vsp,
        [
            "codegen",
            "python",
            &addr.to_string(),
            "--service",
            "user-service",
            "--out",
            module.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec(),
        vec![],
    )
    .await;
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    let program = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/codegen_users.py");

    let checked = run(
        python.clone(),
        vec![
            "-m".into(),
            "mypy".into(),
            "--strict".into(),
            format!("--cache-dir={}", dir.join("mypy-cache").display()),
            module.display().to_string(),
            program.display().to_string(),
        ],
        vec![("MYPYPATH", dir.clone())],
    )
    .await;
    assert!(
        checked.status.success(),
        "mypy --strict: {}{}",
        text(&checked.stdout),
        text(&checked.stderr)
    );

    let ran = run(
        python,
        vec![
            program.display().to_string(),
            addr.port().to_string(),
            secure_addr.port().to_string(),
            ca.cert_file.display().to_string(),
        ],
        vec![("PYTHONPATH", dir.clone())],
    )
    .await;
    assert!(ran.status.success(), "{}", text(&ran.stderr));
    let checks: Vec<Value> = text(&ran.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let value = |check: &str| {
        checks
            .iter()
            .find(|c| c["check"] == check)
            .unwrap_or_else(|| panic!("no {check} in {checks:?}"))["value"]
            .clone()
    };
    assert_eq!(value("unary"), "Ada");
    assert_eq!(value("typed_error"), "nobody");
    assert_eq!(
        value("optional_argument"),
        serde_json::json!(["Ada", "ada@lovelace.org"])
    );
    let streamed = value("stream");
    assert!(
        streamed[0]
            .as_str()
            .is_some_and(|name| name.starts_with("Watcher ")),
        "{streamed}"
    );
    assert_eq!(value("deadline"), "timeout");
    assert_eq!(value("tls"), "Barbara");
    // The stream the program left early was cancelled on the server.
    crate::common::wait_until(
        "the abandoned stream to end on the server",
        Duration::from_secs(10),
        || manager.ledger().streams_open == 0,
    )
    .await;
    manager.shutdown().await.unwrap();
    secure.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A description with what Python names cannot say as they are (a keyword argument, dashes and
/// dots in names, a field called `from`), a recursive type, enums, maps, nullable items, an open
/// endpoint, a stream and a caller's stream: its client passes mypy `--strict` and imports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_of_awkward_names_type_checks_and_imports() {
    let (Some(python), Some(vsp)) = (python(), vsp_binary()) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("vsp-codegen-edge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let description =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/codegen/edge-cases.json");
    let module = dir.join("edge_client.py");
    let generated = run(
        vsp,
        vec![
            "codegen".into(),
            "python".into(),
            description.display().to_string(),
            "--out".into(),
            module.display().to_string(),
        ],
        vec![],
    )
    .await;
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    let code = std::fs::read_to_string(&module).unwrap();
    assert!(code.contains(
        "async def vsp_thing_do(self, class_: str, limit: int, *, my_arg: int | None = None"
    ));
    assert!(code.contains("body[\"my-arg\"] = my_arg"));
    assert!(code.contains("# `upload` takes a stream of items (`rows`): not generated"));
    let checked = run(
        python.clone(),
        vec![
            "-m".into(),
            "mypy".into(),
            "--strict".into(),
            format!("--cache-dir={}", dir.join("mypy-cache").display()),
            module.display().to_string(),
        ],
        vec![],
    )
    .await;
    if checked.status.success() || !text(&checked.stderr).contains("No module named mypy") {
        assert!(
            checked.status.success(),
            "mypy --strict: {}{}",
            text(&checked.stdout),
            text(&checked.stderr)
        );
    } else if unavailable::<()>(format!("no mypy for {}", python.display())).is_none() {
        return;
    }
    let imported = run(
        python,
        vec!["-c".into(), "import edge_client".into()],
        vec![("PYTHONPATH", dir.clone())],
    )
    .await;
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}
