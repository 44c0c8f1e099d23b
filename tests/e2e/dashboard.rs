//! The dashboard at `/` in a real headless Chromium driven over the DevTools protocol, against
//! the real server and real WebSocket clients: the functions panel with limits and live
//! counts, the chart of startups and outcomes, the tables, and an invocation's own page (record,
//! log, frame timeline, steering buttons), reached by a click and by a deep link, and
//! screenshotted. Waits are bounded polls; nothing asserts on time.
//!
//! `SCFSIM_DASHBOARD_SCREENSHOTS=DIR` saves the screenshots into DIR; the README's
//! `docs/dashboard-timeline.png` is made with `SCFSIM_DASHBOARD_SCREENSHOTS=$PWD/docs`.

use scfsim_e2e::browser::{find_chromium, png_size, save_if_asked, Browser};
use scfsim_e2e::{json, Function, Options, Scfsim};
use serde_json::Value;

/// Clicks the element `selector` selects (failing if there is none).
async fn click(browser: &mut Browser, selector: &str) {
    let clicked = browser
        .eval(&format!(
            r#"(() => {{
                const e = document.querySelector({selector:?});
                if (!e) return false;
                e.click();
                return true;
            }})()"#
        ))
        .await;
    assert_eq!(clicked, true, "nothing to click at {selector}");
}

/// Sets the value of the form field `selector` selects.
async fn fill(browser: &mut Browser, selector: &str, value: &str) {
    let filled = browser
        .eval(&format!(
            r#"(() => {{
                const e = document.querySelector({selector:?});
                if (!e) return false;
                e.value = {value:?};
                return e.value === {value:?};
            }})()"#
        ))
        .await;
    assert_eq!(filled, true, "cannot fill {selector} with {value:?}");
}

/// The invocation page's record as the page shows it: field name -> cell text.
const SHOWN_RECORD: &str = r#"(() => {
    const page = document.getElementById("invocation-page");
    if (!page || page.hidden) return null;
    const out = {};
    for (const tr of document.querySelectorAll('#inv-fields tr[data-field]')) {
        out[tr.dataset.field] = tr.children[1].innerText;
    }
    return out;
})()"#;

/// The timeline as the page shows it: one object per row, top to bottom.
const SHOWN_TIMELINE: &str = r#"[...document.querySelectorAll('#timeline li.ev')].map((li) => ({
    seq: Number(li.dataset.seq),
    kind: li.dataset.kind,
    direction: li.dataset.direction,
    opcode: li.dataset.opcode,
    injected: li.classList.contains("injected"),
    arrow: li.querySelector(".arrow").textContent,
    text: li.innerText,
}))"#;

