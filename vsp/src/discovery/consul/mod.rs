//! Consul: register with a health check, watch with blocking queries, deregister on shutdown.
//!
//! Why `/v1/health/service/<name>?passing=true` and not the catalog: the catalog lists every
//! registered instance, dead or alive; the health endpoint with `passing` lists only those whose
//! checks (and whose node) pass, so Consul's own checks decide who gets traffic. Why blocking
//! queries: the agent holds the request until something changes (or `wait` passes), so the mesh
//! learns of a change at once, without polling in a loop.
//!
//! When the agent stops answering, the mesh keeps the instances it last knew and the watch
//! retries with backoff; only a service that never had an answer reports the failure to callers.

mod config;
mod health;

pub use config::{ConsulCheck, ConsulConfig};
use health::parse_health;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use tokio::task::AbortHandle;

use super::MeshRegistry;
use super::{BoxFuture, Discovery};
use crate::error::VspError;
use crate::instance::ServiceInfo;
use crate::protocol::PROTOCOL_VERSION;

/// Discovery and registration through a Consul agent.
///
/// ```no_run
/// use vsp::{ServiceMesh, VspClient, VspManager};
/// use vsp::discovery::{ConsulConfig, ConsulDiscovery};
///
/// # async fn example() -> Result<(), vsp::VspError> {
/// let consul = || ConsulDiscovery::new(ConsulConfig::new("http://127.0.0.1:8500").token("secret"));
///
/// // Registered with a TCP check on start, deregistered on shutdown.
/// let manager = VspManager::builder("user-service")
///     .mesh(ServiceMesh::builder().discovery(consul()).build())
///     .build();
/// manager.start_server("127.0.0.1", 9090).await?;
///
/// // Instances whose checks pass, kept current by blocking queries.
/// let client = VspClient::builder(ServiceMesh::builder().discovery(consul()).build()).build();
/// client.call("user-service", "health", serde_json::json!({})).await?;
/// # Ok(())
/// # }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "consul")))]
pub struct ConsulDiscovery {
    shared: Arc<Shared>,
}

struct Shared {
    config: ConsulConfig,
    http: reqwest::Client,
    /// Set by `start`.
    registry: Mutex<Option<MeshRegistry>>,
    /// Services with a watch running.
    watches: Mutex<HashMap<String, Watch>>,
    /// Registrations of this process, by server `host:port`: service ID and heartbeat.
    announced: Mutex<HashMap<String, (String, Option<AbortHandle>)>>,
}

/// One service's watch.
struct Watch {
    task: AbortHandle,
    /// Whether the agent has answered for this service.
    answered: bool,
    /// Until it has: the last failure.
    failure: String,
}

