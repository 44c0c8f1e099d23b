use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::backend::{Backend, Stop};
use crate::output::CapturedOutput;

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

/// A running instance, owned here from its start to its reap, whatever backend runs it.
///
/// Created by [`crate::Launcher::start`]; ended by [`Instance::stop`]. If it is dropped without
/// being stopped (a panic, a cancelled task), its backend kills it at once and cleans up in the
/// background (the backend's instance type does that in its own `Drop`).
pub struct Instance {
    inner: Box<dyn ErasedInstance>,
}

/// What is left of an instance once it is stopped and reaped.
#[derive(Debug, Clone)]
pub struct StoppedInstance {
    pub pid: u32,
    pub exit: ExitInfo,
    pub output: CapturedOutput,
}

impl Instance {
    pub(crate) fn new<B: Backend>(backend: Arc<B>, instance: B::Instance) -> Instance {
        Instance {
            inner: Box::new(Bound { backend, instance }),
        }
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// Resolves when the bootstrap process ends. Cancel-safe; returns at once if it already has.
    pub async fn exited(&mut self) -> ExitInfo {
        self.inner.exited().await
    }

    /// A new connection to the instance's port 9000 (with `TCP_NODELAY`), as the launcher's
    /// readiness probe makes it: for an instance that was kept waiting and whose first
    /// connection its server has since closed.
    pub async fn connect(&self) -> std::io::Result<tokio::net::TcpStream> {
        let stream = self.inner.connect().await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// True once the instance went over its memory limit (and was killed for it, by the kernel
    /// or by its backend).
    pub fn memory_exceeded(&self) -> bool {
        self.inner.memory_exceeded()
    }

    /// A polite stop (SIGTERM to everything the instance runs), up to `grace` to exit, then
    /// SIGKILL; always reaped.
    pub async fn stop(self, grace: Duration) -> StoppedInstance {
        self.inner.stop(grace).await
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An instance with its backend's type erased, so that the gateway holds one type.
trait ErasedInstance: Send + Sync {
    fn pid(&self) -> u32;
    fn exited(&mut self) -> BoxFuture<'_, ExitInfo>;
    fn connect(&self) -> BoxFuture<'_, std::io::Result<tokio::net::TcpStream>>;
    fn memory_exceeded(&self) -> bool;
    fn stop(self: Box<Self>, grace: Duration) -> BoxFuture<'static, StoppedInstance>;
}

/// A backend's instance and the backend that runs it (kept alive as long as the instance is:
/// the host state an instance uses, cgroup parents or NAT, goes only after the last one).
struct Bound<B: Backend> {
    backend: Arc<B>,
    instance: B::Instance,
}

impl<B: Backend> ErasedInstance for Bound<B> {
    fn pid(&self) -> u32 {
        self.backend.pid(&self.instance)
    }

    fn exited(&mut self) -> BoxFuture<'_, ExitInfo> {
        Box::pin(self.backend.exited(&mut self.instance))
    }

    fn connect(&self) -> BoxFuture<'_, std::io::Result<tokio::net::TcpStream>> {
        Box::pin(self.backend.connect(&self.instance))
    }

    fn memory_exceeded(&self) -> bool {
        self.backend.memory_exceeded(&self.instance)
    }

    fn stop(self: Box<Self>, grace: Duration) -> BoxFuture<'static, StoppedInstance> {
        let Bound {
            backend,
            mut instance,
        } = *self;
        Box::pin(async move {
            let pid = backend.pid(&instance);
            let exit = match backend.exit(&instance) {
                Some(exit) => exit,
                None => {
                    backend.stop(&mut instance, Stop::Term).await;
                    match tokio::time::timeout(grace, backend.exited(&mut instance)).await {
                        Ok(exit) => exit,
                        Err(_) => {
                            backend.stop(&mut instance, Stop::Kill).await;
                            backend.exited(&mut instance).await
                        }
                    }
                }
            };
            // Once reaped, nothing is signalled any more: a process group id may be reused.
            let output = backend.reap(instance).await;
            StoppedInstance { pid, exit, output }
        })
    }
}
