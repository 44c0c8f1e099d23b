//! `isolation = "docker"` and image functions: each instance is a new container of the Docker
//! engine, reached over the Engine API (bollard), never the docker CLI.
//!
//! The engine is the one the Docker CLI would use: `DOCKER_HOST` (`unix://` socket, default
//! `/var/run/docker.sock`, or `tcp://HOST:PORT`), with TLS when `DOCKER_TLS_VERIFY` is set,
//! its certificates (`ca.pem`, `cert.pem`, `key.pem`) in `DOCKER_CERT_PATH` (else
//! `~/.docker`). A local engine (a unix socket) puts instances on a bridge network of scfsim's
//! own ([`NETWORK`]); a `tcp://` engine may be another machine, so port 9000 is published on it
//! and reached at the engine's host.
//!
//! Port 9000 of a container on a local engine is reached from inside the container's own
//! network namespace, as the native backends do: its init's `/proc/PID/ns/net`, opened once
//! right after the start and held, and sockets made in it by the namespace thread
//! ([`crate::netns`]). A container's address is not an identity: one that dies releases it,
//! and the next container may get it while scfsim still waits for the first to listen. The held
//! namespace stays the dead container's, where nothing listens. Where scfsim cannot enter a
//! namespace (not root, or the engine's processes are not visible here) and on a remote
//! engine, the address (or published port) is used, and each connection counts only if the
//! engine still reports the container running afterwards (see [`Docker::still_running`]).
//!
//! Every container gets the platform's conditions: read-only root file system, a writable
//! 512 MB `/tmp` (tmpfs), `memory_mb` as its memory limit without swap (an OOM kill is the
//! engine's `oom` event and `OOMKilled`), 1024 processes, 1024 open files, an init as PID 1
//! (so that SIGTERM reaches the server), the function's environment, and labels naming
//! scfsim's run, the request id, the function, and who owns it. Its stdout and stderr are read
//! through the attach stream from before it starts, so nothing it prints is lost.
//!
//! A code function (`isolation = "docker"`) runs in scfsim's runtime image ([`RUNTIME_IMAGE`],
//! made by `scripts/docker-runtime-images.sh`: python3 and Node.js under `/var/lang`), its
//! code directory mounted read-only on `/var/user`, where the platform puts user code.
//!
//! Nothing outlives scfsim: each container is removed when its instance is reaped (or
//! dropped); a reaper process ([`reaper`]) started in [`Backend::setup`] removes every
//! container of this run as soon as scfsim's end of a pipe closes, which a SIGKILL does too;
//! and at setup, containers that an earlier scfsim with the same data directory on this
//! machine left behind (its process is gone) are removed. Containers of other programs, or of
//! another scfsim that still runs, are never touched: only [`LABEL_OWNER`] selects.

pub(crate) mod reaper;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bollard::errors::Error as EngineError;
use bollard::models::{
    ContainerCreateBody, HostConfig, NetworkCreateRequest, PortBinding, ResourcesUlimits,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    EventsOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{process, Backend, Stop};
use crate::error::{with_sources, BoxError, PoolError, StartFailure, StartFailureKind};
use crate::instance::ExitInfo;
use crate::launcher::{Isolation, LauncherOptions, INSTANCE_PORT};
use crate::netns::{Netns, NetnsWorker};
use crate::output::{CapturedOutput, OutputLog, OutputStream};
use crate::spawn::{InstanceSpec, MAX_PROCESSES};
use crate::supervisor::MAX_OPEN_FILES;

/// The argument that makes scfsim's binary the reaper (see [`reaper::main`]).
pub(crate) const REAPER_ARG: &str = "--scfsim-container-reaper";

/// The bridge network of a local engine's instances: scfsim's own, shared by every scfsim on
/// the engine, created when missing and left in place (another scfsim may be using it).
pub(crate) const NETWORK: &str = "scfsim-instances";

/// The image code functions run in with `isolation = "docker"`.
pub(crate) const RUNTIME_IMAGE: &str = "scfsim-runtime:bookworm";

/// Where the platform puts user code; a code function's `code_dir` is mounted here.
const CODE_ROOT: &str = "/var/user";

/// The platform's writable `/tmp`.
const TMP_MB: u32 = 512;

/// Labels on everything scfsim creates on the engine.
pub(crate) const LABEL_RUN: &str = "io.scfsim.run";
pub(crate) const LABEL_OWNER: &str = "io.scfsim.owner";
pub(crate) const LABEL_PROCESS: &str = "io.scfsim.process";
pub(crate) const LABEL_REQUEST: &str = "io.scfsim.request-id";
pub(crate) const LABEL_FUNCTION: &str = "io.scfsim.function";

/// How long a stopped container's output stream may take to end.
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// A published port on a remote engine accepts before the server in the container listens
/// (the engine's userland proxy accepts, dials the container, and closes the connection when
/// that is refused), so an accepted connection says nothing. Whether the server listens is
/// read from the container's own `/proc/net/tcp{,6}` through the engine ([`Docker::listens`]);
/// this bounds one such look.
const LISTEN_PROBE_PATIENCE: Duration = Duration::from_secs(5);

/// In an image without `cat`, where the container's sockets cannot be read: a connection to
/// the published port counts once it stayed open this long, the engine's proxy having had the
/// time to find nothing listening. Load can make the proxy slower than this: only a fallback.
const PROXY_HOLD: Duration = Duration::from_millis(250);

/// Port 9000 in `/proc/net/tcp`'s hexadecimal notation, and the LISTEN state.
const PROC_NET_PORT: &str = ":2328";
const PROC_NET_LISTEN: &str = "0A";

/// Per-request timeout of the engine client, in seconds (streams are not bounded by it).
const ENGINE_TIMEOUT: u64 = 120;

/// Where port 9000 of an instance is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    /// A unix socket: the engine runs here, containers are reached at their address on
    /// [`NETWORK`].
    Local,
    /// `tcp://HOST:PORT`: port 9000 is published on the engine's host.
    Remote { host: String, tls: bool },
}

/// The engine named by the environment, as the Docker CLI reads it.
pub(crate) struct EngineAddress {
    client: bollard::Docker,
    address: String,
    endpoint: Endpoint,
}

/// Connects (lazily: nothing is sent yet) to the engine `DOCKER_HOST`, `DOCKER_TLS_VERIFY` and
/// `DOCKER_CERT_PATH` name.
pub(crate) fn engine_from_env() -> Result<EngineAddress, PoolError> {
    let address = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    let failed = |what: &'static str, source: EngineError| PoolError::Engine {
        engine: address.clone(),
        what,
        source: source.into(),
    };
    let version = bollard::API_DEFAULT_VERSION;
    if address.starts_with("unix://") {
        let client = bollard::Docker::connect_with_unix(&address, ENGINE_TIMEOUT, version)
            .map_err(|e| failed("connecting to its socket", e))?;
        return Ok(EngineAddress {
            client,
            address,
            endpoint: Endpoint::Local,
        });
    }
    let Some(rest) = address.strip_prefix("tcp://") else {
        return Err(PoolError::Engine {
            engine: address.clone(),
            what: "DOCKER_HOST must be unix:///PATH or tcp://HOST:PORT",
            source: format!("unsupported address {address:?}").into(),
        });
    };
    let host = rest
        .rsplit_once(':')
        .map_or(rest, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tls = std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty());
    if tls {
        let dir = match std::env::var("DOCKER_CERT_PATH") {
            Ok(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => std::env::var("HOME")
                .map(|home| Path::new(&home).join(".docker"))
                .unwrap_or_else(|_| PathBuf::from(".docker")),
        };
        // Every message about this engine names the certificates, which are the usual
        // suspect when it does not answer.
        let shown = format!(
            "{address} over TLS with ca.pem, cert.pem, key.pem from DOCKER_CERT_PATH={}",
            dir.display()
        );
        let client = bollard::Docker::connect_with_ssl(
            &address,
            &dir.join("key.pem"),
            &dir.join("cert.pem"),
            &dir.join("ca.pem"),
            ENGINE_TIMEOUT,
            version,
        )
        .map_err(|e| PoolError::Engine {
            engine: shown.clone(),
            what: "reading its TLS certificates (set DOCKER_CERT_PATH to the directory with \
                   ca.pem, cert.pem and key.pem)",
            source: e.into(),
        })?;
        return Ok(EngineAddress {
            client,
            address: shown,
            endpoint: Endpoint::Remote { host, tls: true },
        });
    }
    let client = bollard::Docker::connect_with_http(&address, ENGINE_TIMEOUT, version)
        .map_err(|e| failed("connecting over TCP", e))?;
    Ok(EngineAddress {
        client,
        address,
        endpoint: Endpoint::Remote { host, tls: false },
    })
}

