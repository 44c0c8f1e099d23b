use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use crate::cgroup::Cgroups;
use crate::error::{PoolError, StartFailure, StartFailureKind};
use crate::instance::Instance;
use crate::netns::{Netns, NetnsWorker};
use crate::network::HostNetwork;
use crate::outbound::Outbound;
use crate::output::{OutputLog, OutputStream};
use crate::runtimes::RuntimeTree;
use crate::sockets::SocketFactory;
use crate::spawn::{self, ChildSetup, InstanceSpec, Supervised, UserMaps, MAX_PROCESSES};
use crate::supervisor::{self, Stage, SupervisorArgs};
use crate::warm::WarmPool;

/// Where platform bootstraps find their runtimes.
const VAR_LANG: &str = "/var/lang";

/// The platform's writable `/tmp`, private to each instance.
const TMP_MB: u32 = 512;

/// The port every instance listens on, as on the platform.
pub const INSTANCE_PORT: u16 = 9000;

/// What the user asked for (config key `isolation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationRequest {
    /// Namespaces where the machine allows them, else none.
    Auto,
    /// Namespaces, or fail at startup.
    Namespaces,
    /// No namespaces: instances share the host's network and PID space.
    None,
}

/// What the launcher does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Own network and PID namespace per instance.
    Namespaces,
    /// Without root: own user, network, PID and mount namespace per instance; no cgroups and
    /// no network beyond the instance's loopback.
    UserNamespaces,
    /// Host network: only one instance can listen on port 9000 at a time.
    None,
}

/// An instance that accepted a TCP connection on port 9000, and that connection.
pub struct Ready {
    pub instance: Instance,
    pub stream: TcpStream,
    /// From spawn to the accepted connection.
    pub startup: Duration,
}

/// How the launcher is set up.
#[derive(Debug, Clone)]
pub struct LauncherOptions {
    pub isolation: IsolationRequest,
    /// Config `[runtimes]`: `/var/lang`-relative paths mapped to interpreters here.
    pub runtimes: BTreeMap<String, PathBuf>,
    /// A directory of scfsim's own (under `data_dir`) for the generated `/var/lang` tree.
    pub work_dir: PathBuf,
    /// The program that supervises each instance with namespaces: one whose `main` calls
    /// [`crate::run_supervisor_if_requested`] first (`/proc/self/exe` for the scfsim binary).
    pub supervisor: PathBuf,
}

/// Starts instances. One per scfsim; cheap to share behind an `Arc`.
pub struct Launcher {
    isolation: Isolation,
    /// Namespaces (with their network) prepared ahead of demand; `None` without isolation.
    warm: Option<Arc<WarmPool>>,
    why: String,
    cgroups: Result<Cgroups, String>,
    /// Why instances have no network to the host, if they have none.
    no_network: Option<String>,
    /// NAT beyond the host (removed when the launcher goes), or why there is none.
    outbound: Result<Outbound, String>,
    runtimes: Result<RuntimeTree, String>,
    supervisor: PathBuf,
    /// With `isolation = "none"` the host's port 9000 fits one instance at a time.
    host_port: Arc<Semaphore>,
    /// Instance ids for cgroup names.
    next_id: AtomicU64,
    /// Without root: scfsim's ids, mapped to root in each instance's user namespace.
    user_maps: Option<UserMaps>,
}

/// Readiness back-off: first retry well under a millisecond (a native bootstrap listens ~1 ms
/// after spawn), then doubling, capped so that a slow runtime (Python ~100 ms) is polled a
/// few dozen times at most and the poller does not compete for the CPU it needs to start.
const FIRST_RETRY: Duration = Duration::from_micros(100);
const MAX_RETRY: Duration = Duration::from_millis(8);

