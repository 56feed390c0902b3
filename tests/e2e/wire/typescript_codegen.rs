//! `vsp codegen typescript` end to end: a client generated from the live user service's
//! description, compiled with the real `tsc --strict` (npm), then run by node against a gateway
//! in front of the service (a unary call, a typed error, an optional argument, a server stream
//! over Server-Sent Events, a deadline).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use vsp::gateway::Gateway;
use vsp::{ServiceInfo, ServiceMesh, VspClient, VspManager};

use super::velithon::{unavailable, vsp_binary};
use crate::users::{UserServiceServer, Users};

/// `tsc` from npm: `$VSP_TSC`, else `target/ts/node_modules/.bin/tsc` (what `.ci/run`
/// installs: `npm install --prefix target/ts typescript`).
fn tsc() -> Option<PathBuf> {
    let tsc = std::env::var_os("VSP_TSC")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ts/node_modules/.bin/tsc")
        });
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if tsc.exists() && node {
        return Some(tsc);
    }
    unavailable(format!(
        "no node, or no tsc at {} (npm install --prefix target/ts typescript@5)",
        tsc.display()
    ))
}

async fn run(program: PathBuf, args: Vec<String>, dir: PathBuf) -> Output {
    let shown = format!("{} {}", program.display(), args.join(" "));
    tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || {
            Command::new(program)
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap()
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
async fn a_generated_typescript_client_calls_the_user_service_through_the_gateway() {
    let (Some(tsc), Some(vsp)) = (tsc(), vsp_binary()) else {
        return;
    };
    let users = VspManager::builder("user-service").build();
    users
        .serve(UserServiceServer::new(Users::default()))
        .unwrap();
    let addr = users.start_server("127.0.0.1", 0).await.unwrap();
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new("user-service", "127.0.0.1", addr.port()))
        .unwrap();
    let client = VspClient::builder(mesh)
        .timeout(Duration::from_secs(20))
        .build();
    let router = Gateway::new(client).service("user-service").into_router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let dir = std::env::temp_dir().join(format!("vsp-codegen-ts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let module = dir.join("users_client.ts");
    let generated = run(
        vsp,
        [
            "codegen",
            "typescript",
            &addr.to_string(),
            "--service",
            "user-service",
            "--out",
            module.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec(),
        dir.clone(),
    )
    .await;
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    let program =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/typescript/codegen_users.ts");
    std::fs::copy(&program, dir.join("codegen_users.ts")).unwrap();

    let compiled = run(
        tsc,
        [
            "--strict",
            "--noUnusedLocals",
            "--target",
            "es2022",
            "--module",
            "commonjs",
            "--lib",
            "es2022,dom",
            "--outDir",
            "out",
            "users_client.ts",
            "codegen_users.ts",
        ]
        .map(str::to_owned)
        .to_vec(),
        dir.clone(),
    )
    .await;
    assert!(
        compiled.status.success(),
        "tsc --strict: {}{}",
        text(&compiled.stdout),
        text(&compiled.stderr)
    );

    let ran = run(
        PathBuf::from("node"),
        vec!["out/codegen_users.js".into(), base],
        dir.clone(),
    )
    .await;
    assert!(
        ran.status.success(),
        "{}{}",
        text(&ran.stdout),
        text(&ran.stderr)
    );
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
    // A typed error is a 4xx with its data (`UserError` says 404).
    let typed = value("typed_error");
    assert_eq!(typed[1], "nobody", "{typed}");
    assert!((400..500).contains(&typed[0].as_u64().unwrap()), "{typed}");
    assert_eq!(
        value("optional_argument"),
        serde_json::json!(["Ada", "ada@lovelace.org"])
    );
    let streamed = value("stream");
    assert!(
        streamed
            .as_str()
            .is_some_and(|name| name.starts_with("Watcher ")),
        "{streamed}"
    );
    assert_eq!(value("deadline"), "timeout");
    // The stream the program left early was cancelled on the service.
    crate::common::wait_until(
        "the abandoned stream to end on the service",
        Duration::from_secs(10),
        || users.ledger().streams_open == 0,
    )
    .await;
    users.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The same awkward description as the Python test's: its TypeScript client compiles with
/// `tsc --strict` and loads in node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_typescript_client_of_awkward_names_compiles_and_loads() {
    let (Some(tsc), Some(vsp)) = (tsc(), vsp_binary()) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("vsp-codegen-ts-edge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let description =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/codegen/edge-cases.json");
    let generated = run(
        vsp,
        vec![
            "codegen".into(),
            "typescript".into(),
            description.display().to_string(),
            "--out".into(),
            "edge_client.ts".into(),
        ],
        dir.clone(),
    )
    .await;
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    let code = std::fs::read_to_string(dir.join("edge_client.ts")).unwrap();
    assert!(code.contains("async vspThingDo(args: VspThingDoArgs"));
    assert!(code.contains("\"my-arg\"?: number | null;"));
    let compiled = run(
        tsc,
        [
            "--strict",
            "--noUnusedLocals",
            "--target",
            "es2022",
            "--module",
            "commonjs",
            "--lib",
            "es2022,dom",
            "--outDir",
            "out",
            "edge_client.ts",
        ]
        .map(str::to_owned)
        .to_vec(),
        dir.clone(),
    )
    .await;
    assert!(
        compiled.status.success(),
        "tsc --strict: {}{}",
        text(&compiled.stdout),
        text(&compiled.stderr)
    );
    let loaded = run(
        PathBuf::from("node"),
        vec!["-e".into(), "require('./out/edge_client.js')".into()],
        dir.clone(),
    )
    .await;
    assert!(loaded.status.success(), "{}", text(&loaded.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}