impl EngineAddress {
    /// Agrees on an API version with the engine (an older engine refuses newer clients) and
    /// checks that it answers.
    pub(crate) async fn negotiate(&mut self) -> Result<(), PoolError> {
        let failed = |what, source: EngineError| PoolError::Engine {
            engine: self.address.clone(),
            what,
            source: source.into(),
        };
        let no_answer = match self.endpoint {
            Endpoint::Remote { tls: true, .. } => {
                "no answer over TLS (is dockerd listening there with --tlsverify, and do ca.pem, \
                 cert.pem and key.pem in DOCKER_CERT_PATH belong to it: ca.pem the CA that \
                 signed its certificate, cert.pem a client certificate it trusts?)"
            }
            Endpoint::Remote { tls: false, .. } => {
                "no answer (is dockerd listening there? An engine that wants TLS needs \
                 DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH)"
            }
            Endpoint::Local => {
                "no answer (is dockerd running? scripts/docker-engine.sh starts one)"
            }
        };
        let client = self
            .client
            .clone()
            .negotiate_version()
            .await
            .map_err(|e| failed(no_answer, e))?;
        client.ping().await.map_err(|e| failed("ping", e))?;
        self.client = client;
        Ok(())
    }
}

pub(crate) struct Docker {
    engine: bollard::Docker,
    address: String,
    endpoint: Endpoint,
    why: &'static str,
    /// This scfsim's run: every container it creates carries it.
    run: String,
    /// This machine and data directory: whose leftovers a later scfsim removes.
    owner: String,
    /// This process (`PID:START_TIME`): whether the owner still runs.
    process: String,
    reaper_program: PathBuf,
    runtime_image: String,
    /// Set by [`Backend::setup`].
    reaper: Option<reaper::Reaper>,
    /// The address instances reach the host at, on a local engine.
    host_address: Option<String>,
    /// The name of scfsim's network: [`NETWORK`] (another in tests).
    network_name: String,
    /// The id of scfsim's network, on a local engine.
    network: Option<String>,
    /// Makes sockets inside containers' network namespaces: on a local engine, when scfsim may
    /// enter them (set by [`Backend::setup`]).
    netns: Option<NetnsWorker>,
    details: Vec<String>,
    /// Images known to be on the engine.
    present: Mutex<HashSet<String>>,
    /// Images whose containers cannot show their sockets (no `cat`): see [`PROXY_HOLD`].
    no_cat: Mutex<HashSet<String>>,
    /// Containers created ahead of demand, per function (`container_stock`). They carry this
    /// run's labels (so the reaper and a later scfsim's leftover removal find them) but no
    /// request id: a label cannot change after create, so a stocked container gets its
    /// request's name, `scfsim-REQUEST_ID`, when it starts.
    stock: Arc<Mutex<HashMap<String, FunctionStock>>>,
    /// Stock containers made so far: their names.
    stocked: std::sync::atomic::AtomicU64,
    /// When scfsim itself runs in a container of its (local) engine, e.g. compose with the
    /// engine's socket mounted: that container's bind mounts, (path in it, path on the
    /// engine's host), longest first. A code directory is mounted into an instance by its
    /// path on the engine's host.
    own_mounts: Option<OwnMounts>,
    /// The OOM flags of this run's live containers, set from the engine's events.
    oom_flags: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>,
    events: Option<JoinHandle<()>>,
}

/// scfsim's own container (see [`Docker::own_mounts`]).
struct OwnMounts {
    id: String,
    binds: Vec<(PathBuf, PathBuf)>,
}

/// A created container, not started yet.
pub(crate) struct Prepared {
    container: Container,
    command: Vec<String>,
    /// A stocked container's name for its request, given when it starts.
    rename: Option<String>,
}

/// One function's containers created ahead of demand.
#[derive(Default)]
struct FunctionStock {
    /// What they were created from (see [`Docker::take_stocked`]).
    fingerprint: String,
    ready: Vec<Container>,
    /// Being created.
    creating: u32,
}

/// One container: removed when dropped unless [`Container::remove`] ran.
struct Container {
    engine: bollard::Docker,
    id: String,
    output: OutputLog,
    readers: Vec<JoinHandle<()>>,
    /// True once the output stream ended (the container's process closed it).
    output_done: watch::Receiver<bool>,
    oom: Arc<AtomicBool>,
    oom_flags: Weak<Mutex<HashMap<String, Arc<AtomicBool>>>>,
    removed: bool,
}

pub(crate) struct Instance {
    container: Container,
    reach: Reach,
    /// What was started, for a failure's message.
    image: String,
    command: Vec<String>,
    /// Its init's, as the engine reports it (0 when it ended before the engine was asked).
    pid: u32,
    exit: watch::Receiver<Option<ExitInfo>>,
    waiter: JoinHandle<()>,
}

/// How port 9000 of one container is reached.
enum Reach {
    /// At 127.0.0.1 inside the container's network namespace, held open since right after the
    /// start: it is this container's even once the container is gone (then nothing listens).
    Namespace {
        netns: Arc<Netns>,
        worker: NetnsWorker,
    },
    /// At an address the engine gave the container: its address on scfsim's network, or a
    /// port published on the engine's host. Either may become another container's once this
    /// one stopped, so a connection is checked with the engine ([`Docker::still_running`]).
    Address {
        address: SocketAddr,
        /// Through the engine's proxy, which accepts before the server listens.
        published: bool,
    },
    /// It ended before it had an address: `exited` tells.
    Gone,
}

