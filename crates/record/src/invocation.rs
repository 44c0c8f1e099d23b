//! The invocation record: one per client connection, created by the gateway when the connection
//! arrives ([`Invocation::begin`]), filled in while it runs, and completed once
//! ([`Invocation::finish`]) when it ends. Its JSON form is the public shape of interface.md.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::outcome::{classify, ClosedBy, EndReason, Outcome, StatusCode};

/// Every field but `request_id`, `function` and `started_at` has a serde default, so journal
/// lines written by an older scfsim that lacked a field still load after an upgrade.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Invocation {
    pub request_id: Uuid,
    pub function: String,
    /// `None` while the invocation is running.
    #[serde(default)]
    pub status_code: Option<StatusCode>,
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// snake_case, see [`crate::Classification::end_reason`].
    #[serde(default)]
    pub end_reason: Option<String>,
    #[serde(default)]
    pub close_code: Option<u16>,
    /// Set whenever `close_code` is.
    #[serde(default)]
    pub close_reason: Option<String>,
    #[serde(default)]
    pub closed_by: Option<ClosedBy>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// What the client waited for an instance: from the connection's arrival to the instance
    /// listening on port 9000, or to a provisioned instance being handed over.
    #[serde(default)]
    pub startup_ms: Option<u64>,
    /// Served by a provisioned instance (started ahead of demand), not one started for it.
    #[serde(default)]
    pub provisioned: bool,
    /// Messages client -> function.
    #[serde(default)]
    pub messages_in: u64,
    /// Messages function -> client.
    #[serde(default)]
    pub messages_out: u64,
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default)]
    pub bytes_out: u64,
    #[serde(default)]
    pub throttled_messages: u64,
    #[serde(default)]
    pub instance_pid: Option<u32>,
    #[serde(default)]
    pub instance_exit_code: Option<i32>,
    #[serde(default)]
    pub instance_signal: Option<i32>,
    /// Status of a rejected upgrade, or of the error response scfsim sent to the client.
    #[serde(default)]
    pub http_status: Option<u16>,
    /// Human message for start failures and other ends that carry a detail; the full text,
    /// where `close_reason` may be cut to fit a close frame.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub client_addr: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    /// The config's `time_scale` when it was not 1: platform time ran this many times faster
    /// than real time (`duration_ms` is real time). Absent at real time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_scale: Option<f64>,
    /// `duration_ms` in platform time (`duration_ms * time_scale`); absent at real time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_duration_ms: Option<u64>,
    /// Faults injected on purpose that acted on this invocation (`[functions.faults]`, a
    /// scenario's `[faults]`), each as `name(details)`, e.g. `"delay_to_function(200ms)"`;
    /// empty when none did. A status caused by an injected fault is listed here, so that it is
    /// never taken for a real one.
    #[serde(default)]
    pub injected_faults: Vec<String>,
}

impl Invocation {
    /// A running invocation: no outcome, all counters zero.
    pub fn begin(request_id: Uuid, function: &str, started_at: OffsetDateTime) -> Self {
        Invocation {
            request_id,
            function: function.to_owned(),
            status_code: None,
            outcome: None,
            end_reason: None,
            close_code: None,
            close_reason: None,
            closed_by: None,
            started_at,
            ended_at: None,
            duration_ms: None,
            startup_ms: None,
            provisioned: false,
            messages_in: 0,
            messages_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            throttled_messages: 0,
            instance_pid: None,
            instance_exit_code: None,
            instance_signal: None,
            http_status: None,
            error: None,
            client_addr: None,
            path: None,
            time_scale: None,
            platform_duration_ms: None,
            injected_faults: Vec::new(),
        }
    }

    /// Completes the record with the platform's view of `reason` ([`classify`]). Also records
    /// the HTTP status of a rejected upgrade, and the reason's detail as `error` unless the
    /// caller already set a more specific one.
    pub fn finish(&mut self, reason: &EndReason, ended_at: OffsetDateTime) {
        let c = classify(reason);
        self.status_code = Some(c.status_code);
        self.outcome = Some(c.outcome);
        self.end_reason = Some(c.end_reason.to_owned());
        self.closed_by = c.closed_by;
        self.close_code = c.close_code;
        self.close_reason = c.close_code.map(|_| c.close_reason);
        self.ended_at = Some(ended_at);
        // A clock step backwards must not make a negative (or wrapped) duration.
        let ms = (ended_at - self.started_at).whole_milliseconds();
        self.duration_ms = Some(u64::try_from(ms.max(0)).unwrap_or(u64::MAX));
        if let EndReason::UpgradeRejected { http_status } = reason {
            self.http_status = Some(*http_status);
        }
        if self.error.is_none() {
            self.error = error_message(reason);
        }
    }

    pub fn is_running(&self) -> bool {
        self.status_code.is_none()
    }
}

