//! Did this change break my callers? Two [`ServiceDescription`]s compared endpoint by endpoint,
//! every difference classified as breaking for callers or compatible, with its reason.
//!
//! The rules follow the values' direction. Arguments (and a caller's stream items) flow in: the
//! new service must accept everything old callers send, so a required argument added, an
//! argument removed or a type narrowed breaks them, and an optional argument added does not.
//! Results (and streamed items, and typed errors) flow out: old callers must be able to read
//! what the new service answers, so a field removed, a field that may now be missing, or a value
//! they do not expect (`null`, a new enum variant) breaks them, and a field added does not. An
//! endpoint removed, a stream kind changed or idempotence withdrawn (callers retry and hedge it)
//! breaks them; an endpoint added does not. Docs are not compared.
//!
//! The workflow: commit a service's `vsp describe --json` output as its contract, check every
//! change with `vsp compat contract.json HOST:PORT` in CI (exit 1 on a breaking change), or from
//! the service's own tests with [`check_contract`].
//!
//! ```
//! use serde_json::json;
//! use vsp::compat::compare;
//! use vsp::{EndpointDescription, ServiceDescription};
//!
//! let describe = |schema| ServiceDescription {
//!     service: "users".into(),
//!     protocol_version: 1,
//!     revision: 3,
//!     endpoints: vec![EndpointDescription::new("get_user").result_schema(schema)],
//! };
//! let old = describe(json!({ "type": "object",
//!     "properties": { "id": { "type": "string" }, "email": { "type": "string" } },
//!     "required": ["id", "email"] }));
//! let new = describe(json!({ "type": "object",
//!     "properties": { "id": { "type": "string" } }, "required": ["id"] }));
//! let report = compare(&old, &new);
//! assert!(report.is_breaking());
//! assert_eq!(
//!     report.to_string(),
//!     "breaking    get_user: result.email: removed: callers that read it no longer get it\n"
//! );
//! ```

mod schema;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::protocol::{EndpointDescription, ServiceDescription};
use schema::{Comparison, Flow, Found};

/// Whether a change breaks existing callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Impact {
    /// Callers built against the old description may fail against the new one.
    Breaking,
    /// Callers built against the old description go on working.
    Compatible,
}

/// One difference between two descriptions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Change {
    /// Whether it breaks callers.
    pub impact: Impact,
    /// The endpoint it concerns (`None`: the service itself, such as its name).
    pub endpoint: Option<String>,
    /// Where in the endpoint: `args.user_id`, `result.address.city`, `error.NotFound`, ...
    /// (empty for the endpoint as a whole).
    pub at: String,
    /// What changed and why it matters to callers.
    pub reason: String,
}

/// Every difference [`compare`] found, breaking ones first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// The changes, breaking ones first, then by endpoint.
    pub changes: Vec<Change>,
}

impl Report {
    /// Whether any change breaks callers.
    pub fn is_breaking(&self) -> bool {
        self.changes
            .iter()
            .any(|change| change.impact == Impact::Breaking)
    }

    /// Whether the descriptions are the same for callers (docs aside).
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The changes that break callers.
    pub fn breaking(&self) -> impl Iterator<Item = &Change> {
        self.changes
            .iter()
            .filter(|change| change.impact == Impact::Breaking)
    }
}

/// One line per change: `breaking    get_user: result.email: removed: ...`.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for change in &self.changes {
            let impact = match change.impact {
                Impact::Breaking => "breaking",
                Impact::Compatible => "compatible",
            };
            write!(f, "{impact:<11} ")?;
            if let Some(endpoint) = &change.endpoint {
                write!(f, "{endpoint}: ")?;
            }
            if !change.at.is_empty() {
                write!(f, "{}: ", change.at)?;
            }
            writeln!(f, "{}", change.reason)?;
        }
        Ok(())
    }
}

