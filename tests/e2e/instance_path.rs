//! The core instance path through the real binary: one instance per connection, frames one to
//! one, every outcome of semantics.md §3 recorded and readable by request id.

use std::collections::BTreeSet;

use futures_util::{SinkExt, StreamExt};
use scfsim_e2e::{refused, status_of, Function, Options, Scfsim};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

fn assert_outcome(record: &Value, status: u64, end_reason: &str, close_code: Option<u16>) {
    assert_eq!(record["status_code"], status, "{record:#}");
    assert_eq!(record["end_reason"], end_reason, "{record:#}");
    assert_eq!(
        record["close_code"].as_u64(),
        close_code.map(u64::from),
        "{record:#}"
    );
}

#[tokio::test]
async fn echo_both_message_kinds_then_client_close_1000_is_200() {
    let scfsim = Scfsim::start(vec![Function::fixture("echo", &["echo"])]).await;
    let mut client = scfsim.connect("/echo").await;
    client.send_text("hello").await;
    client.expect_text("hello").await;
    client.send_binary(vec![0, 1, 2, 255]).await;
    client.expect_binary(&[0, 1, 2, 255]).await;
    client.send_text("").await;
    client.expect_text("").await;
    client.close(1000, "done").await;
    let record = scfsim.record(&client.request_id).await;
    assert_outcome(&record, 200, "client_closed", Some(1000));
    assert_eq!(record["outcome"], "success");
    assert_eq!(record["closed_by"], "client");
    assert_eq!(record["close_reason"], "done");
    assert_eq!(record["messages_in"], 3);
    assert_eq!(record["messages_out"], 3);
    assert_eq!(record["bytes_in"], 9);
    assert_eq!(record["bytes_out"], 9);
    assert!(record["instance_pid"].as_u64().is_some());
    assert!(record["startup_ms"].as_u64().is_some());
    assert!(record["ended_at"].is_string());
    // The X-Api-RequestId of the 101 is the same id.
    assert_eq!(
        client.response.headers()["x-api-requestid"],
        client.request_id.as_str()
    );
}

#[tokio::test]
async fn client_close_codes() {
    let scfsim = Scfsim::start(vec![Function::fixture("echo", &["echo"])]).await;
    for (code, status) in [(1010, 200), (4000, 456), (1001, 456)] {
        let mut client = scfsim.connect("/echo").await;
        client.close(code, "bye").await;
        let record = scfsim.record(&client.request_id).await;
        assert_outcome(&record, status, "client_closed", Some(code));
        assert_eq!(record["closed_by"], "client");
    }
}

#[tokio::test]
async fn function_close_codes_reach_the_client() {
    let scfsim = Scfsim::start(vec![
        Function::fixture("ok", &["close-after", "1", "1000", "finished"]),
        Function::fixture("err", &["close-after", "1", "1011", "internal"]),
        Function::fixture("custom", &["close-after", "1", "4001", "custom reason"]),
    ])
    .await;
    for (path, code, reason, status) in [
        ("/ok", 1000, "finished", 200),
        ("/err", 1011, "internal", 200),
        ("/custom", 4001, "custom reason", 439),
    ] {
        let mut client = scfsim.connect(path).await;
        client.send_text("one").await;
        client.expect_text("one").await;
        assert_eq!(client.expect_close().await, (code, reason.to_string()));
        let record = scfsim.record(&client.request_id).await;
        assert_outcome(&record, status, "function_closed", Some(code));
        assert_eq!(record["closed_by"], "function");
        assert_eq!(record["close_reason"], reason);
    }
}

#[tokio::test]
async fn instance_exit_without_close_is_439_and_the_client_gets_1011() {
    let scfsim = Scfsim::start(vec![Function::fixture(
        "exits",
        &["exit-after-accept", "7"],
    )])
    .await;
    let mut client = scfsim.connect("/exits").await;
    let (code, _) = client.expect_close().await;
    assert_eq!(code, 1011);
    let record = scfsim.record(&client.request_id).await;
    assert_outcome(&record, 439, "instance_exited", Some(1011));
    assert_eq!(record["instance_exit_code"], 7);
}

