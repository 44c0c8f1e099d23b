use std::path::PathBuf;

use uuid::Uuid;

/// Who has to act on a [`RecordError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The user's environment: the data directory, its disk, another process using it.
    Environment,
    /// Whoever called the store (a caller bug, or a bad query from an API client).
    Caller,
    /// scfsim itself.
    Internal,
}

/// Everything the record store can fail at. Errors keep the file they were about, so a full
/// disk or a permission problem names the data directory to fix, and their message never
/// repeats their source's (logs print the whole chain).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("I/O error on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A read or a setup statement failed.
    #[error("database error on {}", path.display())]
    Database {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// A write of records failed; the records stay in memory and are written again later.
    /// For a full disk the source is the OS's "No space left on device".
    #[error("cannot write invocation records to {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "{} is in use by another scfsim (a second one cannot share its data_dir): stop the \
         other one, or give this one its own --data-dir",
        path.display()
    )]
    Locked { path: PathBuf },
    #[error(
        "{} was written by a newer scfsim (database schema {found}; this scfsim knows up to \
         {known}): run that newer scfsim, or give this one another --data-dir",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error(
        "{} is not a scfsim record database, or it is damaged: move it aside (scfsim then \
         starts a new one; `sqlite3 FILE .recover` may save its records) or give scfsim \
         another --data-dir",
        path.display()
    )]
    Unusable {
        path: PathBuf,
        #[source]
        source: Option<rusqlite::Error>,
    },
    /// The store keeps unwritten records in memory while it cannot write (full disk), up to a
    /// bound; past it, new records are refused rather than growing memory without limit.
    #[error(
        "invocation {request_id} was not recorded: {pending} records are waiting in memory \
         because {} cannot be written",
        path.display()
    )]
    Backlog {
        request_id: Uuid,
        pending: usize,
        path: PathBuf,
    },
    /// The store's writer thread is gone (it panicked, or the store is closing).
    #[error("the record store's writer has stopped")]
    WriterStopped,
    #[error("cannot encode invocation {request_id} as JSON")]
    Encode {
        request_id: Uuid,
        #[source]
        source: serde_json::Error,
    },
    /// `begin` was called twice for one request id; the second start would hide the first.
    #[error("invocation {request_id} is already recorded")]
    AlreadyRecorded { request_id: Uuid },
    /// `RecordStore::finish` was given a record without an outcome: the caller forgot
    /// `Invocation::finish`, and storing it would leave a "running" record forever.
    #[error("invocation {request_id} has no outcome yet; call Invocation::finish first")]
    NotFinished { request_id: Uuid },
    /// A pagination cursor that no page of this store handed out.
    #[error("{cursor:?} is not a cursor from a previous page (pass back `next_cursor` as it is)")]
    BadCursor { cursor: String },
}

impl RecordError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RecordError {
        let path = path.into();
        move |source| RecordError::Io { path, source }
    }

    pub(crate) fn db(path: impl Into<PathBuf>) -> impl FnOnce(rusqlite::Error) -> RecordError {
        let path = path.into();
        move |source| RecordError::Database { path, source }
    }

    /// Who has to act on this error.
    pub fn fault(&self) -> Fault {
        match self {
            RecordError::Io { .. }
            | RecordError::Write { .. }
            | RecordError::Locked { .. }
            | RecordError::NewerSchema { .. }
            | RecordError::Unusable { .. }
            | RecordError::Backlog { .. } => Fault::Environment,
            RecordError::AlreadyRecorded { .. }
            | RecordError::NotFinished { .. }
            | RecordError::BadCursor { .. } => Fault::Caller,
            RecordError::Database { .. }
            | RecordError::WriterStopped
            | RecordError::Encode { .. } => Fault::Internal,
        }
    }
}

/// `outer: inner: root`, for log lines inside this crate (the gateway's `ErrorChain` is out of
/// reach: the gateway depends on this crate).
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
