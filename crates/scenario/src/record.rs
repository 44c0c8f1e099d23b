//! `scfsim record`: the scenario that a recorded connection was, from its frame timeline
//! (`GET /api/invocations/{id}/frames`) and its record (`GET /api/invocations/{id}`).
//!
//! The client's messages become sends (text as `send`, binary as `send_binary` in hex, pings
//! as `ping`), the function's become expectations in the order they came (`expect`,
//! `expect_binary`), the client's close becomes `close`, the close the client got from
//! scfsim becomes `expect_close`, and the record's status, end reason and who closed become
//! `[outcome]`. With `keep_timing`, each of the client's actions is preceded by a `sleep` of
//! the pause before it in the recording.
//!
//! Only the JSON of the admin API is read here (the fields this needs), so this crate stays a
//! client of the API and nothing more.

use std::fmt::Write as _;

use base64::Engine;
use serde::Deserialize;

/// Why a timeline cannot be turned into a scenario: each says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("the timeline is not the admin API's JSON: {0}")]
    Shape(String),
    #[error(
        "invocation {request_id} is still open: its timeline is not complete yet; record it \
         once the connection has ended"
    )]
    StillOpen { request_id: String },
    #[error(
        "the timeline of invocation {request_id} is missing {dropped} event(s) (over \
         timeline.max_events): raise timeline.max_events in the config and record the session \
         again"
    )]
    Dropped { request_id: String, dropped: u64 },
    #[error(
        "the timeline of invocation {request_id} kept only the first bytes of message {seq} \
         ({size} bytes; timeline.payload_bytes): raise timeline.payload_bytes in the config and \
         record the session again"
    )]
    Truncated {
        request_id: String,
        seq: u64,
        size: u64,
    },
    #[error(
        "invocation {request_id} never got a WebSocket connection (the timeline has no \
         message and no upgrade): nothing to replay"
    )]
    NoConnection { request_id: String },
}

#[derive(Debug, Deserialize)]
struct Timeline {
    request_id: String,
    function: String,
    live: bool,
    dropped: u64,
    events: Vec<Event>,
}

#[derive(Debug, Deserialize)]
struct Event {
    seq: u64,
    t_ms: f64,
    kind: String,
    direction: Option<String>,
    opcode: Option<String>,
    size: u64,
    injected: bool,
    truncated: bool,
    text: Option<String>,
    binary_base64: Option<String>,
    close_code: Option<u16>,
    close_reason: Option<String>,
    #[serde(default)]
    sent_by: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    headers: Option<Vec<(String, String)>>,
    #[serde(default)]
    status: Option<u16>,
    detail: String,
}

/// The fields of the record `[outcome]` compares.
#[derive(Debug, Deserialize)]
struct Record {
    status_code: Option<u16>,
    end_reason: Option<String>,
    closed_by: Option<String>,
}

