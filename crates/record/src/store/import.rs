//! Reading what an older scfsim left in `data_dir`: the JSON-lines journal
//! `invocations.jsonl` and the logs in `logs/<request_id>.jsonl`. Read once, imported into the
//! database, then renamed aside (`*.imported`) as a backup.
//!
//! The journal had one line per event: `{"event":"start","invocation":{..}}` when a connection
//! arrived and `{"event":"end","invocation":{..}}` with the complete record when it ended; the
//! last line for an id wins, and a start after the id is known is ignored. A start without an
//! end is an invocation that was running when that scfsim died.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::Deserialize;
use uuid::Uuid;

use crate::error::RecordError;
use crate::invocation::{Invocation, LogLine};
use crate::store::Logs;

pub(crate) const JOURNAL_FILE: &str = "invocations.jsonl";
pub(crate) const LOGS_DIR: &str = "logs";
/// Appended to the names of what was imported.
pub(crate) const IMPORTED_SUFFIX: &str = ".imported";

#[derive(Deserialize)]
#[serde(tag = "event", content = "invocation", rename_all = "snake_case")]
enum Entry {
    Start(Invocation),
    End(Invocation),
}

/// The journal's records, in the order their ids first appeared, and the lines it skipped.
pub(crate) struct Journal {
    pub records: Vec<Invocation>,
    pub skipped_lines: usize,
}

/// Reads `path`. Unreadable lines are skipped and counted, never fatal: a torn last line is
/// what a kill in the middle of a write left.
pub(crate) fn read_journal(path: &Path) -> Result<Journal, RecordError> {
    let file = File::open(path).map_err(RecordError::io(path))?;
    let mut order: Vec<Uuid> = Vec::new();
    let mut latest: HashMap<Uuid, Invocation> = HashMap::new();
    let mut skipped_lines = 0;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    loop {
        buf.clear();
        // Bytes, not `lines()`: a torn write can cut a UTF-8 sequence in half.
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(RecordError::io(path))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Entry>(&buf) {
            Ok(Entry::Start(inv)) => {
                if let std::collections::hash_map::Entry::Vacant(e) = latest.entry(inv.request_id) {
                    order.push(inv.request_id);
                    e.insert(inv);
                }
            }
            Ok(Entry::End(inv)) => {
                if latest.insert(inv.request_id, inv.clone()).is_none() {
                    order.push(inv.request_id);
                }
            }
            Err(error) => {
                skipped_lines += 1;
                tracing::warn!(
                    path = %path.display(),
                    line = line_no,
                    %error,
                    "skipping an unreadable line of the old invocation journal"
                );
            }
        }
    }
    let records = order
        .into_iter()
        .filter_map(|id| latest.remove(&id))
        .collect();
    Ok(Journal {
        records,
        skipped_lines,
    })
}

#[derive(Deserialize)]
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

/// Every `<request_id>.jsonl` in `dir`, oldest first (by modification time).
pub(crate) fn read_logs(dir: &Path) -> Vec<(Uuid, Logs)> {
    let mut found: Vec<(std::time::SystemTime, Uuid, std::path::PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let id = Uuid::parse_str(name.to_str()?.strip_suffix(".jsonl")?).ok()?;
            Some((e.metadata().ok()?.modified().ok()?, id, e.path()))
        })
        .collect();
    found.sort();
    found
        .into_iter()
        .filter_map(|(_, id, path)| {
            let file = File::open(&path).ok()?;
            let mut logs = Logs::default();
            for line in BufReader::new(file).split(b'\n').map_while(Result::ok) {
                match serde_json::from_slice::<LogEntry>(&line) {
                    Ok(LogEntry::Line(l)) => logs.lines.push(l),
                    Ok(LogEntry::Dropped(m)) => logs.dropped += m.dropped,
                    Err(_) => {}
                }
            }
            Some((id, logs))
        })
        .collect()
}
