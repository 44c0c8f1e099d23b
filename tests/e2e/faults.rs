//! Faults injected on purpose (`[functions.faults]`, the `X-Scfsim-Faults` header, a scenario's
//! `[faults]`): each one produced against real instances and a real WebSocket client, its
//! effect observed, and the record read from the admin API: the same status and end reason as
//! the real failure, and the fault listed in `injected_faults` (empty for a record without).
//!
//! No timed assertions: a slow start is checked as a lower bound on `startup_ms` only.

use std::io::ErrorKind;
use std::time::Duration;

use scfsim_e2e::{refused, scfsim_test, write_config_file, Function, Options, Scfsim, TestRun};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const RUN_PATIENCE: Duration = Duration::from_secs(180);

fn faults(record: &Value) -> Vec<String> {
    record["injected_faults"]
        .as_array()
        .unwrap_or_else(|| panic!("the record has an injected_faults list: {record:#}"))
        .iter()
        .map(|f| f.as_str().expect("each fault is a string").to_owned())
        .collect()
}

/// The details of the timeline's events of kind "fault".
async fn fault_events(scfsim: &Scfsim, request_id: &str) -> Vec<String> {
    let timeline = scfsim
        .get(&format!("/api/invocations/{request_id}/frames"))
        .await;
    timeline["events"]
        .as_array()
        .expect("events is an array")
        .iter()
        .filter(|e| e["kind"] == "fault")
        .map(|e| e["detail"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn echo_with(name: &str, faults_toml: &str) -> Function {
    Function::fixture(name, &["echo"]).set("faults", faults_toml)
}

#[tokio::test]
async fn a_slow_start_still_echoes_counts_in_startup_ms_and_a_record_without_faults_lists_none() {
    let scfsim = Scfsim::start(vec![
        echo_with("slow", "{ start_delay = \"1500ms\" }"),
        Function::fixture("plain", &["echo"]),
        // Slower than its init timeout: fails as a real slow start does (446).
        echo_with("tooslow", "{ start_delay = \"5s\" }").set("init_timeout", "\"1s\""),
    ])
    .await;

    let mut client = scfsim.connect("/slow").await;
    client.send_text("first").await;
    client.expect_text("first").await;
    client.close(1000, "done").await;
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 200, "{record:#}");
    let startup = record["startup_ms"].as_u64().expect("startup_ms");
    assert!(
        startup >= 1500,
        "startup_ms {startup} < the injected 1500 ms"
    );
    assert_eq!(faults(&record), ["start_delay(1s500ms)"]);

    let mut client = scfsim.connect("/plain").await;
    client.send_text("x").await;
    client.expect_text("x").await;
    client.close(1000, "done").await;
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 200, "{record:#}");
    assert_eq!(record["injected_faults"], json!([]), "{record:#}");

    let (http, _, body) = refused(scfsim.connect_with("/tooslow", &[]).await.err().unwrap());
    assert_eq!(http, 502, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(body["status_code"], 446, "{body}");
    let record = scfsim.last_record("tooslow").await;
    assert_eq!(record["status_code"], 446, "{record:#}");
    assert_eq!(record["end_reason"], "not_listening", "{record:#}");
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("start_delay = 5s"),
        "{record:#}"
    );
    assert_eq!(faults(&record), ["start_delay(5s)"]);
}

#[tokio::test]
async fn each_start_failure_gives_the_real_failures_http_error_status_and_end_reason() {
    let scfsim = Scfsim::start(vec![
        echo_with("f405", "{ start_failure = 405 }"),
        echo_with("f434", "{ start_failure = 434 }"),
        echo_with("f445", "{ start_failure = 445 }"),
        echo_with("f446", "{ start_failure = 446 }"),
        // The real failures, for comparison.
        Function::fixture("real405", &["exit", "3"]),
        Function::fixture("real445", &["echo"]).set("bootstrap", "\"no_such_bootstrap\""),
    ])
    .await;
    let mut real = std::collections::BTreeMap::new();
    for (name, status) in [("real405", 405), ("real445", 445)] {
        let (http, headers, body) = refused(
            scfsim
                .connect_with(&format!("/{name}"), &[])
                .await
                .err()
                .unwrap(),
        );
        let record = scfsim.last_record(name).await;
        assert_eq!(record["status_code"], status, "{record:#}");
        assert_eq!(record["injected_faults"], json!([]), "{record:#}");
        real.insert(status, (http, headers, body, record));
    }
    for (name, status, end_reason) in [
        ("f405", 405, "bootstrap_exited"),
        ("f434", 434, "memory_limit"),
        ("f445", 445, "bootstrap_not_found"),
        ("f446", 446, "not_listening"),
    ] {
        let err = scfsim
            .connect_with(&format!("/{name}"), &[])
            .await
            .err()
            .unwrap_or_else(|| panic!("{name}: the upgrade succeeded"));
        let (http, headers, body) = refused(err);
        assert_eq!(http, 502, "{name}: {body}");
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{name}"
        );
        let body: Value = serde_json::from_str(&body).expect("JSON body");
        assert_eq!(body["status_code"], status, "{name}: {body}");
        let message = body["error"].as_str().expect("error message");
        assert!(
            message.contains(&format!("injected fault: start_failure = {status}")),
            "{name}: {message}"
        );
        let record = scfsim.last_record(name).await;
        assert_eq!(record["status_code"], status, "{record:#}");
        assert_eq!(record["end_reason"], end_reason, "{record:#}");
        assert_eq!(record["outcome"], "failure", "{record:#}");
        assert_eq!(record["http_status"], 502, "{record:#}");
        assert_eq!(
            record["close_code"],
            Value::Null,
            "never upgraded: {record:#}"
        );
        assert_eq!(record["request_id"], body["request_id"]);
        assert_eq!(faults(&record), [format!("start_failure({status})")]);
        if let Some((real_http, real_headers, real_body, real_record)) = real.get(&status) {
            // What the client and the record see is the real failure's, but for the message.
            assert_eq!(http, *real_http, "{name}");
            assert_eq!(
                headers.get("content-type"),
                real_headers.get("content-type")
            );
            let real_body: Value = serde_json::from_str(real_body).unwrap();
            let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
            assert_eq!(keys(&body), keys(&real_body), "{name}");
            for field in [
                "status_code",
                "outcome",
                "end_reason",
                "closed_by",
                "http_status",
            ] {
                assert_eq!(record[field], real_record[field], "{name}: {field}");
            }
        }
    }
}

