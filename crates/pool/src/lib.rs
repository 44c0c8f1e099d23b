//! Function instances: start a bootstrap, wait until it listens on port 9000, stop it, reap it.
//!
//! An [`Instance`] is one running `scf_bootstrap` serving one connection. The [`Launcher`]
//! starts instances through one isolation backend, chosen once from [`IsolationRequest`] and
//! what the machine allows. This crate knows processes, sockets, namespaces and the host
//! changes they need; it knows nothing of WebSocket frames or of the platform's status codes:
//! failures are reported as facts ([`StartFailure`], with who is at fault) and the gateway
//! decides what they mean.
//!
//! # Layout
//! - The instance lifecycle, the same for every backend: [`Launcher`] (`launcher.rs`: check the
//!   bootstrap, prepare, start, wait for port 9000) and [`Instance`] (`instance.rs`: stop with a
//!   grace period, reap).
//! - The seam: `backend.rs`, the `Backend` trait and the one function that picks a backend.
//!   Each backend is one module under `backend/`: `namespaces` (root: network, PID and mount
//!   namespaces, cgroups, veth and NAT), `user_namespaces` (without root), `none` (the host's
//!   network, one instance at a time), `docker` (a container of the Docker engine per
//!   instance: image functions, and code functions with `isolation = "docker"`);
//!   `backend/process.rs` is what these three share (a
//!   supervised or plain child process, its output, its memory watch).
//! - The host changes the backends make, each in its own module: `netns` and `warm` (network
//!   namespaces, prepared ahead of demand), `network` (veth links), `outbound` (nftables NAT,
//!   `ip_forward`), `cgroup`, `runtimes` (the `/var/lang` tree). A backend changes the host
//!   only in [`Launcher::setup`], the explicit step after [`Launcher::new`], never in a
//!   constructor.
//! - Inside an instance: `spawn` (fork and the child's setup), `supervisor` (the program between
//!   scfsim and the bootstrap), `sockets` (sockets made in a namespace scfsim cannot enter),
//!   `procfs`, `output` (what an instance prints).

mod backend;
mod cgroup;
mod debug;
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

pub use debug::{Connecting, Connector, DebugTap};
pub use error::{
    with_sources, BoxError, Fault, PoolError, PortHolder, StartFailure, StartFailureKind,
};
pub use instance::{ExitInfo, Instance, StoppedInstance};
pub use launcher::{Isolation, IsolationRequest, Launcher, LauncherOptions, Ready, INSTANCE_PORT};
pub use output::{CapturedOutput, OutputLine, OutputStream};
pub use runtimes::{RuntimeEntry, RuntimeTree};
pub use spawn::{ImageSpec, InstanceSpec};
pub use supervisor::SUPERVISOR_ARG;

/// Runs this process as an instance supervisor if scfsim started it as one (its first argument
/// is [`SUPERVISOR_ARG`]), or as the Docker backend's container reaper, and never returns
/// then. Call it first thing in `main` of the program
/// named by [`LauncherOptions::supervisor`], before any thread or runtime starts.
pub fn run_supervisor_if_requested() {
    let mut args = std::env::args_os().skip(1);
    match args.next() {
        Some(arg) if arg == SUPERVISOR_ARG => supervisor::main(args),
        Some(arg) if arg == backend::docker::REAPER_ARG => backend::docker::reaper::main(args),
        _ => {}
    }
}
