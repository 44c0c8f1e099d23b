use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::backend::{self, Backend, ErasedBackend};
use crate::error::{PoolError, StartFailure, StartFailureKind};
use crate::instance::Instance;
use crate::spawn::InstanceSpec;

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
    /// A container of the Docker engine per instance.
    Docker,
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
    /// A container per instance, on the engine `DOCKER_HOST` names.
    Docker,
}

/// An instance that accepted a TCP connection on port 9000, and that connection.
pub struct Ready {
    pub instance: Instance,
    pub stream: TcpStream,
    /// From the start of the bootstrap (what was prepared ahead not counted) to the accepted
    /// connection.
    pub startup: Duration,
}

/// How the launcher is set up.
#[derive(Debug, Clone)]
pub struct LauncherOptions {
    pub isolation: IsolationRequest,
    /// Some function is an image function: a Docker backend runs those, whatever
    /// `isolation` chose for code functions.
    pub image_functions: bool,
    /// Config `[runtimes]`: `/var/lang`-relative paths mapped to interpreters here.
    pub runtimes: BTreeMap<String, PathBuf>,
    /// A directory of scfsim's own (under `data_dir`) for the generated `/var/lang` tree.
    pub work_dir: PathBuf,
    /// The program that supervises each instance with namespaces: one whose `main` calls
    /// [`crate::run_supervisor_if_requested`] first (`/proc/self/exe` for the scfsim binary).
    pub supervisor: PathBuf,
}

/// Starts instances through the isolation backend chosen at [`Launcher::new`]. One per scfsim;
/// cheap to share behind an `Arc` once [`Launcher::setup`] ran.
pub struct Launcher {
    backend: Box<dyn ErasedBackend>,
    /// The backend of image functions when `backend` is not a container backend itself.
    images: Option<Box<dyn ErasedBackend>>,
    set_up: bool,
}

/// Readiness back-off: first retry well under a millisecond (a native bootstrap listens ~1 ms
/// after spawn), then doubling, capped so that a slow runtime (Python ~100 ms) is polled a
/// few dozen times at most and the poller does not compete for the CPU it needs to start.
const FIRST_RETRY: Duration = Duration::from_micros(100);
const MAX_RETRY: Duration = Duration::from_millis(8);

impl Launcher {
    /// Chooses the backend `options` ask for, as far as this machine allows it (see
    /// [`IsolationRequest`]). It probes the machine and changes nothing on it: that is
    /// [`Launcher::setup`]'s job.
    pub fn new(options: LauncherOptions) -> Result<Launcher, PoolError> {
        let (backend, images) = backend::select(options)?;
        Ok(Launcher {
            backend,
            images,
            set_up: false,
        })
    }

    /// Changes the host as the backend needs it (cgroups, NAT, network links, the `/var/lang`
    /// tree, namespaces prepared ahead of demand); undone when the launcher and its last
    /// instance are gone. Call once, before the first [`Launcher::start`]. A failure here is
    /// fatal; what only takes a feature away is shown by [`Launcher::details`] instead.
    pub async fn setup(&mut self) -> Result<(), PoolError> {
        self.backend.setup().await?;
        if let Some(images) = &mut self.images {
            images.setup().await?;
        }
        self.set_up = true;
        Ok(())
    }

    /// Startup log lines: limits, network and runtimes in force, or why not.
    pub fn details(&self) -> Vec<String> {
        let mut details = self.backend.details();
        if let Some(images) = &self.images {
            details.push(images.describe());
            details.extend(images.details());
        }
        details
    }

    pub fn isolation(&self) -> Isolation {
        self.backend.isolation()
    }

    /// One line for the startup log: what isolation is in force, why, and what it means.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Starts the bootstrap and waits until it accepts a connection on port 9000.
    pub async fn start(&self, spec: &InstanceSpec) -> Result<Ready, StartFailure> {
        if !self.set_up {
            return Err(StartFailure::before_spawn(StartFailureKind::Internal {
                what: "starting an instance: the launcher was not set up (Launcher::setup)".into(),
                source: None,
            }));
        }
        match (&spec.image, &self.images) {
            (Some(_), Some(images)) => images.start(spec).await,
            (Some(_), None) if self.backend.isolation() != Isolation::Docker => {
                Err(StartFailure::before_spawn(StartFailureKind::Internal {
                    what: "starting an image function: the launcher has no container backend \
                           (LauncherOptions::image_functions was false)"
                        .into(),
                    source: None,
                }))
            }
            _ => self.backend.start(spec).await,
        }
    }
}

/// [`Launcher::start`] with the backend's type known: the same steps for every backend.
pub(crate) async fn start<B: Backend>(
    backend: &Arc<B>,
    spec: &InstanceSpec,
) -> Result<Ready, StartFailure> {
    if spec.image.is_none() {
        check_bootstrap(spec)?;
    }
    // The backend itself: `Arc<B>` is an `ErasedBackend`, with a `start` of its own.
    let b: &B = backend;
    let prepared = b.prepare(spec).await?;
    let began = Instant::now();
    // One deadline for the whole start: the backend's own start and the readiness wait.
    let deadline = tokio::time::Instant::now() + spec.init_timeout;
    let mut instance = b.start(prepared, spec, deadline).await?;
    if let Some(tap) = &spec.debug {
        match b.connector(&instance) {
            Some(connector) => tap.started(connector),
            None => tracing::warn!("this isolation backend cannot reach an instance's debugger"),
        }
    }
    match wait_listening(b, &mut instance, deadline, spec.init_timeout).await {
        Ok(stream) => Ok(Ready {
            instance: Instance::new(backend.clone(), instance),
            stream,
            startup: began.elapsed(),
        }),
        Err(kind) => {
            let exited_early = matches!(
                kind,
                StartFailureKind::ExitedBeforeListening { .. }
                    | StartFailureKind::ContainerInit { .. }
            );
            let stopped = Instance::new(backend.clone(), instance)
                .stop(Duration::ZERO)
                .await;
            Err(StartFailure {
                kind,
                pid: Some(stopped.pid),
                exit: exited_early.then_some(stopped.exit),
                output: stopped.output,
            })
        }
    }
}

async fn wait_listening<B: Backend>(
    backend: &B,
    instance: &mut B::Instance,
    deadline: tokio::time::Instant,
    init_timeout: Duration,
) -> Result<TcpStream, StartFailureKind> {
    let not_listening = || StartFailureKind::NotListening {
        waited: init_timeout,
        port: INSTANCE_PORT,
    };
    let mut delay = FIRST_RETRY;
    loop {
        match tokio::time::timeout_at(deadline, backend.connect(instance)).await {
            Ok(Ok(stream)) => {
                stream.set_nodelay(true).map_err(|e| {
                    StartFailureKind::internal(
                        "setting TCP_NODELAY on the connection to port 9000",
                        e,
                    )
                })?;
                return Ok(stream);
            }
            Ok(Err(err)) if err.kind() == io::ErrorKind::ConnectionRefused => {}
            Ok(Err(err)) => tracing::debug!(%err, "readiness probe failed"),
            Err(_) => return Err(not_listening()),
        }
        tokio::select! {
            exit = backend.exited(instance) => {
                return Err(backend.exit_failure(instance, exit).unwrap_or(
                    StartFailureKind::ExitedBeforeListening { exit, port: INSTANCE_PORT },
                ));
            }
            _ = tokio::time::sleep_until(deadline) => return Err(not_listening()),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RETRY);
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
