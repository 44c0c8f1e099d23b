//! `scfsim test`, as users run it: the example scenarios against config/scfsim.toml (so that
//! examples/scenarios stays true), every kind of expectation failing once with its message
//! and exit code 1, bad scenario files with exit code 2, and `time_scale`: a 2-hour execution
//! timeout at N = 100 ends with 433 (asserted on the record, not on elapsed time).
//!
//! Every run of `scfsim test` is bounded (killed past its patience, and the test fails).

use std::path::Path;
use std::time::Duration;

use scfsim_e2e::{
    repo_root, require, scfsim_test, write_config_file, Function, Options, Scfsim, TestRun,
};
use serde_json::Value;

/// Generous: the example scenarios take seconds; a slow machine running many tests at once
/// may take far longer, and a stuck run must still end.
const RUN_PATIENCE: Duration = Duration::from_secs(180);

fn python3() {
    require(
        "python3",
        "python3",
        &["--version"],
        "apt-get install python3",
    );
}

async fn examples_run(args: &[&str]) -> TestRun {
    let mut all = vec!["--config", "config/scfsim.toml"];
    all.extend_from_slice(args);
    scfsim_test(&repo_root(), &all, RUN_PATIENCE).await
}

fn assert_passed(run: &TestRun, scenarios: usize) {
    assert_eq!(
        run.code, 0,
        "scfsim test failed:\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let summary = format!(
        "{scenarios} scenario{} passed, 0 failed",
        if scenarios == 1 { "" } else { "s" }
    );
    assert!(run.stdout.contains(&summary), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn example_scenarios_on_the_standard_library_pass_with_a_junit_report() {
    python3();
    let tmp = tempfile::tempdir().unwrap();
    let junit = tmp.path().join("junit.xml");
    let junit_arg = junit.display().to_string();
    let files = [
        "examples/scenarios/echo.toml",
        "examples/scenarios/echo-parallel.toml",
        "examples/scenarios/close-code.toml",
    ];
    let mut args = vec!["--junit", junit_arg.as_str()];
    args.extend_from_slice(&files);
    let run = examples_run(&args).await;
    assert_passed(&run, files.len());
    for file in files {
        assert!(
            run.stdout.contains(&format!("PASS  {file}: ")),
            "one line per scenario:\n{}",
            run.stdout
        );
    }
    let xml = std::fs::read_to_string(&junit).expect("the JUnit report was written");
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(
        xml.contains("<testsuite name=\"scfsim\" tests=\"3\" failures=\"0\""),
        "{xml}"
    );
    assert_eq!(xml.matches("<testcase ").count(), 3, "{xml}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_idle_example_runs_in_a_fraction_of_its_timeout_at_time_scale_100() {
    python3();
    let run = examples_run(&[
        "--time-scale",
        "100",
        "--json",
        "examples/scenarios/echo-idle.toml",
    ])
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["passed"], 1, "{report}");
    assert_eq!(report["scenarios"][0]["passed"], true, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn example_scenarios_on_python_websockets_pass() {
    python3();
    require(
        "python3's websockets library",
        "python3",
        &["-c", "import websockets"],
        "python3 -m pip install -r examples/python-echo/requirements.txt",
    );
    let files = [
        "examples/scenarios/python-echo.toml",
        "examples/scenarios/push.toml",
    ];
    let run = examples_run(&files).await;
    assert_passed(&run, files.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn example_scenarios_on_node_pass() {
    require("node", "node", &["--version"], "apt-get install nodejs");
    for dir in ["node-echo", "binary"] {
        assert!(
            repo_root()
                .join("examples")
                .join(dir)
                .join("node_modules")
                .exists(),
            "examples/{dir}/node_modules is missing: install it with `npm ci --prefix \
             examples/{dir}` (scripts/test-setup.sh installs everything the tests need)"
        );
    }
    let files = [
        "examples/scenarios/node-echo.toml",
        "examples/scenarios/binary.toml",
    ];
    let run = examples_run(&files).await;
    assert_passed(&run, files.len());
}

/// Scenario files, each failing one kind of expectation against an echo function:
/// (file, the step's action, the message, the expected, the got, the detail, if any).
type Failing = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
);

const FAILING: &[(&str, &str)] = &[
    (
        "text.toml",
        "send = \"hello\"\n[[steps]]\nexpect = \"hullo\"",
    ),
    (
        "match.toml",
        "send = \"hello\"\n[[steps]]\nexpect_match = \"^bye\"",
    ),
    (
        "json.toml",
        "send = '{\"type\":\"tick\",\"n\":1}'\n[[steps]]\nexpect_json = { type = \"tick\", n = 2 }",
    ),
    (
        "not-json.toml",
        "send = \"plain\"\n[[steps]]\nexpect_json = { a = 1 }",
    ),
    (
        "binary.toml",
        "send_binary = \"01 02\"\n[[steps]]\nexpect_binary = \"01 03\"",
    ),
    (
        "file.toml",
        "send_binary = \"01 02\"\n[[steps]]\nexpect_file = \"three.bin\"",
    ),
    ("within.toml", "expect = \"anything\"\nwithin = \"300ms\""),
    (
        "nothing.toml",
        "send = \"x\"\n[[steps]]\nexpect_nothing = \"2s\"",
    ),
    (
        "close.toml",
        "close = { code = 1000, reason = \"bye\" }\n[[steps]]\nexpect_close = 4000",
    ),
];

fn expectations() -> Vec<Failing> {
    vec![
        (
            "text.toml",
            "expect",
            "the text differs",
            "text \"hullo\"",
            "text \"hello\"",
            None,
        ),
        (
            "match.toml",
            "expect_match",
            "the text does not match",
            "text matching /^bye/",
            "text \"hello\"",
            None,
        ),
        (
            "json.toml",
            "expect_json",
            "the JSON differs",
            "JSON containing {\"n\":2,\"type\":\"tick\"}",
            "text \"{\\\"type\\\":\\\"tick\\\",\\\"n\\\":1}\"",
            Some("$.n: expected 2, got 1"),
        ),
        (
            "not-json.toml",
            "expect_json",
            "the text is not JSON",
            "JSON containing {\"a\":1}",
            "text \"plain\"",
            None,
        ),
        (
            "binary.toml",
            "expect_binary",
            "the bytes differ",
            "binary 2 bytes 0103",
            "binary 2 bytes 0102",
            Some("they differ first at byte 1 (expected 03, got 02)"),
        ),
        (
            "file.toml",
            "expect_file",
            "the bytes differ",
            "three.bin (3 bytes 010203)",
            "binary 2 bytes 0102",
            Some("expected 3 bytes, got 2 bytes (equal up to byte 2)"),
        ),
        (
            "within.toml",
            "expect",
            "nothing came within 300ms",
            "text \"anything\"",
            "nothing",
            None,
        ),
        (
            "nothing.toml",
            "expect_nothing",
            "something came within 2s",
            "no message for 2s",
            "text \"x\"",
            None,
        ),
        (
            "close.toml",
            "expect_close",
            "the close frame differs",
            "close 4000",
            "close 1000 \"bye\"",
            None,
        ),
    ]
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_kind_of_expectation_fails_with_what_was_expected_and_what_came() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = write_config_file(
        dir,
        &[Function::fixture("echo", &["echo"])],
        "relaxed_limits = false",
    );
    std::fs::write(dir.join("three.bin"), [1u8, 2, 3]).unwrap();
    let mut files = Vec::new();
    for (name, steps) in FAILING {
        let text = format!("name = {name:?}\npath = \"/echo\"\n\n[[steps]]\n{steps}\n");
        files.push(write(dir, name, &text));
    }
    // The record: a clean close is a 200, not the 439 this scenario expects.
    files.push(write(
        dir,
        "outcome.toml",
        "path = \"/echo\"\n[[steps]]\nsend = \"a\"\n[[steps]]\nexpect = \"a\"\n[[steps]]\nclose = 1000\n\n\
         [outcome]\nstatus_code = 439\nend_reason = \"client_closed\"\nmessages_in = 1\n",
    ));
    // Three connections, each expecting its own number, all getting "hello".
    files.push(write(
        dir,
        "parallel.toml",
        "path = \"/echo\"\nconnections = 3\n[[steps]]\nsend = \"hello\"\n[[steps]]\nexpect = \"hello {n}\"\n",
    ));
    let config_arg = config.display().to_string();
    let mut args = vec!["--config", config_arg.as_str(), "--json"];
    args.extend(files.iter().map(String::as_str));
    let run = scfsim_test(dir, &args, RUN_PATIENCE).await;
    assert_eq!(
        run.code, 1,
        "any failure is exit 1:\n{}\n{}",
        run.stdout, run.stderr
    );
    let report = run.json();
    assert_eq!(report["failed"], files.len(), "{report:#}");
    let scenarios = report["scenarios"].as_array().unwrap();
    let failure_of = |file: &str| -> &Value {
        let scenario = scenarios
            .iter()
            .find(|s| s["file"].as_str().unwrap().ends_with(file))
            .unwrap_or_else(|| panic!("no report of {file}: {report:#}"));
        assert_eq!(scenario["passed"], false, "{scenario:#}");
        &scenario["failures"][0]
    };
    for (file, action, message, expected, got, detail) in expectations() {
        let f = failure_of(file);
        let show = format!("{file}: {f:#}");
        assert_eq!(f["action"], action, "{show}");
        assert_eq!(f["message"], message, "{show}");
        assert!(
            f["expected"].as_str().unwrap().contains(expected),
            "expected {expected:?} in {show}"
        );
        assert_eq!(f["got"], got, "{show}");
        if let Some(detail) = detail {
            assert_eq!(f["detail"], detail, "{show}");
        }
        let step = if file == "within.toml" { 1 } else { 2 };
        assert_eq!(f["step"], step, "{show}");
        assert!(f["request_id"].is_string(), "{show}");
        // Every frame up to the failure (within.toml sent none and got none).
        let frames = f["timeline"].as_array().unwrap().len();
        assert_eq!(frames == 0, file == "within.toml", "{show}");
    }

    let f = failure_of("outcome.toml");
    assert_eq!(f["action"], "outcome", "{f:#}");
    assert_eq!(f["message"], "the record differs in status_code", "{f:#}");
    assert_eq!(f["expected"], "status_code = 439", "{f:#}");
    assert_eq!(f["got"], "status_code = 200", "{f:#}");

    let parallel = scenarios
        .iter()
        .find(|s| s["file"].as_str().unwrap().ends_with("parallel.toml"))
        .unwrap();
    let failures = parallel["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 3, "{parallel:#}");
    for f in failures {
        let n = f["connection"].as_u64().unwrap();
        assert_eq!(f["expected"], format!("text \"hello {n}\""), "{f:#}");
        assert_eq!(f["got"], "text \"hello\"", "{f:#}");
    }

    // For people: one line per scenario, then expected / got and the frame timeline.
    let text = write(
        dir,
        "text-again.toml",
        "path = \"/echo\"\n[[steps]]\nsend = \"hello\"\n[[steps]]\nexpect = \"hullo\"\n",
    );
    let run = scfsim_test(dir, &["--config", &config_arg, &text], RUN_PATIENCE).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    for line in [
        "FAIL  ",
        "text-again.toml: text-again.toml (1 connection, ",
        "connection 1, step 2 (line 4) expect: the text differs",
        "expected: text \"hullo\"",
        "got:      text \"hello\"",
        "timeline (> sent, < received):",
        "> text \"hello\"",
        "< text \"hello\"",
        "0 scenarios passed, 1 failed",
    ] {
        assert!(
            run.stdout.contains(line),
            "{line:?} not in:\n{}",
            run.stdout
        );
    }
    assert!(
        run.stderr.contains("1 of 1 scenario(s) failed"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_scenario_file_is_exit_2_naming_the_file_the_step_and_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = write_config_file(dir, &[Function::fixture("echo", &["echo"])], "");
    let config_arg = config.display().to_string();
    let good = write(
        dir,
        "good.toml",
        "path = \"/echo\"\n[[steps]]\nsend = \"a\"\n",
    );
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "unknown-key.toml",
            "path = \"/echo\"\n[[steps]]\nsend = \"a\"\n\n[[steps]]\nexpct = \"a\"\n",
            &[
                "unknown-key.toml: step 2 (line 5): unknown field `expct`",
                "expect_json",
            ],
        ),
        (
            "two-actions.toml",
            "path = \"/echo\"\n[[steps]]\nsend = \"a\"\nexpect = \"a\"\n",
            &["two-actions.toml: step 1 (line 2): expect and send in one step"],
        ),
        (
            "bad-within.toml",
            "path = \"/echo\"\n[[steps]]\nexpect = \"a\"\nwithin = \"soon\"\n",
            &["bad-within.toml: step 1 (line 2): within: \"soon\" is not a duration"],
        ),
        (
            "bad-outcome.toml",
            "path = \"/echo\"\n[outcome]\nend_reason = \"timeout\"\n",
            &["bad-outcome.toml: outcome.end_reason: got \"timeout\"; must be one of"],
        ),
        (
            "not-toml.toml",
            "path = \"/echo\"\n[[steps]\n",
            &["not-toml.toml: ", "line 2"],
        ),
        (
            "no-function.toml",
            "path = \"/nowhere\"\n[[steps]]\nsend = \"a\"\n",
            &[
                "no-function.toml: path: \"/nowhere\" reaches no function of",
                "/echo",
            ],
        ),
    ];
    for (name, text, says) in cases {
        let file = write(dir, name, text);
        // Next to a good file: nothing runs when any file is bad.
        let run = scfsim_test(dir, &["--config", &config_arg, &good, &file], RUN_PATIENCE).await;
        assert_eq!(run.code, 2, "{name}: {}\n{}", run.stdout, run.stderr);
        assert!(run.stdout.is_empty(), "{name}: nothing ran: {}", run.stdout);
        for s in *says {
            assert!(
                run.stderr.contains(s),
                "{name}: {s:?} not in: {}",
                run.stderr
            );
        }
    }
    let run = scfsim_test(
        dir,
        &["--config", &config_arg, "--time-scale", "0.5", &good],
        RUN_PATIENCE,
    )
    .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("--time-scale 0.5: must be a number from 1"),
        "{}",
        run.stderr
    );
}

/// The long one (about 72 s of real time): runs in parallel with the others.
#[tokio::test(flavor = "multi_thread")]
async fn a_two_hour_execution_timeout_at_time_scale_100_ends_with_433() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 2 h is within the platform's ranges as written: no relaxed_limits.
    let config = write_config_file(
        dir,
        &[Function::fixture("echo", &["echo"])
            .set("idle_timeout", "\"2h\"")
            .set("execution_timeout", "\"2h\"")],
        "time_scale = 100",
    );
    let scfsim = Scfsim::start_with(
        vec![],
        Options {
            config: Some(config),
            ..Options::default()
        },
    )
    .await;
    // A message after 30 s moves the idle deadline (also 2 h, 72 s real) past the execution
    // deadline, so the execution timeout is what ends it.
    let scenario = write(
        dir,
        "execution.toml",
        r#"name = "2 h of execution at time_scale 100"
path = "/echo"

[[steps]]
send = "start"

[[steps]]
expect = "start"

[[steps]]
sleep = "30s"

[[steps]]
send = "still here"

[[steps]]
expect = "still here"

[[steps]]
expect_close = { code = 1001 }
within = "5m"

[outcome]
status_code = 433
end_reason = "execution_timeout"
closed_by = "gateway"
close_code = 1001
messages_in = 2
"#,
    );
    let run = scfsim_test(
        dir,
        &[
            "--url",
            &scfsim.ws,
            "--admin",
            &scfsim.admin,
            "--json",
            &scenario,
        ],
        Duration::from_secs(600),
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    let request_id = report["scenarios"][0]["request_ids"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no request id: {report:#}"))
        .to_owned();
    let record = scfsim.record(&request_id).await;
    assert_eq!(record["status_code"], 433, "{record:#}");
    assert_eq!(record["end_reason"], "execution_timeout", "{record:#}");
    assert_eq!(record["time_scale"], 100.0, "{record:#}");
    // Platform time: the timer cannot fire before 2 h of it have passed.
    let platform_ms = record["platform_duration_ms"]
        .as_u64()
        .expect("platform_duration_ms");
    assert!(platform_ms >= 7_200_000, "{record:#}");
    // The close reason speaks platform time too.
    assert!(
        record["close_reason"]
            .as_str()
            .unwrap_or("")
            .contains("7200s"),
        "{record:#}"
    );
}
