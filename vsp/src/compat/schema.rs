//! Two JSON Schemas of the same value compared for the callers' sake: what an old caller sends
//! must still be accepted (arguments flow in), and what the new service answers must still be
//! readable by an old caller (results flow out).
//!
//! A schema is read as a set of alternatives, one per kind of JSON value it allows (`null`,
//! `integer`, `object`, a variant of a tagged enum, one enumerated value, ...), following `$ref`s
//! into `$defs`. Alternatives are matched by kind, then compared in depth: an object's
//! properties, an array's items, an integer's range, a variant's content.

use serde_json::{Map, Value};

/// Which way values go through the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    /// Callers send it (arguments, a caller's stream items): the new schema must accept all
    /// the old one did.
    In,
    /// Callers read it (results, items, errors): the new schema must allow nothing the old
    /// one did not.
    Out,
}

/// One difference found: where, whether it breaks callers, and why.
#[derive(Debug)]
pub(super) struct Found {
    pub(super) breaking: bool,
    pub(super) at: String,
    pub(super) reason: String,
}

/// Deeper than this, a schema is taken as compared (a recursive type's `$ref` loops).
const MAX_DEPTH: usize = 24;
/// `$ref` hops followed before a reference is taken as open.
const MAX_HOPS: usize = 16;
/// Schema pairs compared at most for one endpoint's schema: a description from a live server
/// may be built to make the comparison explode, and this bounds its cost.
const MAX_VISITS: usize = 20_000;
/// Schemas read at most to list one schema's alternatives (its unions, through `$ref`s).
const MAX_UNION_NODES: usize = 1_000;

/// Compares the schemas `old` (inside the document `old_root`) and `new` (inside `new_root`),
/// values flowing `flow`; the differences found are added to `found`.
pub(super) struct Comparison<'a> {
    pub(super) old_root: &'a Value,
    pub(super) new_root: &'a Value,
    pub(super) flow: Flow,
    pub(super) found: &'a mut Vec<Found>,
    /// The pairs of `$ref`s compared so far: a type met again (a recursive one, or one used
    /// twice) is compared once.
    pub(super) seen: std::collections::HashSet<(String, String)>,
    /// Schema pairs compared so far, against `MAX_VISITS`.
    pub(super) visits: usize,
}

/// A kind of JSON value a schema allows, and the schema that says more about it.
struct Alternative<'a> {
    key: String,
    schema: &'a Value,
}

impl<'a> Comparison<'a> {
    fn note(&mut self, breaking: bool, at: &str, reason: String) {
        self.found.push(Found {
            breaking,
            at: at.to_owned(),
            reason,
        });
    }

    pub(super) fn new(
        old_root: &'a Value,
        new_root: &'a Value,
        flow: Flow,
        found: &'a mut Vec<Found>,
    ) -> Self {
        Comparison {
            old_root,
            new_root,
            flow,
            found,
            seen: std::collections::HashSet::new(),
            visits: 0,
        }
    }

    /// Compares two schemas at `at` (a path such as `args.user.email`).
    pub(super) fn compare(&mut self, old: &Value, new: &Value, at: &str) {
        self.compare_at(old, new, at, 0);
    }

    fn compare_at(&mut self, old: &Value, new: &Value, at: &str, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        self.visits += 1;
        if self.visits == MAX_VISITS {
            let reason = format!(
                "not compared further: the schemas are larger than {MAX_VISITS} nested schemas"
            );
            return self.note(true, at, reason);
        }
        if self.visits > MAX_VISITS {
            return;
        }
        if let (Some(old_ref), Some(new_ref)) = (
            old.get("$ref").and_then(Value::as_str),
            new.get("$ref").and_then(Value::as_str),
        ) {
            if !self.seen.insert((old_ref.to_owned(), new_ref.to_owned())) {
                return;
            }
        }
        let (Some(old_alternatives), Some(new_alternatives)) = (
            alternatives(self.old_root, old),
            alternatives(self.new_root, new),
        ) else {
            return self.compare_open(old, new, at);
        };
        let mut removed: Vec<&Alternative<'_>> = Vec::new();
        let mut matched: Vec<usize> = Vec::new();
        for old_alt in &old_alternatives {
            match new_alternatives.iter().position(|n| n.key == old_alt.key) {
                Some(index) => {
                    matched.push(index);
                    self.compare_alternative(old_alt, &new_alternatives[index], at, depth);
                }
                None => removed.push(old_alt),
            }
        }
        let added: Vec<&Alternative<'_>> = new_alternatives
            .iter()
            .enumerate()
            .filter(|(index, _)| !matched.contains(index))
            .map(|(_, alt)| alt)
            .collect();
        self.unmatched(removed, added, at);
    }