/// Compares the description callers were built against (`old`) with the new one.
pub fn compare(old: &ServiceDescription, new: &ServiceDescription) -> Report {
    let mut changes = Vec::new();
    if old.service != new.service {
        changes.push(Change {
            impact: Impact::Breaking,
            endpoint: None,
            at: String::new(),
            reason: format!(
                "the service is renamed from `{}` to `{}`: callers route by name",
                old.service, new.service
            ),
        });
    }
    for old_endpoint in &old.endpoints {
        let name = &old_endpoint.name;
        let change = |impact, at: &str, reason: String| Change {
            impact,
            endpoint: Some(name.clone()),
            at: at.to_owned(),
            reason,
        };
        match new.endpoint(name) {
            Some(new_endpoint) => compare_endpoint(old_endpoint, new_endpoint, &mut changes),
            None => {
                let renamed = new
                    .endpoints
                    .iter()
                    .filter(|candidate| old.endpoint(&candidate.name).is_none())
                    .find(|candidate| same_shape(old_endpoint, candidate))
                    .map(|candidate| format!(" (renamed to `{}`?)", candidate.name))
                    .unwrap_or_default();
                let reason = format!("removed{renamed}: callers get `not_found`");
                changes.push(change(Impact::Breaking, "", reason));
            }
        }
    }
    for new_endpoint in &new.endpoints {
        if old.endpoint(&new_endpoint.name).is_none() {
            changes.push(Change {
                impact: Impact::Compatible,
                endpoint: Some(new_endpoint.name.clone()),
                at: String::new(),
                reason: "added".to_owned(),
            });
        }
    }
    // Breaking first; otherwise in the order found (endpoint by endpoint, path by path).
    changes.sort_by_key(|change| change.impact != Impact::Breaking);
    Report { changes }
}

/// Whether two endpoints take and answer the same things (a rename's likely other half).
fn same_shape(a: &EndpointDescription, b: &EndpointDescription) -> bool {
    a.args_schema == b.args_schema
        && a.result_schema == b.result_schema
        && a.streaming == b.streaming
        && a.input_stream.is_some() == b.input_stream.is_some()
}

fn compare_endpoint(
    old: &EndpointDescription,
    new: &EndpointDescription,
    changes: &mut Vec<Change>,
) {
    let mut found = Vec::new();
    compare_kinds(old, new, &mut found);
    let mut compare = |old_schema: &Value, new_schema: &Value, flow, at: &str| {
        let mut comparison = Comparison::new(old_schema, new_schema, flow, &mut found);
        comparison.compare(old_schema, new_schema, at);
    };
    if let (Some(old_input), Some(new_input)) = (&old.input_stream, &new.input_stream) {
        compare(
            &old_input.item_schema,
            &new_input.item_schema,
            Flow::In,
            "stream item",
        );
    }
    compare(&old.args_schema, &new.args_schema, Flow::In, "args");
    compare(&old.result_schema, &new.result_schema, Flow::Out, "result");
    match (&old.error_schema, &new.error_schema) {
        (Some(old_error), Some(new_error)) => compare(old_error, new_error, Flow::Out, "error"),
        (None, Some(_)) => found.push(Found {
            breaking: false,
            at: "error".to_owned(),
            reason: "a typed error is now described".to_owned(),
        }),
        (Some(_), None) => found.push(Found {
            breaking: true,
            at: "error".to_owned(),
            reason: "no longer answers a typed error: callers decoding one get an untyped error"
                .to_owned(),
        }),
        (None, None) => {}
    }
    changes.extend(found.into_iter().map(|found| Change {
        impact: if found.breaking {
            Impact::Breaking
        } else {
            Impact::Compatible
        },
        endpoint: Some(old.name.clone()),
        at: found.at,
        reason: found.reason,
    }));
}

/// Idempotence and the stream kinds.
fn compare_kinds(old: &EndpointDescription, new: &EndpointDescription, found: &mut Vec<Found>) {
    let mut note = |breaking: bool, reason: String| {
        found.push(Found {
            breaking,
            at: String::new(),
            reason,
        });
    };
    match (old.idempotent, new.idempotent) {
        (true, false) => note(
            true,
            "no longer idempotent: callers retry and hedge it as if it were".to_owned(),
        ),
        (false, true) => note(false, "now idempotent".to_owned()),
        _ => {}
    }
    match (old.streaming, new.streaming) {
        (false, true) => note(
            true,
            "now answers with a stream: callers expecting one answer cannot read it".to_owned(),
        ),
        (true, false) => note(
            true,
            "no longer answers with a stream: callers reading a stream cannot read it".to_owned(),
        ),
        _ => {}
    }
    match (&old.input_stream, &new.input_stream) {
        (None, Some(input)) => note(
            true,
            format!(
                "now takes a stream of items (`{}`): callers do not send one",
                input.param
            ),
        ),
        (Some(input), None) => note(
            true,
            format!(
                "no longer takes a stream of items (`{}`): callers send one",
                input.param
            ),
        ),
        _ => {}
    }
}

