//! Runs a scenario against a running scfsim: every connection in parallel, each through all
//! the steps, then the invocation's record. Nothing here panics on what the function or scfsim
//! does: every surprise is a [`Failure`] with what was expected, what came, and the frame
//! timeline. Every wait is bounded (the step's `within`, the scenario's `timeout`, or the
//! bounds below).

use std::time::Duration;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub use crate::connection::TimelineEntry;
use crate::connection::{hex_preview, quote, ConnectFailure, Connection, Incoming};
use crate::matching::{first_difference, json_subset, text_difference};
use crate::model::show;
use crate::{Action, CloseExpectation, Expected, OutcomeExpectation, Scenario, Step, Template};

/// The longest an upgrade may take (the instance starts meanwhile), unless `timeout` is longer.
const CONNECT_WITHIN: Duration = Duration::from_secs(30);
/// The close handshake and the end of the stream after the last step.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);
/// How often the record is asked for while it is not complete.
const RECORD_POLL: Duration = Duration::from_millis(100);

/// The scfsim to test.
#[derive(Debug, Clone)]
pub struct Target {
    /// `ws://IP:PORT`, without a path.
    pub ws: String,
    /// `http://IP:PORT` of the admin API.
    pub admin: String,
    /// The admin API's bearer token, if it has one.
    pub admin_token: Option<String>,
}

/// What one scenario did.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    pub file: std::path::PathBuf,
    pub name: String,
    pub connections: u32,
    pub elapsed: Duration,
    /// Each connection's request id, where the upgrade succeeded (index = connection - 1).
    pub request_ids: Vec<Option<String>>,
    /// At most one per connection: the first thing that went wrong on it.
    pub failures: Vec<Failure>,
}

impl ScenarioReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// The first thing that went wrong on one connection.
#[derive(Debug, Clone)]
pub struct Failure {
    /// 1-based connection number (the `{n}` of its templates).
    pub connection: u32,
    /// The step that failed (`None`: the upgrade, or the outcome).
    pub step: Option<usize>,
    /// Its line in the file.
    pub line: Option<usize>,
    /// Its key (`expect`, `expect_json`, ...), or `connect` / `outcome`.
    pub action: String,
    /// One line: what went wrong.
    pub message: String,
    pub expected: Option<String>,
    pub got: Option<String>,
    /// More about the difference (where it starts).
    pub detail: Option<String>,
    pub request_id: Option<String>,
    /// Every frame the connection sent and got, up to the failure.
    pub timeline: Vec<TimelineEntry>,
}

impl Failure {
    /// "connection 3, step 2 (line 9) expect", for the one-line summaries.
    pub fn location(&self) -> String {
        let mut at = format!("connection {}", self.connection);
        if let (Some(step), Some(line)) = (self.step, self.line) {
            at.push_str(&format!(", step {step} (line {line})"));
        }
        at.push_str(&format!(" {}", self.action));
        at
    }
}

/// What went wrong in a step, before the report adds where.
struct Problem {
    message: String,
    expected: Option<String>,
    got: Option<String>,
    detail: Option<String>,
}

impl Problem {
    fn new(message: impl Into<String>) -> Problem {
        Problem {
            message: message.into(),
            expected: None,
            got: None,
            detail: None,
        }
    }

    fn expected(mut self, e: impl Into<String>) -> Problem {
        self.expected = Some(e.into());
        self
    }

    fn got(mut self, g: impl Into<String>) -> Problem {
        self.got = Some(g.into());
        self
    }

    fn detail(mut self, d: Option<String>) -> Problem {
        self.detail = d;
        self
    }
}

/// Runs `scenario` against `target`: its connections in parallel.
pub async fn run(scenario: &Scenario, target: &Target) -> ScenarioReport {
    let started = Instant::now();
    let results = futures_util::future::join_all(
        (1..=scenario.connections).map(|n| run_connection(scenario, n, target)),
    )
    .await;
    let mut request_ids = Vec::with_capacity(results.len());
    let mut failures = Vec::new();
    for (request_id, failure) in results {
        request_ids.push(request_id);
        failures.extend(failure);
    }
    ScenarioReport {
        file: scenario.file.clone(),
        name: scenario.name.clone(),
        connections: scenario.connections,
        elapsed: started.elapsed(),
        request_ids,
        failures,
    }
}

