//! The reports of a run: lines for people ([`human`]), JUnit XML for CI systems ([`junit`]),
//! and JSON for programs ([`json`]).

use std::fmt::Write as _;

use crate::{Failure, ScenarioReport};

/// Failures shown in full per scenario in the human report; JSON and JUnit have them all.
const SHOWN_FAILURES: usize = 3;

/// An error and its causes on one line: "a: b: c".
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let _ = write!(out, ": {cause}");
        source = cause.source();
    }
    out
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// One scenario for people: a `PASS`/`FAIL` line, and for a failure what was expected, what
/// came and the frame timeline.
pub fn human(report: &ScenarioReport) -> String {
    let mut out = String::new();
    let verdict = if report.passed() { "PASS" } else { "FAIL" };
    let _ = write!(
        out,
        "{verdict}  {}: {} ({}, {:.2}s)",
        report.file.display(),
        report.name,
        plural(report.connections as usize, "connection", "connections"),
        report.elapsed.as_secs_f64()
    );
    if report.connections > 1 && !report.passed() {
        let _ = write!(
            out,
            ": {} of {} connections failed",
            report.failures.len(),
            report.connections
        );
    }
    out.push('\n');
    for failure in report.failures.iter().take(SHOWN_FAILURES) {
        out.push_str(&indent(&failure_text(failure), "      "));
    }
    if report.failures.len() > SHOWN_FAILURES {
        let _ = writeln!(
            out,
            "      ... and {} more (--json or --junit show every one)",
            plural(
                report.failures.len() - SHOWN_FAILURES,
                "failure",
                "failures"
            )
        );
    }
    out
}

/// The summary after all scenarios.
pub fn summary(reports: &[ScenarioReport]) -> String {
    let failed = reports.iter().filter(|r| !r.passed()).count();
    format!(
        "{} passed, {} failed",
        plural(reports.len() - failed, "scenario", "scenarios"),
        failed
    )
}

/// A failure as a few lines: where and what, expected and got, the timeline.
pub fn failure_text(f: &Failure) -> String {
    let mut out = format!("{}: {}\n", f.location(), f.message);
    if let Some(e) = &f.expected {
        let _ = writeln!(out, "  expected: {e}");
    }
    if let Some(g) = &f.got {
        let _ = writeln!(out, "  got:      {g}");
    }
    if let Some(d) = &f.detail {
        let _ = writeln!(out, "  ({d})");
    }
    if let Some(id) = &f.request_id {
        let _ = writeln!(out, "  request:  {id}");
    }
    if !f.timeline.is_empty() {
        out.push_str("  timeline (> sent, < received):\n");
        for entry in &f.timeline {
            let _ = writeln!(out, "    {entry}");
        }
    }
    out
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|l| format!("{prefix}{l}\n")).collect()
}

/// JUnit XML: one `<testcase>` per scenario, a `<failure>` with every failed connection.
pub fn junit(reports: &[ScenarioReport]) -> String {
    let failed = reports.iter().filter(|r| !r.passed()).count();
    let total: f64 = reports.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"scfsim test\" tests=\"{}\" failures=\"{failed}\" errors=\"0\" time=\"{total:.3}\">",
        reports.len()
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"scfsim\" tests=\"{}\" failures=\"{failed}\" errors=\"0\" skipped=\"0\" time=\"{total:.3}\">",
        reports.len()
    );
    for r in reports {
        let file = r.file.display().to_string();
        let _ = write!(
            out,
            "    <testcase classname=\"{}\" name=\"{}\" file=\"{}\" time=\"{:.3}\"",
            xml(&file),
            xml(&r.name),
            xml(&file),
            r.elapsed.as_secs_f64()
        );
        if r.passed() {
            out.push_str("/>\n");
            continue;
        }
        out.push_str(">\n");
        let first = &r.failures[0];
        let message = format!("{}: {}", first.location(), first.message);
        let body: String = r
            .failures
            .iter()
            .map(failure_text)
            .collect::<Vec<_>>()
            .join("\n");
        let _ = writeln!(
            out,
            "      <failure message=\"{}\" type=\"{}\">{}</failure>",
            xml(&message),
            xml(&first.action),
            xml(&body)
        );
        out.push_str("    </testcase>\n");
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// Escaped for XML text and attributes; characters XML 1.0 cannot hold become U+FFFD.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The whole run as one JSON document.
pub fn json(reports: &[ScenarioReport]) -> serde_json::Value {
    use serde_json::json;
    let failed = reports.iter().filter(|r| !r.passed()).count();
    let scenarios: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            json!({
                "file": r.file.display().to_string(),
                "name": r.name,
                "passed": r.passed(),
                "connections": r.connections,
                "duration_ms": r.elapsed.as_millis() as u64,
                "request_ids": r.request_ids,
                "failures": r.failures.iter().map(|f| json!({
                    "connection": f.connection,
                    "step": f.step,
                    "line": f.line,
                    "action": f.action,
                    "message": f.message,
                    "expected": f.expected,
                    "got": f.got,
                    "detail": f.detail,
                    "request_id": f.request_id,
                    "timeline": f.timeline.iter().map(|e| json!({
                        "at_ms": e.at.as_secs_f64() * 1000.0,
                        "direction": if e.sent { "sent" } else { "received" },
                        "frame": e.frame,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "passed": reports.len() - failed,
        "failed": failed,
        "scenarios": scenarios,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_escapes_markup_and_control_characters() {
        assert_eq!(
            xml("a<b>&\"c'\u{1}"),
            "a&lt;b&gt;&amp;&quot;c&apos;\u{fffd}"
        );
    }
}
