//! Aggregates of finished invocation records, and the Prometheus families made from them.
//!
//! [`Aggregates`] are sums per (function, status code, end reason, closed or not): counts,
//! message and byte totals, and duration and startup histograms. The store keeps them in its
//! database (table `aggregates`, updated in the same transaction as the records it counts), so
//! `/metrics` and the dashboard read a few rows instead of scanning records, and the counters
//! survive retention deleting old records. Each invocation is counted once, at its first end:
//! that is what makes `/metrics` agree with `/api/invocations` (both are views of the same
//! records).
//!
//! [`Aggregates::register`] turns a snapshot into families on a registry that the admin API
//! builds per scrape, next to gauges it computes at scrape time.

use std::collections::BTreeMap;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use crate::invocation::Invocation;

/// `{function}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub function: String,
}

/// `{function, status_code, end_reason}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub function: String,
    pub status_code: u16,
    pub end_reason: String,
}

/// `{function, direction}`; direction is `in` (client → function) or `out`, as in the record.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub function: String,
    pub direction: &'static str,
}

/// `{function, reason}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub function: String,
    pub reason: String,
}

/// `{function, status_code}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub function: String,
    pub status_code: u16,
}

/// End reasons that mean a platform limit closed the connection (semantics.md §3).
const LIMIT_REASONS: [&str; 5] = [
    "idle_timeout",
    "execution_timeout",
    "message_too_large",
    "rate_limited",
    "memory_limit",
];

/// Status codes of an instance that failed to start: 405 bootstrap exited, 444 image pull
/// failed, 445 bootstrap not found (or a container's bad command), 446 nothing listening on
/// port 9000, 447 image pull timed out.
const START_FAILURES: [u16; 5] = [405, 444, 445, 446, 447];

/// Connections live from milliseconds (a refused upgrade) to the 900 s default execution
/// timeout and beyond (relaxed limits), so the buckets span that range.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// A start is a process spawn plus waiting for port 9000: milliseconds for a native
/// bootstrap, seconds for an interpreter, at most the init timeout (60 s by default).
pub const STARTUP_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// What the aggregates are keyed by: every label a family needs can be derived from it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggregateKey {
    pub function: String,
    pub status_code: u16,
    pub end_reason: String,
    /// The connection existed and was closed (the record has a close code): tells a limit
    /// that closed a connection from a refusal that shares its end reason.
    pub closed: bool,
}

/// Sums over the finished records of one [`AggregateKey`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AggregateRow {
    pub invocations: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub throttled_messages: u64,
    pub duration: Buckets,
    pub startup: Buckets,
}

/// A histogram of milliseconds over fixed bounds (seconds).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets {
    pub count: u64,
    pub sum_ms: u64,
    /// Non-cumulative counts, one per bound plus a last one for +Inf. Empty until the first
    /// observation, so a row read from an older layout still merges.
    pub counts: Vec<u64>,
}

impl Buckets {
    fn observe(&mut self, ms: u64, bounds: &[f64]) {
        if self.counts.len() != bounds.len() + 1 {
            self.counts.resize(bounds.len() + 1, 0);
        }
        // The same comparison as a Prometheus histogram: the first bucket whose bound is >= v.
        let v = ms as f64 / 1000.0;
        let i = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len());
        self.counts[i] += 1;
        self.count += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
    }

    fn add(&mut self, other: &Buckets) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum_ms = self.sum_ms.saturating_add(other.sum_ms);
    }
}

/// Every finished record, summed. Small: one row per distinct key, whatever the number of
/// records.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Aggregates {
    pub rows: BTreeMap<AggregateKey, AggregateRow>,
}

impl Aggregates {
    /// Counts one finished record and returns the key it changed; running records are not
    /// counted (they have no outcome yet).
    pub fn observe(&mut self, inv: &Invocation) -> Option<AggregateKey> {
        let status = inv.status_code?;
        let key = AggregateKey {
            function: inv.function.clone(),
            status_code: status.0,
            end_reason: inv.end_reason.clone().unwrap_or_default(),
            closed: inv.close_code.is_some(),
        };
        let row = self.rows.entry(key.clone()).or_default();
        row.invocations += 1;
        row.messages_in += inv.messages_in;
        row.messages_out += inv.messages_out;
        row.bytes_in += inv.bytes_in;
        row.bytes_out += inv.bytes_out;
        row.throttled_messages += inv.throttled_messages;
        if let Some(ms) = inv.duration_ms {
            row.duration.observe(ms, &DURATION_BUCKETS);
        }
        if let Some(ms) = inv.startup_ms {
            row.startup.observe(ms, &STARTUP_BUCKETS);
        }
        Some(key)
    }

