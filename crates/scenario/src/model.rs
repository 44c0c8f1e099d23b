//! The validated scenario, and the checks that make it from the file ([`load`], [`parse`]).
//! Checks run in file order and stop at the first problem, whose message names the step (its
//! number and line) or the key, quotes the value as written and says what is allowed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use scfsim_config::{format_duration, RawDuration};

use crate::raw::{RawOutcome, RawScenario, RawStep};
use crate::ScenarioError;

/// Default `within` of an expectation, and of `timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time for the record to be complete once the connection ended.
const DEFAULT_OUTCOME_WITHIN: Duration = Duration::from_secs(10);
/// At most this many parallel connections per scenario.
const MAX_CONNECTIONS: i64 = 1000;

/// The end reasons of interface.md, for `outcome.end_reason`.
const END_REASONS: &[&str] = &[
    "client_closed",
    "function_closed",
    "client_dropped",
    "idle_timeout",
    "execution_timeout",
    "instance_exited",
    "memory_limit",
    "message_too_large",
    "rate_limited",
    "client_protocol_error",
    "function_protocol_error",
    "bootstrap_not_found",
    "bootstrap_exited",
    "not_listening",
    "quota_exceeded",
    "instance_rate_exceeded",
    "upgrade_rejected",
    "gateway_shutdown",
    "gateway_crashed",
    "gateway_error",
    "ended_by_admin",
];

/// A text in which `{n}` stands for the connection's number (1 to `connections`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(pub String);

impl Template {
    /// The text for connection `n`.
    pub fn render(&self, n: u32) -> String {
        self.0.replace("{n}", &n.to_string())
    }
}

/// A validated scenario file.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The file, as given (for reports).
    pub file: PathBuf,
    /// `name`, or the file name.
    pub name: String,
    /// Gateway path, starting with '/'.
    pub path: Template,
    /// Query parameters in key order.
    pub query: Vec<(String, Template)>,
    /// Extra headers of the upgrade request.
    pub headers: Vec<(String, Template)>,
    /// Subprotocols offered.
    pub subprotocols: Vec<String>,
    /// Parallel connections, at least 1.
    pub connections: u32,
    /// Default `within` of the expectations.
    pub timeout: Duration,
    pub steps: Vec<Step>,
    /// The invocation record expected of each connection.
    pub outcome: Option<OutcomeExpectation>,
    /// `[faults]`: injected into each connection (sent in the `X-Scfsim-Faults` header).
    pub faults: Option<scfsim_config::Faults>,
}

/// One step, with where it is in the file.
#[derive(Debug, Clone)]
pub struct Step {
    /// 1-based position among the steps.
    pub number: usize,
    /// 1-based line of its `[[steps]]` table.
    pub line: usize,
    pub action: Action,
}

impl Step {
    /// "step 3 (line 12)", as messages name it.
    pub fn describe(&self) -> String {
        format!("step {} (line {})", self.number, self.line)
    }
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum Action {
    SendText(Template),
    SendBinary(Vec<u8>),
    /// A file's content (read when the scenario was loaded), as a binary or a text message.
    SendFile {
        path: PathBuf,
        bytes: Vec<u8>,
        text: bool,
    },
    /// The next message must be this, within `within`.
    Expect {
        expected: Expected,
        within: Duration,
    },
    /// No text or binary message (nor a close) for this long.
    ExpectNothing(Duration),
    /// The close frame the client gets.
    ExpectClose {
        expected: CloseExpectation,
        within: Duration,
    },
    Sleep(Duration),
    /// A ping with this payload; its pong must come back within `within`.
    Ping {
        payload: String,
        within: Duration,
    },
    /// The client closes with this code and reason.
    Close {
        code: u16,
        reason: String,
    },
}

impl Action {
    /// The key that chose this action, for reports.
    pub fn key(&self) -> &'static str {
        match self {
            Action::SendText(_) => "send",
            Action::SendBinary(_) => "send_binary",
            Action::SendFile { .. } => "send_file",
            Action::Expect { expected, .. } => match expected {
                Expected::Text(_) => "expect",
                Expected::Matches(_) => "expect_match",
                Expected::Json(_) => "expect_json",
                Expected::Binary { file: None, .. } => "expect_binary",
                Expected::Binary { file: Some(_), .. } => "expect_file",
            },
            Action::ExpectNothing(_) => "expect_nothing",
            Action::ExpectClose { .. } => "expect_close",
            Action::Sleep(_) => "sleep",
            Action::Ping { .. } => "ping",
            Action::Close { .. } => "close",
        }
    }
}

