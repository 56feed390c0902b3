//! What a client's calls did, per service and endpoint, and what its mesh and pools did per
//! instance: [`VspClient::metrics`](super::VspClient::metrics), in the same Prometheus rendering
//! as the server's [`PerformanceStats`](crate::PerformanceStats).
//!
//! Why a copy-on-write map of atomics: every call records here, so the hot path is one lock-free
//! load of the map, two lookups by `&str` and a few relaxed atomic adds; only the first call to a
//! new endpoint (and an error, for its code) takes a lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;

use super::pool::PoolStats;
use crate::fast_map::FastMap;
use crate::instance::HealthStatus;
use crate::prometheus::{self, Exposition, COUNTER, GAUGE, SUMMARY};
use crate::stats::ShardedHistogram;

/// Endpoints tracked per client at most; calls to further ones are counted under the endpoint
/// name `other`, so a caller making up names cannot grow the map without bound.
const MAX_ENDPOINTS: usize = 256;
const OTHER: &str = "other";

/// Looked up twice by every call: a fast hash (see [`FastMap`]).
type Endpoints = FastMap<Box<str>, FastMap<Box<str>, Arc<CallCounters>>>;

/// The live counters of one client.
#[derive(Default)]
pub(crate) struct ClientCounters {
    endpoints: ArcSwap<Endpoints>,
    /// Serializes additions (the copy-on-write of `endpoints`).
    adding: Mutex<usize>,
}

/// Calls are counted by the latency histograms alone, and each thread records into its own
/// share of them: a call's one atomic add then stays in its core's cache instead of bouncing a
/// shared line between cores.
#[derive(Default)]
struct CallCounters {
    retries: AtomicU64,
    failovers: AtomicU64,
    hedges: AtomicU64,
    latency: ShardedHistogram,
    errors: Mutex<BTreeMap<String, u64>>,
    /// The last quantile asked for hedging: its bits, when it was computed (ms since the
    /// process's first), and its value in ns (0: too few calls).
    quantile: Mutex<(u64, u64, u64)>,
}

/// How one call ended, for the counters.
pub(crate) struct Finished<'a> {
    pub(crate) elapsed: Duration,
    /// Attempts made (1 without a retry).
    pub(crate) attempts: usize,
    /// The call got an answer from an instance other than the first one tried.
    pub(crate) failed_over: bool,
    /// A hedged attempt was sent.
    pub(crate) hedged: bool,
    /// The error's `error_type` (a remote error's code), if it failed.
    pub(crate) error: Option<&'a str>,
}

impl ClientCounters {
    pub(crate) fn record(&self, service: &str, endpoint: &str, finished: &Finished<'_>) {
        let endpoints = self.endpoints.load();
        match endpoints.get(service).and_then(|by| by.get(endpoint)) {
            Some(counters) => counters.record(finished),
            None => {
                drop(endpoints);
                self.add(service, endpoint).record(finished);
            }
        }
    }

    /// The latency at quantile `q` of the calls to `endpoint` so far (recomputed at most every
    /// 500 ms); `None` before 20 calls.
    pub(crate) fn quantile(&self, service: &str, endpoint: &str, q: f64) -> Option<Duration> {
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let now_ms = EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64;
        let endpoints = self.endpoints.load();
        let counters = endpoints.get(service).and_then(|by| by.get(endpoint))?;
        let mut cached = counters
            .quantile
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (bits, at, value) = *cached;
        if bits != q.to_bits() || now_ms.saturating_sub(at) >= 500 || at == 0 {
            let merged = counters.latency.merged();
            let value = if merged.count() < 20 {
                0
            } else {
                merged.quantiles([q])[0].as_nanos() as u64
            };
            *cached = (q.to_bits(), now_ms.max(1), value);
        } else if value == 0 {
            return None;
        } else {
            return Some(Duration::from_nanos(value));
        }
        (cached.2 > 0).then(|| Duration::from_nanos(cached.2))
    }

    fn add(&self, service: &str, endpoint: &str) -> Arc<CallCounters> {
        let mut count = self.adding.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.endpoints.load();
        let endpoint = if *count >= MAX_ENDPOINTS {
            OTHER
        } else {
            endpoint
        };
        if let Some(counters) = current.get(service).and_then(|by| by.get(endpoint)) {
            return counters.clone();
        }
        let counters = Arc::new(CallCounters::default());
        let mut next = Endpoints::clone(&current);
        next.entry(service.into())
            .or_default()
            .insert(endpoint.into(), counters.clone());
        self.endpoints.store(Arc::new(next));
        *count += 1;
        counters
    }