impl Launcher {
    pub fn new(options: LauncherOptions) -> Result<Launcher, PoolError> {
        let unprivileged = || match probe_user_namespaces(&options.supervisor) {
            Ok(()) => Ok((
                Isolation::UserNamespaces,
                None,
                "scfsim is not root, and unprivileged user namespaces work here".to_string(),
            )),
            Err(source) => Err(PoolError::Namespace { source }),
        };
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let (isolation, netns, why) = match options.isolation {
            IsolationRequest::None => (
                Isolation::None,
                None,
                "isolation = \"none\" in the config".to_string(),
            ),
            IsolationRequest::Namespaces if !root => unprivileged()?,
            IsolationRequest::Namespaces => (
                Isolation::Namespaces,
                Some(NetnsWorker::start()?),
                "isolation = \"namespaces\" in the config".to_string(),
            ),
            IsolationRequest::Auto if !root => unprivileged().unwrap_or_else(|err| {
                (
                    Isolation::None,
                    None,
                    format!("scfsim is not root, and {err}"),
                )
            }),
            IsolationRequest::Auto => match NetnsWorker::start() {
                Ok(worker) => (
                    Isolation::Namespaces,
                    Some(worker),
                    "network and PID namespaces are available".to_string(),
                ),
                Err(err) => (Isolation::None, None, err.to_string()),
            },
        };
        let namespaces = isolation == Isolation::Namespaces;
        let mount_namespace = namespaces || isolation == Isolation::UserNamespaces;
        let cgroups = match isolation {
            Isolation::Namespaces => Cgroups::setup(),
            Isolation::UserNamespaces => Err("cgroups need root".into()),
            Isolation::None => Err("needs isolation = namespaces".into()),
        };
        let (network, no_network) = match HostNetwork::probe() {
            Ok(network) if namespaces => (Some(network), None),
            Ok(_) => (None, None),
            Err(err) => {
                let mut why = err.to_string();
                let mut source = std::error::Error::source(&err);
                while let Some(cause) = source {
                    why = format!("{why}: {cause}");
                    source = cause.source();
                }
                (None, Some(why))
            }
        };
        let outbound = match &network {
            Some(_) => Outbound::enable(),
            None => Err("instances have no network to the host".into()),
        };
        let warm = netns.map(|worker| WarmPool::new(worker, network));
        let runtimes = if mount_namespace {
            // The mount point must exist on the host. It stays (empty) when scfsim stops:
            // another scfsim may be using it as its mount point at that moment.
            let mount_point = Path::new(VAR_LANG);
            if !mount_point.exists() {
                let _ = std::fs::create_dir_all(mount_point);
            }
            if mount_point.is_dir() {
                std::path::absolute(options.work_dir.join("var-lang"))
                    .and_then(|root| RuntimeTree::build(&root, &options.runtimes))
                    .map_err(|e| format!("cannot build the /var/lang tree: {e}"))
            } else {
                Err(format!(
                    "the mount point {VAR_LANG} does not exist and scfsim cannot create it; \
                     create it once as root: sudo mkdir {VAR_LANG}"
                ))
            }
        } else {
            Err("/var/lang paths need isolation = namespaces (a mount namespace)".into())
        };
        Ok(Launcher {
            isolation,
            warm,
            why,
            cgroups,
            no_network,
            outbound,
            runtimes,
            supervisor: options.supervisor,
            host_port: Arc::new(Semaphore::new(1)),
            next_id: AtomicU64::new(0),
            user_maps: (isolation == Isolation::UserNamespaces).then(UserMaps::current),
        })
    }