/// What [`check_contract`] found: the service's description drifted from its committed
/// contract, or the contract could not be read or written.
#[derive(Debug)]
#[non_exhaustive]
pub enum ContractError {
    /// The description differs from the contract: the classified changes, and the lines of
    /// the contract's JSON that differ.
    Drifted {
        /// The contract file.
        path: String,
        /// The changes for callers (empty when only docs differ).
        report: Report,
        /// The differing lines of the two JSON texts, `-` the contract's and `+` the service's.
        diff: String,
    },
    /// The contract file could not be read, parsed or written.
    File {
        /// The contract file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl fmt::Display for ContractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContractError::Drifted { path, report, diff } => {
                let verdict = if report.is_breaking() {
                    "with changes that break callers"
                } else {
                    "compatibly"
                };
                writeln!(
                    f,
                    "the service's description drifted from its contract {path} {verdict}:"
                )?;
                write!(f, "{report}")?;
                writeln!(f, "\n{diff}")?;
                write!(
                    f,
                    "if the change is meant, run the test again with {UPDATE_VAR}=1 to write the new contract, and commit it"
                )
            }
            ContractError::File { path, reason } => {
                write!(f, "the contract {path}: {reason}")
            }
        }
    }
}

impl std::error::Error for ContractError {}

/// The environment variable that makes [`check_contract`] write the contract instead of
/// checking it.
pub const UPDATE_VAR: &str = "VSP_UPDATE_CONTRACTS";

/// Checks a service's description against its committed contract (a `vsp describe --json`
/// file): `Ok` when they are the same JSON, else [`ContractError::Drifted`] with the changes
/// classified for callers and the differing lines. With `VSP_UPDATE_CONTRACTS=1` in the
/// environment, the contract is written (created or replaced) instead, as `cargo insta` and
/// `TRYBUILD=overwrite` do.
///
/// ```no_run
/// # async fn test() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = vsp::VspManager::builder("users").build();
/// // manager.serve(UsersServer::new(MyUsers))?;
/// vsp::compat::check_contract(&manager.description(), "contracts/users.json")?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// [`ContractError::Drifted`] when the description differs (breaking or not: the contract is
/// the record of what callers see, and a compatible change is committed too);
/// [`ContractError::File`] when the contract cannot be read or parsed (or written, when
/// updating).
pub fn check_contract(
    description: &ServiceDescription,
    path: impl AsRef<Path>,
) -> Result<(), ContractError> {
    let path = path.as_ref();
    let shown = path.display().to_string();
    let file_error = |reason: String| ContractError::File {
        path: shown.clone(),
        reason,
    };
    let current = serde_json::to_string_pretty(description).unwrap_or_default() + "\n";
    if std::env::var(UPDATE_VAR).is_ok_and(|value| value == "1") {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|err| file_error(err.to_string()))?;
        }
        return std::fs::write(path, current).map_err(|err| file_error(err.to_string()));
    }
    let committed = std::fs::read_to_string(path).map_err(|err| {
        file_error(format!(
            "{err} (write it with {UPDATE_VAR}=1, or `vsp describe --json`)"
        ))
    })?;
    let contract: ServiceDescription = serde_json::from_str(&committed)
        .map_err(|err| file_error(format!("not a service description: {err}")))?;
    if &contract == description {
        return Ok(());
    }
    let contract_text = serde_json::to_string_pretty(&contract).unwrap_or_default() + "\n";
    Err(ContractError::Drifted {
        path: shown,
        report: compare(&contract, description),
        diff: line_diff(&contract_text, &current),
    })
}

/// The lines that differ between two texts: the common head and tail are left out, the middle
/// shown as `-` (old) and `+` (new) lines, with two lines of context.
fn line_diff(old: &str, new: &str) -> String {
    let old: Vec<&str> = old.lines().collect();
    let new: Vec<&str> = new.lines().collect();
    let head = old.iter().zip(&new).take_while(|(a, b)| a == b).count();
    let tail = old[head..]
        .iter()
        .rev()
        .zip(new[head..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let context = head.saturating_sub(2);
    let mut out = String::new();
    for line in &old[context..head] {
        out.push_str(&format!("  {line}\n"));
    }
    for line in &old[head..old.len() - tail] {
        out.push_str(&format!("- {line}\n"));
    }
    for line in &new[head..new.len() - tail] {
        out.push_str(&format!("+ {line}\n"));
    }
    for line in old[old.len() - tail..].iter().take(2) {
        out.push_str(&format!("  {line}\n"));
    }
    out
}