    /// Finished invocations in total.
    pub fn invocations(&self) -> u64 {
        self.rows.values().map(|r| r.invocations).sum()
    }

    /// Adds every family to `registry`. Counter names get their `_total` suffix and unit
    /// names their `_seconds` suffix from the encoder.
    pub fn register(&self, registry: &mut Registry) {
        let invocations = Family::<OutcomeLabels, Counter>::default();
        let messages = Family::<DirectionLabels, Counter>::default();
        let bytes = Family::<DirectionLabels, Counter>::default();
        let throttled = Family::<FunctionLabels, Counter>::default();
        let limit_closes = Family::<ReasonLabels, Counter>::default();
        let start_failures = Family::<StatusLabels, Counter>::default();
        let mut duration: BTreeMap<String, Buckets> = BTreeMap::new();
        let mut startup: BTreeMap<String, Buckets> = BTreeMap::new();
        for (key, row) in &self.rows {
            let function = || key.function.clone();
            invocations
                .get_or_create(&OutcomeLabels {
                    function: function(),
                    status_code: key.status_code,
                    end_reason: key.end_reason.clone(),
                })
                .inc_by(row.invocations);
            for (direction, m, b) in [
                ("in", row.messages_in, row.bytes_in),
                ("out", row.messages_out, row.bytes_out),
            ] {
                let labels = DirectionLabels {
                    function: function(),
                    direction,
                };
                // get_or_create even for 0, so both directions of a function always appear.
                messages.get_or_create(&labels).inc_by(m);
                bytes.get_or_create(&labels).inc_by(b);
            }
            throttled
                .get_or_create(&FunctionLabels {
                    function: function(),
                })
                .inc_by(row.throttled_messages);
            // `rate_limited` also names the new-instance-rate refusal (429 before the upgrade);
            // only a connection that existed, i.e. got a close code, was closed by a limit.
            if LIMIT_REASONS.contains(&key.end_reason.as_str()) && key.closed {
                limit_closes
                    .get_or_create(&ReasonLabels {
                        function: function(),
                        reason: key.end_reason.clone(),
                    })
                    .inc_by(row.invocations);
            }
            if START_FAILURES.contains(&key.status_code) {
                start_failures
                    .get_or_create(&StatusLabels {
                        function: function(),
                        status_code: key.status_code,
                    })
                    .inc_by(row.invocations);
            }
            if row.duration.count > 0 {
                duration.entry(function()).or_default().add(&row.duration);
            }
            if row.startup.count > 0 {
                startup.entry(function()).or_default().add(&row.startup);
            }
        }
        registry.register(
            "scfsim_invocations",
            "Finished invocations by platform status code and end reason",
            invocations,
        );
        registry.register_with_unit(
            "scfsim_invocation_duration",
            "Duration of finished invocations, from the connection's arrival to its end",
            Unit::Seconds,
            HistogramFamily::new(duration, &DURATION_BUCKETS),
        );
        registry.register_with_unit(
            "scfsim_instance_startup",
            "Time from a connection's arrival to its instance listening on port 9000",
            Unit::Seconds,
            HistogramFamily::new(startup, &STARTUP_BUCKETS),
        );
        registry.register(
            "scfsim_messages",
            "WebSocket messages of finished invocations; in is client to function",
            messages,
        );
        registry.register(
            "scfsim_bytes",
            "WebSocket payload bytes of finished invocations; in is client to function",
            bytes,
        );
        registry.register(
            "scfsim_throttled_messages",
            "Messages delayed by the rate limit (action throttle) in finished invocations",
            throttled,
        );
        registry.register(
            "scfsim_limit_closes",
            "Connections closed by a platform limit, by end reason",
            limit_closes,
        );
        registry.register(
            "scfsim_start_failures",
            "Instances that failed to start (405, 445, 446)",
            start_failures,
        );
    }
}

