//! The one Prometheus text writer (exposition format 0.0.4), for the server's
//! [`PerformanceStats`](crate::PerformanceStats) and the client's
//! [`ClientMetrics`](crate::ClientMetrics): both render through it, so one `/metrics` endpoint
//! serves both with the same escaping and layout.

use std::fmt::{Display, Write as _};
use std::time::Duration;

pub(crate) const COUNTER: &str = "counter";
pub(crate) const GAUGE: &str = "gauge";
pub(crate) const SUMMARY: &str = "summary";

/// A metrics page being written.
pub(crate) struct Exposition {
    out: String,
}

impl Exposition {
    pub(crate) fn new() -> Self {
        Exposition {
            out: String::with_capacity(2048),
        }
    }

    /// One metric family: its `HELP` and `TYPE` lines, then a sample per `(labels, value)`,
    /// `labels` being what goes between the braces (none when empty).
    pub(crate) fn family<L: AsRef<str>, V: Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, V)>,
    ) {
        let out = &mut self.out;
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            match labels.as_ref() {
                "" => writeln!(out, "{name} {value}"),
                labels => writeln!(out, "{name}{{{labels}}} {value}"),
            }
            .expect("writing to a String cannot fail");
        }
    }

    pub(crate) fn finish(self) -> String {
        self.out
    }
}

/// A label value, escaped.
pub(crate) fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The samples of a summary's median and 99th percentile, in seconds, under `labels`.
pub(crate) fn quantiles(labels: &str, p50: Duration, p99: Duration) -> [(String, f64); 2] {
    [("0.5", p50), ("0.99", p99)]
        .map(|(q, value)| (format!("{labels},quantile=\"{q}\""), value.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn a_family_has_its_help_type_and_one_line_per_sample() {
        let mut page = Exposition::new();
        page.family("x_total", COUNTER, "Xs.", [("", 1), ("a=\"b\"", 2)]);
        assert_eq!(
            page.finish(),
            "# HELP x_total Xs.\n# TYPE x_total counter\nx_total 1\nx_total{a=\"b\"} 2\n"
        );
    }
}
