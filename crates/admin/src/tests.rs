//! The admin API in process: a real store in a temporary directory, requests through the
//! router without a socket.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use scfsim_gateway::LiveInstances;
use scfsim_record::{EndReason, Invocation, Query, RecordStore};
use serde_json::Value;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use uuid::Uuid;

use crate::{router_with_shutdown, AdminState};

/// Bound on a wait that only a bug makes long.
const PATIENCE: Duration = Duration::from_secs(10);

struct Fixture {
    _dir: tempfile::TempDir,
    config: Arc<scfsim_config::Config>,
    store: Arc<RecordStore>,
    app: Router,
    shutdown: CancellationToken,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("code")).unwrap();
    let config = scfsim_config::parse(
        "[[functions]]\nname = \"echo\"\npath = \"/echo\"\ncode_dir = \"code\"\n\
         [[functions]]\nname = \"idle\"\npath = \"/idle\"\ncode_dir = \"code\"\n",
        dir.path(),
        &dir.path().join("scfsim.toml"),
    )
    .unwrap();
    let (store, _) = RecordStore::open(&dir.path().join("data")).unwrap();
    let store = Arc::new(store);
    let shutdown = CancellationToken::new();
    let config = Arc::new(config);
    let app = router_with_shutdown(
        AdminState {
            config: config.clone(),
            store: store.clone(),
            live: Arc::new(LiveInstances::default()),
        },
        shutdown.clone(),
    );
    Fixture {
        _dir: dir,
        config,
        store,
        app,
        shutdown,
    }
}

fn finished(function: &str, reason: EndReason, messages: (u64, u64)) -> Invocation {
    let now = OffsetDateTime::now_utc();
    let mut inv = Invocation::begin(Uuid::new_v4(), function, now);
    (inv.messages_in, inv.messages_out) = messages;
    (inv.bytes_in, inv.bytes_out) = (messages.0 * 10, messages.1 * 10);
    inv.startup_ms = Some(12);
    inv.finish(&reason, now + time::Duration::milliseconds(250));
    inv
}

async fn send(app: &Router, method: &str, uri: &str) -> axum::response::Response {
    app.clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap()
}

async fn body_text(resp: axum::response::Response) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn close(code: u16) -> EndReason {
    EndReason::ClientClosed {
        code: Some(code),
        reason: String::new(),
    }
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_match_the_records() {
    let f = fixture();
    for inv in [
        finished("echo", close(1000), (3, 3)),
        finished("echo", close(1000), (1, 1)),
        finished("echo", close(4000), (0, 2)),
        finished(
            "echo",
            EndReason::IdleTimeout {
                after: Duration::from_secs(1),
            },
            (1, 0),
        ),
        finished(
            "idle",
            EndReason::BootstrapExited {
                detail: "exit 3".into(),
            },
            (0, 0),
        ),
    ] {
        f.store.finish(inv).unwrap();
    }

    let resp = send(&f.app, "GET", "/metrics").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = body_text(resp).await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("unparsable metrics: {e}\n{text}"));
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name}: not a single value: {other:?}"),
            })
    };

    // Every (function, status_code, end_reason) the records list, counted exactly.
    let records = f.store.query(&Query::default());
    let mut expected: HashMap<(String, String, String), f64> = HashMap::new();
    for r in &records {
        let key = (
            r.function.clone(),
            r.status_code.unwrap().to_string(),
            r.end_reason.clone().unwrap(),
        );
        *expected.entry(key).or_default() += 1.0;
    }
    let counted: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "scfsim_invocations_total")
        .collect();
    assert_eq!(counted.len(), expected.len(), "{text}");
    for ((function, status, reason), n) in &expected {
        let labels = [
            ("function", function.as_str()),
            ("status_code", status.as_str()),
            ("end_reason", reason.as_str()),
        ];
        assert_eq!(
            value("scfsim_invocations_total", &labels),
            Some(*n),
            "{labels:?}\n{text}"
        );
    }

    let echo = |dir| [("function", "echo"), ("direction", dir)];
    let sum = |get: fn(&Invocation) -> u64| -> f64 {
        records
            .iter()
            .filter(|r| r.function == "echo")
            .map(get)
            .sum::<u64>() as f64
    };
    assert_eq!(
        value("scfsim_messages_total", &echo("in")),
        Some(sum(|r| r.messages_in))
    );
    assert_eq!(
        value("scfsim_messages_total", &echo("out")),
        Some(sum(|r| r.messages_out))
    );
    assert_eq!(
        value("scfsim_bytes_total", &echo("out")),
        Some(sum(|r| r.bytes_out))
    );
    assert_eq!(
        value(
            "scfsim_limit_closes_total",
            &[("function", "echo"), ("reason", "idle_timeout")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            "scfsim_start_failures_total",
            &[("function", "idle"), ("status_code", "405")]
        ),
        Some(1.0)
    );
    // Gauges list every configured function, at 0 with nothing live.
    for function in ["echo", "idle"] {
        for gauge in ["scfsim_live_connections", "scfsim_live_instances"] {
            assert_eq!(
                value(gauge, &[("function", function)]),
                Some(0.0),
                "{gauge}"
            );
        }
    }
    // Histograms: one observation per finished record.
    let histogram = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "scfsim_invocation_duration_seconds"
                && s.labels.get("function") == Some("echo")
        })
        .expect("duration histogram");
    match &histogram.value {
        prometheus_parse::Value::Histogram(buckets) => {
            let inf = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
            assert_eq!(inf.count, 4.0);
        }
        other => panic!("not a histogram: {other:?}"),
    }
    assert!(text.contains("# TYPE scfsim_instance_startup_seconds histogram"));
}