    /// Startup log lines: limits and runtimes in force, or why not.
    pub fn details(&self) -> Vec<String> {
        let mut lines = Vec::new();
        match &self.cgroups {
            Ok(c) => lines.push(format!(
                "instance limits: memory_mb, {MAX_PROCESSES} processes+threads via {}; {} open files",
                c.describe(),
                supervisor::MAX_OPEN_FILES
            )),
            Err(why) => lines.push(format!(
                "instance limits: memory_mb watched by scfsim (the process tree's RSS, every \
                 0.5 s; killed above it), the process limit NOT enforced ({why}); {} open files",
                supervisor::MAX_OPEN_FILES
            )),
        }
        match (&self.warm, &self.no_network) {
            (Some(warm), _) if warm.has_network() => lines.push(format!(
                "instance network: a veth pair per instance (169.254.0.0/16); the host is \
                 reachable at SCFSIM_HOST, {}",
                match &self.outbound {
                    Ok(nat) => nat.describe(),
                    Err(why) => format!("the internet is not ({why})"),
                }
            )),
            (Some(_), why) => lines.push(format!(
                "instance network: loopback only ({}); functions cannot reach the host",
                why.as_deref().unwrap_or("unavailable")
            )),
            (None, _) if self.isolation == Isolation::UserNamespaces => lines.push(
                "instance network: loopback only (linking a namespace to the host needs root); \
                 functions cannot reach the host or the internet"
                    .into(),
            ),
            (None, _) => {}
        }
        match &self.runtimes {
            Ok(tree) => lines.push(tree.describe()),
            Err(why) => lines.push(format!("/var/lang runtimes: not mapped ({why})")),
        }
        lines
    }

    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    /// One line for the startup log: what isolation is in force, why, and what it means.
    pub fn describe(&self) -> String {
        match self.isolation {
            Isolation::Namespaces => format!(
                "instance isolation: namespaces ({}): every instance gets its own network and \
                 PID namespace, listens on 0.0.0.0:{INSTANCE_PORT}, and dies with scfsim",
                self.why
            ),
            Isolation::UserNamespaces => format!(
                "instance isolation: user namespaces ({}): every instance gets its own user \
                 (scfsim's user is its root), network, PID and mount namespace, listens on \
                 0.0.0.0:{INSTANCE_PORT}, and dies with scfsim; without root scfsim watches \
                 memory_mb itself, there is no process limit and no network beyond the \
                 instance's loopback",
                self.why
            ),
            Isolation::None => format!(
                "instance isolation: NONE ({}): instances share the host network, so only ONE \
                 instance at a time can run (later connections get HTTP 429 / status 432 while \
                 one is open), /var/lang paths do not work, memory_mb is watched by scfsim, and \
                 processes that leave the bootstrap's process group are not stopped; run scfsim \
                 as root for full isolation",
                self.why
            ),
        }
    }

