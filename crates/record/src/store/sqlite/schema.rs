//! The database's layout, and the mapping between a record and a row.
//!
//! Stable for users of the `sqlite3` shell (README "Records"): the tables `invocations`,
//! `instance_logs`, `log_saves`, `frames`, `frame_saves` and `aggregates` and their columns as
//! created here.
//! Later versions add columns and tables and bump `user_version`; they do not rename or drop.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::error::RecordError;
use crate::invocation::{Invocation, LogLine};
use crate::metrics::{AggregateKey, AggregateRow, Aggregates, Buckets};
use crate::store::{micros, Logs};
use crate::timeline::{Direction, FrameEvent, Timeline};

/// `PRAGMA application_id`: "SCFS", so a file of another program is told apart.
pub(crate) const APPLICATION_ID: i64 = 0x5343_4653;
/// `PRAGMA user_version` this scfsim writes. An older scfsim refuses a higher one.
/// 2 (scfsim with the frame timeline): `frames.event` and `frame_saves`.
/// 3 (scfsim with faults on purpose): `invocations.injected_faults`.
/// 4 (scfsim with provisioned instances): `invocations.provisioned`.
pub const SCHEMA_VERSION: i64 = 4;

const CREATE: &str = r#"
CREATE TABLE invocations (
    -- The order the store first saw the invocation: ties between equal start times.
    seq                INTEGER PRIMARY KEY,
    request_id         TEXT NOT NULL UNIQUE,
    function           TEXT NOT NULL,
    status_code        INTEGER,            -- NULL while running
    outcome            TEXT,
    end_reason         TEXT,
    close_code         INTEGER,
    close_reason       TEXT,
    closed_by          TEXT,
    started_at         TEXT NOT NULL,      -- RFC 3339, as in the API
    started_us         INTEGER NOT NULL,   -- the same instant, microseconds since 1970 (UTC)
    ended_at           TEXT,
    duration_ms        INTEGER,
    startup_ms         INTEGER,
    messages_in        INTEGER NOT NULL,
    messages_out       INTEGER NOT NULL,
    bytes_in           INTEGER NOT NULL,
    bytes_out          INTEGER NOT NULL,
    throttled_messages INTEGER NOT NULL,
    instance_pid       INTEGER,
    instance_exit_code INTEGER,
    instance_signal    INTEGER,
    http_status        INTEGER,
    error              TEXT,
    client_addr        TEXT,
    path               TEXT,
    injected_faults    TEXT NOT NULL DEFAULT '[]', -- JSON list of strings (version 3)
    provisioned        INTEGER NOT NULL DEFAULT 0, -- 0/1 (version 4)
    -- The whole record as the API shows it (JSON), including fields newer than these columns.
    record             TEXT NOT NULL
);
CREATE INDEX invocations_by_start ON invocations (started_us);
CREATE INDEX invocations_by_function ON invocations (function, started_us);
CREATE INDEX invocations_by_status ON invocations (status_code, started_us);
CREATE INDEX invocations_by_end_reason ON invocations (end_reason, started_us);

CREATE TABLE instance_logs (
    request_id TEXT NOT NULL,
    line_no    INTEGER NOT NULL,
    at         TEXT NOT NULL,                 -- RFC 3339
    stream     TEXT NOT NULL,                 -- stdout | stderr
    line       TEXT NOT NULL,
    PRIMARY KEY (request_id, line_no)
) WITHOUT ROWID;

-- One row per invocation whose log was saved, in saving order (for max_logged_invocations).
CREATE TABLE log_saves (
    seq        INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    dropped    INTEGER NOT NULL               -- lines the gateway dropped, not in instance_logs
);

-- Every event of an invocation's timeline (GET /api/invocations/{id}/frames): its messages
-- and close frames, handshakes, start phases and limits.
CREATE TABLE frames (
    request_id TEXT NOT NULL,
    frame_no   INTEGER NOT NULL,              -- the event's seq
    at_us      INTEGER NOT NULL,              -- microseconds since 1970 (UTC)
    direction  TEXT NOT NULL,                 -- in (client to function) | out | '' (none)
    kind       TEXT NOT NULL,                 -- text | binary | ping | pong | close (the
                                              -- opcode), else phase | handshake | limit | fault
    size       INTEGER NOT NULL,              -- payload bytes
    data       BLOB,                          -- the payload, or its first bytes
    close_code INTEGER,
    event      TEXT NOT NULL DEFAULT '{}',    -- the event as the API shows it, payload aside
    PRIMARY KEY (request_id, frame_no)
) WITHOUT ROWID;