/// The scenario (TOML text) that the connection of `timeline` was. `record` is its
/// invocation record, for `[outcome]`.
pub fn scenario_from_timeline(
    timeline: &serde_json::Value,
    record: &serde_json::Value,
    keep_timing: bool,
) -> Result<String, RecordError> {
    let t: Timeline =
        serde_json::from_value(timeline.clone()).map_err(|e| RecordError::Shape(e.to_string()))?;
    let record: Record =
        serde_json::from_value(record.clone()).map_err(|e| RecordError::Shape(e.to_string()))?;
    if t.live {
        return Err(RecordError::StillOpen {
            request_id: t.request_id,
        });
    }
    if t.dropped > 0 {
        return Err(RecordError::Dropped {
            request_id: t.request_id,
            dropped: t.dropped,
        });
    }
    if let Some(e) = t.events.iter().find(|e| e.truncated) {
        return Err(RecordError::Truncated {
            request_id: t.request_id.clone(),
            seq: e.seq,
            size: e.size,
        });
    }
    let upgraded = t.events.iter().any(|e| {
        e.kind == "handshake" && e.sent_by.as_deref() == Some("gateway") && e.status == Some(101)
    });
    if !upgraded {
        return Err(RecordError::NoConnection {
            request_id: t.request_id,
        });
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Recorded by `scfsim record` from invocation {} of function {:?}.",
        t.request_id, t.function
    );
    let _ = writeln!(
        out,
        "# The client's messages are sent, the function's are expected in the order they came."
    );
    let _ = writeln!(
        out,
        "name = {}",
        quote(&format!("replay of {}", t.request_id))
    );
    let request = t
        .events
        .iter()
        .find(|e| e.kind == "handshake" && e.sent_by.as_deref() == Some("client"));
    let full_path = request
        .and_then(|e| e.path.clone())
        .unwrap_or_else(|| "/".into());
    let (path, query) = match full_path.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (full_path, None),
    };
    let _ = writeln!(out, "path = {}", quote(&path));
    let mut subprotocols = Vec::new();
    let mut headers = Vec::new();
    let mut faults = None;
    for (name, value) in request.and_then(|e| e.headers.clone()).unwrap_or_default() {
        let lower = name.to_ascii_lowercase();
        if lower == "sec-websocket-protocol" {
            subprotocols.extend(value.split(',').map(|p| p.trim().to_owned()));
        } else if lower == "x-scfsim-faults" {
            faults = Some(value);
        } else if !CLIENT_SETS_ITSELF.contains(&lower.as_str()) && !lower.starts_with("x-scfsim-") {
            // X-Scfsim-Token stays out too: an admin token has no place in a scenario file.
            headers.push((name, value));
        }
    }
    if !subprotocols.is_empty() {
        let list: Vec<String> = subprotocols.iter().map(|p| quote(p)).collect();
        let _ = writeln!(out, "subprotocols = [{}]", list.join(", "));
    }
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        let _ = writeln!(out, "\n[query]");
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let _ = writeln!(
                out,
                "{} = {}",
                key(&percent_decode(k)),
                quote(&percent_decode(v))
            );
        }
    }
    if !headers.is_empty() {
        let _ = writeln!(out, "\n[headers]");
        for (name, value) in &headers {
            let _ = writeln!(out, "{} = {}", key(name), quote(value));
        }
    }

    // The time of the last step written, for --keep-timing's pauses.
    let mut last_ms: Option<f64> = None;
    let pause = |out: &mut String, at: f64, last: &mut Option<f64>| {
        if keep_timing {
            if let Some(before) = *last {
                let ms = (at - before).round();
                if ms >= 1.0 {
                    let _ = writeln!(out, "\n[[steps]]\nsleep = \"{}ms\"", ms as u64);
                }
            }
        }
        *last = Some(at);
    };
    for e in &t.events {
        let from_client = e.direction.as_deref() == Some("to_function");
        match (e.kind.as_str(), e.opcode.as_deref()) {
            ("message", Some(opcode)) if e.injected => {
                let _ = writeln!(
                    out,
                    "\n# event {}: a {} message injected through the admin API {}; not \
                     replayed",
                    e.seq,
                    opcode,
                    if from_client {
                        "toward the function"
                    } else {
                        "toward the client"
                    }
                );
            }
            ("message", Some("text")) if from_client => {
                pause(&mut out, e.t_ms, &mut last_ms);
                let text = e.text.clone().unwrap_or_default();
                let _ = writeln!(out, "\n[[steps]]\nsend = {}", quote(&text));
            }
            ("message", Some("binary")) if from_client => {
                pause(&mut out, e.t_ms, &mut last_ms);
                let _ = writeln!(
                    out,
                    "\n[[steps]]\nsend_binary = {}",
                    quote(&hex(&bytes(e)?))
                );
            }
            ("message", Some("ping")) if from_client => {
                let payload = bytes(e)?;
                match String::from_utf8(payload) {
                    Ok(text) => {
                        pause(&mut out, e.t_ms, &mut last_ms);
                        let _ = writeln!(out, "\n[[steps]]\nping = {}", quote(&text));
                    }
                    Err(_) => {
                        let _ = writeln!(
                            out,
                            "\n# event {}: a ping with a binary payload; scenario pings carry \
                             text, so it is not replayed",
                            e.seq
                        );
                    }
                }
            }
            ("message", Some("text")) => {
                let text = e.text.clone().unwrap_or_default();
                let _ = writeln!(out, "\n[[steps]]\nexpect = {}", quote(&text));
                last_ms = Some(e.t_ms);
            }
            ("message", Some("binary")) => {
                let _ = writeln!(
                    out,
                    "\n[[steps]]\nexpect_binary = {}",
                    quote(&hex(&bytes(e)?))
                );
                last_ms = Some(e.t_ms);
            }
            // Pongs answer pings (the runner's `ping` step waits for its own); pings from the
            // function are answered by the client's library.
            ("message", _) => {}
            ("close", _) if e.sent_by.as_deref() == Some("client") => {
                pause(&mut out, e.t_ms, &mut last_ms);
                match e.close_code {
                    Some(code) => {
                        let _ = writeln!(
                            out,
                            "\n[[steps]]\nclose = {{ code = {code}, reason = {} }}",
                            quote(e.close_reason.as_deref().unwrap_or(""))
                        );
                    }
                    None => {
                        let _ = writeln!(out, "\n[[steps]]\nclose = true");
                    }
                }
            }
            // The close frame the client got, when scfsim sent it on its own (not the
            // answer to the client's close).
            ("close", _)
                if e.sent_by.as_deref() == Some("gateway")
                    && e.direction.as_deref() == Some("to_client")
                    && !e.detail.contains("answered") =>
            {
                match e.close_code {
                    Some(code) => {
                        let _ = writeln!(
                            out,
                            "\n[[steps]]\nexpect_close = {{ code = {code}, reason = {} }}",
                            quote(e.close_reason.as_deref().unwrap_or(""))
                        );
                    }
                    None => {
                        let _ = writeln!(out, "\n[[steps]]\nexpect_close = true");
                    }
                }
            }
            _ => {}
        }
    }

    let _ = writeln!(out, "\n[outcome]");
    if let Some(status) = record.status_code {
        let _ = writeln!(out, "status_code = {status}");
    }
    if let Some(reason) = &record.end_reason {
        let _ = writeln!(out, "end_reason = {}", quote(reason));
    }
    let _ = writeln!(
        out,
        "closed_by = {}",
        quote(record.closed_by.as_deref().unwrap_or("none"))
    );
    if let Some(faults) = faults {
        // The recorded connection asked for faults (a scenario's [faults]): the replay asks
        // for the same, or it would compare a faulty run with a healthy one.
        match serde_json::from_str::<toml::Table>(&faults) {
            Ok(table) if !table.is_empty() => {
                let _ = write!(out, "\n[faults]\n{table}");
            }
            _ => {
                let _ = writeln!(
                    out,
                    "\n# The connection asked for faults this file cannot express: X-Scfsim-Faults: {faults}"
                );
            }
        }
    }
    Ok(out)
}

