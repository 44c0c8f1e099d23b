//! The durable record store.
//!
//! # Layout on disk
//! - `<data_dir>/invocations.jsonl`: the journal, append-only, one JSON object per line:
//!   `{"event":"start","invocation":{..}}` when a connection arrives, and
//!   `{"event":"end","invocation":{..}}` with the complete record when it ends. An invocation
//!   that never started an instance (quota, ...) may have only an end line. The last line for an
//!   id wins.
//! - `<data_dir>/logs/<request_id>.jsonl`: the instance's log, one [`LogLine`] per line, plus a
//!   final `{"dropped":N}` line when the gateway had to drop lines.
//!
//! # Lifecycle
//! The binary opens one `RecordStore` at start and shares it (behind an `Arc`) with every
//! connection task. [`RecordStore::open`] replays the journal into the in-memory index, and
//! every start line without an end line is an invocation that was running when scfsim died: it
//! is completed as `gateway_crashed` and that end line is appended, so the next open sees a
//! complete record and does not complete it again.
//!
//! # Watching
//! Every `begin` and `finish` is announced as a [`StoreEvent`] to [`RecordStore::subscribe`]rs,
//! and every finished record (replayed, crash-completed or new) feeds [`StoreMetrics`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::error::RecordError;
use crate::events::StoreEvent;
use crate::invocation::{Invocation, LogLine};
use crate::metrics::StoreMetrics;
use crate::outcome::EndReason;

const JOURNAL_FILE: &str = "invocations.jsonl";
const LOGS_DIR: &str = "logs";
/// How many records the in-memory index keeps; older ones stay in the journal only. Bounds the
/// memory of a long-running scfsim (a record is well under 1 KB).
const MEMORY_RETENTION: usize = 100_000;

/// How much history the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Records kept (in memory and, after compaction, in the journal): the newest ones.
    pub max_records: usize,
    /// Invocations whose instance log is kept on disk: the newest ones.
    pub max_logged_invocations: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_records: MEMORY_RETENTION,
            max_logged_invocations: 10_000,
        }
    }
}
/// Events a subscriber may fall behind by before it loses the oldest ones. A watcher that lags
/// this far (a stalled browser tab) skips ahead; writers never wait for it.
const EVENT_CAPACITY: usize = 1024;

/// What [`RecordStore::open`] found in the journal.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OpenReport {
    /// Distinct invocations read back, including those completed as crashed.
    pub loaded: usize,
    /// Invocations that were running when scfsim died, now completed as `gateway_crashed`.
    pub crashed_completed: usize,
    /// Lines that could not be parsed (a torn last write, a garbled line); they are left in
    /// place and skipped again at every open.
    pub skipped_lines: usize,
}

/// Filters for [`RecordStore::query`], AND-ed. Deserializable from the admin API's query string.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Query {
    pub function: Option<String>,
    pub status_code: Option<u16>,
    /// Defaults to [`Query::DEFAULT_LIMIT`], capped at [`Query::MAX_LIMIT`].
    pub limit: Option<usize>,
}

impl Query {
    pub const DEFAULT_LIMIT: usize = 100;
    pub const MAX_LIMIT: usize = 10_000;

    fn matches(&self, inv: &Invocation) -> bool {
        // `Option::is_none_or` would read better but is newer than the workspace's MSRV.
        let function_ok = match &self.function {
            Some(f) => *f == inv.function,
            None => true,
        };
        let status_ok = match self.status_code {
            Some(code) => inv.status_code.map(|s| s.0) == Some(code),
            None => true,
        };
        function_ok && status_ok
    }
}

/// An invocation's log as saved by [`RecordStore::save_logs`].
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Logs {
    pub lines: Vec<LogLine>,
    /// Lines the gateway dropped (over its buffer limit) and that are not in `lines`.
    pub dropped: u64,
}

/// Invocation records: an append-only journal plus an in-memory index for queries.
///
/// Two locks, never held together: `journal` serializes appends so lines never interleave, and
/// `index` guards the query view. Neither is held across anything slower than one `write(2)`
/// or an in-memory copy, so concurrent connection tasks only wait on each other's writes.
/// Metrics are fed under the `index` lock as a record finishes (they have their own locks, and
/// nothing takes them before `index`), so a record that queries can see is already counted.
/// Events are sent after both, so whoever receives one can already query its record.
pub struct RecordStore {
    journal_path: PathBuf,
    logs_dir: PathBuf,
    journal: Mutex<Journal>,
    index: Mutex<Index>,
    /// Ids with a saved log, oldest first, for `max_logged_invocations`.
    logged: Mutex<VecDeque<Uuid>>,
    retention: Retention,
    metrics: StoreMetrics,
    events: broadcast::Sender<StoreEvent>,
}

