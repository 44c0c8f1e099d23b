//! The record store through its public API: what the gateway and the admin API rely on.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use scfsim_record::{
    ClosedBy, EndReason, Invocation, LogLine, LogStream, Logs, Outcome, Query, RecordError,
    RecordStore, StatusCode,
};
use time::macros::datetime;
use time::OffsetDateTime;
use uuid::Uuid;

fn t(secs: i64) -> OffsetDateTime {
    datetime!(2024-05-01 10:00:00 UTC) + time::Duration::seconds(secs)
}

fn finished(function: &str, start: i64, reason: EndReason) -> Invocation {
    let mut inv = Invocation::begin(Uuid::new_v4(), function, t(start));
    inv.finish(&reason, t(start + 1));
    inv
}

fn client_close(code: u16) -> EndReason {
    EndReason::ClientClosed {
        code: Some(code),
        reason: String::new(),
    }
}

/// The database as a person with the `sqlite3` shell sees it (README "Records").
fn sql_count(dir: &Path, sql: &str) -> i64 {
    let db = rusqlite::Connection::open(dir.join("scfsim.db")).unwrap();
    db.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn ids(invs: &[Invocation]) -> Vec<Uuid> {
    invs.iter().map(|i| i.request_id).collect()
}

#[test]
fn begin_finish_get_and_query() {
    let dir = tempfile::tempdir().unwrap();
    let (store, report) = RecordStore::open(dir.path()).unwrap();
    assert_eq!(report, Default::default());
    assert!(store.is_empty());

    // a: echo 200 @0, b: echo 456 @2, c: chat 200 @1, d: echo running @3,
    // e: chat 439 @2 (same start as b, stored after it).
    let a = finished("echo", 0, client_close(1000));
    let b = finished("echo", 2, client_close(1001));
    let c = finished("chat", 1, client_close(1010));
    let e = finished(
        "chat",
        2,
        EndReason::InstanceExited {
            detail: "exit status 1".into(),
        },
    );
    let mut d = Invocation::begin(Uuid::new_v4(), "echo", t(3));
    d.instance_pid = Some(4242);

    for inv in [&a, &b, &c, &e] {
        let mut running = Invocation::begin(inv.request_id, &inv.function, inv.started_at);
        store.begin(&running).unwrap();
        assert!(store.get(inv.request_id).unwrap().is_running());
        running.clone_from(inv);
        store.finish(running).unwrap();
    }
    store.begin(&d).unwrap();

    assert_eq!(store.len(), 5);
    assert_eq!(store.get(a.request_id).as_ref(), Some(&a));
    assert_eq!(store.get(d.request_id).as_ref(), Some(&d));
    assert!(store.get(Uuid::new_v4()).is_none());

    let all = store.query(&Query::default());
    assert_eq!(
        ids(&all),
        vec![
            d.request_id,
            e.request_id,
            b.request_id,
            c.request_id,
            a.request_id
        ]
    );

    let echo = store.query(&Query {
        function: Some("echo".into()),
        ..Default::default()
    });
    assert_eq!(ids(&echo), vec![d.request_id, b.request_id, a.request_id]);

    let ok = store.query(&Query {
        status_code: Some(200),
        ..Default::default()
    });
    assert_eq!(ids(&ok), vec![c.request_id, a.request_id]);

    let echo_ok = store.query(&Query {
        function: Some("echo".into()),
        status_code: Some(200),
        limit: None,
    });
    assert_eq!(ids(&echo_ok), vec![a.request_id]);

    let two = store.query(&Query {
        limit: Some(2),
        ..Default::default()
    });
    assert_eq!(ids(&two), vec![d.request_id, e.request_id]);
    assert!(store
        .query(&Query {
            limit: Some(0),
            ..Default::default()
        })
        .is_empty());
    assert!(store
        .query(&Query {
            function: Some("nope".into()),
            ..Default::default()
        })
        .is_empty());
}

#[test]
fn query_limit_defaults_to_100_and_caps_at_10000() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = RecordStore::open(dir.path()).unwrap();
    for i in 0..10_050 {
        store
            .finish(finished("f", i, EndReason::ClientDropped))
            .unwrap();
    }
    assert_eq!(store.query(&Query::default()).len(), 100);
    let huge = Query {
        limit: Some(usize::MAX),
        ..Default::default()
    };
    assert_eq!(store.query(&huge).len(), 10_000);
}