/// An expected message.
#[derive(Debug, Clone)]
pub enum Expected {
    /// A text message equal to this.
    Text(Template),
    /// A text message matching this regular expression (unanchored; use ^ and $).
    Matches(Template),
    /// A text message holding JSON of which this is a subset: every key given must be there
    /// with a matching value; arrays match element by element and must have the same length.
    Json(serde_json::Value),
    /// A binary message equal to these bytes (from `expect_binary`, or the file of
    /// `expect_file`).
    Binary {
        bytes: Vec<u8>,
        file: Option<PathBuf>,
    },
}

/// What the close frame the client gets must say; `None` = anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloseExpectation {
    pub code: Option<u16>,
    pub reason: Option<String>,
}

/// `[outcome]`: the fields of the record to compare.
#[derive(Debug, Clone, Default)]
pub struct OutcomeExpectation {
    pub function: Option<String>,
    pub status_code: Option<u16>,
    pub outcome: Option<String>,
    pub end_reason: Option<String>,
    /// `Some(None)` = `closed_by = "none"` (the record's null).
    pub closed_by: Option<Option<String>>,
    pub close_code: Option<u16>,
    pub close_reason: Option<String>,
    /// (field, value) of the counters given.
    pub counts: Vec<(&'static str, u64)>,
    /// The record's `injected_faults`, exactly.
    pub injected_faults: Option<Vec<String>>,
    /// How long the record may take to complete after the connection ended.
    pub within: Duration,
}

/// Reads, parses and validates the scenario file at `path`. Files it names (`send_file`,
/// `expect_file`) are relative to its directory and read now.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and validates scenario `text`; `path` names the file in messages and is the base of
/// the files it names.
pub fn parse(text: &str, path: &Path) -> Result<Scenario, ScenarioError> {
    let raw: RawScenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    Checker { path, text }.scenario(raw)
}

struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
}

type Checked<T> = Result<T, ScenarioError>;