#[derive(Serialize)]
#[serde(tag = "event", content = "invocation", rename_all = "snake_case")]
enum EntryOut<'a> {
    Start(&'a Invocation),
    End(&'a Invocation),
}

#[derive(Deserialize)]
#[serde(tag = "event", content = "invocation", rename_all = "snake_case")]
enum EntryIn {
    Start(Invocation),
    End(Invocation),
}

impl RecordStore {
    /// Opens (creating if needed) the store in `data_dir` and replays its journal. Unreadable
    /// lines are skipped and counted, never fatal: a torn last line is what a kill in the middle
    /// of a write leaves, and it must not keep scfsim from starting.
    pub fn open(data_dir: &Path) -> Result<(RecordStore, OpenReport), RecordError> {
        Self::open_with(data_dir, Retention::default())
    }

    /// [`open`](Self::open) with explicit retention.
    pub fn open_with(
        data_dir: &Path,
        keep: Retention,
    ) -> Result<(RecordStore, OpenReport), RecordError> {
        let retention = keep.max_records.max(1);
        // Taken first: a crashed invocation ends no later than the moment we noticed it.
        let opened_at = OffsetDateTime::now_utc();
        let journal_path = data_dir.join(JOURNAL_FILE);
        let logs_dir = data_dir.join(LOGS_DIR);
        fs::create_dir_all(&logs_dir).map_err(RecordError::io(&logs_dir))?;

        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&journal_path)
            .map_err(RecordError::io(&journal_path))?;

        let mut index = Index::new(retention);
        let mut report = OpenReport::default();
        let mut seen = HashSet::new();
        // Started but not (yet) ended, with the line they started on, to complete them in
        // journal order. Kept apart from the index so retention cannot make us forget one.
        let mut running: HashMap<Uuid, (usize, Invocation)> = HashMap::new();
        let mut ends_with_newline = true;
        let metrics = StoreMetrics::default();
        let mut counted = HashSet::new();

        let mut reader = BufReader::new(&file);
        let mut buf = Vec::new();
        let mut line_no = 0usize;
        loop {
            buf.clear();
            // Bytes, not `lines()`: a torn write can cut a UTF-8 sequence in half.
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(RecordError::io(&journal_path))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            ends_with_newline = buf.last() == Some(&b'\n');
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<EntryIn>(&buf) {
                Ok(EntryIn::Start(inv)) => {
                    // A start after the id is known would turn a finished record back into a
                    // running one; the first start is the real one.
                    if seen.insert(inv.request_id) {
                        running.insert(inv.request_id, (line_no, inv.clone()));
                        index.upsert(inv);
                    }
                }
                Ok(EntryIn::End(inv)) => {
                    seen.insert(inv.request_id);
                    running.remove(&inv.request_id);
                    // Counted at its first end only, as `finish` does; a second end line for
                    // one id (a hand edit) replaces the record but is not counted twice.
                    if counted.insert(inv.request_id) {
                        metrics.observe(&inv);
                    }
                    index.upsert(inv);
                }
                Err(error) => {
                    report.skipped_lines += 1;
                    tracing::warn!(
                        path = %journal_path.display(),
                        line = line_no,
                        %error,
                        "skipping unreadable invocation record line"
                    );
                }
            }
        }
        drop(reader);
        report.loaded = seen.len();

        let logged = existing_logs(&logs_dir);
        let store = RecordStore {
            journal_path,
            logs_dir,
            journal: Mutex::new(Journal {
                file,
                // Without this, the next append would glue itself onto a torn last line and be
                // lost with it.
                needs_newline: !ends_with_newline,
                lines: line_no,
            }),
            index: Mutex::new(index),
            logged: Mutex::new(logged),
            retention: Retention {
                max_records: retention,
                ..keep
            },
            metrics,
            // Nobody can subscribe before `open` returns, so the completions below send nothing.
            events: broadcast::channel(EVENT_CAPACITY).0,
        };

        let mut crashed: Vec<_> = running.into_values().collect();
        crashed.sort_by_key(|(line, _)| *line);
        for (_, mut inv) in crashed {
            inv.finish(&EndReason::GatewayCrashed, opened_at);
            store.journaled(EntryOut::End(&inv), inv.request_id, |index| {
                store.metrics.observe(&inv);
                index.upsert(inv.clone());
            })?;
            report.crashed_completed += 1;
        }
        {
            let mut journal = lock(&store.journal);
            store.compact_if_needed(&mut journal)?;
        }
        store.prune_logs();

        Ok((store, report))
    }

    /// Records that `inv` has started: the start line reaches the OS before this returns, so a
    /// crash from here on is completed as `gateway_crashed` at the next open.
    pub fn begin(&self, inv: &Invocation) -> Result<(), RecordError> {
        // Best effort against a caller bug, not a guarantee under races: request ids are v4
        // UUIDs, so two concurrent begins of one id do not happen in practice.
        if lock(&self.index).contains(inv.request_id) {
            return Err(RecordError::AlreadyRecorded {
                request_id: inv.request_id,
            });
        }
        self.journaled(EntryOut::Start(inv), inv.request_id, |index| {
            index.upsert(inv.clone())
        })?;
        self.announce(|| StoreEvent::Started(inv.clone()));
        Ok(())
    }

    /// Records the complete invocation; visible in queries once its end line is written. Also
    /// valid without a prior [`begin`](Self::begin), for invocations that never got to start.
    pub fn finish(&self, inv: Invocation) -> Result<(), RecordError> {
        if inv.is_running() {
            return Err(RecordError::NotFinished {
                request_id: inv.request_id,
            });
        }
        self.journaled(EntryOut::End(&inv), inv.request_id, |index| {
            // Counted before it becomes queryable, under the index lock: whoever can read the
            // record from `query`/`get` also finds it in the metrics. Same rule as at open: an
            // invocation is counted at its first end.
            if index
                .get(inv.request_id)
                .is_some_and(|old| !old.is_running())
            {
                let request_id = inv.request_id;
                tracing::warn!(%request_id, "invocation finished twice; counted once");
            } else {
                self.metrics.observe(&inv);
            }
            index.upsert(inv.clone());
        })?;
        self.announce(|| StoreEvent::Ended(inv));
        Ok(())
    }

    /// Events for every later `begin` and `finish`: per invocation `Started` before `Ended`;
    /// across concurrent invocations, in about the order their lines were written (events are
    /// sent after the write, outside its lock). A receiver that falls more than 1024 events
    /// behind gets `RecvError::Lagged` and continues with the oldest it still has.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    /// The Prometheus families fed by the stored records.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// Sends an event if anyone listens; the record is only cloned then.
    fn announce(&self, event: impl FnOnce() -> StoreEvent) {
        if self.events.receiver_count() > 0 {
            // Err only if every receiver was dropped since the check: nobody to tell.
            let _ = self.events.send(event());
        }
    }

    pub fn get(&self, id: Uuid) -> Option<Invocation> {
        lock(&self.index).get(id).cloned()
    }

    /// Newest first (by `started_at`, then by the order the store first saw them).
    pub fn query(&self, q: &Query) -> Vec<Invocation> {
        let limit = q
            .limit
            .unwrap_or(Query::DEFAULT_LIMIT)
            .min(Query::MAX_LIMIT);
        lock(&self.index)
            .by_start
            .values()
            .rev()
            .filter(|inv| q.matches(inv))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Number of records in memory (at most the retention, 100 000).
    pub fn len(&self) -> usize {
        lock(&self.index).by_start.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Saves the instance's log for `id`, replacing any earlier save. Written to a temporary
    /// file and renamed, so a reader (or a crash) sees the old log or the new one, never half.
    pub fn save_logs(&self, id: Uuid, lines: &[LogLine], dropped: u64) -> Result<(), RecordError> {
        let path = self.log_path(id);
        let tmp = path.with_extension("jsonl.tmp");
        let file = File::create(&tmp).map_err(RecordError::io(&tmp))?;
        let mut out = BufWriter::new(file);
        let encode = |source| RecordError::EncodeLog {
            request_id: id,
            source,
        };
        for line in lines {
            serde_json::to_writer(&mut out, line).map_err(encode)?;
            out.write_all(b"\n").map_err(RecordError::io(&tmp))?;
        }
        if dropped > 0 {
            serde_json::to_writer(&mut out, &DroppedMarker { dropped }).map_err(encode)?;
            out.write_all(b"\n").map_err(RecordError::io(&tmp))?;
        }
        out.flush().map_err(RecordError::io(&tmp))?;
        drop(out);
        fs::rename(&tmp, &path).map_err(RecordError::io(&path))?;
        lock(&self.logged).push_back(id);
        self.prune_logs();
        Ok(())
    }

    /// The saved log of `id`: `None` if the invocation is unknown, empty if it is known but
    /// nothing was saved. A log file outlives the in-memory retention, so it is returned even
    /// for a record that only the journal still holds.
    pub fn logs(&self, id: Uuid) -> Result<Option<Logs>, RecordError> {
        let path = self.log_path(id);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Ok(lock(&self.index).contains(id).then(Logs::default));
            }
            Err(e) => return Err(RecordError::Io { path, source: e }),
        };
        let mut logs = Logs::default();
        for line in BufReader::new(file).split(b'\n') {
            let line = line.map_err(RecordError::io(&path))?;
            match serde_json::from_slice::<LogEntry>(&line) {
                Ok(LogEntry::Line(l)) => logs.lines.push(l),
                Ok(LogEntry::Dropped(m)) => logs.dropped += m.dropped,
                // Only a bug or a hand edit gets here (saves are atomic); keep the rest.
                Err(_) => {}
            }
        }
        Ok(Some(logs))
    }

    fn log_path(&self, id: Uuid) -> PathBuf {
        self.logs_dir.join(format!("{}.jsonl", id.hyphenated()))
    }

    /// Writes `entry`'s line, then lets `index_it` update the index, both under the journal
    /// lock (journal, then index: the one lock order), so that a compaction, which rewrites the
    /// journal from the index under that lock, never misses a line just written.
    fn journaled(
        &self,
        entry: EntryOut<'_>,
        request_id: Uuid,
        index_it: impl FnOnce(&mut Index),
    ) -> Result<(), RecordError> {
        // Encoded before taking the lock: only the write itself is serialized.
        let line = encode(entry, request_id)?;
        let mut journal = lock(&self.journal);
        journal
            .append(&line)
            .map_err(RecordError::io(&self.journal_path))?;
        index_it(&mut lock(&self.index));
        self.compact_if_needed(&mut journal)
    }

    /// Rewrites the journal from the index once it holds more than twice the retained records:
    /// a start line for each running invocation, an end line for each finished one, newest
    /// `max_records` only. Written aside and renamed, so a crash leaves the old or the new file.
    /// Called with the journal lock held; takes the index lock inside it (the one lock order).
    fn compact_if_needed(&self, journal: &mut Journal) -> Result<(), RecordError> {
        if journal.lines <= 2 * self.retention.max_records + 1000 {
            return Ok(());
        }
        let tmp = self.journal_path.with_extension("jsonl.compact");
        let io = |e| RecordError::io(&tmp)(e);
        let mut out = BufWriter::new(File::create(&tmp).map_err(io)?);
        let mut lines = 0;
        for inv in lock(&self.index).by_start.values() {
            let entry = if inv.is_running() {
                EntryOut::Start(inv)
            } else {
                EntryOut::End(inv)
            };
            out.write_all(&encode(entry, inv.request_id)?).map_err(io)?;
            lines += 1;
        }
        out.flush().map_err(io)?;
        out.get_ref().sync_all().map_err(io)?;
        drop(out);
        fs::rename(&tmp, &self.journal_path).map_err(RecordError::io(&self.journal_path))?;
        journal.file = OpenOptions::new()
            .append(true)
            .open(&self.journal_path)
            .map_err(RecordError::io(&self.journal_path))?;
        journal.lines = lines;
        journal.needs_newline = false;
        tracing::info!(records = lines, "compacted the invocation journal");
        Ok(())
    }

    /// Removes the oldest saved logs beyond `max_logged_invocations`.
    fn prune_logs(&self) {
        let mut logged = lock(&self.logged);
        while logged.len() > self.retention.max_logged_invocations {
            if let Some(old) = logged.pop_front() {
                let _ = fs::remove_file(self.log_path(old));
            }
        }
    }
}

