//! [`SqliteStore`]: the records in `data_dir/scfsim.db`, an SQLite database in WAL mode.
//!
//! # Who touches what
//! - Connection tasks call `begin`/`finish`/`save_logs`: the record goes into the pending map
//!   (queryable at once) and onto the writer's channel; nothing waits for the disk.
//! - One writer thread ([`writer`]) owns the writing connection and commits in batches.
//! - Readers (the admin API) take a connection from a small pool; WAL lets them read while the
//!   writer writes. Queries merge the database's rows with the pending map.
//! - `data_dir/scfsim.db.lock` carries an OFD lock for as long as the store is open, so a second
//!   scfsim on the same directory is refused instead of interleaving its records.

mod schema;
mod writer;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};
use time::OffsetDateTime;
use tokio::sync::broadcast;
use uuid::Uuid;

use self::writer::{Msg, Writer};
use super::import::{self, IMPORTED_SUFFIX, JOURNAL_FILE, LOGS_DIR};
use super::{
    micros, Degraded, Logs, OpenReport, Page, Position, Query, Retention, Search, Store,
    StoreHealth,
};
use crate::error::RecordError;
use crate::events::StoreEvent;
use crate::invocation::{Invocation, LogLine};
use crate::metrics::Aggregates;
use crate::outcome::EndReason;
use crate::timeline::Timeline;

pub use schema::SCHEMA_VERSION;

/// The database file in `data_dir`.
pub const DB_FILE: &str = "scfsim.db";
const LOCK_FILE: &str = "scfsim.db.lock";
/// Records and logs kept in memory while they cannot be written (a full disk), at most: about
/// 100 MB of records. Past it new records are refused (`RecordError::Backlog`).
pub const PENDING_LIMIT: usize = 100_000;
/// Events a subscriber may fall behind by before it loses the oldest ones. A watcher that lags
/// this far (a stalled browser tab) skips ahead; the writer never waits for it.
const EVENT_CAPACITY: usize = 1024;
/// Idle reader connections kept for the next query.
const READERS_KEPT: usize = 4;
/// How long `aggregates` waits for the writer to count what was accepted before it.
const COUNT_PATIENCE: Duration = Duration::from_secs(5);

/// What the store's callers and its writer share.
pub(super) struct Shared {
    pending: Mutex<Pending>,
    aggregates: Mutex<Aggregates>,
    events: broadcast::Sender<StoreEvent>,
    degraded: Mutex<Option<Degraded>>,
    failed_writes: AtomicU64,
    refused: AtomicU64,
}

/// Accepted and not yet written; each entry carries the version the writer must have written
/// before it may be dropped (a later `finish` replaces a `begin` still waiting).
#[derive(Default)]
struct Pending {
    records: HashMap<Uuid, PendingRecord>,
    logs: HashMap<Uuid, (Logs, u64)>,
    frames: HashMap<Uuid, (Timeline, u64)>,
}

impl Pending {
    fn len(&self) -> usize {
        self.records.len() + self.logs.len() + self.frames.len()
    }
}

struct PendingRecord {
    inv: Invocation,
    seq: i64,
    version: u64,
}

