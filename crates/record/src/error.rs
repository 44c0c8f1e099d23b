use std::path::PathBuf;

use uuid::Uuid;

/// Everything the record store can fail at. I/O errors keep the file they were about, so a
/// full disk or a permission problem names the data directory to fix.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("I/O error on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode invocation {request_id} as JSON")]
    Encode {
        request_id: Uuid,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode the log of invocation {request_id} as JSON")]
    EncodeLog {
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
}

impl RecordError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RecordError {
        let path = path.into();
        move |source| RecordError::Io { path, source }
    }
}
