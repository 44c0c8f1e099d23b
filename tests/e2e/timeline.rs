//! The frame timeline of an invocation (`GET /api/invocations/{id}/frames`, its event stream)
//! and `scfsim record`, which turns a recorded session into a scenario that `scfsim test`
//! replays. Real scfsim on port 0, real WebSocket clients, the multi-mode fixture as the
//! function.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use scfsim_e2e::{json, EventStream, Function, Options, Scfsim, PATIENCE};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// The finished timeline of `request_id` (waits, bounded, for the record first).
async fn timeline(scfsim: &Scfsim, request_id: &str) -> Value {
    scfsim.record(request_id).await;
    scfsim
        .get(&format!("/api/invocations/{request_id}/frames"))
        .await
}

fn events(timeline: &Value) -> &Vec<Value> {
    timeline["events"].as_array().expect("events is an array")
}

/// The message events (text, binary, ping, pong), as (direction, opcode, payload, injected).
fn messages(timeline: &Value) -> Vec<(String, String, String, bool)> {
    events(timeline)
        .iter()
        .filter(|e| e["kind"] == "message")
        .map(|e| {
            let payload = e["text"]
                .as_str()
                .or(e["binary_base64"].as_str())
                .unwrap_or("")
                .to_owned();
            (
                e["direction"].as_str().unwrap_or("").to_owned(),
                e["opcode"].as_str().unwrap_or("").to_owned(),
                payload,
                e["injected"] == true,
            )
        })
        .collect()
}

fn position(timeline: &Value, what: &str, pred: impl Fn(&Value) -> bool) -> usize {
    events(timeline)
        .iter()
        .position(pred)
        .unwrap_or_else(|| panic!("no {what} in the timeline: {timeline:#}"))
}

