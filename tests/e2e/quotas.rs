//! The platform's quotas through real connections: message size, request rate and
//! bandwidth, concurrency and new-instance quotas. Counts and order are asserted, never time.

use futures_util::SinkExt;
use scfsim_e2e::{refused, Function, Scfsim, PATIENCE};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const KB: usize = 1000;

fn assert_status(record: &Value, status: u64, end_reason: &str) {
    assert_eq!(record["status_code"], status, "{record:#}");
    assert_eq!(record["end_reason"], end_reason, "{record:#}");
}

#[tokio::test]
async fn an_upstream_message_over_256kb_is_406_with_1009_and_one_under_passes() {
    let scfsim = Scfsim::start(vec![Function::fixture("echo", &["echo"])]).await;
    let mut client = scfsim.connect("/echo").await;
    client.send_binary(vec![7; 250 * KB]).await;
    client.expect_binary(&vec![7; 250 * KB]).await;
    client.send_binary(vec![8; 300 * KB]).await;
    let (code, _) = client.expect_close().await;
    assert_eq!(code, 1009);
    let record = scfsim.record(&client.request_id).await;
    assert_status(&record, 406, "message_too_large");
    assert_eq!(record["close_code"], 1009);
    // The oversized message was never forwarded.
    assert_eq!(record["messages_in"], 1);
}

#[tokio::test]
async fn a_downstream_message_over_256kb_is_407_and_the_client_gets_1001() {
    let big = (300 * KB).to_string();
    let ok = (250 * KB).to_string();
    let scfsim = Scfsim::start(vec![
        Function::fixture("big", &["flood", "1", &big]),
        Function::fixture("ok", &["flood", "1", &ok]),
    ])
    .await;
    let mut client = scfsim.connect("/big").await;
    let (code, _) = client.expect_close().await;
    assert_eq!(code, 1001);
    let record = scfsim.record(&client.request_id).await;
    assert_status(&record, 407, "message_too_large");
    assert_eq!(record["messages_out"], 0);

    let mut client = scfsim.connect("/ok").await;
    match client.next_message().await {
        Message::Binary(b) => assert_eq!(b.len(), 250 * KB),
        other => panic!("{other:?}"),
    }
    client.close(1000, "").await;
    assert_status(
        &scfsim.record(&client.request_id).await,
        200,
        "client_closed",
    );
}

