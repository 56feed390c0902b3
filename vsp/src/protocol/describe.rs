//! What a service says about itself: the answer of the built-in [`DESCRIBE_ENDPOINT`].
//!
//! Every VSP server answers `vsp.describe` (as it answers `health`) with a
//! [`ServiceDescription`]: its name, the protocol version, and each endpoint with its parameter
//! names, whether it is idempotent, its doc comment, and JSON Schemas (draft 2020-12) of its
//! arguments object, its result and its typed error. `#[vsp::service]` fills these in (the
//! schemas with feature `schema`); an endpoint registered by hand has an open description unless
//! it is given one ([`VspManager::endpoint_described`](crate::VspManager::endpoint_described)).
//! Velithon's Python servers do not answer it: they say `Endpoint vsp.describe not found`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The built-in endpoint every VSP server answers with its [`ServiceDescription`]. Its dot keeps
/// it apart from any method name; a `#[vsp::service]` method cannot take it.
pub const DESCRIBE_ENDPOINT: &str = "vsp.describe";

/// A service's answer to [`DESCRIBE_ENDPOINT`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceDescription {
    /// The service name.
    pub service: String,
    /// The VSP protocol version the server speaks ([`PROTOCOL_VERSION`](super::PROTOCOL_VERSION)).
    pub protocol_version: u32,
    /// The protocol revision it answers with (the `vsp` header key: 2 adds streams and cancel);
    /// 0 from a server that does not say.
    #[serde(default)]
    pub revision: u32,
    /// Its endpoints, by name (the built-in `health` and `vsp.describe` are not listed).
    pub endpoints: Vec<EndpointDescription>,
}

impl ServiceDescription {
    /// The endpoint called `name`, if the service has it.
    pub fn endpoint(&self, name: &str) -> Option<&EndpointDescription> {
        self.endpoints.iter().find(|endpoint| endpoint.name == name)
    }
}

/// One endpoint of a [`ServiceDescription`].
///
/// A schema that says nothing (`{}`, any JSON value) is an *open* one: the endpoint was
/// registered without one, or its type has no `JsonSchema` (or the `schema` feature is off).
///
/// ```
/// use serde_json::json;
/// use vsp::EndpointDescription;
///
/// let description = EndpointDescription::new("add")
///     .doc("Adds two numbers.")
///     .params(["a", "b"])
///     .idempotent(true)
///     .args_schema(json!({
///         "type": "object",
///         "properties": { "a": { "type": "number" }, "b": { "type": "number" } },
///         "required": ["a", "b"]
///     }))
///     .result_schema(json!({ "type": "number" }));
/// assert!(description.is_idempotent());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EndpointDescription {
    /// The wire name.
    pub name: String,
    /// The argument object's keys, in declaration order.
    #[serde(default)]
    pub params: Vec<String>,
    /// Safe to send again after a failure (`#[vsp(idempotent)]`).
    #[serde(default)]
    pub idempotent: bool,
    /// It answers with a stream of items (call it with `VspClient::call_stream`); its
    /// `result_schema` is then the schema of one item.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub streaming: bool,
    /// It takes a stream of items from the caller (a client stream; a bidirectional one when
    /// `streaming` too): the parameter that carries it and the JSON Schema of one item. Call
    /// it with `VspClient::call_client_stream` or `call_bidi_stream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_stream: Option<InputStream>,
    /// Its documentation (a method's `///` comment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
    /// The JSON Schema of the arguments object.
    #[serde(default = "open_schema")]
    pub args_schema: Value,
    /// The JSON Schema of the result.
    #[serde(default = "open_schema")]
    pub result_schema: Value,
    /// The JSON Schema of the typed error (`data` of a `handler` error), for a method returning
    /// `Result<T, E>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_schema: Option<Value>,
}

/// The stream of items an endpoint takes from its caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct InputStream {
    /// The parameter that carries it (not a key of the arguments object: the items travel as
    /// frames of their own).
    pub param: String,
    /// The JSON Schema of one item.
    #[serde(default = "open_schema")]
    pub item_schema: Value,
}