    fn snapshot(&self) -> BTreeMap<String, BTreeMap<String, CallStats>> {
        let endpoints = self.endpoints.load();
        endpoints
            .iter()
            .map(|(service, by)| {
                let by = by
                    .iter()
                    .map(|(endpoint, counters)| (endpoint.to_string(), counters.snapshot()))
                    .collect();
                (service.to_string(), by)
            })
            .collect()
    }
}

/// Distinct error codes counted per endpoint; a server may send any string as a code, so codes
/// beyond these (or longer than `MAX_ERROR_CODE_LEN`) are counted together under `other`.
const MAX_ERROR_KINDS: usize = 32;
const MAX_ERROR_CODE_LEN: usize = 64;
const OTHER_ERRORS: &str = "other";

fn count_error(errors: &mut BTreeMap<String, u64>, code: &str) {
    if let Some(count) = errors.get_mut(code) {
        *count += 1;
        return;
    }
    let code = if code.len() > MAX_ERROR_CODE_LEN || errors.len() >= MAX_ERROR_KINDS - 1 {
        OTHER_ERRORS
    } else {
        code
    };
    *errors.entry(code.to_owned()).or_insert(0) += 1;
}

impl CallCounters {
    fn record(&self, finished: &Finished<'_>) {
        self.latency.record(finished.elapsed);
        if finished.attempts > 1 {
            self.retries
                .fetch_add(finished.attempts as u64 - 1, Ordering::Relaxed);
        }
        if finished.failed_over {
            self.failovers.fetch_add(1, Ordering::Relaxed);
        }
        if finished.hedged {
            self.hedges.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(code) = finished.error {
            let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
            count_error(&mut errors, code);
        }
    }

    fn snapshot(&self) -> CallStats {
        let merged = self.latency.merged();
        let [p50, p99] = merged.quantiles([0.5, 0.99]);
        CallStats {
            calls: merged.count(),
            errors: self
                .errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            retries: self.retries.load(Ordering::Relaxed),
            failovers: self.failovers.load(Ordering::Relaxed),
            hedges: self.hedges.load(Ordering::Relaxed),
            p50,
            p99,
        }
    }
}

/// A snapshot of what a client did: [`VspClient::metrics`](super::VspClient::metrics).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ClientMetrics {
    /// Per service, per endpoint called.
    pub calls: BTreeMap<String, BTreeMap<String, CallStats>>,
    /// Every instance of the mesh, with what its health tracking and this client's pool did.
    pub instances: Vec<InstanceMetrics>,
    /// This client's connection pools, over all instances.
    pub pool: PoolStats,
}

/// One endpoint's figures in a [`ClientMetrics`] snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CallStats {
    /// Calls made, whatever their outcome.
    pub calls: u64,
    /// Failed calls by [`VspError::error_type`](crate::VspError::error_type): a remote error's
    /// code (`not_found`, `handler`, ...) or what kept the call from completing (`timeout`,
    /// `connect`, `no_instances`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Attempts beyond each call's first (a call sent to a second instance counts one).
    pub retries: u64,
    /// Calls answered by an instance other than the first one tried.
    pub failovers: u64,
    /// Calls that sent a hedged attempt (a second one while the first had not answered; also
    /// counted in `retries`).
    pub hedges: u64,
    /// Median call time, retries included (within 1/16 of the true value).
    pub p50: Duration,
    /// 99th-percentile call time, retries included (within 1/16 of the true value).
    pub p99: Duration,
}

/// One instance's figures in a [`ClientMetrics`] snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct InstanceMetrics {
    /// The service it belongs to.
    pub service: String,
    /// Its address as text.
    pub instance: String,
    /// Its health status now.
    pub status: HealthStatus,
    /// Times it was taken out of rotation.
    pub ejections: u64,
    /// Times it was brought back after an ejection.
    pub readmissions: u64,
    /// This client's connections to it open now.
    pub connections: usize,
    /// Calls to it in flight now.
    pub in_flight: usize,
}

/// A metric family by instance: name, kind, help and the figure of one instance.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&InstanceMetrics) -> u64,
);

impl ClientMetrics {
    pub(crate) fn new(
        counters: &ClientCounters,
        instances: Vec<InstanceMetrics>,
        pool: PoolStats,
    ) -> Self {
        ClientMetrics {
            calls: counters.snapshot(),
            instances,
            pool,
        }
    }