#[test]
fn query_deserializes_from_the_admin_query_string_shape() {
    let q: Query =
        serde_json::from_str(r#"{"function":"echo","status_code":456,"limit":5}"#).unwrap();
    assert_eq!(q.function.as_deref(), Some("echo"));
    assert_eq!(q.status_code, Some(456));
    assert_eq!(q.limit, Some(5));
}

#[test]
fn reopen_reads_everything_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut invs = Vec::new();
    {
        let (store, _) = RecordStore::open(dir.path()).unwrap();
        for (i, reason) in [
            client_close(1000),
            EndReason::IdleTimeout {
                after: Duration::from_secs(15),
            },
            EndReason::UpgradeRejected { http_status: 403 },
        ]
        .into_iter()
        .enumerate()
        {
            let mut inv = Invocation::begin(Uuid::new_v4(), "echo", t(i as i64));
            store.begin(&inv).unwrap();
            inv.messages_in = 3;
            inv.bytes_out = 99;
            inv.startup_ms = Some(12);
            inv.client_addr = Some("127.0.0.1:5555".into());
            inv.finish(&reason, t(i as i64 + 2));
            store.finish(inv.clone()).unwrap();
            invs.push(inv);
        }
        // Never begun: refused before an instance existed.
        let quota = finished(
            "echo",
            10,
            EndReason::QuotaExceeded {
                detail: "concurrency 1 reached".into(),
            },
        );
        store.finish(quota.clone()).unwrap();
        invs.push(quota);
    }

    let (store, report) = RecordStore::open(dir.path()).unwrap();
    assert_eq!(report.loaded, 4);
    assert_eq!(report.crashed_completed, 0);
    assert_eq!(report.skipped_lines, 0);
    assert_eq!(store.len(), 4);
    for inv in &invs {
        assert_eq!(store.get(inv.request_id).as_ref(), Some(inv));
    }
    let newest_first: Vec<_> = invs.iter().rev().cloned().collect();
    assert_eq!(store.query(&Query::default()), newest_first);
}

#[test]
fn running_at_crash_is_completed_once_as_gateway_crashed() {
    let dir = tempfile::tempdir().unwrap();
    let running = Invocation::begin(Uuid::new_v4(), "echo", t(0));
    let done = finished("echo", 1, client_close(1000));
    {
        let (store, _) = RecordStore::open(dir.path()).unwrap();
        store.begin(&running).unwrap();
        store.finish(done.clone()).unwrap();
        // Dropped without finishing `running`: what a SIGKILL leaves behind.
    }

    let before_open = OffsetDateTime::now_utc();
    let (store, report) = RecordStore::open(dir.path()).unwrap();
    assert_eq!(report.loaded, 2);
    assert_eq!(report.crashed_completed, 1);
    assert_eq!(report.skipped_lines, 0);
    let crashed = store.get(running.request_id).unwrap();
    assert!(!crashed.is_running());
    assert_eq!(crashed.status_code, Some(StatusCode::GATEWAY_ERROR));
    assert_eq!(crashed.outcome, Some(Outcome::Failure));
    assert_eq!(crashed.end_reason.as_deref(), Some("gateway_crashed"));
    assert_eq!(crashed.closed_by, Some(ClosedBy::Gateway));
    assert_eq!(crashed.close_code, None);
    assert!(crashed.error.is_some());
    let ended_at = crashed.ended_at.unwrap();
    assert!(ended_at >= before_open && ended_at <= OffsetDateTime::now_utc());
    assert_eq!(store.get(done.request_id), Some(done.clone()));
    drop(store);

    // The completion itself was journaled: a third open finds nothing to complete and the
    // same record, once.
    let (store, report) = RecordStore::open(dir.path()).unwrap();
    assert_eq!(report.loaded, 2);
    assert_eq!(report.crashed_completed, 0);
    assert_eq!(store.len(), 2);
    assert_eq!(store.get(running.request_id), Some(crashed));
    let all = store.query(&Query::default());
    assert_eq!(ids(&all), vec![done.request_id, running.request_id]);

    drop(store);
    let id = running.request_id;
    assert_eq!(
        sql_count(
            dir.path(),
            &format!(
                "SELECT count(*) FROM invocations WHERE request_id = '{id}' \
                 AND status_code = 500 AND end_reason = 'gateway_crashed'"
            )
        ),
        1,
        "one row, completed"
    );
}

