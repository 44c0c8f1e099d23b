//! What the process backends share: an instance as a child process of scfsim (the bootstrap
//! itself, or the supervisor that runs it), its output from its pipes, its memory limit from a
//! cgroup or from scfsim's own watch, and a stop by signals to its process group.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::Child;
use tokio::task::JoinHandle;

use crate::backend::Stop;
use crate::cgroup::InstanceCgroup;
use crate::error::{with_sources, PoolError, StartFailure, StartFailureKind};
use crate::instance::ExitInfo;
use crate::launcher::INSTANCE_PORT;
use crate::output::{CapturedOutput, OutputLog, OutputStream};
use crate::runtimes::RuntimeTree;
use crate::sockets::SocketFactory;
use crate::spawn::{self, ChildSetup, InstanceSpec, Supervised, UserMaps, MAX_PROCESSES};
use crate::supervisor::{self, Stage, SupervisorArgs};

/// The platform's writable `/tmp`, private to each instance.
const TMP_MB: u32 = 512;

/// How long a stopped instance's pipes may stay open after its process ended (a daemon that
/// escaped the group could hold them forever without PID namespaces).
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// One instance's process tree: its first process is a child of scfsim and leads a process
/// group. Owned by a backend's instance from spawn to [`Process::reap`]; dropped before, it
/// kills its group at once (tokio then reaps the process in the background).
pub(crate) struct Process {
    child: Child,
    pid: u32,
    output: OutputLog,
    readers: Vec<JoinHandle<()>>,
    exit: Option<ExitInfo>,
    /// Memory and process limits; removed after the processes are reaped.
    cgroup: Option<InstanceCgroup>,
    /// Without a cgroup: `memory_mb` in bytes, watched by scfsim over the process tree's RSS.
    memory_limit: Option<u64>,
}

/// What runs as the instance's first process.
pub(crate) enum Program {
    /// The bootstrap itself (no namespaces).
    Bootstrap,
    /// The supervisor, which makes the instance's namespaces and reports how far it got.
    Supervisor(SupervisorLaunch),
}

/// What the supervisor of one instance is told.
pub(crate) struct SupervisorLaunch {
    pub program: PathBuf,
    /// The generated tree to mount on `/var/lang`, if there is one.
    pub var_lang: Option<PathBuf>,
    /// Without root: a user namespace with scfsim's ids as root, and a keeper that makes
    /// sockets in the instance's network namespace for scfsim.
    pub user_maps: Option<UserMaps>,
}

/// What to give a process before it runs.
#[derive(Default)]
pub(crate) struct Placement {
    /// The network namespace to join (a descriptor of this process).
    pub netns: Option<std::os::fd::RawFd>,
    pub cgroup: Option<InstanceCgroup>,
}

impl Process {
    /// Spawns the instance's first process. With a supervisor, returns once the bootstrap's
    /// exec succeeded (or failed: then nothing is left running), with the socket factory if
    /// the supervisor makes sockets for scfsim.
    pub(crate) async fn start(
        spec: &InstanceSpec,
        program: Program,
        placement: Placement,
        deadline: tokio::time::Instant,
    ) -> Result<(Process, Option<SocketFactory>), StartFailure> {
        let (process, report, factory) = Process::spawn(spec, program, placement, None)?;
        if let Some(report) = report {
            if let Some(kind) = read_report(report, &spec.bootstrap, deadline).await {
                return Err(process.failed(kind).await);
            }
            tracing::debug!("bootstrap exec'd");
        }
        Ok((process, factory))
    }