#[tokio::test]
async fn client_dropping_tcp_is_456_with_1006() {
    let scfsim = Scfsim::start(vec![Function::fixture("echo", &["echo"])]).await;
    let mut client = scfsim.connect("/echo").await;
    client.send_text("x").await;
    client.expect_text("x").await;
    let id = client.request_id.clone();
    drop(client);
    let record = scfsim.record(&id).await;
    assert_outcome(&record, 456, "client_dropped", Some(1006));
    assert_eq!(record["closed_by"], "client");
}

#[tokio::test]
async fn idle_timeout_is_455_and_execution_timeout_is_433() {
    let scfsim = Scfsim::start(vec![
        Function::fixture("idle", &["echo"]).set("idle_timeout", "\"300ms\""),
        Function::fixture("exec", &["echo"])
            .set("idle_timeout", "\"60s\"")
            .set("execution_timeout", "\"500ms\""),
    ])
    .await;
    let mut client = scfsim.connect("/idle").await;
    let (code, reason) = client.expect_close().await;
    assert_eq!(code, 1001);
    assert!(reason.contains("idle"), "{reason}");
    assert_outcome(
        &scfsim.record(&client.request_id).await,
        455,
        "idle_timeout",
        Some(1001),
    );

    let mut client = scfsim.connect("/exec").await;
    let (code, reason) = client.expect_close().await;
    assert_eq!(code, 1001);
    assert!(reason.contains("execution"), "{reason}");
    let record = scfsim.record(&client.request_id).await;
    assert_outcome(&record, 433, "execution_timeout", Some(1001));
    assert_eq!(record["closed_by"], "gateway");
}

