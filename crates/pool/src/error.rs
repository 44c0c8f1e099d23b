use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::instance::ExitInfo;
use crate::output::CapturedOutput;

/// Errors of the launcher itself (not of one instance).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot create a network namespace (needs root or CAP_SYS_ADMIN): {source}")]
    Namespace {
        #[source]
        source: io::Error,
    },
    #[error("the namespace worker thread is gone")]
    WorkerGone,
}

/// Why an instance could not be started; the wording tells the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartFailureKind {
    #[error("bootstrap file {path} does not exist: create an executable scf_bootstrap in the function's code_dir")]
    BootstrapMissing { path: PathBuf },
    #[error("bootstrap file {path} is not executable: run `chmod 755 {path}`")]
    BootstrapNotExecutable { path: PathBuf },
    #[error("bootstrap file {path} cannot be executed ({source}): check its first line (e.g. `#!/bin/bash`) and that the interpreter exists")]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("scf_bootstrap {exit} before listening on port {port}")]
    ExitedBeforeListening { exit: ExitInfo, port: u16 },
    #[error("nothing listened on 0.0.0.0:{port} within the init timeout of {waited:?}: the bootstrap must start a server on port {port}")]
    NotListening { waited: Duration, port: u16 },
    #[error("isolation = \"none\": {reason}")]
    HostPortBusy { reason: String },
    /// scfsim's own failure (namespaces, cgroups, fork), not the function's.
    #[error("scfsim could not prepare the instance: {detail}")]
    Internal { detail: String },
}

/// A failed start, with everything the record needs: what went wrong, the process (if one ran)
/// and what it printed.
#[derive(Debug)]
pub struct StartFailure {
    pub kind: StartFailureKind,
    pub pid: Option<u32>,
    pub exit: Option<ExitInfo>,
    pub output: CapturedOutput,
}

impl StartFailure {
    pub(crate) fn before_spawn(kind: StartFailureKind) -> Self {
        StartFailure {
            kind,
            pid: None,
            exit: None,
            output: CapturedOutput::default(),
        }
    }

    /// A one-paragraph message for people: the failure and the last lines the bootstrap printed.
    pub fn message(&self) -> String {
        let mut shown = self.output.tail(8);
        // Runtimes print the cause first and a stack after it (Node's "Error: Cannot find
        // module 'ws'"): keep the first error line even when the tail no longer has it.
        let first_error = self
            .output
            .lines
            .iter()
            .map(|l| l.line.trim())
            .find(|l| l.contains("Error") || l.contains("error:"));
        if let Some(first) = first_error {
            if !shown.iter().any(|l| l.trim() == first) {
                shown.insert(0, format!("{first} …"));
            }
        }
        if shown.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}; its last output: {}", self.kind, shown.join(" | "))
        }
    }
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{OutputLine, OutputStream};

    fn failure(lines: &[&str]) -> StartFailure {
        StartFailure {
            kind: StartFailureKind::ExitedBeforeListening {
                exit: ExitInfo {
                    code: Some(1),
                    signal: None,
                },
                port: 9000,
            },
            pid: Some(1),
            exit: None,
            output: CapturedOutput {
                lines: lines
                    .iter()
                    .map(|l| OutputLine {
                        at: time::OffsetDateTime::UNIX_EPOCH,
                        stream: OutputStream::Stderr,
                        line: l.to_string(),
                    })
                    .collect(),
                dropped: 0,
            },
        }
    }

    #[test]
    fn the_first_error_line_is_kept_ahead_of_a_long_stack() {
        let mut lines = vec!["Error: Cannot find module 'ws'"];
        lines.extend(std::iter::repeat_n("    at somewhere", 12));
        let message = failure(&lines).message();
        assert!(message.contains("exited with code 1 before listening on port 9000"));
        assert!(
            message.contains("Error: Cannot find module 'ws'"),
            "{message}"
        );
    }

    #[test]
    fn a_short_output_is_shown_whole_and_once() {
        let message = failure(&["starting", "Error: boom"]).message();
        assert_eq!(message.matches("Error: boom").count(), 1, "{message}");
        assert!(message.ends_with("starting | Error: boom"), "{message}");
    }
}
