//! Watching scfsim as users do: the `/api/events` stream as a browser's EventSource reads it,
//! `/metrics` checked line by line against the Prometheus text format and against what
//! `/api/invocations` lists. (The dashboard's tests, in real Chromium, are in dashboard.rs.)
//! Waits are bounded polls; nothing asserts on time.

use std::collections::{BTreeMap, HashMap};

use scfsim_e2e::{EventStream, Function, Scfsim};

// ---------------------------------------------------------------------------------------------
// /api/events

#[tokio::test]
async fn api_events_streams_a_started_then_an_ended_event_per_connection() {
    let scfsim = Scfsim::start(vec![Function::fixture("echo", &["echo"])]).await;
    let mut events = EventStream::open(&format!("{}/api/events", scfsim.admin)).await;
    assert_eq!(events.head.status, 200);
    let header = |name: &str| {
        events
            .head
            .headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    };
    assert_eq!(header("content-type"), Some("text/event-stream"));
    assert_eq!(header("transfer-encoding"), Some("chunked"));

    let mut client = scfsim.connect("/echo").await;
    let (name, started) = events.next().await;
    assert_eq!(name, "started");
    assert_eq!(started["request_id"], client.request_id.as_str());
    assert_eq!(started["function"], "echo");
    assert!(started["status_code"].is_null(), "{started:#}");

    client.send_text("hello").await;
    client.expect_text("hello").await;
    client.close(1000, "").await;
    let (name, ended) = events.next().await;
    assert_eq!(name, "ended");
    assert_eq!(ended["request_id"], client.request_id.as_str());
    assert_eq!(ended["status_code"], 200, "{ended:#}");
    assert_eq!(ended["end_reason"], "client_closed");
    assert_eq!(ended["messages_in"], 1);
    // The event carries the record exactly as the API serves it.
    let record = scfsim
        .get(&format!("/api/invocations/{}", client.request_id))
        .await;
    assert_eq!(ended, record);
}

// ---------------------------------------------------------------------------------------------
// /metrics

/// One sample line: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (0.0.4) strictly: every line is a `# HELP`, a `# TYPE`
/// or a sample; every sample belongs to the family its `# TYPE` declared before it (with
/// `_bucket`, `_sum` and `_count` for histograms); a family is declared once; histogram
/// buckets end with `le="+Inf"` equal to `_count`. Panics with the line on any violation.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, tail) = (parts.next(), parts.next(), parts.next());
            let name = name.unwrap_or_else(|| panic!("bad comment {line:?}"));
            assert!(valid_name(name), "bad metric name in {line:?}");
            match kind {
                Some("HELP") => {}
                Some("TYPE") => {
                    let typ = tail.unwrap_or_else(|| panic!("no type in {line:?}"));
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&typ),
                        "{line:?}"
                    );
                    assert!(
                        types.insert(name.to_owned(), typ.to_owned()).is_none(),
                        "family declared twice: {line:?}"
                    );
                }
                _ => panic!("unexpected comment {line:?}"),
            }
            continue;
        }
        let sample = parse_sample(line);
        let family_ok = types.get(&sample.name).is_some_and(|t| t != "histogram")
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                sample
                    .name
                    .strip_suffix(suffix)
                    .and_then(|family| types.get(family))
                    .is_some_and(|t| t == "histogram")
            });
        assert!(family_ok, "sample outside a declared family: {line:?}");
        samples.push(sample);
    }
    for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
        for count in samples
            .iter()
            .filter(|s| s.name == format!("{family}_count"))
        {
            let inf = samples
                .iter()
                .find(|s| {
                    s.name == format!("{family}_bucket")
                        && s.labels.get("le").map(String::as_str) == Some("+Inf")
                        && s.labels
                            .iter()
                            .filter(|(k, _)| *k != "le")
                            .eq(count.labels.iter())
                })
                .unwrap_or_else(|| panic!("{family}: no +Inf bucket for {:?}", count.labels));
            assert_eq!(inf.value, count.value, "{family}: +Inf bucket != count");
        }
    }
    samples
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_sample(line: &str) -> Sample {
    let bad = || -> ! { panic!("not a sample line: {line:?}") };
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad());
    let name = &line[..name_end];
    if !valid_name(name) {
        bad();
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = inner.find("=\"").unwrap_or_else(|| bad());
            let key = &inner[..eq];
            if !valid_name(key) || key.contains(':') {
                bad();
            }
            let mut value = String::new();
            let mut chars = inner[eq + 2..].char_indices();
            let close = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        _ => bad(),
                    },
                    Some((i, '"')) => break eq + 2 + i,
                    Some((_, c)) => value.push(c),
                    None => bad(),
                }
            };
            assert!(labels.insert(key.to_owned(), value).is_none(), "{line:?}");
            inner = &inner[close + 1..];
            inner = inner.strip_prefix(',').unwrap_or(inner);
        }
    }
    let mut fields = rest.strip_prefix(' ').unwrap_or_else(|| bad()).split(' ');
    let value = match fields.next().unwrap_or_else(|| bad()) {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().unwrap_or_else(|_| bad()),
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().unwrap_or_else(|_| bad());
    }
    if fields.next().is_some() {
        bad();
    }
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