    /// Starts a supervisor that parks (see [`Parked`]); returns once its init waits for a
    /// function.
    pub(crate) async fn park(
        launch: SupervisorLaunch,
        placement: Placement,
        deadline: tokio::time::Instant,
    ) -> Result<Parked, StartFailure> {
        let internal = |what: &str, source: io::Error| {
            StartFailure::before_spawn(StartFailureKind::internal(what, source))
        };
        let (theirs, ours) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| internal("creating the supervisor's hand-over pipe", e.into()))?;
        // Nothing of a function yet: the supervisor's directory is `/` until its hand-over.
        let spec = InstanceSpec {
            code_dir: "/".into(),
            ..InstanceSpec::default()
        };
        let (process, report, _) =
            Process::spawn(&spec, Program::Supervisor(launch), placement, Some(theirs))?;
        let report = match report.map(receiver) {
            Some(Ok(report)) => report,
            Some(Err(kind)) => return Err(process.failed(kind).await),
            None => unreachable!("a supervisor always has a report pipe"),
        };
        let (report, kind) =
            read_mark(report, supervisor::REPORT_PARKED, &spec.bootstrap, deadline).await;
        match (report, kind) {
            (Some(report), None) => Ok(Parked {
                process,
                report,
                handover: ours,
            }),
            (_, kind) => Err(process
                .failed(kind.unwrap_or_else(|| {
                    StartFailureKind::internal(
                        "parking a supervisor",
                        io::Error::other("it ended before it was parked"),
                    )
                }))
                .await),
        }
    }

    /// Spawns the first process; with a supervisor, also returns the read end of its report
    /// pipe. `handover`, for a supervisor that parks, is the read end of its hand-over pipe.
    fn spawn(
        spec: &InstanceSpec,
        program: Program,
        placement: Placement,
        handover: Option<OwnedFd>,
    ) -> Result<(Process, Option<OwnedFd>, Option<SocketFactory>), StartFailure> {
        let memory_limit = match placement.cgroup {
            Some(_) => None,
            None => spec.memory_mb.map(|mb| u64::from(mb) << 20),
        };
        let (report, factory, supervised, user_namespace) = match program {
            Program::Bootstrap => (None, None, None, None),
            Program::Supervisor(launch) => {
                let user_maps = launch.user_maps.clone();
                let (report, factory, supervised) = supervised(spec, launch, handover)?;
                (Some(report), factory, Some(supervised), user_maps)
            }
        };
        let direct = supervised.is_none();
        let setup = ChildSetup {
            netns: placement.netns,
            cgroup_procs: placement
                .cgroup
                .as_ref()
                .map(|c| c.procs_fds())
                .unwrap_or_default(),
            supervised,
            user_namespace,
        };
        let mut cmd = spawn::command(spec, &setup);
        let spawned = cmd.spawn();
        // scfsim's copies of the supervisor's ends go: the report pipe ends with the exec, the
        // control socket with the keeper, the hand-over pipe with init.
        drop(setup);
        let mut child = spawned.map_err(|source| {
            // With a supervisor, the bootstrap's own exec errors come on the report pipe; a
            // failed spawn is scfsim's (its pre_exec or the supervisor's exec).
            StartFailure::before_spawn(if direct {
                spawn_failure(&spec.bootstrap, source)
            } else {
                StartFailureKind::internal("starting the instance's supervisor", source)
            })
        })?;
        let pid = child.id().unwrap_or_default();
        tracing::debug!(pid, "instance spawned");
        let output = OutputLog::default();
        let mut readers = Vec::with_capacity(2);
        if let Some(out) = child.stdout.take() {
            readers.push(output.capture(out, OutputStream::Stdout));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(output.capture(err, OutputStream::Stderr));
        }
        let process = Process {
            child,
            pid,
            output,
            readers,
            exit: None,
            cgroup: placement.cgroup,
            memory_limit,
        };
        Ok((process, report, factory))
    }

    /// Stops and reaps a process that could not become an instance.
    async fn failed(mut self, kind: StartFailureKind) -> StartFailure {
        if self.exit.is_none() {
            self.signal(Stop::Kill);
        }
        self.exited().await;
        StartFailure {
            kind,
            pid: Some(self.pid),
            exit: None,
            output: self.reap().await,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn exit(&self) -> Option<ExitInfo> {
        self.exit
    }

    /// Resolves when the first process ends. Cancel-safe; returns at once if it already has.
    pub(crate) async fn exited(&mut self) -> ExitInfo {
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
    pub(crate) fn memory_exceeded(&self) -> bool {
        if let Some(cgroup) = &self.cgroup {
            return cgroup.oom_killed();
        }
        match self.memory_limit {
            Some(limit)
                if self.exit.is_none() && crate::procfs::tree_rss_bytes(self.pid) > limit =>
            {
                self.signal(Stop::Kill);
                true
            }
            _ => false,
        }
    }

    /// Signals the process group. (With PID namespaces nothing of the instance is outside it;
    /// without them, a child that left the group survives: the documented weakness of
    /// isolation = "none".)
    pub(crate) fn signal(&self, how: Stop) {
        let signal = match how {
            Stop::Term => Signal::SIGTERM,
            Stop::Kill => Signal::SIGKILL,
        };
        // The group may already be gone; that is the goal, not an error.
        let _ = killpg(Pid::from_raw(self.pid as i32), signal);
    }

    /// Once the first process is reaped: the complete output (both pipes read to their end,
    /// bounded), and the cgroup removed.
    pub(crate) async fn reap(mut self) -> CapturedOutput {
        self.exited().await;
        for reader in self.readers.drain(..) {
            let abort = reader.abort_handle();
            if tokio::time::timeout(OUTPUT_DRAIN, reader).await.is_err() {
                abort.abort();
            }
        }
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.remove().await;
        }
        self.output.snapshot()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.signal(Stop::Kill);
        }
        for reader in &self.readers {
            reader.abort();
        }
    }
}

