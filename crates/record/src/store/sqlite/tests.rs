use std::time::Duration;

use time::macros::datetime;

use super::*;
use crate::outcome::EndReason;

/// Bound on a wait that only a bug makes long.
const PATIENCE: Duration = Duration::from_secs(10);

fn done_at(start: OffsetDateTime) -> Invocation {
    let mut inv = Invocation::begin(Uuid::new_v4(), "f", start);
    inv.finish(&EndReason::ClientDropped, start);
    inv
}

fn t(secs: i64) -> OffsetDateTime {
    datetime!(2024-01-01 00:00:00 UTC) + time::Duration::seconds(secs)
}

/// The `scfsim_invocations_total` lines, sorted.
fn invocation_counts(store: &SqliteStore) -> Vec<String> {
    let mut registry = prometheus_client::registry::Registry::default();
    store.aggregates().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
    let mut lines: Vec<_> = text
        .lines()
        .filter(|l| l.starts_with("scfsim_invocations_total{"))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

#[test]
fn subscribers_see_started_then_ended_once_written() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = SqliteStore::open(dir.path()).unwrap();
    let mut inv = Invocation::begin(Uuid::new_v4(), "f", t(0));
    store.finish(done_at(t(0))).unwrap();
    assert!(store.flush(PATIENCE));
    // Subscribed after that write: it sees nothing of it.
    let mut rx = store.subscribe();
    store.begin(&inv).unwrap();
    inv.finish(&EndReason::ClientDropped, t(0));
    store.finish(inv.clone()).unwrap();
    assert!(store.flush(PATIENCE));

    let started = rx.try_recv().unwrap();
    assert_eq!(started.name(), "started");
    assert!(started.invocation().is_running());
    assert_eq!(rx.try_recv().unwrap(), StoreEvent::Ended(inv.clone()));
    assert!(rx.try_recv().is_err(), "exactly two events");
    assert_eq!(store.get(inv.request_id), Some(inv));
}

#[test]
fn a_lagging_subscriber_skips_ahead_and_writers_never_wait() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = SqliteStore::open(dir.path()).unwrap();
    let mut rx = store.subscribe();
    for _ in 0..EVENT_CAPACITY + 10 {
        store.finish(done_at(t(0))).unwrap();
    }
    assert!(store.flush(PATIENCE));
    assert_eq!(
        rx.try_recv(),
        Err(broadcast::error::TryRecvError::Lagged(10))
    );
    assert!(matches!(rx.try_recv(), Ok(StoreEvent::Ended(_))));
}

#[test]
fn aggregates_count_each_invocation_once_across_restarts_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let keep = Retention {
        max_records: 2,
        ..Retention::default()
    };
    let (store, _) = SqliteStore::open_with(dir.path(), keep).unwrap();
    let ok = done_at(t(0));
    store.finish(ok.clone()).unwrap();
    assert!(store.flush(PATIENCE));
    // A second finish of the same id, after the first was written: replaced, not recounted.
    store.finish(ok).unwrap();
    store
        .begin(&Invocation::begin(Uuid::new_v4(), "f", t(1)))
        .unwrap();
    assert_eq!(
        invocation_counts(&store),
        [
            r#"scfsim_invocations_total{function="f",status_code="456",end_reason="client_dropped"} 1"#
        ]
    );
    drop(store); // with one invocation still running: a crash

    let (store, report) = SqliteStore::open_with(dir.path(), keep).unwrap();
    assert_eq!(report.crashed_completed, 1);
    let expected = [
        r#"scfsim_invocations_total{function="f",status_code="456",end_reason="client_dropped"} 1"#,
        r#"scfsim_invocations_total{function="f",status_code="500",end_reason="gateway_crashed"} 1"#,
    ];
    assert_eq!(invocation_counts(&store), expected);
    drop(store);

    let (store, report) = SqliteStore::open_with(dir.path(), keep).unwrap();
    assert_eq!(report.crashed_completed, 0);
    assert_eq!(invocation_counts(&store), expected);
    // Retention deletes records, never counts: counters stay monotonic.
    for i in 0..5 {
        store.finish(done_at(t(10 + i))).unwrap();
    }
    assert!(store.flush(PATIENCE));
    let deleted = wait_until(|| store.len() == 2);
    assert!(deleted, "retention to 2 records; have {}", store.len());
    assert_eq!(
        invocation_counts(&store)[0],
        r#"scfsim_invocations_total{function="f",status_code="456",end_reason="client_dropped"} 6"#
    );
}