/// Sends 50 messages without waiting, then reads echoes until 50 arrived or the connection
/// closed; returns the echoes and the close code, if any.
async fn send_fifty_at_once(
    scfsim: &Scfsim,
    path: &str,
) -> (scfsim_e2e::Client, Vec<String>, Option<u16>) {
    let mut client = scfsim.connect(path).await;
    for i in 0..50 {
        tokio::time::timeout(PATIENCE, client.ws.feed(Message::text(format!("m{i}"))))
            .await
            .expect("fed within patience")
            .unwrap();
    }
    tokio::time::timeout(PATIENCE, client.ws.flush())
        .await
        .expect("flushed within patience")
        .unwrap();
    let mut echoed = Vec::new();
    let mut close = None;
    loop {
        match client.next_frame().await {
            Some(Ok(Message::Text(t))) => {
                echoed.push(t.to_string());
                if echoed.len() == 50 {
                    break;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                close = frame.map(|f| f.code.into());
                break;
            }
            None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    (client, echoed, close)
}

#[tokio::test]
async fn fifty_messages_at_once_are_throttled_to_the_rate_and_all_delivered_in_order() {
    let scfsim = Scfsim::start(vec![Function::fixture("echo", &["echo"])]).await;
    let (mut client, echoed, _) = send_fifty_at_once(&scfsim, "/echo").await;
    let expected: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    assert_eq!(echoed, expected);
    client.close(1000, "").await;
    let record = scfsim.record(&client.request_id).await;
    assert_status(&record, 200, "client_closed");
    assert_eq!(record["messages_in"], 50);
    // A burst of one second's worth (10) passes untouched; the others wait their turn. At most
    // 40 wait: on a loaded machine the 50 writes may take long enough for a token or two to
    // come back meanwhile, so fewer may (the exact count would be a timing assertion).
    let throttled = record["throttled_messages"].as_u64().unwrap_or(0);
    assert!((20..=40).contains(&throttled), "{record:#}");
}

#[tokio::test]
async fn rate_limit_action_close_ends_with_1008_and_429() {
    let scfsim = Scfsim::start(vec![
        Function::fixture("echo", &["echo"]).set("limits", "{ rate_limit_action = \"close\" }")
    ])
    .await;
    let (client, echoed, close) = send_fifty_at_once(&scfsim, "/echo").await;
    assert_eq!(close, Some(1008));
    // Echoes of the burst still in flight when scfsim closes may be cut off.
    assert!(echoed.len() <= 10, "{echoed:?}");
    let record = scfsim.record(&client.request_id).await;
    assert_status(&record, 429, "rate_limited");
    assert_eq!(record["close_code"], 1008);
    // The burst of one second's worth was forwarded; the eleventh message was not.
    assert_eq!(record["messages_in"], 10);
}

#[tokio::test]
async fn rate_limit_action_off_forwards_everything_at_once() {
    let scfsim = Scfsim::start(vec![
        Function::fixture("echo", &["echo"]).set("limits", "{ rate_limit_action = \"off\" }")
    ])
    .await;
    let (mut client, echoed, _) = send_fifty_at_once(&scfsim, "/echo").await;
    assert_eq!(echoed.len(), 50);
    client.close(1000, "").await;
    assert_eq!(
        scfsim.record(&client.request_id).await["throttled_messages"],
        0
    );
}

#[tokio::test]
async fn the_third_connection_over_max_instances_2_gets_429_and_a_432_record() {
    let scfsim = Scfsim::start(vec![
        Function::fixture("echo", &["echo"]).set("max_instances", "2")
    ])
    .await;
    let mut first = scfsim.connect("/echo").await;
    let mut second = scfsim.connect("/echo").await;
    let (status, _, body) = refused(scfsim.connect_with("/echo", &[]).await.err().unwrap());
    assert_eq!(status, 429);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status_code"], 432);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("max_instances = 2"),
        "{body}"
    );
    let record = scfsim.record(body["request_id"].as_str().unwrap()).await;
    assert_status(&record, 432, "quota_exceeded");
    assert!(record["instance_pid"].is_null(), "no instance was started");
    // The first two keep working.
    for c in [&mut first, &mut second] {
        c.send_text("still here").await;
        c.expect_text("still here").await;
    }
    let functions = scfsim.get("/api/functions").await;
    assert_eq!(functions[0]["max_instances"], 2);
    assert_eq!(functions[0]["live_instances"], 2);
    assert_eq!(functions[0]["limits"]["max_message_bytes"], 262144);
    let live = scfsim.get("/api/instances").await;
    let counts: Vec<u64> = live
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["messages_in"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, vec![1, 1]);
    // A slot frees when a connection ends (after its instance is reaped).
    first.close(1000, "").await;
    scfsim.record(&first.request_id).await;
    let mut third = scfsim.connect("/echo").await;
    third.send_text("in").await;
    third.expect_text("in").await;
}

#[tokio::test]
async fn new_instances_per_minute_over_the_quota_get_429() {
    let dir = tempfile::tempdir().unwrap();
    let scfsim = Scfsim::start_with(
        vec![Function::fixture("echo", &["echo"])],
        scfsim_e2e::Options {
            gateway: vec![("max_new_instances_per_minute".into(), "2".into())],
            dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        },
    )
    .await;
    for _ in 0..2 {
        let mut c = scfsim.connect("/echo").await;
        c.close(1000, "").await;
    }
    let (status, _, body) = refused(scfsim.connect_with("/echo", &[]).await.err().unwrap());
    assert_eq!(status, 429);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status_code"], 429);
    let record = scfsim.record(body["request_id"].as_str().unwrap()).await;
    assert_status(&record, 429, "rate_limited");
    assert!(record["close_code"].is_null());
}
