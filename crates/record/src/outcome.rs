//! How an invocation ended (facts, reported by the gateway) and what the platform calls it
//! (policy, decided here): the status code and the record's close details (semantics.md §3),
//! and the close frame each side gets (§4). Keeping the policy in one pure function means both
//! live in one table that a unit test walks row by row; the gateway only carries it out.

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
    /// The function broke the protocol; scfsim closed it with `code` (1002 or 1007) and the
    /// client with 1011.
    FunctionProtocolError { code: u16, detail: String },
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
    /// An image function's image could not be pulled (PullImageFailed).
    ImagePullFailed { detail: String },
    /// An image function's image was still being pulled when the init timeout ended
    /// (PullImageTimeOut).
    ImagePullTimedOut { detail: String },
    /// An image function's container could not start its command: a bad `command` or `args`
    /// (ContainerInitError).
    ContainerInitError { detail: String },
    /// The function's concurrency quota was reached; no instance was started.
    QuotaExceeded { detail: String },
    /// Too many new instances per minute (the platform's burst quota): 429, refused before
    /// the upgrade, so no close code.
    InstanceRateExceeded { detail: String },
    /// scfsim's own failure (namespaces, cgroups, fork) before the instance could start: 500.
    GatewayError { detail: String },
    /// Ended on request through the admin API (`DELETE /api/instances/{id}`). Without a
    /// `code`, both sides get close 1001; with one (`?code=N&reason=TEXT`, a code that may be
    /// sent), the client gets that code and `reason`, the function 1001.
    EndedByAdmin { code: Option<u16>, reason: String },
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
    pub const IMAGE_PULL_FAILED: StatusCode = StatusCode(444);
    pub const FUNCTION_FAILED: StatusCode = StatusCode(439);
    pub const BOOTSTRAP_NOT_FOUND: StatusCode = StatusCode(445);
    pub const NOT_LISTENING: StatusCode = StatusCode(446);
    pub const IMAGE_PULL_TIMED_OUT: StatusCode = StatusCode(447);
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
    /// What scfsim sends each side to end the connection (semantics.md §4).
    pub closing: Closing,
}

/// A close frame scfsim sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    pub code: u16,
    /// At most 123 bytes, so it fits a close frame as is.
    pub reason: String,
}

/// What scfsim does toward one side when the connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseStep {
    /// Send this close frame and wait, bounded, for the side's reply. `None` is a close frame
    /// without a status code: how a peer's close without one is passed on.
    Send(Option<CloseFrame>),
    /// The side closed first: only complete its closing handshake (the reply repeats the side's
    /// own frame, RFC 6455 §5.5.1).
    Answer,
    /// Nothing to send: the side's connection is gone, or no WebSocket connection existed.
    Nothing,
}

/// In which order the two closing handshakes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseOrder {
    /// Both at once.
    Together,
    /// The function's first, passing what it sends before its close reply through to the
    /// client; then the client's. Used when the client is at fault: the messages it sent before
    /// its fault reached the function, and the function's answers to them must reach the
    /// client before its close frame does (no timer decides how long "before" is).
    FunctionFirst,
}

/// How scfsim ends both sides of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    pub to_client: CloseStep,
    pub to_function: CloseStep,
    pub order: CloseOrder,
}