impl Docker {
    /// The engine the environment names; nothing is sent to it before [`Backend::setup`].
    pub(crate) fn connect(options: &LauncherOptions, why: &'static str) -> Result<Self, PoolError> {
        let EngineAddress {
            client,
            address,
            endpoint,
        } = engine_from_env()?;
        let work_dir = std::path::absolute(&options.work_dir).unwrap_or(options.work_dir.clone());
        let machine = std::fs::read_to_string("/etc/machine-id")
            .map(|id| id.trim().to_string())
            .unwrap_or_else(|_| "unknown-machine".into());
        let process = process_identity(std::process::id()).unwrap_or_default();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(Docker {
            engine: client,
            address,
            endpoint,
            why,
            run: format!("{:x}-{nanos:x}", std::process::id()),
            owner: format!("{machine}:{}", work_dir.display()),
            process,
            reaper_program: options.supervisor.clone(),
            runtime_image: std::env::var("SCFSIM_RUNTIME_IMAGE")
                .ok()
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| RUNTIME_IMAGE.into()),
            reaper: None,
            host_address: None,
            network_name: NETWORK.into(),
            network: None,
            netns: None,
            details: Vec::new(),
            present: Mutex::new(HashSet::new()),
            no_cat: Mutex::new(HashSet::new()),
            stock: Arc::new(Mutex::new(HashMap::new())),
            stocked: std::sync::atomic::AtomicU64::new(0),
            own_mounts: None,
            oom_flags: Arc::new(Mutex::new(HashMap::new())),
            events: None,
        })
    }

    fn engine_failed(&self, what: &'static str, source: EngineError) -> PoolError {
        PoolError::Engine {
            engine: self.address.clone(),
            what,
            source: source.into(),
        }
    }

    /// scfsim's bridge network on a local engine, created if missing: its id and gateway
    /// address. Two scfsims starting together may both create it (the engine allows equal
    /// names); each then uses the one with the lowest id, and either works.
    async fn ensure_network(&self) -> Result<(String, Option<String>), PoolError> {
        use bollard::query_parameters::ListNetworksOptionsBuilder;
        let filters = HashMap::from([("name", vec![self.network_name.clone()])]);
        let find = || async {
            let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
            let mut networks: Vec<_> = self
                .engine
                .list_networks(Some(options))
                .await
                .map_err(|e| self.engine_failed("listing networks", e))?
                .into_iter()
                // The engine's name filter matches parts of names too.
                .filter(|n| n.name.as_deref() == Some(self.network_name.as_str()))
                .filter_map(|n| {
                    let gateway = n
                        .ipam
                        .and_then(|ipam| ipam.config)
                        .and_then(|configs| configs.into_iter().find_map(|c| c.gateway));
                    Some((n.id?, gateway))
                })
                .collect();
            networks.sort();
            Ok::<_, PoolError>(networks.into_iter().next())
        };
        if let Some(found) = find().await? {
            self.remove_duplicate_networks(&found.0).await;
            return Ok(found);
        }
        let request = NetworkCreateRequest {
            name: self.network_name.clone(),
            driver: Some("bridge".into()),
            labels: Some(HashMap::from([(
                "io.scfsim.network".to_string(),
                "instances".to_string(),
            )])),
            ..Default::default()
        };
        self.engine
            .create_network(request)
            .await
            .map_err(|e| self.engine_failed("creating scfsim's network", e))?;
        find().await?.ok_or_else(|| PoolError::Engine {
            engine: self.address.clone(),
            what: "creating scfsim's network",
            source: format!("network {} not found after creating it", self.network_name).into(),
        })
    }

    /// Removes the other networks named [`NETWORK`] (the engine refuses to start containers on
    /// an ambiguous name); one in use by a container is kept by the engine.
    async fn remove_duplicate_networks(&self, keep: &str) {
        use bollard::query_parameters::ListNetworksOptionsBuilder;
        let filters = HashMap::from([("name", vec![self.network_name.clone()])]);
        let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
        let Ok(networks) = self.engine.list_networks(Some(options)).await else {
            return;
        };
        for network in networks {
            if network.name.as_deref() == Some(self.network_name.as_str()) {
                if let Some(id) = network.id.filter(|id| id != keep) {
                    let _ = self.engine.remove_network(&id).await;
                }
            }
        }
    }

    /// Whether the engine still reports container `id` running, with init `pid`: asked after a
    /// connection to its address was made, this says the connection reached this container.
    ///
    /// The engine gives a container's address on its network, and its published ports, back
    /// only when it handles the container's exit, in the same step that marks it stopped:
    /// dockerd does both while holding the container's lock, which an inspect takes too. So
    /// "running" after the connection was made means the address or port was still this
    /// container's when it was made: no other container could have had it then. (A dead
    /// container's address that is still its own reaches nothing, or the engine's proxy of a
    /// port, which is not asked before the container's sockets say its server listens.)
    async fn still_running(&self, id: &str, pid: u32) -> io::Result<bool> {
        match self.engine.inspect_container(id, None).await {
            Ok(inspected) => {
                let state = inspected.state.unwrap_or_default();
                // A changed pid would be a restart; scfsim never asks for one.
                Ok(state.running == Some(true) && state.pid == Some(i64::from(pid)))
            }
            // Removed already: not running.
            Err(EngineError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(io::Error::other(e)),
        }
    }

    /// Whether a server listens on port 9000 inside container `id`, read from its own
    /// `/proc/net/tcp` and `/proc/net/tcp6` (`cat` run in it through the engine); `None` where
    /// that cannot be read (the image has no `cat`). Any failure of the look is "not yet": the
    /// launcher asks again until the container ends or `init_timeout` passes.
    async fn listens(&self, id: &str, image: &str) -> Option<bool> {
        if self
            .no_cat
            .lock()
            .expect("image set poisoned")
            .contains(image)
        {
            return None;
        }
        let look = async {
            let exec = self
                .engine
                .create_exec(
                    id,
                    bollard::models::ExecConfig {
                        cmd: Some(vec![
                            "cat".into(),
                            "/proc/net/tcp".into(),
                            "/proc/net/tcp6".into(),
                        ]),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        ..Default::default()
                    },
                )
                .await?;
            let mut text = Vec::new();
            if let bollard::exec::StartExecResults::Attached { mut output, .. } =
                self.engine.start_exec(&exec.id, None).await?
            {
                while let Some(chunk) = output.next().await {
                    if let bollard::container::LogOutput::StdOut { message } = chunk? {
                        text.extend_from_slice(&message);
                    }
                }
            }
            let code = self.engine.inspect_exec(&exec.id).await?.exit_code;
            Ok::<_, EngineError>((code, text))
        };
        match tokio::time::timeout(LISTEN_PROBE_PATIENCE, look).await {
            Ok(Ok((Some(0), text))) => {
                Some(listening_on_instance_port(&String::from_utf8_lossy(&text)))
            }
            // 126/127, or the engine's error: the runtime could not exec `cat` (a container
            // that is not running fails before, with another error).
            Ok(Ok((Some(126 | 127), _))) => self.without_cat(image),
            Ok(Err(err)) if is_exec_failure(&err.to_string()) => self.without_cat(image),
            Ok(Ok(_)) => Some(false),
            Ok(Err(err)) => {
                tracing::debug!(container = %id, %err, "reading the container's sockets");
                Some(false)
            }
            Err(_) => Some(false),
        }
    }

    /// Remembers that containers of `image` cannot show their sockets.
    fn without_cat(&self, image: &str) -> Option<bool> {
        tracing::info!(
            image,
            "the image has no `cat`: port 9000 counts as listening once a connection to its \
             published port stayed open {PROXY_HOLD:?}"
        );
        self.no_cat
            .lock()
            .expect("image set poisoned")
            .insert(image.to_string());
        None
    }

    /// How port 9000 of the just started container is reached: inside its network namespace
    /// where scfsim can enter it, else at `address` (`None`: the container ended before it
    /// had one).
    fn reach(&self, container_id: &str, pid: u32, address: Option<SocketAddr>) -> Reach {
        if let (Endpoint::Local, Some(worker), true) = (&self.endpoint, &self.netns, pid != 0) {
            match container_netns(pid, container_id) {
                Ok(fd) => {
                    return Reach::Namespace {
                        netns: Arc::new(Netns::adopt(fd)),
                        worker: worker.clone(),
                    }
                }
                // Ended already (its address then reaches nothing, as the check after
                // connecting shows), or its processes are not visible here.
                Err(err) => tracing::debug!(
                    container = %container_id,
                    pid,
                    %err,
                    "the container's network namespace is not reachable; using its address"
                ),
            }
        }
        match address {
            Some(address) => Reach::Address {
                address,
                published: matches!(self.endpoint, Endpoint::Remote { .. }),
            },
            None => Reach::Gone,
        }
    }

    /// The part of [`Backend::setup`] that instances are reached through: the engine's API
    /// version, and on a local engine scfsim's network and the namespace thread.
    async fn setup_reach(&mut self) -> Result<(), PoolError> {
        let mut engine = EngineAddress {
            client: self.engine.clone(),
            address: self.address.clone(),
            endpoint: self.endpoint.clone(),
        };
        engine.negotiate().await?;
        self.engine = engine.client;
        if self.endpoint == Endpoint::Local {
            let (network, gateway) = self.ensure_network().await?;
            self.network = Some(network);
            self.host_address = gateway;
            match NetnsWorker::start() {
                Ok(worker) => self.netns = Some(worker),
                Err(err) => self.details.push(format!(
                    "containers: port 9000 reached at each container's address on {}, checked \
                     with the engine after connecting ({})",
                    self.network_name,
                    with_sources(&err)
                )),
            }
            if let Some(id) = own_container_id() {
                self.join_as_sibling(&id).await?;
            }
        }
        Ok(())
    }

    /// When scfsim runs in container `id` of its own engine (the engine's socket mounted into
    /// it): instances are its siblings. It joins scfsim's network to reach their port 9000 at
    /// their addresses (their processes are not visible from inside it), and notes its bind
    /// mounts, through which code directories are found on the engine's host. A container of
    /// another engine (the id unknown to this one) changes nothing.
    async fn join_as_sibling(&mut self, id: &str) -> Result<(), PoolError> {
        let me = match self.engine.inspect_container(id, None).await {
            Ok(me) => me,
            Err(EngineError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(()),
            Err(e) => return Err(self.engine_failed("inspecting scfsim's own container", e)),
        };
        let network = self.network.clone().unwrap_or_default();
        let joined = me
            .network_settings
            .and_then(|s| s.networks)
            .is_some_and(|n| {
                n.values()
                    .any(|e| e.network_id.as_deref() == Some(network.as_str()))
            });
        if !joined {
            use bollard::models::NetworkConnectRequest;
            let request = NetworkConnectRequest {
                container: id.to_string(),
                endpoint_config: None,
            };
            self.engine
                .connect_network(&network, request)
                .await
                .map_err(|e| {
                    self.engine_failed("joining scfsim's own container to its network", e)
                })?;
        }
        let mut binds: Vec<(PathBuf, PathBuf)> = me
            .mounts
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.typ.as_deref() == Some("bind"))
            .filter_map(|m| Some((PathBuf::from(m.destination?), PathBuf::from(m.source?))))
            .collect();
        binds.sort_by_key(|(inside, _)| std::cmp::Reverse(inside.as_os_str().len()));
        self.details.push(format!(
            "containers: scfsim runs in container {} of this engine: instances are its siblings \
             on {} (which it joined); a code_dir must be in one of its bind mounts ({}), and is \
             mounted from the engine host's path",
            &id[..12.min(id.len())],
            self.network_name,
            binds
                .iter()
                .map(|(inside, host)| format!("{} = {}", inside.display(), host.display()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        self.own_mounts = Some(OwnMounts {
            id: id.to_string(),
            binds,
        });
        Ok(())
    }

    /// Where the engine finds `code_dir`: the path itself, or, when scfsim runs in a container
    /// of the engine, the engine host's path of the bind mount it is in.
    fn code_dir_on_engine(&self, code_dir: &Path) -> Result<PathBuf, StartFailureKind> {
        let Some(own) = &self.own_mounts else {
            return Ok(code_dir.to_path_buf());
        };
        // The config's copy may reach the code through symbolic links (the image's entrypoint
        // links the config directory's entries); the engine needs the real path.
        let real = std::fs::canonicalize(code_dir).unwrap_or_else(|_| code_dir.to_path_buf());
        own.binds
            .iter()
            .find_map(|(inside, host)| Some(host.join(real.strip_prefix(inside).ok()?)))
            .ok_or_else(|| StartFailureKind::Internal {
                what: format!(
                    "code_dir {} is not in a bind mount of scfsim's container {}, so the Docker \
                     engine cannot mount it into the instance: bind-mount the directory into \
                     scfsim's container (docker-compose.docker.yml mounts ./examples and \
                     ./config)",
                    real.display(),
                    &own.id[..12.min(own.id.len())]
                ),
                source: None,
            })
    }

    /// Removes the containers an earlier scfsim with this data directory on this machine left
    /// behind: those whose process is gone. Returns how many.
    async fn remove_leftovers(&self) -> Result<usize, PoolError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_OWNER}={}", self.owner)])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .engine
            .list_containers(Some(options))
            .await
            .map_err(|e| self.engine_failed("listing earlier runs' containers", e))?;
        let mut removed = 0;
        for container in containers {
            let labels = container.labels.unwrap_or_default();
            let process = labels.get(LABEL_PROCESS).map(String::as_str).unwrap_or("");
            if process == self.process || process_alive(process) {
                continue;
            }
            if let Some(id) = container.id {
                if remove(&self.engine, &id).await.is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// The image is on the engine, pulled if it was not; bounded by `waited` from now.
    async fn ensure_image(&self, image: &str, waited: Duration) -> Result<(), StartFailureKind> {
        if self
            .present
            .lock()
            .expect("image set poisoned")
            .contains(image)
        {
            return Ok(());
        }
        let pull_failed = |source: BoxError| StartFailureKind::ImagePull {
            image: image.to_string(),
            source,
        };
        match self.engine.inspect_image(image).await {
            Ok(_) => {}
            Err(EngineError::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                let options = CreateImageOptionsBuilder::new().from_image(image).build();
                let pull = async {
                    let mut progress = self.engine.create_image(Some(options), None, None);
                    while let Some(step) = progress.next().await {
                        step?;
                    }
                    Ok::<(), EngineError>(())
                };
                match tokio::time::timeout(waited, pull).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(pull_failed(e.into())),
                    Err(_) => {
                        return Err(StartFailureKind::ImagePullTimedOut {
                            image: image.to_string(),
                            waited,
                        })
                    }
                }
            }
            Err(e) => {
                return Err(StartFailureKind::internal(
                    format!("inspecting image {image} on the engine"),
                    e,
                ))
            }
        }
        self.present
            .lock()
            .expect("image set poisoned")
            .insert(image.to_string());
        Ok(())
    }

    /// The container of `spec`: image, command, environment, limits, labels; a code
    /// function's code directory mounted from `code_dir` (the path the engine finds it at).
    fn container_config(
        &self,
        spec: &InstanceSpec,
        code_dir: &Path,
    ) -> (ContainerCreateBody, Vec<String>) {
        let mut env: Vec<String> = Vec::with_capacity(spec.env.len() + 1);
        for (key, value) in &spec.env {
            let value = match key.as_str() {
                "USER_CODE_ROOT" if spec.image.is_none() => CODE_ROOT,
                _ => value,
            };
            env.push(format!("{key}={value}"));
        }
        if let Some(host) = &self.host_address {
            env.push(format!("SCFSIM_HOST={host}"));
        }
        let labels = HashMap::from([
            (LABEL_RUN.to_string(), self.run.clone()),
            (LABEL_OWNER.to_string(), self.owner.clone()),
            (LABEL_PROCESS.to_string(), self.process.clone()),
            (LABEL_FUNCTION.to_string(), spec.function.clone()),
        ]);
        let memory = spec.memory_mb.map(|mb| i64::from(mb) << 20);
        let mut host = HostConfig {
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_string(),
                format!("rw,nosuid,nodev,size={TMP_MB}m,mode=1777"),
            )])),
            memory,
            // The same as the memory limit: no swap, so that going over it is an OOM kill.
            memory_swap: memory,
            pids_limit: Some(i64::from(MAX_PROCESSES)),
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("nofile".into()),
                soft: Some(MAX_OPEN_FILES as i64),
                hard: Some(MAX_OPEN_FILES as i64),
            }]),
            init: Some(true),
            ..Default::default()
        };
        let mut body = ContainerCreateBody {
            env: Some(env),
            labels: Some(labels),
            ..Default::default()
        };
        let command = match &spec.image {
            Some(image) => {
                body.image = Some(image.image.clone());
                body.entrypoint = image.command.clone();
                body.cmd = image.args.clone();
                let mut shown = image.command.clone().unwrap_or_default();
                shown.extend(image.args.clone().unwrap_or_default());
                if shown.is_empty() {
                    shown.push("(the image's entrypoint and command)".into());
                }
                shown
            }
            None => {
                let relative = spec
                    .bootstrap
                    .strip_prefix(&spec.code_dir)
                    .unwrap_or(Path::new("scf_bootstrap"));
                let bootstrap = Path::new(CODE_ROOT).join(relative).display().to_string();
                body.image = Some(self.runtime_image.clone());
                body.entrypoint = Some(vec![bootstrap.clone()]);
                body.working_dir = Some(CODE_ROOT.into());
                host.binds = Some(vec![format!("{}:{CODE_ROOT}:ro", code_dir.display())]);
                vec![bootstrap]
            }
        };
        match &self.endpoint {
            Endpoint::Local => {
                host.network_mode = Some(
                    self.network
                        .clone()
                        .unwrap_or_else(|| self.network_name.clone()),
                )
            }
            Endpoint::Remote { .. } => {
                let port = format!("{INSTANCE_PORT}/tcp");
                body.exposed_ports = Some(vec![port.clone()]);
                host.port_bindings = Some(HashMap::from([(
                    port,
                    Some(vec![PortBinding {
                        host_ip: None,
                        host_port: Some(String::new()),
                    }]),
                )]));
            }
        }
        body.host_config = Some(host);
        (body, command)
    }

    /// The image of `spec` on the engine, and the container to create for it (without the
    /// request id: see [`Docker::create`]) with the command it runs.
    async fn plan(
        &self,
        spec: &InstanceSpec,
    ) -> Result<(ContainerCreateBody, Vec<String>), StartFailure> {
        let image = spec
            .image
            .as_ref()
            .map_or(self.runtime_image.as_str(), |i| i.image.as_str());
        self.ensure_image(image, spec.init_timeout)
            .await
            .map_err(StartFailure::before_spawn)?;
        let code_dir = match spec.image {
            Some(_) => spec.code_dir.clone(),
            None => self
                .code_dir_on_engine(&spec.code_dir)
                .map_err(StartFailure::before_spawn)?,
        };
        Ok(self.container_config(spec, &code_dir))
    }

    /// Creates the container of `spec` for its request (named and labelled with the request
    /// id) and attaches to its output before it starts.
    async fn create(
        &self,
        spec: &InstanceSpec,
        mut body: ContainerCreateBody,
        command: Vec<String>,
    ) -> Result<Prepared, StartFailure> {
        let mut name = None;
        if !spec.request_id.is_empty() {
            if let Some(labels) = body.labels.as_mut() {
                labels.insert(LABEL_REQUEST.to_string(), spec.request_id.clone());
            }
            name = Some(format!("scfsim-{}", spec.request_id));
        }
        let image = body.image.clone().unwrap_or_default();
        match create_container(&self.engine, &self.oom_flags, body, name).await {
            Ok(container) => Ok(Prepared {
                container,
                command,
                rename: None,
            }),
            Err(Refused::ImageMissing(message)) => {
                // Removed from the engine since it was seen: pulled next time.
                self.present
                    .lock()
                    .expect("image set poisoned")
                    .remove(&image);
                Err(StartFailure::before_spawn(StartFailureKind::ImagePull {
                    image,
                    source: message.into(),
                }))
            }
            Err(Refused::Other {
                what,
                source,
                output,
            }) => Err(StartFailure {
                kind: StartFailureKind::internal(what, source),
                pid: None,
                exit: None,
                output,
            }),
        }
    }

    /// A container of `spec` from its function's stock, if one is ready, renamed for the
    /// request when it starts; the stock refilled in the background. `None`: none ready (or no
    /// stock for this function).
    fn take_stocked(
        &self,
        spec: &InstanceSpec,
        body: &ContainerCreateBody,
        command: &[String],
    ) -> Option<Prepared> {
        // A debug-mode instance is made for its debugger; never stocked.
        let target = match spec.debug {
            Some(_) => 0,
            None => spec.container_stock.min(spec.max_instances),
        };
        if target == 0 {
            return None;
        }
        // What the containers are made from (the rest of their configuration is scfsim's
        // own), as text: a changed function does not get containers made for the old one.
        let fingerprint = format!(
            "{:?} {:?} {:?} {:?} {:?}",
            spec.image, spec.env, spec.memory_mb, spec.code_dir, spec.bootstrap
        );
        let (taken, stale) = {
            let mut stock = self.stock.lock().expect("stock poisoned");
            let function = stock.entry(spec.function.clone()).or_default();
            let stale = if function.fingerprint != fingerprint {
                function.fingerprint = fingerprint.clone();
                std::mem::take(&mut function.ready)
            } else {
                Vec::new()
            };
            (function.ready.pop(), stale)
        };
        // Dropped outside the lock: each removes its container in the background.
        drop(stale);
        self.refill(&spec.function, body, fingerprint, target);
        let container = taken?;
        Some(Prepared {
            container,
            command: command.to_vec(),
            rename: (!spec.request_id.is_empty()).then(|| format!("scfsim-{}", spec.request_id)),
        })
    }

    /// Creates what `function`'s stock lacks to hold `target` containers of `body`, each in a
    /// task of its own: no connection waits for them.
    fn refill(&self, function: &str, body: &ContainerCreateBody, fingerprint: String, target: u32) {
        let missing = {
            let mut stock = self.stock.lock().expect("stock poisoned");
            let entry = stock.entry(function.to_string()).or_default();
            let have = entry.ready.len() as u32 + entry.creating;
            let missing = target.saturating_sub(have);
            entry.creating += missing;
            missing
        };
        for _ in 0..missing {
            let n = self.stocked.fetch_add(1, Ordering::Relaxed);
            let name = format!("scfsim-stock-{}-{n}", self.run);
            let (engine, oom_flags, stock) = (
                self.engine.clone(),
                self.oom_flags.clone(),
                Arc::downgrade(&self.stock),
            );
            let (body, fingerprint, function) =
                (body.clone(), fingerprint.clone(), function.to_string());
            tokio::spawn(async move {
                let made = create_container(&engine, &oom_flags, body, Some(name)).await;
                let Some(stock) = stock.upgrade() else {
                    return; // scfsim is ending: a made container drops (and goes) here.
                };
                let mut stock = stock.lock().expect("stock poisoned");
                let entry = stock.entry(function).or_default();
                entry.creating = entry.creating.saturating_sub(1);
                match made {
                    Ok(container) if entry.fingerprint == fingerprint => {
                        entry.ready.push(container)
                    }
                    // Made for a function that changed meanwhile: dropped, so removed.
                    Ok(_) => {}
                    Err(err) => tracing::debug!(%err, "creating a stock container"),
                }
            });
        }
    }
}