    /// One side (or both) allows any value.
    fn compare_open(&mut self, old: &Value, new: &Value, at: &str) {
        let inward = self.flow == Flow::In;
        match (
            alternatives(self.old_root, old),
            alternatives(self.new_root, new),
        ) {
            (None, Some(new_alternatives)) => {
                let kinds = keys(&new_alternatives);
                let reason = if inward {
                    format!("was any JSON value, now only {kinds}: callers sending anything else are refused")
                } else {
                    format!("was any JSON value, now {kinds}")
                };
                self.note(inward, at, reason);
            }
            (Some(old_alternatives), None) => {
                let kinds = keys(&old_alternatives);
                let reason = if inward {
                    format!("was {kinds}, now any JSON value")
                } else {
                    format!("was {kinds}, now any JSON value: callers cannot tell what they get")
                };
                self.note(!inward, at, reason);
            }
            _ => {}
        }
    }

    /// The kinds of value only the old schema allows (`removed`) and only the new one does.
    fn unmatched(
        &mut self,
        mut removed: Vec<&Alternative<'_>>,
        mut added: Vec<&Alternative<'_>>,
        at: &str,
    ) {
        let inward = self.flow == Flow::In;
        // An integer that became a number (or back) is a widening (or a narrowing).
        if take_pair(&mut removed, &mut added, "integer", "number") {
            let reason = if inward {
                "integer, now any number"
            } else {
                "integer, now any number: callers reading an integer fail on a fraction"
            };
            self.note(!inward, at, reason.to_owned());
        }
        if take_pair(&mut removed, &mut added, "number", "integer") {
            let reason = if inward {
                "any number, now an integer only: callers sending a fraction are refused"
            } else {
                "any number, now an integer only"
            };
            self.note(inward, at, reason.to_owned());
        }
        // One kind for another (a string that became an integer): one change, not two.
        let non_null = |alts: &[&Alternative<'_>]| alts.iter().all(|alt| alt.key != "null");
        if removed.len() == 1 && added.len() == 1 && non_null(&removed) && non_null(&added) {
            let reason = format!("type changed from {} to {}", removed[0].key, added[0].key);
            return self.note(true, at, reason);
        }
        for alt in removed {
            let reason = if inward {
                format!(
                    "no longer accepts {}: callers sending it are refused",
                    alt.key
                )
            } else {
                format!("is no longer {}", alt.key)
            };
            self.note(inward, at, reason);
        }
        for alt in added {
            let reason = if inward {
                format!("now also accepts {}", alt.key)
            } else {
                format!("may now be {}, which callers do not expect", alt.key)
            };
            self.note(!inward, at, reason);
        }
    }

    fn compare_alternative(
        &mut self,
        old: &Alternative<'_>,
        new: &Alternative<'_>,
        at: &str,
        depth: usize,
    ) {
        match old.key.as_str() {
            "object" => self.compare_object(old.schema, new.schema, at, depth),
            "array" => {
                let open = Value::Bool(true);
                let old_items = old.schema.get("items").unwrap_or(&open);
                let new_items = new.schema.get("items").unwrap_or(&open);
                self.compare_at(old_items, new_items, &format!("{at}[]"), depth + 1);
            }
            "integer" => self.compare_range(old.schema, new.schema, at),
            key if key.starts_with("variant ") => {
                let name = variant_name(old.schema).unwrap_or_default();
                let old_content = &old.schema["properties"][name];
                let new_content = &new.schema["properties"][name];
                self.compare_at(old_content, new_content, &join(at, name), depth + 1);
            }
            _ => {}
        }
    }

    fn compare_object(&mut self, old: &Value, new: &Value, at: &str, depth: usize) {
        let empty = Map::new();
        let old_properties = old.get("properties").and_then(Value::as_object);
        let new_properties = new.get("properties").and_then(Value::as_object);
        let (old_properties, new_properties) = (
            old_properties.unwrap_or(&empty),
            new_properties.unwrap_or(&empty),
        );
        let (old_required, new_required) = (required(old), required(new));
        let inward = self.flow == Flow::In;
        for (name, old_schema) in old_properties {
            let path = join(at, name);
            let was_required = old_required.contains(&name.as_str());
            let Some(new_schema) = new_properties.get(name) else {
                let reason = if inward {
                    "removed: callers that send it are no longer understood".to_owned()
                } else {
                    "removed: callers that read it no longer get it".to_owned()
                };
                self.note(true, &path, reason);
                continue;
            };
            let is_required = new_required.contains(&name.as_str());
            match (was_required, is_required, inward) {
                (false, true, true) => self.note(
                    true,
                    &path,
                    "became required: callers that leave it out are refused".to_owned(),
                ),
                (true, false, true) => self.note(false, &path, "became optional".to_owned()),
                (true, false, false) => self.note(
                    true,
                    &path,
                    "may now be missing: callers that read it fail".to_owned(),
                ),
                (false, true, false) => {
                    self.note(false, &path, "is now always present".to_owned());
                }
                _ => {}
            }
            self.compare_at(old_schema, new_schema, &path, depth + 1);
        }
        for name in new_properties.keys() {
            if old_properties.contains_key(name) {
                continue;
            }
            let path = join(at, name);
            let is_required = new_required.contains(&name.as_str());
            let (breaking, reason) = match (inward, is_required) {
                (true, true) => (
                    true,
                    "added as required: callers that do not send it are refused",
                ),
                (true, false) => (false, "added as optional"),
                (false, _) => (false, "added"),
            };
            self.note(breaking, &path, reason.to_owned());
        }
    }

    /// An integer's bounds (its `format`'s and any `minimum` / `maximum`).
    fn compare_range(&mut self, old: &Value, new: &Value, at: &str) {
        let (old_min, old_max) = bounds(old);
        let (new_min, new_max) = bounds(new);
        if (old_min, old_max) == (new_min, new_max) {
            return;
        }
        let narrowed = new_min > old_min || new_max < old_max;
        let widened = new_min < old_min || new_max > old_max;
        let range = format!("[{old_min}, {old_max}] became [{new_min}, {new_max}]");
        if self.flow == Flow::In {
            let why = if narrowed {
                ": callers sending values outside it are refused"
            } else {
                ""
            };
            self.note(narrowed, at, format!("integer range {range}{why}"));
        } else {
            let why = if widened {
                ": callers may not hold the new values"
            } else {
                ""
            };
            self.note(widened, at, format!("integer range {range}{why}"));
        }
    }
}

/// Takes `from` out of `removed` and `to` out of `added` if both are there.
fn take_pair(
    removed: &mut Vec<&Alternative<'_>>,
    added: &mut Vec<&Alternative<'_>>,
    from: &str,
    to: &str,
) -> bool {
    let (Some(r), Some(a)) = (
        removed.iter().position(|alt| alt.key == from),
        added.iter().position(|alt| alt.key == to),
    ) else {
        return false;
    };
    removed.remove(r);
    added.remove(a);
    true
}

fn join(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_owned()
    } else {
        format!("{at}.{name}")
    }
}