#[tokio::test]
async fn delayed_frames_still_arrive_in_order_both_ways() {
    let scfsim = Scfsim::start(vec![echo_with(
        "slowlink",
        "{ delay_to_function = \"100ms\", delay_to_client = \"50ms\" }",
    )])
    .await;
    let mut client = scfsim.connect("/slowlink").await;
    for i in 0..5 {
        client.send_text(&format!("m{i}")).await;
    }
    for i in 0..5 {
        client.expect_text(&format!("m{i}")).await;
    }
    client.close(1000, "done").await;
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 200, "{record:#}");
    assert_eq!(
        (
            record["messages_in"].as_u64(),
            record["messages_out"].as_u64()
        ),
        (Some(5), Some(5))
    );
    assert_eq!(
        faults(&record),
        ["delay_to_function(100ms)", "delay_to_client(50ms)"]
    );
}

#[tokio::test]
async fn the_clients_connection_is_reset_after_exactly_n_messages() {
    let scfsim = Scfsim::start(vec![echo_with(
        "reset",
        "{ reset_client_after_messages = 4 }",
    )])
    .await;
    let mut client = scfsim.connect("/reset").await;
    // a (1) -> function, a (2) -> client, b (3) -> function, b (4) -> client, then the reset.
    client.send_text("a").await;
    client.expect_text("a").await;
    client.send_text("b").await;
    client.expect_text("b").await;
    match client.next_frame().await {
        Some(Err(WsError::Io(err))) => {
            assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}")
        }
        other => panic!("expected the connection reset after 4 messages, got {other:?}"),
    }
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 456, "{record:#}");
    assert_eq!(record["end_reason"], "client_dropped", "{record:#}");
    assert_eq!(
        (
            record["messages_in"].as_u64(),
            record["messages_out"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(faults(&record), ["reset_client(after 4 messages)"]);
    let events = fault_events(&scfsim, &client.request_id).await;
    assert_eq!(events, ["injected fault: reset_client(after 4 messages)"]);
}

#[tokio::test]
async fn the_instance_is_killed_after_n_messages_or_after_a_time_as_a_real_kill_439() {
    let scfsim = Scfsim::start(vec![
        echo_with("killn", "{ kill_after_messages = 3 }"),
        echo_with("killt", "{ kill_after = \"300ms\" }"),
    ])
    .await;

    let mut client = scfsim.connect("/killn").await;
    client.send_text("a").await;
    client.expect_text("a").await;
    // The 3rd message reaches the function, which is then killed before it can answer.
    client.send_text("b").await;
    let (code, reason) = client.expect_close().await;
    assert_eq!(code, 1011, "{reason}");
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 439, "{record:#}");
    assert_eq!(record["end_reason"], "instance_exited", "{record:#}");
    assert_eq!(record["messages_in"], 2, "{record:#}");
    assert_eq!(faults(&record), ["kill_instance(after 3 messages)"]);
    let events = fault_events(&scfsim, &client.request_id).await;
    assert_eq!(
        events.first().map(String::as_str),
        Some("injected fault: kill_instance(after 3 messages)"),
        "{events:?}"
    );
    // The echo of "b" may have been written in the instant before the kill landed: then it is
    // on the timeline as lost with the instance, never at the client.
    assert!(
        events[1..]
            .iter()
            .all(|e| e == "injected fault: a message of the killed instance, not passed on"),
        "{events:?}"
    );
    assert!(events.len() <= 2, "{events:?}");

    let mut client = scfsim.connect("/killt").await;
    let (code, _) = client.expect_close().await;
    assert_eq!(code, 1011);
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 439, "{record:#}");
    assert_eq!(record["end_reason"], "instance_exited", "{record:#}");
    assert_eq!(faults(&record), ["kill_instance(after 300ms)"]);
}