    /// Spawns the bootstrap and waits until it accepts a connection on port 9000.
    pub async fn start(&self, spec: &InstanceSpec) -> Result<Ready, StartFailure> {
        check_bootstrap(spec)?;
        let host_port = match self.isolation {
            Isolation::None => Some(self.claim_host_port().await?),
            Isolation::Namespaces | Isolation::UserNamespaces => None,
        };
        let internal =
            |detail: String| StartFailure::before_spawn(StartFailureKind::Internal { detail });
        let prepared = match &self.warm {
            Some(warm) => Some(warm.take().await.map_err(|e| {
                internal(format!("preparing the instance's network namespace: {e}"))
            })?),
            None => None,
        };
        let cgroup = match &self.cgroups {
            Ok(cgroups) => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
                Some(
                    cgroups
                        .create(&id, spec.memory_mb, MAX_PROCESSES)
                        .map_err(|e| internal(format!("creating the instance's cgroup: {e}")))?,
                )
            }
            Err(_) => None,
        };
        let began = Instant::now();
        // One deadline for the whole start: the supervisor's report and the readiness wait.
        let deadline = tokio::time::Instant::now() + spec.init_timeout;
        let mut env = spec.env.clone();
        let netns = match prepared {
            Some(prepared) => {
                if let Some(lease) = prepared.lease {
                    env.push(("SCFSIM_HOST".into(), lease.host.to_string()));
                }
                Some(prepared.netns)
            }
            None => {
                if self.isolation == Isolation::None {
                    env.push(("SCFSIM_HOST".into(), "127.0.0.1".into()));
                }
                None
            }
        };
        let spec = &InstanceSpec {
            env,
            ..spec.clone()
        };
        let (report, factory, supervised) = match self.isolation {
            Isolation::Namespaces | Isolation::UserNamespaces => {
                let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| internal(format!("creating the supervisor's report pipe: {e}")))?;
                let (factory, control) = match self.user_maps {
                    Some(_) => {
                        let (ours, theirs) = SocketFactory::pair().map_err(|e| {
                            internal(format!("creating the supervisor's control socket: {e}"))
                        })?;
                        (Some(ours), Some(theirs))
                    }
                    None => (None, None),
                };
                let supervised = Supervised {
                    program: self.supervisor.clone(),
                    args: SupervisorArgs {
                        report_fd: write.as_raw_fd(),
                        control_fd: control.as_ref().map_or(-1, |c| c.as_raw_fd()),
                        var_lang: self.runtimes.as_ref().ok().map(|t| t.root.clone().into()),
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
                };
                (Some(read), factory, Some(supervised))
            }
            Isolation::None => (None, None, None),
        };
        let setup = ChildSetup {
            netns: netns.as_ref().map(|ns| ns.raw_fd()),
            cgroup_procs: cgroup.as_ref().map(|c| c.procs_fds()).unwrap_or_default(),
            supervised,
            user_namespace: self.user_maps.clone(),
        };
        let mut cmd = spawn::command(spec, &setup);
        let spawned = cmd.spawn();
        // scfsim's copies of the supervisor's ends go: the report pipe ends with the exec, the
        // control socket with the keeper.
        drop(setup);
        let mut child = spawned.map_err(|source| {
            // With a supervisor, the bootstrap's own exec errors come on the report pipe; a
            // failed spawn is scfsim's (its pre_exec or the supervisor's exec).
            let kind = match self.isolation {
                Isolation::None => spawn_failure(&spec.bootstrap, source),
                _ => StartFailureKind::Internal {
                    detail: format!("starting the instance's supervisor: {source}"),
                },
            };
            StartFailure::before_spawn(kind)
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
        let mut instance = Instance {
            child,
            pid,
            output,
            readers,
            _netns: netns.clone(),
            exit: None,
            memory_limit: match cgroup {
                Some(_) => None,
                None => spec.memory_mb.map(|mb| u64::from(mb) << 20),
            },
            cgroup,
            _host_port: host_port,
        };
        if let Some(report) = report {
            if let Some(kind) = read_report(report, &spec.bootstrap, deadline).await {
                let stopped = instance.stop(Duration::ZERO).await;
                return Err(StartFailure {
                    kind,
                    pid: Some(pid),
                    exit: None,
                    output: stopped.output,
                });
            }
        }
        match self
            .wait_listening(&mut instance, netns, factory, deadline, spec.init_timeout)
            .await
        {
            Ok(stream) => Ok(Ready {
                instance,
                stream,
                startup: began.elapsed(),
            }),
            Err(kind) => {
                let exited_early = matches!(kind, StartFailureKind::ExitedBeforeListening { .. });
                let stopped = instance.stop(Duration::ZERO).await;
                Err(StartFailure {
                    kind,
                    pid: Some(pid),
                    exit: exited_early.then_some(stopped.exit),
                    output: stopped.output,
                })
            }
        }
    }

    async fn wait_listening(
        &self,
        instance: &mut Instance,
        netns: Option<Arc<Netns>>,
        factory: Option<SocketFactory>,
        deadline: tokio::time::Instant,
        init_timeout: Duration,
    ) -> Result<TcpStream, StartFailureKind> {
        let mut delay = FIRST_RETRY;
        loop {
            match self.connect(netns.as_ref(), factory.as_ref()).await {
                Ok(stream) => return Ok(stream),
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(err) => tracing::debug!(%err, "readiness probe failed"),
            }
            tokio::select! {
                exit = instance.exited() => {
                    return Err(StartFailureKind::ExitedBeforeListening { exit, port: INSTANCE_PORT });
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(StartFailureKind::NotListening { waited: init_timeout, port: INSTANCE_PORT });
                }
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RETRY);
        }
    }

    async fn connect(
        &self,
        netns: Option<&Arc<Netns>>,
        factory: Option<&SocketFactory>,
    ) -> io::Result<TcpStream> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, INSTANCE_PORT));
        let in_namespace = |fd: std::os::fd::OwnedFd| -> io::Result<TcpSocket> {
            let socket = std::net::TcpStream::from(fd);
            // A blocking socket would block a runtime thread in every read.
            socket.set_nonblocking(true)?;
            Ok(TcpSocket::from_std_stream(socket))
        };
        let stream = match (self.warm.as_ref().map(|w| w.worker()), netns, factory) {
            (_, _, Some(factory)) => in_namespace(factory.socket().await?)?.connect(addr).await?,
            (Some(worker), Some(ns), None) => {
                in_namespace(worker.socket(ns).await?)?
                    .connect(addr)
                    .await?
            }
            _ => TcpStream::connect(addr).await?,
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl Launcher {
    /// `isolation = "none"`: port 9000 of the host, one instance at a time, and only if no
    /// other program holds it (else its readiness probe would reach that program).
    async fn claim_host_port(&self) -> Result<tokio::sync::OwnedSemaphorePermit, StartFailure> {
        let busy =
            |reason: String| StartFailure::before_spawn(StartFailureKind::HostPortBusy { reason });
        let permit = self.host_port.clone().try_acquire_owned().map_err(|_| {
            busy(format!(
                "another instance holds port {INSTANCE_PORT} of this host; only one instance at a \
                 time can run without namespaces (run scfsim as root for one per connection)"
            ))
        })?;
        if TcpStream::connect((Ipv4Addr::LOCALHOST, INSTANCE_PORT))
            .await
            .is_ok()
        {
            return Err(busy(format!(
                "port {INSTANCE_PORT} of this host is already in use by another program"
            )));
        }
        Ok(permit)
    }
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
    // SAFETY: raw system calls only, safe between fork and exec.
    unsafe {
        probe.pre_exec(move || {
            spawn::enter_user_namespace(&maps)?;
            let mounted = libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWPID) == 0
                && libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) == 0
                && libc::mount(
                    c"tmpfs".as_ptr(),
                    c"/tmp".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                ) == 0;
            if mounted {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
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
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("unprivileged user namespaces are not usable here: {e}"),
            )
        })
}

