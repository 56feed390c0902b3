//! Discovery and registration with etcd v3 (feature `etcd`), through etcd's JSON gateway
//! (`/v3/kv/range`, `/v3/watch`, `/v3/lease/*`, etcd 3.4 and later).
//!
//! Why the gateway and not gRPC: the gRPC client crates compile etcd's `.proto` files at build
//! time, so every user would need `protoc` installed; the gateway is the same API as JSON over
//! HTTP, through the HTTP client the Consul support already uses.
//!
//! Registration: a starting server puts `<prefix><service>/<host:port>` with a JSON value
//! (address, weight, TLS flag, protocol version) bound to a lease (TTL 10 s by default) that a
//! task keeps alive; shutdown revokes the lease, so the instance disappears at once, and a crash
//! lets it expire within the TTL. Discovery: the whole prefix is read once, then watched from
//! the revision of that read, so no change falls between the two; a broken or compacted watch
//! reads and watches again; while etcd cannot be reached the last known instances stay.

mod watch;

use watch::{base64, sync_loop};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{BoxFuture, Discovery, MeshRegistry};
use crate::error::VspError;
use crate::instance::ServiceInfo;
use crate::protocol::PROTOCOL_VERSION;
use crate::transport::Address;

/// The default key prefix: instances live at `/vsp/services/<service>/<host:port>`.
pub(crate) const DEFAULT_PREFIX: &str = "/vsp/services/";

/// The default lease TTL of a registration.
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// Where etcd is and how to use it; see [`EtcdDiscovery`].
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    endpoints: Vec<String>,
    prefix: String,
    ttl: Duration,
    credentials: Option<(String, String)>,
    first_resolution_wait: Duration,
}

impl EtcdConfig {
    /// etcd at `url` (`http://127.0.0.1:2379`; `https://` with feature `etcd-rustls`).
    pub fn new(url: impl Into<String>) -> Self {
        EtcdConfig {
            endpoints: vec![url.into()],
            prefix: DEFAULT_PREFIX.to_owned(),
            ttl: DEFAULT_TTL,
            credentials: None,
            first_resolution_wait: Duration::from_secs(3),
        }
    }

    /// Another member of the same cluster (its URL), tried when the ones before it fail.
    pub fn member(mut self, url: impl Into<String>) -> Self {
        self.endpoints.push(url.into());
        self
    }

    /// The key prefix (default `/vsp/services/`); a missing trailing `/` is added.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        self.prefix = prefix;
        self
    }

    /// The lease TTL of a registration (default 10 s, at least 2 s): how long a crashed server
    /// stays listed.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_secs(2));
        self
    }

    /// etcd's user name and password (role-based access control).
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// How long a call waits for the first read of etcd before failing with `NoInstances`
    /// (default 3 s).
    pub fn first_resolution_wait(mut self, wait: Duration) -> Self {
        self.first_resolution_wait = wait;
        self
    }
}

/// Discovery and registration with etcd v3: instances registered under leases at
/// `<prefix><service>/<host:port>`, found by reading the prefix and watching it; see
/// [`EtcdConfig`].
///
/// ```no_run
/// use vsp::discovery::{EtcdConfig, EtcdDiscovery};
///
/// let etcd = EtcdDiscovery::new(EtcdConfig::new("http://127.0.0.1:2379"));
/// let mesh = vsp::ServiceMesh::builder().discovery(etcd).build();
/// // A VspManager built with this mesh registers itself when it starts serving.
/// let manager = vsp::VspManager::builder("user-service").mesh(mesh).build();
/// # drop(manager);
/// ```
pub struct EtcdDiscovery {
    shared: Arc<Shared>,
}

struct Shared {
    config: EtcdConfig,
    http: reqwest::Client,
    answered: AtomicBool,
    /// Why the last read failed, for `NoInstances` errors before any answer.
    failure: Mutex<String>,
    /// This process's registrations: key -> lease and the task keeping it alive.
    leases: Mutex<HashMap<String, (i64, tokio::task::AbortHandle)>>,
}

/// The bound on one request to an etcd member (and on a watch's start).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a watched member is asked whether it still answers.
const WATCH_KEEPALIVE: Duration = Duration::from_secs(5);

/// The largest watch message taken (etcd's own default request limit is 1.5 MiB; a message lists
/// the events of one revision).
const MAX_WATCH_MESSAGE: usize = 64 * 1024 * 1024;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn etcd_error(reason: String) -> VspError {
    VspError::Discovery {
        backend: "etcd",
        reason,
    }
}