fn encode(entry: EntryOut<'_>, request_id: Uuid) -> Result<Vec<u8>, RecordError> {
    let mut line =
        serde_json::to_vec(&entry).map_err(|source| RecordError::Encode { request_id, source })?;
    line.push(b'\n');
    Ok(line)
}

/// Saved logs found at open, oldest first (by modification time).
fn existing_logs(dir: &Path) -> VecDeque<Uuid> {
    let mut found: Vec<(std::time::SystemTime, Uuid)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let id = Uuid::parse_str(name.to_str()?.strip_suffix(".jsonl")?).ok()?;
            Some((e.metadata().ok()?.modified().ok()?, id))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, id)| id).collect()
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DroppedMarker {
    dropped: u64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum LogEntry {
    Line(LogLine),
    Dropped(DroppedMarker),
}

/// The journal's write end.
struct Journal {
    // An unbuffered `File` in append mode: `write_all` hands the line to the kernel before it
    // returns, which is what survives a SIGKILL of scfsim (the page cache is the kernel's). No
    // fsync: surviving a power loss would cost a disk flush per connection, and an emulator on
    // a developer machine does not need it.
    file: File,
    /// The last line on disk is unterminated (torn tail found at open, or a failed write).
    needs_newline: bool,
    /// Lines in the file, for compaction.
    lines: usize,
}

impl Journal {
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.needs_newline {
            self.file.write_all(b"\n")?;
            self.needs_newline = false;
        }
        self.lines += 1;
        // One write for the whole line, so a kill tears at most this line.
        self.file.write_all(line).inspect_err(|_| {
            // Part of the line may be on disk; isolate it from the next one.
            self.needs_newline = true;
        })
    }
}

