//! The record store: where every invocation's record, its instance log and its frame
//! timeline are kept, behind the [`Store`] trait.
//!
//! The gateway and the admin API hold an `Arc<dyn Store>` and never see what is behind it.
//! Today that is [`SqliteStore`] (`data_dir/scfsim.db`); a store shared by several gateways
//! (PostgreSQL) would be one more implementation of the trait, in a module of its own.
//!
//! # The contract every implementation keeps
//! - `begin` and `finish` are called on the connection path: they return without waiting for
//!   the disk. What they accept is queryable at once (`find`, `search`) and written soon
//!   after by the store's own writer; a `StoreEvent` is sent once it is written.
//! - A record accepted is not lost because writing fails: it stays queryable from memory and is
//!   written when writing works again ([`StoreHealth`] says so meanwhile), up to a bound in
//!   memory past which `begin`/`finish` refuse new records with [`RecordError::Backlog`].
//! - An invocation still running when scfsim died is completed as `gateway_crashed` (500) when
//!   the store is opened next.
//! - Each invocation is counted once in the [`Aggregates`], at its first end.

mod import;
mod sqlite;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::error::RecordError;
use crate::events::StoreEvent;
use crate::invocation::{Invocation, LogLine};
use crate::metrics::Aggregates;
use crate::timeline::Timeline;

pub use sqlite::{SqliteStore, DB_FILE, SCHEMA_VERSION};

/// The store scfsim opens today. The name older callers and tests use.
pub type RecordStore = SqliteStore;

/// What the gateway and the admin API need from a record store.
pub trait Store: Send + Sync {
    /// Records that `inv` has started. Returns at once; the record is queryable on return.
    fn begin(&self, inv: &Invocation) -> Result<(), RecordError>;
    /// Records the complete invocation (with or without a prior `begin`). Returns at once.
    fn finish(&self, inv: Invocation) -> Result<(), RecordError>;
    /// Saves the instance's log for `id`, replacing any earlier save.
    fn save_logs(&self, id: Uuid, lines: &[LogLine], dropped: u64) -> Result<(), RecordError>;
    /// Saves the frame timeline of an ended invocation, replacing any earlier save; the
    /// newest [`Retention::max_timelines`] are kept. Returns at once.
    fn save_frames(&self, timeline: Timeline) -> Result<(), RecordError>;
    /// The saved timeline of `id`; `None` if none was saved (or it was pruned).
    fn frames(&self, id: Uuid) -> Result<Option<Timeline>, RecordError>;
    /// One record; `None` if unknown.
    fn find(&self, id: Uuid) -> Result<Option<Invocation>, RecordError>;
    /// One page of records, newest first (by `started_at`, then by arrival).
    fn search(&self, q: &Search) -> Result<Page, RecordError>;
    /// `None` if the invocation is unknown; an empty log if it is known but saved none.
    fn logs(&self, id: Uuid) -> Result<Option<Logs>, RecordError>;
    /// Events for every later write: per invocation `Started` before `Ended`. A receiver that
    /// falls more than 1024 events behind skips ahead (`RecvError::Lagged`).
    fn subscribe(&self) -> broadcast::Receiver<StoreEvent>;
    /// Sums over every finished record, including those accepted and not yet written.
    fn aggregates(&self) -> Aggregates;
    fn health(&self) -> StoreHealth;
    /// Waits (at most `bound`) until everything accepted so far is written. False if some is
    /// not (the disk is still full, or the bound passed).
    fn flush(&self, bound: Duration) -> bool;
}

/// How much history the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Records kept: the newest ones.
    pub max_records: usize,
    /// Invocations whose instance log is kept: the newest ones.
    pub max_logged_invocations: usize,
    /// Records that started longer ago than this are deleted; `None` keeps them.
    pub max_age: Option<Duration>,
    /// Invocations whose frame timeline is kept: the newest ones.
    pub max_timelines: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_records: 100_000,
            max_logged_invocations: 10_000,
            max_age: None,
            max_timelines: 1000,
        }
    }
}

