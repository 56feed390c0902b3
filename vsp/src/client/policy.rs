//! Per-endpoint call policy: timeout, attempts, idempotence and hedging, declared on the trait
//! method (`#[vsp(...)]`) and overridable at run time from a configuration value, with one
//! precedence (see [`Policies`]).

use std::time::Duration;

use serde::Deserialize;

use crate::error::VspError;
use crate::fast_map::FastMap;

/// When a second attempt of an idempotent call is sent to another instance while the first one
/// still waits (a hedged call): the first answer wins and the other attempt is cancelled.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Hedge {
    /// After a fixed delay.
    After(Duration),
    /// After the endpoint's latency at this quantile (in `0.0..1.0`, such as `0.95`) of the
    /// calls this client has made to it; before 20 calls have been measured, no hedge.
    Percentile(f64),
    /// Never (turns off a hedge declared on the method).
    Off,
}

/// How calls to one endpoint are made: each field, when set, overrides the client's default.
///
/// Declared on a trait method with `#[vsp(timeout_ms = 300, max_attempts = 2, idempotent,
/// hedge_after_ms = 20)]` (or `hedge_percentile = 0.95`), or given at run time by [`Policies`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct EndpointPolicy {
    /// The call's deadline.
    pub timeout: Option<Duration>,
    /// Attempts at most (retries after failures, hedges included).
    pub max_attempts: Option<u32>,
    /// Whether the call may run twice (retried after it was written, hedged).
    pub idempotent: Option<bool>,
    /// Whether and when an idempotent call is hedged.
    pub hedge: Option<Hedge>,
}

impl EndpointPolicy {
    /// No field set: the client's defaults.
    pub const fn new() -> Self {
        EndpointPolicy {
            timeout: None,
            max_attempts: None,
            idempotent: None,
            hedge: None,
        }
    }

    /// Each field of `self`, or `other`'s where `self` has none.
    pub(crate) fn or(self, other: EndpointPolicy) -> EndpointPolicy {
        EndpointPolicy {
            timeout: self.timeout.or(other.timeout),
            max_attempts: self.max_attempts.or(other.max_attempts),
            idempotent: self.idempotent.or(other.idempotent),
            hedge: self.hedge.or(other.hedge),
        }
    }
}

