//! The store's one writer: a thread that owns the writing connection, takes accepted records
//! from a channel and writes whatever has accumulated in one transaction (group commit), so
//! the connection path never waits for the disk. It also counts finished records into the
//! aggregates, completes retention a chunk at a time between batches, and when a write fails
//! keeps the batch (still queryable from the pending map) and tries again every second.
//!
//! Lifecycle: spawned by `SqliteStore::open_with`, stopped by `Msg::Stop` from the store's
//! `Drop` (after a last write attempt), or when every sender is gone.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use time::OffsetDateTime;
use uuid::Uuid;

use super::schema;
use super::{lock, Shared};
use crate::error::{chain, RecordError};
use crate::events::StoreEvent;
use crate::invocation::Invocation;
use crate::metrics::AggregateKey;
use crate::store::{micros, Degraded, Logs, Retention};
use crate::timeline::Timeline;

/// Records in one transaction at most: bounds how long one commit holds the write lock.
const MAX_BATCH: usize = 5_000;
/// Between two attempts while writes fail.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Records deleted per retention step; small enough that a batch of new records waits at most
/// one such step.
const RETENTION_CHUNK: i64 = 1_000;
/// How often age retention and the log count are checked.
const RETENTION_CHECK_EVERY: Duration = Duration::from_secs(10);

pub(super) enum Msg {
    Record {
        inv: Box<Invocation>,
        seq: i64,
        version: u64,
    },
    Logs {
        id: Uuid,
        logs: Logs,
        version: u64,
    },
    Frames {
        timeline: Box<Timeline>,
        version: u64,
    },
    /// Answered once every message sent before it is counted (aggregates up to date).
    Processed(SyncSender<()>),
    /// Answered once every message sent before it is written.
    Written(SyncSender<()>),
    Stop,
}

enum Op {
    Record {
        inv: Box<Invocation>,
        seq: i64,
        version: u64,
        json: String,
    },
    Logs {
        id: Uuid,
        logs: Logs,
        version: u64,
    },
    Frames {
        timeline: Box<Timeline>,
        version: u64,
    },
}

pub(super) struct Writer {
    pub conn: Connection,
    pub path: PathBuf,
    pub shared: Arc<Shared>,
    pub rx: Receiver<Msg>,
    pub retention: Retention,
    /// Rows in `invocations`, plus new ones in the backlog.
    pub records: u64,
    backlog: Vec<Op>,
    /// Ids in the backlog, and whether their latest version there is finished.
    in_backlog: HashMap<Uuid, bool>,
    touched: BTreeSet<AggregateKey>,
    waiters: Vec<SyncSender<()>>,
    retry_at: Option<Instant>,
    check_at: Instant,
}

impl Writer {
    pub fn new(
        conn: Connection,
        path: PathBuf,
        shared: Arc<Shared>,
        rx: Receiver<Msg>,
        retention: Retention,
        records: u64,
    ) -> Writer {
        Writer {
            conn,
            path,
            shared,
            rx,
            retention,
            records,
            backlog: Vec::new(),
            in_backlog: HashMap::new(),
            touched: BTreeSet::new(),
            waiters: Vec::new(),
            retry_at: None,
            check_at: Instant::now(),
        }
    }