/// What opening the store found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OpenReport {
    /// Records in the store after opening.
    pub loaded: usize,
    /// Invocations that were running when scfsim died, now completed as `gateway_crashed`.
    pub crashed_completed: usize,
    /// Records imported from an `invocations.jsonl` journal of an older scfsim (this open).
    pub imported: usize,
    /// Journal lines that could not be parsed during that import (a torn last write).
    pub skipped_lines: usize,
}

/// The filters of the original API (`function`, `status_code`, `limit`), AND-ed: the first page
/// of a [`Search`] without time range, end reason or cursor. Kept as it was, for its callers.
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
}

/// Filters for [`Store::search`], AND-ed: the query string of `GET /api/invocations`.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Search {
    pub function: Option<String>,
    pub status_code: Option<u16>,
    pub end_reason: Option<String>,
    /// Records that started at or after this instant (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    /// Records that started before this instant (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
    /// `next_cursor` of the previous page: continue after its last record.
    pub cursor: Option<String>,
    /// Defaults to [`Query::DEFAULT_LIMIT`], capped at [`Query::MAX_LIMIT`].
    pub limit: Option<usize>,
}

impl From<&Query> for Search {
    fn from(q: &Query) -> Search {
        Search {
            function: q.function.clone(),
            status_code: q.status_code,
            limit: q.limit,
            ..Search::default()
        }
    }
}

impl Search {
    pub fn effective_limit(&self) -> usize {
        self.limit
            .unwrap_or(Query::DEFAULT_LIMIT)
            .min(Query::MAX_LIMIT)
    }

    /// Whether `inv` passes every filter but the cursor.
    pub fn matches(&self, inv: &Invocation) -> bool {
        // `Option::is_none_or` would read better but is newer than the workspace's MSRV.
        let function_ok = self.function.as_ref().map_or(true, |f| *f == inv.function);
        let status_ok = self
            .status_code
            .map_or(true, |code| inv.status_code.map(|s| s.0) == Some(code));
        let reason_ok = self
            .end_reason
            .as_ref()
            .map_or(true, |r| inv.end_reason.as_ref() == Some(r));
        let since_ok = self.since.map_or(true, |t| inv.started_at >= t);
        let until_ok = self.until.map_or(true, |t| inv.started_at < t);
        function_ok && status_ok && reason_ok && since_ok && until_ok
    }
}

/// A page of [`Store::search`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Page {
    pub records: Vec<Invocation>,
    /// Pass as `cursor` for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Where a record sits in the newest-first order: its start (µs since the epoch), then the
/// order the store first saw it. A cursor is this position, printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Position {
    pub started_us: i64,
    pub seq: i64,
}

impl Position {
    pub(crate) fn cursor(self) -> String {
        format!("{}_{}", self.started_us, self.seq)
    }

    pub(crate) fn parse(cursor: &str) -> Result<Position, RecordError> {
        let bad = || RecordError::BadCursor {
            cursor: cursor.to_owned(),
        };
        let (a, b) = cursor.split_once('_').ok_or_else(bad)?;
        Ok(Position {
            started_us: a.parse().map_err(|_| bad())?,
            seq: b.parse().map_err(|_| bad())?,
        })
    }
}

pub(crate) fn micros(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// An invocation's log as saved by [`Store::save_logs`].
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Logs {
    pub lines: Vec<LogLine>,
    /// Lines the gateway dropped (over its buffer limit) and that are not in `lines`.
    pub dropped: u64,
}

/// Whether the store is writing, and what it holds in memory meanwhile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreHealth {
    /// Set while writes fail: since when, and why (the error with its causes).
    pub degraded: Option<Degraded>,
    /// Records and logs accepted and not yet written.
    pub pending: usize,
    /// The bound on `pending` past which new records are refused.
    pub pending_limit: usize,
    /// Write attempts (one per batch) that failed since start.
    pub failed_writes: u64,
    /// Records refused because `pending` was at its bound.
    pub refused_records: u64,
    /// What the store writes to (a file path, or a server).
    pub location: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Degraded {
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    pub cause: String,
}
