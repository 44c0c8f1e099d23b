//! How an invocation ended (facts, reported by the gateway) and what the platform calls it
//! (policy, decided here). Keeping the policy in one pure function means semantics.md §3 and §4
//! live in one table that a unit test walks row by row.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What happened at the end of one connection, as observed by the gateway. It carries no
/// status codes: [`classify`] decides those.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The client sent a close frame. `None` is a close frame without a status code (1005).
    ClientClosed { code: Option<u16>, reason: String },
    /// The client's TCP connection ended without a close frame (recorded as 1006).
    ClientDropped,
    /// The client broke the protocol; scfsim closed it with `code` (1002 or 1007).
    ClientProtocolError { code: u16, detail: String },
    /// The function sent a close frame. `None` is a close frame without a status code (1005).
    FunctionClosed { code: Option<u16>, reason: String },
    /// The function's socket dropped or its process exited without a close frame; the client
    /// gets 1011.
    InstanceExited { detail: String },
    /// The function broke the protocol; the client gets 1011.
    FunctionProtocolError { detail: String },
    /// No text/binary message in either direction for `after`.
    IdleTimeout { after: Duration },
    /// The connection was still open when the execution timeout `after` was reached.
    ExecutionTimeout { after: Duration },
    /// The instance used more memory than the function's memory size.
    MemoryLimit { limit_mb: u32 },
    /// A message over the size limit; `from` is the sender, which gets 1009.
    MessageTooLarge {
        from: Side,
        size: Option<u64>,
        limit: u64,
    },
    /// A rate limit with action `close` was exceeded; the client gets 1008.
    RateLimited { detail: String },
    /// The bootstrap is missing, not executable, or cannot be executed.
    BootstrapNotFound { detail: String },
    /// The bootstrap exited before listening on port 9000.
    BootstrapExited { detail: String },
    /// Nothing listened on port 9000 when the init timeout ended.
    NotListening { detail: String },
    /// The function's concurrency quota was reached; no instance was started.
    QuotaExceeded { detail: String },
    /// Too many new instances per minute (the platform's burst quota): 429, refused before
    /// the upgrade, so no close code.
    InstanceRateExceeded { detail: String },
    /// scfsim's own failure (namespaces, cgroups, fork) before the instance could start: 500.
    GatewayError { detail: String },
    /// Ended on request through the admin API (`DELETE /api/instances/{id}`): both sides got
    /// close 1001.
    EndedByAdmin,
    /// The function answered the handshake with `http_status` instead of 101.
    UpgradeRejected { http_status: u16 },
    /// scfsim shut down while the connection was open.
    GatewayShutdown,
    /// scfsim died while the connection was open; found in the journal at the next start.
    GatewayCrashed,
}

/// One side of the proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Client,
    Function,
}

/// Who ended the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClosedBy {
    Client,
    Function,
    Gateway,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
}

/// The platform's function status code (semantics.md §3). Serialized as a bare integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StatusCode(pub u16);

impl StatusCode {
    pub const SUCCESS: StatusCode = StatusCode(200);
    pub const BOOTSTRAP_EXITED: StatusCode = StatusCode(405);
    pub const MESSAGE_TOO_LARGE_UP: StatusCode = StatusCode(406);
    pub const MESSAGE_TOO_LARGE_DOWN: StatusCode = StatusCode(407);
    pub const RATE_LIMITED: StatusCode = StatusCode(429);
    pub const QUOTA_EXCEEDED: StatusCode = StatusCode(432);
    pub const EXECUTION_TIMEOUT: StatusCode = StatusCode(433);
    pub const MEMORY_LIMIT: StatusCode = StatusCode(434);
    pub const FUNCTION_FAILED: StatusCode = StatusCode(439);
    pub const BOOTSTRAP_NOT_FOUND: StatusCode = StatusCode(445);
    pub const NOT_LISTENING: StatusCode = StatusCode(446);
    pub const IDLE_TIMEOUT: StatusCode = StatusCode(455);
    pub const CLIENT_FAILED: StatusCode = StatusCode(456);
    pub const GATEWAY_ERROR: StatusCode = StatusCode(500);

    pub fn as_u16(self) -> u16 {
        self.0
    }

