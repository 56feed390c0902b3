//! The OpenAPI 3.1 document of the gateway's services, built from their descriptions.
//!
//! Each endpoint is `POST /{service}/{endpoint}` with its argument schema as the request body and
//! its result schema as the `200` response; each service is `GET /{service}`. A schema's own
//! definitions (`$defs`, which its `$ref`s point at) move to `components/schemas` under
//! `{service}.{Name}` (or `{service}.{endpoint}.{role}.{Name}` when two endpoints of a service
//! define a `Name` differently), with the `$ref`s rewritten to match.

use serde_json::{json, Map, Value};

use crate::error::VspError;
use crate::protocol::{EndpointDescription, ServiceDescription};

/// The document for `descriptions` (a service that did not describe itself is listed under
/// `x-vsp-undescribed` with its error, and has only its `GET` path).
pub(super) fn document(descriptions: &[(String, Result<ServiceDescription, VspError>)]) -> Value {
    let mut components = Map::new();
    components.insert("Error".into(), error_schema());
    let mut paths = Map::new();
    let mut tags = Vec::new();
    let mut undescribed = Vec::new();
    for (service, described) in descriptions {
        tags.push(json!({ "name": service }));
        paths.insert(format!("/{service}"), describe_path(service));
        let description = match described {
            Ok(description) => description,
            Err(err) => {
                undescribed.push(json!({ "service": service, "error": err.to_string() }));
                continue;
            }
        };
        for endpoint in &description.endpoints {
            let operation = operation(service, endpoint, &mut components);
            paths.insert(
                format!("/{service}/{}", endpoint.name),
                json!({ "post": operation }),
            );
        }
    }
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "VSP gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Services reached through a VSP gateway: each endpoint is POST /{service}/{endpoint} with its JSON arguments object.",
        },
        "tags": tags,
        "paths": paths,
        "components": { "schemas": components },
    });
    if !undescribed.is_empty() {
        document["x-vsp-undescribed"] = Value::Array(undescribed);
    }
    document
}

/// `{"error": {"code", "message", "field"?, "data"?}}`.
fn error_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": { "type": "string" },
                    "message": { "type": "string" },
                    "field": { "type": "string" },
                    "data": {}
                },
                "required": ["code", "message"]
            }
        },
        "required": ["error"]
    })
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn describe_path(service: &str) -> Value {
    json!({
        "get": {
            "operationId": format!("{service}.describe"),
            "summary": format!("What `{service}` says of itself (vsp.describe), with its instances"),
            "tags": [service],
            "responses": {
                "200": {
                    "description": "The service's description.",
                    "content": { "application/json": { "schema": { "type": "object" } } }
                },
                "default": error_response("The service could not be described."),
            }
        }
    })
}

fn operation(
    service: &str,
    endpoint: &EndpointDescription,
    components: &mut Map<String, Value>,
) -> Value {
    let args = hoist(
        service,
        &endpoint.name,
        "args",
        &endpoint.args_schema,
        components,
    );
    let result = hoist(
        service,
        &endpoint.name,
        "result",
        &endpoint.result_schema,
        components,
    );
    let mut responses = json!({
        "200": {
            "description": "The endpoint's result.",
            "content": { "application/json": { "schema": result } }
        },
        "400": error_response("The arguments do not fit the endpoint (`bad_request`, naming the `field`)."),
        "500": error_response("The handler failed: a panic or an untyped error (`handler`)."),
        "503": error_response("No instance can take the call now (`no_instances`, `overloaded`, ...; `Retry-After`)."),
        "504": error_response("The call's deadline passed (`timeout`)."),
        "default": error_response("Another failure (see the gateway's status mapping)."),
    });
    if endpoint.streaming {
        // OpenAPI 3.1 has no schema for an event's data: the item's goes in an extension.
        responses["200"] = json!({
            "description": "The endpoint's items as Server-Sent Events (ask with `Accept: text/event-stream`): an `item` event per item, its JSON as `data` (see `x-vsp-item`), then `end` (`data: null`), or `error` (`data`: an Error) if the stream fails midway.",
            "content": { "text/event-stream": {
                "schema": { "type": "string" },
                "x-vsp-item": result
            } }
        });
        responses["501"] =
            error_response("Asked without `Accept: text/event-stream` (`not_supported`).");
    }
    if endpoint.input_stream.is_some() {
        responses["501"] = error_response(
            "Called with `POST`: the endpoint takes a stream of items, sent over a WebSocket (see `x-vsp-websocket`).",
        );
    }
    if let Some(error) = &endpoint.error_schema {
        let data = hoist(service, &endpoint.name, "error", error, components);
        let mut typed = error_response(
            "The service's typed error (`service_error`, its JSON in `error.data`): 422 unless its type gives another 4xx status (`vsp::HttpStatus`).",
        );
        typed["content"]["application/json"]["schema"] = json!({
            "allOf": [{ "$ref": "#/components/schemas/Error" }],
            "properties": { "error": { "properties": { "data": data } } }
        });
        responses["4XX"] = typed;
    }
    let mut operation = json!({
        "operationId": format!("{service}.{}", endpoint.name),
        "tags": [service],
        "requestBody": {
            "required": true,
            "content": { "application/json": { "schema": args } }
        },
        "responses": responses,
        "x-vsp-idempotent": endpoint.idempotent,
    });
    if let Some(input) = &endpoint.input_stream {
        operation["x-vsp-websocket"] = websocket(service, endpoint, input, components);
    }
    if let Some(doc) = &endpoint.doc {
        let summary = doc.lines().next().unwrap_or_default();
        operation["summary"] = Value::from(summary);
        operation["description"] = Value::from(doc.as_str());
    }
    operation
}