/// The supervisor's command line, its report pipe and, without root, its control socket.
fn supervised(
    spec: &InstanceSpec,
    launch: SupervisorLaunch,
    handover: Option<OwnedFd>,
) -> Result<(OwnedFd, Option<SocketFactory>, Supervised), StartFailure> {
    let internal = |what: &str, source: io::Error| {
        StartFailure::before_spawn(StartFailureKind::internal(what, source))
    };
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| internal("creating the supervisor's report pipe", e.into()))?;
    let (factory, control) = match launch.user_maps {
        Some(_) => {
            let (ours, theirs) = SocketFactory::pair()
                .map_err(|e| internal("creating the supervisor's control socket", e))?;
            (Some(ours), Some(theirs))
        }
        None => (None, None),
    };
    let supervised = Supervised {
        program: launch.program,
        args: SupervisorArgs {
            report_fd: write.as_raw_fd(),
            control_fd: control.as_ref().map_or(-1, |c| c.as_raw_fd()),
            handover_fd: handover.as_ref().map_or(-1, |h| h.as_raw_fd()),
            var_lang: launch.var_lang.map(Into::into),
            tmp_mb: private_tmp_mb(spec),
            bootstrap: spec.bootstrap.clone().into(),
            env: spec
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}").into())
                .collect(),
        },
        report: write,
        control,
        handover,
    };
    Ok((read, factory, supervised))
}

type Receiver = tokio::net::unix::pipe::Receiver;

fn receiver(report: OwnedFd) -> Result<Receiver, StartFailureKind> {
    Receiver::from_owned_fd(report)
        .map_err(|e| StartFailureKind::internal("reading the supervisor's report", e))
}

/// Reads the supervisor's report pipe to its end (the bootstrap's exec, or the supervisor's
/// exit): nothing in it means the bootstrap runs.
async fn read_report(
    report: OwnedFd,
    bootstrap: &Path,
    deadline: tokio::time::Instant,
) -> Option<StartFailureKind> {
    match receiver(report) {
        Ok(receiver) => read_rest(receiver, Vec::new(), bootstrap, deadline).await,
        Err(kind) => Some(kind),
    }
}

/// Reads the report pipe to its end after `bytes` came on it.
async fn read_rest(
    mut receiver: Receiver,
    mut bytes: Vec<u8>,
    bootstrap: &Path,
    deadline: tokio::time::Instant,
) -> Option<StartFailureKind> {
    use tokio::io::AsyncReadExt;
    if tokio::time::timeout_at(deadline, receiver.read_to_end(&mut bytes))
        .await
        .is_err()
    {
        return Some(StartFailureKind::Internal {
            what: "the instance's supervisor did not reach the bootstrap's exec within the init \
                   timeout"
                .into(),
            source: None,
        });
    }
    decode(&bytes, bootstrap)
}

fn decode(bytes: &[u8], bootstrap: &Path) -> Option<StartFailureKind> {
    match supervisor::decode_report(bytes) {
        None if bytes.is_empty() => None,
        None => Some(StartFailureKind::Internal {
            what: format!("reading the supervisor's report: unreadable {bytes:?}"),
            source: None,
        }),
        Some((Stage::Exec, source)) => Some(spawn_failure(bootstrap, source)),
        Some((stage, source)) => Some(StartFailureKind::internal(stage.describe(), source)),
    }
}

/// Waits for a parked supervisor's `mark` on its report pipe: the pipe back if it came; else
/// the failure reported instead, or `None` if the pipe ended with nothing in it (the
/// supervisor is gone).
async fn read_mark(
    mut receiver: Receiver,
    mark: u8,
    bootstrap: &Path,
    deadline: tokio::time::Instant,
) -> (Option<Receiver>, Option<StartFailureKind>) {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    match tokio::time::timeout_at(deadline, receiver.read(&mut byte)).await {
        Ok(Ok(1)) if byte[0] == mark => (Some(receiver), None),
        Ok(Ok(1)) => (
            None,
            read_rest(receiver, byte.to_vec(), bootstrap, deadline).await,
        ),
        Ok(_) => (None, None),
        Err(_) => (
            None,
            Some(StartFailureKind::Internal {
                what: "the instance's supervisor did not park within its timeout".into(),
                source: None,
            }),
        ),
    }
}