fn keys(alternatives: &[Alternative<'_>]) -> String {
    let keys: Vec<&str> = alternatives.iter().map(|alt| alt.key.as_str()).collect();
    keys.join(" or ")
}

fn required(schema: &Value) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The bounds of an integer schema: its format's, narrowed by `minimum` and `maximum`.
fn bounds(schema: &Value) -> (i128, i128) {
    let (mut low, mut high) = match schema.get("format").and_then(Value::as_str) {
        Some("int8") => (i128::from(i8::MIN), i128::from(i8::MAX)),
        Some("int16") => (i128::from(i16::MIN), i128::from(i16::MAX)),
        Some("int32") => (i128::from(i32::MIN), i128::from(i32::MAX)),
        Some("int64") => (i128::from(i64::MIN), i128::from(i64::MAX)),
        Some("uint8") => (0, i128::from(u8::MAX)),
        Some("uint16") => (0, i128::from(u16::MAX)),
        Some("uint32") => (0, i128::from(u32::MAX)),
        Some("uint64") => (0, i128::from(u64::MAX)),
        _ => (i128::MIN, i128::MAX),
    };
    if let Some(minimum) = schema.get("minimum").and_then(Value::as_f64) {
        low = low.max(minimum.ceil() as i128);
    }
    if let Some(maximum) = schema.get("maximum").and_then(Value::as_f64) {
        high = high.min(maximum.floor() as i128);
    }
    (low, high)
}

/// `schema` with its `$ref` followed (into `root`'s `$defs` or `definitions`); `None` when the
/// reference leads nowhere this document says.
fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> Option<&'a Value> {
    for _ in 0..MAX_HOPS {
        let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
            return Some(schema);
        };
        let pointer = reference.strip_prefix('#')?;
        schema = root.pointer(pointer)?;
    }
    None
}