/// The message rows of a shown timeline: (direction, opcode, row text).
fn messages(timeline: &Value) -> Vec<(String, String, String)> {
    timeline
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|r| r["kind"] == "message")
                .map(|r| {
                    let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                    (s("direction"), s("opcode"), s("text"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_overview_shows_functions_with_limits_and_live_counts_a_chart_and_the_tables() {
    let chromium = find_chromium();
    let scfsim = Scfsim::start_with(
        vec![Function::fixture("echo", &["echo"])
            .set("idle_timeout", "\"45s\"")
            .set("execution_timeout", "\"120s\"")
            .set("max_instances", "3")
            .set("memory_mb", "256")
            .set(
                "limits",
                "{ max_message_bytes = 65536, max_messages_per_second = 20 }",
            )],
        Options {
            extra_toml: "[timeline]\nenabled = false\n".into(),
            ..Options::default()
        },
    )
    .await;
    // One finished invocation, for the chart; one open connection, for the live count.
    let mut done = scfsim.connect("/echo").await;
    done.send_text("hello").await;
    done.expect_text("hello").await;
    done.close(1000, "").await;
    let finished = scfsim.record(&done.request_id).await;
    let mut client = scfsim.connect("/echo").await;
    client.send_text("hello").await;
    client.expect_text("hello").await;
    let id = client.request_id.clone();

    let mut browser = Browser::launch(&chromium).await;
    browser.open(&format!("{}/", scfsim.admin)).await;

    // The functions panel: the limits as /api/functions gives them, and 1 live connection.
    let function_row = r#"(() => {
        const row = document.querySelector('#functions tr.function-row[data-function="echo"]');
        if (!row) return null;
        const cell = (c) => row.querySelector("td." + c).innerText;
        return {
            live: row.querySelector("td.live-count").dataset.live,
            liveText: cell("live-count"),
            idle: cell("idle-timeout"),
            execution: cell("execution-timeout"),
            memory: cell("memory"),
            maxMessage: cell("max-message"),
            rate: cell("rate-limit"),
        };
    })()"#;
    let row = browser
        .wait_for("the function with 1 live connection", function_row, |v| {
            v["live"] == "1"
        })
        .await;
    let api = scfsim.get("/api/functions").await;
    let echo = &api[0];
    assert_eq!(echo["live_instances"], 1, "{api:#}");
    assert_eq!(row["liveText"], "1 / 3", "{row:#}");
    assert_eq!(row["idle"], echo["idle_timeout"], "{row:#} vs {echo:#}");
    assert_eq!(row["execution"], echo["execution_timeout"], "{row:#}");
    assert_eq!(row["memory"], "256 MB", "{row:#}");
    assert_eq!(row["maxMessage"], "64.0 KiB", "{row:#}");
    let rate = row["rate"].as_str().unwrap();
    assert!(
        rate.starts_with("20 msg/s") && rate.contains("throttle"),
        "{rate}"
    );

    // The live table lists the connection, with its function and pid.
    let live_row = format!(
        r#"(() => {{
            const row = document.querySelector('#live tr.live-row[data-request-id="{id}"]');
            return row ? row.innerText : null;
        }})()"#
    );
    let text = browser
        .wait_for("the live connection", &live_row, |v| v.is_string())
        .await;
    let text = text.as_str().unwrap();
    let pid = scfsim.get("/api/instances").await[0]["pid"].to_string();
    assert!(
        text.contains(&id) && text.contains("echo") && text.contains(&pid),
        "{text}"
    );

    // The chart: a point at the finished invocation's startup time, a tick per invocation.
    let chart = format!(
        r#"(() => {{
            const point = document.querySelector('#chart circle.point[data-request-id="{done}"]');
            return {{
                point: point && {{ startup: point.dataset.startupMs, status: point.dataset.status, cls: point.getAttribute("class") }},
                ticks: [...document.querySelectorAll('#chart rect.tick')].map((t) => t.dataset.requestId),
                legend: document.getElementById("legend").innerText,
            }};
        }})()"#,
        done = done.request_id
    );
    let drawn = browser
        .wait_for("the chart with both invocations", &chart, |v| {
            !v["point"].is_null() && v["ticks"].as_array().is_some_and(|t| t.len() == 2)
        })
        .await;
    assert_eq!(
        drawn["point"]["startup"],
        finished["startup_ms"].to_string(),
        "{drawn:#}"
    );
    assert_eq!(drawn["point"]["status"], "200", "{drawn:#}");
    assert!(
        drawn["point"]["cls"].as_str().unwrap().contains("s2xx"),
        "{drawn:#}"
    );
    let ticks = drawn["ticks"].as_array().unwrap();
    assert!(ticks.contains(&json!(done.request_id)) && ticks.contains(&json!(id)));
    assert!(
        drawn["legend"].as_str().unwrap().contains("200 × 1"),
        "{drawn:#}"
    );

    // The event stream is open, so what follows reaches the page without a reload.
    browser
        .wait_for(
            "the event stream connected",
            "document.getElementById('stream-text').textContent",
            |v| v == "live",
        )
        .await;
    browser.screenshot_if_asked("dashboard-overview").await;

    // The live row's send button opens the invocation's page at its steering form.
    click(
        &mut browser,
        &format!(r#"#live tr[data-request-id="{id}"] button.steer-send"#),
    )
    .await;
    browser
        .wait_for(
            "the steering form, focused",
            "[location.hash, document.activeElement && document.activeElement.id]",
            |v| *v == json!([format!("#/invocations/{id}"), "steer-text"]),
        )
        .await;
    browser.eval("location.hash = '#/'").await;

    client.close(1000, "").await;
    assert_eq!(scfsim.record(&id).await["status_code"], 200);
    let finished_row = format!(
        r#"(() => {{
            const row = document.querySelector('#invocations tr.invocation-row[data-request-id="{id}"]');
            if (!row) return null;
            return {{
                status: row.dataset.status,
                statusClass: row.querySelector('td.status').className,
                text: row.innerText,
                stillLive: !!document.querySelector('#live tr[data-request-id="{id}"]'),
                legend: document.getElementById("legend").innerText,
            }};
        }})()"#
    );
    let row = browser
        .wait_for("the finished invocation", &finished_row, |v| {
            v["status"] == "200" && v["stillLive"] == false
        })
        .await;
    assert!(
        row["statusClass"].as_str().unwrap().contains("s2xx"),
        "{row}"
    );
    let text = row["text"].as_str().unwrap();
    assert!(
        text.contains("200") && text.contains("client_closed"),
        "{text}"
    );
    assert!(row["legend"].as_str().unwrap().contains("200 × 2"), "{row}");
    browser
        .wait_for("the live count back to 0", function_row, |v| {
            v["live"] == "0"
        })
        .await;

    // A row of the recent invocations opens its page: the record, the log, and (the timeline
    // being off in this config) the API's word for why there is no timeline.
    click(
        &mut browser,
        &format!(r#"#invocations tr[data-request-id="{id}"]"#),
    )
    .await;
    let shown = browser
        .wait_for("the finished record", SHOWN_RECORD, |v| {
            v["request_id"] == id.as_str()
        })
        .await;
    let status = shown["status_code"].as_str().unwrap();
    assert!(
        status.starts_with("200") && status.contains("success"),
        "{shown:#}"
    );
    assert_eq!(shown["end_reason"], "client_closed", "{shown:#}");
    assert_eq!(shown["messages_in"], "1", "{shown:#}");
    browser
        .wait_for(
            "the instance's log",
            "document.getElementById('inv-log').innerText",
            |v| v.as_str().is_some_and(|t| t.contains("fixture: accepted")),
        )
        .await;
    let timeline = browser
        .wait_for(
            "the timeline's absence explained",
            "document.getElementById('timeline-status').innerText",
            |v| {
                v.as_str()
                    .is_some_and(|t| t.starts_with("timeline not available"))
            },
        )
        .await;
    assert!(
        timeline.as_str().unwrap().contains("timeline.enabled"),
        "{timeline}"
    );
}