/// Server-sent events of a response body, parsed by the `eventsource-stream` library (as the
/// end-to-end tests' client does).
type Events = std::pin::Pin<
    Box<
        dyn futures_util::Stream<
                Item = Result<
                    eventsource_stream::Event,
                    eventsource_stream::EventStreamError<axum::Error>,
                >,
            > + Send,
    >,
>;

/// The next event of `events`: (name, JSON data). Keep-alive comments are not events.
async fn next_sse(events: &mut Events) -> (String, Value) {
    let event = tokio::time::timeout(PATIENCE, events.next())
        .await
        .expect("an event within patience")
        .expect("stream still open")
        .expect("a well-formed event stream");
    (event.event, serde_json::from_str(&event.data).unwrap())
}

#[tokio::test]
async fn events_stream_started_then_ended_and_end_at_shutdown() {
    let f = fixture();
    let resp = send(&f.app, "GET", "/api/events").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut events: Events = Box::pin(resp.into_body().into_data_stream().eventsource());

    let now = OffsetDateTime::now_utc();
    let mut inv = Invocation::begin(Uuid::new_v4(), "echo", now);
    f.store.begin(&inv).unwrap();
    inv.finish(&close(1000), now);
    f.store.finish(inv.clone()).unwrap();

    let (name, data) = next_sse(&mut events).await;
    assert_eq!(name, "started");
    assert_eq!(data["request_id"], inv.request_id.to_string());
    assert!(data["status_code"].is_null());
    let (name, data) = next_sse(&mut events).await;
    assert_eq!(name, "ended");
    assert_eq!(data, serde_json::to_value(&inv).unwrap());

    // Shutdown ends the stream, so a graceful shutdown does not wait for watchers.
    f.shutdown.cancel();
    let end = tokio::time::timeout(PATIENCE, events.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "the stream ended at shutdown, cleanly: {end:?}"
    );
}

#[tokio::test]
async fn the_dashboard_is_one_self_contained_page() {
    let f = fixture();
    let resp = send(&f.app, "GET", "/").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = body_text(resp).await;
    assert!(html.contains("new EventSource(withToken(\"/api/events\"))"));
    // No external resources: the network may be closed where scfsim runs.
    for external in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "@import",
        "url(http",
        "url(//",
    ] {
        assert!(!html.contains(external), "{external}");
    }
}

#[tokio::test]
async fn functions_lists_each_function_with_its_limits_and_live_count() {
    let f = fixture();
    let resp = send(&f.app, "GET", "/api/functions").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let list: Value = serde_json::from_str(&body_text(resp).await).unwrap();
    let list = list.as_array().expect("a JSON array");
    let names: Vec<_> = list.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["echo", "idle"]);
    for (shown, config) in list.iter().zip(&f.config.functions) {
        // What the dashboard's functions panel reads, as the config has it.
        assert_eq!(shown["path"], config.path.as_str());
        assert_eq!(
            shown["idle_timeout"],
            scfsim_config::format_duration(config.idle_timeout)
        );
        assert_eq!(
            shown["execution_timeout"],
            scfsim_config::format_duration(config.execution_timeout)
        );
        assert_eq!(
            shown["init_timeout"],
            scfsim_config::format_duration(config.init_timeout)
        );
        assert_eq!(shown["max_instances"], config.max_instances);
        assert_eq!(shown["memory_mb"], config.memory_mb);
        assert_eq!(
            shown["limits"],
            serde_json::to_value(config.limits).unwrap()
        );
        for key in [
            "max_message_bytes",
            "max_bytes_per_second",
            "max_messages_per_second",
            "rate_limit_action",
        ] {
            assert!(!shown["limits"][key].is_null(), "{key} missing: {shown:#}");
        }
        assert_eq!(
            shown["live_instances"], 0,
            "nothing is connected: {shown:#}"
        );
    }
}