#[tokio::test]
async fn messages_keep_the_idle_timer_alive() {
    let scfsim = Scfsim::start(vec![
        Function::fixture("idle", &["echo"]).set("idle_timeout", "\"1s\"")
    ])
    .await;
    let mut client = scfsim.connect("/idle").await;
    // Twenty round trips 100 ms apart span 2 s, twice the idle timeout: the timer must be reset
    // by the messages, or the connection would end in the middle.
    for i in 0..20 {
        client.send_text(&i.to_string()).await;
        client.expect_text(&i.to_string()).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    client.close(1000, "").await;
    assert_outcome(
        &scfsim.record(&client.request_id).await,
        200,
        "client_closed",
        Some(1000),
    );
}

#[tokio::test]
async fn start_failures_are_502_with_what_to_fix_and_recorded() {
    let scfsim = Scfsim::start(vec![
        Function::fixture("exits", &["exit", "3"]),
        Function::fixture("silent", &["never-listen"]).set("init_timeout", "\"500ms\""),
        Function::script("noexec", "exit 0"),
        Function::script("badshebang", "exit 0"),
    ])
    .await;
    let functions = scfsim.dir.join("functions");
    std::fs::set_permissions(
        functions.join("noexec/scf_bootstrap"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    std::fs::write(
        functions.join("badshebang/scf_bootstrap"),
        "#!/opt/no-such-interpreter/bin/run\n",
    )
    .unwrap();

    for (path, status, end_reason, hint) in [
        (
            "/exits",
            405,
            "bootstrap_exited",
            "exited with code 3 before listening",
        ),
        ("/silent", 446, "not_listening", "port 9000"),
        ("/noexec", 445, "bootstrap_not_found", "chmod 755"),
        ("/badshebang", 445, "bootstrap_not_found", "first line"),
    ] {
        let err = scfsim.connect_with(path, &[]).await.err().expect("refused");
        let (http, _, body) = refused(err);
        assert_eq!(http, 502, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).expect("JSON body");
        assert_eq!(body["status_code"], status, "{body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(hint), "{path}: {message}");
        let name = &path[1..];
        let record = scfsim.last_record(name).await;
        assert_outcome(&record, status, end_reason, None);
        assert_eq!(record["request_id"], body["request_id"]);
        assert_eq!(record["error"], message);
    }
    // The bootstrap's output is in the message and in the record's logs.
    let record = scfsim.last_record("exits").await;
    assert!(record["error"]
        .as_str()
        .unwrap()
        .contains("fixture: exiting with 3"));
    assert_eq!(record["instance_exit_code"], 3);
    let logs = scfsim
        .get(&format!(
            "/api/invocations/{}/logs",
            record["request_id"].as_str().unwrap()
        ))
        .await;
    let lines: Vec<&str> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert!(lines.contains(&"fixture: exiting with 3"), "{lines:?}");
}

#[tokio::test]
async fn missing_bootstrap_is_445() {
    let scfsim = Scfsim::start(vec![Function::script("gone", "exit 0")]).await;
    std::fs::remove_file(scfsim.dir.join("functions/gone/scf_bootstrap")).unwrap();
    let (http, _, body) = refused(scfsim.connect_with("/gone", &[]).await.err().unwrap());
    assert_eq!(http, 502);
    assert!(body.contains("does not exist"), "{body}");
    assert_outcome(
        &scfsim.last_record("gone").await,
        445,
        "bootstrap_not_found",
        None,
    );
}

#[tokio::test]
async fn a_refused_upgrade_reaches_the_client_as_it_is() {
    let scfsim = Scfsim::start(vec![Function::fixture(
        "reject",
        &["reject", "403", "not you"],
    )])
    .await;
    let (http, headers, body) = refused(scfsim.connect_with("/reject", &[]).await.err().unwrap());
    assert_eq!(http, 403);
    assert_eq!(body, "not you");
    assert_eq!(headers["x-fixture"], "rejected");
    let record = scfsim.last_record("reject").await;
    assert_outcome(&record, 200, "upgrade_rejected", None);
    assert_eq!(record["http_status"], 403);
}

#[tokio::test]
async fn bad_handshakes_get_the_platforms_answers_and_start_nothing() {
    let scfsim = Scfsim::start(vec![Function::fixture("echo", &["echo"])]).await;
    let (head, body) = scfsim
        .raw("GET /nope?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(status_of(&head), 404);
    assert_eq!(body, "There is no api match uri[/nope]");

    let upgrade = "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n";
    let (head, body) = scfsim
        .raw(&format!("{upgrade}Sec-WebSocket-Version: 13\r\n\r\n"))
        .await;
    assert_eq!(status_of(&head), 403);
    assert!(body.contains("Sec-WebSocket-Key"), "{body}");
    let (head, body) = scfsim
        .raw(&format!(
            "{upgrade}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ))
        .await;
    assert_eq!(status_of(&head), 403);
    assert!(body.contains("Sec-WebSocket-Version"), "{body}");
    let (head, _) = scfsim
        .raw("GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(status_of(&head), 426);

    let invocations = scfsim.get("/api/invocations").await;
    assert_eq!(invocations.as_array().unwrap().len(), 0, "{invocations:#}");
}

#[tokio::test]
async fn handshake_passes_path_headers_and_the_platforms_environment() {
    let scfsim = Scfsim::start_with(
        vec![Function::fixture("headers", &["headers"])
            .path("/h")
            .set("env", "{ GREETING = \"hello\" }")
            .set("memory_mb", "256")],
        Options {
            env: vec![("SCFSIM_TEST_SECRET".into(), "leak".into())],
            ..Options::default()
        },
    )
    .await;
    let client = scfsim
        .connect_with(
            "/h/sub/path?a=1&b=two",
            &[
                ("Cookie", "session=abc"),
                ("X-Custom", "yes"),
                ("X-Scf-Request-Id", "spoofed"),
                ("X-Api-RequestId", "spoofed"),
                ("X-Forwarded-For", "203.0.113.9"),
            ],
        )
        .await
        .unwrap();
    let mut client = client;
    let Message::Text(text) = client.next_message().await else {
        panic!("expected the fixture's JSON")
    };
    let seen: Value = serde_json::from_str(&text).unwrap();
    let h = &seen["headers"];
    assert_eq!(seen["uri"], "/h/sub/path?a=1&b=two");
    assert_eq!(h["cookie"], "session=abc");
    assert_eq!(h["x-custom"], "yes");
    assert_eq!(h["x-scf-request-id"], client.request_id.as_str());
    assert_eq!(h["x-api-requestid"], client.request_id.as_str());
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-client-proto"], "ws");
    assert_eq!(h["x-scf-name"], "headers");
    assert_eq!(h["x-scf-memory"], "256");
    assert_eq!(h["x-scf-namespace"], "default");
    assert_eq!(h["x-scf-version"], "$LATEST");
    for name in ["x-scf-timeout", "x-scf-region", "x-scf-appid", "x-scf-uin"] {
        assert!(h[name].is_string(), "{name} missing: {h:#}");
    }
    assert!(h["sec-websocket-extensions"].is_null());

    let env = &seen["env"];
    let code_dir = scfsim.dir.join("functions/headers");
    assert_eq!(env["GREETING"], "hello");
    assert_eq!(env["SCF_FUNCTIONNAME"], "headers");
    assert_eq!(env["SCF_FUNCTIONVERSION"], "$LATEST");
    assert_eq!(env["SCF_NAMESPACE"], "default");
    assert_eq!(env["TENCENTCLOUD_RUNENV"], "SCF");
    assert_eq!(env["USER_CODE_ROOT"], code_dir.display().to_string());
    for name in [
        "SCF_RUNTIME",
        "TENCENTCLOUD_REGION",
        "TENCENTCLOUD_APPID",
        "TENCENTCLOUD_UIN",
        "TENCENTCLOUD_TZ",
        "PATH",
    ] {
        assert!(env[name].is_string(), "{name} missing: {env:#}");
    }
    assert!(
        env["SCFSIM_TEST_SECRET"].is_null(),
        "scfsim's environment leaked"
    );
    assert_eq!(seen["cwd"], code_dir.display().to_string());
}

#[tokio::test]
async fn the_instances_subprotocol_is_the_clients() {
    let scfsim = Scfsim::start(vec![Function::fixture("sub", &["subprotocol"])]).await;
    let mut client = scfsim
        .connect_with("/sub", &[("Sec-WebSocket-Protocol", "chat.v2, chat.v1")])
        .await
        .unwrap();
    assert_eq!(
        client.response.headers()["sec-websocket-protocol"],
        "chat.v2"
    );
    client.send_text("x").await;
    client.expect_text("x").await;
}

#[tokio::test]
async fn pings_are_answered_once_each_way() {
    let scfsim = Scfsim::start(vec![Function::fixture("ping", &["ping"])]).await;
    let mut client = scfsim.connect("/ping").await;
    // The function pinged the client through scfsim and reports each pong it got as a message;
    // a doubled pong would show up as a second "pong:" message before the echo.
    client.expect_text("pong:fixture-ping").await;
    client.send_text("after").await;
    client.expect_text("after").await;
    // The client's own ping: exactly one pong with its payload.
    client
        .ws
        .send(Message::Ping("client-ping".into()))
        .await
        .unwrap();
    client.send_text("marker").await;
    let mut pongs = Vec::new();
    loop {
        match client.next_frame().await.unwrap().unwrap() {
            Message::Pong(p) => pongs.push(p),
            Message::Text(t) if t.as_str() == "marker" => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pongs, vec![bytes_of("client-ping")]);
}

fn bytes_of(s: &'static str) -> tokio_tungstenite::tungstenite::Bytes {
    tokio_tungstenite::tungstenite::Bytes::from_static(s.as_bytes())
}

#[tokio::test]
async fn order_is_kept_both_ways_under_concurrent_sends() {
    const FLOOD: usize = 2000;
    const SENT: usize = 2000;
    // Rate limits off: this is about order, not the 10 messages/s quota.
    let scfsim = Scfsim::start(vec![Function::fixture(
        "flood",
        &["flood", &FLOOD.to_string(), "512"],
    )
    .set("limits", "{ rate_limit_action = \"off\" }")])
    .await;
    let client = scfsim.connect("/flood").await;
    let (mut tx, mut rx) = client.ws.split();
    let sender = tokio::spawn(async move {
        for i in 0..SENT {
            tx.send(Message::text(format!("m{i}"))).await.unwrap();
        }
        tx
    });
    for i in 0..FLOOD {
        match rx.next().await.unwrap().unwrap() {
            Message::Binary(b) => {
                assert_eq!(b.len(), 512);
                assert!(
                    b.iter().all(|&x| x == (i % 256) as u8),
                    "flood message {i} out of order"
                );
            }
            other => panic!("flood message {i}: {other:?}"),
        }
    }
    for i in 0..SENT {
        match rx.next().await.unwrap().unwrap() {
            Message::Text(t) => assert_eq!(t.as_str(), format!("m{i}")),
            other => panic!("echo {i}: {other:?}"),
        }
    }
    let mut tx = sender.await.unwrap();
    tx.send(Message::Close(None)).await.unwrap();
    let request_id = client.request_id;
    let record = scfsim.record(&request_id).await;
    assert_eq!(record["messages_in"], SENT as u64);
    assert_eq!(record["messages_out"], (FLOOD + SENT) as u64);
}

#[tokio::test]
async fn fifty_simultaneous_instances_all_listen_on_port_9000() {
    const N: usize = 50;
    let scfsim = Scfsim::start(vec![Function::fixture("echo", &["echo"])]).await;
    let mut clients = Vec::new();
    for _ in 0..N {
        clients.push(scfsim.connect("/echo"));
    }
    let mut clients = futures_util::future::join_all(clients).await;
    let live = scfsim.get("/api/instances").await;
    assert_eq!(live.as_array().unwrap().len(), N, "{live:#}");
    let pids: BTreeSet<u64> = live
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), N, "one process per connection");
    let functions = scfsim.get("/api/functions").await;
    assert_eq!(functions[0]["live_instances"], N);
    for (i, client) in clients.iter_mut().enumerate() {
        client.send_text(&format!("client {i}")).await;
    }
    for (i, client) in clients.iter_mut().enumerate() {
        client.expect_text(&format!("client {i}")).await;
    }
    for client in &mut clients {
        client.close(1000, "").await;
    }
    for client in &clients {
        assert_outcome(
            &scfsim.record(&client.request_id).await,
            200,
            "client_closed",
            Some(1000),
        );
    }
    let live = scfsim.get("/api/instances").await;
    assert_eq!(live.as_array().unwrap().len(), 0, "{live:#}");
}

#[tokio::test]
async fn invocations_filter_by_function_and_status() {
    let scfsim = Scfsim::start(vec![
        Function::fixture("a", &["echo"]),
        Function::fixture("b", &["close", "4001", "no"]),
    ])
    .await;
    for _ in 0..2 {
        let mut c = scfsim.connect("/a").await;
        c.close(1000, "").await;
        scfsim.record(&c.request_id).await;
    }
    let mut c = scfsim.connect("/b").await;
    c.expect_close().await;
    scfsim.record(&c.request_id).await;
    assert_eq!(
        scfsim
            .get("/api/invocations?function=a")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let failed = scfsim.get("/api/invocations?status_code=439").await;
    assert_eq!(failed.as_array().unwrap().len(), 1);
    assert_eq!(failed[0]["function"], "b");
    assert_eq!(
        scfsim
            .get("/api/invocations?limit=1")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (status, _) = scfsim.get_status("/api/invocations/not-a-uuid").await;
    assert_eq!(status, 400);
    let (status, _) = scfsim
        .get_status(&format!("/api/invocations/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn delete_on_a_live_instance_ends_it_with_1001_both_ways() {
    let scfsim = Scfsim::start(vec![Function::fixture("echo", &["echo"])]).await;
    let mut client = scfsim.connect("/echo").await;
    let live = scfsim.get("/api/instances").await;
    let id = live[0]["id"].as_str().unwrap().to_string();
    assert_eq!(live[0]["request_id"], client.request_id.as_str());
    let (status, _) = scfsim
        .admin_request("DELETE", &format!("/api/instances/{id}"))
        .await;
    assert_eq!(status, 202);
    assert_eq!(client.expect_close().await.0, 1001);
    let record = scfsim.record(&client.request_id).await;
    assert_outcome(&record, 500, "ended_by_admin", Some(1001));
    assert_eq!(record["closed_by"], "gateway");
    let (status, _) = scfsim
        .admin_request("DELETE", &format!("/api/instances/{id}"))
        .await;
    assert_eq!(status, 404);
}