    pub fn is_success(self) -> bool {
        self == StatusCode::SUCCESS
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<StatusCode> for u16 {
    fn from(code: StatusCode) -> u16 {
        code.0
    }
}

/// The platform's view of an [`EndReason`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub status_code: StatusCode,
    /// `Success` exactly when `status_code` is 200.
    pub outcome: Outcome,
    /// snake_case name of the reason, as in the record's `end_reason` (interface.md).
    pub end_reason: &'static str,
    pub closed_by: Option<ClosedBy>,
    /// The close code that ended the connection, as recorded: the peer's code (1005 for a close
    /// frame without one), 1006 for a dropped client, or the code scfsim sent. `None` when no
    /// WebSocket connection existed (start failures, quota, rejected upgrade) or nobody saw the
    /// end (gateway crashed).
    pub close_code: Option<u16>,
    /// The close reason: the peer's reason, or the one scfsim sends with `close_code`. Always at
    /// most 123 bytes, so the gateway can put it in a close frame as is. Empty when
    /// `close_code` is `None`.
    pub close_reason: String,
}

/// The largest close reason a close frame can carry (RFC 6455 §5.5: 125-byte control payload
/// minus the 2-byte code).
pub(crate) const MAX_CLOSE_REASON: usize = 123;

// Close codes used below, named so the table reads like semantics.md §4.
const NORMAL: u16 = 1000;
const GOING_AWAY: u16 = 1001;
const NO_STATUS: u16 = 1005;
const ABNORMAL: u16 = 1006;
const POLICY: u16 = 1008;
const TOO_BIG: u16 = 1009;
const MANDATORY_EXT: u16 = 1010;
const INTERNAL_ERROR: u16 = 1011;

/// Turns what happened into what the platform records (semantics.md §3) and what scfsim sends
/// as the close frame (§4). Pure: same input, same output, no clock, no I/O.
pub fn classify(reason: &EndReason) -> Classification {
    use ClosedBy::{Client, Function, Gateway};
    use EndReason as R;
    use StatusCode as S;

    let (status, name, closed_by, close_code, close_reason): (_, _, _, Option<u16>, String) =
        match reason {
            R::ClientClosed { code, reason } => {
                // The doc lists exactly 1000 and 1010 as a client's successful close. A close
                // frame without a code (1005) is not in that list, so it is 456 like any other
                // code: we follow the doc literally rather than guess the client's intent.
                let status = match code {
                    Some(NORMAL | MANDATORY_EXT) => S::SUCCESS,
                    _ => S::CLIENT_FAILED,
                };
                let code = code.unwrap_or(NO_STATUS);
                (
                    status,
                    "client_closed",
                    Some(Client),
                    Some(code),
                    reason.clone(),
                )
            }
            R::ClientDropped => (
                S::CLIENT_FAILED,
                "client_dropped",
                Some(Client),
                Some(ABNORMAL),
                "client connection dropped without a close frame".into(),
            ),
            R::ClientProtocolError { code, detail } => (
                S::CLIENT_FAILED,
                "client_protocol_error",
                Some(Gateway),
                Some(*code),
                detail.clone(),
            ),
            R::FunctionClosed { code, reason } => {
                // Same literal reading as for the client: only 1000 and 1011 are listed.
                let status = match code {
                    Some(NORMAL | INTERNAL_ERROR) => S::SUCCESS,
                    _ => S::FUNCTION_FAILED,
                };
                let code = code.unwrap_or(NO_STATUS);
                (
                    status,
                    "function_closed",
                    Some(Function),
                    Some(code),
                    reason.clone(),
                )
            }
            R::InstanceExited { detail } => (
                S::FUNCTION_FAILED,
                "instance_exited",
                Some(Function),
                Some(INTERNAL_ERROR),
                with_detail("function instance exited", detail),
            ),
            R::FunctionProtocolError { detail } => (
                S::FUNCTION_FAILED,
                "function_protocol_error",
                Some(Gateway),
                Some(INTERNAL_ERROR),
                with_detail("function broke the WebSocket protocol", detail),
            ),
            R::IdleTimeout { after } => (
                S::IDLE_TIMEOUT,
                "idle_timeout",
                Some(Gateway),
                Some(GOING_AWAY),
                format!("idle timeout: no message for {}", human(*after)),
            ),
            R::ExecutionTimeout { after } => (
                S::EXECUTION_TIMEOUT,
                "execution_timeout",
                Some(Gateway),
                Some(GOING_AWAY),
                format!("execution timeout of {} reached", human(*after)),
            ),
            R::MemoryLimit { limit_mb } => (
                S::MEMORY_LIMIT,
                "memory_limit",
                Some(Gateway),
                Some(INTERNAL_ERROR),
                format!("memory limit of {limit_mb} MB exceeded"),
            ),
            R::MessageTooLarge { from, size, limit } => {
                let (status, direction) = match from {
                    Side::Client => (S::MESSAGE_TOO_LARGE_UP, "client"),
                    Side::Function => (S::MESSAGE_TOO_LARGE_DOWN, "function"),
                };
                let reason = match size {
                    Some(size) => {
                        format!("message from {direction} too large: {size} > {limit} bytes")
                    }
                    None => format!("message from {direction} over the limit of {limit} bytes"),
                };
                (
                    status,
                    "message_too_large",
                    Some(Gateway),
                    Some(TOO_BIG),
                    reason,
                )
            }
            R::RateLimited { detail } => (
                S::RATE_LIMITED,
                "rate_limited",
                Some(Gateway),
                Some(POLICY),
                with_detail("rate limit exceeded", detail),
            ),
            // Start failures and the quota: scfsim answered the upgrade with an HTTP error, so
            // there is no close code, but it was scfsim that ended the attempt.
            R::BootstrapNotFound { .. } => no_close(S::BOOTSTRAP_NOT_FOUND, "bootstrap_not_found"),
            R::BootstrapExited { .. } => no_close(S::BOOTSTRAP_EXITED, "bootstrap_exited"),
            R::NotListening { .. } => no_close(S::NOT_LISTENING, "not_listening"),
            R::QuotaExceeded { .. } => no_close(S::QUOTA_EXCEEDED, "quota_exceeded"),
            R::InstanceRateExceeded { .. } => no_close(S::RATE_LIMITED, "rate_limited"),
            R::GatewayError { .. } => no_close(S::GATEWAY_ERROR, "gateway_error"),
            R::EndedByAdmin => (
                S::GATEWAY_ERROR,
                "ended_by_admin",
                Some(Gateway),
                Some(GOING_AWAY),
                "ended through the admin API".into(),
            ),
            // The function itself refused the handshake; the platform counts that as a
            // completed invocation (the HTTP status goes into the record, not here).
            R::UpgradeRejected { .. } => (
                S::SUCCESS,
                "upgrade_rejected",
                Some(Function),
                None,
                String::new(),
            ),
            R::GatewayShutdown => (
                S::GATEWAY_ERROR,
                "gateway_shutdown",
                Some(Gateway),
                Some(GOING_AWAY),
                "scfsim is shutting down".into(),
            ),
            R::GatewayCrashed => no_close(S::GATEWAY_ERROR, "gateway_crashed"),
        };

    Classification {
        status_code: status,
        outcome: if status.is_success() {
            Outcome::Success
        } else {
            Outcome::Failure
        },
        end_reason: name,
        closed_by,
        close_code,
        close_reason: fit_close_reason(close_reason),
    }
}

fn no_close(
    status: StatusCode,
    name: &'static str,
) -> (
    StatusCode,
    &'static str,
    Option<ClosedBy>,
    Option<u16>,
    String,
) {
    (status, name, Some(ClosedBy::Gateway), None, String::new())
}

fn with_detail(what: &str, detail: &str) -> String {
    if detail.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {detail}")
    }
}