/// Runs `scfsim ARGS` (bounded); returns (exit code, stdout, stderr).
async fn scfsim_cli(args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(scfsim_e2e::scfsim_bin());
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(PATIENCE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("scfsim {args:?}: not done within {PATIENCE:?}"))
        .expect("run scfsim");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_session_is_on_its_timeline_in_order_with_handshakes_phases_and_closes() {
    let scfsim = Scfsim::start(vec![Function::fixture("echo", &["echo"])]).await;
    let mut client = scfsim
        .connect_with("/echo?room=a", &[("x-user", "ann")])
        .await
        .expect("upgrade");
    client.send_text("hello").await;
    client.expect_text("hello").await;
    client.send_binary(vec![0, 1, 2, 255]).await;
    client.expect_binary(&[0, 1, 2, 255]).await;
    client.send(Message::Ping(b"p1".to_vec().into())).await;
    match client.next_frame().await {
        Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"p1"),
        other => panic!("expected the pong, got {other:?}"),
    }
    // The function writes its own pong before its next echo: once this echo is here, so is
    // that pong on the timeline.
    client.send_text("after").await;
    client.expect_text("after").await;
    client.close(1000, "bye").await;

    let t = timeline(&scfsim, &client.request_id).await;
    assert_eq!(t["request_id"], client.request_id.as_str());
    assert_eq!(t["function"], "echo");
    assert_eq!(t["live"], false);
    assert_eq!(t["dropped"], 0);
    let all = events(&t);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e["seq"], i, "{t:#}");
        assert!(e["at"].as_str().is_some_and(|a| a.ends_with('Z')), "{e}");
        assert!(e["detail"].as_str().is_some_and(|d| !d.is_empty()), "{e}");
        if i > 0 {
            assert!(
                e["t_ms"].as_f64() >= all[i - 1]["t_ms"].as_f64(),
                "t_ms goes back: {t:#}"
            );
        }
    }

    // The client's upgrade request with its path, query and headers; then the instance's
    // start, the handshake with the instance, the client's 101, and only then messages.
    let request = position(&t, "the client's request", |e| {
        e["kind"] == "handshake" && e["sent_by"] == "client"
    });
    assert_eq!(all[request]["path"], "/echo?room=a", "{t:#}");
    let headers = all[request]["headers"].as_array().expect("headers");
    assert!(headers.contains(&json!(["x-user", "ann"])), "{t:#}");
    // As sent: the WebSocket mechanics too, and the row counts all of them.
    let sent = |name: &str| headers.iter().any(|h| h[0] == name);
    assert!(sent("host") && sent("sec-websocket-key"), "{t:#}");
    let count = format!("({} headers)", headers.len());
    assert!(
        all[request]["detail"]
            .as_str()
            .unwrap_or("")
            .contains(&count),
        "{t:#}"
    );
    let requested = position(&t, "instance requested", |e| {
        e["kind"] == "phase" && e["detail"].as_str().unwrap_or("").contains("requested")
    });
    let ready = position(&t, "instance ready", |e| {
        e["kind"] == "phase"
            && e["detail"]
                .as_str()
                .unwrap_or("")
                .contains("listening on port 9000")
    });
    let instance_101 = position(&t, "the instance's 101", |e| {
        e["kind"] == "handshake" && e["sent_by"] == "function" && e["status"] == 101
    });
    let client_101 = position(&t, "the client's 101", |e| {
        e["kind"] == "handshake" && e["sent_by"] == "gateway" && e["status"] == 101
    });
    let first_message = position(&t, "a message", |e| e["kind"] == "message");
    assert!(
        request < requested
            && requested < ready
            && ready < instance_101
            && instance_101 < client_101
            && client_101 < first_message,
        "{t:#}"
    );

    let hello = &all[first_message];
    assert_eq!(hello["size"], 5);
    assert_eq!(hello["truncated"], false);
    assert_eq!(hello["binary_base64"], Value::Null);
    // Each direction in its order (the two directions run side by side).
    let m = messages(&t);
    let way = |d: &str| -> Vec<(String, String)> {
        m.iter()
            .filter(|(dir, _, _, injected)| dir == d && !injected)
            .map(|(_, opcode, payload, _)| (opcode.clone(), payload.clone()))
            .collect()
    };
    let want = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(o, p)| (o.to_string(), p.to_string()))
            .collect()
    };
    assert_eq!(
        way("to_function"),
        want(&[
            ("text", "hello"),
            ("binary", "AAEC/w=="),
            ("ping", "cDE="),
            ("text", "after")
        ]),
        "{t:#}"
    );
    assert_eq!(
        way("to_client"),
        want(&[
            ("text", "hello"),
            ("binary", "AAEC/w=="),
            // The function's pong: scfsim answered the client's ping itself.
            ("pong", "cDE="),
            ("text", "after")
        ]),
        "{t:#}"
    );
    // Each echo after what it echoes.
    let at = |d: &str, p: &str| {
        m.iter()
            .position(|(dir, _, payload, _)| dir == d && payload == p)
            .expect("message on the timeline")
    };
    for p in ["hello", "AAEC/w==", "after"] {
        assert!(at("to_function", p) < at("to_client", p), "{t:#}");
    }

    // The client's close, scfsim passing it on to the function, and answering the client.
    let closes: Vec<_> = all.iter().filter(|e| e["kind"] == "close").collect();
    let client_close = closes
        .iter()
        .find(|e| e["sent_by"] == "client")
        .unwrap_or_else(|| panic!("no close from the client: {t:#}"));
    assert_eq!(client_close["direction"], "to_function");
    assert_eq!(client_close["opcode"], "close");
    assert_eq!(client_close["close_code"], 1000);
    assert_eq!(client_close["close_reason"], "bye");
    assert!(
        closes.iter().any(|e| e["sent_by"] == "gateway"
            && e["direction"] == "to_function"
            && e["close_code"] == 1000),
        "{t:#}"
    );
    assert!(
        closes
            .iter()
            .any(|e| e["sent_by"] == "gateway" && e["direction"] == "to_client"),
        "{t:#}"
    );
    let last = all.last().expect("events");
    assert_eq!(last["kind"], "phase");
    assert!(
        last["detail"]
            .as_str()
            .unwrap_or("")
            .contains("200 client_closed"),
        "{t:#}"
    );

    // Unknown and malformed ids.
    let (status, body) = scfsim
        .get_status(&format!("/api/invocations/{}/frames", uuid_like()))
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = scfsim.get_status("/api/invocations/nope/frames").await;
    assert_eq!(status, 400);
}

fn uuid_like() -> &'static str {
    "00000000-0000-4000-8000-000000000000"
}