#[test]
fn torn_and_garbled_lines_are_skipped_and_reported() {
    // An older scfsim's journal (imported at the first open): a valid record, a garbled line,
    // a valid record, then half a line (a kill mid-write, cut inside a multi-byte character).
    let dir = tempfile::tempdir().unwrap();
    let a = finished("echo", 0, client_close(1000));
    let b = finished("echo", 1, client_close(1000));
    let path = dir.path().join("invocations.jsonl");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let line = |inv: &Invocation| {
        format!(
            "{{\"event\":\"end\",\"invocation\":{}}}\n",
            serde_json::to_string(inv).unwrap()
        )
    };
    file.write_all(line(&a).as_bytes()).unwrap();
    file.write_all(b"\x00\x00not json at all\n").unwrap();
    let b_line = line(&b);
    file.write_all(b_line.as_bytes()).unwrap();
    let half = &b_line.as_bytes()[..b_line.len() / 2];
    file.write_all(half).unwrap();
    file.write_all(&"é".as_bytes()[..1]).unwrap();
    drop(file);

    let (store, report) = RecordStore::open(dir.path()).unwrap();
    assert_eq!(report.loaded, 2);
    assert_eq!(report.skipped_lines, 2);
    assert_eq!(report.crashed_completed, 0);
    assert_eq!(store.get(a.request_id), Some(a.clone()));
    assert_eq!(store.get(b.request_id), Some(b.clone()));

    let c = finished("echo", 2, client_close(1000));
    store.finish(c.clone()).unwrap();
    drop(store);

    // Imported once: the journal is kept aside, not read again.
    let (store, report) = RecordStore::open(dir.path()).unwrap();
    assert_eq!(report.loaded, 3);
    assert_eq!(report.skipped_lines, 0);
    assert_eq!(store.get(c.request_id), Some(c));
    assert!(!path.exists());
    assert!(dir.path().join("invocations.jsonl.imported").exists());
}

#[test]
fn a_complete_last_line_without_newline_still_counts() {
    let dir = tempfile::tempdir().unwrap();
    let a = finished("echo", 0, client_close(1000));
    let line = format!(
        "{{\"event\":\"end\",\"invocation\":{}}}",
        serde_json::to_string(&a).unwrap()
    );
    fs::write(dir.path().join("invocations.jsonl"), line).unwrap();

    let (store, report) = RecordStore::open(dir.path()).unwrap();
    assert_eq!((report.loaded, report.skipped_lines), (1, 0));
    let b = finished("echo", 1, client_close(1000));
    store.finish(b.clone()).unwrap();
    drop(store);

    let (store, report) = RecordStore::open(dir.path()).unwrap();
    assert_eq!((report.loaded, report.skipped_lines), (2, 0));
    assert_eq!(store.get(a.request_id), Some(a));
    assert_eq!(store.get(b.request_id), Some(b));
}