fn error_message(reason: &EndReason) -> Option<String> {
    use EndReason as R;
    let detail = match reason {
        R::ClientProtocolError { detail, .. }
        | R::InstanceExited { detail }
        | R::FunctionProtocolError { detail, .. }
        | R::RateLimited { detail }
        | R::BootstrapNotFound { detail }
        | R::BootstrapExited { detail }
        | R::NotListening { detail }
        | R::ImagePullFailed { detail }
        | R::ImagePullTimedOut { detail }
        | R::ContainerInitError { detail }
        | R::QuotaExceeded { detail }
        | R::InstanceRateExceeded { detail }
        | R::GatewayError { detail } => detail.as_str(),
        R::GatewayCrashed => {
            "scfsim stopped while this invocation was running; completed at the next start"
        }
        _ => "",
    };
    (!detail.is_empty()).then(|| detail.to_owned())
}

/// One line the instance wrote to stdout or stderr.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogLine {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub stream: LogStream,
    pub line: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn begin_is_running_and_finish_applies_classification() {
        let start = datetime!(2024-05-01 10:00:00 UTC);
        let mut inv = Invocation::begin(Uuid::new_v4(), "echo", start);
        assert!(inv.is_running());
        assert_eq!(inv.messages_in + inv.bytes_out + inv.throttled_messages, 0);

        inv.finish(
            &EndReason::ClientClosed {
                code: Some(1000),
                reason: "bye".into(),
            },
            start + time::Duration::milliseconds(1500),
        );
        assert!(!inv.is_running());
        assert_eq!(inv.status_code, Some(StatusCode::SUCCESS));
        assert_eq!(inv.outcome, Some(Outcome::Success));
        assert_eq!(inv.end_reason.as_deref(), Some("client_closed"));
        assert_eq!(inv.closed_by, Some(ClosedBy::Client));
        assert_eq!(inv.close_code, Some(1000));
        assert_eq!(inv.close_reason.as_deref(), Some("bye"));
        assert_eq!(inv.duration_ms, Some(1500));
        assert_eq!(inv.error, None);
    }

    #[test]
    fn finish_records_http_status_and_details() {
        let start = datetime!(2024-05-01 10:00:00 UTC);
        let mut inv = Invocation::begin(Uuid::new_v4(), "f", start);
        inv.finish(&EndReason::UpgradeRejected { http_status: 403 }, start);
        assert_eq!(inv.http_status, Some(403));
        assert_eq!(inv.status_code, Some(StatusCode(200)));
        assert_eq!(inv.close_code, None);
        assert_eq!(inv.close_reason, None);

        let mut inv = Invocation::begin(Uuid::new_v4(), "f", start);
        inv.finish(
            &EndReason::BootstrapNotFound {
                detail: "scf_bootstrap is not executable".into(),
            },
            start - time::Duration::seconds(1),
        );
        assert_eq!(inv.status_code, Some(StatusCode::BOOTSTRAP_NOT_FOUND));
        assert_eq!(
            inv.error.as_deref(),
            Some("scf_bootstrap is not executable")
        );
        assert_eq!(inv.duration_ms, Some(0), "clock went backwards");

        let mut inv = Invocation::begin(Uuid::new_v4(), "f", start);
        inv.error = Some("set by the gateway".into());
        inv.finish(&EndReason::NotListening { detail: "x".into() }, start);
        assert_eq!(inv.error.as_deref(), Some("set by the gateway"));
    }

    #[test]
    fn json_shape_matches_the_interface() {
        let start = datetime!(2024-05-01 10:00:00.250 UTC);
        let mut inv = Invocation::begin(Uuid::nil(), "echo", start);
        inv.finish(
            &EndReason::IdleTimeout {
                after: std::time::Duration::from_secs(15),
            },
            start + time::Duration::seconds(15),
        );
        let v: serde_json::Value = serde_json::to_value(&inv).unwrap();
        assert_eq!(v["status_code"], 455);
        assert_eq!(v["outcome"], "failure");
        assert_eq!(v["end_reason"], "idle_timeout");
        assert_eq!(v["closed_by"], "gateway");
        assert_eq!(v["close_code"], 1001);
        assert_eq!(v["started_at"], "2024-05-01T10:00:00.25Z");
        assert_eq!(v["ended_at"], "2024-05-01T10:00:15.25Z");
        assert_eq!(v["duration_ms"], 15000);
        assert_eq!(v["messages_in"], 0);
        let back: Invocation = serde_json::from_value(v).unwrap();
        assert_eq!(back, inv);

        // A line from an older writer without the optional fields still loads.
        let minimal = r#"{"request_id":"00000000-0000-0000-0000-000000000000","function":"f","started_at":"2024-05-01T10:00:00Z"}"#;
        let old: Invocation = serde_json::from_str(minimal).unwrap();
        assert!(old.is_running());
    }

    #[test]
    fn log_line_json() {
        let l = LogLine {
            at: datetime!(2024-05-01 10:00:00 UTC),
            stream: LogStream::Stderr,
            line: "boom".into(),
        };
        let s = serde_json::to_string(&l).unwrap();
        assert_eq!(
            s,
            r#"{"at":"2024-05-01T10:00:00Z","stream":"stderr","line":"boom"}"#
        );
    }
}