-- One row per invocation whose timeline was saved, in saving order (for keep_invocations).
CREATE TABLE frame_saves (
    seq        INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    function   TEXT NOT NULL,
    dropped    INTEGER NOT NULL               -- events over max_events, not in frames
);

-- Sums over finished records (metrics, dashboard); kept when retention deletes records.
CREATE TABLE aggregates (
    function           TEXT NOT NULL,
    status_code        INTEGER NOT NULL,
    end_reason         TEXT NOT NULL,
    closed             INTEGER NOT NULL,      -- 1: the record has a close code
    invocations        INTEGER NOT NULL,
    messages_in        INTEGER NOT NULL,
    messages_out       INTEGER NOT NULL,
    bytes_in           INTEGER NOT NULL,
    bytes_out          INTEGER NOT NULL,
    throttled_messages INTEGER NOT NULL,
    duration_count     INTEGER NOT NULL,
    duration_sum_ms    INTEGER NOT NULL,
    duration_buckets   TEXT NOT NULL,         -- JSON array of counts per bucket, +Inf last
    startup_count      INTEGER NOT NULL,
    startup_sum_ms     INTEGER NOT NULL,
    startup_buckets    TEXT NOT NULL,
    PRIMARY KEY (function, status_code, end_reason, closed)
);

CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

-- Deleting a record (retention, or a person in the sqlite3 shell) deletes what hangs off it.
CREATE TRIGGER invocations_cascade AFTER DELETE ON invocations BEGIN
    DELETE FROM instance_logs WHERE request_id = old.request_id;
    DELETE FROM log_saves WHERE request_id = old.request_id;
    DELETE FROM frames WHERE request_id = old.request_id;
    DELETE FROM frame_saves WHERE request_id = old.request_id;
END;
"#;

/// From schema 1: the timeline's columns and table, and the cascade that covers them.
const UPGRADE_TO_2: &str = r#"
ALTER TABLE frames ADD COLUMN event TEXT NOT NULL DEFAULT '{}';
CREATE TABLE frame_saves (
    seq        INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    function   TEXT NOT NULL,
    dropped    INTEGER NOT NULL
);
DROP TRIGGER invocations_cascade;
CREATE TRIGGER invocations_cascade AFTER DELETE ON invocations BEGIN
    DELETE FROM instance_logs WHERE request_id = old.request_id;
    DELETE FROM log_saves WHERE request_id = old.request_id;
    DELETE FROM frames WHERE request_id = old.request_id;
    DELETE FROM frame_saves WHERE request_id = old.request_id;
END;
"#;

/// Connection settings every connection of the store uses.
pub(crate) fn configure(conn: &Connection) -> rusqlite::Result<()> {
    // Long enough to ride out a checkpoint or a person's `sqlite3` session.
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}