/// How to call an endpoint that takes a stream: OpenAPI 3.1 does not describe WebSockets, so
/// it goes in an extension.
fn websocket(
    service: &str,
    endpoint: &EndpointDescription,
    input: &crate::protocol::InputStream,
    components: &mut Map<String, Value>,
) -> Value {
    let item = hoist(
        service,
        &endpoint.name,
        "item",
        &input.item_schema,
        components,
    );
    json!({
        "description": "Open a WebSocket with `GET` on this path; send the arguments object (`requestBody`), then `{\"item\": ITEM}` per item and `{\"end\": true}`; receive `{\"item\": ...}` per answer (see the 200 response), then `{\"end\": true}`, or `{\"error\": Error, \"status\": S}` and a close code of 4000 + S.",
        "param": input.param,
        "item": item,
    })
}

/// `schema` with its `$defs` moved into `components` and its `$ref`s pointing there.
fn hoist(
    service: &str,
    endpoint: &str,
    role: &str,
    schema: &Value,
    components: &mut Map<String, Value>,
) -> Value {
    let mut schema = schema.clone();
    let definitions = match schema.as_object_mut().and_then(|map| map.remove("$defs")) {
        Some(Value::Object(definitions)) => definitions,
        _ => return schema,
    };
    let service_key = sanitize(service);
    let shared = |name: &str| format!("{service_key}.{}", sanitize(name));
    let own = |name: &str| {
        format!(
            "{service_key}.{}.{role}.{}",
            sanitize(endpoint),
            sanitize(name)
        )
    };
    // Under the service's names when each is new or the same as before; else under the
    // endpoint's own.
    let rewritten = |key: &dyn Fn(&str) -> String| -> Vec<(String, Value)> {
        definitions
            .iter()
            .map(|(name, definition)| {
                let mut definition = definition.clone();
                rewrite_refs(&mut definition, key);
                (key(name), definition)
            })
            .collect()
    };
    let mut entries = rewritten(&shared);
    let mut key: &dyn Fn(&str) -> String = &shared;
    if entries.iter().any(|(name, definition)| {
        components
            .get(name)
            .is_some_and(|known| known != definition)
    }) {
        entries = rewritten(&own);
        key = &own;
    }
    components.extend(entries);
    rewrite_refs(&mut schema, key);
    schema
}

/// Points every `#/$defs/Name` reference at `#/components/schemas/{key(Name)}`.
fn rewrite_refs(value: &mut Value, key: &dyn Fn(&str) -> String) {
    match value {
        Value::Object(map) => {
            for (field, inner) in map.iter_mut() {
                match (field.as_str(), inner.as_str()) {
                    ("$ref", Some(reference)) if reference.starts_with("#/$defs/") => {
                        let name = &reference["#/$defs/".len()..];
                        *inner = Value::from(format!("#/components/schemas/{}", key(name)));
                    }
                    _ => rewrite_refs(inner, key),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| rewrite_refs(item, key)),
        _ => {}
    }
}

/// A component name OpenAPI allows (`^[a-zA-Z0-9._-]+$`).
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(name: &str, result: Value) -> EndpointDescription {
        EndpointDescription::new(name).result_schema(result)
    }

    #[test]
    fn definitions_move_to_components_and_clashing_ones_get_their_own_names() {
        let user = json!({"type": "object", "properties": {"id": {"type": "string"}}});
        let other_user = json!({"type": "string"});
        let description = ServiceDescription {
            service: "user service".into(),
            protocol_version: 1,
            revision: 2,
            endpoints: vec![
                endpoint(
                    "get",
                    json!({"$ref": "#/$defs/User", "$defs": {"User": user}}),
                ),
                endpoint(
                    "list",
                    json!({"type": "array", "items": {"$ref": "#/$defs/User"}, "$defs": {"User": user}}),
                ),
                endpoint(
                    "odd",
                    json!({"$ref": "#/$defs/User", "$defs": {"User": other_user}}),
                ),
            ],
        };
        let document = document(&[("user service".into(), Ok(description))]);
        let schemas = &document["components"]["schemas"];
        assert_eq!(schemas["user_service.User"], user);
        assert_eq!(schemas["user_service.odd.result.User"], other_user);
        let paths = &document["paths"];
        let result = |path: &str| {
            &paths[path]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
        };
        assert_eq!(
            result("/user service/get")["$ref"],
            "#/components/schemas/user_service.User"
        );
        assert_eq!(
            result("/user service/list")["items"]["$ref"],
            "#/components/schemas/user_service.User"
        );
        assert_eq!(
            result("/user service/odd")["$ref"],
            "#/components/schemas/user_service.odd.result.User"
        );
        assert!(!document.to_string().contains("#/$defs/"));
    }
}
