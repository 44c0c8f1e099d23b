use std::error::Error;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::instance::ExitInfo;
use crate::output::CapturedOutput;

/// A cause of any kind, for what a backend's own machinery reports (an OS error, an engine's
/// answer).
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Who has to act when something failed: the status code the gateway picks follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The function's code: its bootstrap, or what the bootstrap does.
    Function,
    /// scfsim's user: the config, or a quota the config sets.
    Config,
    /// scfsim itself.
    Scfsim,
    /// The machine scfsim runs on: missing tools, missing privileges, the kernel.
    Host,
}

/// Errors of the launcher and its backend (not of one instance): choosing a backend, and
/// changing the host for it. Some are fatal at startup; others only take a feature away and are
/// shown in the startup log ([`crate::Launcher::details`]).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot create a network namespace (needs root or CAP_SYS_ADMIN)")]
    Namespace {
        #[source]
        source: io::Error,
    },
    #[error("the namespace worker thread is gone")]
    WorkerGone,
    #[error("unprivileged user namespaces are not usable here")]
    UserNamespaces {
        #[source]
        source: io::Error,
    },
    #[error("the host setup must come before the launcher's first instance")]
    SetupTooLate,
    #[error("cannot link instances' network namespaces to the host")]
    Network {
        #[source]
        source: crate::network::NetworkError,
    },
    #[error("nftables' `nft` is not installed")]
    NftMissing,
    #[error("cannot run nft")]
    NftSpawn {
        #[source]
        source: io::Error,
    },
    #[error("nft failed: {stderr}")]
    Nft { stderr: String },
    #[error("cannot let the instances' traffic through the host's firewall")]
    Firewall {
        #[source]
        source: crate::firewall::FirewallError,
    },
    #[error("no cgroup memory controller found")]
    NoMemoryController {
        #[source]
        source: Option<io::Error>,
    },
    #[error("cannot enable the memory and pids controllers in {path}")]
    CgroupControllers {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the mount point /var/lang does not exist and scfsim cannot create it; create it once as root: sudo mkdir /var/lang")]
    VarLangMountPoint {
        #[source]
        source: Option<io::Error>,
    },
    #[error("cannot build the /var/lang tree in {path}")]
    RuntimeTree {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The container engine could not be reached or refused a step of scfsim's setup.
    #[error("the Docker engine ({engine}): {what}")]
    Engine {
        engine: String,
        what: &'static str,
        #[source]
        source: BoxError,
    },
    /// The program that removes scfsim's containers if scfsim dies could not be started.
    #[error("cannot start scfsim's container reaper {program}")]
    Reaper {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file of the host's that scfsim reads or writes for a host change (a cgroup, a marker,
    /// a sysctl).
    #[error("cannot {action} {path}")]
    HostFile {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl PoolError {
    /// Whose move it is. None of these is the function's.
    pub fn fault(&self) -> Fault {
        match self {
            PoolError::WorkerGone | PoolError::SetupTooLate => Fault::Scfsim,
            _ => Fault::Host,
        }
    }
}

/// Why an instance could not be started; the wording tells the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartFailureKind {
    #[error("bootstrap file {path} does not exist: create an executable scf_bootstrap in the function's code_dir")]
    BootstrapMissing { path: PathBuf },
    #[error("bootstrap file {path} is not executable: run `chmod 755 {path}`")]
    BootstrapNotExecutable { path: PathBuf },
    #[error("bootstrap file {path} cannot be executed (check its first line, e.g. `#!/bin/bash`, and that the interpreter exists)")]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("scf_bootstrap {exit} before listening on port {port}")]
    ExitedBeforeListening { exit: ExitInfo, port: u16 },
    #[error("nothing listened on 0.0.0.0:{port} within the init timeout of {waited:?}: the bootstrap must start a server on port {port}")]
    NotListening { waited: Duration, port: u16 },
    #[error("image {image} is not on the Docker engine and pulling it failed; build or load it there (`docker build -t {image} DIR`, `docker load -i FILE`) or make its registry reachable (`docker pull {image}`)")]
    ImagePull {
        image: String,
        #[source]
        source: BoxError,
    },
    #[error("image {image} was still being pulled when the init timeout of {waited:?} ended; pull it ahead (`docker pull {image}`) or raise init_timeout")]
    ImagePullTimedOut { image: String, waited: Duration },
    #[error("the container of image {image} could not start its command {command:?} (check the function's command and args, and that the executable exists in the image)")]
    ContainerInit {
        image: String,
        command: Vec<String>,
        #[source]
        source: BoxError,
    },
    #[error("isolation = \"none\": {holder}")]
    HostPortBusy { holder: PortHolder },
    /// scfsim's own failure (namespaces, cgroups, fork), not the function's.
    #[error("scfsim could not prepare the instance: {what}")]
    Internal {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
}

/// Who holds the host's port 9000 when `isolation = "none"` cannot start an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PortHolder {
    #[error("another instance holds port {port} of this host; only one instance at a time can run without namespaces (run scfsim as root for one per connection)")]
    Instance { port: u16 },
    #[error("port {port} of this host is already in use by another program")]
    OtherProgram { port: u16 },
}

impl StartFailureKind {
    /// scfsim's failure at `what`, caused by `source`.
    pub(crate) fn internal(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StartFailureKind::Internal {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// Whose move it is: the gateway's status codes follow from it (the function's failures
    /// are 445/405/446, a quota is 432, scfsim's own 500).
    pub fn fault(&self) -> Fault {
        match self {
            StartFailureKind::BootstrapMissing { .. }
            | StartFailureKind::BootstrapNotExecutable { .. }
            | StartFailureKind::Spawn { .. }
            | StartFailureKind::ExitedBeforeListening { .. }
            | StartFailureKind::NotListening { .. }
            | StartFailureKind::ImagePull { .. }
            | StartFailureKind::ImagePullTimedOut { .. }
            | StartFailureKind::ContainerInit { .. } => Fault::Function,
            StartFailureKind::HostPortBusy {
                holder: PortHolder::Instance { .. },
            } => Fault::Config,
            StartFailureKind::HostPortBusy {
                holder: PortHolder::OtherProgram { .. },
            } => Fault::Host,
            StartFailureKind::Internal { .. } => Fault::Scfsim,
        }
    }
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

    /// A one-paragraph message for people: the failure with its causes, and the last lines the
    /// bootstrap printed.
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
        let failure = with_sources(&self.kind);
        if shown.is_empty() {
            failure
        } else {
            format!("{failure}; its last output: {}", shown.join(" | "))
        }
    }
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

/// `error: its source: the source's source …`, for a line of text (a log line, a record's
/// message) where no reporter walks the chain.
pub fn with_sources(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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

    #[test]
    fn the_os_error_is_in_the_message_once() {
        let enoent = || io::Error::from(nix::errno::Errno::ENOENT);
        let spawn = StartFailure::before_spawn(StartFailureKind::Spawn {
            path: "/code/scf_bootstrap".into(),
            source: enoent(),
        });
        let internal = StartFailure::before_spawn(StartFailureKind::internal(
            "creating the instance's cgroup",
            enoent(),
        ));
        let namespace = PoolError::Namespace { source: enoent() };
        for text in [
            spawn.message(),
            internal.message(),
            with_sources(&namespace),
        ] {
            assert_eq!(
                text.matches(&enoent().to_string()).count(),
                1,
                "the OS error once: {text}"
            );
        }
        assert!(
            spawn.message().contains("first line"),
            "{}",
            spawn.message()
        );
    }

    #[test]
    fn each_failure_names_who_is_at_fault() {
        let kind = |holder| StartFailureKind::HostPortBusy { holder };
        assert_eq!(
            kind(PortHolder::Instance { port: 9000 }).fault(),
            Fault::Config
        );
        let internal = StartFailureKind::Internal {
            what: "x".into(),
            source: None,
        };
        assert_eq!(internal.fault(), Fault::Scfsim);
        assert_eq!(
            PoolError::Network {
                source: crate::network::NetworkError::ThreadGone
            }
            .fault(),
            Fault::Host
        );
    }
}
