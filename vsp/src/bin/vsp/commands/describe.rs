//! `vsp describe`: what a service says of itself (`vsp.describe`), readably or as JSON.

use clap::Args;
use serde_json::Value;
use vsp::protocol::{is_open_schema, DESCRIBE_ENDPOINT, NO_SCHEMA_KEY};
use vsp::ServiceDescription;
use vsp::{ErrorCode, VspError};

use crate::discovery_args::TargetArgs;
use crate::{explain, Failure};

/// Prints a service's endpoints with their parameters, docs and schemas (its `vsp.describe`).
#[derive(Args)]
pub(crate) struct DescribeArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Prints the description as JSON, schemas and all.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: DescribeArgs) -> Result<(), Failure> {
    let resolved = args.target.resolve()?;
    let description = describe(&resolved.client, &resolved.service, &args.target.target).await?;
    if args.json {
        let text = serde_json::to_string_pretty(&description).unwrap_or_default();
        println!("{text}");
    } else {
        print!("{}", readable(&description));
    }
    Ok(())
}

/// The service's description; a peer that does not describe itself (Velithon's Python VSP) is
/// said to be one, exit code 1.
pub(crate) async fn describe(
    client: &vsp::VspClient,
    service: &str,
    target: &str,
) -> Result<ServiceDescription, Failure> {
    match client.describe(service).await {
        Ok(description) => Ok(description),
        Err(err) if does_not_describe(&err) => Err(Failure {
            code: 1,
            message: format!(
                "{target} does not answer `{DESCRIBE_ENDPOINT}`: it is not a VSP server that describes itself (Velithon's Python VSP does not); its endpoints can still be called by name"
            ),
        }),
        Err(err) => Err(explain(err, target, DESCRIBE_ENDPOINT)),
    }
}

/// Whether `err` says the peer has no `vsp.describe`: ours would answer `not_found`, Velithon
/// answers with no code and `Endpoint vsp.describe not found`.
pub(crate) fn does_not_describe(err: &VspError) -> bool {
    match err {
        VspError::Remote { code, message, .. } => match code {
            ErrorCode::NotFound => true,
            ErrorCode::Unspecified(_) => message.contains("not found"),
            _ => false,
        },
        _ => false,
    }
}

/// One block per endpoint: its signature, flags, doc.
fn readable(description: &ServiceDescription) -> String {
    let revision = match description.revision {
        0 => String::new(),
        revision => format!(" revision {revision}"),
    };
    let mut out = format!(
        "{} (VSP/{}{revision}), {} endpoint{}\n",
        description.service,
        description.protocol_version,
        description.endpoints.len(),
        if description.endpoints.len() == 1 {
            ""
        } else {
            "s"
        }
    );
    for endpoint in &description.endpoints {
        let args = &endpoint.args_schema;
        let required: Vec<&str> = args["required"]
            .as_array()
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut params: Vec<String> = endpoint
            .params
            .iter()
            .map(|param| {
                let schema = &args["properties"][param.as_str()];
                let kind = type_name(schema);
                if required.contains(&param.as_str()) {
                    format!("{param}: {kind}")
                } else {
                    // An optional parameter's `Option` is said once, by the `?` on its name.
                    format!("{param}?: {}", kind.strip_suffix('?').unwrap_or(&kind))
                }
            })
            .collect();
        if let Some(input) = &endpoint.input_stream {
            params.push(format!(
                "{}: stream of {}",
                input.param,
                type_name(&input.item_schema)
            ));
        }
        let result = &endpoint.result_schema;
        let result = if endpoint.streaming {
            format!("stream of {}", type_name(result))
        } else {
            type_name(result)
        };
        out.push_str(&format!(
            "\n{}({}) -> {}{}\n",
            endpoint.name,
            params.join(", "),
            result,
            if endpoint.idempotent {
                "  [idempotent]"
            } else {
                ""
            }
        ));
        if let Some(doc) = &endpoint.doc {
            for line in doc.lines() {
                out.push_str(&format!("    {line}\n").replace("    \n", "\n"));
            }
        }
        if let Some(error) = &endpoint.error_schema {
            out.push_str(&format!("    fails with: {}\n", type_name(error)));
        }
    }
    if out.contains(UNSCHEMATIZED) {
        out.push_str(&format!(
            "\n{UNSCHEMATIZED}: no JSON Schema: the server was built without vsp's `schema` feature, or the type does not implement `schemars::JsonSchema` of schemars 1 (a schemars 0.8 derive is not read)\n"
        ));
    }
    out
}

/// What `describe` shows for a type without a schema, explained once at the end.
const UNSCHEMATIZED: &str = "any*";

/// A short name for what `schema` allows (`string`, `User`, `[integer]`, `string?`, `any`); a
/// `$ref` is named by its definition's name.
fn type_name(schema: &Value) -> String {
    if schema.get(NO_SCHEMA_KEY).is_some() {
        return UNSCHEMATIZED.to_owned();
    }
    if is_open_schema(schema) {
        return "any".to_owned();
    }
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return name.to_owned();
    }
    if let Some(title) = schema["title"].as_str() {
        return title.to_owned();
    }
    let nullable_of = |options: &Vec<Value>| {
        let (nulls, others): (Vec<&Value>, Vec<&Value>) =
            options.iter().partition(|option| option["type"] == "null");
        match (nulls.len(), others.as_slice()) {
            (1, [one]) => Some(format!("{}?", type_name(one))),
            _ => None,
        }
    };
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = schema[key].as_array() {
            return nullable_of(options).unwrap_or_else(|| {
                let names: Vec<String> = options.iter().map(type_name).collect();
                names.join(" | ")
            });
        }
    }
    match &schema["type"] {
        Value::String(kind) if kind == "array" => {
            format!("[{}]", type_name(&schema["items"]))
        }
        Value::String(kind) => kind.clone(),
        Value::Array(kinds) => {
            let names: Vec<&str> = kinds
                .iter()
                .filter_map(Value::as_str)
                .filter(|kind| *kind != "null")
                .collect();
            let optional = if names.len() < kinds.len() { "?" } else { "" };
            let base = match names.as_slice() {
                ["array"] => format!("[{}]", type_name(&schema["items"])),
                _ => names.join(" | "),
            };
            format!("{base}{optional}")
        }
        _ if schema.get("enum").is_some() => "enum".to_owned(),
        _ => "object".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn type_names_are_short() {
        assert_eq!(type_name(&json!({})), "any");
        assert_eq!(type_name(&json!({"$ref": "#/$defs/User"})), "User");
        assert_eq!(type_name(&json!({"type": ["string", "null"]})), "string?");
        assert_eq!(
            type_name(&json!({"type": "array", "items": {"type": "integer"}})),
            "[integer]"
        );
        assert_eq!(
            type_name(&json!({"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]})),
            "A?"
        );
    }
}