    /// The figures in the Prometheus text exposition format (version 0.0.4), as
    /// [`PerformanceStats::to_prometheus`](crate::PerformanceStats::to_prometheus) renders a
    /// server's: serve both on one `/metrics` endpoint.
    pub fn to_prometheus(&self) -> String {
        let mut page = Exposition::new();
        self.write_calls(&mut page);
        self.write_instances(&mut page);
        let help = "Connections this client opened.";
        page.family(
            "vsp_client_connections_opened_total",
            COUNTER,
            help,
            [("", self.pool.created)],
        );
        let help = "Connections this client closed (broken, retired, idle).";
        page.family(
            "vsp_client_connections_closed_total",
            COUNTER,
            help,
            [("", self.pool.closed)],
        );
        page.finish()
    }

    /// The families by service and endpoint.
    fn write_calls(&self, page: &mut Exposition) {
        let each = || {
            self.calls.iter().flat_map(|(service, by)| {
                by.iter().map(move |(endpoint, stats)| {
                    let labels = format!(
                        "service=\"{}\",endpoint=\"{}\"",
                        prometheus::label(service),
                        prometheus::label(endpoint)
                    );
                    (labels, stats)
                })
            })
        };
        let help = "Calls made, by service and endpoint.";
        page.family(
            "vsp_client_calls_total",
            COUNTER,
            help,
            each().map(|(l, s)| (l, s.calls)),
        );
        let errors = each().flat_map(|(labels, stats)| {
            stats.errors.iter().map(move |(code, count)| {
                (
                    format!("{labels},code=\"{}\"", prometheus::label(code)),
                    count,
                )
            })
        });
        let help = "Failed calls, by service, endpoint and error code.";
        page.family("vsp_client_errors_total", COUNTER, help, errors);
        let help = "Attempts beyond each call's first.";
        page.family(
            "vsp_client_retries_total",
            COUNTER,
            help,
            each().map(|(l, s)| (l, s.retries)),
        );
        let help = "Calls answered by an instance other than the first one tried.";
        let failovers = each().map(|(l, s)| (l, s.failovers));
        page.family("vsp_client_failovers_total", COUNTER, help, failovers);
        let help = "Calls that sent a hedged attempt.";
        let hedges = each().map(|(l, s)| (l, s.hedges));
        page.family("vsp_client_hedges_total", COUNTER, help, hedges);
        let help = "Call time quantiles (retries included), by service and endpoint.";
        let times = each().flat_map(|(l, s)| prometheus::quantiles(&l, s.p50, s.p99));
        page.family("vsp_client_call_seconds", SUMMARY, help, times);
    }

    /// The families by instance.
    fn write_instances(&self, page: &mut Exposition) {
        let each = |value: fn(&InstanceMetrics) -> u64| {
            self.instances.iter().map(move |instance| {
                let labels = format!(
                    "service=\"{}\",instance=\"{}\"",
                    prometheus::label(&instance.service),
                    prometheus::label(&instance.instance)
                );
                (labels, value(instance))
            })
        };
        #[rustfmt::skip]
        let families: [Family; 5] = [
            ("vsp_client_instance_ejections_total", COUNTER, "Times an instance was taken out of rotation.", |i| i.ejections),
            ("vsp_client_instance_readmissions_total", COUNTER, "Times an instance was brought back after an ejection.", |i| i.readmissions),
            ("vsp_client_instance_up", GAUGE, "1 if an instance is in rotation (healthy or not known to be unhealthy), else 0.", |i| u64::from(i.status != HealthStatus::Unhealthy)),
            ("vsp_client_pool_connections", GAUGE, "This client's connections open to an instance.", |i| i.connections as u64),
            ("vsp_client_in_flight", GAUGE, "Calls in flight to an instance.", |i| i.in_flight as u64),
        ];
        for (name, kind, help, value) in families {
            page.family(name, kind, help, each(value));
        }
    }
}

#[cfg(test)]
mod error_kind_tests {
    use super::*;

    #[test]
    fn error_codes_a_server_makes_up_are_counted_in_a_bounded_table() {
        let mut errors = BTreeMap::new();
        for n in 0..10_000 {
            count_error(&mut errors, &format!("made_up_{n}"));
        }
        count_error(&mut errors, &"x".repeat(1 << 20));
        assert!(
            errors.len() <= MAX_ERROR_KINDS,
            "{} kinds kept",
            errors.len()
        );
        assert_eq!(
            errors.values().sum::<u64>(),
            10_001,
            "an error was not counted"
        );
        assert!(errors.keys().all(|code| code.len() <= MAX_ERROR_CODE_LEN));
        // A code already counted keeps its own count.
        count_error(&mut errors, "made_up_0");
        assert_eq!(errors["made_up_0"], 2);
    }
}
