//! Each rule of [`compare`](super::compare) on a pair of descriptions.

use serde_json::{json, Value};

use super::*;
use crate::protocol::InputStream;

fn service(endpoints: Vec<EndpointDescription>) -> ServiceDescription {
    ServiceDescription {
        service: "users".into(),
        protocol_version: 1,
        revision: 3,
        endpoints,
    }
}

fn args(properties: Value, required: &[&str]) -> Value {
    json!({ "type": "object", "properties": properties, "required": required })
}

fn endpoint(name: &str) -> EndpointDescription {
    EndpointDescription::new(name)
}

/// The report's lines for `old` → `new`, each `breaking|compatible at: reason`.
fn lines(old: EndpointDescription, new: EndpointDescription) -> Vec<String> {
    let report = compare(&service(vec![old]), &service(vec![new]));
    report.to_string().lines().map(str::to_owned).collect()
}

fn assert_one(lines: &[String], impact: &str, at: &str, reason: &str) {
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let line = &lines[0];
    assert!(line.starts_with(impact), "{line}");
    if !at.is_empty() {
        assert!(line.contains(&format!(": {at}: ")), "{line}");
    }
    assert!(line.contains(reason), "{line}");
}

fn user(properties: Value, required: &[&str]) -> Value {
    json!({
        "$defs": { "User": { "type": "object", "properties": properties, "required": required } },
        "$ref": "#/$defs/User"
    })
}

#[test]
fn endpoints_removed_renamed_and_added() {
    let get = endpoint("get_user").args_schema(args(json!({"id": {"type": "string"}}), &["id"]));
    let old = service(vec![get.clone(), endpoint("ping")]);
    let mut renamed = get.clone();
    renamed.name = "fetch_user".into();
    let new = service(vec![renamed, endpoint("ping"), endpoint("list_users")]);
    let report = compare(&old, &new);
    assert!(report.is_breaking());
    let text = report.to_string();
    assert_eq!(
        text,
        "breaking    get_user: removed (renamed to `fetch_user`?): callers get `not_found`\n\
         compatible  fetch_user: added\n\
         compatible  list_users: added\n",
    );
    assert!(compare(&old, &old).is_empty());
}

#[test]
fn a_required_argument_added_breaks_an_optional_one_does_not() {
    let old = endpoint("e").args_schema(args(json!({"a": {"type": "string"}}), &["a"]));
    let required = endpoint("e").args_schema(args(
        json!({"a": {"type": "string"}, "b": {"type": "integer"}}),
        &["a", "b"],
    ));
    assert_one(
        &lines(old.clone(), required),
        "breaking",
        "args.b",
        "added as required",
    );
    let optional = endpoint("e").args_schema(args(
        json!({"a": {"type": "string"}, "b": {"type": ["integer", "null"]}}),
        &["a"],
    ));
    let found = lines(old, optional);
    assert_one(&found, "compatible", "args.b", "added as optional");
    assert!(!compare(&service(vec![endpoint("e")]), &service(vec![endpoint("e")])).is_breaking());
}

#[test]
fn an_argument_removed_or_made_required_breaks() {
    let old = endpoint("e").args_schema(args(
        json!({"a": {"type": "string"}, "b": {"type": "string"}}),
        &["a"],
    ));
    let removed = endpoint("e").args_schema(args(json!({"a": {"type": "string"}}), &["a"]));
    assert_one(
        &lines(old.clone(), removed),
        "breaking",
        "args.b",
        "removed",
    );
    let required = endpoint("e").args_schema(args(
        json!({"a": {"type": "string"}, "b": {"type": "string"}}),
        &["a", "b"],
    ));
    assert_one(
        &lines(old.clone(), required.clone()),
        "breaking",
        "args.b",
        "became required",
    );
    // And back: optional again is compatible.
    assert_one(
        &lines(required, old),
        "compatible",
        "args.b",
        "became optional",
    );
}

#[test]
fn argument_types_narrowed_or_changed_break_and_widened_do_not() {
    let of = |schema: Value| endpoint("e").args_schema(args(json!({ "n": schema }), &["n"]));
    let int32 = of(json!({"type": "integer", "format": "int32"}));
    let uint8 = of(json!({"type": "integer", "format": "uint8", "minimum": 0}));
    let number = of(json!({"type": "number"}));
    let text = of(json!({"type": "string"}));
    assert_one(
        &lines(int32.clone(), uint8.clone()),
        "breaking",
        "args.n",
        "integer range [-2147483648, 2147483647] became [0, 255]",
    );
    assert_one(
        &lines(uint8, int32.clone()),
        "compatible",
        "args.n",
        "integer range",
    );
    assert_one(
        &lines(int32.clone(), number.clone()),
        "compatible",
        "args.n",
        "integer, now any number",
    );
    assert_one(
        &lines(number, int32.clone()),
        "breaking",
        "args.n",
        "now an integer only",
    );
    assert_one(
        &lines(int32, text),
        "breaking",
        "args.n",
        "type changed from integer to string",
    );
    // Accepting null too is a widening of an argument.
    let nullable = of(json!({"type": ["string", "null"]}));
    let plain = of(json!({"type": "string"}));
    assert_one(
        &lines(plain.clone(), nullable.clone()),
        "compatible",
        "args.n",
        "now also accepts null",
    );
    assert_one(
        &lines(nullable, plain),
        "breaking",
        "args.n",
        "no longer accepts null",
    );
}