impl EtcdDiscovery {
    /// Discovery (and registration) with the etcd `config` names.
    pub fn new(config: EtcdConfig) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .unwrap_or_default();
        EtcdDiscovery {
            shared: Arc::new(Shared {
                config,
                http,
                answered: AtomicBool::new(false),
                failure: Mutex::new("no answer from etcd yet".to_owned()),
                leases: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Discovery for EtcdDiscovery {
    fn start(&self, registry: MeshRegistry) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sync_loop(Arc::downgrade(&self.shared), registry));
        } else {
            tracing::warn!("etcd discovery needs a tokio runtime: build the mesh inside one");
        }
    }

    fn has_answered(&self, _service: &str) -> bool {
        self.shared.answered.load(Ordering::Acquire)
    }

    fn first_resolution_wait(&self) -> Duration {
        self.shared.config.first_resolution_wait
    }

    fn resolution_error(&self, service: &str) -> Option<VspError> {
        if self.shared.answered.load(Ordering::Acquire) {
            return None;
        }
        Some(etcd_error(format!(
            "no instance of `{service}` known: etcd at {} never answered ({})",
            self.shared.config.endpoints.join(", "),
            lock(&self.shared.failure)
        )))
    }

    fn announce<'a>(&'a self, info: &'a ServiceInfo) -> BoxFuture<'a, Result<(), VspError>> {
        Box::pin(async move {
            if !info.address().is_tcp() {
                return Err(etcd_error(format!(
                    "cannot register {} of `{}`: etcd registration publishes TCP addresses only",
                    info.address(),
                    info.name()
                )));
            }
            let shared = &self.shared;
            let key = shared.key_of(info);
            let value = registration_value(info);
            let lease = shared.register(&key, &value).await?;
            let task = tokio::spawn(keep_alive(
                Arc::downgrade(shared),
                key.clone(),
                value,
                lease,
            ));
            if let Some((_, old)) = lock(&shared.leases).insert(key, (lease, task.abort_handle())) {
                old.abort();
            }
            Ok(())
        })
    }

    fn withdraw<'a>(&'a self, info: &'a ServiceInfo) -> BoxFuture<'a, Result<(), VspError>> {
        Box::pin(async move {
            let shared = &self.shared;
            let key = shared.key_of(info);
            let Some((lease, task)) = lock(&shared.leases).remove(&key) else {
                return Ok(());
            };
            task.abort();
            shared
                .post("/v3/lease/revoke", &json!({ "ID": lease.to_string() }))
                .await
                .map(|_| ())
                .map_err(|reason| etcd_error(format!("cannot revoke the lease of {key}: {reason}")))
        })
    }
}

/// The JSON stored for an instance.
fn registration_value(info: &ServiceInfo) -> String {
    let host = match info.host() {
        // Listening everywhere: reachable on loopback at least.
        "0.0.0.0" | "::" => "127.0.0.1",
        host => host,
    };
    json!({
        "address": Address::tcp(host, info.port()).to_string(),
        "weight": info.weight(),
        "tls": info.is_tls(),
        "vsp": PROTOCOL_VERSION,
        "metadata": {},
    })
    .to_string()
}

/// The JSON of an instance, as read back.
#[derive(Deserialize)]
struct Registration {
    address: String,
    #[serde(default = "one")]
    weight: f64,
    #[serde(default)]
    tls: bool,
}

fn one() -> f64 {
    1.0
}

impl Shared {
    fn key_of(&self, info: &ServiceInfo) -> String {
        format!("{}{}/{}", self.config.prefix, info.name(), info.address())
    }