/// The query view: records ordered by (start time, first-seen sequence), newest last.
struct Index {
    by_start: BTreeMap<(OffsetDateTime, u64), Invocation>,
    keys: HashMap<Uuid, (OffsetDateTime, u64)>,
    next_seq: u64,
    retention: usize,
}

impl Index {
    fn new(retention: usize) -> Self {
        Index {
            by_start: BTreeMap::new(),
            keys: HashMap::new(),
            next_seq: 0,
            retention,
        }
    }

    fn contains(&self, id: Uuid) -> bool {
        self.keys.contains_key(&id)
    }

    fn get(&self, id: Uuid) -> Option<&Invocation> {
        self.keys.get(&id).and_then(|key| self.by_start.get(key))
    }

    /// Inserts or replaces the record for its id, keeping its place among equal start times.
    fn upsert(&mut self, inv: Invocation) {
        let id = inv.request_id;
        let seq = match self.keys.get(&id) {
            Some(&key) => {
                self.by_start.remove(&key);
                key.1
            }
            None => {
                self.next_seq += 1;
                self.next_seq
            }
        };
        let key = (inv.started_at, seq);
        self.keys.insert(id, key);
        self.by_start.insert(key, inv);
        while self.by_start.len() > self.retention {
            if let Some((_, old)) = self.by_start.pop_first() {
                self.keys.remove(&old.request_id);
            }
        }
    }
}

