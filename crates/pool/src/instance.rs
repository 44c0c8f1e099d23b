use std::fmt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::task::JoinHandle;

use crate::cgroup::InstanceCgroup;
use crate::netns::Netns;
use crate::output::{CapturedOutput, OutputLog};

/// How the bootstrap process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl From<ExitStatus> for ExitInfo {
    fn from(status: ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        ExitInfo {
            code: status.code(),
            signal: status.signal(),
        }
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exited with code {code}"),
            (None, Some(sig)) => match Signal::try_from(sig) {
                Ok(name) => write!(f, "was killed by signal {sig} ({name})"),
                Err(_) => write!(f, "was killed by signal {sig}"),
            },
            (None, None) => f.write_str("ended"),
        }
    }
}

/// A running instance: one bootstrap process tree, owned here from spawn to reap.
///
/// Created by [`crate::Launcher::start`]; ended by [`Instance::stop`]. If it is dropped without
/// being stopped (a panic, a cancelled task), its whole process group is killed at once and
/// tokio reaps the process in the background.
pub struct Instance {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) output: OutputLog,
    pub(crate) readers: Vec<JoinHandle<()>>,
    /// Held so the namespace outlives every socket scfsim still makes in it.
    pub(crate) _netns: Option<Arc<Netns>>,
    pub(crate) exit: Option<ExitInfo>,
    /// Memory and process limits; removed after the processes are reaped.
    pub(crate) cgroup: Option<InstanceCgroup>,
    /// Without cgroups: `memory_mb` in bytes, watched by scfsim over the process tree's RSS.
    pub(crate) memory_limit: Option<u64>,
    /// With `isolation = "none"`: the host's port 9000, held while this instance lives.
    pub(crate) _host_port: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// What is left of an instance once it is stopped and reaped.
#[derive(Debug, Clone)]
pub struct StoppedInstance {
    pub pid: u32,
    pub exit: ExitInfo,
    pub output: CapturedOutput,
}

/// How long a stopped instance's pipes may stay open after its process ended (a daemon that
/// escaped the group could hold them forever without PID namespaces).
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

impl Instance {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resolves when the bootstrap process ends. Cancel-safe; returns at once if it already has.
    pub async fn exited(&mut self) -> ExitInfo {
        if let Some(exit) = self.exit {
            return exit;
        }
        let exit = match self.child.wait().await {
            Ok(status) => status.into(),
            Err(_) => ExitInfo {
                code: None,
                signal: None,
            },
        };
        self.exit = Some(exit);
        exit
    }

    /// True once the instance went over its memory limit: the kernel OOM-killed one of its
    /// processes (cgroups), or, without cgroups, its process tree's RSS is over `memory_mb`, in
    /// which case the whole group is killed here, as the kernel would.
    pub fn memory_exceeded(&self) -> bool {
        if let Some(cgroup) = &self.cgroup {
            return cgroup.oom_killed();
        }
        match self.memory_limit {
            Some(limit)
                if self.exit.is_none() && crate::procfs::tree_rss_bytes(self.pid) > limit =>
            {
                self.signal_group(Signal::SIGKILL);
                true
            }
            _ => false,
        }
    }

    fn signal_group(&self, signal: Signal) {
        // The group may already be gone; that is the goal, not an error.
        let _ = killpg(Pid::from_raw(self.pid as i32), signal);
    }

    /// SIGTERM to the process group, up to `grace` to exit, then SIGKILL; always reaped.
    pub async fn stop(mut self, grace: Duration) -> StoppedInstance {
        if self.exit.is_none() {
            self.signal_group(Signal::SIGTERM);
            if tokio::time::timeout(grace, self.exited()).await.is_err() {
                self.signal_group(Signal::SIGKILL);
            }
        }
        // Once reaped, the group id may be reused: no signal is sent after this point. (With
        // PID namespaces nothing is left anyway; without them, a child that ignored SIGTERM
        // and outlived the bootstrap survives: the documented weakness of isolation = "none".)
        let exit = self.exited().await;
        self.finish_output().await;
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.remove().await;
        }
        StoppedInstance {
            pid: self.pid,
            exit,
            output: self.output.snapshot(),
        }
    }

    /// Waits (bounded) until both pipes are read to the end, so the log is complete.
    pub(crate) async fn finish_output(&mut self) {
        for reader in self.readers.drain(..) {
            let abort = reader.abort_handle();
            if tokio::time::timeout(OUTPUT_DRAIN, reader).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.signal_group(Signal::SIGKILL);
        }
        for reader in &self.readers {
            reader.abort();
        }
    }
}