async fn run_connection(
    scenario: &Scenario,
    n: u32,
    target: &Target,
) -> (Option<String>, Option<Failure>) {
    let fail =
        |action: &str, step: Option<&Step>, problem: Problem, conn: Option<&Connection>| Failure {
            connection: n,
            step: step.map(|s| s.number),
            line: step.map(|s| s.line),
            action: action.to_owned(),
            message: problem.message,
            expected: problem.expected,
            got: problem.got,
            detail: problem.detail,
            request_id: conn.and_then(|c| c.request_id.clone()),
            timeline: conn.map(|c| c.timeline.entries()).unwrap_or_default(),
        };
    let request = match request(scenario, n, target) {
        Ok(request) => request,
        Err(problem) => return (None, Some(fail("connect", None, problem, None))),
    };
    let mut conn = match Connection::open(request, CONNECT_WITHIN.max(scenario.timeout)).await {
        Ok(conn) => conn,
        Err(ConnectFailure {
            message,
            request_id,
        }) => {
            // A start that fails (on purpose: `[faults] start_failure`) or a quota answers the
            // upgrade with scfsim's error; a scenario without steps may expect just that.
            return match (&scenario.outcome, request_id) {
                (Some(outcome), Some(id)) if scenario.steps.is_empty() => {
                    let checked = check_outcome(outcome, Some(&id), target).await;
                    let failure = checked.err().map(|mut problem| {
                        // The refusal carries the record's error and the HTTP status.
                        problem.detail = Some(message);
                        Failure {
                            request_id: Some(id.clone()),
                            ..fail("outcome", None, problem, None)
                        }
                    });
                    (Some(id), failure)
                }
                _ => (
                    None,
                    Some(fail("connect", None, Problem::new(message), None)),
                ),
            };
        }
    };
    let request_id = conn.request_id.clone();
    for step in &scenario.steps {
        if let Err(problem) = run_step(&mut conn, &step.action, n).await {
            let failure = fail(step.action.key(), Some(step), problem, Some(&conn));
            return (request_id, Some(failure));
        }
    }
    conn.finish(CLOSE_WITHIN).await;
    if let Some(outcome) = &scenario.outcome {
        if let Err(problem) = check_outcome(outcome, request_id.as_deref(), target).await {
            return (
                request_id,
                Some(fail("outcome", None, problem, Some(&conn))),
            );
        }
    }
    (request_id, None)
}

/// The upgrade request of connection `n`.
fn request(scenario: &Scenario, n: u32, target: &Target) -> Result<http::Request<()>, Problem> {
    let mut url = format!(
        "{}{}",
        target.ws.trim_end_matches('/'),
        scenario.path.render(n)
    );
    for (i, (key, value)) in scenario.query.iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url.push_str(&percent_encode(key));
        url.push('=');
        url.push_str(&percent_encode(&value.render(n)));
    }
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| Problem::new(format!("{url} is not a WebSocket URL: {e}")))?;
    let headers = request.headers_mut();
    for (key, value) in &scenario.headers {
        let value = value.render(n);
        let name = http::HeaderName::from_bytes(key.as_bytes())
            .map_err(|e| Problem::new(format!("header {key:?}: {e}")))?;
        let value = http::HeaderValue::from_str(&value)
            .map_err(|e| Problem::new(format!("header {key:?} = {value:?}: {e}")))?;
        headers.append(name, value);
    }
    if let Some(faults) = &scenario.faults {
        // The gateway takes them only when its config has `[gateway] fault_headers = true`
        // (and the admin token, when it has one); otherwise the connect fails with its 403.
        let json = serde_json::to_string(faults).unwrap_or_default();
        let value = http::HeaderValue::from_str(&json)
            .map_err(|e| Problem::new(format!("[faults] as a header: {e}")))?;
        headers.insert("x-scfsim-faults", value);
        if let Some(token) = &target.admin_token {
            let value = http::HeaderValue::from_str(token)
                .map_err(|e| Problem::new(format!("the admin token as a header: {e}")))?;
            headers.insert("x-scfsim-token", value);
        }
    }
    if !scenario.subprotocols.is_empty() {
        let offered = scenario.subprotocols.join(", ");
        let value = http::HeaderValue::from_str(&offered)
            .map_err(|e| Problem::new(format!("subprotocols {offered:?}: {e}")))?;
        headers.insert(http::header::SEC_WEBSOCKET_PROTOCOL, value);
    }
    Ok(request)
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn run_step(conn: &mut Connection, action: &Action, n: u32) -> Result<(), Problem> {
    let sent = |r: Result<(), String>| r.map_err(|e| Problem::new(format!("could not send: {e}")));
    match action {
        Action::SendText(text) => sent(conn.send(Message::text(text.render(n))).await),
        Action::SendBinary(bytes) => sent(conn.send(Message::binary(bytes.clone())).await),
        Action::SendFile { bytes, text, .. } => {
            let msg = match text {
                true => Message::text(String::from_utf8_lossy(bytes).into_owned()),
                false => Message::binary(bytes.clone()),
            };
            sent(conn.send(msg).await)
        }
        Action::Close { code, reason } => sent(conn.close(*code, reason).await),
        Action::Sleep(d) => {
            tokio::time::sleep(*d).await;
            Ok(())
        }
        Action::Expect { expected, within } => expect(conn, expected, *within, n).await,
        Action::ExpectNothing(d) => {
            let deadline = Instant::now() + *d;
            loop {
                match conn.next(deadline).await {
                    None => return Ok(()),
                    Some(Incoming::Pong(_)) => continue,
                    Some(got) => {
                        return Err(Problem::new(format!("something came within {}", show(*d)))
                            .expected(format!("no message for {}", show(*d)))
                            .got(got.describe()))
                    }
                }
            }
        }
        Action::ExpectClose { expected, within } => expect_close(conn, expected, *within).await,
        Action::Ping { payload, within } => {
            sent(
                conn.send(Message::Ping(payload.clone().into_bytes().into()))
                    .await,
            )?;
            let deadline = Instant::now() + *within;
            let mut held = Vec::new();
            let result = loop {
                match conn.next(deadline).await {
                    None => {
                        break Err(Problem::new(format!("no pong within {}", show(*within)))
                            .expected(format!("pong {}", quote(payload)))
                            .got("nothing"))
                    }
                    Some(Incoming::Pong(p)) if p == payload.as_bytes() => break Ok(()),
                    Some(Incoming::Pong(_)) => continue,
                    // Messages are for the next steps: keep them.
                    Some(got @ (Incoming::Text(_) | Incoming::Binary(_))) => held.push(got),
                    Some(got) => {
                        break Err(Problem::new("the connection closed before the pong")
                            .expected(format!("pong {}", quote(payload)))
                            .got(got.describe()))
                    }
                }
            };
            for got in held {
                conn.keep(got);
            }
            result
        }
    }
}