/// Upgrade headers that the replaying client's WebSocket library sets by itself.
const CLIENT_SETS_ITSELF: &[&str] = &[
    "host",
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "content-length",
];

fn bytes(e: &Event) -> Result<Vec<u8>, RecordError> {
    if let Some(text) = &e.text {
        return Ok(text.as_bytes().to_vec());
    }
    match &e.binary_base64 {
        Some(b) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|err| RecordError::Shape(format!("event {}: binary_base64: {err}", e.seq))),
        None => Ok(Vec::new()),
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A TOML key: bare when it may be, else quoted.
fn key(s: &str) -> String {
    let bare = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        s.to_owned()
    } else {
        quote(s)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `%XX` and `+` of a query string, as the runner's encoding undoes.
fn percent_decode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let digit = |c: u8| (c as char).to_digit(16);
                match (digit(b[i + 1]), digit(b[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(
        seq: u64,
        t_ms: f64,
        kind: &str,
        dir: Option<&str>,
        opcode: Option<&str>,
    ) -> serde_json::Value {
        json!({"seq": seq, "at": "2026-12-03T16:00:00.000000Z", "t_ms": t_ms, "kind": kind,
               "direction": dir, "opcode": opcode, "size": 0, "injected": false,
               "truncated": false, "text": null, "binary_base64": null, "close_code": null,
               "close_reason": null, "sent_by": null, "detail": ""})
    }

    fn session() -> serde_json::Value {
        let mut req = event(0, 0.0, "handshake", Some("to_function"), None);
        req["sent_by"] = json!("client");
        req["path"] = json!("/echo?room=a%20b");
        req["headers"] = json!([
            ["host", "127.0.0.1:8080"],
            ["connection", "Upgrade"],
            ["upgrade", "websocket"],
            ["sec-websocket-version", "13"],
            ["sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="],
            ["sec-websocket-extensions", "permessage-deflate"],
            ["x-user", "ann"],
            ["sec-websocket-protocol", "chat, v2"],
            [
                "x-scfsim-faults",
                "{\"delay_to_client\":\"200ms\",\"seed\":7}"
            ],
            ["x-scfsim-token", "secret"]
        ]);
        let mut ok = event(1, 5.0, "handshake", Some("to_client"), None);
        ok["sent_by"] = json!("gateway");
        ok["status"] = json!(101);
        let mut hi = event(2, 10.0, "message", Some("to_function"), Some("text"));
        hi["text"] = json!("hi \"there\"");
        let mut echo = event(3, 11.0, "message", Some("to_client"), Some("text"));
        echo["text"] = json!("hi \"there\"");
        let mut bin = event(4, 300.0, "message", Some("to_function"), Some("binary"));
        bin["binary_base64"] = json!("AP8B");
        let mut bin_echo = event(5, 301.0, "message", Some("to_client"), Some("binary"));
        bin_echo["binary_base64"] = json!("AP8B");
        let mut close = event(6, 400.0, "close", Some("to_function"), Some("close"));
        close["sent_by"] = json!("client");
        close["close_code"] = json!(1000);
        close["close_reason"] = json!("bye");
        let mut answer = event(7, 401.0, "close", Some("to_client"), Some("close"));
        answer["sent_by"] = json!("gateway");
        answer["close_code"] = json!(1000);
        answer["detail"] = json!("scfsim answered the client's close frame");
        json!({"request_id": "r1", "function": "echo", "live": false, "dropped": 0,
               "events": [req, ok, hi, echo, bin, bin_echo, close, answer]})
    }

    fn record() -> serde_json::Value {
        json!({"status_code": 200, "end_reason": "client_closed", "closed_by": "client"})
    }

    #[test]
    fn a_session_becomes_a_valid_scenario() {
        let text = scenario_from_timeline(&session(), &record(), false).unwrap();
        let scenario = crate::parse(&text, std::path::Path::new("rec.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(scenario.path.0, "/echo");
        assert_eq!(
            scenario.query,
            vec![("room".into(), crate::Template("a b".into()))]
        );
        assert_eq!(scenario.subprotocols, vec!["chat", "v2"]);
        assert_eq!(
            scenario.headers,
            vec![("x-user".into(), crate::Template("ann".into()))]
        );
        let keys: Vec<&str> = scenario.steps.iter().map(|s| s.action.key()).collect();
        assert_eq!(
            keys,
            vec!["send", "expect", "send_binary", "expect_binary", "close"]
        );
        match &scenario.steps[2].action {
            crate::Action::SendBinary(b) => assert_eq!(b, &vec![0, 255, 1]),
            other => panic!("{other:?}"),
        }
        let faults = scenario.faults.expect("the recorded faults are replayed");
        assert_eq!(faults.seed, Some(7), "{text}");
        assert!(
            !text.contains("secret"),
            "the admin token is left out:\n{text}"
        );
        let outcome = scenario.outcome.unwrap();
        assert_eq!(outcome.status_code, Some(200));
        assert_eq!(outcome.closed_by, Some(Some("client".into())));
        assert!(!text.contains("sleep"));
    }

    #[test]
    fn keep_timing_puts_the_pauses_back() {
        let text = scenario_from_timeline(&session(), &record(), true).unwrap();
        let scenario = crate::parse(&text, std::path::Path::new("rec.toml")).unwrap();
        let sleeps: Vec<_> = scenario
            .steps
            .iter()
            .filter_map(|s| match s.action {
                crate::Action::Sleep(d) => Some(d.as_millis()),
                _ => None,
            })
            .collect();
        assert_eq!(sleeps, vec![289, 99], "{text}");
    }

    #[test]
    fn incomplete_timelines_are_refused_naming_the_key() {
        let mut t = session();
        t["dropped"] = json!(3);
        let err = scenario_from_timeline(&t, &record(), false).unwrap_err();
        assert!(err.to_string().contains("timeline.max_events"), "{err}");
        let mut t = session();
        t["events"][2]["truncated"] = json!(true);
        let err = scenario_from_timeline(&t, &record(), false).unwrap_err();
        assert!(err.to_string().contains("timeline.payload_bytes"), "{err}");
        let mut t = session();
        t["live"] = json!(true);
        assert!(matches!(
            scenario_from_timeline(&t, &record(), false),
            Err(RecordError::StillOpen { .. })
        ));
    }
}