/// A supervisor started ahead of demand with a warm network namespace: in its cgroups (without
/// a memory limit yet) and network namespace, its mount and PID namespaces made, its init
/// waiting on the hand-over pipe for the one function it will run. What a connection then
/// hands over is only what is the function's own (see [`supervisor::Handover`]); init does the
/// function's mounts, enters its directory and forks and execs its bootstrap exactly as an
/// unparked supervisor does, so that the instance is the same.
pub(crate) struct Parked {
    process: Process,
    report: Receiver,
    /// The write end of the hand-over pipe.
    handover: OwnedFd,
}

/// Why a hand-over did not start the function.
pub(crate) enum HandoverError {
    /// The parked supervisor had ended (killed, say): another start may take its place.
    Gone,
    /// The function's start failed, as an unparked start would have.
    Failed(StartFailure),
}

impl Parked {
    pub(crate) fn pid(&self) -> u32 {
        self.process.pid
    }

    /// How the supervisor ended, once it has (without waiting).
    pub(crate) fn ended(&mut self) -> Option<ExitInfo> {
        match self.process.child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(status.into()),
            Err(_) => Some(ExitInfo {
                code: None,
                signal: None,
            }),
        }
    }

    /// Stops and reaps a supervisor that will serve nothing.
    pub(crate) async fn discard(self) {
        let process = self.process;
        process.signal(Stop::Kill);
        process.reap().await;
    }

    /// Kills it and removes its cgroup at once, without a runtime (a drop).
    pub(crate) fn discard_now(mut self, bound: Duration) {
        self.process.signal(Stop::Kill);
        if let Some(cgroup) = self.process.cgroup.take() {
            cgroup.remove_blocking(bound);
        }
    }

    /// Hands the function of `spec` over: its memory limit, then its directory, bootstrap,
    /// environment and mounts to init. Returns once the bootstrap's exec succeeded, as
    /// [`Process::start`] does.
    pub(crate) async fn hand_over(
        self,
        spec: &InstanceSpec,
        var_lang: Option<&Path>,
        deadline: tokio::time::Instant,
    ) -> Result<Process, HandoverError> {
        use tokio::io::AsyncWriteExt;
        let Parked {
            mut process,
            report,
            handover,
        } = self;
        if let Some(mb) = spec.memory_mb {
            match &process.cgroup {
                Some(cgroup) => {
                    if let Err(e) = cgroup.limit_memory(mb) {
                        let kind =
                            StartFailureKind::internal("setting the instance's memory limit", e);
                        return Err(HandoverError::Failed(process.failed(kind).await));
                    }
                }
                None => process.memory_limit = Some(u64::from(mb) << 20),
            }
        }
        let message = supervisor::Handover {
            cwd: spec.code_dir.as_os_str(),
            bootstrap: spec.bootstrap.as_os_str(),
            var_lang: var_lang.map(Path::as_os_str),
            tmp_mb: private_tmp_mb(spec),
            env: &spec.env,
        }
        .encode();
        let written = match tokio::net::unix::pipe::Sender::from_owned_fd(handover) {
            Ok(mut sender) => {
                matches!(
                    tokio::time::timeout_at(deadline, sender.write_all(&message)).await,
                    Ok(Ok(()))
                )
            }
            Err(_) => false,
        };
        tracing::debug!(pid = process.pid, "hand-over written");
        let (report, kind) = if written {
            read_mark(
                report,
                supervisor::REPORT_HANDED_OVER,
                &spec.bootstrap,
                deadline,
            )
            .await
        } else {
            (None, None)
        };
        let failed = match (report, kind) {
            (Some(report), None) => read_rest(report, Vec::new(), &spec.bootstrap, deadline).await,
            (None, Some(kind)) => Some(kind),
            _ => {
                tokio::spawn(async move {
                    process.signal(Stop::Kill);
                    process.reap().await
                });
                return Err(HandoverError::Gone);
            }
        };
        match failed {
            Some(kind) => Err(HandoverError::Failed(process.failed(kind).await)),
            None => {
                tracing::debug!("bootstrap exec'd");
                Ok(process)
            }
        }
    }
}