#[test]
fn result_fields_removed_loosened_or_changed_break_and_added_do_not() {
    let old = endpoint("e").result_schema(user(
        json!({"id": {"type": "string"}, "email": {"type": "string"}}),
        &["id", "email"],
    ));
    let removed = endpoint("e").result_schema(user(json!({"id": {"type": "string"}}), &["id"]));
    assert_one(
        &lines(old.clone(), removed),
        "breaking",
        "result.email",
        "removed: callers that read it no longer get it",
    );
    let optional = endpoint("e").result_schema(user(
        json!({"id": {"type": "string"}, "email": {"type": "string"}}),
        &["id"],
    ));
    assert_one(
        &lines(old.clone(), optional),
        "breaking",
        "result.email",
        "may now be missing",
    );
    let nullable = endpoint("e").result_schema(user(
        json!({"id": {"type": "string"}, "email": {"type": ["string", "null"]}}),
        &["id", "email"],
    ));
    assert_one(
        &lines(old.clone(), nullable),
        "breaking",
        "result.email",
        "may now be null",
    );
    let changed = endpoint("e").result_schema(user(
        json!({"id": {"type": "integer"}, "email": {"type": "string"}}),
        &["id", "email"],
    ));
    assert_one(
        &lines(old.clone(), changed),
        "breaking",
        "result.id",
        "type changed from string to integer",
    );
    let added = endpoint("e").result_schema(user(
        json!({"id": {"type": "string"}, "email": {"type": "string"}, "age": {"type": "integer"}}),
        &["id", "email", "age"],
    ));
    assert_one(&lines(old, added), "compatible", "result.age", "added");
}

#[test]
fn nested_fields_and_array_items_are_followed() {
    let of = |item: Value| {
        endpoint("e").result_schema(json!({
            "type": "array",
            "items": { "$ref": "#/$defs/Item" },
            "$defs": { "Item": item }
        }))
    };
    let old = of(args(
        json!({"tags": {"type": "array", "items": {"type": "string"}}}),
        &["tags"],
    ));
    let new = of(args(
        json!({"tags": {"type": "array", "items": {"type": "integer"}}}),
        &["tags"],
    ));
    assert_one(
        &lines(old, new),
        "breaking",
        "result[].tags[]",
        "type changed from string to integer",
    );
}

#[test]
fn enum_variants_added_break_readers_and_removed_break_senders() {
    let colours = |values: Value| json!({"type": "string", "enum": values});
    let result = |values| endpoint("e").result_schema(colours(values));
    assert_one(
        &lines(
            result(json!(["red", "green"])),
            result(json!(["red", "green", "blue"])),
        ),
        "breaking",
        "result",
        "may now be the value \"blue\"",
    );
    assert_one(
        &lines(result(json!(["red", "green"])), result(json!(["red"]))),
        "compatible",
        "result",
        "is no longer the value \"green\"",
    );
    let arg = |values| endpoint("e").args_schema(args(json!({"c": colours(values)}), &["c"]));
    assert_one(
        &lines(arg(json!(["red", "green"])), arg(json!(["red"]))),
        "breaking",
        "args.c",
        "no longer accepts the value \"green\"",
    );
    assert_one(
        &lines(arg(json!(["red"])), arg(json!(["red", "green"]))),
        "compatible",
        "args.c",
        "now also accepts the value \"green\"",
    );
}

#[test]
fn typed_error_variants_are_compared_as_answers() {
    let variant = |name: &str, content: Value| {
        json!({
            "type": "object",
            "properties": { name: content },
            "required": [name],
            "additionalProperties": false
        })
    };
    let not_found = variant("NotFound", args(json!({"id": {"type": "string"}}), &["id"]));
    let taken = variant(
        "Taken",
        args(json!({"email": {"type": "string"}}), &["email"]),
    );
    let error = |variants: Vec<Value>| endpoint("e").error_schema(json!({ "oneOf": variants }));
    assert_one(
        &lines(
            error(vec![not_found.clone()]),
            error(vec![not_found.clone(), taken]),
        ),
        "breaking",
        "error",
        "may now be variant `Taken`",
    );
    let renamed_field = variant(
        "NotFound",
        args(json!({"user": {"type": "string"}}), &["user"]),
    );
    let found = lines(error(vec![not_found]), error(vec![renamed_field]));
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].contains("error.NotFound.id: removed"),
        "{found:#?}"
    );
    assert!(
        found[1].contains("error.NotFound.user: added"),
        "{found:#?}"
    );
}