/// Why the engine did not create a container.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("the image is not on the engine: {0}")]
    ImageMissing(String),
    #[error("{what}: {source}")]
    Other {
        what: &'static str,
        source: EngineError,
        output: CapturedOutput,
    },
}

/// Creates a container of `body` (named `name`, else as the engine chooses) and attaches to its
/// output before it starts.
async fn create_container(
    engine: &bollard::Docker,
    oom_flags: &Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>,
    body: ContainerCreateBody,
    name: Option<String>,
) -> Result<Container, Refused> {
    let mut options = CreateContainerOptionsBuilder::new();
    if let Some(name) = &name {
        options = options.name(name);
    }
    let created = match engine.create_container(Some(options.build()), body).await {
        Ok(created) => created,
        Err(EngineError::DockerResponseServerError {
            status_code: 404,
            message,
        }) => return Err(Refused::ImageMissing(message)),
        Err(source) => {
            return Err(Refused::Other {
                what: "creating the instance's container",
                source,
                output: CapturedOutput::default(),
            })
        }
    };
    let oom = Arc::new(AtomicBool::new(false));
    oom_flags
        .lock()
        .expect("oom flags poisoned")
        .insert(created.id.clone(), oom.clone());
    let mut container = Container {
        engine: engine.clone(),
        id: created.id,
        output: OutputLog::default(),
        readers: Vec::new(),
        output_done: watch::channel(false).1,
        oom,
        oom_flags: Arc::downgrade(oom_flags),
        removed: false,
    };
    if let Err(source) = container.attach().await {
        let output = container.remove().await;
        return Err(Refused::Other {
            what: "attaching to the container's output",
            source,
            output,
        });
    }
    Ok(container)
}

