//! Every rejection names the file, the step (number and line) or key, and what is allowed.

use std::path::Path;

use super::*;

const FILE: &str = "scenarios/chat.toml";

fn err(text: &str) -> String {
    let e = parse(text, Path::new(FILE)).expect_err("should be rejected");
    let shown = e.to_string();
    assert!(shown.starts_with(FILE), "names the file: {shown}");
    shown
}

fn ok(text: &str) -> Scenario {
    parse(text, Path::new(FILE)).unwrap_or_else(|e| panic!("should be valid: {e}\n{text}"))
}

#[test]
fn a_full_scenario_parses() {
    let s = ok(r#"
name = "chat"
path = "/chat/{n}"
query = { user = "u{n}" }
headers = { "X-Token" = "t" }
subprotocols = ["chat"]
connections = 3
timeout = "2s"

[[steps]]
send = "hello {n}"

[[steps]]
expect = "hello {n}"
within = "1s"

[[steps]]
expect_match = "^tick \\d+$"

[[steps]]
expect_json = { type = "tick", n = 1 }

[[steps]]
send_binary = "00 ff 10"

[[steps]]
expect_binary = "00ff10"

[[steps]]
expect_nothing = "300ms"

[[steps]]
ping = "p"

[[steps]]
sleep = "10ms"

[[steps]]
close = { code = 4001, reason = "bye" }

[[steps]]
expect_close = 4001

[outcome]
status_code = 200
end_reason = "client_closed"
closed_by = "client"
close_code = 4001
messages_in = 2
"#);
    assert_eq!(s.connections, 3);
    assert_eq!(s.path.render(2), "/chat/2");
    assert_eq!(s.steps.len(), 11);
    assert_eq!(s.steps[1].line, 13);
    assert!(matches!(
        &s.steps[1].action,
        Action::Expect { within, .. } if *within == Duration::from_secs(1)
    ));
    // The scenario's timeout is every other expectation's default.
    assert!(matches!(
        &s.steps[2].action,
        Action::Expect { within, .. } if *within == Duration::from_secs(2)
    ));
    assert!(matches!(&s.steps[4].action, Action::SendBinary(b) if b == &[0, 255, 16]));
    assert!(matches!(
        &s.steps[9].action,
        Action::Close { code: 4001, reason } if reason == "bye"
    ));
    let outcome = s.outcome.expect("outcome");
    assert_eq!(outcome.counts, vec![("messages_in", 2)]);
    assert_eq!(outcome.closed_by, Some(Some("client".into())));
}

#[test]
fn rejections_name_the_step_and_what_is_allowed() {
    let cases: &[(&str, &[&str])] = &[
        (
            "path = \"/e\"\n[[steps]]\nexpct = \"x\"\n",
            &["step 1 (line 2)", "unknown field `expct`", "expect_match"],
        ),
        (
            "path = \"/e\"\n[[steps]]\nsend = \"a\"\n\n[[steps]]\nsend = \"a\"\nexpect = \"b\"\n",
            &[
                "step 2 (line 5)",
                "expect and send in one step",
                "split them",
            ],
        ),
        (
            "path = \"/e\"\n[[steps]]\nwithin = \"1s\"\n",
            &["step 1 (line 2)", "no action"],
        ),
        (
            "path = \"/e\"\n[[steps]]\nexpect = \"a\"\nwithin = \"5x\"\n",
            &[
                "step 1 (line 2): within",
                "\"5x\" is not a duration",
                "\"500ms\"",
            ],
        ),
        (
            "path = \"/e\"\n[[steps]]\nsend = \"a\"\nwithin = \"1s\"\n",
            &["within does not apply to send"],
        ),
        (
            "path = \"/e\"\n[[steps]]\nexpect_match = \"(a\"\n",
            &["step 1 (line 2)", "is not a regular expression"],
        ),
        (
            "path = \"/e\"\n[[steps]]\nsend_binary = \"0g\"\n",
            &["is not hex bytes", "\"00 ff 7f\""],
        ),
        (
            "path = \"/e\"\n[[steps]]\nsend_file = \"missing.bin\"\n",
            &["cannot read", "relative to the scenario file's directory"],
        ),
        (
            "path = \"/e\"\n[[steps]]\nclose = 1005\n",
            &["close code 1005 cannot be sent"],
        ),
        (
            "path = \"/e\"\n[[steps]]\nexpect_close = \"x\"\n",
            &["write a close code (4000), true (any close)"],
        ),
        (
            "path = \"/e\"\n[[steps]]\nexpect_close = { code = 4000, why = \"x\" }\n",
            &["takes code (an integer) and reason"],
        ),
        (
            "path = \"/e\"\n[[steps]]\nsleep = 0\n",
            &["step 1 (line 2): sleep", "greater than zero"],
        ),
        (
            "path = \"/e\"\n[outcome]\nend_reason = \"timeout\"\n",
            &["outcome.end_reason", "\"timeout\"", "idle_timeout"],
        ),
        (
            "path = \"/e\"\n[outcome]\nclosed_by = \"me\"\n",
            &["outcome.closed_by", "\"none\""],
        ),
        (
            "path = \"/e\"\n[outcome]\nstatus = 200\n",
            &["unknown field `status`", "status_code"],
        ),
        (
            "path = \"/e\"\nconnections = 0\n[outcome]\n",
            &["connections", "got 0", "1 to 1000"],
        ),
        (
            "path = \"e\"\n[outcome]\n",
            &["path", "must start with '/'"],
        ),
        ("path = \"/e\"\n", &["steps", "no steps and no [outcome]"]),
        ("paths = \"/e\"\n", &["unknown field `paths`"]),
        ("[outcome]\n", &["missing field `path`"]),
    ];
    for (text, says) in cases {
        let shown = err(text);
        for s in *says {
            assert!(shown.contains(s), "{s:?} not in: {shown}\n---\n{text}");
        }
    }
}

#[test]
fn files_are_read_relative_to_the_scenario() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("payload.bin"), [1u8, 2, 3]).unwrap();
    let file = dir.path().join("s.toml");
    let text = "path = \"/e\"\n[[steps]]\nsend_file = \"payload.bin\"\n[[steps]]\nexpect_file = \"payload.bin\"\n";
    std::fs::write(&file, text).unwrap();
    let s = load(&file).unwrap();
    assert!(
        matches!(&s.steps[0].action, Action::SendFile { bytes, text: false, .. } if bytes == &[1, 2, 3])
    );
    assert_eq!(s.steps[1].action.key(), "expect_file");
    assert_eq!(s.name, "s.toml");
}

