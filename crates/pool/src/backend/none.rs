//! `isolation = "none"`: each instance is the bootstrap as a plain child process of scfsim, in
//! its own process group, on the host's network. The host has one port 9000, so one instance
//! runs at a time. Changes nothing on the host.

use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::process::{self, Placement, Process, Program};
use super::Backend;
use crate::error::{PoolError, PortHolder, StartFailure, StartFailureKind};
use crate::launcher::{Isolation, INSTANCE_PORT};
use crate::spawn::InstanceSpec;

pub(crate) struct NoIsolation {
    /// Why this backend was chosen.
    why: String,
    /// The host's port 9000 fits one instance at a time.
    host_port: Arc<Semaphore>,
}

pub(crate) struct Instance {
    process: Process,
    /// The host's port 9000, held while this instance lives.
    _host_port: OwnedSemaphorePermit,
}

impl NoIsolation {
    pub(crate) fn new(why: String) -> Self {
        NoIsolation {
            why,
            host_port: Arc::new(Semaphore::new(1)),
        }
    }
}

impl Backend for NoIsolation {
    type Prepared = OwnedSemaphorePermit;
    type Instance = Instance;

    fn isolation(&self) -> Isolation {
        Isolation::None
    }

    fn describe(&self) -> String {
        format!(
            "instance isolation: NONE ({}): instances share the host network, so only ONE \
             instance at a time can run (later connections get HTTP 429 / status 432 while \
             one is open), /var/lang paths do not work, memory_mb is watched by scfsim, and \
             processes that leave the bootstrap's process group are not stopped; run scfsim \
             as root for full isolation",
            self.why
        )
    }

    fn details(&self) -> Vec<String> {
        vec![
            process::watched_limits_line("needs isolation = namespaces"),
            "/var/lang runtimes: not mapped (/var/lang paths need isolation = namespaces (a \
             mount namespace))"
                .into(),
        ]
    }

    async fn setup(&mut self) -> Result<(), PoolError> {
        Ok(())
    }

    /// Port 9000 of the host, and only if no other program holds it (else the readiness probe
    /// would reach that program).
    async fn prepare(&self, _spec: &InstanceSpec) -> Result<OwnedSemaphorePermit, StartFailure> {
        let busy = |holder| StartFailure::before_spawn(StartFailureKind::HostPortBusy { holder });
        let permit = self.host_port.clone().try_acquire_owned().map_err(|_| {
            busy(PortHolder::Instance {
                port: INSTANCE_PORT,
            })
        })?;
        if TcpStream::connect((Ipv4Addr::LOCALHOST, INSTANCE_PORT))
            .await
            .is_ok()
        {
            return Err(busy(PortHolder::OtherProgram {
                port: INSTANCE_PORT,
            }));
        }
        Ok(permit)
    }

    async fn start(
        &self,
        host_port: OwnedSemaphorePermit,
        spec: &InstanceSpec,
        deadline: tokio::time::Instant,
    ) -> Result<Instance, StartFailure> {
        let mut spec = spec.clone();
        spec.env.push(("SCFSIM_HOST".into(), "127.0.0.1".into()));
        let (process, _) =
            Process::start(&spec, Program::Bootstrap, Placement::default(), deadline).await?;
        Ok(Instance {
            process,
            _host_port: host_port,
        })
    }

    async fn connect(&self, _instance: &Instance) -> io::Result<TcpStream> {
        TcpStream::connect((Ipv4Addr::LOCALHOST, INSTANCE_PORT)).await
    }

    process::instance_steps!();
}