/// Run-time policy for a client's calls, per service and endpoint, from a JSON configuration
/// value (in the spirit of gRPC's service config); set with
/// [`VspClientBuilder::policies`](crate::VspClientBuilder::policies) or, while the client runs,
/// [`VspClient::set_policies`](crate::VspClient::set_policies).
///
/// The format: services by name, each with endpoints by wire name and `"*"` for the rest of that
/// service's endpoints; every field optional.
///
/// ```
/// use vsp::{Hedge, Policies};
///
/// let policies = Policies::from_json(r#"{
///     "user-service": {
///         "*":        { "timeout_ms": 2000 },
///         "get_user": { "timeout_ms": 300, "max_attempts": 3, "idempotent": true,
///                       "hedge": { "after_ms": 20 } },
///         "search":   { "hedge": { "percentile": 0.95 } },
///         "delete":   { "idempotent": false, "hedge": "off" }
///     }
/// }"#)?;
/// let get_user = policies.get("user-service", "get_user");
/// assert_eq!(get_user.hedge, Some(Hedge::After(std::time::Duration::from_millis(20))));
/// assert_eq!(policies.get("user-service", "other").timeout, Some(std::time::Duration::from_secs(2)));
/// # Ok::<(), vsp::VspError>(())
/// ```
///
/// # Precedence
///
/// For each field, the first that sets it wins:
/// 1. the call's own [`CallOptions`](crate::CallOptions) (`timeout`, `max_attempts`, `hedge`;
///    `idempotent(true)`),
/// 2. these policies: the endpoint's entry, then its service's `"*"`,
/// 3. the trait method's `#[vsp(...)]` declaration,
/// 4. the client's defaults ([`VspClientBuilder`](crate::VspClientBuilder)).
///
/// So an operator can shorten a timeout or withdraw a hedge without a rebuild, and a call site
/// that states its own needs keeps them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policies {
    services: FastMap<String, ServicePolicies>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct ServicePolicies {
    all: EndpointPolicy,
    endpoints: FastMap<String, EndpointPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    idempotent: Option<bool>,
    hedge: Option<RawHedge>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawHedge {
    Off(OffWord),
    After { after_ms: u64 },
    Percentile { percentile: f64 },
}

#[derive(Deserialize)]
enum OffWord {
    #[serde(rename = "off")]
    Off,
}

fn invalid(message: String) -> VspError {
    VspError::InvalidConfig(message)
}

impl RawPolicy {
    fn into_policy(self, at: &str) -> Result<EndpointPolicy, VspError> {
        if self.max_attempts == Some(0) {
            return Err(invalid(format!("{at}: max_attempts must be at least 1")));
        }
        let hedge = match self.hedge {
            None => None,
            Some(RawHedge::Off(OffWord::Off)) => Some(Hedge::Off),
            Some(RawHedge::After { after_ms }) => {
                Some(Hedge::After(Duration::from_millis(after_ms)))
            }
            Some(RawHedge::Percentile { percentile }) if percentile > 0.0 && percentile < 1.0 => {
                Some(Hedge::Percentile(percentile))
            }
            Some(RawHedge::Percentile { percentile }) => {
                return Err(invalid(format!(
                "{at}: a hedge percentile is a fraction between 0 and 1 (0.95), not {percentile}"
            )))
            }
        };
        Ok(EndpointPolicy {
            timeout: self.timeout_ms.map(Duration::from_millis),
            max_attempts: self.max_attempts,
            idempotent: self.idempotent,
            hedge,
        })
    }
}

impl Policies {
    /// No policy: every call as declared on its method, or the client's defaults.
    pub fn new() -> Self {
        Policies::default()
    }

    /// Reads policies from their JSON form (see the type's docs).
    ///
    /// # Errors
    /// [`VspError::InvalidConfig`] naming the service and endpoint of a field that is unknown,
    /// of the wrong type, or out of range.
    pub fn from_json(json: &str) -> Result<Self, VspError> {
        let raw: FastMap<String, FastMap<String, serde_json::Value>> =
            serde_json::from_str(json).map_err(|err| invalid(format!("policies: {err}")))?;
        let mut policies = Policies::new();
        for (service, endpoints) in raw {
            for (endpoint, value) in endpoints {
                let at = format!("policies of `{service}`.`{endpoint}`");
                let raw: RawPolicy = serde_json::from_value(value).map_err(|err| {
                    invalid(format!(
                        "{at}: {err} (fields: timeout_ms, max_attempts, idempotent, hedge: {{\"after_ms\": N}} | {{\"percentile\": F}} | \"off\")"
                    ))
                })?;
                policies = policies.with(&service, &endpoint, raw.into_policy(&at)?);
            }
        }
        Ok(policies)
    }

    /// These policies with `policy` for `endpoint` of `service` (`"*"`: its other endpoints).
    #[must_use]
    pub fn with(mut self, service: &str, endpoint: &str, policy: EndpointPolicy) -> Self {
        let entry = self.services.entry(service.to_owned()).or_default();
        if endpoint == "*" {
            entry.all = policy;
        } else {
            entry.endpoints.insert(endpoint.to_owned(), policy);
        }
        self
    }

    /// The policy these give `endpoint` of `service`: its own entry's fields, then its service's
    /// `"*"`.
    pub fn get(&self, service: &str, endpoint: &str) -> EndpointPolicy {
        match self.services.get(service) {
            None => EndpointPolicy::new(),
            Some(entry) => entry
                .endpoints
                .get(endpoint)
                .copied()
                .unwrap_or_default()
                .or(entry.all),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// A call's policy once every source is weighed (the precedence in [`Policies`]).
pub(super) struct Resolved {
    pub(super) timeout: Duration,
    pub(super) max_attempts: usize,
    /// May run twice: idempotent, or the client retries every call.
    pub(super) repeatable: bool,
    /// When to hedge (only an idempotent unary call is hedged).
    pub(super) hedge: Option<Duration>,
    /// The hash key to route by.
    pub(super) key: Option<u64>,
}

/// The metadata entry a call without its own hash key is routed by.
pub(crate) const HASH_KEY_METADATA: &str = "vsp-hash-key";

impl super::VspClient {
    pub(super) fn resolve(
        &self,
        service: &str,
        endpoint: &str,
        options: &super::CallOptions,
        metadata: Option<&crate::protocol::Metadata>,
    ) -> Resolved {
        let config = &self.inner.config;
        let declared = options.declared.copied().unwrap_or_default();
        let configured = match self.inner.policies.load().as_deref() {
            Some(policies) => policies.get(service, endpoint).or(declared),
            None => declared,
        };
        let idempotent = options.idempotent || configured.idempotent.unwrap_or(false);
        let hedge = match options.hedge.or(configured.hedge) {
            _ if !idempotent || options.stream => None,
            Some(Hedge::After(delay)) => Some(delay),
            Some(Hedge::Percentile(q)) => self.inner.counters.quantile(service, endpoint, q),
            Some(Hedge::Off) | None => None,
        };
        Resolved {
            timeout: options
                .timeout
                .or(configured.timeout)
                .unwrap_or(self.timeout),
            max_attempts: options
                .max_attempts
                .or(configured.max_attempts)
                .unwrap_or(config.max_attempts)
                .max(1) as usize,
            repeatable: idempotent || config.retry_written_calls,
            hedge,
            key: options.hash_key.or_else(|| {
                let value = metadata?.get(HASH_KEY_METADATA)?;
                Some(super::builder::key_hash(value))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_policies_are_refused_with_the_place_named() {
        for (json, expected) in [
            (r#"{"s": {"e": {"timeout": 5}}}"#, "`s`.`e`"),
            (r#"{"s": {"e": {"max_attempts": 0}}}"#, "at least 1"),
            (
                r#"{"s": {"e": {"hedge": {"percentile": 95}}}}"#,
                "between 0 and 1",
            ),
            (r#"{"s": {"e": {"hedge": "sometimes"}}}"#, "`s`.`e`"),
            (r#"["s"]"#, "policies"),
        ] {
            let error = Policies::from_json(json).unwrap_err().to_string();
            assert!(error.contains(expected), "{json}: {error}");
        }
    }

    #[test]
    fn an_endpoint_entry_falls_back_to_its_service_default() {
        let policies = Policies::from_json(
            r#"{"s": {"*": {"timeout_ms": 100, "max_attempts": 2}, "e": {"max_attempts": 5, "hedge": "off"}}}"#,
        )
        .unwrap();
        let e = policies.get("s", "e");
        assert_eq!(e.timeout, Some(Duration::from_millis(100)));
        assert_eq!(e.max_attempts, Some(5));
        assert_eq!(e.hedge, Some(Hedge::Off));
        assert_eq!(policies.get("t", "e"), EndpointPolicy::new());
    }
}