/// A poisoned lock only means another thread panicked mid-operation; every critical section here
/// leaves the data consistent at each step, so carrying on beats losing all later records.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn done(start: OffsetDateTime) -> Invocation {
        let mut inv = Invocation::begin(Uuid::new_v4(), "f", start);
        inv.finish(&EndReason::ClientDropped, start);
        inv
    }

    /// The `scfsim_invocations_total` lines of the store's metrics, sorted.
    fn invocation_counts(store: &RecordStore) -> Vec<String> {
        let mut registry = prometheus_client::registry::Registry::default();
        store.metrics().register(&mut registry);
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
    fn subscribers_see_started_then_ended_after_the_record_is_queryable() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = RecordStore::open(dir.path()).unwrap();
        let t0 = datetime!(2024-01-01 00:00:00 UTC);
        let mut inv = Invocation::begin(Uuid::new_v4(), "f", t0);
        // Nobody listens yet: nothing is queued for later subscribers.
        store.finish(done(t0)).unwrap();
        let mut rx = store.subscribe();

        store.begin(&inv).unwrap();
        inv.finish(&EndReason::ClientDropped, t0);
        store.finish(inv.clone()).unwrap();

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
        let (store, _) = RecordStore::open(dir.path()).unwrap();
        let mut rx = store.subscribe();
        let t0 = datetime!(2024-01-01 00:00:00 UTC);
        for _ in 0..EVENT_CAPACITY + 10 {
            store.finish(done(t0)).unwrap();
        }
        assert_eq!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(10))
        );
        assert!(matches!(rx.try_recv(), Ok(StoreEvent::Ended(_))));
    }

    #[test]
    fn metrics_count_replayed_crashed_and_new_records_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = datetime!(2024-01-01 00:00:00 UTC);
        let (store, _) = RecordStore::open(dir.path()).unwrap();
        let ok = done(t0);
        store.finish(ok.clone()).unwrap();
        // A second finish of the same id replaces the record but is not counted again.
        store.finish(ok).unwrap();
        store
            .begin(&Invocation::begin(Uuid::new_v4(), "f", t0))
            .unwrap();
        assert_eq!(
            invocation_counts(&store),
            [
                r#"scfsim_invocations_total{function="f",status_code="456",end_reason="client_dropped"} 1"#
            ]
        );
        drop(store); // with one invocation still running: a crash

        let (store, report) = RecordStore::open(dir.path()).unwrap();
        assert_eq!(report.crashed_completed, 1);
        let expected = [
            r#"scfsim_invocations_total{function="f",status_code="456",end_reason="client_dropped"} 1"#,
            r#"scfsim_invocations_total{function="f",status_code="500",end_reason="gateway_crashed"} 1"#,
        ];
        assert_eq!(invocation_counts(&store), expected);
        drop(store);

        // The crash completion is now an ordinary end line: counted once, not completed again.
        let (store, report) = RecordStore::open(dir.path()).unwrap();
        assert_eq!(report.crashed_completed, 0);
        assert_eq!(invocation_counts(&store), expected);
        assert_eq!(store.query(&Query::default()).len(), 2);
    }

    #[test]
    fn memory_keeps_only_the_newest_records_but_the_journal_keeps_all() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = datetime!(2024-01-01 00:00:00 UTC);
        let (store, _) = RecordStore::open_with(dir.path(), keep(3)).unwrap();
        let invs: Vec<_> = (0..5)
            .map(|i| done(t0 + time::Duration::seconds(i)))
            .collect();
        for inv in &invs {
            store.finish(inv.clone()).unwrap();
        }
        assert_eq!(store.len(), 3);
        assert!(store.get(invs[0].request_id).is_none());
        assert!(store.get(invs[4].request_id).is_some());
        drop(store);

        let (store, report) = RecordStore::open_with(dir.path(), keep(3)).unwrap();
        assert_eq!(report.loaded, 5);
        assert_eq!(store.len(), 3);
        let ids: Vec<_> = store
            .query(&Query::default())
            .into_iter()
            .map(|i| i.request_id)
            .collect();
        let newest: Vec<_> = invs[2..].iter().rev().map(|i| i.request_id).collect();
        assert_eq!(ids, newest);
    }

    fn keep(max_records: usize) -> Retention {
        Retention {
            max_records,
            ..Retention::default()
        }
    }

    #[test]
    fn the_journal_is_compacted_to_the_retained_records_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = OffsetDateTime::now_utc();
        let ids: Vec<Uuid> = {
            let (store, _) = RecordStore::open_with(dir.path(), keep(10)).unwrap();
            (0..1500)
                .map(|i| {
                    let mut inv = done(t0 + time::Duration::milliseconds(i));
                    inv.request_id = Uuid::new_v4();
                    store.finish(inv.clone()).unwrap();
                    inv.request_id
                })
                .collect()
        };
        let lines = std::fs::read_to_string(dir.path().join(JOURNAL_FILE))
            .unwrap()
            .lines()
            .count();
        // Compaction triggers past 2 x 10 + 1000 lines, then starts again from 10.
        assert!(lines < 1500, "journal not compacted: {lines} lines");
        let (store, report) = RecordStore::open_with(dir.path(), keep(10)).unwrap();
        assert_eq!(report.skipped_lines, 0);
        assert_eq!(store.len(), 10);
        assert!(
            store.get(*ids.last().unwrap()).is_some(),
            "the newest record survives"
        );
        assert!(store.get(ids[0]).is_none());
    }

    #[test]
    fn only_the_newest_logs_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention {
            max_records: 100,
            max_logged_invocations: 2,
        };
        let (store, _) = RecordStore::open_with(dir.path(), retention).unwrap();
        let ids: Vec<Uuid> = (0..4)
            .map(|_| {
                let inv = done(OffsetDateTime::now_utc());
                store.finish(inv.clone()).unwrap();
                store.save_logs(inv.request_id, &[], 0).unwrap();
                inv.request_id
            })
            .collect();
        let files = std::fs::read_dir(dir.path().join(LOGS_DIR))
            .unwrap()
            .count();
        assert_eq!(files, 2);
        assert!(dir
            .path()
            .join(LOGS_DIR)
            .join(format!("{}.jsonl", ids[3]))
            .exists());
    }
}
