//! `isolation = "namespaces"` as root: each instance is a supervised process tree in its own
//! network, PID and mount namespace, in cgroups of its own, linked to the host by a veth pair
//! and beyond it by NAT.
//!
//! What [`Namespaces::setup`] changes on the host, and what undoes it: cgroup parent
//! directories (removed when the backend goes; a dead scfsim's at the next start), an nftables
//! table and `ip_forward` (see [`crate::outbound`]), the `/var/lang` mount point (created empty
//! if missing, left in place) and the generated runtime tree under scfsim's `work_dir`, and a
//! stock of network namespaces with their links (gone with their namespace).
//!
//! Instances start from supervisors parked ahead of demand where there is one (see
//! [`super::parking`]), else as a fresh supervisor: the same instance either way.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;

use super::parking::{Parking, Stocked};
use super::process::{self, HandoverError, Placement, Process, Program, SupervisorLaunch};
use super::Backend;
use crate::cgroup::{Cgroups, InstanceCgroup};
use crate::error::{with_sources, PoolError, StartFailure, StartFailureKind};
use crate::launcher::{Isolation, LauncherOptions, INSTANCE_PORT};
use crate::netns::{Netns, NetnsWorker};
use crate::network::HostNetwork;
use crate::outbound::Outbound;
use crate::runtimes::RuntimeTree;
use crate::spawn::{InstanceSpec, MAX_PROCESSES};
use crate::warm::{self, WarmPool};

pub(crate) struct Namespaces {
    worker: NetnsWorker,
    /// Why this backend was chosen.
    why: &'static str,
    supervisor: PathBuf,
    work_dir: PathBuf,
    runtimes: std::collections::BTreeMap<String, PathBuf>,
    /// What [`Backend::setup`] made; `None` before.
    host: Option<Host>,
    /// Instance ids for cgroup names.
    next_id: AtomicU64,
}

/// The host state of this backend: each part either in force or why not.
struct Host {
    /// Dropped first: its supervisors leave their cgroups before the parents go.
    parking: Arc<Parking>,
    warm: Arc<WarmPool>,
    /// Why instances have no network to the host, if they have none.
    no_network: Option<PoolError>,
    cgroups: Result<Arc<Cgroups>, PoolError>,
    /// NAT beyond the host (removed when the backend goes), or why there is none; `None`
    /// when instances have no network at all.
    outbound: Option<Result<Outbound, PoolError>>,
    runtimes: Result<RuntimeTree, PoolError>,
}

pub(crate) enum Prepared {
    Parked(Box<Stocked>),
    Fresh {
        namespace: warm::Prepared,
        cgroup: Option<InstanceCgroup>,
    },
}

pub(crate) struct Instance {
    process: Process,
    /// Held so the namespace outlives every socket scfsim still makes in it.
    netns: Arc<Netns>,
}

impl Namespaces {
    /// Available when this process can make network namespaces (it makes one, on the thread
    /// that will make them all, and lets it go).
    pub(crate) fn probe(options: &LauncherOptions, why: &'static str) -> Result<Self, PoolError> {
        Ok(Namespaces {
            worker: NetnsWorker::start()?,
            why,
            supervisor: options.supervisor.clone(),
            work_dir: options.work_dir.clone(),
            runtimes: options.runtimes.clone(),
            host: None,
            next_id: AtomicU64::new(0),
        })
    }

    /// A namespace from the warm pool and cgroups made now: a start without a parked
    /// supervisor.
    async fn prepare_fresh(
        &self,
        host: &Host,
        spec: &InstanceSpec,
    ) -> Result<Prepared, StartFailure> {
        let internal = |what: &str, source: io::Error| {
            StartFailure::before_spawn(StartFailureKind::internal(what, source))
        };
        let namespace = host
            .warm
            .take()
            .await
            .map_err(|e| internal("preparing the instance's network namespace", e))?;
        let cgroup = match &host.cgroups {
            Ok(cgroups) => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
                Some(
                    cgroups
                        .create(&id, spec.memory_mb, MAX_PROCESSES)
                        .map_err(|e| internal("creating the instance's cgroup", e))?,
                )
            }
            Err(_) => None,
        };
        Ok(Prepared::Fresh { namespace, cgroup })
    }

    async fn start_fresh(
        &self,
        host: &Host,
        prepared: Prepared,
        spec: &InstanceSpec,
        deadline: tokio::time::Instant,
    ) -> Result<Instance, StartFailure> {
        let Prepared::Fresh { namespace, cgroup } = prepared else {
            unreachable!("start_fresh is given what prepare_fresh made")
        };
        let spec = with_host(spec, namespace.lease.as_ref());
        let program = Program::Supervisor(SupervisorLaunch {
            program: self.supervisor.clone(),
            var_lang: host
                .runtimes
                .as_ref()
                .ok()
                .map(|t| process::var_lang_for(t, &spec)),
            user_maps: None,
        });
        let placement = Placement {
            netns: Some(namespace.netns.raw_fd()),
            cgroup,
        };
        let (process, _) = Process::start(&spec, program, placement, deadline).await?;
        Ok(Instance {
            process,
            netns: namespace.netns,
        })
    }

    fn host(&self) -> Result<&Host, StartFailure> {
        self.host.as_ref().ok_or_else(|| {
            StartFailure::before_spawn(StartFailureKind::Internal {
                what: "starting an instance: the namespaces backend was not set up".into(),
                source: None,
            })
        })
    }
}

