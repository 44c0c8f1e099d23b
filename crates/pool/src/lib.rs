//! Function instances: start a bootstrap, wait until it listens on port 9000, stop it, reap it.
//!
//! An [`Instance`] is one `scf_bootstrap` process tree serving one connection. On Linux as root
//! each instance gets its own network namespace (so every instance can bind `0.0.0.0:9000`) and
//! its own PID namespace (so nothing it forks, daemonized or not, outlives it, even when scfsim
//! is killed with SIGKILL). The [`Launcher`] owns the machinery shared by all instances.
//!
//! This crate knows processes, sockets and namespaces; it knows nothing of WebSocket frames or
//! of the platform's status codes: failures are reported as facts ([`StartFailure`]) and the
//! gateway decides what they mean.

mod cgroup;
mod error;
mod firewall;
mod instance;
mod launcher;
mod netns;
mod network;
mod outbound;
mod output;
mod procfs;
mod runtimes;
mod sockets;
mod spawn;
mod supervisor;
mod warm;

pub use error::{PoolError, StartFailure, StartFailureKind};
pub use instance::{ExitInfo, Instance, StoppedInstance};
pub use launcher::{Isolation, IsolationRequest, Launcher, LauncherOptions, Ready, INSTANCE_PORT};
pub use output::{CapturedOutput, OutputLine, OutputStream};
pub use runtimes::{RuntimeEntry, RuntimeTree};
pub use spawn::InstanceSpec;
pub use supervisor::SUPERVISOR_ARG;

/// Runs this process as an instance supervisor if scfsim started it as one (its first argument
/// is [`SUPERVISOR_ARG`]), and never returns then. Call it first thing in `main` of the program
/// named by [`LauncherOptions::supervisor`], before any thread or runtime starts.
pub fn run_supervisor_if_requested() {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|arg| arg == SUPERVISOR_ARG) {
        supervisor::main(args)
    }
}