async fn scrape(scfsim: &Scfsim) -> Vec<Sample> {
    let (status, body) = scfsim.get_status("/metrics").await;
    assert_eq!(status, 200, "{body}");
    parse_exposition(&body)
}

/// The value of the sample `name` with exactly these labels (0 if absent, as Prometheus
/// treats a counter that was never incremented).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map_or(0.0, |s| s.value)
}

/// Polls `/metrics` until `check` holds (the live gauges follow the gateway's registry, which
/// drops a connection just after its record is written).
async fn scrape_until(scfsim: &Scfsim, what: &str, check: impl Fn(&[Sample]) -> bool) {
    scfsim
        .eventually(&format!("/metrics to show {what}"), || async {
            let (status, body) = scfsim.get_status("/metrics").await;
            assert_eq!(status, 200, "{body}");
            if check(&parse_exposition(&body)) {
                Ok(())
            } else {
                Err(format!("/metrics:\n{body}"))
            }
        })
        .await
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text_and_count_what_api_invocations_lists() {
    let scfsim = Scfsim::start(vec![
        Function::fixture("echo", &["echo"]),
        Function::script("broken", "exit 3"),
    ])
    .await;

    // A live connection shows in both gauges, only for its function.
    let mut first = scfsim.connect("/echo").await;
    let live = |n: f64| {
        move |s: &[Sample]| {
            value(s, "scfsim_live_connections", &[("function", "echo")]) == n
                && value(s, "scfsim_live_instances", &[("function", "echo")]) == n
                && value(s, "scfsim_live_instances", &[("function", "broken")]) == 0.0
        }
    };
    scrape_until(&scfsim, "one live echo connection", live(1.0)).await;

    first.send_text("one").await;
    first.expect_text("one").await;
    first.send_binary(vec![1, 2, 3]).await;
    first.expect_binary(&[1, 2, 3]).await;
    first.close(1000, "").await;
    scfsim.record(&first.request_id).await;

    let mut second = scfsim.connect("/echo").await;
    second.send_text("two").await;
    second.expect_text("two").await;
    second.close(4000, "done").await;
    assert_eq!(scfsim.record(&second.request_id).await["status_code"], 456);

    // The broken bootstrap exits before listening: a start failure, no 101.
    assert!(scfsim.connect_with("/broken", &[]).await.is_err());
    let broken = scfsim.last_record("broken").await;
    let broken_status = broken["status_code"].as_u64().unwrap().to_string();
    assert!(
        ["405", "445", "446"].contains(&broken_status.as_str()),
        "{broken:#}"
    );
    scrape_until(&scfsim, "no live connection", live(0.0)).await;

    let records = scfsim.get("/api/invocations").await;
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 3);
    let samples = scrape(&scfsim).await;

    // scfsim_invocations_total: one series per (function, status_code, end_reason) listed,
    // each equal to the number of records listed with it.
    let mut listed: HashMap<(String, String, String), f64> = HashMap::new();
    for r in records {
        let key = (
            r["function"].as_str().unwrap().to_owned(),
            r["status_code"].to_string(),
            r["end_reason"].as_str().unwrap().to_owned(),
        );
        *listed.entry(key).or_default() += 1.0;
    }
    let series: Vec<_> = samples
        .iter()
        .filter(|s| s.name == "scfsim_invocations_total")
        .collect();
    assert_eq!(series.len(), listed.len(), "{series:#?}");
    for ((function, status, reason), n) in &listed {
        let labels = [
            ("function", function.as_str()),
            ("status_code", status.as_str()),
            ("end_reason", reason.as_str()),
        ];
        assert_eq!(
            value(&samples, "scfsim_invocations_total", &labels),
            *n,
            "{labels:?}"
        );
    }

    // Traffic counters are the sums of the records' fields.
    let sum = |function: &str, field: &str| -> f64 {
        records
            .iter()
            .filter(|r| r["function"] == function)
            .map(|r| r[field].as_f64().unwrap())
            .sum()
    };
    for function in ["echo", "broken"] {
        for (direction, messages, bytes) in [
            ("in", "messages_in", "bytes_in"),
            ("out", "messages_out", "bytes_out"),
        ] {
            let labels = [("function", function), ("direction", direction)];
            assert_eq!(
                value(&samples, "scfsim_messages_total", &labels),
                sum(function, messages),
                "{labels:?}"
            );
            assert_eq!(
                value(&samples, "scfsim_bytes_total", &labels),
                sum(function, bytes),
                "{labels:?}"
            );
        }
        assert_eq!(
            value(
                &samples,
                "scfsim_invocation_duration_seconds_count",
                &[("function", function)]
            ),
            records.iter().filter(|r| r["function"] == function).count() as f64,
            "one duration per record of {function}"
        );
    }
    assert_eq!(sum("echo", "messages_in"), 3.0);
    assert_eq!(
        value(
            &samples,
            "scfsim_instance_startup_seconds_count",
            &[("function", "echo")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &samples,
            "scfsim_start_failures_total",
            &[("function", "broken"), ("status_code", &broken_status)]
        ),
        1.0
    );
    assert!(
        !samples
            .iter()
            .any(|s| s.name == "scfsim_limit_closes_total"),
        "no limit closed anything"
    );
}