/// The function's environment with `SCFSIM_HOST`, the host's address seen from the instance's
/// namespace, where it has a network.
fn with_host(spec: &InstanceSpec, lease: Option<&crate::network::Lease>) -> InstanceSpec {
    let mut spec = spec.clone();
    if let Some(lease) = lease {
        spec.env
            .push(("SCFSIM_HOST".into(), lease.host.to_string()));
    }
    spec
}

impl Backend for Namespaces {
    type Prepared = Prepared;
    type Instance = Instance;

    fn isolation(&self) -> Isolation {
        Isolation::Namespaces
    }

    fn describe(&self) -> String {
        format!(
            "instance isolation: namespaces ({}): every instance gets its own network and PID \
             namespace, listens on 0.0.0.0:{INSTANCE_PORT}, and dies with scfsim",
            self.why
        )
    }

    fn details(&self) -> Vec<String> {
        let Some(host) = &self.host else {
            return Vec::new();
        };
        let mut lines = Vec::new();
        lines.push(match &host.cgroups {
            Ok(c) => process::enforced_limits_line(c.describe()),
            Err(why) => process::watched_limits_line(&with_sources(why)),
        });
        lines.push(match (&host.no_network, &host.outbound) {
            (None, outbound) => format!(
                "instance network: a veth pair per instance (169.254.0.0/16); the host is \
                 reachable at SCFSIM_HOST, {}",
                match outbound {
                    Some(Ok(nat)) => nat.describe(),
                    Some(Err(why)) => format!("the internet is not ({})", with_sources(why)),
                    None => "the internet is not".into(),
                }
            ),
            (Some(why), _) => format!(
                "instance network: loopback only ({}); functions cannot reach the host",
                with_sources(why)
            ),
        });
        lines.push(process::runtimes_line(&host.runtimes));
        lines
    }

    async fn setup(&mut self) -> Result<(), PoolError> {
        let cgroups = Cgroups::setup().map(Arc::new);
        // Without `ip` there are no links; the namespaces still work, with loopback only.
        let (network, no_network) = match HostNetwork::probe() {
            Ok(network) => (Some(network), None),
            Err(source) => (None, Some(PoolError::Network { source })),
        };
        let outbound = network.as_ref().map(|_| Outbound::enable());
        let runtimes = crate::runtimes::mount_tree(&self.work_dir, &self.runtimes);
        let warm = WarmPool::new(self.worker.clone(), network);
        warm.fill();
        let parking = Parking::start(
            warm.clone(),
            cgroups.as_ref().ok().cloned(),
            self.supervisor.clone(),
        );
        self.host = Some(Host {
            parking,
            warm,
            no_network,
            cgroups,
            outbound,
            runtimes,
        });
        Ok(())
    }

    async fn prepare(&self, spec: &InstanceSpec) -> Result<Prepared, StartFailure> {
        let host = self.host()?;
        match host.parking.take() {
            Some(stocked) => {
                tracing::debug!(pid = stocked.parked.pid(), "parked supervisor taken");
                Ok(Prepared::Parked(Box::new(stocked)))
            }
            None => self.prepare_fresh(host, spec).await,
        }
    }

    async fn start(
        &self,
        prepared: Prepared,
        spec: &InstanceSpec,
        deadline: tokio::time::Instant,
    ) -> Result<Instance, StartFailure> {
        let host = self.host()?;
        let Prepared::Parked(stocked) = prepared else {
            return self.start_fresh(host, prepared, spec, deadline).await;
        };
        let Stocked {
            parked,
            netns,
            lease,
        } = *stocked;
        let pid = parked.pid();
        let spec = with_host(spec, lease.as_ref());
        let var_lang = host
            .runtimes
            .as_ref()
            .ok()
            .map(|t| process::var_lang_for(t, &spec));
        match parked.hand_over(&spec, var_lang.as_deref(), deadline).await {
            Ok(process) => Ok(Instance { process, netns }),
            Err(HandoverError::Failed(failure)) => Err(failure),
            Err(HandoverError::Gone) => {
                tracing::warn!(
                    pid,
                    "a parked supervisor ended as it was handed a function; starting a fresh one"
                );
                let prepared = self.prepare_fresh(host, &spec).await?;
                self.start_fresh(host, prepared, &spec, deadline).await
            }
        }
    }

    async fn connect(&self, instance: &Instance) -> io::Result<TcpStream> {
        process::connect_with(self.worker.socket(&instance.netns).await?).await
    }

    fn connector(&self, instance: &Instance) -> Option<crate::Connector> {
        let (worker, netns) = (self.worker.clone(), instance.netns.clone());
        Some(crate::Connector::new(move |port| {
            let (worker, netns) = (worker.clone(), netns.clone());
            Box::pin(
                async move { process::connect_port_with(worker.socket(&netns).await?, port).await },
            )
        }))
    }

    process::instance_steps!();
}