impl Container {
    /// Reads stdout and stderr into the output log, from the container's first byte on.
    async fn attach(&mut self) -> Result<(), EngineError> {
        let options = AttachContainerOptionsBuilder::new()
            .stream(true)
            .logs(true)
            .stdout(true)
            .stderr(true)
            .build();
        let attached = self
            .engine
            .attach_container(&self.id, Some(options))
            .await?;
        let (mut out_writer, out_reader) = tokio::io::duplex(64 << 10);
        let (mut err_writer, err_reader) = tokio::io::duplex(64 << 10);
        let captures = [
            self.output.capture(out_reader, OutputStream::Stdout),
            self.output.capture(err_reader, OutputStream::Stderr),
        ];
        let mut stream = attached.output;
        let (done_tx, done_rx) = watch::channel(false);
        self.output_done = done_rx;
        self.readers.push(tokio::spawn(async move {
            use bollard::container::LogOutput;
            while let Some(Ok(chunk)) = stream.next().await {
                let written = match chunk {
                    LogOutput::StdErr { message } => err_writer.write_all(&message).await,
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        out_writer.write_all(&message).await
                    }
                    LogOutput::StdIn { .. } => Ok(()),
                };
                if written.is_err() {
                    break;
                }
            }
            // Dropping the writers ends both captures; done once every line is in the log.
            drop((out_writer, err_writer));
            for capture in captures {
                let _ = capture.await;
            }
            let _ = done_tx.send(true);
        }));
        Ok(())
    }

    /// Removes the container (and with it anything still running in it); its output so far.
    async fn remove(&mut self) -> CapturedOutput {
        if !self.removed {
            self.removed = true;
            if let Err(err) = remove(&self.engine, &self.id).await {
                tracing::warn!(container = %self.id, "removing the instance's container: {err}");
            }
            self.forget();
        }
        for reader in self.readers.drain(..) {
            let abort = reader.abort_handle();
            if tokio::time::timeout(OUTPUT_DRAIN, reader).await.is_err() {
                abort.abort();
            }
        }
        self.output.snapshot()
    }

    fn forget(&self) {
        if let Some(flags) = self.oom_flags.upgrade() {
            flags.lock().expect("oom flags poisoned").remove(&self.id);
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
        if self.removed {
            return;
        }
        self.forget();
        // A cancelled start or a panicking connection: remove it in the background. Without a
        // runtime (scfsim is ending), the reaper removes it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (engine, id) = (self.engine.clone(), self.id.clone());
            runtime.spawn(async move {
                let _ = remove(&engine, &id).await;
            });
        }
    }
}

