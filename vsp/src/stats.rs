//! Server counters behind [`VspManager::get_performance_stats`](crate::VspManager::get_performance_stats).
//!
//! Why plain atomics: every call touches these counters, so they must cost a few relaxed atomic
//! adds and never a lock. A snapshot reads each counter once; the figures of one snapshot may be
//! a few calls apart, which no dashboard can tell.

use crate::prometheus::{self, Exposition, COUNTER, GAUGE, SUMMARY};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use serde::Serialize;

use crate::error::ErrorCode;
use crate::shard::{shard, Padded, ShardedCount, SHARDS};

/// A snapshot of a server's performance figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PerformanceStats {
    /// The service name.
    pub service: String,
    /// Requests answered since the server started, successes and errors alike.
    pub messages_processed: u64,
    /// Mean time from receiving a request to queueing its response (seconds, as a float, when
    /// serialized).
    #[serde(serialize_with = "as_seconds")]
    pub avg_processing_time: Duration,
    /// Handlers running right now.
    pub active_workers: usize,
    /// Requests received and not answered yet (running handlers included).
    pub in_flight: usize,
    /// Error responses sent, by error code (`not_found`, `bad_request`, ...). Every known code
    /// is present, zero or not.
    pub errors: BTreeMap<String, u64>,
    /// Client connections open now.
    pub connections_active: usize,
    /// Client connections accepted since the server started.
    pub connections_total: u64,
    /// Connections closed as soon as they were accepted, for being beyond the connection caps.
    pub connections_refused: u64,
    /// Accepts that failed for lack of resources (out of file descriptors, say); the server
    /// pauses after each, longer while they last.
    pub accept_errors: u64,
    /// Connections closed at the write-progress deadline: their peer took no byte of a pending
    /// write for that long (see `VspManagerBuilder::write_timeout`).
    pub write_timeouts: u64,
    /// Per registered endpoint (and `health`): calls and processing-time percentiles.
    pub endpoints: BTreeMap<String, EndpointStats>,
}

/// One endpoint's figures in a [`PerformanceStats`] snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Calls answered, successes and errors alike.
    pub calls: u64,
    /// Calls answered with an error.
    pub errors: u64,
    /// Median processing time (within 1/16 of the true value).
    #[serde(serialize_with = "as_seconds")]
    pub p50: Duration,
    /// 99th-percentile processing time (within 1/16 of the true value).
    #[serde(serialize_with = "as_seconds")]
    pub p99: Duration,
}

impl PerformanceStats {
    /// The figures in the Prometheus text exposition format (version 0.0.4), ready to be served
    /// on a `/metrics` endpoint of your choice.
    ///
    /// ```
    /// let manager = vsp::VspManager::builder("user-service").build();
    /// let text = manager.get_performance_stats().to_prometheus();
    /// assert!(text.contains("vsp_messages_processed_total{service=\"user-service\"} 0"));
    /// ```
    pub fn to_prometheus(&self) -> String {
        let service = format!("service=\"{}\"", prometheus::label(&self.service));
        let own = |value: &dyn std::fmt::Display| [(service.as_str(), value.to_string())];
        let mut page = Exposition::new();
        let avg = self.avg_processing_time.as_secs_f64();
        #[rustfmt::skip]
        let figures: [(&str, &str, &str, &dyn std::fmt::Display); 7] = [
            ("vsp_messages_processed_total", COUNTER, "Requests answered.", &self.messages_processed),
            ("vsp_processing_seconds_avg", GAUGE, "Mean time from receiving a request to queueing its response.", &avg),
            ("vsp_active_workers", GAUGE, "Handlers running.", &self.active_workers),
            ("vsp_in_flight", GAUGE, "Requests received and not answered yet.", &self.in_flight),
            ("vsp_connections_active", GAUGE, "Client connections open.", &self.connections_active),
            ("vsp_connections_total", COUNTER, "Client connections accepted.", &self.connections_total),
            ("vsp_write_timeouts_total", COUNTER, "Connections closed because their peer stopped reading.", &self.write_timeouts),
        ];
        for (name, kind, help, value) in figures {
            page.family(name, kind, help, own(value));
        }
        let errors = self.errors.iter().map(|(code, count)| {
            (
                format!("{service},code=\"{}\"", prometheus::label(code)),
                count,
            )
        });
        page.family(
            "vsp_errors_total",
            COUNTER,
            "Error responses sent, by code.",
            errors,
        );
        let endpoint = |name: &str| format!("{service},endpoint=\"{}\"", prometheus::label(name));
        let each = || {
            self.endpoints
                .iter()
                .map(|(name, stats)| (endpoint(name), stats))
        };
        let help = "Calls answered, by endpoint.";
        page.family(
            "vsp_endpoint_calls_total",
            COUNTER,
            help,
            each().map(|(l, s)| (l, s.calls)),
        );
        let help = "Calls answered with an error, by endpoint.";
        page.family(
            "vsp_endpoint_errors_total",
            COUNTER,
            help,
            each().map(|(l, s)| (l, s.errors)),
        );
        let help = "Processing time quantiles, by endpoint.";
        let times = each().flat_map(|(l, s)| prometheus::quantiles(&l, s.p50, s.p99));
        page.family("vsp_endpoint_processing_seconds", SUMMARY, help, times);
        page.finish()
    }
}