impl InputStream {
    /// The stream carried by parameter `param`, of items of any shape.
    pub fn new(param: impl Into<String>) -> Self {
        InputStream {
            param: param.into(),
            item_schema: open_schema(),
        }
    }

    /// Sets the JSON Schema of one item.
    pub fn item_schema(mut self, schema: Value) -> Self {
        self.item_schema = schema;
        self
    }
}

/// The schema that allows any value.
pub(crate) fn open_schema() -> Value {
    Value::Object(Default::default())
}

/// The key a `#[vsp::service]` puts in the (open) schema of a type that has none, so
/// `vsp describe` can say why it shows `any`: the type does not implement schemars 1's
/// `JsonSchema` (a schemars 0.8 derive is not read), or vsp's `schema` feature is off.
pub const NO_SCHEMA_KEY: &str = "x-vsp-no-schema";

/// The open schema of a type that has no JSON Schema (see [`NO_SCHEMA_KEY`]).
pub(crate) fn missing_schema() -> Value {
    serde_json::json!({ NO_SCHEMA_KEY: true })
}

/// Whether `schema` says nothing: `{}`, `true`, or the schema of a type without one
/// ([`NO_SCHEMA_KEY`]).
pub fn is_open_schema(schema: &Value) -> bool {
    match schema {
        Value::Bool(true) => true,
        Value::Object(map) => map.keys().all(|key| key == NO_SCHEMA_KEY),
        _ => false,
    }
}

impl EndpointDescription {
    /// An open description of the endpoint `name`: no parameters known, any arguments, any
    /// result.
    pub fn new(name: impl Into<String>) -> Self {
        EndpointDescription {
            name: name.into(),
            params: Vec::new(),
            idempotent: false,
            streaming: false,
            input_stream: None,
            doc: None,
            args_schema: open_schema(),
            result_schema: open_schema(),
            error_schema: None,
        }
    }

    /// Sets its documentation.
    pub fn doc(mut self, doc: impl Into<String>) -> Self {
        self.doc = Some(doc.into());
        self
    }

    /// Sets the argument object's keys.
    pub fn params<S: Into<String>>(mut self, params: impl IntoIterator<Item = S>) -> Self {
        self.params = params.into_iter().map(Into::into).collect();
        self
    }

    /// Marks it safe to send again after a failure.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// Sets the JSON Schema of its arguments object.
    pub fn args_schema(mut self, schema: Value) -> Self {
        self.args_schema = schema;
        self
    }

    /// Sets the JSON Schema of its result.
    pub fn result_schema(mut self, schema: Value) -> Self {
        self.result_schema = schema;
        self
    }

    /// Sets the JSON Schema of its typed error.
    pub fn error_schema(mut self, schema: Value) -> Self {
        self.error_schema = Some(schema);
        self
    }

    /// Whether it is safe to send again after a failure.
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    /// Whether its arguments schema says anything (a caller can check a body against it).
    pub fn has_args_schema(&self) -> bool {
        !is_open_schema(&self.args_schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_description_reads_back_and_missing_fields_are_open() {
        let description = ServiceDescription {
            service: "users".into(),
            protocol_version: 1,
            revision: 2,
            endpoints: vec![EndpointDescription::new("get")
                .params(["id"])
                .doc("Gets one.")
                .error_schema(json!({"type": "string"}))],
        };
        let text = serde_json::to_string(&description).unwrap();
        let back: ServiceDescription = serde_json::from_str(&text).unwrap();
        assert_eq!(back, description);
        let sparse: EndpointDescription = serde_json::from_str(r#"{"name": "x"}"#).unwrap();
        assert_eq!(sparse, EndpointDescription::new("x"));
        assert!(!sparse.has_args_schema());
        assert!(is_open_schema(&json!(true)));
        assert!(is_open_schema(&missing_schema()));
        assert!(!is_open_schema(&json!({"type": "object"})));
    }
}