fn describe_expected(expected: &Expected, n: u32) -> String {
    match expected {
        Expected::Text(t) => format!("text {}", quote(&t.render(n))),
        Expected::Matches(re) => format!("text matching /{}/", re.render(n)),
        Expected::Json(v) => format!("JSON containing {}", render_json(v, n)),
        Expected::Binary { bytes, file: None } => format!("binary {}", hex_preview(bytes)),
        Expected::Binary {
            bytes,
            file: Some(f),
        } => format!("binary equal to {} ({})", f.display(), hex_preview(bytes)),
    }
}

async fn expect(
    conn: &mut Connection,
    expected: &Expected,
    within: Duration,
    n: u32,
) -> Result<(), Problem> {
    let want = describe_expected(expected, n);
    let deadline = Instant::now() + within;
    let got = loop {
        match conn.next(deadline).await {
            None => {
                return Err(
                    Problem::new(format!("nothing came within {}", show(within)))
                        .expected(want)
                        .got("nothing"),
                )
            }
            // A pong to a ping that already failed its step.
            Some(Incoming::Pong(_)) => continue,
            Some(got) => break got,
        }
    };
    let differs = |message: &str, detail: Option<String>| {
        Err(Problem::new(message)
            .expected(want.clone())
            .got(got.describe())
            .detail(detail))
    };
    match (expected, &got) {
        (Expected::Text(t), Incoming::Text(g)) => {
            let t = t.render(n);
            if *g == t {
                Ok(())
            } else {
                differs("the text differs", text_difference(&t, g))
            }
        }
        (Expected::Matches(re), Incoming::Text(g)) => {
            // Validated when the scenario was loaded; {n} does not make it invalid.
            match regex::Regex::new(&re.render(n)) {
                Ok(compiled) if compiled.is_match(g) => Ok(()),
                Ok(_) => differs("the text does not match", None),
                Err(e) => differs(&format!("the regular expression is invalid: {e}"), None),
            }
        }
        (Expected::Json(v), Incoming::Text(g)) => match serde_json::from_str(g) {
            Ok(value) => match json_subset(&render_json(v, n), &value) {
                Ok(()) => Ok(()),
                Err(at) => differs("the JSON differs", Some(at)),
            },
            Err(e) => differs("the text is not JSON", Some(e.to_string())),
        },
        (Expected::Binary { bytes, .. }, Incoming::Binary(g)) => {
            if g == bytes {
                Ok(())
            } else {
                differs("the bytes differ", Some(first_difference(bytes, g)))
            }
        }
        (Expected::Binary { .. }, Incoming::Text(_)) => {
            differs("a text message came, not a binary one", None)
        }
        (_, Incoming::Binary(_)) => differs("a binary message came, not a text one", None),
        (_, Incoming::Close(_)) => differs("the connection was closed instead", None),
        (_, _) => differs("the connection ended instead", None),
    }
}