/// One connection to `path` of a fresh scfsim: 20 messages, then a normal close. Returns what
/// the counting fixture logged it got, and the record (with its timeline's fault events under
/// `fault_events`).
async fn twenty_messages(function: Function, path: &str) -> (Vec<String>, Value) {
    let scfsim = Scfsim::start(vec![function]).await;
    let mut client = scfsim.connect(path).await;
    for i in 1..=20 {
        client.send_text(&format!("m{i}")).await;
    }
    client.close(1000, "done").await;
    let mut record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 200, "{record:#}");
    assert_eq!(record["messages_in"], 20, "{record:#}");
    record["fault_events"] = json!(fault_events(&scfsim, &client.request_id).await);
    let got = scfsim
        .log_lines(&client.request_id)
        .await
        .into_iter()
        .filter_map(|l| {
            l.strip_prefix("fixture: message ")
                .and_then(|rest| rest.split_once(": "))
                .map(|(_, text)| text.to_owned())
        })
        .collect();
    (got, record)
}

/// The K of "… K of 20 messages …" in the record's fault.
fn chosen(record: &Value, prefix: &str) -> usize {
    let all = faults(record);
    let fault = all
        .iter()
        .find(|f| f.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} fault in {all:?}"));
    assert!(fault.contains("seed=7:"), "{fault}");
    let (_, after) = fault.split_once(": ").expect("a count");
    let k: usize = after.split(' ').next().unwrap().parse().expect("a number");
    assert!(after.contains(" of 20 messages"), "{fault}");
    k
}

