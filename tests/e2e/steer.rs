//! Steering a live connection by hand (`POST /api/instances/{id}/send`, `DELETE
//! /api/instances/{id}?code=N&reason=TEXT`), through the `scfsim send` / `scfsim close`
//! commands that scripts use, and the API's refusals.

use std::process::Stdio;

use scfsim_e2e::{Function, Options, Scfsim, PATIENCE};

/// Runs `scfsim ARGS --admin URL` (bounded) and returns its stdout; panics unless it exits 0.
async fn scfsim_cli(scfsim: &Scfsim, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new(scfsim_e2e::scfsim_bin());
    cmd.args(args)
        .args(["--admin", &scfsim.admin])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(PATIENCE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("scfsim {args:?}: not done within {PATIENCE:?}"))
        .expect("run scfsim");
    let text = scfsim_e2e::output_text(&out);
    assert!(out.status.success(), "scfsim {args:?}: {text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn live_id(scfsim: &Scfsim) -> String {
    let live = scfsim.get("/api/instances").await;
    live[0]["id"]
        .as_str()
        .expect("one live instance")
        .to_string()
}

#[tokio::test]
async fn messages_are_injected_both_ways_and_a_chosen_close_code_reaches_the_client() {
    let scfsim = Scfsim::start(vec![Function::fixture("echo", &["echo"])]).await;
    let mut client = scfsim.connect("/echo").await;
    let id = live_id(&scfsim).await;

    // To the client: only the client gets it.
    scfsim_cli(
        &scfsim,
        &["send", &id, "--to", "client", "--text", "from admin"],
    )
    .await;
    client.expect_text("from admin").await;
    scfsim_cli(
        &scfsim,
        &["send", &id, "--to", "client", "--binary-base64", "AAEC"],
    )
    .await;
    client.expect_binary(&[0, 1, 2]).await;
    // To the function: the echo fixture sends it back, so the client sees that it got there.
    scfsim_cli(
        &scfsim,
        &["send", &id, "--to", "function", "--text", "to fn"],
    )
    .await;
    client.expect_text("to fn").await;
    scfsim_cli(
        &scfsim,
        &["send", &id, "--to", "function", "--binary-base64", "AwQF"],
    )
    .await;
    client.expect_binary(&[3, 4, 5]).await;

    let live = scfsim.get("/api/instances").await;
    assert_eq!(live[0]["injected_messages"], 4, "{live:#}");
    // The two to the function and their two echoes, plus the two to the client.
    assert_eq!(live[0]["messages_in"], 2, "{live:#}");
    assert_eq!(live[0]["messages_out"], 4, "{live:#}");

    let answer = scfsim_cli(
        &scfsim,
        &["close", &id, "--code", "4321", "--reason", "closed by hand"],
    )
    .await;
    assert!(answer.contains("4321"), "{answer}");
    assert_eq!(
        client.expect_close().await,
        (4321, "closed by hand".to_string())
    );
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["end_reason"], "ended_by_admin", "{record:#}");
    assert_eq!(record["closed_by"], "gateway", "{record:#}");
    assert_eq!(record["close_code"], 4321, "{record:#}");
    assert_eq!(record["close_reason"], "closed by hand", "{record:#}");
    assert_eq!(record["messages_in"], 2, "{record:#}");
    let logs = scfsim.log_lines(&client.request_id).await;
    assert!(
        logs.iter()
            .any(|l| l.contains("close frame received: code=1001")),
        "the function is told with 1001: {logs:?}"
    );
}

async fn post(scfsim: &Scfsim, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let url = format!("{}{path}", scfsim.admin);
    let call = scfsim_client::call(http::Method::POST, &url, token, Some(body.to_string()));
    match tokio::time::timeout(PATIENCE, call)
        .await
        .expect("answered")
    {
        Ok(body) => (200, String::from_utf8_lossy(&body).into_owned()),
        Err(scfsim_client::ClientError::Status { status, body, .. }) => (status, body),
        Err(err) => panic!("POST {path}: {err}"),
    }
}

#[tokio::test]
async fn steering_refuses_unknown_ids_bad_bodies_and_requests_without_the_token() {
    let scfsim = Scfsim::start_with(
        vec![Function::fixture("echo", &["echo"])],
        Options {
            gateway: vec![("admin_token".into(), "\"s3cret\"".into())],
            ..Options::default()
        },
    )
    .await;
    let mut client = scfsim.connect("/echo").await;
    let unknown = uuid::Uuid::new_v4();
    let text = r#"{"to": "client", "text": "hi"}"#;
    let (status, body) = post(
        &scfsim,
        &format!("/api/instances/{unknown}/send"),
        Some("s3cret"),
        text,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = scfsim
        .admin_request(
            "DELETE",
            &format!("/api/instances/{unknown}?token=s3cret&code=4000"),
        )
        .await;
    assert_eq!(status, 404);

    let (status, listed) = scfsim.get_status("/api/instances?token=s3cret").await;
    assert_eq!(status, 200);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let id = listed[0]["id"].as_str().unwrap().to_string();
    let send = format!("/api/instances/{id}/send");
    for bad in [
        "",
        "{}",
        r#"{"to": "server", "text": "hi"}"#,
        r#"{"to": "client"}"#,
        r#"{"to": "client", "text": "a", "binary_base64": "AA=="}"#,
        r#"{"to": "client", "binary_base64": "%%%"}"#,
    ] {
        let (status, body) = post(&scfsim, &send, Some("s3cret"), bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = scfsim
        .admin_request(
            "DELETE",
            &format!("/api/instances/{id}?token=s3cret&code=1006"),
        )
        .await;
    assert_eq!(status, 400, "1006 may not be sent");

    // The token: without it, 401 and nothing happens; with it, the message goes through.
    let (status, _) = post(&scfsim, &send, None, text).await;
    assert_eq!(status, 401);
    let (status, _) = post(&scfsim, &send, Some("wrong"), text).await;
    assert_eq!(status, 401);
    let (status, _) = scfsim
        .admin_request("DELETE", &format!("/api/instances/{id}?code=4000"))
        .await;
    assert_eq!(status, 401);
    let (status, body) = post(&scfsim, &send, Some("s3cret"), text).await;
    assert_eq!(status, 200, "{body}");
    client.expect_text("hi").await;
    client.close(1000, "done").await;
}