/// The finished record, read with the admin token.
async fn record_with_token(scfsim: &Scfsim, id: &str, token: &str) -> Value {
    scfsim
        .eventually(&format!("invocation {id} to finish"), || async {
            let (status, body) = scfsim
                .get_status(&format!("/api/invocations/{id}?token={token}"))
                .await;
            let record: Value = serde_json::from_str(&body).unwrap_or_default();
            if status == 200 && !record["status_code"].is_null() {
                Ok(record)
            } else {
                Err(format!("answer {status} {body}"))
            }
        })
        .await
}

#[tokio::test]
async fn an_invocation_page_shows_record_log_and_timeline_and_its_buttons_steer_the_connection() {
    const TOKEN: &str = "s3cret";
    let chromium = find_chromium();
    let scfsim = Scfsim::start_with(
        // Idle for as long as a slow machine may take between two steps.
        vec![Function::fixture("echo", &["echo"]).set("idle_timeout", "\"600s\"")],
        Options {
            gateway: vec![("admin_token".into(), format!("\"{TOKEN}\""))],
            ..Options::default()
        },
    )
    .await;
    let mut client = scfsim.connect("/echo").await;
    client.send_text("hello").await;
    client.expect_text("hello").await;
    client.send_binary(vec![0, 1, 2, 0xfe]).await;
    client.expect_binary(&[0, 1, 2, 0xfe]).await;
    let id = client.request_id.clone();

    let mut browser = Browser::launch(&chromium).await;
    // The token in the query, as a person opens the page when admin_token is set.
    browser
        .open(&format!("{}/?token={TOKEN}", scfsim.admin))
        .await;
    browser.set_viewport(1280, 1000).await;

    // A click on the live row opens the invocation's page.
    browser
        .wait_for(
            "the live connection",
            &format!(r#"!!document.querySelector('#live tr[data-request-id="{id}"]')"#),
            |v| v == true,
        )
        .await;
    click(
        &mut browser,
        &format!(r#"#live tr[data-request-id="{id}"]"#),
    )
    .await;
    let hash = browser.eval("location.hash").await;
    assert_eq!(hash, format!("#/invocations/{id}"));
    let shown = browser
        .wait_for("the running record", SHOWN_RECORD, |v| {
            v["request_id"] == id.as_str() && v["status_code"] == "running"
        })
        .await;
    assert_eq!(shown["function"], "echo", "{shown:#}");
    let steer_visible = browser
        .wait_for(
            "the steering form",
            "!document.getElementById('steer-panel').hidden",
            |v| v == true,
        )
        .await;
    assert_eq!(steer_visible, true);

    // The timeline so far: the two messages each way, in order, with their directions.
    let timeline = browser
        .wait_for("the first four messages", SHOWN_TIMELINE, |v| {
            messages(v).len() >= 4
        })
        .await;
    let msgs = messages(&timeline);
    let dirs: Vec<(&str, &str)> = msgs
        .iter()
        .map(|(d, o, _)| (d.as_str(), o.as_str()))
        .collect();
    assert_eq!(
        dirs,
        [
            ("to_function", "text"),
            ("to_client", "text"),
            ("to_function", "binary"),
            ("to_client", "binary"),
        ],
        "{timeline:#}"
    );
    assert!(msgs[0].2.contains("hello") && msgs[1].2.contains("hello"));
    assert!(msgs[2].2.contains("00 01 02 fe"), "{:?}", msgs[2]);
    let rows = timeline.as_array().unwrap();
    let seqs: Vec<u64> = rows.iter().filter_map(|r| r["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    for row in rows.iter().filter(|r| r["kind"] == "message") {
        let arrow = row["arrow"].as_str().unwrap();
        match row["direction"].as_str().unwrap() {
            "to_function" => assert!(arrow.ends_with('▶'), "{row:#}"),
            _ => assert!(arrow.starts_with('◀'), "{row:#}"),
        }
    }

    // A message while the page is open arrives on the live stream (the page reads /frames
    // once; only the stream brings what follows), without a reload.
    browser
        .wait_for(
            "the timeline following the connection",
            "document.getElementById('timeline-status').innerText",
            |v| v.as_str().is_some_and(|t| t.ends_with("· live")),
        )
        .await;
    client.send_text("while you watch").await;
    client.expect_text("while you watch").await;
    browser
        .wait_for("the live messages", SHOWN_TIMELINE, |v| {
            messages(v)
                .iter()
                .filter(|(_, _, t)| t.contains("while you watch"))
                .count()
                == 2
        })
        .await;

    // Send: the client gets it; the timeline shows it injected.
    fill(&mut browser, "#steer-to", "client").await;
    fill(&mut browser, "#steer-text", "from the dashboard").await;
    click(&mut browser, "#steer-send").await;
    client.expect_text("from the dashboard").await;
    let timeline = browser
        .wait_for("the injected message", SHOWN_TIMELINE, |v| {
            v.as_array().is_some_and(|rows| {
                rows.iter().any(|r| {
                    r["injected"] == true
                        && r["text"]
                            .as_str()
                            .is_some_and(|t| t.contains("from the dashboard"))
                })
            })
        })
        .await;
    let injected = timeline
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["injected"] == true)
        .unwrap();
    assert_eq!(injected["direction"], "to_client", "{injected:#}");
    // While it runs, the record's counters are the live ones.
    browser
        .wait_for("the live counters", SHOWN_RECORD, |v| {
            v["messages_in"] == "3 (live)" && v["messages_out"] == "4 (live)"
        })
        .await;
    browser
        .screenshot_if_asked("dashboard-live-invocation")
        .await;

    // Close with a code: the client gets that code; the record says the gateway closed it.
    fill(&mut browser, "#steer-code", "4100").await;
    fill(&mut browser, "#steer-reason", "closed in the test").await;
    click(&mut browser, "#steer-close").await;
    assert_eq!(
        client.expect_close().await,
        (4100, "closed in the test".to_string())
    );
    client.finish().await;
    let record = record_with_token(&scfsim, &id, TOKEN).await;
    assert_eq!(record["closed_by"], "gateway", "{record:#}");
    assert_eq!(record["close_code"], 4100, "{record:#}");
    assert_eq!(record["end_reason"], "ended_by_admin", "{record:#}");

    // The page follows: the final record with its status code's meaning, the log, the close.
    let shown = browser
        .wait_for("the finished record", SHOWN_RECORD, |v| {
            v["closed_by"] == "gateway"
        })
        .await;
    let status = shown["status_code"].as_str().unwrap();
    assert!(
        status.starts_with(&record["status_code"].to_string()) && status.contains("admin close"),
        "{status}"
    );
    assert_eq!(shown["close_code"], "4100", "{shown:#}");
    assert_eq!(shown["end_reason"], "ended_by_admin", "{shown:#}");
    let log = browser
        .wait_for(
            "the instance's log",
            "document.getElementById('inv-log').innerText",
            |v| v.as_str().is_some_and(|t| t.contains("fixture: accepted")),
        )
        .await;
    assert!(log.as_str().unwrap().contains("stdout"), "{log}");
    let closes =
        r#"[...document.querySelectorAll('#timeline li.kind-close')].map((li) => li.innerText)"#;
    let closes = browser
        .wait_for("the close on the timeline", closes, |v| {
            v.as_array()
                .is_some_and(|c| c.iter().any(|t| t.as_str().unwrap().contains("4100")))
        })
        .await;
    assert!(!closes.as_array().unwrap().is_empty());

    // A deep link: the same page after a reload.
    browser.reload().await;
    let shown = browser
        .wait_for("the record after a reload", SHOWN_RECORD, |v| {
            v["request_id"] == id.as_str() && v["closed_by"] == "gateway"
        })
        .await;
    assert_eq!(shown["close_code"], "4100");
    let timeline = browser
        .wait_for("the timeline after a reload", SHOWN_TIMELINE, |v| {
            v.as_array().is_some_and(|rows| {
                rows.iter().any(|r| r["kind"] == "close") && messages(v).len() >= 7
            })
        })
        .await;
    assert_eq!(messages(&timeline).len(), 7, "{timeline:#}");
    browser
        .wait_for(
            "the log after a reload",
            "document.getElementById('inv-log').innerText",
            |v| v.as_str().is_some_and(|t| t.contains("fixture: accepted")),
        )
        .await;

    // The screenshot: the viewport's size, and something drawn on it.
    browser
        .wait_for(
            "the event stream connected (with the token)",
            "document.getElementById('stream-text').textContent",
            |v| v == "live",
        )
        .await;
    browser.eval("document.fonts.ready.then(() => true)").await;
    let png = browser.screenshot().await;
    assert_eq!(png_size(&png), (1280, 1000));
    let seen = browser.inspect_png(&png).await;
    assert_eq!(
        (seen["width"].clone(), seen["height"].clone()),
        (json!(1280), json!(1000))
    );
    assert!(
        seen["colors"].as_u64().unwrap() > 30,
        "a blank page? {seen}"
    );
    let inked = seen["inked"].as_f64().unwrap();
    assert!(inked > 0.03 && inked < 0.9, "{seen}");
    save_if_asked("dashboard-timeline", &png);
}
