//! Reading the agent's `/v1/health/service` answer into instances.

use super::*;

/// One entry of `/v1/health/service/<name>`.
#[derive(Debug, Deserialize)]
struct HealthEntry {
    #[serde(rename = "Node")]
    node: NodeEntry,
    #[serde(rename = "Service")]
    service: ServiceEntry,
}

#[derive(Debug, Deserialize)]
struct NodeEntry {
    #[serde(rename = "Address", default)]
    address: String,
}

#[derive(Debug, Deserialize)]
struct ServiceEntry {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Service")]
    name: String,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Port")]
    port: u16,
    #[serde(rename = "Weights", default)]
    weights: Option<Weights>,
    #[serde(rename = "Meta", default)]
    meta: Option<HashMap<String, String>>,
    #[serde(rename = "Tags", default)]
    tags: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct Weights {
    #[serde(rename = "Passing", default)]
    passing: Option<f64>,
}

/// Parses a health answer into instances; entries of an unknown protocol version are skipped.
pub(super) fn parse_health(body: &[u8]) -> Result<Vec<ServiceInfo>, String> {
    let entries: Vec<HealthEntry> =
        serde_json::from_slice(body).map_err(|err| format!("malformed answer: {err}"))?;
    let mut instances = Vec::with_capacity(entries.len());
    for entry in entries {
        let service = entry.service;
        if let Some(version) = service.meta.as_ref().and_then(|m| m.get("vsp_version")) {
            if version.trim() != PROTOCOL_VERSION.to_string() {
                tracing::warn!(id = %service.id, %version, "skipping a Consul instance of another protocol version");
                continue;
            }
        }
        let address = if service.address.is_empty() {
            entry.node.address
        } else {
            service.address
        };
        if address.is_empty() {
            tracing::warn!(id = %service.id, "skipping a Consul instance without an address");
            continue;
        }
        let weight = service
            .weights
            .and_then(|w| w.passing)
            .filter(|w| w.is_finite() && *w > 0.0)
            .unwrap_or(1.0);
        let tls = service
            .meta
            .as_ref()
            .and_then(|m| m.get("tls"))
            .is_some_and(|tls| tls.trim() == "1")
            || service.tags.iter().flatten().any(|tag| tag == "tls");
        instances.push(
            ServiceInfo::new(service.name, address, service.port)
                .with_weight(weight)
                .with_tls(tls),
        );
    }
    Ok(instances)
}