async fn expect_close(
    conn: &mut Connection,
    expected: &CloseExpectation,
    within: Duration,
) -> Result<(), Problem> {
    let want = match (&expected.code, &expected.reason) {
        (None, None) => "close (any code)".to_owned(),
        (Some(c), None) => format!("close {c}"),
        (None, Some(r)) => format!("close (any code) {}", quote(r)),
        (Some(c), Some(r)) => format!("close {c} {}", quote(r)),
    };
    let deadline = Instant::now() + within;
    loop {
        let got = match conn.next(deadline).await {
            None => {
                return Err(Problem::new(format!("no close within {}", show(within)))
                    .expected(want)
                    .got("nothing"))
            }
            Some(Incoming::Pong(_)) => continue,
            Some(got) => got,
        };
        return match &got {
            Incoming::Close(frame) => {
                let (code, reason) = match frame {
                    Some((c, r)) => (Some(*c), r.as_str()),
                    None => (None, ""),
                };
                let code_ok = expected.code.is_none() || expected.code == code;
                let reason_ok = expected.reason.as_deref().is_none_or(|r| r == reason);
                if code_ok && reason_ok {
                    Ok(())
                } else {
                    Err(Problem::new("the close frame differs")
                        .expected(want)
                        .got(got.describe()))
                }
            }
            Incoming::Ended(_) => Err(Problem::new("the connection ended without a close frame")
                .expected(want)
                .got(got.describe())),
            _ => Err(Problem::new("a message came instead of the close")
                .expected(want)
                .got(got.describe())),
        };
    }
}

/// `{n}` filled in every string of an expected JSON value.
fn render_json(value: &serde_json::Value, n: u32) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(Template(s.clone()).render(n)),
        Value::Array(items) => Value::Array(items.iter().map(|v| render_json(v, n)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), render_json(v, n)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Waits (bounded) for the connection's record to be complete and compares it.
async fn check_outcome(
    outcome: &OutcomeExpectation,
    request_id: Option<&str>,
    target: &Target,
) -> Result<(), Problem> {
    let Some(request_id) = request_id else {
        return Err(Problem::new(
            "the 101 had no X-Scf-Request-Id header: the record cannot be found",
        ));
    };
    let url = format!(
        "{}/api/invocations/{request_id}",
        target.admin.trim_end_matches('/')
    );
    let deadline = Instant::now() + outcome.within;
    let record = loop {
        let last = match scfsim_client::get_json(&url, target.admin_token.as_deref()).await {
            Ok(record) if !record["status_code"].is_null() => break record,
            Ok(_) => "the invocation is still running".to_owned(),
            Err(err) => crate::report::error_chain(&err),
        };
        if Instant::now() >= deadline {
            return Err(Problem::new(format!(
                "the record was not complete within {}: {last}",
                show(outcome.within)
            )));
        }
        tokio::time::sleep(RECORD_POLL).await;
    };
    let mut want: Vec<(&str, serde_json::Value)> = Vec::new();
    let s = |v: &str| serde_json::Value::String(v.to_owned());
    if let Some(f) = &outcome.function {
        want.push(("function", s(f)));
    }
    if let Some(c) = outcome.status_code {
        want.push(("status_code", c.into()));
    }
    if let Some(o) = &outcome.outcome {
        want.push(("outcome", s(o)));
    }
    if let Some(r) = &outcome.end_reason {
        want.push(("end_reason", s(r)));
    }
    if let Some(by) = &outcome.closed_by {
        want.push((
            "closed_by",
            by.as_deref().map_or(serde_json::Value::Null, s),
        ));
    }
    if let Some(c) = outcome.close_code {
        want.push(("close_code", c.into()));
    }
    if let Some(r) = &outcome.close_reason {
        want.push(("close_reason", s(r)));
    }
    for (name, v) in &outcome.counts {
        want.push((name, (*v).into()));
    }
    if let Some(faults) = &outcome.injected_faults {
        want.push(("injected_faults", faults.clone().into()));
    }
    let differing: Vec<&(&str, serde_json::Value)> = want
        .iter()
        .filter(|(field, value)| !same(&record[*field], value))
        .collect();
    if differing.is_empty() {
        return Ok(());
    }
    let show_fields = |from: &dyn Fn(&str, &serde_json::Value) -> String| {
        differing
            .iter()
            .map(|(field, value)| format!("{field} = {}", from(field, value)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let names: Vec<&str> = differing.iter().map(|(f, _)| *f).collect();
    let mut problem = Problem::new(format!("the record differs in {}", names.join(", ")))
        .expected(show_fields(&|_, v| v.to_string()))
        .got(show_fields(&|f, _| record[f].to_string()));
    if let Some(error) = record["error"].as_str() {
        problem.detail = Some(format!("the record's error: {error}"));
    }
    Err(problem)
}

fn same(got: &serde_json::Value, want: &serde_json::Value) -> bool {
    match (got.as_f64(), want.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => got == want,
    }
}