#[test]
fn concurrent_begins_and_finishes_all_land() {
    const THREADS: usize = 16;
    const EACH: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = RecordStore::open(dir.path()).unwrap();
    let store = Arc::new(store);

    let handles: Vec<_> = (0..THREADS)
        .map(|n| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                for i in 0..EACH {
                    let mut inv = Invocation::begin(Uuid::new_v4(), &format!("f{n}"), t(i as i64));
                    store.begin(&inv).unwrap();
                    inv.messages_in = i as u64;
                    inv.finish(&client_close(1000), t(i as i64 + 1));
                    store.finish(inv.clone()).unwrap();
                    ids.push(inv.request_id);
                }
                ids
            })
        })
        .collect();
    let all: Vec<Uuid> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();

    assert_eq!(store.len(), THREADS * EACH);
    assert!(all.iter().all(|id| !store.get(*id).unwrap().is_running()));
    let per_function = store.query(&Query {
        function: Some("f3".into()),
        limit: Some(10_000),
        ..Default::default()
    });
    assert_eq!(per_function.len(), EACH);
    drop(store);

    assert_eq!(
        sql_count(
            dir.path(),
            "SELECT count(*) FROM invocations WHERE status_code = 200"
        ),
        (THREADS * EACH) as i64
    );
    let (store, report) = RecordStore::open(dir.path()).unwrap();
    assert_eq!(report.loaded, THREADS * EACH);
    assert_eq!(report.skipped_lines, 0);
    assert_eq!(report.crashed_completed, 0);
    assert!(all
        .iter()
        .all(|id| store.get(*id).unwrap().messages_in < EACH as u64));
}

#[test]
fn caller_mistakes_are_errors_not_silent_records() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = RecordStore::open(dir.path()).unwrap();
    let inv = Invocation::begin(Uuid::new_v4(), "echo", t(0));
    store.begin(&inv).unwrap();
    assert!(matches!(
        store.begin(&inv),
        Err(RecordError::AlreadyRecorded { request_id }) if request_id == inv.request_id
    ));
    assert!(matches!(
        store.finish(inv.clone()),
        Err(RecordError::NotFinished { .. })
    ));
    assert!(store.get(inv.request_id).unwrap().is_running());
}

#[test]
fn open_fails_with_the_path_when_the_data_dir_is_unusable() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    fs::write(&blocker, "").unwrap();
    let err = RecordStore::open(&blocker)
        .err()
        .expect("a file is not a data dir");
    match &err {
        RecordError::Io { path, .. } => assert!(path.starts_with(&blocker)),
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("file"));
}

#[test]
fn logs_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = RecordStore::open(dir.path()).unwrap();
    let inv = finished("echo", 0, client_close(1000));
    store.finish(inv.clone()).unwrap();
    let quiet = finished("echo", 1, client_close(1000));
    store.finish(quiet.clone()).unwrap();

    let lines = vec![
        LogLine {
            at: t(0),
            stream: LogStream::Stdout,
            line: "listening on 9000".into(),
        },
        LogLine {
            at: t(1),
            stream: LogStream::Stderr,
            line: "warning: {\"json\": \"inside\"} é".into(),
        },
        LogLine {
            at: t(1),
            stream: LogStream::Stdout,
            line: String::new(),
        },
    ];
    store.save_logs(inv.request_id, &lines, 0).unwrap();
    assert_eq!(
        store.logs(inv.request_id).unwrap(),
        Some(Logs {
            lines: lines.clone(),
            dropped: 0
        })
    );

    // Saving again replaces, and a drop count survives.
    store.save_logs(inv.request_id, &lines[..1], 7).unwrap();
    let logs = store.logs(inv.request_id).unwrap().unwrap();
    assert_eq!(logs.lines, lines[..1]);
    assert_eq!(logs.dropped, 7);

    assert_eq!(store.logs(quiet.request_id).unwrap(), Some(Logs::default()));
    assert_eq!(store.logs(Uuid::new_v4()).unwrap(), None);
    drop(store);

    let (store, _) = RecordStore::open(dir.path()).unwrap();
    let logs = store.logs(inv.request_id).unwrap().unwrap();
    assert_eq!((logs.lines.len(), logs.dropped), (1, 7));
    assert_eq!(
        sql_count(dir.path(), "SELECT count(*) FROM instance_logs"),
        1
    );
}