impl Closing {
    /// Nothing to close on either side.
    const NONE: Closing = Closing {
        to_client: CloseStep::Nothing,
        to_function: CloseStep::Nothing,
        order: CloseOrder::Together,
    };
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

/// The close reason of a connection ended through the admin API without a chosen one.
pub const ADMIN_CLOSE: &str = "ended through the admin API";

/// Turns what happened into what the platform records (semantics.md §3) and what scfsim sends
/// each side as its close frame (§4). Every close reason scfsim writes, on the wire or in the
/// record, is worded here. Pure: same input, same output, no clock, no I/O.
pub fn classify(reason: &EndReason) -> Classification {
    use CloseOrder::{FunctionFirst, Together};
    use CloseStep::{Answer, Nothing};
    use ClosedBy::{Client, Function, Gateway};
    use EndReason as R;
    use StatusCode as S;

    let d: Decision = match reason {
        R::ClientClosed { code, reason } => Decision {
            // The doc lists exactly 1000 and 1010 as a client's successful close. A close
            // frame without a code (1005) is not in that list, so it is 456 like any other
            // code: we follow the doc literally rather than guess the client's intent.
            status: match code {
                Some(NORMAL | MANDATORY_EXT) => S::SUCCESS,
                _ => S::CLIENT_FAILED,
            },
            name: "client_closed",
            closed_by: Some(Client),
            recorded: Some((code.unwrap_or(NO_STATUS), reason.clone())),
            to_client: Answer,
            to_function: pass_on(*code, reason),
            order: Together,
        },
        R::ClientDropped => {
            let why = "client connection dropped without a close frame";
            Decision {
                status: S::CLIENT_FAILED,
                name: "client_dropped",
                closed_by: Some(Client),
                recorded: Some((ABNORMAL, why.into())),
                to_client: Nothing,
                to_function: send(GOING_AWAY, why),
                order: Together,
            }
        }
        R::ClientProtocolError { code, detail } => Decision {
            status: S::CLIENT_FAILED,
            name: "client_protocol_error",
            closed_by: Some(Gateway),
            recorded: Some((*code, detail.clone())),
            to_client: send(*code, detail),
            to_function: send(
                GOING_AWAY,
                &with_detail("client broke the WebSocket protocol", detail),
            ),
            order: FunctionFirst,
        },
        R::FunctionClosed { code, reason } => Decision {
            // Same literal reading as for the client: only 1000 and 1011 are listed.
            status: match code {
                Some(NORMAL | INTERNAL_ERROR) => S::SUCCESS,
                _ => S::FUNCTION_FAILED,
            },
            name: "function_closed",
            closed_by: Some(Function),
            recorded: Some((code.unwrap_or(NO_STATUS), reason.clone())),
            to_client: pass_on(*code, reason),
            to_function: Answer,
            order: Together,
        },
        R::InstanceExited { detail } => {
            let why = with_detail("function instance exited", detail);
            Decision {
                status: S::FUNCTION_FAILED,
                name: "instance_exited",
                closed_by: Some(Function),
                to_client: send(INTERNAL_ERROR, &why),
                recorded: Some((INTERNAL_ERROR, why)),
                to_function: Nothing,
                order: Together,
            }
        }
        R::FunctionProtocolError { code, detail } => {
            let why = with_detail("function broke the WebSocket protocol", detail);
            Decision {
                status: S::FUNCTION_FAILED,
                name: "function_protocol_error",
                closed_by: Some(Gateway),
                to_client: send(INTERNAL_ERROR, &why),
                recorded: Some((INTERNAL_ERROR, why)),
                to_function: send(*code, detail),
                order: Together,
            }
        }
        R::IdleTimeout { after } => both_sides(
            S::IDLE_TIMEOUT,
            "idle_timeout",
            format!("idle timeout: no message for {}", human(*after)),
        ),
        R::ExecutionTimeout { after } => both_sides(
            S::EXECUTION_TIMEOUT,
            "execution_timeout",
            format!("execution timeout of {} reached", human(*after)),
        ),
        R::MemoryLimit { limit_mb } => {
            let why = format!("memory limit of {limit_mb} MB exceeded");
            Decision {
                status: S::MEMORY_LIMIT,
                name: "memory_limit",
                closed_by: Some(Gateway),
                to_client: send(INTERNAL_ERROR, &why),
                recorded: Some((INTERNAL_ERROR, why)),
                // The kernel killed it, or scfsim stops it next: nobody to talk to.
                to_function: Nothing,
                order: Together,
            }
        }
        R::MessageTooLarge { from, size, limit } => {
            let direction = match from {
                Side::Client => "client",
                Side::Function => "function",
            };
            let why = match size {
                Some(size) => format!("message from {direction} too large: {size} > {limit} bytes"),
                None => format!("message from {direction} over the limit of {limit} bytes"),
            };
            // 1009 to the sender, 1001 to the other side, one text for both.
            let (status, to_client, to_function, order) = match from {
                Side::Client => (
                    S::MESSAGE_TOO_LARGE_UP,
                    send(TOO_BIG, &why),
                    send(GOING_AWAY, &why),
                    FunctionFirst,
                ),
                Side::Function => (
                    S::MESSAGE_TOO_LARGE_DOWN,
                    send(GOING_AWAY, &why),
                    send(TOO_BIG, &why),
                    Together,
                ),
            };
            Decision {
                status,
                name: "message_too_large",
                closed_by: Some(Gateway),
                recorded: Some((TOO_BIG, why)),
                to_client,
                to_function,
                order,
            }
        }
        R::RateLimited { detail } => {
            let why = with_detail("rate limit exceeded", detail);
            Decision {
                status: S::RATE_LIMITED,
                name: "rate_limited",
                closed_by: Some(Gateway),
                to_client: send(POLICY, &why),
                to_function: send(GOING_AWAY, &why),
                recorded: Some((POLICY, why)),
                order: FunctionFirst,
            }
        }
        // Start failures and the quota: scfsim answered the upgrade with an HTTP error, so
        // there is no close code, but it was scfsim that ended the attempt.
        R::BootstrapNotFound { .. } => no_close(S::BOOTSTRAP_NOT_FOUND, "bootstrap_not_found"),
        R::BootstrapExited { .. } => no_close(S::BOOTSTRAP_EXITED, "bootstrap_exited"),
        R::NotListening { .. } => no_close(S::NOT_LISTENING, "not_listening"),
        R::ImagePullFailed { .. } => no_close(S::IMAGE_PULL_FAILED, "image_pull_failed"),
        R::ImagePullTimedOut { .. } => no_close(S::IMAGE_PULL_TIMED_OUT, "image_pull_timed_out"),
        R::ContainerInitError { .. } => no_close(S::BOOTSTRAP_NOT_FOUND, "container_init_error"),
        R::QuotaExceeded { .. } => no_close(S::QUOTA_EXCEEDED, "quota_exceeded"),
        R::InstanceRateExceeded { .. } => no_close(S::RATE_LIMITED, "rate_limited"),
        R::GatewayError { .. } => no_close(S::GATEWAY_ERROR, "gateway_error"),
        R::EndedByAdmin { code: None, .. } => {
            both_sides(S::GATEWAY_ERROR, "ended_by_admin", ADMIN_CLOSE.into())
        }
        // A person chose the client's close code: the function still only learns that scfsim
        // ended it.
        R::EndedByAdmin {
            code: Some(code),
            reason,
        } => Decision {
            to_client: send(*code, reason),
            recorded: Some((*code, reason.clone())),
            ..both_sides(S::GATEWAY_ERROR, "ended_by_admin", ADMIN_CLOSE.into())
        },
        // The function itself refused the handshake; the platform counts that as a
        // completed invocation (the HTTP status goes into the record, not here).
        R::UpgradeRejected { .. } => Decision {
            closed_by: Some(Function),
            ..no_close(S::SUCCESS, "upgrade_rejected")
        },
        R::GatewayShutdown => both_sides(
            S::GATEWAY_ERROR,
            "gateway_shutdown",
            "scfsim is shutting down".into(),
        ),
        R::GatewayCrashed => no_close(S::GATEWAY_ERROR, "gateway_crashed"),
    };

    let (close_code, close_reason) = match d.recorded {
        Some((code, reason)) => (Some(code), fit_close_reason(reason)),
        None => (None, String::new()),
    };
    Classification {
        status_code: d.status,
        outcome: if d.status.is_success() {
            Outcome::Success
        } else {
            Outcome::Failure
        },
        end_reason: d.name,
        closed_by: d.closed_by,
        close_code,
        close_reason,
        closing: Closing {
            to_client: d.to_client,
            to_function: d.to_function,
            order: d.order,
        },
    }
}

/// One row of the policy, before the record's reason is cut to fit.
struct Decision {
    status: StatusCode,
    name: &'static str,
    closed_by: Option<ClosedBy>,
    /// The close code and reason the record keeps.
    recorded: Option<(u16, String)>,
    to_client: CloseStep,
    to_function: CloseStep,
    order: CloseOrder,
}

/// scfsim ends the connection for its own reason: the same frame to both sides, and in the
/// record.
fn both_sides(status: StatusCode, name: &'static str, why: String) -> Decision {
    Decision {
        status,
        name,
        closed_by: Some(ClosedBy::Gateway),
        to_client: send(GOING_AWAY, &why),
        to_function: send(GOING_AWAY, &why),
        recorded: Some((GOING_AWAY, why)),
        order: CloseOrder::Together,
    }
}

fn no_close(status: StatusCode, name: &'static str) -> Decision {
    let Closing {
        to_client,
        to_function,
        order,
    } = Closing::NONE;
    Decision {
        status,
        name,
        closed_by: Some(ClosedBy::Gateway),
        recorded: None,
        to_client,
        to_function,
        order,
    }
}

/// A close frame to send. A code that may not appear on the wire (1005, 1006, 1015, reserved
/// ranges) becomes a close frame without a code, so no caller can put one there.
fn send(code: u16, reason: &str) -> CloseStep {
    if !may_be_sent(code) {
        return CloseStep::Send(None);
    }
    CloseStep::Send(Some(CloseFrame {
        code,
        reason: fit_close_reason(reason.to_owned()),
    }))
}

/// A peer's close frame, passed to the other side as it came (with no code, none is sent).
fn pass_on(code: Option<u16>, reason: &str) -> CloseStep {
    match code {
        Some(code) => send(code, reason),
        None => CloseStep::Send(None),
    }
}

/// The codes an endpoint may send (RFC 6455 §7.4, as tungstenite checks a received one).
pub fn may_be_sent(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
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
/// text of a detail is kept in the record's `error` field. The only place a close reason is
/// cut, for the wire and the record alike.
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

    /// One row of the policy: the facts, then what the record says, then what each side gets.
    struct Row {
        reason: EndReason,
        status: u16,
        outcome: Outcome,
        end_reason: &'static str,
        closed_by: Option<ClosedBy>,
        /// The record's close code and reason.
        recorded: Option<(u16, &'static str)>,
        to_client: CloseStep,
        to_function: CloseStep,
        order: CloseOrder,
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        reason: EndReason,
        status: u16,
        outcome: Outcome,
        end_reason: &'static str,
        closed_by: Option<ClosedBy>,
        recorded: Option<(u16, &'static str)>,
        (to_client, to_function): (CloseStep, CloseStep),
        order: CloseOrder,
    ) -> Row {
        Row {
            reason,
            status,
            outcome,
            end_reason,
            closed_by,
            recorded,
            to_client,
            to_function,
            order,
        }
    }

    /// scfsim sends this close frame.
    fn frame(code: u16, reason: &str) -> CloseStep {
        CloseStep::Send(Some(CloseFrame {
            code,
            reason: reason.to_owned(),
        }))
    }

    /// The table, grouped by variant. The macro also writes a `match` over the variants named
    /// here, without a wildcard: a new `EndReason` variant does not compile until it has its
    /// rows in this table.
    macro_rules! policy_table {
        ($($variant:ident => [$($row:expr),+ $(,)?]),+ $(,)?) => {{
            fn every_variant_has_rows(reason: &EndReason) {
                match reason {
                    $(EndReason::$variant { .. } => {})+
                }
            }
            let _: fn(&EndReason) = every_variant_has_rows;
            let mut rows: Vec<Row> = Vec::new();
            $($(
                let row: Row = $row;
                assert!(
                    matches!(row.reason, EndReason::$variant { .. }),
                    "{:?} is listed under {}",
                    row.reason,
                    stringify!($variant)
                );
                rows.push(row);
            )+)+
            rows
        }};
    }

    /// semantics.md §3 (status) and §4 (close frames), one row per case. Columns: the facts;
    /// status, outcome, end_reason, closed_by, the record's close code and reason; (what the
    /// client gets, what the function gets); the order of the two closing handshakes.
    fn table() -> Vec<Row> {
        use CloseOrder::{FunctionFirst as First, Together};
        use CloseStep::{Answer, Nothing};
        use EndReason as R;
        let secs = Duration::from_secs;
        let none = (Nothing, Nothing);
        let idle = "idle timeout: no message for 15s";
        let exec = "execution timeout of 900s reached";
        let dropped = "client connection dropped without a close frame";
        let up_big = "message from client too large: 300000 > 262144 bytes";
        let down_big = "message from function over the limit of 262144 bytes";
        let rate = "rate limit exceeded: 11 messages/s";
        let admin = "ended through the admin API";
        let shutdown = "scfsim is shutting down";
        policy_table! {
            // Client close: exactly 1000 and 1010 succeed; neighbours and "no code" do not. The
            // client's frame goes to the function as it came; the client gets its echo.
            ClientClosed => [
                row(R::ClientClosed { code: Some(1000), reason: s("bye") }, 200, Ok, "client_closed", Some(C), Some((1000, "bye")), (Answer, frame(1000, "bye")), Together),
                row(R::ClientClosed { code: Some(1010), reason: s("") }, 200, Ok, "client_closed", Some(C), Some((1010, "")), (Answer, frame(1010, "")), Together),
                row(R::ClientClosed { code: Some(1001), reason: s("tab closed") }, 456, Fail, "client_closed", Some(C), Some((1001, "tab closed")), (Answer, frame(1001, "tab closed")), Together),
                row(R::ClientClosed { code: Some(1009), reason: s("") }, 456, Fail, "client_closed", Some(C), Some((1009, "")), (Answer, frame(1009, "")), Together),
                row(R::ClientClosed { code: Some(1011), reason: s("") }, 456, Fail, "client_closed", Some(C), Some((1011, "")), (Answer, frame(1011, "")), Together),
                row(R::ClientClosed { code: Some(3000), reason: s("") }, 456, Fail, "client_closed", Some(C), Some((3000, "")), (Answer, frame(3000, "")), Together),
                row(R::ClientClosed { code: Some(4999), reason: s("") }, 456, Fail, "client_closed", Some(C), Some((4999, "")), (Answer, frame(4999, "")), Together),
                row(R::ClientClosed { code: None, reason: s("") }, 456, Fail, "client_closed", Some(C), Some((1005, "")), (Answer, CloseStep::Send(None)), Together),
            ],
            ClientDropped => [
                row(R::ClientDropped, 456, Fail, "client_dropped", Some(C), Some((1006, dropped)), (Nothing, frame(1001, dropped)), Together),
            ],
            // The function answers what it got before the violation, then the client gets its
            // 1002 / 1007.
            ClientProtocolError => [
                row(R::ClientProtocolError { code: 1002, detail: s("bad frame") }, 456, Fail, "client_protocol_error", Some(G), Some((1002, "bad frame")), (frame(1002, "bad frame"), frame(1001, "client broke the WebSocket protocol: bad frame")), First),
                row(R::ClientProtocolError { code: 1007, detail: s("invalid UTF-8") }, 456, Fail, "client_protocol_error", Some(G), Some((1007, "invalid UTF-8")), (frame(1007, "invalid UTF-8"), frame(1001, "client broke the WebSocket protocol: invalid UTF-8")), First),
            ],
            // Function close: exactly 1000 and 1011 succeed.
            FunctionClosed => [
                row(R::FunctionClosed { code: Some(1000), reason: s("") }, 200, Ok, "function_closed", Some(F), Some((1000, "")), (frame(1000, ""), Answer), Together),
                row(R::FunctionClosed { code: Some(1011), reason: s("oops") }, 200, Ok, "function_closed", Some(F), Some((1011, "oops")), (frame(1011, "oops"), Answer), Together),
                row(R::FunctionClosed { code: Some(1010), reason: s("") }, 439, Fail, "function_closed", Some(F), Some((1010, "")), (frame(1010, ""), Answer), Together),
                row(R::FunctionClosed { code: Some(1001), reason: s("") }, 439, Fail, "function_closed", Some(F), Some((1001, "")), (frame(1001, ""), Answer), Together),
                row(R::FunctionClosed { code: Some(1012), reason: s("") }, 439, Fail, "function_closed", Some(F), Some((1012, "")), (frame(1012, ""), Answer), Together),
                row(R::FunctionClosed { code: Some(4000), reason: s("app") }, 439, Fail, "function_closed", Some(F), Some((4000, "app")), (frame(4000, "app"), Answer), Together),
                row(R::FunctionClosed { code: None, reason: s("") }, 439, Fail, "function_closed", Some(F), Some((1005, "")), (CloseStep::Send(None), Answer), Together),
            ],
            InstanceExited => [
                row(R::InstanceExited { detail: s("exit status 1") }, 439, Fail, "instance_exited", Some(F), Some((1011, "function instance exited: exit status 1")), (frame(1011, "function instance exited: exit status 1"), Nothing), Together),
                row(R::InstanceExited { detail: s("") }, 439, Fail, "instance_exited", Some(F), Some((1011, "function instance exited")), (frame(1011, "function instance exited"), Nothing), Together),
            ],
            FunctionProtocolError => [
                row(R::FunctionProtocolError { code: 1002, detail: s("masked frame") }, 439, Fail, "function_protocol_error", Some(G), Some((1011, "function broke the WebSocket protocol: masked frame")), (frame(1011, "function broke the WebSocket protocol: masked frame"), frame(1002, "masked frame")), Together),
                row(R::FunctionProtocolError { code: 1007, detail: s("invalid UTF-8") }, 439, Fail, "function_protocol_error", Some(G), Some((1011, "function broke the WebSocket protocol: invalid UTF-8")), (frame(1011, "function broke the WebSocket protocol: invalid UTF-8"), frame(1007, "invalid UTF-8")), Together),
            ],
            // Limits scfsim enforces.
            IdleTimeout => [
                row(R::IdleTimeout { after: secs(15) }, 455, Fail, "idle_timeout", Some(G), Some((1001, idle)), (frame(1001, idle), frame(1001, idle)), Together),
                row(R::IdleTimeout { after: secs(90) }, 455, Fail, "idle_timeout", Some(G), Some((1001, "idle timeout: no message for 90s")), (frame(1001, "idle timeout: no message for 90s"), frame(1001, "idle timeout: no message for 90s")), Together),
            ],
            ExecutionTimeout => [
                row(R::ExecutionTimeout { after: secs(900) }, 433, Fail, "execution_timeout", Some(G), Some((1001, exec)), (frame(1001, exec), frame(1001, exec)), Together),
            ],
            MemoryLimit => [
                row(R::MemoryLimit { limit_mb: 128 }, 434, Fail, "memory_limit", Some(G), Some((1011, "memory limit of 128 MB exceeded")), (frame(1011, "memory limit of 128 MB exceeded"), Nothing), Together),
            ],
            // 1009 to the sender, 1001 to the other side.
            MessageTooLarge => [
                row(R::MessageTooLarge { from: Side::Client, size: Some(300_000), limit: 262_144 }, 406, Fail, "message_too_large", Some(G), Some((1009, up_big)), (frame(1009, up_big), frame(1001, up_big)), First),
                row(R::MessageTooLarge { from: Side::Function, size: None, limit: 262_144 }, 407, Fail, "message_too_large", Some(G), Some((1009, down_big)), (frame(1001, down_big), frame(1009, down_big)), Together),
            ],
            RateLimited => [
                row(R::RateLimited { detail: s("11 messages/s") }, 429, Fail, "rate_limited", Some(G), Some((1008, rate)), (frame(1008, rate), frame(1001, rate)), First),
            ],
            // Nothing to close: the attempt ended before a WebSocket existed.
            BootstrapNotFound => [
                row(R::BootstrapNotFound { detail: s("no scf_bootstrap") }, 445, Fail, "bootstrap_not_found", Some(G), None, none.clone(), Together),
            ],
            BootstrapExited => [
                row(R::BootstrapExited { detail: s("exit 2") }, 405, Fail, "bootstrap_exited", Some(G), None, none.clone(), Together),
            ],
            NotListening => [
                row(R::NotListening { detail: s("60s") }, 446, Fail, "not_listening", Some(G), None, none.clone(), Together),
            ],
            ImagePullFailed => [
                row(R::ImagePullFailed { detail: s("no such image") }, 444, Fail, "image_pull_failed", Some(G), None, none.clone(), Together),
            ],
            ImagePullTimedOut => [
                row(R::ImagePullTimedOut { detail: s("60s") }, 447, Fail, "image_pull_timed_out", Some(G), None, none.clone(), Together),
            ],
            ContainerInitError => [
                row(R::ContainerInitError { detail: s("no such file") }, 445, Fail, "container_init_error", Some(G), None, none.clone(), Together),
            ],
            QuotaExceeded => [
                row(R::QuotaExceeded { detail: s("10 running") }, 432, Fail, "quota_exceeded", Some(G), None, none.clone(), Together),
            ],
            InstanceRateExceeded => [
                row(R::InstanceRateExceeded { detail: s("500/min") }, 429, Fail, "rate_limited", Some(G), None, none.clone(), Together),
            ],
            GatewayError => [
                row(R::GatewayError { detail: s("fork failed") }, 500, Fail, "gateway_error", Some(G), None, none.clone(), Together),
            ],
            // Without a code, 1001 both ways; with one, that code to the client, 1001 to the
            // function, and the chosen code in the record.
            EndedByAdmin => [
                row(R::EndedByAdmin { code: None, reason: s("") }, 500, Fail, "ended_by_admin", Some(G), Some((1001, admin)), (frame(1001, admin), frame(1001, admin)), Together),
                row(R::EndedByAdmin { code: Some(4000), reason: s("kicked") }, 500, Fail, "ended_by_admin", Some(G), Some((4000, "kicked")), (frame(4000, "kicked"), frame(1001, admin)), Together),
                row(R::EndedByAdmin { code: Some(1000), reason: s("") }, 500, Fail, "ended_by_admin", Some(G), Some((1000, "")), (frame(1000, ""), frame(1001, admin)), Together),
            ],
            UpgradeRejected => [
                row(R::UpgradeRejected { http_status: 403 }, 200, Ok, "upgrade_rejected", Some(F), None, none.clone(), Together),
            ],
            // scfsim itself.
            GatewayShutdown => [
                row(R::GatewayShutdown, 500, Fail, "gateway_shutdown", Some(G), Some((1001, shutdown)), (frame(1001, shutdown), frame(1001, shutdown)), Together),
            ],
            GatewayCrashed => [
                row(R::GatewayCrashed, 500, Fail, "gateway_crashed", Some(G), None, none, Together),
            ],
        }
    }

    #[test]
    fn classify_table() {
        for row in table() {
            let c = classify(&row.reason);
            let reason = &row.reason;
            let got = (
                c.status_code.0,
                c.outcome,
                c.end_reason,
                c.closed_by,
                c.close_code.map(|code| (code, c.close_reason.as_str())),
            );
            let want = (
                row.status,
                row.outcome,
                row.end_reason,
                row.closed_by,
                row.recorded,
            );
            assert_eq!(got, want, "record of {reason:?}");
            if c.close_code.is_none() {
                assert!(c.close_reason.is_empty(), "{reason:?}");
            }
            let want = Closing {
                to_client: row.to_client,
                to_function: row.to_function,
                order: row.order,
            };
            assert_eq!(c.closing, want, "closing of {reason:?}");
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
        // The client gets the same cut text as the record keeps.
        assert_eq!(
            c.closing.to_client,
            CloseStep::Send(Some(CloseFrame {
                code: 1011,
                reason: c.close_reason.clone()
            }))
        );
    }

    #[test]
    fn codes_that_may_not_be_sent_are_never_sent() {
        for code in [
            0,
            999,
            1004,
            1005,
            1006,
            1014,
            1015,
            1016,
            2999,
            5000,
            u16::MAX,
        ] {
            let c = classify(&EndReason::FunctionClosed {
                code: Some(code),
                reason: s("x"),
            });
            assert_eq!(c.closing.to_client, CloseStep::Send(None), "{code}");
            assert_eq!(
                c.close_code,
                Some(code),
                "the record keeps what came: {code}"
            );
        }
        for code in [1000, 1003, 1007, 1013, 3000, 4999] {
            assert!(may_be_sent(code), "{code}");
        }
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
