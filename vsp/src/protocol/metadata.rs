//! `Metadata`: the per-call string map of the `meta` request header key.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::Deserializer;

/// The most entries a request's metadata may have.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// The most bytes (keys and values together) a request's metadata may have.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// Per-call metadata: a small map of string keys to string values that travels in the request
/// header (the `meta` header key, which Velithon ignores), like gRPC's metadata or HTTP headers.
///
/// Keys are case-insensitive: they are stored in lowercase. Setting a key again replaces it.
///
/// ```
/// let mut metadata = vsp::Metadata::new();
/// metadata.insert("Authorization", "Bearer s3cret");
/// metadata.insert("x-tenant", "acme");
/// assert_eq!(metadata.get("authorization"), Some("Bearer s3cret"));
/// assert_eq!(metadata.len(), 2);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: Vec<(Box<str>, Box<str>)>,
}

impl fmt::Debug for Metadata {
    /// Values of `authorization`-like keys are not printed: logs must not leak credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in self.iter() {
            if is_secret(key) {
                map.entry(&key, &"<redacted>");
            } else {
                map.entry(&key, &value);
            }
        }
        map.finish()
    }
}

fn is_secret(key: &str) -> bool {
    key == "authorization" || key.contains("token") || key.contains("secret") || key == "cookie"
}

impl Metadata {
    /// An empty map (no allocation until the first insert).
    pub const fn new() -> Self {
        Metadata {
            entries: Vec::new(),
        }
    }

    /// Sets `key` (stored lowercase) to `value`; returns the value it replaces.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        let mut key = key.into();
        key.make_ascii_lowercase();
        let value = value.into().into_boxed_str();
        match self.entries.iter_mut().find(|(k, _)| **k == *key) {
            Some((_, old)) => Some(std::mem::replace(old, value).into()),
            None => {
                self.entries.push((key.into_boxed_str(), value));
                None
            }
        }
    }

    /// The value of `key` (any case).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| &**v)
    }

    /// Removes `key` (any case); returns its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let at = self
            .entries
            .iter()
            .position(|(k, _)| k.eq_ignore_ascii_case(key))?;
        Some(self.entries.remove(at).1.into())
    }

    /// The entries, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (&**k, &**v))
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True without entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sets every entry of `other` here, replacing keys both have.
    pub fn extend_from(&mut self, other: &Metadata) {
        for (key, value) in other.iter() {
            self.insert(key, value);
        }
    }

    /// Decodes the `meta` header value: an object of strings within the limits above.
    pub(crate) fn from_json(raw: &str) -> Result<Metadata, String> {
        let mut deserializer = serde_json::Deserializer::from_str(raw);
        let metadata = deserializer
            .deserialize_map(MetadataVisitor)
            .map_err(|err| format!("the `meta` header must be an object of strings: {err}"))?;
        let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if metadata.len() > MAX_METADATA_ENTRIES || bytes > MAX_METADATA_BYTES {
            return Err(format!(
                "the `meta` header has {} entries and {bytes} bytes; the limits are {MAX_METADATA_ENTRIES} entries and {MAX_METADATA_BYTES} bytes",
                metadata.len()
            ));
        }
        Ok(metadata)
    }
}

struct MetadataVisitor;

impl<'de> Visitor<'de> for MetadataVisitor {
    type Value = Metadata;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
        let mut metadata = Metadata::new();
        while let Some((key, value)) = map.next_entry::<String, String>()? {
            // Bounded here too, so a huge map is refused before it is all kept.
            if metadata.len() > MAX_METADATA_ENTRIES {
                return Err(serde::de::Error::custom(format!(
                    "more than {MAX_METADATA_ENTRIES} entries"
                )));
            }
            metadata.insert(key, value);
        }
        Ok(metadata)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut metadata = Metadata::new();
        for (key, value) in iter {
            metadata.insert(key, value);
        }
        metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_case_insensitive_and_replaced() {
        let mut metadata = Metadata::new();
        assert_eq!(metadata.insert("X-Trace", "1"), None);
        assert_eq!(metadata.insert("x-trace", "2").as_deref(), Some("1"));
        assert_eq!(metadata.get("X-TRACE"), Some("2"));
        assert_eq!(metadata.remove("x-Trace").as_deref(), Some("2"));
        assert!(metadata.is_empty());
    }

    #[test]
    fn the_header_value_is_an_object_of_strings_within_limits() {
        let metadata = Metadata::from_json(r#"{"Authorization":"Bearer t","a":"b"}"#).unwrap();
        assert_eq!(metadata.get("authorization"), Some("Bearer t"));
        let err = Metadata::from_json(r#"{"a":1}"#).unwrap_err();
        assert!(err.contains("object of strings"), "{err}");
        let err = Metadata::from_json(r#"["a"]"#).unwrap_err();
        assert!(err.contains("object of strings"), "{err}");
        let many: String = (0..100)
            .map(|i| format!("\"k{i}\":\"v\""))
            .collect::<Vec<_>>()
            .join(",");
        let err = Metadata::from_json(&format!("{{{many}}}")).unwrap_err();
        assert!(err.contains("64 entries"), "{err}");
        let big = "x".repeat(MAX_METADATA_BYTES);
        let err = Metadata::from_json(&format!(r#"{{"k":"{big}"}}"#)).unwrap_err();
        assert!(err.contains("16384 bytes"), "{err}");
    }

    #[test]
    fn debug_output_hides_credentials() {
        let metadata: Metadata = [("authorization", "Bearer s3cret"), ("x-tenant", "acme")]
            .into_iter()
            .collect();
        let shown = format!("{metadata:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("acme"),
            "{shown}"
        );
    }
}