    pub fn run(mut self) {
        loop {
            let now = Instant::now();
            let wake = match self.retry_at {
                Some(at) if !self.backlog.is_empty() => at,
                _ if self.records > self.retention.max_records as u64 => now,
                _ => self.check_at,
            };
            let mut stop = false;
            match self.rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(msg) => stop |= self.process(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stop = true,
            }
            // Group commit: whatever arrived meanwhile goes into the same transaction.
            while !stop && self.backlog.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(msg) => stop |= self.process(msg),
                    Err(_) => break,
                }
            }
            let retry_due = self.retry_at.map_or(true, |at| Instant::now() >= at);
            if !self.backlog.is_empty() && (retry_due || stop) {
                self.write();
            }
            if stop {
                if !self.backlog.is_empty() {
                    tracing::error!(
                        path = %self.path.display(),
                        records = self.backlog.len(),
                        "invocation records that could not be written before scfsim stopped \
                         are lost"
                    );
                }
                return;
            }
            if self.backlog.is_empty() {
                self.enforce_retention();
            }
        }
    }

    /// Takes one message into the backlog. True for `Stop`.
    fn process(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Record { inv, seq, version } => {
                let json = match serde_json::to_string(&inv) {
                    Ok(json) => json,
                    Err(source) => {
                        let err = RecordError::Encode {
                            request_id: inv.request_id,
                            source,
                        };
                        tracing::error!(error = %chain(&err), "invocation record dropped");
                        return false;
                    }
                };
                let id = inv.request_id;
                let stored = match self.in_backlog.get(&id) {
                    Some(finished) => Some(*finished),
                    None => self.finished_in_db(id),
                };
                if stored.is_none() {
                    self.records += 1;
                }
                if !inv.is_running() {
                    if stored == Some(true) {
                        tracing::warn!(request_id = %id, "invocation finished twice; counted once");
                    } else if let Some(key) = lock(&self.shared.aggregates).observe(&inv) {
                        self.touched.insert(key);
                    }
                }
                self.in_backlog.insert(id, !inv.is_running());
                self.backlog.push(Op::Record {
                    inv,
                    seq,
                    version,
                    json,
                });
            }
            Msg::Logs { id, logs, version } => self.backlog.push(Op::Logs { id, logs, version }),
            Msg::Frames { timeline, version } => {
                self.backlog.push(Op::Frames { timeline, version })
            }
            Msg::Processed(done) => {
                let _ = done.send(());
            }
            Msg::Written(done) => {
                if self.backlog.is_empty() {
                    let _ = done.send(());
                } else {
                    self.waiters.push(done);
                }
            }
            Msg::Stop => return true,
        }
        false
    }

    /// `Some(finished)` if the database has a row for `id`. A failed read counts as no row:
    /// the upsert still does the right thing, and at worst one record is counted twice.
    fn finished_in_db(&self, id: Uuid) -> Option<bool> {
        self.conn
            .prepare_cached("SELECT status_code IS NOT NULL FROM invocations WHERE request_id = ?1")
            .and_then(|mut stmt| {
                stmt.query_row([id.hyphenated().to_string()], |r| r.get(0))
                    .optional()
            })
            .unwrap_or(None)
    }

    fn write(&mut self) {
        match self.try_write() {
            Ok(()) => self.written(),
            Err(source) => {
                self.shared
                    .failed_writes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                let err = RecordError::Write {
                    path: self.path.clone(),
                    source: cause(source),
                };
                let mut degraded = lock(&self.shared.degraded);
                if degraded.is_none() {
                    // Once per episode, with the cause; the next line is when it ends.
                    tracing::error!(
                        error = %chain(&err),
                        pending = self.backlog.len(),
                        "cannot write invocation records; they stay queryable from memory and \
                         are written when writing works again (retrying every second)"
                    );
                    *degraded = Some(Degraded {
                        since: OffsetDateTime::now_utc(),
                        cause: chain(&err),
                    });
                }
                self.retry_at = Some(Instant::now() + RETRY_EVERY);
            }
        }
    }

    fn try_write(&mut self) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for op in &self.backlog {
            match op {
                Op::Record { inv, seq, json, .. } => schema::upsert(&tx, inv, *seq, json)?,
                Op::Logs { id, logs, .. } => {
                    schema::replace_logs(&tx, &id.hyphenated().to_string(), logs)?
                }
                Op::Frames { timeline, .. } => schema::replace_frames(&tx, timeline)?,
            }
        }
        // Every record counted in memory is in this transaction or an earlier one, so the
        // rows written here match the records on disk once it commits.
        let aggregates = lock(&self.shared.aggregates).clone();
        schema::write_aggregates(&tx, &aggregates, &self.touched)?;
        tx.commit()
    }

    /// After a successful write: drop what is now on disk from memory, then tell watchers.
    fn written(&mut self) {
        let count = self.backlog.len();
        // A saved timeline may put the store over keep_invocations: prune now, not at the
        // next periodic check, so that memory of old timelines is bounded by the setting.
        if self
            .backlog
            .iter()
            .any(|op| matches!(op, Op::Frames { .. }))
        {
            self.check_at = Instant::now();
        }
        {
            let mut pending = lock(&self.shared.pending);
            for op in &self.backlog {
                match op {
                    Op::Record { inv, version, .. } => {
                        if pending
                            .records
                            .get(&inv.request_id)
                            .is_some_and(|p| p.version == *version)
                        {
                            pending.records.remove(&inv.request_id);
                        }
                    }
                    Op::Logs { id, version, .. } => {
                        if pending.logs.get(id).is_some_and(|(_, v)| v == version) {
                            pending.logs.remove(id);
                        }
                    }
                    Op::Frames { timeline, version } => {
                        let id = &timeline.request_id;
                        if pending.frames.get(id).is_some_and(|(_, v)| v == version) {
                            pending.frames.remove(id);
                        }
                    }
                }
            }
        }
        for op in self.backlog.drain(..) {
            if let Op::Record { inv, .. } = op {
                if self.shared.events.receiver_count() > 0 {
                    let event = if inv.is_running() {
                        StoreEvent::Started(*inv)
                    } else {
                        StoreEvent::Ended(*inv)
                    };
                    // Err only if every receiver left since the check: nobody to tell.
                    let _ = self.shared.events.send(event);
                }
            }
        }
        self.in_backlog.clear();
        self.touched.clear();
        self.retry_at = None;
        for done in self.waiters.drain(..) {
            let _ = done.send(());
        }
        if let Some(was) = lock(&self.shared.degraded).take() {
            tracing::info!(
                path = %self.path.display(),
                written = count,
                degraded_since = %was.since,
                "writing invocation records again; the records kept in memory are written"
            );
        }
    }

    /// One step of retention: at most `RETENTION_CHUNK` records, then back to new records.
    fn enforce_retention(&mut self) {
        if lock(&self.shared.degraded).is_some() {
            return;
        }
        let excess = self
            .records
            .saturating_sub(self.retention.max_records as u64);
        if excess > 0 {
            let n = i64::try_from(excess)
                .unwrap_or(i64::MAX)
                .min(RETENTION_CHUNK);
            match self.delete(
                "DELETE FROM invocations WHERE seq IN \
                 (SELECT seq FROM invocations ORDER BY started_us, seq LIMIT ?1)",
                n,
            ) {
                Some(deleted) if deleted > 0 => self.records -= deleted.min(self.records),
                // Nothing deleted though the count says so: the count drifted; re-read it.
                _ => self.recount(),
            }
            return;
        }
        if Instant::now() < self.check_at {
            return;
        }
        let mut more = false;
        if let Some(age) = self.retention.max_age {
            let cutoff = micros(OffsetDateTime::now_utc() - age);
            let sql = format!(
                "DELETE FROM invocations WHERE seq IN (SELECT seq FROM invocations \
                 WHERE started_us < {cutoff} ORDER BY started_us LIMIT ?1)"
            );
            if let Some(deleted) = self.delete(&sql, RETENTION_CHUNK) {
                self.records = self.records.saturating_sub(deleted);
                more = deleted == RETENTION_CHUNK as u64;
            }
        }
        let logs: i64 = self
            .conn
            .query_row("SELECT count(*) FROM log_saves", [], |r| r.get(0))
            .unwrap_or(0);
        let keep = i64::try_from(self.retention.max_logged_invocations).unwrap_or(i64::MAX);
        if logs > keep {
            let sql = "DELETE FROM instance_logs WHERE request_id IN (SELECT request_id FROM \
                       log_saves ORDER BY seq LIMIT ?1)";
            let n = (logs - keep).min(RETENTION_CHUNK);
            if self.delete_logs(sql, n).is_some() {
                more |= logs - keep > RETENTION_CHUNK;
            }
        }
        let timelines: i64 = self
            .conn
            .query_row("SELECT count(*) FROM frame_saves", [], |r| r.get(0))
            .unwrap_or(0);
        let keep = i64::try_from(self.retention.max_timelines).unwrap_or(i64::MAX);
        if timelines > keep {
            let n = (timelines - keep).min(RETENTION_CHUNK);
            if self.delete_frames(n).is_some() {
                more |= timelines - keep > RETENTION_CHUNK;
            }
        }
        self.check_at = if more {
            Instant::now()
        } else {
            Instant::now() + RETENTION_CHECK_EVERY
        };
    }

    fn delete(&mut self, sql: &str, n: i64) -> Option<u64> {
        let result = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let deleted = tx.execute(sql, [n])?;
            tx.commit()?;
            Ok::<_, rusqlite::Error>(deleted as u64)
        })();
        result
            .inspect_err(|error| {
                tracing::warn!(%error, "retention: cannot delete old records now; trying later")
            })
            .ok()
    }

    fn delete_logs(&mut self, sql: &str, n: i64) -> Option<()> {
        let result = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(sql, [n])?;
            tx.execute(
                "DELETE FROM log_saves WHERE seq IN (SELECT seq FROM log_saves ORDER BY seq \
                 LIMIT ?1)",
                [n],
            )?;
            tx.commit()
        })();
        result
            .inspect_err(|error| {
                tracing::warn!(%error, "retention: cannot delete old logs now; trying later")
            })
            .ok()
    }

    /// Deletes the `n` oldest saved timelines (their records stay).
    fn delete_frames(&mut self, n: i64) -> Option<()> {
        let result = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM frames WHERE request_id IN (SELECT request_id FROM frame_saves \
                 ORDER BY seq LIMIT ?1)",
                [n],
            )?;
            tx.execute(
                "DELETE FROM frame_saves WHERE seq IN (SELECT seq FROM frame_saves ORDER BY \
                 seq LIMIT ?1)",
                [n],
            )?;
            tx.commit()
        })();
        result
            .inspect_err(|error| {
                tracing::warn!(%error, "retention: cannot delete old timelines now; trying later")
            })
            .ok()
    }

    fn recount(&mut self) {
        if let Ok(n) = self
            .conn
            .query_row("SELECT count(*) FROM invocations", [], |r| {
                r.get::<_, i64>(0)
            })
        {
            self.records = u64::try_from(n).unwrap_or(0);
        }
    }
}

/// The cause to show for a failed write. SQLite reports a write that failed with ENOSPC as
/// SQLITE_FULL and drops the OS's words; give them back, since that is what people search.
fn cause(err: rusqlite::Error) -> Box<dyn std::error::Error + Send + Sync> {
    if err.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        Box::new(std::io::Error::from_raw_os_error(libc::ENOSPC))
    } else {
        Box::new(err)
    }
}