/// Checks that `conn` is a scfsim database this version can use, creating the layout in a new
/// file. Writer connection only.
pub(crate) fn prepare(conn: &mut Connection, path: &Path) -> Result<(), RecordError> {
    let unusable = |source: rusqlite::Error| match source.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
            RecordError::Unusable {
                path: path.to_owned(),
                source: Some(source),
            }
        }
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            RecordError::Locked {
                path: path.to_owned(),
            }
        }
        _ => RecordError::db(path)(source),
    };
    // The first statements read the file's header: a file that is not SQLite fails here.
    let app: i64 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(unusable)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(unusable)?;
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(unusable)?;
    if app == 0 && version == 0 && objects == 0 {
        // WAL before anything else is written, so even the creation is journaled that way.
        set_wal(conn, path)?;
        let tx = conn.transaction().map_err(unusable)?;
        tx.execute_batch(CREATE).map_err(unusable)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(unusable)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(unusable)?;
        tx.commit().map_err(unusable)?;
        return Ok(());
    }
    if app != APPLICATION_ID {
        return Err(RecordError::Unusable {
            path: path.to_owned(),
            source: None,
        });
    }
    if version > SCHEMA_VERSION {
        return Err(RecordError::NewerSchema {
            path: path.to_owned(),
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    set_wal(conn, path)?;
    migrate(conn, version).map_err(unusable)
}

/// From schema 2 to 3: the faults injected on purpose (a JSON list of strings).
const UPGRADE_TO_3: &str =
    "ALTER TABLE invocations ADD COLUMN injected_faults TEXT NOT NULL DEFAULT '[]';";

/// From schema 3 to 4: whether a provisioned instance (started ahead of demand) served the
/// invocation.
const UPGRADE_TO_4: &str =
    "ALTER TABLE invocations ADD COLUMN provisioned INTEGER NOT NULL DEFAULT 0;";

/// What each version adds to the one before it, in order: `MIGRATIONS[i]` turns version `i + 1`
/// into version `i + 2`. `CREATE` is always the newest layout.
const MIGRATIONS: &[&str] = &[UPGRADE_TO_2, UPGRADE_TO_3, UPGRADE_TO_4];

/// Brings a database of an older `version` (at least 1) up to [`SCHEMA_VERSION`], each step in
/// a transaction of its own with its `user_version`, so an interrupted upgrade resumes.
fn migrate(conn: &mut Connection, version: i64) -> rusqlite::Result<()> {
    for (from, step) in (1..SCHEMA_VERSION).zip(MIGRATIONS) {
        if version > from {
            continue;
        }
        let tx = conn.transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", from + 1)?;
        tx.commit()?;
        tracing::info!(from, to = from + 1, "upgraded the record database");
    }
    Ok(())
}

fn set_wal(conn: &Connection, path: &Path) -> Result<(), RecordError> {
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(RecordError::db(path))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "the record database is not in WAL mode");
    }
    // FULL: each group commit is on the disk (fsync of the WAL) before its events are sent.
    // Only the writer thread waits for it, never a connection.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(RecordError::db(path))
}

pub(crate) const UPSERT: &str = "INSERT INTO invocations (seq, request_id, function, status_code,
    outcome, end_reason, close_code, close_reason, closed_by, started_at, started_us, ended_at,
    duration_ms, startup_ms, messages_in, messages_out, bytes_in, bytes_out, throttled_messages,
    instance_pid, instance_exit_code, instance_signal, http_status, error, client_addr, path,
    record, injected_faults, provisioned)
  VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19,
    ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29)
  ON CONFLICT (request_id) DO UPDATE SET function = excluded.function,
    status_code = excluded.status_code, outcome = excluded.outcome,
    end_reason = excluded.end_reason, close_code = excluded.close_code,
    close_reason = excluded.close_reason, closed_by = excluded.closed_by,
    started_at = excluded.started_at, started_us = excluded.started_us,
    ended_at = excluded.ended_at, duration_ms = excluded.duration_ms,
    startup_ms = excluded.startup_ms, messages_in = excluded.messages_in,
    messages_out = excluded.messages_out, bytes_in = excluded.bytes_in,
    bytes_out = excluded.bytes_out, throttled_messages = excluded.throttled_messages,
    instance_pid = excluded.instance_pid, instance_exit_code = excluded.instance_exit_code,
    instance_signal = excluded.instance_signal, http_status = excluded.http_status,
    error = excluded.error, client_addr = excluded.client_addr, path = excluded.path,
    record = excluded.record, injected_faults = excluded.injected_faults,
    provisioned = excluded.provisioned";

fn text<T: serde::Serialize>(v: &Option<T>) -> Option<String> {
    v.as_ref().and_then(|v| match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => Some(s),
        _ => None,
    })
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Inserts or updates `inv`'s row; an update keeps the row's `seq` (its place among ties).
/// `record` is `inv` as JSON.
pub(crate) fn upsert(
    tx: &Transaction<'_>,
    inv: &Invocation,
    seq: i64,
    record: &str,
) -> rusqlite::Result<()> {
    let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    tx.prepare_cached(UPSERT)?.execute(params![
        seq,
        inv.request_id.hyphenated().to_string(),
        inv.function,
        inv.status_code.map(|s| s.0),
        text(&inv.outcome),
        inv.end_reason,
        inv.close_code,
        inv.close_reason,
        text(&inv.closed_by),
        rfc3339(inv.started_at),
        micros(inv.started_at),
        inv.ended_at.map(rfc3339),
        inv.duration_ms.map(to_i64),
        inv.startup_ms.map(to_i64),
        to_i64(inv.messages_in),
        to_i64(inv.messages_out),
        to_i64(inv.bytes_in),
        to_i64(inv.bytes_out),
        to_i64(inv.throttled_messages),
        inv.instance_pid,
        inv.instance_exit_code,
        inv.instance_signal,
        inv.http_status,
        inv.error,
        inv.client_addr,
        inv.path,
        record,
        serde_json::to_string(&inv.injected_faults).unwrap_or_else(|_| "[]".into()),
        inv.provisioned,
    ])?;
    Ok(())
}