#[tokio::test]
async fn dropped_and_duplicated_messages_are_the_same_for_the_same_seed() {
    let dropping = || {
        Function::fixture("drops", &["count"]).set("faults", "{ drop_to_function = 0.5, seed = 7 }")
    };
    let (first, record) = twenty_messages(dropping(), "/drops").await;
    let dropped = chosen(&record, "drop_to_function(p=0.5, seed=7");
    assert!(
        (1..20).contains(&dropped),
        "seed 7 drops some, not all: {dropped}"
    );
    assert_eq!(first.len(), 20 - dropped, "the function got {first:?}");
    assert_eq!(
        record["fault_events"].as_array().unwrap().len(),
        dropped,
        "one timeline event per dropped message: {record:#}"
    );
    // Whatever got through is in order.
    let numbers: Vec<u32> = first.iter().map(|t| t[1..].parse().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    let (second, record) = twenty_messages(dropping(), "/drops").await;
    assert_eq!(second, first, "the same seed drops the same messages");
    assert_eq!(chosen(&record, "drop_to_function"), dropped);

    let duplicating = || {
        Function::fixture("dups", &["count"])
            .set("faults", "{ duplicate_to_function = 0.5, seed = 7 }")
    };
    let (first, record) = twenty_messages(duplicating(), "/dups").await;
    let doubled = chosen(&record, "duplicate_to_function(p=0.5, seed=7");
    assert!(
        (1..20).contains(&doubled),
        "seed 7 doubles some, not all: {doubled}"
    );
    assert_eq!(first.len(), 20 + doubled, "the function got {first:?}");
    let (second, _) = twenty_messages(duplicating(), "/dups").await;
    assert_eq!(second, first, "the same seed doubles the same messages");
}

#[tokio::test]
async fn the_faults_header_works_only_where_the_config_allows_it_and_never_reaches_the_function() {
    let header = ("X-Scfsim-Faults", r#"{"kill_after_messages": 1}"#);
    let closed = Scfsim::start(vec![Function::fixture("echo", &["echo"])]).await;
    let (http, _, body) = refused(closed.connect_with("/echo", &[header]).await.err().unwrap());
    assert_eq!(http, 403, "{body}");
    assert!(body.contains("fault_headers = true"), "{body}");

    let open = Scfsim::start_with(
        vec![
            Function::fixture("echo", &["echo"]),
            Function::fixture("headers", &["headers"]),
        ],
        Options {
            gateway: vec![("fault_headers".into(), "true".into())],
            ..Options::default()
        },
    )
    .await;
    let bad = ("X-Scfsim-Faults", r#"{"kill_after_messages": 0}"#);
    let (http, _, body) = refused(open.connect_with("/echo", &[bad]).await.err().unwrap());
    assert_eq!(http, 400, "{body}");
    assert!(body.contains("kill_after_messages: got 0"), "{body}");

    let mut client = open
        .connect_with("/echo", &[header])
        .await
        .expect("upgraded");
    client.send_text("a").await;
    let (code, _) = client.expect_close().await;
    assert_eq!(code, 1011);
    let record = open.record(&client.request_id).await;
    assert_eq!(record["status_code"], 439, "{record:#}");
    assert_eq!(faults(&record), ["kill_instance(after 1 message)"]);

    let delay = ("X-Scfsim-Faults", r#"{"delay_to_client": "10ms"}"#);
    let mut client = open
        .connect_with("/headers", &[delay])
        .await
        .expect("upgraded");
    let report = match client.next_message().await {
        Message::Text(t) => serde_json::from_str::<Value>(t.as_str()).expect("JSON report"),
        other => panic!("expected the fixture's report, got {other:?}"),
    };
    let headers = report["headers"].as_object().expect("headers");
    assert!(
        !headers.keys().any(|k| k.starts_with("x-scfsim-")),
        "the function saw scfsim's own headers: {headers:?}"
    );
    client.close(1000, "done").await;
    let record = open.record(&client.request_id).await;
    assert_eq!(faults(&record), ["delay_to_client(10ms)"]);
}

fn scenario(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("killed.toml");
    std::fs::write(
        &path,
        r#"
name = "killed after two messages"
path = "/echo"

[faults]
kill_after_messages = 3

[[steps]]
send = "a"

[[steps]]
expect = "a"

[[steps]]
send = "b"

[[steps]]
expect_close = 1011

[outcome]
status_code = 439
end_reason = "instance_exited"
messages_in = 2
injected_faults = ["kill_instance(after 3 messages)"]
"#,
    )
    .unwrap();
    path
}

fn assert_passed(run: &TestRun) {
    assert_eq!(
        run.code, 0,
        "scfsim test failed:\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
}

#[tokio::test]
async fn a_scenarios_faults_reach_its_own_scfsim_and_a_running_one_that_allows_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_file(dir.path(), &[Function::fixture("echo", &["echo"])], "");
    let file = scenario(dir.path());
    let args = ["--config", config.to_str().unwrap(), file.to_str().unwrap()];
    let run = scfsim_test(dir.path(), &args, RUN_PATIENCE).await;
    assert_passed(&run);

    // A running scfsim: refused (with the key to set) unless its config allows fault headers.
    for allowed in [false, true] {
        let gateway = if allowed {
            vec![("fault_headers".into(), "true".into())]
        } else {
            vec![]
        };
        let scfsim = Scfsim::start_with(
            vec![Function::fixture("echo", &["echo"])],
            Options {
                gateway,
                ..Options::default()
            },
        )
        .await;
        let args = [
            "--url",
            &scfsim.ws,
            "--admin",
            &scfsim.admin,
            "--json",
            file.to_str().unwrap(),
        ];
        let run = scfsim_test(dir.path(), &args, RUN_PATIENCE).await;
        if allowed {
            assert_passed(&run);
            let report = run.json();
            let id = report.to_string();
            let request_id = id
                .split('"')
                .find(|s| s.len() == 36 && s.matches('-').count() == 4)
                .unwrap_or_else(|| panic!("no request id in {report:#}"));
            let record = scfsim.record(request_id).await;
            assert_eq!(faults(&record), ["kill_instance(after 3 messages)"]);
        } else {
            assert_eq!(
                run.code, 1,
                "stdout:\n{}\nstderr:\n{}",
                run.stdout, run.stderr
            );
            assert!(
                run.stdout.contains("fault_headers = true"),
                "the failure names the key: {}",
                run.stdout
            );
        }
    }
}

#[tokio::test]
async fn a_scenario_without_steps_expects_a_start_that_fails_on_purpose() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_file(dir.path(), &[Function::fixture("echo", &["echo"])], "");
    let write = |name: &str, status: u16| {
        let path = dir.path().join(name);
        let text = format!(
            "path = \"/echo\"\n\n[faults]\nstart_failure = 446\n\n[outcome]\n\
             status_code = {status}\nend_reason = \"not_listening\"\n\
             injected_faults = [\"start_failure(446)\"]\n"
        );
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let expected = write("fails.toml", 446);
    let run = scfsim_test(
        dir.path(),
        &["--config", config.to_str().unwrap(), &expected],
        RUN_PATIENCE,
    )
    .await;
    assert_passed(&run);

    // Expecting another status: the outcome's diff, with the refusal it came from.
    let wrong = write("wrong.toml", 405);
    let run = scfsim_test(
        dir.path(),
        &["--config", config.to_str().unwrap(), &wrong],
        RUN_PATIENCE,
    )
    .await;
    assert_eq!(
        run.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    for part in ["status_code = 405", "status_code = 446", "HTTP 502"] {
        assert!(run.stdout.contains(part), "no {part:?} in:\n{}", run.stdout);
    }
}
