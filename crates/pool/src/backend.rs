//! The isolation backend seam: one trait, [`Backend`], and one implementation per module.
//!
//! A backend is one way of running instances: child processes in namespaces of their own
//! ([`namespaces`], [`user_namespaces`]), child processes on the host ([`none`]), or containers
//! of the Docker engine ([`docker`]), which also runs every image function whatever the
//! isolation of code functions is. The [`crate::Launcher`] drives every backend through the
//! same steps (check the bootstrap, `prepare`, `start`, wait for port 9000 with `connect`,
//! hand the instance over) and the public [`crate::Instance`] drives the rest (`stop`,
//! `exited`, `reap`): neither knows which backend it holds.
//!
//! Adding a backend: a new module here implementing [`Backend`], a variant of
//! [`crate::IsolationRequest`] (and of [`crate::Isolation`]), and its line in [`select`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::error::{PoolError, StartFailure, StartFailureKind};
use crate::instance::ExitInfo;
use crate::launcher::{Isolation, IsolationRequest, LauncherOptions, Ready};
use crate::output::CapturedOutput;
use crate::spawn::InstanceSpec;

pub(crate) mod docker;
pub(crate) mod namespaces;
pub(crate) mod none;
pub(crate) mod parking;
pub(crate) mod process;
pub(crate) mod user_namespaces;

/// How hard [`Backend::stop`] asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// SIGTERM to everything the instance runs: it may clean up.
    Term,
    /// SIGKILL to everything the instance runs.
    Kill,
}

/// One way of running instances.
///
/// Lifecycle: [`select`] makes the backend (it may probe the machine, but changes nothing on
/// it); [`Backend::setup`] is the one step that changes the host (cgroups, NAT, links, an
/// engine's network), called once before the first instance; then any number of instances go
/// through `prepare` → `start` → `connect` … `stop` → `exited` → `reap`. The backend lives as
/// long as the launcher or any of its instances, and undoes its host changes when dropped.
///
/// Per-instance operations are methods of the backend taking its instance, so that an instance
/// holds only what is its own (a child process, a container id) and reaches shared machinery
/// (a namespace thread, an engine client) through the backend.
pub(crate) trait Backend: Send + Sync + Sized + 'static {
    /// What [`Backend::prepare`] hands to [`Backend::start`]: made ahead of demand where the
    /// backend can (a network namespace with its link, a created container).
    type Prepared: Send;
    /// One running instance. Dropping it without [`Backend::reap`] must kill it at once (its
    /// `Drop`): a cancelled start or a panicking connection leaves nothing running.
    type Instance: Send + Sync;

    /// Which isolation this is.
    fn isolation(&self) -> Isolation;

    /// One line for the startup log: what isolation is in force, why, and what it means.
    fn describe(&self) -> String;

    /// Startup log lines: the limits, network and runtimes in force, or why not. Meaningful
    /// once [`Backend::setup`] ran.
    fn details(&self) -> Vec<String>;

    /// Changes the host as this backend needs it. An error is fatal to the launcher; what only
    /// takes a feature away is kept for [`Backend::details`] instead.
    fn setup(&mut self) -> impl Future<Output = Result<(), PoolError>> + Send;

    /// What an instance of `spec` needs before it runs, from a stock made ahead of demand if
    /// the backend keeps one, else made now. Nothing of the function's runs yet.
    fn prepare(
        &self,
        spec: &InstanceSpec,
    ) -> impl Future<Output = Result<Self::Prepared, StartFailure>> + Send;

    /// Starts the instance's bootstrap. Returns once it runs (a failed exec is a failure here),
    /// not once it listens; `deadline` bounds every wait. On failure, nothing is left running.
    fn start(
        &self,
        prepared: Self::Prepared,
        spec: &InstanceSpec,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Result<Self::Instance, StartFailure>> + Send;

    /// A connection to the instance's port 9000. `ConnectionRefused` means "not listening
    /// yet": the launcher retries.
    fn connect(
        &self,
        instance: &Self::Instance,
    ) -> impl Future<Output = io::Result<TcpStream>> + Send;

    /// Connections to the instance's other ports (its debugger's), usable from the moment it
    /// started and as long as it runs; `None` where the backend cannot make them.
    fn connector(&self, _instance: &Self::Instance) -> Option<crate::Connector> {
        None
    }

    /// The process id the record shows (the bootstrap's, or its supervisor's).
    fn pid(&self, instance: &Self::Instance) -> u32;

    /// The instance's end, once it was seen ([`Backend::exited`] resolved).
    fn exit(&self, instance: &Self::Instance) -> Option<ExitInfo>;

    /// Resolves when the instance ends. Cancel-safe; at once if it already has.
    fn exited(&self, instance: &mut Self::Instance) -> impl Future<Output = ExitInfo> + Send;

    /// Why an instance that ended before listening failed, when the backend knows better
    /// than "it exited" (a container's init that could not exec the command). The default:
    /// it exited.
    fn exit_failure(
        &self,
        _instance: &Self::Instance,
        _exit: ExitInfo,
    ) -> Option<StartFailureKind> {
        None
    }

    /// True once the instance went over its memory limit (and was killed for it).
    fn memory_exceeded(&self, instance: &Self::Instance) -> bool;

    /// Signals everything the instance runs.
    fn stop(&self, instance: &mut Self::Instance, how: Stop) -> impl Future<Output = ()> + Send;

    /// After [`Backend::exited`] resolved: the instance's complete output, and everything it
    /// held released (its cgroup, its container).
    fn reap(&self, instance: Self::Instance) -> impl Future<Output = CapturedOutput> + Send;
}