impl std::fmt::Debug for ConsulDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulDiscovery")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl ConsulDiscovery {
    /// A discovery talking to the agent at `config.address`.
    pub fn new(config: ConsulConfig) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        ConsulDiscovery {
            shared: Arc::new(Shared {
                config,
                http,
                registry: Mutex::new(None),
                watches: Mutex::new(HashMap::new()),
                announced: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Drop for ConsulDiscovery {
    fn drop(&mut self) {
        for (_, watch) in lock(&self.shared.watches).drain() {
            watch.task.abort();
        }
        for (_, (_, heartbeat)) in lock(&self.shared.announced).drain() {
            if let Some(heartbeat) = heartbeat {
                heartbeat.abort();
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn consul_error(reason: impl Into<String>) -> VspError {
    VspError::Discovery {
        backend: "consul",
        reason: reason.into(),
    }
}

/// A duration as Consul (Go) writes it.
fn go_duration(duration: Duration) -> String {
    format!("{}ms", duration.as_millis().max(1))
}

/// Percent-encodes a path segment.
fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Shared {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.config.address.trim_end_matches('/'), path)
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.config.token {
            Some(token) => request.header("X-Consul-Token", token),
            None => request,
        }
    }

    /// Starts watching `service` once, if a runtime and the mesh are there.
    fn watch(self: &Arc<Self>, service: &str) {
        let Some(registry) = lock(&self.registry).clone() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut watches = lock(&self.watches);
        if watches.contains_key(service) {
            return;
        }
        if watches.len() >= self.config.max_watches {
            tracing::debug!(%service, "not watched: at max_watches ({})", self.config.max_watches);
            return;
        }
        let task = runtime.spawn(watch_service(
            Arc::downgrade(self),
            registry,
            service.to_owned(),
        ));
        watches.insert(
            service.to_owned(),
            Watch {
                task: task.abort_handle(),
                answered: false,
                failure: "no answer from Consul yet".to_owned(),
            },
        );
    }

    /// True when `service` was not watched for want of a place (see `max_watches`).
    fn refused(&self, service: &str) -> bool {
        let watches = lock(&self.watches);
        !watches.contains_key(service) && watches.len() >= self.config.max_watches
    }

    async fn put(
        &self,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<reqwest::StatusCode, VspError> {
        let url = self.url(path);
        let mut request = self
            .request(reqwest::Method::PUT, &url)
            .timeout(Duration::from_secs(10));
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|err| consul_error(format!("PUT {url}: {err}")))?;
        Ok(response.status())
    }
}

impl Discovery for ConsulDiscovery {
    fn start(&self, registry: MeshRegistry) {
        *lock(&self.shared.registry) = Some(registry);
        for service in self.shared.config.services.clone() {
            self.shared.watch(&service);
        }
    }

    fn watch(&self, service: &str) {
        self.shared.watch(service);
    }

    fn resolution_error(&self, service: &str) -> Option<VspError> {
        let shared = &self.shared;
        if shared.refused(service) {
            return Some(consul_error(format!(
                "`{service}` is not watched: Consul discovery already watches {} services, its \
                 `max_watches`",
                shared.config.max_watches
            )));
        }
        let watches = lock(&shared.watches);
        let watch = watches.get(service).filter(|watch| !watch.answered)?;
        Some(consul_error(format!(
            "no instance of `{service}` known: Consul at {} never answered ({})",
            shared.config.address, watch.failure
        )))
    }

    fn has_answered(&self, service: &str) -> bool {
        let shared = &self.shared;
        let watches = lock(&shared.watches);
        match watches.get(service) {
            Some(watch) => watch.answered,
            // Not watched: refused (no point waiting), or no runtime or mesh yet (wait).
            None => watches.len() >= shared.config.max_watches,
        }
    }

    fn first_resolution_wait(&self) -> Duration {
        self.shared.config.first_resolution_wait
    }

    fn announce<'a>(&'a self, info: &'a ServiceInfo) -> BoxFuture<'a, Result<(), VspError>> {
        Box::pin(async move {
            super::require_tcp("consul", info)?;
            let shared = &self.shared;
            let config = &shared.config;
            let unspecified = matches!(info.host(), "0.0.0.0" | "::");
            // An empty address makes Consul use the node's.
            let address = if unspecified { "" } else { info.host() };
            let dial = if unspecified {
                format!("127.0.0.1:{}", info.port())
            } else {
                info.address().to_string()
            };
            let id = format!("{}-{}", info.name(), info.address());
            let mut tags = config.tags.clone();
            if !tags.iter().any(|t| t == "vsp") {
                tags.push("vsp".to_owned());
            }
            let mut meta = serde_json::json!({ "vsp_version": PROTOCOL_VERSION.to_string() });
            if info.is_tls() {
                meta["tls"] = "1".into();
                if !tags.iter().any(|t| t == "tls") {
                    tags.push("tls".to_owned());
                }
            }
            let deregister_after = go_duration(config.deregister_critical_after);
            let check = match &config.check {
                ConsulCheck::Tcp { interval, timeout } => serde_json::json!({
                    "TCP": dial,
                    "Interval": go_duration(*interval),
                    "Timeout": go_duration(*timeout),
                    "DeregisterCriticalServiceAfter": deregister_after,
                }),
                ConsulCheck::Ttl { ttl } => serde_json::json!({
                    "TTL": go_duration(*ttl),
                    "DeregisterCriticalServiceAfter": deregister_after,
                }),
            };
            let body = serde_json::json!({
                "ID": id,
                "Name": info.name(),
                "Tags": tags,
                "Address": address,
                "Port": info.port(),
                "Meta": meta,
                // Consul weights are integers of at least 1.
                "Weights": { "Passing": info.weight().round().max(1.0) as u64, "Warning": 1 },
                "Check": check,
            });
            let status = shared.put("/v1/agent/service/register", Some(body)).await?;
            if !status.is_success() {
                return Err(consul_error(format!(
                    "registering {id} with {}: HTTP {status}",
                    config.address
                )));
            }
            let heartbeat = match config.check {
                ConsulCheck::Ttl { ttl } => Some(
                    tokio::spawn(heartbeat(
                        Arc::downgrade(shared),
                        format!("service:{id}"),
                        ttl,
                    ))
                    .abort_handle(),
                ),
                ConsulCheck::Tcp { .. } => None,
            };
            tracing::info!(%id, agent = %config.address, "registered with Consul");
            lock(&shared.announced).insert(info.address().to_string(), (id, heartbeat));
            Ok(())
        })
    }

    fn withdraw<'a>(&'a self, info: &'a ServiceInfo) -> BoxFuture<'a, Result<(), VspError>> {
        Box::pin(async move {
            let Some((id, heartbeat)) =
                lock(&self.shared.announced).remove(&info.address().to_string())
            else {
                return Ok(());
            };
            if let Some(heartbeat) = heartbeat {
                heartbeat.abort();
            }
            let path = format!("/v1/agent/service/deregister/{}", path_segment(&id));
            let status = self.shared.put(&path, None).await?;
            // 404: already gone (deregistered as critical, or by hand).
            if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
                tracing::info!(%id, "deregistered from Consul");
                Ok(())
            } else {
                Err(consul_error(format!("deregistering {id}: HTTP {status}")))
            }
        })
    }
}

/// Keeps a TTL check passing while the server runs.
async fn heartbeat(shared: std::sync::Weak<Shared>, check_id: String, ttl: Duration) {
    let every = (ttl / 3).max(Duration::from_millis(10));
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let path = format!("/v1/agent/check/pass/{}", path_segment(&check_id));
        match shared.put(&path, None).await {
            Ok(status) if status.is_success() => {}
            Ok(status) => tracing::warn!(%check_id, "Consul refused the heartbeat: HTTP {status}"),
            Err(err) => tracing::warn!(%check_id, "heartbeat failed: {err}"),
        }
        drop(shared);
        tokio::time::sleep(every).await;
    }
}

/// The blocking-query loop of one service.
// Its complexity is mostly the branches inside `tracing`'s event macros and `tokio::select!`,
// which clippy counts after expansion; the logic itself is one loop with a few outcomes.
#[allow(clippy::cognitive_complexity)]
async fn watch_service(shared: std::sync::Weak<Shared>, registry: MeshRegistry, service: String) {
    let mut index: u64 = 0;
    let mut known: HashSet<(String, u16)> = HashSet::new();
    let mut failures: u32 = 0;
    let mut last_picked = tokio::time::Instant::now();
    // At most one query per this, however fast the agent answers.
    let min_interval = Duration::from_millis(50);
    loop {
        if registry.is_closed() {
            return;
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let started = tokio::time::Instant::now();
        let outcome = query(&shared, &service, index).await;
        match outcome {
            Ok((instances, next_index)) => {
                failures = 0;
                let first_answer = lock(&shared.watches)
                    .get_mut(&service)
                    .is_some_and(|watch| !std::mem::replace(&mut watch.answered, true));
                // Reset when the index goes backwards (the agent restarted); never below 1.
                index = if next_index < index {
                    0
                } else {
                    next_index.max(1)
                };
                let now: HashSet<(String, u16)> = instances
                    .iter()
                    .map(|i| (i.host().to_owned(), i.port()))
                    .collect();
                for info in instances {
                    if let Err(err) = registry.upsert(info) {
                        tracing::warn!(%service, "skipping a Consul instance: {err}");
                    }
                }
                for (host, port) in known.difference(&now) {
                    registry.remove(&service, host, *port);
                }
                known = now;
                if first_answer {
                    registry.answered(&service);
                }
            }
            Err(reason) => {
                failures += 1;
                if let Some(watch) = lock(&shared.watches).get_mut(&service) {
                    watch.failure = reason.clone();
                }
                tracing::warn!(%service, agent = %shared.config.address, "Consul watch failed, keeping the last known instances: {reason}");
                index = 0;
            }
        }
        if registry.take_picked(&service) {
            last_picked = tokio::time::Instant::now();
        } else if !shared.config.services.contains(&service)
            && last_picked.elapsed() >= shared.config.unused_watch_timeout
        {
            tracing::debug!(%service, "stopping the Consul watch of a service no call used for {:?}", shared.config.unused_watch_timeout);
            // Under the lock, so no new watch of it starts before its instances are gone.
            let mut watches = lock(&shared.watches);
            for (host, port) in &known {
                registry.remove(&service, host, *port);
            }
            watches.remove(&service);
            return;
        }
        drop(shared);
        let backoff = if failures == 0 {
            min_interval
        } else {
            (Duration::from_millis(100) * 2u32.saturating_pow(failures.min(7)))
                .min(Duration::from_secs(10))
        };
        tokio::time::sleep_until(started + backoff).await;
    }
}

/// One blocking query: the passing instances and the next index.
async fn query(
    shared: &Shared,
    service: &str,
    index: u64,
) -> Result<(Vec<ServiceInfo>, u64), String> {
    let mut url = shared.url(&format!(
        "/v1/health/service/{}?passing=true",
        path_segment(service)
    ));
    if index > 0 {
        url.push_str(&format!(
            "&index={index}&wait={}",
            go_duration(shared.config.wait)
        ));
    }
    if let Some(dc) = &shared.config.datacenter {
        url.push_str(&format!("&dc={}", path_segment(dc)));
    }
    let response = shared
        .request(reqwest::Method::GET, &url)
        // The agent may hold the query for `wait`, plus its jitter (wait / 16).
        .timeout(shared.config.wait + shared.config.wait / 16 + Duration::from_secs(5))
        .send()
        .await
        .map_err(|err| format!("GET {url}: {err}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("GET {url}: HTTP {status}"));
    }
    let next_index = response
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let body = response
        .bytes()
        .await
        .map_err(|err| format!("GET {url}: {err}"))?;
    let instances = parse_health(&body).map_err(|err| format!("GET {url}: {err}"))?;
    Ok((instances, next_index))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"[{"Node":{"ID":"a","Node":"node-a","Address":"10.0.0.9","Datacenter":"dc1"},
      "Service":{"ID":"echo-1","Service":"echo","Tags":["vsp"],"Address":"127.0.0.1","Meta":{"vsp_version":"1"},"Port":7001,"Weights":{"Passing":10,"Warning":1}},
      "Checks":[]},
     {"Node":{"ID":"a","Node":"node-a","Address":"10.0.0.9","Datacenter":"dc1"},
      "Service":{"ID":"echo-2","Service":"echo","Tags":[],"Address":"","Port":7002},
      "Checks":[]},
     {"Node":{"ID":"a","Node":"node-a","Address":"10.0.0.9","Datacenter":"dc1"},
      "Service":{"ID":"echo-3","Service":"echo","Address":"10.0.0.3","Meta":{"vsp_version":"2"},"Port":7003},
      "Checks":[]}]"#;

    #[test]
    fn health_answers_parse_with_node_address_fallback_and_weights() {
        let instances = parse_health(SAMPLE.as_bytes()).unwrap();
        assert_eq!(instances.len(), 2, "the version-2 instance is skipped");
        assert_eq!(
            (instances[0].address().to_string(), instances[0].weight()),
            ("127.0.0.1:7001".into(), 10.0)
        );
        assert_eq!(
            (instances[1].address().to_string(), instances[1].weight()),
            ("10.0.0.9:7002".into(), 1.0)
        );
    }

    #[test]
    fn a_malformed_answer_is_an_error_with_context() {
        let err = parse_health(b"{\"not\": \"a list\"}").unwrap_err();
        assert!(err.starts_with("malformed answer"), "{err}");
        assert!(parse_health(b"[{\"Service\":{}}]").is_err());
    }

    #[test]
    fn durations_and_paths_are_written_as_consul_reads_them() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10000ms");
        assert_eq!(path_segment("user service/1"), "user%20service%2F1");
    }
}