/// Histograms by function, from sums rather than from observations: prometheus-client's own
/// histogram can only be fed one observation at a time, and these come back from the database.
/// One function's histogram: labels, sum (seconds), count, (bound, non-cumulative count).
type FunctionHistogram = (FunctionLabels, f64, u64, Vec<(f64, u64)>);

#[derive(Debug)]
struct HistogramFamily {
    by_function: Vec<FunctionHistogram>,
}

impl HistogramFamily {
    fn new(sums: BTreeMap<String, Buckets>, bounds: &[f64]) -> Self {
        let by_function = sums
            .into_iter()
            .map(|(function, b)| {
                let mut buckets: Vec<(f64, u64)> = bounds
                    .iter()
                    .copied()
                    // f64::MAX is what the encoder prints as +Inf.
                    .chain(std::iter::once(f64::MAX))
                    .map(|bound| (bound, 0))
                    .collect();
                for (slot, n) in buckets.iter_mut().zip(&b.counts) {
                    slot.1 = *n;
                }
                let sum = b.sum_ms as f64 / 1000.0;
                (FunctionLabels { function }, sum, b.count, buckets)
            })
            .collect();
        HistogramFamily { by_function }
    }
}

impl TypedMetric for HistogramFamily {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for HistogramFamily {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, sum, count, buckets) in &self.by_function {
            encoder
                .encode_family(labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    *sum, *count, buckets, None,
                )?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{EndReason, Side};
    use prometheus_client::encoding::prometheus_text::encode;
    use time::macros::datetime;
    use uuid::Uuid;

    fn finished(function: &str, reason: EndReason) -> Invocation {
        let t = datetime!(2024-01-01 00:00:00 UTC);
        let mut inv = Invocation::begin(Uuid::new_v4(), function, t);
        inv.finish(&reason, t + time::Duration::milliseconds(1500));
        inv
    }

    fn text(m: &Aggregates) -> String {
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn a_record_feeds_every_family_it_belongs_to() {
        let mut m = Aggregates::default();
        let mut ok = finished(
            "echo",
            EndReason::ClientClosed {
                code: Some(1000),
                reason: String::new(),
            },
        );
        ok.startup_ms = Some(20);
        (ok.messages_in, ok.messages_out, ok.bytes_in, ok.bytes_out) = (3, 2, 30, 20);
        ok.throttled_messages = 1;
        m.observe(&ok);
        m.observe(&finished(
            "echo",
            EndReason::MessageTooLarge {
                from: Side::Client,
                size: Some(10),
                limit: 5,
            },
        ));
        m.observe(&finished(
            "echo",
            EndReason::BootstrapNotFound {
                detail: String::new(),
            },
        ));
        // The new-instance-rate refusal shares the end reason but closed no connection.
        m.observe(&finished(
            "echo",
            EndReason::InstanceRateExceeded {
                detail: String::new(),
            },
        ));
        m.observe(&Invocation::begin(
            Uuid::new_v4(),
            "echo",
            datetime!(2024-01-01 00:00:00 UTC),
        ));

        let out = text(&m);
        for line in [
            r#"scfsim_invocations_total{function="echo",status_code="200",end_reason="client_closed"} 1"#,
            r#"scfsim_invocations_total{function="echo",status_code="406",end_reason="message_too_large"} 1"#,
            r#"scfsim_invocations_total{function="echo",status_code="429",end_reason="rate_limited"} 1"#,
            r#"scfsim_messages_total{function="echo",direction="in"} 3"#,
            r#"scfsim_bytes_total{function="echo",direction="out"} 20"#,
            r#"scfsim_throttled_messages_total{function="echo"} 1"#,
            r#"scfsim_limit_closes_total{function="echo",reason="message_too_large"} 1"#,
            r#"scfsim_start_failures_total{function="echo",status_code="445"} 1"#,
            r#"scfsim_invocation_duration_seconds_count{function="echo"} 4"#,
            r#"scfsim_instance_startup_seconds_count{function="echo"} 1"#,
            "# TYPE scfsim_invocation_duration_seconds histogram",
        ] {
            assert!(out.lines().any(|l| l == line), "no {line:?} in\n{out}");
        }
        assert!(
            !out.contains(r#"scfsim_limit_closes_total{function="echo",reason="rate_limited"}"#),
            "{out}"
        );
    }
}