#[tokio::test]
async fn a_live_timeline_is_served_and_streamed_until_the_connection_ends() {
    let scfsim = Scfsim::start(vec![Function::fixture("echo", &["echo"])]).await;
    let mut client = scfsim.connect("/echo").await;
    client.send_text("one").await;
    client.expect_text("one").await;
    let path = format!("/api/invocations/{}/frames", client.request_id);
    let t = scfsim.get(&path).await;
    assert_eq!(t["live"], true, "{t:#}");
    assert!(
        messages(&t).contains(&("to_client".into(), "text".into(), "one".into(), false)),
        "{t:#}"
    );

    let mut stream = EventStream::open(&format!("{}{path}?stream=true", scfsim.admin)).await;
    // The events so far come first, up to the echo of "one".
    loop {
        let (name, e) = stream.next().await;
        assert_eq!(name, "frame");
        if e["direction"] == "to_client" && e["text"] == "one" {
            break;
        }
    }
    // A new message shows up on the stream while the connection is open.
    client.send_text("two").await;
    client.expect_text("two").await;
    loop {
        let (name, e) = stream.next().await;
        assert_eq!(name, "frame", "{e}");
        if e["direction"] == "to_function" && e["text"] == "two" {
            assert_eq!(e["kind"], "message");
            assert_eq!(e["size"], 3);
            break;
        }
    }
    client.close(1000, "done").await;
    // The closes, then the end, then the stream ends.
    let mut saw_close = false;
    loop {
        let (name, e) = stream.next().await;
        if name == "end" {
            assert_eq!(e["request_id"], client.request_id.as_str());
            assert_eq!(e["dropped"], 0);
            break;
        }
        saw_close |= e["kind"] == "close";
    }
    assert!(saw_close, "no close event before the end");
    stream.expect_end().await;

    // The other spelling, after the end: the stored events and the end at once.
    let mut stored = EventStream::open(&format!("{}{path}/stream", scfsim.admin)).await;
    let (name, first) = stored.next().await;
    assert_eq!((name.as_str(), &first["seq"]), ("frame", &json!(0)));
    loop {
        let (name, _) = stored.next().await;
        if name == "end" {
            break;
        }
    }
    stored.expect_end().await;
}

#[tokio::test]
async fn rate_limited_and_injected_messages_are_marked() {
    let scfsim = Scfsim::start(vec![Function::fixture("echo", &["echo"]).set(
        "limits",
        "{ max_messages_per_second = 2, rate_limit_action = \"throttle\" }",
    )])
    .await;
    let mut client = scfsim.connect("/echo").await;
    for i in 0..4 {
        client.send_text(&format!("m{i}")).await;
    }
    for i in 0..4 {
        client.expect_text(&format!("m{i}")).await;
    }
    let live = scfsim.get("/api/instances").await;
    let id = live[0]["id"]
        .as_str()
        .expect("one live instance")
        .to_owned();
    let url = format!("{}/api/instances/{id}/send", scfsim.admin);
    let body = json!({ "to": "client", "text": "from admin" }).to_string();
    tokio::time::timeout(
        PATIENCE,
        scfsim_client::call(hyper::Method::POST, &url, None, Some(body)),
    )
    .await
    .expect("injected within patience")
    .expect("injected");
    client.expect_text("from admin").await;
    client.close(1000, "").await;

    let t = timeline(&scfsim, &client.request_id).await;
    let limited: Vec<_> = events(&t).iter().filter(|e| e["kind"] == "limit").collect();
    assert!(!limited.is_empty(), "no limit event: {t:#}");
    assert!(
        limited.iter().all(|e| e["detail"]
            .as_str()
            .unwrap_or("")
            .starts_with("rate limited:")),
        "{t:#}"
    );
    assert_eq!(limited[0]["direction"], "to_function");
    let injected: Vec<_> = events(&t)
        .iter()
        .filter(|e| e["injected"] == true)
        .collect();
    assert_eq!(injected.len(), 1, "{t:#}");
    assert_eq!(injected[0]["text"], "from admin");
    assert_eq!(injected[0]["direction"], "to_client");
    assert_eq!(injected[0]["sent_by"], "gateway");
    // The peers' own messages are not marked.
    assert_eq!(messages(&t).iter().filter(|m| !m.3).count(), 8, "{t:#}");
}

#[tokio::test]
async fn max_events_bounds_a_timeline_and_record_refuses_it_naming_the_key() {
    let scfsim = Scfsim::start_with(
        vec![Function::fixture("echo", &["echo"])],
        Options {
            extra_toml: "[timeline]\nmax_events = 5\n".into(),
            ..Options::default()
        },
    )
    .await;
    let mut client = scfsim.connect("/echo").await;
    for i in 0..5 {
        client.send_text(&format!("m{i}")).await;
        client.expect_text(&format!("m{i}")).await;
    }
    client.close(1000, "").await;
    let t = timeline(&scfsim, &client.request_id).await;
    assert_eq!(events(&t).len(), 5, "{t:#}");
    assert!(t["dropped"].as_u64().unwrap_or(0) > 0, "{t:#}");

    let (code, _, stderr) =
        scfsim_cli(&["record", &client.request_id, "--admin", &scfsim.admin]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("timeline.max_events"), "{stderr}");
}

