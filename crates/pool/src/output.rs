use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

/// One line an instance printed, as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    pub at: OffsetDateTime,
    pub stream: OutputStream,
    pub line: String,
}

/// What an instance printed, bounded: the oldest lines go first and are counted in `dropped`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedOutput {
    pub lines: Vec<OutputLine>,
    pub dropped: u64,
}

impl CapturedOutput {
    /// The last `n` lines, for error messages.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let skip = self.lines.len().saturating_sub(n);
        self.lines[skip..].iter().map(|l| l.line.clone()).collect()
    }
}

/// Caps that keep a function writing megabytes per second from growing scfsim's memory.
const MAX_LINES: usize = 2000;
const MAX_BYTES: usize = 1 << 20;
const MAX_LINE_BYTES: usize = 16 << 10;
/// A pipe reader's first buffer, and the most it grows to.
const CHUNK_MIN: usize = 128;
const CHUNK_MAX: usize = 8 << 10;

#[derive(Default)]
struct Buffer {
    lines: VecDeque<OutputLine>,
    bytes: usize,
    dropped: u64,
}

/// The shared, bounded log of one instance. Written by its two pipe readers, read once when the
/// instance is stopped (or failed to start).
#[derive(Clone, Default)]
pub(crate) struct OutputLog {
    inner: Arc<Mutex<Buffer>>,
}

impl OutputLog {
    fn push(&self, line: OutputLine) {
        let mut buf = self.inner.lock().expect("output log poisoned");
        buf.bytes += line.line.len();
        buf.lines.push_back(line);
        while buf.lines.len() > MAX_LINES || buf.bytes > MAX_BYTES {
            let Some(old) = buf.lines.pop_front() else {
                break;
            };
            buf.bytes -= old.line.len();
            buf.dropped += 1;
        }
    }

    pub(crate) fn snapshot(&self) -> CapturedOutput {
        let buf = self.inner.lock().expect("output log poisoned");
        CapturedOutput {
            lines: buf.lines.iter().cloned().collect(),
            dropped: buf.dropped,
        }
    }

    /// Reads `pipe` to its end, splitting lines; over-long lines are cut rather than buffered.
    /// Each line is also echoed into scfsim's own log under the caller's span.
    pub(crate) fn capture<R>(&self, mut pipe: R, stream: OutputStream) -> JoinHandle<()>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let log = self.clone();
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                // Small until the instance writes much: thousands of quiet instances each
                // holding two 8 KiB buffers while they wait on their pipes cost scfsim 16 KiB
                // per open connection (heaptrack, BENCHMARKS.md). A read that fills the buffer
                // doubles it, up to CHUNK_MAX, so a loud instance soon reads in large chunks.
                let mut chunk = Vec::with_capacity(CHUNK_MIN);
                let mut pending: Vec<u8> = Vec::new();
                loop {
                    chunk.clear();
                    let n = match pipe.read_buf(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if n == chunk.capacity() && n < CHUNK_MAX {
                        chunk.reserve_exact(n);
                    }
                    let mut rest = &chunk[..n];
                    while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
                        append_capped(&mut pending, &rest[..pos]);
                        log.emit(stream, &pending);
                        pending.clear();
                        rest = &rest[pos + 1..];
                    }
                    append_capped(&mut pending, rest);
                }
                if !pending.is_empty() {
                    log.emit(stream, &pending);
                }
            }
            .instrument(span),
        )
    }

    fn emit(&self, stream: OutputStream, raw: &[u8]) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = String::from_utf8_lossy(raw).into_owned();
        tracing::info!(target: "scfsim::instance", stream = stream.as_str(), "{line}");
        self.push(OutputLine {
            at: OffsetDateTime::now_utc(),
            stream,
            line,
        });
    }
}

fn append_capped(pending: &mut Vec<u8>, bytes: &[u8]) {
    let room = MAX_LINE_BYTES.saturating_sub(pending.len());
    pending.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_lines_and_keeps_a_partial_last_line() {
        let log = OutputLog::default();
        let input: &[u8] = b"one\ntwo\r\nthree";
        log.capture(input, OutputStream::Stdout).await.unwrap();
        let lines: Vec<_> = log.snapshot().lines.into_iter().map(|l| l.line).collect();
        assert_eq!(lines, ["one", "two", "three"]);
    }

    #[tokio::test]
    async fn bounded_by_line_count_and_counts_drops() {
        let log = OutputLog::default();
        let input: Vec<u8> = (0..MAX_LINES + 10)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        log.capture(std::io::Cursor::new(input), OutputStream::Stderr)
            .await
            .unwrap();
        let out = log.snapshot();
        assert_eq!(out.lines.len(), MAX_LINES);
        assert_eq!(out.dropped, 10);
        assert_eq!(out.lines[0].line, "line 10");
    }

    #[tokio::test]
    async fn cuts_overlong_lines() {
        let log = OutputLog::default();
        let input = vec![b'x'; MAX_LINE_BYTES * 3];
        log.capture(std::io::Cursor::new(input), OutputStream::Stdout)
            .await
            .unwrap();
        assert_eq!(log.snapshot().lines[0].line.len(), MAX_LINE_BYTES);
    }
}