/// Replaces the saved log of `id`.
pub(crate) fn replace_logs(tx: &Transaction<'_>, id: &str, logs: &Logs) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM instance_logs WHERE request_id = ?1")?
        .execute([id])?;
    tx.prepare_cached("DELETE FROM log_saves WHERE request_id = ?1")?
        .execute([id])?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO instance_logs (request_id, line_no, at, stream, line) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (i, l) in logs.lines.iter().enumerate() {
        let stream = text(&Some(l.stream)).unwrap_or_default();
        insert.execute(params![id, i as i64, rfc3339(l.at), stream, l.line])?;
    }
    tx.prepare_cached("INSERT INTO log_saves (request_id, dropped) VALUES (?1, ?2)")?
        .execute(params![id, i64::try_from(logs.dropped).unwrap_or(i64::MAX)])?;
    Ok(())
}

/// The saved log of `id`, if one was saved.
pub(crate) fn read_logs(conn: &Connection, id: &str) -> rusqlite::Result<Option<Logs>> {
    let dropped: Option<i64> = conn
        .prepare_cached("SELECT dropped FROM log_saves WHERE request_id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    let Some(dropped) = dropped else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT at, stream, line FROM instance_logs WHERE request_id = ?1 ORDER BY line_no",
    )?;
    let lines = stmt
        .query_map([id], |r| {
            let at: String = r.get(0)?;
            let stream: String = r.get(1)?;
            let line: String = r.get(2)?;
            Ok(serde_json::json!({ "at": at, "stream": stream, "line": line }))
        })?
        .filter_map(|row| row.ok())
        .filter_map(|v| serde_json::from_value::<LogLine>(v).ok())
        .collect();
    Ok(Some(Logs {
        lines,
        dropped: u64::try_from(dropped).unwrap_or(0),
    }))
}

/// Replaces the saved timeline of its invocation.
pub(crate) fn replace_frames(tx: &Transaction<'_>, timeline: &Timeline) -> rusqlite::Result<()> {
    let id = timeline.request_id.hyphenated().to_string();
    tx.prepare_cached("DELETE FROM frames WHERE request_id = ?1")?
        .execute([&id])?;
    tx.prepare_cached("DELETE FROM frame_saves WHERE request_id = ?1")?
        .execute([&id])?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO frames (request_id, frame_no, at_us, direction, kind, size, data, \
         close_code, event) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for e in &timeline.events {
        let direction = match e.direction {
            Some(Direction::ToFunction) => "in",
            Some(Direction::ToClient) => "out",
            None => "",
        };
        let kind = e.opcode.map_or(e.kind.as_str(), |o| o.as_str());
        // The payload goes to `data` as bytes; the rest of the event as JSON beside it.
        let data = e.payload();
        let mut rest = e.clone();
        rest.text = None;
        rest.binary_base64 = None;
        let event = serde_json::to_string(&rest).unwrap_or_else(|_| "{}".into());
        insert.execute(params![
            id,
            i64::try_from(e.seq).unwrap_or(i64::MAX),
            micros(e.at),
            direction,
            kind,
            i64::try_from(e.size).unwrap_or(i64::MAX),
            data,
            e.close_code,
            event,
        ])?;
    }
    tx.prepare_cached(
        "INSERT INTO frame_saves (request_id, function, dropped) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![
        id,
        timeline.function,
        i64::try_from(timeline.dropped).unwrap_or(i64::MAX)
    ])?;
    Ok(())
}

