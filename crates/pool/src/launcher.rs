use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream};

use crate::error::{PoolError, StartFailure, StartFailureKind};
use crate::instance::Instance;
use crate::netns::{Netns, NetnsWorker};
use crate::output::{OutputLog, OutputStream};
use crate::spawn::{self, InstanceSpec};

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

/// Starts instances. One per scfsim; cheap to share behind an `Arc`.
pub struct Launcher {
    isolation: Isolation,
    netns: Option<NetnsWorker>,
    why: String,
}

/// Readiness back-off: first retry well under a millisecond (a native bootstrap listens ~1 ms
/// after spawn), then doubling, capped so that a slow runtime (Python ~100 ms) is polled a
/// few dozen times at most and the poller does not compete for the CPU it needs to start.
const FIRST_RETRY: Duration = Duration::from_micros(100);
const MAX_RETRY: Duration = Duration::from_millis(8);

impl Launcher {
    pub fn new(request: IsolationRequest) -> Result<Launcher, PoolError> {
        let (isolation, netns, why) = match request {
            IsolationRequest::None => (
                Isolation::None,
                None,
                "isolation = \"none\" in the config".to_string(),
            ),
            IsolationRequest::Namespaces => (
                Isolation::Namespaces,
                Some(NetnsWorker::start()?),
                "isolation = \"namespaces\" in the config".to_string(),
            ),
            IsolationRequest::Auto => match NetnsWorker::start() {
                Ok(worker) => (
                    Isolation::Namespaces,
                    Some(worker),
                    "network and PID namespaces are available".to_string(),
                ),
                Err(err) => (Isolation::None, None, err.to_string()),
            },
        };
        Ok(Launcher {
            isolation,
            netns,
            why,
        })
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
            Isolation::None => format!(
                "instance isolation: NONE ({}): instances share the host network, so only ONE \
                 instance at a time can listen on port {INSTANCE_PORT} (later connections fail \
                 with 405/446 while one is open), and processes that leave the bootstrap's \
                 process group are not stopped; run scfsim as root for full isolation",
                self.why
            ),
        }
    }

    /// Spawns the bootstrap and waits until it accepts a connection on port 9000.
    pub async fn start(&self, spec: &InstanceSpec) -> Result<Ready, StartFailure> {
        check_bootstrap(spec)?;
        let netns = match &self.netns {
            Some(worker) => Some(Arc::new(worker.create().await.map_err(|source| {
                StartFailure::before_spawn(StartFailureKind::Namespace { source })
            })?)),
            None => None,
        };
        let began = Instant::now();
        let mut cmd = spawn::command(
            spec,
            netns.as_ref().map(|ns| ns.raw_fd()),
            self.isolation == Isolation::Namespaces,
        );
        let mut child = cmd.spawn().map_err(|source| {
            StartFailure::before_spawn(StartFailureKind::Spawn {
                path: spec.bootstrap.clone(),
                source,
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
        let mut instance = Instance {
            child,
            pid,
            output,
            readers,
            _netns: netns.clone(),
            exit: None,
        };
        match self
            .wait_listening(&mut instance, netns, spec.init_timeout)
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
        init_timeout: Duration,
    ) -> Result<TcpStream, StartFailureKind> {
        let deadline = tokio::time::Instant::now() + init_timeout;
        let mut delay = FIRST_RETRY;
        loop {
            match self.connect(netns.as_ref()).await {
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

    async fn connect(&self, netns: Option<&Arc<Netns>>) -> io::Result<TcpStream> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, INSTANCE_PORT));
        let stream = match (&self.netns, netns) {
            (Some(worker), Some(ns)) => {
                let fd = worker.socket(ns).await?;
                TcpSocket::from_std_stream(std::net::TcpStream::from(fd))
                    .connect(addr)
                    .await?
            }
            _ => TcpStream::connect(addr).await?,
        };
        stream.set_nodelay(true)?;
        Ok(stream)
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