/// Polls `cond` (retention runs on the writer's schedule) for at most PATIENCE.
fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + PATIENCE;
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

#[test]
fn retention_by_age_deletes_old_records_and_their_logs() {
    let dir = tempfile::tempdir().unwrap();
    let keep = Retention {
        max_age: Some(Duration::from_secs(3600)),
        ..Retention::default()
    };
    let (store, _) = SqliteStore::open_with(dir.path(), keep).unwrap();
    let now = OffsetDateTime::now_utc();
    let old = done_at(now - time::Duration::hours(2));
    let new = done_at(now);
    store.finish(old.clone()).unwrap();
    store.save_logs(old.request_id, &[], 3).unwrap();
    store.finish(new.clone()).unwrap();
    assert!(store.flush(PATIENCE));
    assert!(wait_until(|| store.get(old.request_id).is_none()));
    assert_eq!(store.logs(old.request_id).unwrap(), None);
    assert!(store.get(new.request_id).is_some());
}

#[test]
fn search_pages_with_a_cursor_and_filters_by_time_and_end_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = SqliteStore::open(dir.path()).unwrap();
    let mut all = Vec::new();
    for i in 0..25 {
        let mut inv = Invocation::begin(Uuid::new_v4(), "f", t(i / 2)); // pairs share a start
        let reason = if i % 5 == 0 {
            EndReason::GatewayShutdown
        } else {
            EndReason::ClientDropped
        };
        inv.finish(&reason, t(i));
        store.finish(inv.clone()).unwrap();
        all.push(inv);
        if i == 12 {
            // Half written, half still in memory: pages must not care.
            assert!(store.flush(PATIENCE));
        }
    }
    let newest_first: Vec<Uuid> = all.iter().rev().map(|i| i.request_id).collect();
    let mut seen = Vec::new();
    let mut q = Search {
        limit: Some(7),
        ..Search::default()
    };
    loop {
        let page = store.search(&q).unwrap();
        seen.extend(page.records.iter().map(|i| i.request_id));
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);

    let page = store
        .search(&Search {
            since: Some(t(3)),
            until: Some(t(6)),
            end_reason: Some("gateway_shutdown".into()),
            ..Search::default()
        })
        .unwrap();
    let expected: Vec<Uuid> = all
        .iter()
        .rev()
        .filter(|i| i.started_at >= t(3) && i.started_at < t(6))
        .filter(|i| i.end_reason.as_deref() == Some("gateway_shutdown"))
        .map(|i| i.request_id)
        .collect();
    assert_eq!(expected.len(), 1);
    assert_eq!(
        page.records
            .iter()
            .map(|i| i.request_id)
            .collect::<Vec<_>>(),
        expected
    );
    assert!(matches!(
        store.search(&Search {
            cursor: Some("nope".into()),
            ..Search::default()
        }),
        Err(RecordError::BadCursor { .. })
    ));
}

#[test]
fn a_second_store_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = SqliteStore::open(dir.path()).unwrap();
    let err = SqliteStore::open(dir.path()).err().expect("locked");
    assert!(matches!(err, RecordError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("--data-dir"), "{err}");
    drop(store);
    SqliteStore::open(dir.path()).expect("free again once the first is closed");
}