/// The saved timeline of `id`, if one was saved.
pub(crate) fn read_frames(conn: &Connection, id: &str) -> rusqlite::Result<Option<Timeline>> {
    let saved: Option<(String, i64)> = conn
        .prepare_cached("SELECT function, dropped FROM frame_saves WHERE request_id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((function, dropped)) = saved else {
        return Ok(None);
    };
    let mut stmt = conn
        .prepare_cached("SELECT event, data FROM frames WHERE request_id = ?1 ORDER BY frame_no")?;
    let events = stmt
        .query_map([id], |r| {
            let event: String = r.get(0)?;
            let data: Option<Vec<u8>> = r.get(1)?;
            Ok((event, data))
        })?
        .filter_map(|row| row.ok())
        .filter_map(|(event, data)| {
            let mut e: FrameEvent = serde_json::from_str(&event)
                .inspect_err(|error| tracing::warn!(%error, "skipping an unreadable frame"))
                .ok()?;
            if let (Some(data), Some(opcode)) = (data, e.opcode) {
                e.set_payload(opcode, &data);
            }
            Some(e)
        })
        .collect();
    Ok(Some(Timeline {
        request_id: id.parse().unwrap_or_default(),
        function,
        live: false,
        dropped: u64::try_from(dropped).unwrap_or(0),
        events,
    }))
}

/// Writes the current value of each aggregate row in `keys`.
pub(crate) fn write_aggregates<'a>(
    tx: &Transaction<'_>,
    aggregates: &Aggregates,
    keys: impl IntoIterator<Item = &'a AggregateKey>,
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO aggregates (function, status_code, end_reason, closed,
           invocations, messages_in, messages_out, bytes_in, bytes_out, throttled_messages,
           duration_count, duration_sum_ms, duration_buckets, startup_count, startup_sum_ms,
           startup_buckets)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?;
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for key in keys {
        let Some(row) = aggregates.rows.get(key) else {
            continue;
        };
        stmt.execute(params![
            key.function,
            key.status_code,
            key.end_reason,
            key.closed,
            n(row.invocations),
            n(row.messages_in),
            n(row.messages_out),
            n(row.bytes_in),
            n(row.bytes_out),
            n(row.throttled_messages),
            n(row.duration.count),
            n(row.duration.sum_ms),
            serde_json::to_string(&row.duration.counts).unwrap_or_default(),
            n(row.startup.count),
            n(row.startup.sum_ms),
            serde_json::to_string(&row.startup.counts).unwrap_or_default(),
        ])?;
    }
    Ok(())
}

pub(crate) fn read_aggregates(conn: &Connection) -> rusqlite::Result<Aggregates> {
    let mut stmt = conn.prepare(
        "SELECT function, status_code, end_reason, closed, invocations, messages_in,
           messages_out, bytes_in, bytes_out, throttled_messages, duration_count,
           duration_sum_ms, duration_buckets, startup_count, startup_sum_ms, startup_buckets
         FROM aggregates",
    )?;
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    let rows = stmt.query_map([], |r| {
        let buckets = |count: i64, sum: i64, json: String| Buckets {
            count: u(count),
            sum_ms: u(sum),
            counts: serde_json::from_str(&json).unwrap_or_default(),
        };
        Ok((
            AggregateKey {
                function: r.get(0)?,
                status_code: r.get(1)?,
                end_reason: r.get(2)?,
                closed: r.get(3)?,
            },
            AggregateRow {
                invocations: u(r.get(4)?),
                messages_in: u(r.get(5)?),
                messages_out: u(r.get(6)?),
                bytes_in: u(r.get(7)?),
                bytes_out: u(r.get(8)?),
                throttled_messages: u(r.get(9)?),
                duration: buckets(r.get(10)?, r.get(11)?, r.get(12)?),
                startup: buckets(r.get(13)?, r.get(14)?, r.get(15)?),
            },
        ))
    })?;
    let mut aggregates = Aggregates::default();
    for row in rows {
        let (key, row) = row?;
        aggregates.rows.insert(key, row);
    }
    Ok(aggregates)
}

/// Decodes the `record` column.
pub(crate) fn decode(json: &str) -> Option<Invocation> {
    match serde_json::from_str(json) {
        Ok(inv) => Some(inv),
        Err(error) => {
            tracing::warn!(%error, "skipping an unreadable record in the database");
            None
        }
    }
}