/// Processing times in logarithmic buckets: 16 per power of two, so a percentile read from it is
/// within 1/16 of the truth. Recording is one relaxed atomic add.
pub(crate) struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
}

const SUB_BUCKET_BITS: u32 = 4;
const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
/// Powers of two covered: nanoseconds up to 2^40 (about 18 minutes).
const MAGNITUDES: usize = 40;

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: (0..MAGNITUDES * SUB_BUCKETS)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram").finish_non_exhaustive()
    }
}

impl LatencyHistogram {
    fn index(nanos: u64) -> usize {
        if nanos < SUB_BUCKETS as u64 {
            return nanos as usize;
        }
        let magnitude = 63 - nanos.leading_zeros(); // >= SUB_BUCKET_BITS
        let shift = magnitude - SUB_BUCKET_BITS;
        let sub = (nanos >> shift) as usize & (SUB_BUCKETS - 1);
        let index = (shift as usize + 1) * SUB_BUCKETS + sub;
        index.min(MAGNITUDES * SUB_BUCKETS - 1)
    }

    /// The upper edge of a bucket.
    fn value_at(index: usize) -> u64 {
        if index < SUB_BUCKETS {
            return index as u64;
        }
        let shift = (index / SUB_BUCKETS - 1) as u32;
        let sub = (index % SUB_BUCKETS) as u64;
        ((SUB_BUCKETS as u64 + sub + 1) << shift) - 1
    }

    pub(crate) fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[Self::index(nanos)].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `other`'s counts to this one's.
    pub(crate) fn add(&self, other: &LatencyHistogram) {
        for (mine, theirs) in self.buckets.iter().zip(other.buckets.iter()) {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Values recorded.
    pub(crate) fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The values at the quantiles `qs` (each in 0..=1, ascending).
    pub(crate) fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [Duration; N] {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let mut out = [Duration::ZERO; N];
        if total == 0 {
            return out;
        }
        let mut seen = 0u64;
        let mut next = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            while next < N && seen as f64 >= (qs[next] * total as f64).max(1.0) {
                out[next] = Duration::from_nanos(Self::value_at(index));
                next += 1;
            }
            if next == N {
                break;
            }
        }
        out
    }
}

/// A latency histogram in per-thread shares (see [`crate::shard`]), each allocated when its
/// thread first records: an endpoint called from one thread holds one histogram (5 KiB), not
/// `SHARDS`.
#[derive(Debug, Default)]
pub(crate) struct ShardedHistogram {
    shares: [OnceLock<LatencyHistogram>; SHARDS],
}

impl ShardedHistogram {
    pub(crate) fn record(&self, elapsed: Duration) {
        self.shares[shard()]
            .get_or_init(LatencyHistogram::default)
            .record(elapsed);
    }

    /// The shares added up.
    pub(crate) fn merged(&self) -> LatencyHistogram {
        let merged = LatencyHistogram::default();
        for share in self.shares.iter().filter_map(OnceLock::get) {
            merged.add(share);
        }
        merged
    }
}

/// The live counters of one endpoint. Calls are counted by the histogram alone.
#[derive(Debug, Default)]
pub(crate) struct EndpointCounters {
    errors: AtomicU64,
    histogram: ShardedHistogram,
}

impl EndpointCounters {
    pub(crate) fn record(&self, elapsed: Duration, failed: bool) {
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.histogram.record(elapsed);
    }