#[tokio::test]
async fn errors_are_json_including_a_wrong_method() {
    let f = fixture();
    for (method, uri, status) in [
        ("POST", "/metrics", StatusCode::METHOD_NOT_ALLOWED),
        ("DELETE", "/api/events", StatusCode::METHOD_NOT_ALLOWED),
        ("GET", "/nope", StatusCode::NOT_FOUND),
        ("GET", "/api/invocations/xyz", StatusCode::BAD_REQUEST),
    ] {
        let resp = send(&f.app, method, uri).await;
        assert_eq!(resp.status(), status, "{method} {uri}");
        let body: Value = serde_json::from_str(&body_text(resp).await).unwrap();
        assert!(body["error"].is_string(), "{method} {uri}: {body}");
    }
}

async fn send_json(app: &Router, method: &str, uri: &str, body: &str) -> axum::response::Response {
    app.clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn steering_an_unknown_instance_is_404_and_a_bad_request_400() {
    let f = fixture();
    let id = Uuid::new_v4();
    let send_uri = format!("/api/instances/{id}/send");
    for (method, uri, body, status) in [
        (
            "POST",
            send_uri.as_str(),
            r#"{"to":"client","text":"hi"}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            send_uri.as_str(),
            r#"{"to":"function","binary_base64":"AAEC"}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            send_uri.as_str(),
            r#"{"to":"nobody","text":"hi"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            send_uri.as_str(),
            r#"{"to":"client"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            send_uri.as_str(),
            r#"{"to":"client","text":"a","binary_base64":"AA=="}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            send_uri.as_str(),
            r#"{"to":"client","binary_base64":"not base64!"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            send_uri.as_str(),
            "not json",
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/instances/xyz/send",
            r#"{"to":"client","text":"hi"}"#,
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let resp = send_json(&f.app, method, uri, body).await;
        assert_eq!(resp.status(), status, "{method} {uri} {body}");
        let answer: Value = serde_json::from_str(&body_text(resp).await).unwrap();
        assert!(answer["error"].is_string(), "{answer}");
    }
    for (query, status) in [
        ("", StatusCode::NOT_FOUND),
        ("?code=4000&reason=bye", StatusCode::NOT_FOUND),
        ("?code=1006", StatusCode::BAD_REQUEST),
        ("?code=abc", StatusCode::BAD_REQUEST),
        ("?reason=bye", StatusCode::BAD_REQUEST),
    ] {
        let resp = send(&f.app, "DELETE", &format!("/api/instances/{id}{query}")).await;
        assert_eq!(resp.status(), status, "DELETE {query}");
    }
}

#[tokio::test]
async fn a_stored_timeline_is_served_as_json_and_as_events_and_unknown_ids_are_404() {
    use scfsim_record::{Direction, EventKind, FrameEvent, Opcode, Timeline};
    let f = fixture();
    let inv = finished("echo", close(1000), (1, 1));
    let mut event = FrameEvent::new(EventKind::Message, inv.started_at, 1.0, "x".into());
    event.direction = Some(Direction::ToFunction);
    event.opcode = Some(Opcode::Binary);
    event.size = 2;
    event.set_payload(Opcode::Binary, &[7, 8]);
    let timeline = Timeline {
        request_id: inv.request_id,
        function: "echo".into(),
        live: false,
        dropped: 0,
        events: vec![event],
    };
    f.store.finish(inv.clone()).unwrap();
    f.store.save_frames(timeline).unwrap();

    let path = format!("/api/invocations/{}/frames", inv.request_id);
    let resp = send(&f.app, "GET", &path).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let json: Value = serde_json::from_str(&body_text(resp).await).unwrap();
    assert_eq!(json["live"], false);
    assert_eq!(json["events"][0]["binary_base64"], "Bwg=");
    assert_eq!(json["events"][0]["direction"], "to_function");

    let resp = send(&f.app, "GET", &format!("{path}?stream=true")).await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut events = resp.into_body().into_data_stream().eventsource();
    let frame = tokio::time::timeout(PATIENCE, events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(frame.event, "frame");
    let end = tokio::time::timeout(PATIENCE, events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(end.event, "end");
    assert!(tokio::time::timeout(PATIENCE, events.next())
        .await
        .unwrap()
        .is_none());

    // A query it does not understand says what it takes.
    let resp = send(&f.app, "GET", &format!("{path}?stream=yes")).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let answer: Value = serde_json::from_str(&body_text(resp).await).unwrap();
    let message = answer["error"].as_str().unwrap();
    assert!(message.contains("stream=true"), "{message}");

    // A record without a timeline, and no record at all.
    let bare = finished("echo", close(1000), (0, 0));
    f.store.finish(bare.clone()).unwrap();
    let resp = send(
        &f.app,
        "GET",
        &format!("/api/invocations/{}/frames", bare.request_id),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(body_text(resp).await.contains("keep_invocations"));
    let resp = send(
        &f.app,
        "GET",
        &format!("/api/invocations/{}/frames", Uuid::new_v4()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(body_text(resp).await.contains("no invocation"));
}
