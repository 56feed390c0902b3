//! `vsp.describe`: what a typed service and a hand-registered one say of themselves, over real
//! loopback TCP.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use vsp::protocol::{is_open_schema, DESCRIBE_ENDPOINT, PROTOCOL_VERSION};
use vsp::{EndpointDescription, ServiceInfo, ServiceMesh, VspClient, VspError, VspManager};

/// A book.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Book {
    pub isbn: String,
    pub pages: u32,
}

/// Why a lookup failed.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub enum LibraryError {
    NoSuchBook { isbn: String },
}

/// A type with no JSON Schema: its schema is open, not a compile error.
#[derive(Debug, Serialize, Deserialize)]
pub struct Opaque(Value);

/// A library.
#[vsp::service]
pub trait Library {
    /// The book with this ISBN.
    ///
    /// Second paragraph.
    #[vsp(idempotent)]
    async fn lookup(&self, isbn: String) -> Result<Book, LibraryError>;
    async fn shelve(&self, book: Book, shelf: Option<u8>) -> u64;
    #[vsp(name = "raw")]
    async fn opaque(&self, blob: Opaque) -> Opaque;
}

struct Shelves;

impl Library for Shelves {
    async fn lookup(&self, isbn: String) -> Result<Book, LibraryError> {
        Err(LibraryError::NoSuchBook { isbn })
    }
    async fn shelve(&self, _book: Book, shelf: Option<u8>) -> u64 {
        u64::from(shelf.unwrap_or(0))
    }
    async fn opaque(&self, blob: Opaque) -> Opaque {
        blob
    }
}

async fn serve(manager: &VspManager) -> VspClient {
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new(manager.name(), "127.0.0.1", addr.port()))
        .unwrap();
    VspClient::builder(mesh).build()
}

/// Resolves a local `$ref` (`#/$defs/X`) against the schema that holds the definitions.
fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => root
            .pointer(reference.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("{reference} does not resolve in {root}")),
        None => schema,
    }
}

#[tokio::test]
async fn a_typed_service_describes_names_docs_schemas_and_idempotence() {
    let manager = VspManager::builder("library").build();
    manager.serve(LibraryServer::new(Shelves)).unwrap();
    let client = serve(&manager).await;

    let description = client.describe("library").await.unwrap();
    assert_eq!(description.service, "library");
    assert_eq!(description.protocol_version, PROTOCOL_VERSION);
    let names: Vec<&str> = description
        .endpoints
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["lookup", "raw", "shelve"],
        "sorted, built-ins not listed"
    );

    let lookup = description.endpoint("lookup").unwrap();
    assert_eq!(lookup.params, ["isbn"]);
    assert!(lookup.idempotent);
    assert_eq!(
        lookup.doc.as_deref(),
        Some("The book with this ISBN.\n\nSecond paragraph.")
    );
    let args = &lookup.args_schema;
    assert_eq!(args["type"], "object");
    assert_eq!(args["properties"]["isbn"]["type"], "string");
    assert_eq!(args["required"], json!(["isbn"]));
    // The result refers to its definition, which travels with it.
    let result = resolve(&lookup.result_schema, &lookup.result_schema);
    assert_eq!(result["properties"]["pages"]["type"], "integer");
    assert_eq!(result["required"], json!(["isbn", "pages"]));
    let error = lookup
        .error_schema
        .as_ref()
        .expect("a typed error has a schema");
    assert!(error.to_string().contains("NoSuchBook"), "{error}");

    let shelve = description.endpoint("shelve").unwrap();
    assert_eq!(shelve.params, ["book", "shelf"]);
    assert!(!shelve.idempotent);
    assert_eq!(shelve.doc, None);
    assert_eq!(
        shelve.args_schema["required"],
        json!(["book"]),
        "an Option may be left out"
    );
    let book = resolve(
        &shelve.args_schema,
        &shelve.args_schema["properties"]["book"],
    );
    assert_eq!(book["properties"]["isbn"]["type"], "string");
    assert_eq!(shelve.result_schema["type"], "integer");
    assert_eq!(shelve.error_schema, None, "no typed error");

    // A type without `JsonSchema` gets the open schema.
    let raw = description.endpoint("raw").unwrap();
    assert!(is_open_schema(&raw.args_schema["properties"]["blob"]));
    assert!(is_open_schema(&raw.result_schema));

    // The same answer as a plain call, and what the manager says locally.
    let plain: Value = client
        .call("library", DESCRIBE_ENDPOINT, json!({}))
        .await
        .unwrap();
    assert_eq!(plain, serde_json::to_value(&description).unwrap());
    assert_eq!(manager.description(), description);
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_dynamic_service_is_open_unless_described_and_sees_late_endpoints() {
    let manager = VspManager::builder("calc").build();
    manager
        .endpoint("echo", |args: Value| async move { Ok::<_, VspError>(args) })
        .unwrap();
    let client = serve(&manager).await;
    let description = client.describe("calc").await.unwrap();
    assert_eq!(description.endpoints, [EndpointDescription::new("echo")]);

    // Registered while serving, with a description: listed at the next describe.
    let add = EndpointDescription::new("add")
        .doc("Adds a and b.")
        .params(["a", "b"])
        .idempotent(true)
        .args_schema(json!({
            "type": "object",
            "properties": { "a": { "type": "number" }, "b": { "type": "number" } },
            "required": ["a", "b"]
        }))
        .result_schema(json!({ "type": "number" }));
    manager
        .endpoint_described(add.clone(), |args: Value| async move {
            Ok::<_, VspError>(args["a"].as_f64().unwrap_or(0.0) + args["b"].as_f64().unwrap_or(0.0))
        })
        .unwrap();
    let description = client.describe("calc").await.unwrap();
    assert_eq!(description.endpoints.len(), 2);
    assert_eq!(description.endpoint("add"), Some(&add));
    let sum: f64 = client
        .call_typed("calc", "add", json!({"a": 1, "b": 2}))
        .await
        .unwrap();
    assert_eq!(sum, 3.0);

    // The reserved name cannot be taken.
    let taken = manager.endpoint(DESCRIBE_ENDPOINT, |args: Value| async move {
        Ok::<_, VspError>(args)
    });
    assert!(
        matches!(taken, Err(VspError::DuplicateEndpoint { .. })),
        "{taken:?}"
    );
    assert_eq!(manager.endpoints(), ["add", "echo"]);
    manager.shutdown().await.unwrap();
}