    /// POSTs `body` to `path` on the first endpoint that answers; the JSON answer.
    async fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let mut last = String::from("no endpoint configured");
        for endpoint in &self.config.endpoints {
            let url = format!("{}{path}", endpoint.trim_end_matches('/'));
            let mut request = with_json(self.http.post(&url).timeout(REQUEST_TIMEOUT), body);
            // A member that is down fails its token lookup too: the next member is tried.
            match self.token(endpoint).await {
                Ok(Some(token)) => request = request.header("Authorization", token),
                Ok(None) => {}
                Err(reason) => {
                    last = reason;
                    continue;
                }
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    return read_json(response)
                        .await
                        .map_err(|err| format!("POST {url}: {err}"));
                }
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    last = format!("POST {url}: {status} {text}");
                }
                Err(err) => last = format!("POST {url}: {err}"),
            }
        }
        Err(last)
    }

    /// Whether the member at `endpoint` answers a status request within `REQUEST_TIMEOUT`.
    async fn member_answers(&self, endpoint: &str) -> Result<(), String> {
        let url = format!("{}/v3/maintenance/status", endpoint.trim_end_matches('/'));
        let mut request = with_json(self.http.post(&url).timeout(REQUEST_TIMEOUT), &json!({}));
        if let Some(token) = self.token(endpoint).await? {
            request = request.header("Authorization", token);
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!(
                "the watched member {endpoint} answers its status with {}",
                response.status()
            )),
            Err(err) => Err(format!(
                "the watched member {endpoint} stopped answering: {err}"
            )),
        }
    }

    /// A fresh auth token when credentials are configured.
    async fn token(&self, endpoint: &str) -> Result<Option<String>, String> {
        let Some((user, password)) = &self.config.credentials else {
            return Ok(None);
        };
        let url = format!("{}/v3/auth/authenticate", endpoint.trim_end_matches('/'));
        let request = with_json(
            self.http.post(&url).timeout(REQUEST_TIMEOUT),
            &json!({ "name": user, "password": password }),
        );
        let response = request
            .send()
            .await
            .map_err(|err| format!("POST {url}: {err}"))?;
        let answer = read_json(response)
            .await
            .map_err(|err| format!("POST {url}: {err}"))?;
        match answer["token"].as_str() {
            Some(token) => Ok(Some(token.to_owned())),
            None => Err(format!(
                "etcd refused the credentials of `{user}`: {answer}"
            )),
        }
    }

    /// Grants a lease and puts `key` under it; the lease id.
    async fn register(&self, key: &str, value: &str) -> Result<i64, VspError> {
        let ttl = self.config.ttl.as_secs();
        let granted = self
            .post("/v3/lease/grant", &json!({ "TTL": ttl.to_string() }))
            .await
            .map_err(|reason| etcd_error(format!("cannot register {key}: {reason}")))?;
        let lease = number(&granted["ID"])
            .ok_or_else(|| etcd_error(format!("etcd granted no lease: {granted}")))?;
        self.post(
            "/v3/kv/put",
            &json!({ "key": base64(key.as_bytes()), "value": base64(value.as_bytes()), "lease": lease.to_string() }),
        )
        .await
        .map_err(|reason| etcd_error(format!("cannot register {key}: {reason}")))?;
        Ok(lease)
    }
}

fn with_json(request: reqwest::RequestBuilder, body: &Value) -> reqwest::RequestBuilder {
    request
        .header("Content-Type", "application/json")
        .body(body.to_string())
}

async fn read_json(response: reqwest::Response) -> Result<Value, String> {
    let bytes = response.bytes().await.map_err(|err| err.to_string())?;
    serde_json::from_slice(&bytes).map_err(|err| err.to_string())
}

/// etcd's gateway writes 64-bit numbers as strings.
fn number(value: &Value) -> Option<i64> {
    match value {
        Value::String(text) => text.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// Keeps a registration's lease alive (every third of the TTL); registers again if it expired
/// (etcd was down longer than the TTL).
// Its complexity is mostly the branches inside `tracing`'s event macros and `tokio::select!`,
// which clippy counts after expansion; the logic itself is one loop with a few outcomes.
#[allow(clippy::cognitive_complexity)]
async fn keep_alive(shared: std::sync::Weak<Shared>, key: String, value: String, mut lease: i64) {
    loop {
        let Some(every) = shared.upgrade().map(|s| s.config.ttl / 3) else {
            return;
        };
        tokio::time::sleep(every).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let renewed = shared
            .post("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))
            .await;
        match renewed {
            Ok(answer) if number(&answer["result"]["TTL"]).unwrap_or(0) > 0 => {}
            Ok(_) => {
                tracing::warn!(%key, "the etcd lease expired; registering again");
                match shared.register(&key, &value).await {
                    Ok(new) => {
                        lease = new;
                        if let Some(entry) = lock(&shared.leases).get_mut(&key) {
                            entry.0 = new;
                        }
                    }
                    Err(err) => tracing::warn!(%key, "{err}"),
                }
            }
            Err(reason) => tracing::warn!(%key, "cannot renew the etcd lease: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::watch::{decoded, parse_entry, range_end};
    use super::*;

    #[test]
    fn base64_round_trips() {
        for text in [
            "",
            "a",
            "ab",
            "abc",
            "/vsp/services/",
            "{\"address\":\"127.0.0.1:1\"}",
        ] {
            let encoded = base64(text.as_bytes());
            assert_eq!(decoded(&Value::String(encoded)).unwrap(), text.as_bytes());
        }
        assert_eq!(base64(b"/vsp/services/a/1"), "L3ZzcC9zZXJ2aWNlcy9hLzE=");
    }

    #[test]
    fn a_bad_value_or_address_is_skipped() {
        let prefix = DEFAULT_PREFIX;
        assert!(parse_entry(prefix, "/vsp/services/users/x", b"not json").is_none());
        assert!(parse_entry(prefix, "/vsp/services/users/x", b"{\"weight\":2}").is_none());
        assert!(parse_entry(prefix, "/vsp/services/users/x", b"{\"address\":\"nope\"}").is_none());
        let (service, info) = parse_entry(
            prefix,
            "/vsp/services/users/x",
            b"{\"address\":\"127.0.0.1:9\",\"weight\":3}",
        )
        .unwrap();
        assert_eq!(service, "users");
        assert_eq!(info.weight(), 3.0);
        assert_eq!(range_end("/vsp/services/"), b"/vsp/services0");
    }
}
