//! Namespaces without root: each instance is a supervised process tree in its own user
//! namespace (scfsim's user is its root), network, PID and mount namespace. No cgroups (scfsim
//! watches `memory_mb` itself), no network beyond the instance's loopback; scfsim reaches port
//! 9000 through sockets the instance's keeper makes (see [`crate::sockets`]).
//!
//! What [`UserNamespaces::setup`] changes: the `/var/lang` mount point (created if scfsim may)
//! and the generated runtime tree under scfsim's `work_dir`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use tokio::net::TcpStream;

use super::process::{self, Placement, Process, Program, SupervisorLaunch};
use super::Backend;
use crate::error::{PoolError, StartFailure, StartFailureKind};
use crate::launcher::{Isolation, LauncherOptions, INSTANCE_PORT};
use crate::runtimes::RuntimeTree;
use crate::sockets::SocketFactory;
use crate::spawn::{self, InstanceSpec, UserMaps};

pub(crate) struct UserNamespaces {
    why: &'static str,
    supervisor: PathBuf,
    work_dir: PathBuf,
    runtime_overrides: BTreeMap<String, PathBuf>,
    /// scfsim's ids, mapped to root in each instance's user namespace.
    user_maps: UserMaps,
    /// Made by [`Backend::setup`]: the runtime tree, or why there is none.
    runtimes: Option<Result<RuntimeTree, PoolError>>,
}

pub(crate) struct Instance {
    process: Process,
    /// Asks the instance's keeper for sockets inside its network namespace.
    factory: SocketFactory,
}

impl UserNamespaces {
    /// Available when this (unprivileged) process can give an instance its namespaces and use
    /// them: a throwaway child goes through the same steps an instance's does.
    pub(crate) fn probe(options: &LauncherOptions, why: &'static str) -> Result<Self, PoolError> {
        probe_user_namespaces(&options.supervisor)
            .map_err(|source| PoolError::UserNamespaces { source })?;
        Ok(UserNamespaces {
            why,
            supervisor: options.supervisor.clone(),
            work_dir: options.work_dir.clone(),
            runtime_overrides: options.runtimes.clone(),
            user_maps: UserMaps::current(),
            runtimes: None,
        })
    }
}

impl Backend for UserNamespaces {
    type Prepared = ();
    type Instance = Instance;

    fn isolation(&self) -> Isolation {
        Isolation::UserNamespaces
    }

    fn describe(&self) -> String {
        format!(
            "instance isolation: user namespaces ({}): every instance gets its own user \
             (scfsim's user is its root), network, PID and mount namespace, listens on \
             0.0.0.0:{INSTANCE_PORT}, and dies with scfsim; without root scfsim watches \
             memory_mb itself, there is no process limit and no network beyond the \
             instance's loopback",
            self.why
        )
    }

    fn details(&self) -> Vec<String> {
        let mut lines = vec![
            process::watched_limits_line("cgroups need root"),
            "instance network: loopback only (linking a namespace to the host needs root); \
             functions cannot reach the host or the internet"
                .into(),
        ];
        if let Some(runtimes) = &self.runtimes {
            lines.push(process::runtimes_line(runtimes));
        }
        lines
    }

    async fn setup(&mut self) -> Result<(), PoolError> {
        self.runtimes = Some(crate::runtimes::mount_tree(
            &self.work_dir,
            &self.runtime_overrides,
        ));
        Ok(())
    }

    async fn prepare(&self, _spec: &InstanceSpec) -> Result<(), StartFailure> {
        Ok(())
    }

    async fn start(
        &self,
        (): (),
        spec: &InstanceSpec,
        deadline: tokio::time::Instant,
    ) -> Result<Instance, StartFailure> {
        let program = Program::Supervisor(SupervisorLaunch {
            program: self.supervisor.clone(),
            var_lang: self
                .runtimes
                .as_ref()
                .and_then(|r| r.as_ref().ok())
                .map(|t| t.root.clone()),
            user_maps: Some(self.user_maps.clone()),
        });
        let (process, factory) =
            Process::start(spec, program, Placement::default(), deadline).await?;
        // Always there with user maps; dropping the process kills it if it were not.
        let Some(factory) = factory else {
            return Err(StartFailure::before_spawn(StartFailureKind::Internal {
                what: "starting the instance's keeper: no control socket".into(),
                source: None,
            }));
        };
        Ok(Instance { process, factory })
    }

    async fn connect(&self, instance: &Instance) -> io::Result<TcpStream> {
        process::connect_with(instance.factory.socket().await?).await
    }

    process::instance_steps!();
}

/// Whether this (unprivileged) process can give an instance its own user, network, mount and
/// PID namespaces and use them: a throwaway child goes through the same steps an instance's
/// does (maps, loopback up, a mount), then execs the supervisor program, which exits at once.
/// Some kernels allow the namespaces but no capabilities in them (Ubuntu's AppArmor
/// restriction), which only the steps show.
fn probe_user_namespaces(supervisor: &Path) -> io::Result<()> {
    use std::os::unix::process::CommandExt;
    let maps = UserMaps::current();
    let mut probe = std::process::Command::new(supervisor);
    // SAFETY: pre_exec runs between fork and exec, where only async-signal-safe calls are
    // allowed: entering the user namespace writes maps prepared before the fork, and nix's
    // unshare and mount are direct system calls (nix copies short paths like these to the
    // stack, so nothing allocates).
    unsafe {
        probe.pre_exec(move || {
            use nix::mount::{mount, MsFlags};
            use nix::sched::{unshare, CloneFlags};
            spawn::enter_user_namespace(&maps)?;
            unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID)?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )?;
            mount(
                Some("tmpfs"),
                "/tmp",
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )?;
            Ok(())
        });
    }
    // Its exit status does not matter (it is not asked to supervise anything): reaching the
    // exec proves the namespaces work.
    probe
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(drop)
}