#[test]
fn faults_are_read_and_bad_ones_named_by_key() {
    let s = ok(r#"
path = "/echo"
[[steps]]
send = "a"
[faults]
delay_to_client = "50ms"
kill_after_messages = 2
seed = 4
"#);
    let faults = s.faults.expect("faults");
    assert_eq!(faults.delay_to_client, Some(Duration::from_millis(50)));
    assert_eq!(faults.kill_after_messages, Some(2));
    assert_eq!(faults.seed, Some(4));
    assert!(ok("path = \"/echo\"\n[[steps]]\nsend = \"a\"\n")
        .faults
        .is_none());

    let shown = err("path = \"/echo\"\n[[steps]]\nsend = \"a\"\n[faults]\nstart_failure = 500\n");
    assert!(shown.contains("faults.start_failure: got 500"), "{shown}");
    assert!(shown.contains("405"), "{shown}");
    let shown = err("path = \"/echo\"\n[[steps]]\nsend = \"a\"\n[faults]\ndrop_to_function = 3\n");
    assert!(shown.contains("faults.drop_to_function: got 3"), "{shown}");
    let shown = err("path = \"/echo\"\n[[steps]]\nsend = \"a\"\n[faults]\nkill = \"1s\"\n");
    assert!(shown.contains("kill"), "{shown}");
}
