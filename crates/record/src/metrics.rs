//! Prometheus metrics derived from finished invocation records.
//!
//! Every value here is fed by [`RecordStore`](crate::RecordStore) from the records it stores
//! (those replayed at open, `gateway_crashed` completions, and each `finish`), never from the
//! gateway's own counters. That is what makes `/metrics` agree with `/api/invocations`: both
//! are views of the same records. Each invocation is counted once, at its first end.
//!
//! The store owns the metric families; [`StoreMetrics::register`] adds handles to them to a
//! registry that the admin API builds per scrape, next to gauges it computes at scrape time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
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
const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// A start is a process spawn plus waiting for port 9000: milliseconds for a native
/// bootstrap, seconds for an interpreter, at most the init timeout (60 s by default).
const STARTUP_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn startup_histogram() -> Histogram {
    Histogram::new(STARTUP_BUCKETS)
}

/// The store's metric families. Cloning a family clones a handle to the same values.
pub struct StoreMetrics {
    invocations: Family<OutcomeLabels, Counter>,
    duration: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    startup: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    messages: Family<DirectionLabels, Counter>,
    bytes: Family<DirectionLabels, Counter>,
    throttled: Family<FunctionLabels, Counter>,
    limit_closes: Family<ReasonLabels, Counter>,
    start_failures: Family<StatusLabels, Counter>,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            invocations: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            startup: Family::new_with_constructor(startup_histogram),
            messages: Family::default(),
            bytes: Family::default(),
            throttled: Family::default(),
            limit_closes: Family::default(),
            start_failures: Family::default(),
        }
    }
}

impl StoreMetrics {
    /// Adds every family to `registry`. Counter names get their `_total` suffix and unit
    /// names their `_seconds` suffix from the encoder.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "scfsim_invocations",
            "Finished invocations by platform status code and end reason",
            self.invocations.clone(),
        );
        registry.register_with_unit(
            "scfsim_invocation_duration",
            "Duration of finished invocations, from the connection's arrival to its end",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register_with_unit(
            "scfsim_instance_startup",
            "Time from a connection's arrival to its instance listening on port 9000",
            Unit::Seconds,
            self.startup.clone(),
        );
        registry.register(
            "scfsim_messages",
            "WebSocket messages of finished invocations; in is client to function",
            self.messages.clone(),
        );
        registry.register(
            "scfsim_bytes",
            "WebSocket payload bytes of finished invocations; in is client to function",
            self.bytes.clone(),
        );
        registry.register(
            "scfsim_throttled_messages",
            "Messages delayed by the rate limit (action throttle) in finished invocations",
            self.throttled.clone(),
        );
        registry.register(
            "scfsim_limit_closes",
            "Connections closed by a platform limit, by end reason",
            self.limit_closes.clone(),
        );
        registry.register(
            "scfsim_start_failures",
            "Instances that failed to start (405, 445, 446)",
            self.start_failures.clone(),
        );
    }

    /// Counts one finished record. Running records are ignored: they have no outcome yet.
    pub(crate) fn observe(&self, inv: &Invocation) {
        let Some(status) = inv.status_code else {
            return;
        };
        let function = || inv.function.clone();
        let end_reason = inv.end_reason.clone().unwrap_or_default();
        self.invocations
            .get_or_create(&OutcomeLabels {
                function: function(),
                status_code: status.0,
                end_reason: end_reason.clone(),
            })
            .inc();
        let f = FunctionLabels {
            function: function(),
        };
        if let Some(ms) = inv.duration_ms {
            self.duration.get_or_create(&f).observe(ms as f64 / 1000.0);
        }
        if let Some(ms) = inv.startup_ms {
            self.startup.get_or_create(&f).observe(ms as f64 / 1000.0);
        }
        for (direction, messages, bytes) in [
            ("in", inv.messages_in, inv.bytes_in),
            ("out", inv.messages_out, inv.bytes_out),
        ] {
            let labels = DirectionLabels {
                function: function(),
                direction,
            };
            // get_or_create even for 0, so both directions of a function always appear.
            self.messages.get_or_create(&labels).inc_by(messages);
            self.bytes.get_or_create(&labels).inc_by(bytes);
        }
        self.throttled
            .get_or_create(&f)
            .inc_by(inv.throttled_messages);
        // `rate_limited` also names the new-instance-rate refusal (429 before the upgrade);
        // only a connection that existed, i.e. got a close code, was closed by a limit.
        if LIMIT_REASONS.contains(&end_reason.as_str()) && inv.close_code.is_some() {
            self.limit_closes
                .get_or_create(&ReasonLabels {
                    function: function(),
                    reason: end_reason,
                })
                .inc();
        }
        if START_FAILURES.contains(&status.0) {
            self.start_failures
                .get_or_create(&StatusLabels {
                    function: function(),
                    status_code: status.0,
                })
                .inc();
        }
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

    fn text(m: &StoreMetrics) -> String {
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn a_record_feeds_every_family_it_belongs_to() {
        let m = StoreMetrics::default();
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