/// The name of a tagged enum's variant: an object with exactly one property, required, and no
/// other (`{"NotFound": {...}}`).
fn variant_name(schema: &Value) -> Option<&str> {
    let properties = schema.get("properties")?.as_object()?;
    let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
    let required = required(schema);
    match (properties.len(), required.as_slice()) {
        (1, [name]) if closed && properties.contains_key(*name) => Some(name),
        _ => None,
    }
}

/// The kinds of value `schema` allows; `None` when it allows any (an open schema, `{}` or
/// `true`, or one this comparison cannot read).
fn alternatives<'a>(root: &'a Value, schema: &'a Value) -> Option<Vec<Alternative<'a>>> {
    let mut found = Vec::new();
    let mut budget = MAX_UNION_NODES;
    collect(root, schema, &mut found, 0, &mut budget).then_some(found)
}

/// Adds the alternatives of `schema` to `found`; false when it allows any value.
fn collect<'a>(
    root: &'a Value,
    schema: &'a Value,
    found: &mut Vec<Alternative<'a>>,
    depth: usize,
    budget: &mut usize,
) -> bool {
    // Unions of references to unions fan out: a schema past the budget is read as open.
    if depth > MAX_DEPTH || *budget == 0 {
        return false;
    }
    *budget -= 1;
    let Some(schema) = resolve(root, schema) else {
        return false;
    };
    let Some(object) = schema.as_object() else {
        // `true` allows anything; `false` nothing.
        return schema == &Value::Bool(false);
    };
    if let Some(value) = object.get("const") {
        push(found, format!("the value {value}"), schema);
        return true;
    }
    if let Some(values) = object.get("enum").and_then(Value::as_array) {
        for value in values {
            push(found, format!("the value {value}"), schema);
        }
        return true;
    }
    for union in ["anyOf", "oneOf"] {
        if let Some(members) = object.get(union).and_then(Value::as_array) {
            return members
                .iter()
                .all(|member| collect(root, member, found, depth + 1, budget));
        }
    }
    let types: Vec<&str> = match object.get("type") {
        Some(Value::String(kind)) => vec![kind.as_str()],
        Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).collect(),
        _ if object.contains_key("properties") => vec!["object"],
        _ if object.contains_key("items") => vec!["array"],
        _ => return false,
    };
    for kind in types {
        let key = match (kind, variant_name(schema)) {
            ("object", Some(name)) => format!("variant `{name}`"),
            (kind, _) => kind.to_owned(),
        };
        push(found, key, schema);
    }
    true
}

fn push<'a>(found: &mut Vec<Alternative<'a>>, key: String, schema: &'a Value) {
    if !found.iter().any(|alt| alt.key == key) {
        found.push(Alternative { key, schema });
    }
}