    /// A call first counted as a success turned out to fail.
    pub(crate) fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> EndpointStats {
        let merged = self.histogram.merged();
        let [p50, p99] = merged.quantiles([0.50, 0.99]);
        EndpointStats {
            calls: merged.count(),
            errors: self.errors.load(Ordering::Relaxed),
            p50,
            p99,
        }
    }
}

fn as_seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

#[derive(Debug, Default)]
pub(crate) struct ServerStats {
    /// Per-thread shares of the requests answered and their processing nanoseconds (see
    /// [`crate::shard`]).
    processed: [Padded<Processed>; SHARDS],
    pub(crate) active_workers: ShardedCount,
    errors: [AtomicU64; ErrorCode::KNOWN.len()],
    connections_total: AtomicU64,
    write_timeouts: AtomicU64,
}

#[derive(Debug, Default)]
struct Processed {
    messages: AtomicU64,
    nanos: AtomicU64,
}

/// What the server's drain tracking counts, for a snapshot.
#[derive(Default)]
pub(crate) struct LiveCounts {
    pub(crate) in_flight: usize,
    pub(crate) connections_active: usize,
    pub(crate) connections_refused: u64,
    pub(crate) accept_errors: u64,
}

impl ServerStats {
    /// Counts a finished request's processing time (when stats are on).
    pub(crate) fn request_finished(&self, elapsed: Duration) {
        let share = &self.processed[shard()].0;
        share.messages.fetch_add(1, Ordering::Relaxed);
        share
            .nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    pub(crate) fn error_sent(&self, code: &ErrorCode) {
        if let Some(index) = code.index() {
            self.errors[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn write_timed_out(&self) {
        self.write_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_opened(&self) {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(
        &self,
        service: &str,
        endpoints: BTreeMap<String, EndpointStats>,
        live: LiveCounts,
    ) -> PerformanceStats {
        let sum = |field: fn(&Processed) -> &AtomicU64| -> u64 {
            self.processed
                .iter()
                .map(|share| field(&share.0).load(Ordering::Relaxed))
                .sum()
        };
        let processed = sum(|p| &p.messages);
        let nanos = sum(|p| &p.nanos);
        PerformanceStats {
            service: service.to_owned(),
            endpoints,
            messages_processed: processed,
            avg_processing_time: Duration::from_nanos(nanos.checked_div(processed).unwrap_or(0)),
            active_workers: self.active_workers.get(),
            in_flight: live.in_flight,
            errors: ErrorCode::KNOWN
                .iter()
                .zip(&self.errors)
                .map(|(code, count)| (code.as_str().to_owned(), count.load(Ordering::Relaxed)))
                .collect(),
            connections_active: live.connections_active,
            connections_total: self.connections_total.load(Ordering::Relaxed),
            connections_refused: live.connections_refused,
            accept_errors: live.accept_errors,
            write_timeouts: self.write_timeouts.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counters are written as integers: one past 2^53 is not rounded (an `f64` would be).
    #[test]
    fn counters_on_the_metrics_page_are_exact() {
        let stats = ServerStats::default();
        stats.processed[1]
            .0
            .messages
            .store((1 << 53) + 1, Ordering::Relaxed);
        let page = stats
            .snapshot("svc", BTreeMap::new(), LiveCounts::default())
            .to_prometheus();
        assert!(
            page.contains("vsp_messages_processed_total{service=\"svc\"} 9007199254740993\n"),
            "{page}"
        );
    }

    #[test]
    fn histogram_buckets_are_within_a_sixteenth() {
        for nanos in [
            0u64,
            1,
            15,
            16,
            17,
            100,
            1_000,
            12_345,
            1_000_000,
            987_654_321,
        ] {
            let index = LatencyHistogram::index(nanos);
            let upper = LatencyHistogram::value_at(index);
            assert!(upper >= nanos, "{nanos} -> bucket edge {upper}");
            assert!(
                (upper - nanos) as f64 <= nanos as f64 / 16.0 + 1.0,
                "{nanos} -> {upper}"
            );
        }
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let histogram = LatencyHistogram::default();
        for micros in 1..=100u64 {
            histogram.record(Duration::from_micros(micros));
        }
        let [p50, p99] = histogram.quantiles([0.5, 0.99]);
        let close = |d: Duration, micros: f64| {
            (d.as_secs_f64() * 1e6 - micros).abs() <= micros / 16.0 + 0.01
        };
        assert!(close(p50, 50.0), "{p50:?}");
        assert!(close(p99, 99.0), "{p99:?}");
    }

    #[test]
    fn an_empty_histogram_reads_zero() {
        assert_eq!(
            LatencyHistogram::default().quantiles([0.5]),
            [Duration::ZERO]
        );
    }
}