/// Reads the supervisor's report pipe to its end (the bootstrap's exec, or the supervisor's
/// exit): nothing in it means the bootstrap runs.
async fn read_report(
    report: std::os::fd::OwnedFd,
    bootstrap: &Path,
    deadline: tokio::time::Instant,
) -> Option<StartFailureKind> {
    use tokio::io::AsyncReadExt;
    let internal = |detail: String| Some(StartFailureKind::Internal { detail });
    let mut receiver = match tokio::net::unix::pipe::Receiver::from_owned_fd(report) {
        Ok(receiver) => receiver,
        Err(e) => return internal(format!("reading the supervisor's report: {e}")),
    };
    let mut bytes = Vec::new();
    if tokio::time::timeout_at(deadline, receiver.read_to_end(&mut bytes))
        .await
        .is_err()
    {
        return internal(
            "the instance's supervisor did not reach the bootstrap's exec within the init \
             timeout"
                .into(),
        );
    }
    match supervisor::decode_report(&bytes) {
        None if bytes.is_empty() => None,
        None => internal(format!("unreadable supervisor report {bytes:?}")),
        Some((Stage::Exec, source)) => Some(spawn_failure(bootstrap, source)),
        Some((stage, source)) => internal(format!("{}: {source}", stage.describe())),
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
    match source.raw_os_error() {
        Some(
            libc::ENOENT
            | libc::EACCES
            | libc::ENOEXEC
            | libc::ENOTDIR
            | libc::ELOOP
            | libc::ETXTBSY
            | libc::EISDIR
            | libc::ENAMETOOLONG
            | libc::E2BIG,
        ) => StartFailureKind::Spawn {
            path: bootstrap.to_path_buf(),
            source,
        },
        _ => StartFailureKind::Internal {
            detail: format!("starting the bootstrap: {source}"),
        },
    }
}

fn check_bootstrap(spec: &InstanceSpec) -> Result<(), StartFailure> {
    let path = spec.bootstrap.clone();
    let meta = match std::fs::metadata(&path) {
        Ok(meta) => meta,
        Err(_) => {
            return Err(StartFailure::before_spawn(
                StartFailureKind::BootstrapMissing { path },
            ))
        }
    };
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(StartFailure::before_spawn(
            StartFailureKind::BootstrapNotExecutable { path },
        ));
    }
    Ok(())
}