#[test]
fn a_version_3_database_gains_the_provisioned_column_and_keeps_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let old = done_at(t(0));
    let (store, _) = SqliteStore::open(dir.path()).unwrap();
    store.finish(old.clone()).unwrap();
    assert!(store.flush(PATIENCE));
    drop(store);
    // Back to what scfsim wrote before the column existed.
    let db = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    db.execute_batch("ALTER TABLE invocations DROP COLUMN provisioned")
        .unwrap();
    db.pragma_update(None, "user_version", 3).unwrap();
    drop(db);

    let (store, _) = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(store.get(old.request_id), Some(old.clone()));
    let mut new = done_at(t(1));
    new.provisioned = true;
    store.finish(new.clone()).unwrap();
    assert!(store.flush(PATIENCE));
    assert_eq!(store.get(new.request_id), Some(new.clone()));
    drop(store);

    let db = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    let version: i64 = db
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let column = |id: Uuid| -> i64 {
        db.query_row(
            "SELECT provisioned FROM invocations WHERE request_id = ?1",
            [id.hyphenated().to_string()],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!((column(old.request_id), column(new.request_id)), (0, 1));
}

#[test]
fn a_newer_schema_and_a_foreign_or_corrupt_file_are_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path()).unwrap());
    let db = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    db.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(db);
    let err = SqliteStore::open(dir.path()).err().expect("newer");
    assert!(matches!(err, RecordError::NewerSchema { .. }), "{err:?}");
    assert!(err.to_string().contains("newer scfsim"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DB_FILE), vec![0x5a; 8192]).unwrap();
    let err = SqliteStore::open(dir.path()).err().expect("garbage");
    assert!(matches!(err, RecordError::Unusable { .. }), "{err:?}");
    assert!(err.to_string().contains("move it aside"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let db = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    db.execute_batch("CREATE TABLE t (x)").unwrap();
    drop(db);
    let err = SqliteStore::open(dir.path()).err().expect("foreign");
    assert!(matches!(err, RecordError::Unusable { .. }), "{err:?}");
}

#[test]
fn an_old_journal_and_its_logs_are_imported_once_and_kept_aside() {
    let dir = tempfile::tempdir().unwrap();
    let done = done_at(t(0));
    let running = Invocation::begin(Uuid::new_v4(), "f", t(1));
    let lines = [
        format!(
            r#"{{"event":"start","invocation":{}}}"#,
            serde_json::to_string(&Invocation::begin(done.request_id, "f", t(0))).unwrap()
        ),
        format!(
            r#"{{"event":"start","invocation":{}}}"#,
            serde_json::to_string(&running).unwrap()
        ),
        format!(
            r#"{{"event":"end","invocation":{}}}"#,
            serde_json::to_string(&done).unwrap()
        ),
    ];
    std::fs::write(dir.path().join("invocations.jsonl"), lines.join("\n")).unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    std::fs::write(
        dir.path().join("logs").join(format!("{}.jsonl", done.request_id)),
        "{\"at\":\"2024-01-01T00:00:00Z\",\"stream\":\"stdout\",\"line\":\"hi\"}\n{\"dropped\":2}\n",
    )
    .unwrap();

    let (store, report) = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(
        (report.imported, report.crashed_completed, report.loaded),
        (2, 1, 2)
    );
    assert_eq!(store.get(done.request_id), Some(done.clone()));
    let crashed = store.get(running.request_id).unwrap();
    assert_eq!(crashed.end_reason.as_deref(), Some("gateway_crashed"));
    let logs = store.logs(done.request_id).unwrap().unwrap();
    assert_eq!((logs.lines.len(), logs.dropped), (1, 2));
    assert!(dir.path().join("invocations.jsonl.imported").exists());
    assert!(dir.path().join("logs.imported").exists());
    drop(store);

    let (_store, report) = SqliteStore::open(dir.path()).unwrap();
    assert_eq!((report.imported, report.loaded), (0, 2));
}

#[test]
fn a_version_2_database_gains_the_injected_faults_column_and_keeps_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let old = done_at(t(0));
    {
        let (store, _) = SqliteStore::open(dir.path()).unwrap();
        store.finish(old.clone()).unwrap();
        assert!(store.flush(PATIENCE));
    }
    // The layout of version 2: no injected_faults (nor provisioned) column.
    let db = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    db.execute_batch(
        "ALTER TABLE invocations DROP COLUMN injected_faults;
         ALTER TABLE invocations DROP COLUMN provisioned;",
    )
    .unwrap();
    db.pragma_update(None, "user_version", 2).unwrap();
    drop(db);

    let (store, report) = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(report.loaded, 1);
    assert_eq!(store.get(old.request_id), Some(old.clone()));
    let mut faulty = done_at(t(1));
    faulty.injected_faults = vec!["delay_to_client(200ms)".into()];
    store.finish(faulty.clone()).unwrap();
    assert!(store.flush(PATIENCE));
    drop(store);

    let db = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    let version: i64 = db
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let column = |id: Uuid| -> String {
        db.query_row(
            "SELECT injected_faults FROM invocations WHERE request_id = ?1",
            [id.hyphenated().to_string()],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(column(old.request_id), "[]");
    assert_eq!(column(faulty.request_id), r#"["delay_to_client(200ms)"]"#);
    drop(db);
    let (store, _) = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(store.get(faulty.request_id), Some(faulty));
}

fn timeline_of(inv: &Invocation, events: usize) -> crate::timeline::Timeline {
    use crate::timeline::{Direction, EventKind, FrameEvent, Opcode};
    let events = (0..events)
        .map(|i| {
            let mut e = FrameEvent::new(EventKind::Message, inv.started_at, i as f64, "m".into());
            e.seq = i as u64;
            e.direction = Some(Direction::ToClient);
            let opcode = if i % 2 == 0 {
                Opcode::Text
            } else {
                Opcode::Binary
            };
            e.opcode = Some(opcode);
            e.size = 3;
            e.set_payload(opcode, if i % 2 == 0 { b"abc" } else { &[0, 1, 255] });
            e
        })
        .collect();
    crate::timeline::Timeline {
        request_id: inv.request_id,
        function: inv.function.clone(),
        live: false,
        dropped: 2,
        events,
    }
}

#[test]
fn timelines_round_trip_through_the_database_and_the_oldest_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let keep = Retention {
        max_timelines: 2,
        ..Retention::default()
    };
    let (store, _) = SqliteStore::open_with(dir.path(), keep).unwrap();
    let invs: Vec<_> = (0..3).map(|i| done_at(t(i))).collect();
    let first = timeline_of(&invs[0], 4);
    store.finish(invs[0].clone()).unwrap();
    store.save_frames(first.clone()).unwrap();
    assert_eq!(
        store.frames(invs[0].request_id).unwrap(),
        Some(first.clone())
    );
    assert!(store.flush(PATIENCE));
    // From the database now: the payloads as text and base64 again, the rest from JSON.
    assert_eq!(store.frames(invs[0].request_id).unwrap(), Some(first));
    for inv in &invs[1..] {
        store.finish(inv.clone()).unwrap();
        store.save_frames(timeline_of(inv, 1)).unwrap();
        assert!(store.flush(PATIENCE));
    }
    let deadline = std::time::Instant::now() + PATIENCE;
    while store.frames(invs[0].request_id).unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "never pruned");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(store.frames(invs[2].request_id).unwrap().is_some());
    assert!(
        store.find(invs[0].request_id).unwrap().is_some(),
        "records stay"
    );
}

#[test]
fn a_schema_1_database_gets_the_timeline_tables() {
    let dir = tempfile::tempdir().unwrap();
    let inv = done_at(t(0));
    {
        let (store, _) = SqliteStore::open(dir.path()).unwrap();
        store.finish(inv.clone()).unwrap();
        assert!(store.flush(PATIENCE));
    }
    // Back to what scfsim wrote before the timeline.
    let db = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    db.execute_batch(
        "DROP TABLE frame_saves; DROP TRIGGER invocations_cascade;
         ALTER TABLE frames DROP COLUMN event;
         ALTER TABLE invocations DROP COLUMN injected_faults;
         ALTER TABLE invocations DROP COLUMN provisioned;
         CREATE TRIGGER invocations_cascade AFTER DELETE ON invocations BEGIN
             DELETE FROM instance_logs WHERE request_id = old.request_id;
             DELETE FROM log_saves WHERE request_id = old.request_id;
             DELETE FROM frames WHERE request_id = old.request_id;
         END;",
    )
    .unwrap();
    db.pragma_update(None, "user_version", 1).unwrap();
    drop(db);
    let (store, _) = SqliteStore::open(dir.path()).unwrap();
    let timeline = timeline_of(&inv, 2);
    store.save_frames(timeline.clone()).unwrap();
    assert!(store.flush(PATIENCE));
    assert_eq!(store.frames(inv.request_id).unwrap(), Some(timeline));
    assert!(store.find(inv.request_id).unwrap().is_some());
}