#[tokio::test]
async fn with_the_timeline_off_the_api_answers_404_naming_the_key() {
    let scfsim = Scfsim::start_with(
        vec![Function::fixture("echo", &["echo"])],
        Options {
            extra_toml: "[timeline]\nenabled = false\n".into(),
            ..Options::default()
        },
    )
    .await;
    let mut client = scfsim.connect("/echo").await;
    client.send_text("hi").await;
    client.expect_text("hi").await;
    client.close(1000, "").await;
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 200);
    let (status, body) = scfsim
        .get_status(&format!("/api/invocations/{}/frames", client.request_id))
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("timeline is off"), "{body}");
    assert!(body.contains("enabled = true"), "{body}");
}

#[tokio::test]
async fn keep_invocations_prunes_old_timelines_and_keeps_their_records() {
    let scfsim = Scfsim::start_with(
        vec![Function::fixture("echo", &["echo"])],
        Options {
            extra_toml: "[timeline]\nkeep_invocations = 2\n".into(),
            ..Options::default()
        },
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut client = scfsim.connect("/echo").await;
        client.send_text(&format!("session {i}")).await;
        client.expect_text(&format!("session {i}")).await;
        client.close(1000, "").await;
        scfsim.record(&client.request_id).await;
        ids.push(client.request_id.clone());
    }
    let oldest = format!("/api/invocations/{}/frames", ids[0]);
    let body = scfsim
        .eventually("the oldest timeline to be pruned", || async {
            match scfsim.get_status(&oldest).await {
                (404, body) => Ok(body),
                (status, body) => Err(format!("{status} {body}")),
            }
        })
        .await;
    assert!(body.contains("keep_invocations"), "{body}");
    assert_eq!(scfsim.record(&ids[0]).await["status_code"], 200);
    for id in &ids[1..] {
        let t = scfsim.get(&format!("/api/invocations/{id}/frames")).await;
        assert!(!events(&t).is_empty());
    }
}

#[tokio::test]
async fn limits_that_end_a_connection_are_on_its_timeline() {
    let scfsim = Scfsim::start(vec![
        Function::fixture("small", &["echo"]).set("limits", "{ max_message_bytes = 16 }"),
        Function::fixture("idle", &["echo"]).set("idle_timeout", "\"1s\""),
    ])
    .await;
    // Over the size limit: the client's message is refused, the connection ends (406).
    let mut client = scfsim.connect("/small").await;
    client.send_text(&"x".repeat(100)).await;
    client.expect_close().await;
    let t = timeline(&scfsim, &client.request_id).await;
    let limit = &events(&t)[position(&t, "the size limit", |e| e["kind"] == "limit")];
    assert_eq!(limit["direction"], "to_function", "{t:#}");
    assert!(
        limit["detail"]
            .as_str()
            .unwrap_or("")
            .contains("message_too_large"),
        "{t:#}"
    );
    assert!(
        events(&t).iter().any(|e| e["kind"] == "close"
            && e["sent_by"] == "gateway"
            && e["direction"] == "to_client"),
        "the close scfsim sent the client: {t:#}"
    );

    // Silent past the idle timeout: a limit event, then scfsim closes both sides with 1001.
    let mut client = scfsim.connect("/idle").await;
    assert_eq!(client.expect_close().await.0, 1001);
    let t = timeline(&scfsim, &client.request_id).await;
    let limit = &events(&t)[position(&t, "the idle timeout", |e| e["kind"] == "limit")];
    assert!(
        limit["detail"]
            .as_str()
            .unwrap_or("")
            .contains("idle_timeout"),
        "{t:#}"
    );
    let closes: Vec<_> = events(&t)
        .iter()
        .filter(|e| e["kind"] == "close" && e["sent_by"] == "gateway")
        .collect();
    assert!(
        closes
            .iter()
            .any(|e| e["direction"] == "to_client" && e["close_code"] == 1001)
            && closes
                .iter()
                .any(|e| e["direction"] == "to_function" && e["close_code"] == 1001),
        "{t:#}"
    );
}

// ---- scfsim record + scfsim test ---------------------------------------------------------------