impl Checker<'_> {
    fn invalid(&self, field: impl Into<String>, message: impl Into<String>) -> ScenarioError {
        ScenarioError::Invalid {
            path: self.path.to_path_buf(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn base_dir(&self) -> &Path {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    }

    fn scenario(&self, raw: RawScenario) -> Checked<Scenario> {
        let name = match raw.name {
            Some(name) if name.trim().is_empty() => {
                return Err(self.invalid("name", "must not be empty (or leave it out)"))
            }
            Some(name) => name,
            None => self.path.file_name().map_or_else(
                || self.path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
        };
        if !raw.path.starts_with('/') || raw.path.contains(['?', '#', ' ']) {
            return Err(self.invalid(
                "path",
                format!(
                    "got {:?}; must start with '/' and hold no '?', '#' or space (put query \
                     parameters in the query table)",
                    raw.path
                ),
            ));
        }
        for (key, value) in &raw.headers {
            let bad = http::HeaderName::from_bytes(key.as_bytes()).is_err()
                || http::HeaderValue::from_str(value).is_err();
            if bad {
                return Err(self.invalid(
                    format!("headers.{key:?}"),
                    format!("{key:?} = {value:?} is not a valid HTTP header"),
                ));
            }
        }
        for (i, p) in raw.subprotocols.iter().enumerate() {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
                return Err(self.invalid(
                    format!("subprotocols[{i}]"),
                    format!("got {p:?}; a subprotocol is a token (visible ASCII, no comma)"),
                ));
            }
        }
        let connections = match raw.connections {
            None => 1,
            Some(n) if (1..=MAX_CONNECTIONS).contains(&n) => n as u32,
            Some(n) => {
                return Err(self.invalid(
                    "connections",
                    format!("got {n}; must be 1 to {MAX_CONNECTIONS}"),
                ))
            }
        };
        let timeout = self.duration("timeout", raw.timeout.as_ref(), DEFAULT_TIMEOUT)?;
        let mut steps = Vec::with_capacity(raw.steps.len());
        for (i, spanned) in raw.steps.into_iter().enumerate() {
            let line = self.text[..spanned.span().start.min(self.text.len())]
                .matches('\n')
                .count()
                + 1;
            let number = i + 1;
            let action = self.step(number, line, spanned.into_inner(), timeout)?;
            steps.push(Step {
                number,
                line,
                action,
            });
        }
        let outcome = raw.outcome.map(|o| self.outcome(o)).transpose()?;
        let faults = match &raw.faults {
            Some(faults) => Some(
                scfsim_config::Faults::check(faults)
                    .map_err(|bad| self.invalid(format!("faults.{}", bad.key), bad.problem.0))?,
            ),
            None => None,
        };
        if steps.is_empty() && outcome.is_none() {
            return Err(self.invalid(
                "steps",
                "the scenario has no steps and no [outcome]: add [[steps]] tables (send, \
                 expect, ...) or an [outcome]",
            ));
        }
        Ok(Scenario {
            file: self.path.to_path_buf(),
            name,
            path: Template(raw.path),
            query: raw
                .query
                .into_iter()
                .map(|(k, v)| (k, Template(v)))
                .collect(),
            headers: raw
                .headers
                .into_iter()
                .map(|(k, v)| (k, Template(v)))
                .collect(),
            subprotocols: raw.subprotocols,
            connections,
            timeout,
            steps,
            faults: faults.filter(|f| !f.is_empty()),
            outcome,
        })
    }

    fn duration(
        &self,
        field: &str,
        raw: Option<&RawDuration>,
        default: Duration,
    ) -> Checked<Duration> {
        let Some(raw) = raw else {
            return Ok(default);
        };
        let value = raw
            .to_duration()
            .map_err(|bad| self.invalid(field, bad.0))?;
        if value.is_zero() {
            return Err(self.invalid(field, format!("got {raw}; must be greater than zero")));
        }
        Ok(value)
    }

    fn step(
        &self,
        number: usize,
        line: usize,
        table: toml::Table,
        timeout: Duration,
    ) -> Checked<Action> {
        let at = format!("step {number} (line {line})");
        let keys: Vec<String> = table.keys().cloned().collect();
        let raw: RawStep = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| self.invalid(&at, e.message().trim_end().to_owned()))?;
        let actions: Vec<&str> = keys
            .iter()
            .map(String::as_str)
            .filter(|k| *k != "within" && *k != "as")
            .collect();
        match actions.as_slice() {
            [_] => {}
            [] => {
                return Err(self.invalid(
                    &at,
                    "no action: a step has one of send, send_binary, send_file, expect, \
                     expect_match, expect_json, expect_binary, expect_file, expect_nothing, \
                     expect_close, sleep, ping, close",
                ))
            }
            many => {
                return Err(self.invalid(
                    &at,
                    format!(
                        "{} in one step; a step does one thing: split them into one [[steps]] \
                         table each",
                        many.join(" and ")
                    ),
                ))
            }
        }
        let action = actions[0];
        let takes_within = action.starts_with("expect_") && action != "expect_nothing"
            || action == "expect"
            || action == "ping";
        if raw.within.is_some() && !takes_within {
            return Err(self.invalid(
                &at,
                format!("within does not apply to {action}; only expect, expect_* (but expect_nothing) and ping wait"),
            ));
        }
        if raw.send_as.is_some() && action != "send_file" {
            return Err(self.invalid(
                &at,
                format!("as applies to send_file only, not to {action}"),
            ));
        }
        let within = self.duration(&format!("{at}: within"), raw.within.as_ref(), timeout)?;
        let expect = |expected| Action::Expect { expected, within };
        Ok(match action {
            "send" => Action::SendText(Template(raw.send.unwrap_or_default())),
            "send_binary" => Action::SendBinary(self.hex(
                &at,
                "send_binary",
                &raw.send_binary.unwrap_or_default(),
            )?),
            "send_file" => {
                let (path, bytes) =
                    self.file(&at, "send_file", &raw.send_file.unwrap_or_default())?;
                let text = match raw.send_as.as_deref() {
                    None | Some("binary") => false,
                    Some("text") => true,
                    Some(other) => {
                        return Err(self.invalid(
                            &at,
                            format!("as = {other:?}; must be \"binary\" (the default) or \"text\""),
                        ))
                    }
                };
                if text && std::str::from_utf8(&bytes).is_err() {
                    return Err(self.invalid(
                        &at,
                        format!(
                            "{} is not UTF-8: it cannot go as a text message (use as = \"binary\")",
                            path.display()
                        ),
                    ));
                }
                Action::SendFile { path, bytes, text }
            }
            "expect" => expect(Expected::Text(Template(raw.expect.unwrap_or_default()))),
            "expect_match" => {
                let source = raw.expect_match.unwrap_or_default();
                // Checked with {n} filled in, as the runner compiles it.
                if let Err(err) = regex::Regex::new(&Template(source.clone()).render(1)) {
                    return Err(self.invalid(
                        &at,
                        format!("expect_match = {source:?} is not a regular expression: {err}"),
                    ));
                }
                expect(Expected::Matches(Template(source)))
            }
            "expect_json" => {
                let value = raw.expect_json.unwrap_or(toml::Value::Boolean(true));
                let json = serde_json::to_value(&value).map_err(|e| {
                    self.invalid(&at, format!("expect_json cannot be read as JSON: {e}"))
                })?;
                expect(Expected::Json(json))
            }
            "expect_binary" => expect(Expected::Binary {
                bytes: self.hex(&at, "expect_binary", &raw.expect_binary.unwrap_or_default())?,
                file: None,
            }),
            "expect_file" => {
                let (path, bytes) =
                    self.file(&at, "expect_file", &raw.expect_file.unwrap_or_default())?;
                expect(Expected::Binary {
                    bytes,
                    file: Some(path),
                })
            }
            "expect_nothing" => Action::ExpectNothing(self.duration(
                &format!("{at}: expect_nothing"),
                raw.expect_nothing.as_ref(),
                timeout,
            )?),
            "expect_close" => Action::ExpectClose {
                expected: self.close_expectation(&at, raw.expect_close.as_ref())?,
                within,
            },
            "sleep" => Action::Sleep(self.duration(
                &format!("{at}: sleep"),
                raw.sleep.as_ref(),
                timeout,
            )?),
            "ping" => {
                let payload = raw.ping.unwrap_or_default();
                if payload.len() > 125 {
                    return Err(self.invalid(
                        &at,
                        format!(
                            "ping payload is {} bytes; a control frame carries at most 125",
                            payload.len()
                        ),
                    ));
                }
                Action::Ping { payload, within }
            }
            "close" => {
                let CloseExpectation { code, reason } =
                    self.close_expectation(&at, raw.close.as_ref())?;
                let code = code.unwrap_or(1000);
                if !sendable_close_code(code) {
                    return Err(self.invalid(
                        &at,
                        format!(
                            "close code {code} cannot be sent: use 1000-1003, 1007-1014 or \
                             3000-4999 (1005, 1006 and 1015 are never sent)"
                        ),
                    ));
                }
                let reason = reason.unwrap_or_default();
                if reason.len() > 123 {
                    return Err(self.invalid(
                        &at,
                        format!(
                            "close reason is {} bytes; a close frame carries at most 123",
                            reason.len()
                        ),
                    ));
                }
                Action::Close { code, reason }
            }
            other => unreachable!("serde accepted the unknown step key {other}"),
        })
    }

    /// `4000`, `true` (any close) or `{ code = 4000, reason = "bye" }`.
    fn close_expectation(
        &self,
        at: &str,
        value: Option<&toml::Value>,
    ) -> Checked<CloseExpectation> {
        let wrong = |v: &toml::Value| {
            self.invalid(
                at,
                format!(
                    "got {v}; write a close code (4000), true (any close), or a table \
                     {{ code = 4000, reason = \"bye\" }}"
                ),
            )
        };
        let code = |v: &toml::Value| match v.as_integer() {
            Some(c) if (1000..=4999).contains(&c) => Ok(c as u16),
            _ => Err(self.invalid(
                at,
                format!("close code {v} is not a WebSocket close code (1000 to 4999)"),
            )),
        };
        match value {
            None | Some(toml::Value::Boolean(true)) => Ok(CloseExpectation::default()),
            Some(v @ toml::Value::Integer(_)) => Ok(CloseExpectation {
                code: Some(code(v)?),
                reason: None,
            }),
            Some(toml::Value::Table(t)) => {
                let mut out = CloseExpectation::default();
                for (key, v) in t {
                    match (key.as_str(), v) {
                        ("code", v) => out.code = Some(code(v)?),
                        ("reason", toml::Value::String(s)) => out.reason = Some(s.clone()),
                        _ => {
                            return Err(self.invalid(
                                at,
                                format!("{key} = {v}: the close table takes code (an integer) and reason (a string)"),
                            ))
                        }
                    }
                }
                Ok(out)
            }
            Some(v) => Err(wrong(v)),
        }
    }

    /// Hex digits, spaces allowed between bytes: "00 ff 10" or "00ff10".
    fn hex(&self, at: &str, key: &str, text: &str) -> Checked<Vec<u8>> {
        let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let bad = |why: &str| {
            self.invalid(
                at,
                format!("{key} = {text:?} is not hex bytes ({why}); write e.g. \"00 ff 7f\""),
            )
        };
        if !digits.len().is_multiple_of(2) {
            return Err(bad("an odd number of digits"));
        }
        (0..digits.len())
            .step_by(2)
            .map(|i| {
                digits
                    .get(i..i + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                    .ok_or_else(|| bad("a character that is not a hex digit"))
            })
            .collect()
    }

    /// A file named relative to the scenario file, read now.
    fn file(&self, at: &str, key: &str, text: &str) -> Checked<(PathBuf, Vec<u8>)> {
        if text.is_empty() {
            return Err(self.invalid(at, format!("{key} must name a file")));
        }
        let path = self.base_dir().join(text);
        let bytes = std::fs::read(&path).map_err(|e| {
            self.invalid(
                at,
                format!(
                    "{key} = {text:?}: cannot read {} ({e}); files are relative to the scenario \
                     file's directory",
                    path.display()
                ),
            )
        })?;
        Ok((path, bytes))
    }

    fn outcome(&self, raw: RawOutcome) -> Checked<OutcomeExpectation> {
        let field = |name: &str| format!("outcome.{name}");
        let status_code = match raw.status_code {
            Some(c) if (100..=999).contains(&c) => Some(c as u16),
            Some(c) => {
                return Err(self.invalid(
                    field("status_code"),
                    format!("got {c}; a status code is 100 to 999 (e.g. 200, 433, 439, 455)"),
                ))
            }
            None => None,
        };
        if let Some(o) = raw
            .outcome
            .as_deref()
            .filter(|o| !["success", "failure"].contains(o))
        {
            return Err(self.invalid(
                field("outcome"),
                format!("got {o:?}; must be \"success\" or \"failure\""),
            ));
        }
        if let Some(r) = raw
            .end_reason
            .as_deref()
            .filter(|r| !END_REASONS.contains(r))
        {
            return Err(self.invalid(
                field("end_reason"),
                format!("got {r:?}; must be one of {}", END_REASONS.join(", ")),
            ));
        }
        let closed_by = match raw.closed_by.as_deref() {
            None => None,
            Some("none") => Some(None),
            Some(by @ ("client" | "function" | "gateway")) => Some(Some(by.to_owned())),
            Some(other) => {
                return Err(self.invalid(
                    field("closed_by"),
                    format!(
                        "got {other:?}; must be \"client\", \"function\", \"gateway\" or \"none\""
                    ),
                ))
            }
        };
        let close_code = match raw.close_code {
            Some(c) if (1000..=4999).contains(&c) => Some(c as u16),
            Some(c) => {
                return Err(self.invalid(
                    field("close_code"),
                    format!("got {c}; must be 1000 to 4999"),
                ))
            }
            None => None,
        };
        let mut counts = Vec::new();
        for (name, value) in [
            ("messages_in", raw.messages_in),
            ("messages_out", raw.messages_out),
            ("bytes_in", raw.bytes_in),
            ("bytes_out", raw.bytes_out),
            ("throttled_messages", raw.throttled_messages),
        ] {
            if let Some(v) = value {
                let v = u64::try_from(v).map_err(|_| {
                    self.invalid(field(name), format!("got {v}; a count is 0 or more"))
                })?;
                counts.push((name, v));
            }
        }
        Ok(OutcomeExpectation {
            function: raw.function,
            status_code,
            outcome: raw.outcome,
            end_reason: raw.end_reason,
            closed_by,
            close_code,
            close_reason: raw.close_reason,
            counts,
            injected_faults: raw.injected_faults,
            within: self.duration(
                &field("within"),
                raw.within.as_ref(),
                DEFAULT_OUTCOME_WITHIN,
            )?,
        })
    }
}

/// Codes an endpoint may put in a close frame (RFC 6455 §7.4).
fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// For messages: "5s", "500ms".
pub(crate) fn show(d: Duration) -> String {
    format_duration(d)
}

#[cfg(test)]
mod tests;