/// Invocation records in SQLite. See the module documentation.
pub struct SqliteStore {
    shared: Arc<Shared>,
    /// Sent to under the `pending` lock, so the writer sees versions of one id in order.
    tx: mpsc::Sender<Msg>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    /// `seq` of invocations begun and not finished, so `finish` keeps their place.
    running: Mutex<HashMap<Uuid, i64>>,
    next_seq: AtomicI64,
    next_version: AtomicU64,
    pending_limit: usize,
    path: PathBuf,
    /// Holds the OFD lock until the store is dropped.
    _lock: File,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir` with the default retention.
    pub fn open(data_dir: &Path) -> Result<(SqliteStore, OpenReport), RecordError> {
        Self::open_with(data_dir, Retention::default())
    }

    /// Opens the store: takes the directory's lock, checks or creates the database, imports an
    /// older scfsim's journal once, completes invocations that were running when scfsim died
    /// as `gateway_crashed`, and starts the writer.
    pub fn open_with(
        data_dir: &Path,
        keep: Retention,
    ) -> Result<(SqliteStore, OpenReport), RecordError> {
        // Taken first: a crashed invocation ends no later than the moment we noticed it.
        let opened_at = OffsetDateTime::now_utc();
        fs::create_dir_all(data_dir).map_err(RecordError::io(data_dir))?;
        let path = data_dir.join(DB_FILE);
        let lock_file = take_lock(&data_dir.join(LOCK_FILE), &path)?;
        let mut conn = Connection::open(&path).map_err(RecordError::db(&path))?;
        schema::configure(&conn).map_err(RecordError::db(&path))?;
        schema::prepare(&mut conn, &path)?;
        let db = RecordError::db(&path);

        let mut aggregates = schema::read_aggregates(&conn).map_err(RecordError::db(&path))?;
        let mut report = OpenReport::default();
        let journal = data_dir.join(JOURNAL_FILE);
        if journal.exists() {
            let (imported, skipped) = import_journal(&mut conn, data_dir, &mut aggregates)
                .map_err(|e| match e {
                    ImportError::Record(e) => e,
                    ImportError::Db(e) => RecordError::db(&path)(e),
                })?;
            report.imported = imported;
            report.skipped_lines = skipped;
            tracing::info!(
                from = %journal.display(),
                records = imported,
                "imported the invocation journal of an older scfsim; it is kept as {}{}",
                JOURNAL_FILE,
                IMPORTED_SUFFIX
            );
        }
        report.crashed_completed = complete_crashed(&mut conn, opened_at, &mut aggregates)
            .map_err(RecordError::db(&path))?;

        let (count, max_seq): (i64, i64) = conn
            .query_row(
                "SELECT count(*), coalesce(max(seq), 0) FROM invocations",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db)?;
        report.loaded = usize::try_from(count).unwrap_or(0);

        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            aggregates: Mutex::new(aggregates),
            events: broadcast::channel(EVENT_CAPACITY).0,
            degraded: Mutex::new(None),
            failed_writes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer::new(
            conn,
            path.clone(),
            shared.clone(),
            rx,
            Retention {
                max_records: keep.max_records.max(1),
                ..keep
            },
            u64::try_from(count).unwrap_or(0),
        );
        let handle = std::thread::Builder::new()
            .name("scfsim-records".into())
            .spawn(move || writer.run())
            .map_err(RecordError::io(&path))?;
        let store = SqliteStore {
            shared,
            tx,
            writer: Mutex::new(Some(handle)),
            readers: Mutex::new(Vec::new()),
            running: Mutex::new(HashMap::new()),
            next_seq: AtomicI64::new(max_seq + 1),
            next_version: AtomicU64::new(1),
            pending_limit: PENDING_LIMIT,
            path,
            _lock: lock_file,
        };
        Ok((store, report))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records that `inv` has started; queryable on return, written by the writer soon after.
    pub fn begin(&self, inv: &Invocation) -> Result<(), RecordError> {
        let id = inv.request_id;
        let seq = {
            let mut running = lock(&self.running);
            // Best effort against a caller bug: request ids are v4 UUIDs.
            if running.contains_key(&id) || lock(&self.shared.pending).records.contains_key(&id) {
                return Err(RecordError::AlreadyRecorded { request_id: id });
            }
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            running.insert(id, seq);
            seq
        };
        self.accept(inv.clone(), seq).inspect_err(|_| {
            lock(&self.running).remove(&id);
        })
    }

    /// Records the complete invocation (also without a prior `begin`, for invocations that
    /// never got to start). Queryable on return.
    pub fn finish(&self, inv: Invocation) -> Result<(), RecordError> {
        if inv.is_running() {
            return Err(RecordError::NotFinished {
                request_id: inv.request_id,
            });
        }
        let id = inv.request_id;
        let known = lock(&self.running).remove(&id);
        let seq = known
            .or_else(|| lock(&self.shared.pending).records.get(&id).map(|p| p.seq))
            .unwrap_or_else(|| self.next_seq.fetch_add(1, Ordering::Relaxed));
        self.accept(inv, seq)
    }

    fn accept(&self, inv: Invocation, seq: i64) -> Result<(), RecordError> {
        let id = inv.request_id;
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        let mut pending = lock(&self.shared.pending);
        if !pending.records.contains_key(&id) && pending.len() >= self.pending_limit {
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            return Err(RecordError::Backlog {
                request_id: id,
                pending: pending.len(),
                path: self.path.clone(),
            });
        }
        pending.records.insert(
            id,
            PendingRecord {
                inv: inv.clone(),
                seq,
                version,
            },
        );
        self.tx
            .send(Msg::Record {
                inv: Box::new(inv),
                seq,
                version,
            })
            .map_err(|_| RecordError::WriterStopped)
    }

    /// The first page of `q`, newest first. A read error is logged and gives the records in
    /// memory only; [`Store::search`] reports it instead.
    pub fn query(&self, q: &Query) -> Vec<Invocation> {
        match self.search(&Search::from(q)) {
            Ok(page) => page.records,
            Err(err) => {
                tracing::error!(error = %crate::error::chain(&err), "cannot query records");
                Vec::new()
            }
        }
    }

    /// One record. A read error is logged and reads as unknown; [`Store::find`] reports it.
    pub fn get(&self, id: Uuid) -> Option<Invocation> {
        self.find(id).unwrap_or_else(|err| {
            tracing::error!(error = %crate::error::chain(&err), "cannot read a record");
            None
        })
    }

    /// Records in the store, written or not.
    pub fn len(&self) -> usize {
        let pending: Vec<String> = lock(&self.shared.pending)
            .records
            .keys()
            .map(|id| id.hyphenated().to_string())
            .collect();
        let counted = self.read(|conn| {
            // One read transaction, so the count and the lookups see the same snapshot: a
            // pending record the writer commits between two statements would otherwise be
            // missing from the count and found by its lookup, and counted by neither.
            let snapshot = conn.unchecked_transaction()?;
            let written: i64 =
                snapshot.query_row("SELECT count(*) FROM invocations", [], |r| r.get(0))?;
            let mut exists =
                snapshot.prepare_cached("SELECT 1 FROM invocations WHERE request_id = ?1")?;
            let mut unwritten = 0;
            for id in &pending {
                if !exists.exists([id])? {
                    unwritten += 1;
                }
            }
            Ok(usize::try_from(written).unwrap_or(0) + unwritten)
        });
        counted.unwrap_or_else(|err| {
            tracing::error!(error = %crate::error::chain(&err), "cannot count records");
            pending.len()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn save_logs(&self, id: Uuid, lines: &[LogLine], dropped: u64) -> Result<(), RecordError> {
        let logs = Logs {
            lines: lines.to_vec(),
            dropped,
        };
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        let mut pending = lock(&self.shared.pending);
        if !pending.logs.contains_key(&id) && pending.len() >= self.pending_limit {
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            return Err(RecordError::Backlog {
                request_id: id,
                pending: pending.len(),
                path: self.path.clone(),
            });
        }
        pending.logs.insert(id, (logs.clone(), version));
        self.tx
            .send(Msg::Logs { id, logs, version })
            .map_err(|_| RecordError::WriterStopped)
    }

    pub fn save_frames(&self, timeline: Timeline) -> Result<(), RecordError> {
        let id = timeline.request_id;
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        let mut pending = lock(&self.shared.pending);
        if !pending.frames.contains_key(&id) && pending.len() >= self.pending_limit {
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            return Err(RecordError::Backlog {
                request_id: id,
                pending: pending.len(),
                path: self.path.clone(),
            });
        }
        pending.frames.insert(id, (timeline.clone(), version));
        self.tx
            .send(Msg::Frames {
                timeline: Box::new(timeline),
                version,
            })
            .map_err(|_| RecordError::WriterStopped)
    }

    pub fn frames(&self, id: Uuid) -> Result<Option<Timeline>, RecordError> {
        if let Some((timeline, _)) = lock(&self.shared.pending).frames.get(&id) {
            return Ok(Some(timeline.clone()));
        }
        let key = id.hyphenated().to_string();
        self.read(|conn| schema::read_frames(conn, &key))
    }

    pub fn find(&self, id: Uuid) -> Result<Option<Invocation>, RecordError> {
        if let Some(p) = lock(&self.shared.pending).records.get(&id) {
            return Ok(Some(p.inv.clone()));
        }
        self.read(|conn| {
            let json: Option<String> = conn
                .prepare_cached("SELECT record FROM invocations WHERE request_id = ?1")?
                .query_row([id.hyphenated().to_string()], |r| r.get(0))
                .optional()?;
            Ok(json.as_deref().and_then(schema::decode))
        })
    }

    pub fn search(&self, q: &Search) -> Result<Page, RecordError> {
        let limit = q.effective_limit();
        let after = q.cursor.as_deref().map(Position::parse).transpose()?;
        let before_cursor = |p: Position| after.map_or(true, |a| p < a);
        // Pending versions replace the database's (a `finish` not yet written, say).
        let (mut found, replaced): (Vec<(Position, Invocation)>, HashSet<Uuid>) = {
            let pending = lock(&self.shared.pending);
            let found = pending
                .records
                .values()
                .map(|p| (position(&p.inv, p.seq), &p.inv))
                .filter(|(pos, inv)| before_cursor(*pos) && q.matches(inv))
                .map(|(pos, inv)| (pos, inv.clone()))
                .collect();
            (found, pending.records.keys().copied().collect())
        };
        // One more than asked tells whether there is a next page; the replaced ones may be
        // among the rows and are skipped.
        let fetch = limit + 1 + replaced.len().min(1000);
        let rows = self.read(|conn| select(conn, q, after, fetch))?;
        found.extend(
            rows.into_iter()
                .filter(|(_, inv)| !replaced.contains(&inv.request_id)),
        );
        found.sort_by_key(|(pos, _)| std::cmp::Reverse(*pos));
        let next_cursor = if found.len() > limit {
            found.truncate(limit);
            found.last().map(|(pos, _)| pos.cursor())
        } else {
            None
        };
        Ok(Page {
            records: found.into_iter().map(|(_, inv)| inv).collect(),
            next_cursor,
        })
    }

    pub fn logs(&self, id: Uuid) -> Result<Option<Logs>, RecordError> {
        if let Some((logs, _)) = lock(&self.shared.pending).logs.get(&id) {
            return Ok(Some(logs.clone()));
        }
        let key = id.hyphenated().to_string();
        if let Some(logs) = self.read(|conn| schema::read_logs(conn, &key))? {
            return Ok(Some(logs));
        }
        Ok(self.find(id)?.map(|_| Logs::default()))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.shared.events.subscribe()
    }

    /// Every finished record summed, including those accepted before this call and not yet
    /// written (it waits, briefly, for the writer to count them).
    pub fn aggregates(&self) -> Aggregates {
        let (done, counted) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Processed(done)).is_ok() {
            let _ = counted.recv_timeout(COUNT_PATIENCE);
        }
        lock(&self.shared.aggregates).clone()
    }

    pub fn health(&self) -> StoreHealth {
        StoreHealth {
            degraded: lock(&self.shared.degraded).clone(),
            pending: lock(&self.shared.pending).len(),
            pending_limit: self.pending_limit,
            failed_writes: self.shared.failed_writes.load(Ordering::Relaxed),
            refused_records: self.shared.refused.load(Ordering::Relaxed),
            location: self.path.display().to_string(),
        }
    }

    /// Waits up to `bound` until everything accepted before the call is written.
    pub fn flush(&self, bound: Duration) -> bool {
        let (done, written) = mpsc::sync_channel(1);
        self.tx.send(Msg::Written(done)).is_ok() && written.recv_timeout(bound).is_ok()
    }

    /// Runs `f` on a reader connection from the pool (opened on demand).
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, RecordError> {
        let conn = lock(&self.readers).pop();
        let conn = match conn {
            Some(conn) => conn,
            None => open_reader(&self.path).map_err(RecordError::db(&self.path))?,
        };
        let result = f(&conn).map_err(RecordError::db(&self.path));
        let mut readers = lock(&self.readers);
        if readers.len() < READERS_KEPT {
            readers.push(conn);
        }
        result
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(handle) = lock(&self.writer).take() {
            let _ = handle.join();
        }
    }
}

impl Store for SqliteStore {
    fn begin(&self, inv: &Invocation) -> Result<(), RecordError> {
        SqliteStore::begin(self, inv)
    }
    fn finish(&self, inv: Invocation) -> Result<(), RecordError> {
        SqliteStore::finish(self, inv)
    }
    fn save_logs(&self, id: Uuid, lines: &[LogLine], dropped: u64) -> Result<(), RecordError> {
        SqliteStore::save_logs(self, id, lines, dropped)
    }
    fn save_frames(&self, timeline: Timeline) -> Result<(), RecordError> {
        SqliteStore::save_frames(self, timeline)
    }
    fn frames(&self, id: Uuid) -> Result<Option<Timeline>, RecordError> {
        SqliteStore::frames(self, id)
    }
    fn find(&self, id: Uuid) -> Result<Option<Invocation>, RecordError> {
        SqliteStore::find(self, id)
    }
    fn search(&self, q: &Search) -> Result<Page, RecordError> {
        SqliteStore::search(self, q)
    }
    fn logs(&self, id: Uuid) -> Result<Option<Logs>, RecordError> {
        SqliteStore::logs(self, id)
    }
    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        SqliteStore::subscribe(self)
    }
    fn aggregates(&self) -> Aggregates {
        SqliteStore::aggregates(self)
    }
    fn health(&self) -> StoreHealth {
        SqliteStore::health(self)
    }
    fn flush(&self, bound: Duration) -> bool {
        SqliteStore::flush(self, bound)
    }
}

fn position(inv: &Invocation, seq: i64) -> Position {
    Position {
        started_us: micros(inv.started_at),
        seq,
    }
}

fn select(
    conn: &Connection,
    q: &Search,
    after: Option<Position>,
    limit: usize,
) -> rusqlite::Result<Vec<(Position, Invocation)>> {
    let mut sql = String::from("SELECT started_us, seq, record FROM invocations WHERE 1 = 1");
    let mut args: Vec<Value> = Vec::new();
    if let Some(f) = &q.function {
        sql.push_str(" AND function = ?");
        args.push(Value::Text(f.clone()));
    }
    if let Some(code) = q.status_code {
        sql.push_str(" AND status_code = ?");
        args.push(Value::Integer(code.into()));
    }
    if let Some(r) = &q.end_reason {
        sql.push_str(" AND end_reason = ?");
        args.push(Value::Text(r.clone()));
    }
    if let Some(t) = q.since {
        sql.push_str(" AND started_us >= ?");
        args.push(Value::Integer(micros(t)));
    }
    if let Some(t) = q.until {
        sql.push_str(" AND started_us < ?");
        args.push(Value::Integer(micros(t)));
    }
    if let Some(a) = after {
        sql.push_str(" AND (started_us, seq) < (?, ?)");
        args.push(Value::Integer(a.started_us));
        args.push(Value::Integer(a.seq));
    }
    sql.push_str(" ORDER BY started_us DESC, seq DESC LIMIT ?");
    args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
        Ok((
            Position {
                started_us: r.get(0)?,
                seq: r.get(1)?,
            },
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (pos, json) = row?;
        if let Some(inv) = schema::decode(&json) {
            out.push((pos, inv));
        }
    }
    Ok(out)
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    schema::configure(&conn)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// An OFD write lock on `lock_path` (not inherited by instances across exec, released by the
/// kernel when scfsim dies, and exclusive even between two stores in one process).
fn take_lock(lock_path: &Path, db_path: &Path) -> Result<File, RecordError> {
    use nix::errno::Errno;
    use nix::fcntl::{fcntl, FcntlArg};
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock_path)
        .map_err(RecordError::io(lock_path))?;
    let flock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    match fcntl(&file, FcntlArg::F_OFD_SETLK(&flock)) {
        Ok(_) => Ok(file),
        Err(Errno::EAGAIN | Errno::EACCES) => Err(RecordError::Locked {
            path: db_path.to_owned(),
        }),
        Err(errno) => Err(RecordError::Io {
            path: lock_path.to_owned(),
            source: errno.into(),
        }),
    }
}

enum ImportError {
    Record(RecordError),
    Db(rusqlite::Error),
}

impl From<rusqlite::Error> for ImportError {
    fn from(e: rusqlite::Error) -> Self {
        ImportError::Db(e)
    }
}

/// Imports `invocations.jsonl` and `logs/` of an older scfsim in one transaction, then renames
/// them aside. Records already in the database (an import interrupted after its commit) are
/// not imported or counted twice. Returns (records imported, lines skipped).
fn import_journal(
    conn: &mut Connection,
    data_dir: &Path,
    aggregates: &mut Aggregates,
) -> Result<(usize, usize), ImportError> {
    let journal_path = data_dir.join(JOURNAL_FILE);
    let journal = import::read_journal(&journal_path).map_err(ImportError::Record)?;
    let logs = import::read_logs(&data_dir.join(LOGS_DIR));
    let tx = conn.transaction()?;
    let mut seq: i64 = tx.query_row("SELECT coalesce(max(seq), 0) FROM invocations", [], |r| {
        r.get(0)
    })?;
    let mut touched = std::collections::BTreeSet::new();
    let mut imported = 0;
    for inv in &journal.records {
        let exists: bool = tx
            .prepare_cached("SELECT 1 FROM invocations WHERE request_id = ?1")?
            .exists([inv.request_id.hyphenated().to_string()])?;
        if exists {
            continue;
        }
        seq += 1;
        let json = serde_json::to_string(inv).map_err(|source| {
            ImportError::Record(RecordError::Encode {
                request_id: inv.request_id,
                source,
            })
        })?;
        schema::upsert(&tx, inv, seq, &json)?;
        if let Some(key) = aggregates.observe(inv) {
            touched.insert(key);
        }
        imported += 1;
    }
    for (id, logs) in &logs {
        schema::replace_logs(&tx, &id.hyphenated().to_string(), logs)?;
    }
    schema::write_aggregates(&tx, aggregates, &touched)?;
    tx.commit()?;
    for name in [JOURNAL_FILE, LOGS_DIR] {
        let from = data_dir.join(name);
        if from.exists() {
            let to = aside(data_dir, name);
            fs::rename(&from, &to).map_err(|e| ImportError::Record(RecordError::io(&from)(e)))?;
        }
    }
    Ok((imported, journal.skipped_lines))
}

/// `NAME.imported`, or `NAME.imported.N` if an earlier import already left that.
fn aside(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(format!("{name}{IMPORTED_SUFFIX}"));
    if !first.exists() {
        return first;
    }
    (1..)
        .map(|n| dir.join(format!("{name}{IMPORTED_SUFFIX}.{n}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// Completes every record still running as `gateway_crashed`; returns how many.
fn complete_crashed(
    conn: &mut Connection,
    at: OffsetDateTime,
    aggregates: &mut Aggregates,
) -> rusqlite::Result<usize> {
    let tx = conn.transaction()?;
    let running: Vec<(i64, String)> = tx
        .prepare("SELECT seq, record FROM invocations WHERE status_code IS NULL ORDER BY seq")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut touched = std::collections::BTreeSet::new();
    let mut completed = 0;
    for (seq, json) in running {
        let Some(mut inv) = schema::decode(&json) else {
            continue;
        };
        inv.finish(&EndReason::GatewayCrashed, at);
        let Ok(json) = serde_json::to_string(&inv) else {
            continue;
        };
        schema::upsert(&tx, &inv, seq, &json)?;
        if let Some(key) = aggregates.observe(&inv) {
            touched.insert(key);
        }
        completed += 1;
    }
    schema::write_aggregates(&tx, aggregates, &touched)?;
    tx.commit()?;
    Ok(completed)
}

/// A poisoned lock only means another thread panicked mid-operation; every critical section here
/// leaves the data consistent at each step, so carrying on beats losing all later records.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