/// The backend `options` ask for, as this machine allows it, and, when there are image
/// functions and that backend is not the Docker one, a Docker backend for them. Probes only:
/// the host is changed by [`Backend::setup`].
pub(crate) fn select(options: LauncherOptions) -> Result<Selected, PoolError> {
    let images = match options.isolation {
        IsolationRequest::Docker => None,
        _ if options.image_functions => Some(erase(docker::Docker::connect(
            &options,
            "image functions run in containers",
        )?)),
        _ => None,
    };
    Ok((select_code(options)?, images))
}

/// The backend of code functions, and the one of image functions if that is another.
pub(crate) type Selected = (Box<dyn ErasedBackend>, Option<Box<dyn ErasedBackend>>);

/// The backend of code functions.
fn select_code(options: LauncherOptions) -> Result<Box<dyn ErasedBackend>, PoolError> {
    let root = nix::unistd::geteuid().is_root();
    let unprivileged = |why: &'static str| user_namespaces::UserNamespaces::probe(&options, why);
    let none = |why: String| none::NoIsolation::new(why);
    Ok(match options.isolation {
        IsolationRequest::None => erase(none("isolation = \"none\" in the config".into())),
        IsolationRequest::Docker => erase(docker::Docker::connect(
            &options,
            "isolation = \"docker\" in the config",
        )?),
        IsolationRequest::Namespaces if !root => erase(unprivileged(
            "scfsim is not root, and unprivileged user namespaces work here",
        )?),
        IsolationRequest::Namespaces => erase(namespaces::Namespaces::probe(
            &options,
            "isolation = \"namespaces\" in the config",
        )?),
        IsolationRequest::Auto if !root => {
            match unprivileged("scfsim is not root, and unprivileged user namespaces work here") {
                Ok(backend) => erase(backend),
                Err(err) => erase(none(format!(
                    "scfsim is not root, and {}",
                    crate::error::with_sources(&err)
                ))),
            }
        }
        IsolationRequest::Auto => {
            match namespaces::Namespaces::probe(
                &options,
                "network and PID namespaces are available",
            ) {
                Ok(backend) => erase(backend),
                Err(err) => erase(none(crate::error::with_sources(&err))),
            }
        }
    })
}

fn erase<B: Backend>(backend: B) -> Box<dyn ErasedBackend> {
    Box::new(Arc::new(backend))
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A backend with its type erased, so that the launcher holds one type. Implemented once, for
/// every [`Backend`].
pub(crate) trait ErasedBackend: Send + Sync {
    fn isolation(&self) -> Isolation;
    fn describe(&self) -> String;
    fn details(&self) -> Vec<String>;
    fn setup(&mut self) -> BoxFuture<'_, Result<(), PoolError>>;
    fn start<'a>(&'a self, spec: &'a InstanceSpec) -> BoxFuture<'a, Result<Ready, StartFailure>>;
}

impl<B: Backend> ErasedBackend for Arc<B> {
    fn isolation(&self) -> Isolation {
        B::isolation(self)
    }

    fn describe(&self) -> String {
        B::describe(self)
    }

    fn details(&self) -> Vec<String> {
        B::details(self)
    }

    fn setup(&mut self) -> BoxFuture<'_, Result<(), PoolError>> {
        Box::pin(async move {
            // Instances hold the backend too: only a backend without any can still change.
            let backend = Arc::get_mut(self).ok_or(PoolError::SetupTooLate)?;
            backend.setup().await
        })
    }

    fn start<'a>(&'a self, spec: &'a InstanceSpec) -> BoxFuture<'a, Result<Ready, StartFailure>> {
        Box::pin(crate::launcher::start(self, spec))
    }
}