/// The id of the container this process runs in, if any: Docker bind-mounts the container's
/// own `/etc/hostname` from `…/containers/ID/hostname` of its data root.
fn own_container_id() -> Option<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let root = fields.nth(3)?;
        let mount_point = fields.next()?;
        if mount_point != "/etc/hostname" {
            return None;
        }
        let id = root.split("/containers/").nth(1)?.split('/').next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
}

/// The network namespace of container `container_id`, through its init process `pid`.
///
/// Both files are opened through one descriptor of `/proc/PID`, which stays the process it was
/// opened for: if that process ended, they fail, even when the pid number went to another
/// process since. That process is the container's if its cgroup path names the container (the
/// engine puts each container in a cgroup named by its id, with either cgroup driver); a pid
/// reused by another process, or one of another pid namespace than the engine's, is refused.
fn container_netns(pid: u32, container_id: &str) -> io::Result<OwnedFd> {
    let process = std::fs::File::open(format!("/proc/{pid}"))?;
    let open = |name: &str| {
        openat(
            process.as_fd(),
            name,
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)
    };
    let cgroup = io::read_to_string(std::fs::File::from(open("cgroup")?))?;
    if container_id.is_empty() || !cgroup.contains(container_id) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("process {pid} is not in the container's cgroup"),
        ));
    }
    open("ns/net")
}

/// Whether `/proc/net/tcp{,6}` text lists a socket listening on port 9000 (any address).
fn listening_on_instance_port(proc_net_tcp: &str) -> bool {
    proc_net_tcp.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1).unwrap_or("");
        let state = fields.nth(1).unwrap_or("");
        local.ends_with(PROC_NET_PORT) && state == PROC_NET_LISTEN
    })
}

/// The runtime's words for a command it could not execute.
fn is_exec_failure(message: &str) -> bool {
    [
        "executable file not found",
        "no such file or directory",
        "permission denied",
        "exec format error",
        "exec:",
    ]
    .iter()
    .any(|words| message.contains(words))
}

