//! `vsp compat` as a built binary: pairs of description files and a live server, with the
//! exit codes CI relies on (0 compatible, 1 breaking, 2 usage, 3 unreachable).

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::{json, Value};
use vsp::{EndpointDescription, VspManager};

/// Runs `vsp compat` with `args`, off the runtime's threads, with no `VSP_*` variable.
async fn compat(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_vsp"));
        for (key, _) in std::env::vars() {
            if key.starts_with("VSP_") {
                command.env_remove(key);
            }
        }
        command.arg("compat").args(args).output().unwrap()
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A description of the `accounts` service with `get` answering `result` and `open` taking
/// `args`.
fn description(args: Value, result: Value) -> Value {
    json!({
        "service": "accounts",
        "protocol_version": 1,
        "revision": 3,
        "endpoints": [
            { "name": "get", "params": ["id"], "idempotent": true,
              "args_schema": { "type": "object", "properties": { "id": { "type": "string" } }, "required": ["id"] },
              "result_schema": result },
            { "name": "open", "params": ["owner"], "idempotent": false,
              "args_schema": args, "result_schema": { "type": "string" } }
        ]
    })
}

fn account(required: &[&str]) -> Value {
    json!({ "type": "object",
        "properties": { "id": { "type": "string" }, "balance": { "type": "integer", "format": "int64" } },
        "required": required })
}

fn owner(properties: Value, required: &[&str]) -> Value {
    json!({ "type": "object", "properties": properties, "required": required })
}

/// Writes `value` as `name` in a directory of this test run's own.
fn file(name: &str, value: &Value) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-compat");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(value).unwrap()).unwrap();
    path
}

fn base() -> Value {
    description(
        owner(json!({ "owner": { "type": "string" } }), &["owner"]),
        account(&["id", "balance"]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compatible_changes_exit_0_and_are_listed() {
    let old = file("base.json", &base());
    let new = file(
        "compatible.json",
        &description(
            owner(
                json!({ "owner": { "type": "string" }, "note": { "type": ["string", "null"] } }),
                &["owner"],
            ),
            json!({ "type": "object",
                "properties": { "id": { "type": "string" }, "balance": { "type": "integer", "format": "int64" },
                    "currency": { "type": "string" } },
                "required": ["id", "balance", "currency"] }),
        ),
    );
    let output = compat(&[old.to_str().unwrap(), new.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        "compatible  get: result.currency: added\n\
         compatible  open: args.note: added as optional\n\
         compatible: 2 changes, none breaks callers\n"
    );
    let same = compat(&[old.to_str().unwrap(), old.to_str().unwrap()]).await;
    assert_eq!(same.status.code(), Some(0));
    assert_eq!(text(&same.stdout), "no change for callers\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaking_changes_exit_1_with_a_reason_each() {
    let old = file("base-2.json", &base());
    let mut broken = description(
        owner(
            json!({ "owner": { "type": "string" }, "branch": { "type": "string" } }),
            &["owner", "branch"],
        ),
        account(&["id"]),
    );
    broken["endpoints"][0]["idempotent"] = json!(false);
    let new = file("breaking.json", &broken);
    let output = compat(&[old.to_str().unwrap(), new.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    for line in [
        "breaking    get: no longer idempotent: callers retry and hedge it as if it were\n",
        "breaking    get: result.balance: may now be missing: callers that read it fail\n",
        "breaking    open: args.branch: added as required: callers that do not send it are refused\n",
        "3 breaking changes, 0 compatible\n",
    ] {
        assert!(stdout.contains(line), "{line:?} in\n{stdout}");
    }
    assert!(text(&output.stderr).contains("breaks callers of accounts"));

    let json_output = compat(&["--json", old.to_str().unwrap(), new.to_str().unwrap()]).await;
    assert_eq!(json_output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&json_output.stdout).unwrap();
    assert_eq!(report["breaking"], json!(true));
    assert_eq!(report["changes"].as_array().unwrap().len(), 3);
    assert_eq!(report["changes"][2]["endpoint"], json!("open"));
    assert_eq!(report["changes"][2]["at"], json!("args.branch"));
    assert_eq!(report["changes"][2]["impact"], json!("breaking"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_exit_2_and_unreachable_servers_exit_3() {
    let good = file("base-3.json", &base());
    let not_json = file("not-json.json", &json!("just a string"));
    let output = compat(&[good.to_str().unwrap(), not_json.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("is not a service description"));
    let output = compat(&[good.to_str().unwrap(), "no/such/file.json"]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("neither a description file nor a server address"));
    let output = compat(&[good.to_str().unwrap()]).await;
    assert_eq!(
        output.status.code(),
        Some(2),
        "a missing argument is a usage error"
    );
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let output = compat(&[good.to_str().unwrap(), &address, "--timeout", "2s"]).await;
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
}

/// A committed description against the live server it came from, then against a server whose
/// endpoint lost an argument.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_server_is_compared_with_a_committed_description() {
    let serve = |params: &[&str], required: &[&str]| {
        let manager = VspManager::builder("accounts").build();
        let properties: serde_json::Map<String, Value> = params
            .iter()
            .map(|name| (name.to_string(), json!({ "type": "string" })))
            .collect();
        let described = EndpointDescription::new("open")
            .params(params.iter().copied())
            .args_schema(owner(Value::Object(properties), required))
            .result_schema(json!({ "type": "string" }));
        manager
            .endpoint_described(described, |_: Value| async { Ok::<_, String>("ok") })
            .unwrap();
        manager
    };
    let before = serve(&["owner", "branch"], &["owner"]);
    let addr = before.start_server("127.0.0.1", 0).await.unwrap();
    let contract = file(
        "live.json",
        &serde_json::to_value(before.description()).unwrap(),
    );
    let address = addr.to_string();
    let output = compat(&[
        contract.to_str().unwrap(),
        &address,
        "--service",
        "accounts",
    ])
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "no change for callers\n");
    before.shutdown().await.unwrap();

    let after = serve(&["owner"], &["owner"]);
    let addr = after.start_server("127.0.0.1", 0).await.unwrap();
    let address = addr.to_string();
    let output = compat(&[
        contract.to_str().unwrap(),
        &address,
        "--service",
        "accounts",
    ])
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    assert!(text(&output.stdout).starts_with(
        "breaking    open: args.branch: removed: callers that send it are no longer understood\n"
    ));
    after.shutdown().await.unwrap();
}