#[test]
fn stream_kinds_and_idempotence() {
    let unary = endpoint("e").idempotent(true);
    let mut streaming = unary.clone();
    streaming.streaming = true;
    assert_one(
        &lines(unary.clone(), streaming),
        "breaking",
        "",
        "now answers with a stream",
    );
    let mut uploading = unary.clone();
    uploading.input_stream = Some(InputStream {
        param: "rows".into(),
        item_schema: json!({"type": "string"}),
    });
    let found = lines(unary.clone(), uploading.clone());
    assert!(
        found[0].contains("now takes a stream of items (`rows`)"),
        "{found:#?}"
    );
    let mut narrower = uploading.clone();
    narrower.input_stream.as_mut().unwrap().item_schema = json!({"type": "integer"});
    assert_one(
        &lines(uploading, narrower),
        "breaking",
        "stream item",
        "type changed from string to integer",
    );
    let withdrawn = endpoint("e").idempotent(false);
    let found = lines(unary.clone(), withdrawn.clone());
    assert!(
        found[0].starts_with("breaking") && found[0].contains("no longer idempotent"),
        "{found:#?}"
    );
    let found = lines(withdrawn, unary);
    assert!(found[0].starts_with("compatible"), "{found:#?}");
}

#[test]
fn open_schemas_and_recursive_types_end() {
    // An open argument schema that becomes a closed one narrows what callers may send.
    let open = endpoint("e");
    let closed = endpoint("e").args_schema(args(json!({"a": {"type": "string"}}), &["a"]));
    assert!(lines(open.clone(), closed.clone())[0].starts_with("breaking"));
    assert!(lines(closed, open)[0].starts_with("compatible"));
    // A tree type refers to itself: the comparison ends.
    let tree = |leaf: &str| {
        endpoint("e").result_schema(json!({
            "$ref": "#/$defs/Node",
            "$defs": { "Node": { "type": "object",
                "properties": { "value": { "type": leaf },
                    "children": { "type": "array", "items": { "$ref": "#/$defs/Node" } } },
                "required": ["value", "children"] } }
        }))
    };
    let found = lines(tree("string"), tree("integer"));
    assert!(!found.is_empty());
    assert!(found
        .iter()
        .all(|line| line.contains("type changed from string to integer")));
    // A type whose every field refers to itself, ten times over: compared once, not 10^24
    // times.
    let fan = |leaf: &str| {
        let properties: serde_json::Map<String, Value> = (0..10)
            .map(|i| (format!("f{i}"), json!({ "$ref": "#/$defs/Node" })))
            .chain([("value".to_owned(), json!({ "type": leaf }))])
            .collect();
        endpoint("e").result_schema(json!({
            "$ref": "#/$defs/Node",
            "$defs": { "Node": { "type": "object", "properties": properties, "required": ["value"] } }
        }))
    };
    let found = lines(fan("string"), fan("integer"));
    assert_eq!(found.len(), 1, "{found:#?}");
    // Unions of references to unions, ten wide and thirty deep (a description a hostile
    // server could send): read within a budget, not 10^24 times.
    let defs: serde_json::Map<String, Value> = (0..30)
        .map(|level| {
            let next = json!({ "$ref": format!("#/$defs/L{}", level + 1) });
            (format!("L{level}"), json!({ "anyOf": vec![next; 10] }))
        })
        .chain([("L30".to_owned(), json!({ "type": "string" }))])
        .collect();
    let fan_out = endpoint("e").result_schema(json!({ "$ref": "#/$defs/L0", "$defs": defs }));
    assert!(compare(&service(vec![fan_out.clone()]), &service(vec![fan_out])).is_empty());
    // A reference that leads nowhere is taken as open, not followed forever.
    let dangling = endpoint("e").result_schema(json!({"$ref": "#/$defs/Missing"}));
    assert!(compare(&service(vec![dangling.clone()]), &service(vec![dangling])).is_empty());
}

#[test]
fn a_contract_file_is_checked_written_and_its_drift_shown() {
    let dir = std::env::temp_dir().join(format!("vsp-contract-{}", std::process::id()));
    let path = dir.join("users.json");
    let old =
        service(vec![endpoint("get_user").result_schema(user(
            json!({"id": {"type": "string"}}),
            &["id"],
        ))]);
    let missing = check_contract(&old, &path).unwrap_err();
    assert!(matches!(missing, ContractError::File { .. }), "{missing}");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(&old).unwrap()).unwrap();
    check_contract(&old, &path).unwrap();
    let new =
        service(vec![endpoint("get_user").result_schema(user(
            json!({"id": {"type": "integer"}}),
            &["id"],
        ))]);
    let drift = check_contract(&new, &path).unwrap_err();
    let text = drift.to_string();
    assert!(text.contains("with changes that break callers"), "{text}");
    assert!(
        text.contains("result.id: type changed from string to integer"),
        "{text}"
    );
    assert!(
        text.contains(
            "\n-                 \"type\": \"string\"\n+                 \"type\": \"integer\"\n"
        ),
        "{text}"
    );
    assert!(text.contains(UPDATE_VAR), "{text}");
    std::fs::write(&path, "not json").unwrap();
    let bad = check_contract(&old, &path).unwrap_err();
    assert!(
        bad.to_string().contains("not a service description"),
        "{bad}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