/// Force-removes a container (killing what runs in it) and its anonymous volumes.
pub(crate) async fn remove(engine: &bollard::Docker, id: &str) -> Result<(), EngineError> {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match engine.remove_container(id, Some(options)).await {
        Ok(())
        | Err(EngineError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `PID:START_TIME` of a process: a pid alone may be reused.
fn process_identity(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    // Fields after the command: state is field 3, start time field 22.
    let start = after.split_whitespace().nth(19)?;
    Some(format!("{pid}:{start}"))
}

/// Whether the process a [`LABEL_PROCESS`] names still runs.
fn process_alive(label: &str) -> bool {
    let Some(pid) = label.split(':').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    process_identity(pid).is_some_and(|now| now == label)
}

/// Sets the OOM flag of a container of this run when the engine reports its OOM kill.
async fn watch_oom(
    engine: bollard::Docker,
    run: String,
    flags: Weak<Mutex<HashMap<String, Arc<AtomicBool>>>>,
) {
    let filters = HashMap::from([
        ("type", vec!["container".to_string()]),
        ("event", vec!["oom".to_string()]),
        ("label", vec![format!("{LABEL_RUN}={run}")]),
    ]);
    let options = EventsOptionsBuilder::new().filters(&filters).build();
    let mut events = engine.events(Some(options));
    while let Some(Ok(event)) = events.next().await {
        let Some(flags) = flags.upgrade() else {
            return;
        };
        if let Some(id) = event.actor.and_then(|a| a.id) {
            if let Some(flag) = flags.lock().expect("oom flags poisoned").get(&id) {
                flag.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// How the container's process ended, as the engine reports it; the OOM flag set if it was
/// killed for memory.
async fn wait_exit(engine: &bollard::Docker, id: &str, oom: &AtomicBool) -> ExitInfo {
    let mut waiting = engine.wait_container(id, None);
    let code = match waiting.next().await {
        Some(Ok(response)) => Some(response.status_code),
        Some(Err(EngineError::DockerContainerWaitError { code, .. })) => Some(code),
        _ => None,
    };
    if let Ok(inspect) = engine.inspect_container(id, None).await {
        if inspect
            .state
            .as_ref()
            .and_then(|s| s.oom_killed)
            .unwrap_or(false)
        {
            oom.store(true, Ordering::SeqCst);
        }
    }
    match code {
        // What runc reports for a process killed by a signal.
        Some(code) if (129..=192).contains(&code) => ExitInfo {
            code: None,
            signal: Some((code - 128) as i32),
        },
        Some(code) => ExitInfo {
            code: Some(code as i32),
            signal: None,
        },
        None => ExitInfo {
            code: None,
            signal: None,
        },
    }
}

impl Backend for Docker {
    type Prepared = Prepared;
    type Instance = Instance;

    fn isolation(&self) -> Isolation {
        Isolation::Docker
    }

    fn describe(&self) -> String {
        let reach = match &self.endpoint {
            Endpoint::Local if self.netns.is_some() => format!(
                "each on the network {}, port 9000 reached inside its own network namespace",
                self.network_name
            ),
            Endpoint::Local => format!("each on the network {}", self.network_name),
            Endpoint::Remote { host, .. } => format!("port 9000 published on {host}"),
        };
        format!(
            "container instances ({}): a new container per connection on the Docker engine \
             {} ({reach}), read-only root file system with a {TMP_MB} MB /tmp, memory_mb \
             without swap, {MAX_PROCESSES} processes; code functions run in {} with code_dir \
             read-only on {CODE_ROOT}",
            self.why, self.address, self.runtime_image
        )
    }

    fn details(&self) -> Vec<String> {
        self.details.clone()
    }

    async fn setup(&mut self) -> Result<(), PoolError> {
        self.setup_reach().await?;
        let removed = self.remove_leftovers().await?;
        if removed > 0 {
            self.details.push(format!(
                "containers: removed {removed} left behind by an earlier scfsim with this data \
                 directory"
            ));
        }
        self.reaper = Some(
            reaper::Reaper::spawn(&self.reaper_program, &self.run).map_err(|source| {
                PoolError::Reaper {
                    program: self.reaper_program.clone(),
                    source,
                }
            })?,
        );
        self.events = Some(tokio::spawn(watch_oom(
            self.engine.clone(),
            self.run.clone(),
            Arc::downgrade(&self.oom_flags),
        )));
        if self
            .engine
            .inspect_image(&self.runtime_image)
            .await
            .is_err()
        {
            self.details.push(format!(
                "containers: the runtime image {} is not on the engine; code functions with \
                 isolation = \"docker\" fail until scripts/docker-runtime-images.sh made it",
                self.runtime_image
            ));
        }
        if let Endpoint::Remote { .. } = self.endpoint {
            self.details.push(
                "containers: a remote engine cannot mount this machine's code_dir; code \
                 functions with isolation = \"docker\" need the engine on this machine"
                    .into(),
            );
        }
        self.details.push(format!(
            "containers: run {} (label {LABEL_RUN}); removed when scfsim ends, also on SIGKILL \
             (by scfsim's reaper process)",
            self.run
        ));
        Ok(())
    }

    async fn prepare(&self, spec: &InstanceSpec) -> Result<Prepared, StartFailure> {
        let (body, command) = self.plan(spec).await?;
        match self.take_stocked(spec, &body, &command) {
            Some(prepared) => Ok(prepared),
            None => self.create(spec, body, command).await,
        }
    }

    async fn start(
        &self,
        prepared: Prepared,
        spec: &InstanceSpec,
        deadline: tokio::time::Instant,
    ) -> Result<Instance, StartFailure> {
        let Prepared {
            mut container,
            command,
            rename,
        } = prepared;
        let image = spec
            .image
            .as_ref()
            .map_or(self.runtime_image.clone(), |i| i.image.clone());
        // A stocked container gets its request's name as it starts, in parallel.
        let renamed = async {
            match &rename {
                Some(name) => {
                    let options =
                        bollard::query_parameters::RenameContainerOptions { name: name.clone() };
                    self.engine.rename_container(&container.id, options).await
                }
                None => Ok(()),
            }
        };
        let (started, renamed) = tokio::join!(
            tokio::time::timeout_at(deadline, self.engine.start_container(&container.id, None)),
            renamed
        );
        if let Err(err) = renamed {
            tracing::warn!(container = %container.id, "naming a stock container for its request: {err}");
        }
        let kind = match started {
            Ok(Ok(())) => None,
            // The engine could not exec the command: the function's command or args (or
            // bootstrap) are wrong.
            Ok(Err(EngineError::DockerResponseServerError {
                status_code,
                message,
            })) if (400..500).contains(&status_code) && is_exec_failure(&message)
                || message.contains("starting container process") =>
            {
                Some(StartFailureKind::ContainerInit {
                    image: image.clone(),
                    command: command.clone(),
                    source: message.into(),
                })
            }
            Ok(Err(e)) => Some(StartFailureKind::internal(
                "starting the instance's container",
                e,
            )),
            Err(_) => Some(StartFailureKind::Internal {
                what: "the engine did not start the container within the init timeout".into(),
                source: None,
            }),
        };
        if let Some(kind) = kind {
            let output = container.remove().await;
            return Err(StartFailure {
                kind,
                pid: None,
                exit: None,
                output,
            });
        }
        let inspected = match self.engine.inspect_container(&container.id, None).await {
            Ok(inspected) => inspected,
            Err(e) => {
                let output = container.remove().await;
                return Err(StartFailure {
                    kind: StartFailureKind::internal("inspecting the started container", e),
                    pid: None,
                    exit: None,
                    output,
                });
            }
        };
        let pid = inspected
            .state
            .as_ref()
            .and_then(|s| s.pid)
            .and_then(|pid| u32::try_from(pid).ok())
            .unwrap_or_default();
        let settings = inspected.network_settings.unwrap_or_default();
        let address = match &self.endpoint {
            Endpoint::Local => settings
                .networks
                // Its one network: scfsim's.
                .and_then(|n| n.into_values().next())
                .and_then(|n| n.ip_address)
                .filter(|ip| !ip.is_empty())
                .and_then(|ip| ip.parse().ok())
                .map(|ip| SocketAddr::new(ip, INSTANCE_PORT)),
            Endpoint::Remote { host, .. } => settings
                .ports
                .and_then(|mut p| p.remove(&format!("{INSTANCE_PORT}/tcp")))
                .flatten()
                .and_then(|bindings| bindings.into_iter().find_map(|b| b.host_port))
                .and_then(|port| port.parse::<u16>().ok())
                .and_then(|port| {
                    use std::net::ToSocketAddrs;
                    (host.as_str(), port).to_socket_addrs().ok()?.next()
                }),
        };
        let reach = self.reach(&container.id, pid, address);
        let (exit_tx, exit_rx) = watch::channel(None);
        let waiter = {
            let (engine, id, oom) = (
                self.engine.clone(),
                container.id.clone(),
                container.oom.clone(),
            );
            let mut output_done = container.output_done.clone();
            tokio::spawn(async move {
                let exit = wait_exit(&engine, &id, &oom).await;
                // What it printed last is part of its end (a 405's message, tini's exec
                // failure): the stream ends right after the process.
                let _ =
                    tokio::time::timeout(OUTPUT_DRAIN, output_done.wait_for(|done| *done)).await;
                let _ = exit_tx.send(Some(exit));
            })
        };
        Ok(Instance {
            container,
            reach,
            image,
            command,
            pid,
            exit: exit_rx,
            waiter,
        })
    }

    async fn connect(&self, instance: &Instance) -> io::Result<TcpStream> {
        let (address, published) = match &instance.reach {
            Reach::Namespace { netns, worker } => {
                return process::connect_with(worker.socket(netns).await?).await
            }
            Reach::Address { address, published } => (*address, *published),
            // It ended before it had an address: `exited` tells.
            Reach::Gone => return Err(io::ErrorKind::ConnectionRefused.into()),
        };
        let hold = if published {
            match self.listens(&instance.container.id, &instance.image).await {
                Some(true) => false,
                Some(false) => return Err(io::ErrorKind::ConnectionRefused.into()),
                None => true,
            }
        } else {
            false
        };
        let stream = TcpStream::connect(address).await?;
        if hold {
            let mut byte = [0u8; 1];
            match tokio::time::timeout(PROXY_HOLD, stream.peek(&mut byte)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(io::ErrorKind::ConnectionRefused.into()),
                _ => {}
            }
        }
        // The address may have been another container's by now: the connection counts only
        // if this one still runs (see `still_running`); else it is refused, and `exited` tells.
        if !self
            .still_running(&instance.container.id, instance.pid)
            .await?
        {
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        Ok(stream)
    }

    fn pid(&self, instance: &Instance) -> u32 {
        instance.pid
    }

    fn exit(&self, instance: &Instance) -> Option<ExitInfo> {
        *instance.exit.borrow()
    }

    async fn exited(&self, instance: &mut Instance) -> ExitInfo {
        loop {
            if let Some(exit) = *instance.exit.borrow_and_update() {
                return exit;
            }
            if instance.exit.changed().await.is_err() {
                // The waiter is gone without an answer (the engine went away).
                return instance.exit.borrow().unwrap_or(ExitInfo {
                    code: None,
                    signal: None,
                });
            }
        }
    }

    /// The container's init (docker-init, tini) prints `[FATAL tini (N)] exec X failed: WHY`
    /// when it cannot run the command: the platform's ContainerInitError, not an exit.
    fn exit_failure(&self, instance: &Instance, _exit: ExitInfo) -> Option<StartFailureKind> {
        let output = instance.container.output.snapshot();
        let line = output.lines.iter().find(|l| {
            l.line.starts_with("[FATAL tini")
                && l.line.contains("exec ")
                && l.line.contains(" failed")
        })?;
        let why = line
            .line
            .split_once("] ")
            .map_or(line.line.as_str(), |(_, why)| why);
        Some(StartFailureKind::ContainerInit {
            image: instance.image.clone(),
            command: instance.command.clone(),
            source: why.to_string().into(),
        })
    }

    fn memory_exceeded(&self, instance: &Instance) -> bool {
        instance.container.oom.load(Ordering::SeqCst)
    }

    async fn stop(&self, instance: &mut Instance, how: Stop) {
        let signal = match how {
            Stop::Term => "SIGTERM",
            Stop::Kill => "SIGKILL",
        };
        let options = KillContainerOptionsBuilder::new().signal(signal).build();
        // It may have ended already; that is the goal, not an error.
        let _ = self
            .engine
            .kill_container(&instance.container.id, Some(options))
            .await;
    }

    async fn reap(&self, mut instance: Instance) -> CapturedOutput {
        self.exited(&mut instance).await;
        instance.container.remove().await
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.waiter.abort();
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if let Some(events) = &self.events {
            events.abort();
        }
        // The stock is removed here and now, not by tasks of a runtime that is ending, nor only
        // by the reaper: in a container (compose), the reaper dies with scfsim's container.
        let ids: Vec<String> = self
            .stock
            .lock()
            .map(|mut stock| {
                stock
                    .drain()
                    .flat_map(|(_, function)| function.ready)
                    .map(|mut container| {
                        container.removed = true;
                        container.id.clone()
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !ids.is_empty() {
            remove_now(ids, STOCK_REMOVAL);
        }
    }
}

/// How long scfsim's end may wait for its stock containers' removal.
const STOCK_REMOVAL: Duration = Duration::from_secs(10);

/// Removes containers `ids` from a thread of its own (with a runtime and an engine client of its
/// own: the caller may be a runtime that is ending), waiting at most `bound`.
fn remove_now(ids: Vec<String>, bound: Duration) {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(async {
                let Ok(mut engine) = engine_from_env() else {
                    return;
                };
                if engine.negotiate().await.is_err() {
                    return;
                }
                let removals = ids.iter().map(|id| remove(&engine.client, id));
                futures_util::future::join_all(removals).await;
            });
        }
        let _ = done.send(());
    });
    let _ = finished.recv_timeout(bound);
}

/// Needs root and a local Docker engine with scfsim's runtime image
/// (scripts/docker-runtime-images.sh).
#[cfg(test)]
mod tests {
    use std::process::Command;

    use bollard::models::{EndpointIpamConfig, EndpointSettings, NetworkingConfig};

    use super::*;
    use crate::launcher::IsolationRequest;
    use crate::spawn::ImageSpec;

    /// How long any one step of the test may wait for the engine.
    const PATIENCE: Duration = Duration::from_secs(60);

    /// Removes this test's containers and network, also when it fails (with the CLI: it works
    /// without a runtime, while a panic unwinds).
    struct Leftovers {
        run: String,
        network: String,
    }

    impl Drop for Leftovers {
        fn drop(&mut self) {
            let listed = Command::new("docker")
                .args(["ps", "--all", "--quiet", "--filter"])
                .arg(format!("label={LABEL_RUN}={}", self.run))
                .output();
            if let Ok(listed) = listed {
                for id in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
                    let _ = Command::new("docker").args(["rm", "--force", id]).output();
                }
            }
            let _ = Command::new("docker")
                .args(["network", "rm", &self.network])
                .output();
        }
    }

    /// A network named `name` with a subnet of its own (the engine lets a container have a
    /// chosen address only on such a network): the first of a few that no other network of the
    /// engine overlaps.
    fn network_with_subnet(name: &str) {
        let mut refused = Vec::new();
        for third in 0..16 {
            let made = Command::new("docker")
                .args(["network", "create", "--driver", "bridge", "--subnet"])
                .arg(format!("10.231.{}.0/28", 200 + third))
                .arg(name)
                .output()
                .expect("run docker");
            if made.status.success() {
                return;
            }
            refused.push(String::from_utf8_lossy(&made.stderr).into_owned());
        }
        panic!("no subnet for the test network: {refused:?}");
    }

    fn image_spec(function: &str, command: &[&str]) -> InstanceSpec {
        InstanceSpec {
            image: Some(ImageSpec {
                image: RUNTIME_IMAGE.into(),
                command: Some(command.iter().map(|c| c.to_string()).collect()),
                args: None,
            }),
            function: function.into(),
            init_timeout: PATIENCE,
            ..InstanceSpec::default()
        }
    }

    /// The race the e2e tests met on a loaded machine: a container ends before it listens,
    /// another container gets its address, and the readiness probe must not reach that one.
    /// Here the second container is given the first one's address on purpose, so the order
    /// of events is fixed and the address is reused every time.
    #[tokio::test]
    async fn a_probe_never_reaches_the_container_that_got_a_dead_ones_address() {
        let options = LauncherOptions {
            isolation: IsolationRequest::Docker,
            image_functions: true,
            runtimes: Default::default(),
            work_dir: std::env::temp_dir(),
            supervisor: "/nonexistent/scfsim".into(),
        };
        let mut docker = Docker::connect(&options, "the test").expect("engine address");
        assert_eq!(
            docker.endpoint,
            Endpoint::Local,
            "this test needs the local engine (DOCKER_HOST unset or unix://)"
        );
        docker.network_name = format!("scfsim-test-{}", docker.run);
        let _leftovers = Leftovers {
            run: docker.run.clone(),
            network: docker.network_name.clone(),
        };
        network_with_subnet(&docker.network_name);
        docker.setup_reach().await.expect("engine, network");
        assert!(
            docker.netns.is_some(),
            "as root, scfsim enters containers' network namespaces: {:?}",
            docker.details
        );

        // A: runs, never listens.
        let spec = image_spec("a", &["sleep", "600"]);
        let prepared = docker.prepare(&spec).await.expect("container a");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut a = docker
            .start(prepared, &spec, deadline)
            .await
            .expect("container a starts");
        assert!(matches!(a.reach, Reach::Namespace { .. }));
        let a_ip = docker
            .engine
            .inspect_container(&a.container.id, None)
            .await
            .expect("inspect a")
            .network_settings
            .and_then(|s| s.networks)
            .and_then(|n| n.into_values().next())
            .and_then(|n| n.ip_address)
            .expect("a's address");
        let a_address = SocketAddr::new(a_ip.parse().expect("an IP address"), INSTANCE_PORT);
        let probe = docker.connect(&a).await;
        assert_eq!(
            probe.map(drop).map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionRefused),
            "nothing listens in a yet"
        );

        // A ends and is removed: its address is free.
        docker.stop(&mut a, Stop::Kill).await;
        docker.exited(&mut a).await;
        remove(&docker.engine, &a.container.id)
            .await
            .expect("remove a");

        // B: gets A's address, and listens on port 9000.
        let listener = "import socket\n\
                        s = socket.socket()\n\
                        s.bind(('0.0.0.0', 9000)); s.listen()\n\
                        while True: s.accept()[0].sendall(b'b')\n";
        let body = ContainerCreateBody {
            image: Some(RUNTIME_IMAGE.into()),
            entrypoint: Some(vec!["python3".into(), "-c".into(), listener.into()]),
            labels: Some(HashMap::from([(LABEL_RUN.to_string(), docker.run.clone())])),
            host_config: Some(HostConfig {
                network_mode: Some(docker.network_name.clone()),
                init: Some(true),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    docker.network_name.clone(),
                    EndpointSettings {
                        ipam_config: Some(EndpointIpamConfig {
                            ipv4_address: Some(a_ip.clone()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let b = docker
            .engine
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                body,
            )
            .await
            .expect("container b");
        docker
            .engine
            .start_container(&b.id, None)
            .await
            .expect("container b starts");
        // The premise: A's address now reaches B, as it would have reached it in the race.
        let b_listens = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Ok(stream) = TcpStream::connect(a_address).await {
                    return stream;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(b_listens.is_ok(), "b never listened at {a_address}");

        // A's probe stays in A's namespace, where nothing listens.
        let probe = docker.connect(&a).await;
        assert_eq!(
            probe.map(drop).map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionRefused),
            "the probe of a reached b (the container that got a's address)"
        );
        // Where the address itself is used (no namespaces), the engine's answer that A is
        // not running any more refuses the connection that reached B.
        a.reach = Reach::Address {
            address: a_address,
            published: false,
        };
        let probe = docker.connect(&a).await;
        assert_eq!(
            probe.map(drop).map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionRefused),
            "the probe of a's address counted a connection to b"
        );
        docker.reap(a).await;
    }
}

#[cfg(test)]
mod proc_net_tests {
    use super::listening_on_instance_port;

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when \
                          retrnsmt   uid  timeout inode\n";

    #[test]
    fn a_listening_socket_on_port_9000_is_found_in_either_table() {
        let v4 = format!(
            "{HEADER}   0: 00000000:2328 00000000:0000 0A 00000000:00000000 00:00000000 \
             00000000     0        0 3440541 1 0 100 0 0 10 0\n"
        );
        assert!(listening_on_instance_port(&v4));
        let v6 = format!(
            "{HEADER}   0: 00000000000000000000000000000000:2328 \
             00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 \
             0 0 1 1 0 100 0 0 10 0\n"
        );
        assert!(listening_on_instance_port(&v6));
    }

    #[test]
    fn other_ports_and_states_are_not_listening_on_9000() {
        // Port 9000 as the remote end (a client of another server), port 0x23280 is not a
        // port, and 9000 in TIME_WAIT (06) after the server closed.
        let text = format!(
            "{HEADER}   0: 0100007F:9C40 0100007F:2328 01 0:0 0:0 0 0 0 1\n   \
             1: 00000000:1F90 00000000:0000 0A 0:0 0:0 0 0 0 2\n   \
             2: 0100007F:2328 0100007F:9C41 06 0:0 0:0 0 0 0 0\n"
        );
        assert!(!listening_on_instance_port(&text));
        assert!(!listening_on_instance_port(""));
    }
}