/// A private tmpfs on `/tmp`, unless the function's own files are under the host's `/tmp`
/// (a test's temporary directory, say), which it would hide.
fn private_tmp_mb(spec: &InstanceSpec) -> u32 {
    // Resolved, so that a symlink into /tmp counts as /tmp.
    let under_tmp = |p: &Path| {
        std::fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .is_ok_and(|p| p.starts_with("/tmp"))
    };
    if under_tmp(&spec.code_dir) || under_tmp(&spec.bootstrap) {
        0
    } else {
        TMP_MB
    }
}

/// An exec error is the bootstrap's (445); anything else failed in scfsim's own setup.
fn spawn_failure(bootstrap: &Path, source: io::Error) -> StartFailureKind {
    use nix::errno::Errno;
    match source.raw_os_error().map(Errno::from_raw) {
        Some(
            Errno::ENOENT
            | Errno::EACCES
            | Errno::ENOEXEC
            | Errno::ENOTDIR
            | Errno::ELOOP
            | Errno::ETXTBSY
            | Errno::EISDIR
            | Errno::ENAMETOOLONG
            | Errno::E2BIG,
        ) => StartFailureKind::Spawn {
            path: bootstrap.to_path_buf(),
            source,
        },
        _ => StartFailureKind::internal("starting the bootstrap", source),
    }
}

/// Connects `socket` (a TCP socket of the instance's network namespace, made where scfsim
/// could enter it) to the instance's port 9000.
pub(crate) async fn connect_with(socket: OwnedFd) -> io::Result<TcpStream> {
    connect_port_with(socket, INSTANCE_PORT).await
}

/// Connects `socket` (as for [`connect_with`]) to another port of the instance, its debugger's.
pub(crate) async fn connect_port_with(socket: OwnedFd, port: u16) -> io::Result<TcpStream> {
    let socket = std::net::TcpStream::from(socket);
    // A blocking socket would block a runtime thread in every read.
    socket.set_nonblocking(true)?;
    TcpSocket::from_std_stream(socket)
        .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
}

/// The runtime tree a process instance of `spec` gets on `/var/lang`: in debug mode, the one
/// whose Python runs under debugpy.
pub(crate) fn var_lang_for(tree: &RuntimeTree, spec: &InstanceSpec) -> PathBuf {
    match spec.debug {
        Some(_) => tree.debug_root.clone(),
        None => tree.root.clone(),
    }
}

/// The startup log line for limits a cgroup enforces.
pub(crate) fn enforced_limits_line(cgroups: &str) -> String {
    format!(
        "instance limits: memory_mb, {MAX_PROCESSES} processes+threads via {cgroups}; {} open \
         files",
        supervisor::MAX_OPEN_FILES
    )
}

/// The startup log line for limits without a cgroup: scfsim watches the memory itself.
pub(crate) fn watched_limits_line(why: &str) -> String {
    format!(
        "instance limits: memory_mb watched by scfsim (the process tree's RSS, every 0.5 s; \
         killed above it), the process limit NOT enforced ({why}); {} open files",
        supervisor::MAX_OPEN_FILES
    )
}

/// The startup log line for the `/var/lang` tree.
pub(crate) fn runtimes_line(runtimes: &Result<RuntimeTree, PoolError>) -> String {
    match runtimes {
        Ok(tree) => tree.describe(),
        Err(why) => format!("/var/lang runtimes: not mapped ({})", with_sources(why)),
    }
}

/// The per-instance steps of a backend whose instance is a supervised child process, kept in
/// its `process` field: the same for every process backend, so written once.
macro_rules! instance_steps {
    () => {
        fn pid(&self, instance: &Self::Instance) -> u32 {
            instance.process.pid()
        }

        fn exit(&self, instance: &Self::Instance) -> Option<$crate::instance::ExitInfo> {
            instance.process.exit()
        }

        async fn exited(&self, instance: &mut Self::Instance) -> $crate::instance::ExitInfo {
            instance.process.exited().await
        }

        fn memory_exceeded(&self, instance: &Self::Instance) -> bool {
            instance.process.memory_exceeded()
        }

        async fn stop(&self, instance: &mut Self::Instance, how: $crate::backend::Stop) {
            instance.process.signal(how)
        }

        async fn reap(&self, instance: Self::Instance) -> $crate::output::CapturedOutput {
            instance.process.reap().await
        }
    };
}
pub(crate) use instance_steps;