/// One session against `/echo`: text, binary, a ping, a pause, and the client's close.
async fn record_a_session(scfsim: &Scfsim) -> String {
    let mut client = scfsim
        .connect_with("/echo?room=blue", &[("x-user", "ann")])
        .await
        .expect("upgrade");
    client.send_text("hello").await;
    client.expect_text("hello").await;
    // A pause that --keep-timing keeps (not asserted on as a duration).
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.send_binary(vec![0, 1, 2, 255]).await;
    client.expect_binary(&[0, 1, 2, 255]).await;
    client.send(Message::Ping(b"p1".to_vec().into())).await;
    match client.next_frame().await {
        Some(Ok(Message::Pong(_))) => {}
        other => panic!("expected the pong, got {other:?}"),
    }
    client.close(1000, "bye").await;
    scfsim.record(&client.request_id).await;
    client.request_id.clone()
}

async fn replay(scfsim: &Scfsim, scenario: &Path) -> (i32, String, String) {
    scfsim_cli(&[
        "test",
        "--url",
        &scfsim.ws,
        "--admin",
        &scfsim.admin,
        &scenario.display().to_string(),
    ])
    .await
}

#[tokio::test]
async fn a_recorded_session_replays_green_against_its_function_and_red_against_a_changed_one() {
    let scfsim = Scfsim::start(vec![Function::fixture("echo", &["echo"])]).await;
    let request_id = record_a_session(&scfsim).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("recorded.toml");
    let (code, _, stderr) = scfsim_cli(&[
        "record",
        &request_id,
        "--admin",
        &scfsim.admin,
        "-o",
        &file.display().to_string(),
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    // A file written says so, and how to replay it.
    assert!(
        stderr.contains(&format!(
            "wrote invocation {request_id} to {}",
            file.display()
        )) && stderr.contains("scfsim test"),
        "{stderr}"
    );
    let scenario = std::fs::read_to_string(&file).expect("scenario written");
    // A request id already names its function: --function beside it is refused, not ignored.
    let (code, _, stderr) = scfsim_cli(&[
        "record",
        &request_id,
        "--function",
        "other",
        "--admin",
        &scfsim.admin,
    ])
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("cannot be used with '--function"),
        "{stderr}"
    );
    for line in [
        "path = \"/echo\"",
        "send = \"hello\"",
        "expect = \"hello\"",
        // The binary payload, byte for byte.
        "send_binary = \"000102ff\"",
        "expect_binary = \"000102ff\"",
        "ping = \"p1\"",
        "close = { code = 1000, reason = \"bye\" }",
        "status_code = 200",
        "end_reason = \"client_closed\"",
        "closed_by = \"client\"",
        "x-user = \"ann\"",
        "room = \"blue\"",
    ] {
        assert!(scenario.contains(line), "no {line:?} in:\n{scenario}");
    }
    // The timeline has the WebSocket mechanics the client sent; the replaying client sets its own.
    for mechanics in ["sec-websocket-key", "host ="] {
        assert!(
            !scenario.contains(mechanics),
            "{mechanics:?} in:\n{scenario}"
        );
    }
    assert!(!scenario.contains("sleep"), "{scenario}");

    // --last --function (the session above is the newest), with the pauses kept.
    let (code, timed, stderr) = scfsim_cli(&[
        "record",
        "--last",
        "--function",
        "echo",
        "--keep-timing",
        "--admin",
        &scfsim.admin,
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(timed.contains("sleep = \""), "{timed}");
    assert!(timed.contains("send_binary = \"000102ff\""), "{timed}");

    // Green against the same function.
    let (code, stdout, stderr) = replay(&scfsim, &file).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}\n{scenario}");

    // With the pauses: green too.
    let timed_file = dir.path().join("timed.toml");
    std::fs::write(&timed_file, &timed).expect("write");
    let (code, stdout, stderr) = replay(&scfsim, &timed_file).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}\n{timed}");

    // Red against a changed function: it greets with a report of its request before echoing.
    let changed = Scfsim::start(vec![Function::fixture("echo", &["headers"])]).await;
    let (code, stdout, stderr) = replay(&changed, &file).await;
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stdout.contains("FAIL"), "{stdout}");
    let expected = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("expected:"))
        .unwrap_or_else(|| panic!("no expected line: {stdout}"));
    let got = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("got:"))
        .unwrap_or_else(|| panic!("no got line: {stdout}"));
    assert!(expected.contains("\"hello\""), "{stdout}");
    // The changed function's report of its request (a JSON text) instead of the echo.
    assert!(
        got.contains("cwd") && !got.contains("\"hello\""),
        "{stdout}"
    );
}