/// Seconds when the duration is whole seconds (how limits are configured), else milliseconds
/// (tests run with sub-second limits).
fn human(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Cuts a reason to what a close frame can carry, on a char boundary, marking the cut. The full
/// text of a detail is kept in the record's `error` field.
fn fit_close_reason(mut reason: String) -> String {
    if reason.len() <= MAX_CLOSE_REASON {
        return reason;
    }
    let mut cut = MAX_CLOSE_REASON - 3;
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    reason.truncate(cut);
    reason.push_str("...");
    reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use ClosedBy::{Client as C, Function as F, Gateway as G};
    use Outcome::{Failure as Fail, Success as Ok};

    fn s(text: &str) -> String {
        text.to_owned()
    }

    /// reason, status, outcome, end_reason, closed_by, close_code
    type Row = (
        EndReason,
        u16,
        Outcome,
        &'static str,
        Option<ClosedBy>,
        Option<u16>,
    );

    #[test]
    fn classify_table() {
        let secs = Duration::from_secs;
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            // Client close: exactly 1000 and 1010 succeed; neighbours and "no code" do not.
            (EndReason::ClientClosed { code: Some(1000), reason: s("bye") }, 200, Ok, "client_closed", Some(C), Some(1000)),
            (EndReason::ClientClosed { code: Some(1010), reason: s("") }, 200, Ok, "client_closed", Some(C), Some(1010)),
            (EndReason::ClientClosed { code: Some(1001), reason: s("tab closed") }, 456, Fail, "client_closed", Some(C), Some(1001)),
            (EndReason::ClientClosed { code: Some(1009), reason: s("") }, 456, Fail, "client_closed", Some(C), Some(1009)),
            (EndReason::ClientClosed { code: Some(1011), reason: s("") }, 456, Fail, "client_closed", Some(C), Some(1011)),
            (EndReason::ClientClosed { code: Some(3000), reason: s("") }, 456, Fail, "client_closed", Some(C), Some(3000)),
            (EndReason::ClientClosed { code: Some(4999), reason: s("") }, 456, Fail, "client_closed", Some(C), Some(4999)),
            (EndReason::ClientClosed { code: None, reason: s("") }, 456, Fail, "client_closed", Some(C), Some(1005)),
            (EndReason::ClientDropped, 456, Fail, "client_dropped", Some(C), Some(1006)),
            (EndReason::ClientProtocolError { code: 1002, detail: s("bad frame") }, 456, Fail, "client_protocol_error", Some(G), Some(1002)),
            (EndReason::ClientProtocolError { code: 1007, detail: s("invalid UTF-8") }, 456, Fail, "client_protocol_error", Some(G), Some(1007)),
            // Function close: exactly 1000 and 1011 succeed.
            (EndReason::FunctionClosed { code: Some(1000), reason: s("") }, 200, Ok, "function_closed", Some(F), Some(1000)),
            (EndReason::FunctionClosed { code: Some(1011), reason: s("oops") }, 200, Ok, "function_closed", Some(F), Some(1011)),
            (EndReason::FunctionClosed { code: Some(1010), reason: s("") }, 439, Fail, "function_closed", Some(F), Some(1010)),
            (EndReason::FunctionClosed { code: Some(1001), reason: s("") }, 439, Fail, "function_closed", Some(F), Some(1001)),
            (EndReason::FunctionClosed { code: Some(1012), reason: s("") }, 439, Fail, "function_closed", Some(F), Some(1012)),
            (EndReason::FunctionClosed { code: Some(4000), reason: s("app") }, 439, Fail, "function_closed", Some(F), Some(4000)),
            (EndReason::FunctionClosed { code: None, reason: s("") }, 439, Fail, "function_closed", Some(F), Some(1005)),
            (EndReason::InstanceExited { detail: s("exit status 1") }, 439, Fail, "instance_exited", Some(F), Some(1011)),
            (EndReason::FunctionProtocolError { detail: s("unmasked?") }, 439, Fail, "function_protocol_error", Some(G), Some(1011)),
            // Limits scfsim enforces.
            (EndReason::IdleTimeout { after: secs(15) }, 455, Fail, "idle_timeout", Some(G), Some(1001)),
            (EndReason::ExecutionTimeout { after: secs(900) }, 433, Fail, "execution_timeout", Some(G), Some(1001)),
            (EndReason::MemoryLimit { limit_mb: 128 }, 434, Fail, "memory_limit", Some(G), Some(1011)),
            (EndReason::MessageTooLarge { from: Side::Client, size: Some(300_000), limit: 262_144 }, 406, Fail, "message_too_large", Some(G), Some(1009)),
            (EndReason::MessageTooLarge { from: Side::Function, size: None, limit: 262_144 }, 407, Fail, "message_too_large", Some(G), Some(1009)),
            (EndReason::RateLimited { detail: s("11 messages/s") }, 429, Fail, "rate_limited", Some(G), Some(1008)),
            // Nothing to close: the attempt ended before a WebSocket existed.
            (EndReason::BootstrapNotFound { detail: s("no scf_bootstrap") }, 445, Fail, "bootstrap_not_found", Some(G), None),
            (EndReason::BootstrapExited { detail: s("exit 2") }, 405, Fail, "bootstrap_exited", Some(G), None),
            (EndReason::NotListening { detail: s("60s") }, 446, Fail, "not_listening", Some(G), None),
            (EndReason::QuotaExceeded { detail: s("10 running") }, 432, Fail, "quota_exceeded", Some(G), None),
            (EndReason::InstanceRateExceeded { detail: s("500/min") }, 429, Fail, "rate_limited", Some(G), None),
            (EndReason::GatewayError { detail: s("fork failed") }, 500, Fail, "gateway_error", Some(G), None),
            (EndReason::EndedByAdmin, 500, Fail, "ended_by_admin", Some(G), Some(1001)),
            (EndReason::UpgradeRejected { http_status: 403 }, 200, Ok, "upgrade_rejected", Some(F), None),
            // scfsim itself.
            (EndReason::GatewayShutdown, 500, Fail, "gateway_shutdown", Some(G), Some(1001)),
            (EndReason::GatewayCrashed, 500, Fail, "gateway_crashed", Some(G), None),
        ];

        for (reason, status, outcome, name, closed_by, close_code) in &table {
            let c = classify(reason);
            let got = (
                c.status_code.0,
                c.outcome,
                c.end_reason,
                c.closed_by,
                c.close_code,
            );
            assert_eq!(
                got,
                (*status, *outcome, *name, *closed_by, *close_code),
                "classify({reason:?})"
            );
            assert!(c.close_reason.len() <= MAX_CLOSE_REASON, "{reason:?}");
            if c.close_code.is_none() {
                assert!(c.close_reason.is_empty(), "{reason:?}");
            }
        }
    }

    #[test]
    fn peer_reasons_pass_through_and_ours_name_the_cause() {
        let c = classify(&EndReason::ClientClosed {
            code: Some(1000),
            reason: s("bye"),
        });
        assert_eq!(c.close_reason, "bye");
        let c = classify(&EndReason::IdleTimeout {
            after: Duration::from_millis(500),
        });
        assert_eq!(c.close_reason, "idle timeout: no message for 500ms");
        let c = classify(&EndReason::ExecutionTimeout {
            after: Duration::from_secs(900),
        });
        assert_eq!(c.close_reason, "execution timeout of 900s reached");
        let c = classify(&EndReason::InstanceExited { detail: s("") });
        assert_eq!(c.close_reason, "function instance exited");
        let c = classify(&EndReason::MemoryLimit { limit_mb: 128 });
        assert!(c.close_reason.contains("128 MB"));
    }

    #[test]
    fn long_details_are_cut_to_fit_a_close_frame() {
        let detail = "é".repeat(200);
        let c = classify(&EndReason::InstanceExited { detail });
        assert!(c.close_reason.len() <= MAX_CLOSE_REASON);
        assert!(c.close_reason.ends_with("..."));
        assert!(c.close_reason.starts_with("function instance exited: é"));
    }

    #[test]
    fn status_code_serializes_as_bare_integer() {
        assert_eq!(
            serde_json::to_string(&StatusCode::IDLE_TIMEOUT).unwrap(),
            "455"
        );
        assert_eq!(
            serde_json::from_str::<StatusCode>("439").unwrap(),
            StatusCode::FUNCTION_FAILED
        );
        assert_eq!(
            serde_json::to_string(&ClosedBy::Gateway).unwrap(),
            "\"gateway\""
        );
        assert_eq!(
            serde_json::to_string(&Outcome::Failure).unwrap(),
            "\"failure\""
        );
        assert_eq!(
            serde_json::to_string(&Side::Function).unwrap(),
            "\"function\""
        );
    }
}
