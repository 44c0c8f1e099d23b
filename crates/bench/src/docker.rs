//! `docker`: connect → first echo to an image function, through scfsim with and without a
//! stock of created containers (`container_stock`), against the engine's own floor: the
//! benchmark itself creating and starting a container of the same image with the same settings
//! (read-only root, 512 MB /tmp, memory limit, init, scfsim's network) and connecting to its
//! port 9000 as soon as it listens, from inside the container's network namespace as scfsim
//! does (an address on the shared network may already be another container's). Targets interleave round by round, at each concurrency.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bollard::models::{ContainerCreateBody, HostConfig, ResourcesUlimits};
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use serde_json::{json, Map, Value};

use crate::client;
use crate::procfs;
use crate::servers::{temp_dir, Scfsim, Tools};
use crate::stats::{fmt_ms, fmt_rate, fmt_ratio, Comparison, Errors, Latency};

/// scfsim's network for a local engine's instances (created by scfsim when it starts).
const NETWORK: &str = "scfsim-instances";
const MESSAGE_BYTES: usize = 64;
/// Label of the floor's containers, so that a run's leftovers can be told apart.
const FLOOR_LABEL: &str = "io.scfsim.bench";

#[derive(Debug, Clone)]
pub struct Opts {
    pub image: String,
    /// Per target and concurrency, over all rounds.
    pub connections: usize,
    pub concurrency: Vec<usize>,
    pub rounds: usize,
    pub warmup: usize,
    /// The stocked function's `container_stock`.
    pub stock: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Floor,
    NoStock,
    Stock,
}

impl Target {
    const ALL: [Target; 3] = [Target::Floor, Target::NoStock, Target::Stock];

    fn name(self) -> &'static str {
        match self {
            Target::Floor => "engine floor",
            Target::NoStock => "scfsim, no stock",
            Target::Stock => "scfsim, stock",
        }
    }
}

#[derive(Default)]
struct Tally {
    first_echo: Latency,
    errors: Errors,
    connections: u64,
    elapsed: Duration,
}

struct Bench {
    engine: bollard::Docker,
    scfsim: Scfsim,
    image: String,
}

impl Bench {
    /// One connection of `target`; a floor container's removal (after its connection) is
    /// left to `cleanup`.
    async fn one(
        &self,
        target: Target,
        cleanup: &mut Vec<tokio::task::JoinHandle<()>>,
    ) -> Result<Duration> {
        let msg = client::payload(MESSAGE_BYTES, true);
        let began = Instant::now();
        let path = match target {
            Target::NoStock => "/nostock",
            Target::Stock => "/stock",
            Target::Floor => {
                let (id, pid) = self.floor_container().await?;
                let connection = async {
                    let tcp = tokio::task::spawn_blocking(move || {
                        connect_in_netns(pid, Duration::from_secs(30))
                    })
                    .await?
                    .context("the floor's container did not listen on port 9000")?;
                    tcp.set_nonblocking(true)?;
                    let tcp = tokio::net::TcpStream::from_std(tcp)?;
                    let mut ws = client::handshake(tcp, "ws://127.0.0.1:9000/").await?;
                    client::echo(&mut ws, &msg).await?;
                    let first_echo = began.elapsed();
                    client::close(&mut ws).await?;
                    Ok::<_, anyhow::Error>(first_echo)
                };
                let result = connection.await;
                let engine = self.engine.clone();
                cleanup.push(tokio::spawn(async move {
                    let options = RemoveContainerOptionsBuilder::new().force(true).build();
                    let _ = engine.remove_container(&id, Some(options)).await;
                }));
                return result;
            }
        };
        let mut ws = client::connect(&self.url(path)).await?;
        client::echo(&mut ws, &msg).await?;
        let first_echo = began.elapsed();
        client::close(&mut ws).await?;
        Ok(first_echo)
    }

    fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.scfsim.addr)
    }

    /// Creates and starts a container as scfsim makes an image function's: its id and its
    /// init's pid.
    async fn floor_container(&self) -> Result<(String, u32)> {
        let memory = 128i64 << 20;
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            labels: Some(HashMap::from([(
                FLOOR_LABEL.to_string(),
                "floor".to_string(),
            )])),
            host_config: Some(HostConfig {
                readonly_rootfs: Some(true),
                tmpfs: Some(HashMap::from([(
                    "/tmp".to_string(),
                    "rw,nosuid,nodev,size=512m,mode=1777".to_string(),
                )])),
                memory: Some(memory),
                memory_swap: Some(memory),
                pids_limit: Some(1024),
                ulimits: Some(vec![ResourcesUlimits {
                    name: Some("nofile".into()),
                    soft: Some(1024),
                    hard: Some(1024),
                }]),
                init: Some(true),
                network_mode: Some(NETWORK.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .engine
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                body,
            )
            .await
            .context("creating the floor's container")?;
        self.engine
            .start_container(&created.id, None)
            .await
            .context("starting the floor's container")?;
        let inspected = self.engine.inspect_container(&created.id, None).await?;
        let pid = inspected
            .state
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| anyhow!("container {} is not running", created.id))?;
        Ok((created.id, pid))
    }

    /// Waits (bounded) until no instance of scfsim's functions runs: its containers removed.
    async fn quiesce(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let filters = HashMap::from([
            ("label", vec!["io.scfsim.function".to_string()]),
            ("status", vec!["running".to_string(), "exited".to_string()]),
        ]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        while Instant::now() < deadline {
            match self.engine.list_containers(Some(options.clone())).await {
                Ok(list) if list.is_empty() => return,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn round(&self, target: Target, n: usize, concurrency: usize) -> Tally {
        let next = Arc::new(AtomicUsize::new(0));
        let began = Instant::now();
        let mut tally = Tally::default();
        let mut cleanup = Vec::new();
        let results =
            futures_util::future::join_all((0..concurrency.clamp(1, n.max(1))).map(|_| {
                let next = next.clone();
                async move {
                    let mut tally = Tally::default();
                    let mut cleanup = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        match self.one(target, &mut cleanup).await {
                            Ok(d) => {
                                tally.first_echo.record(d);
                                tally.connections += 1;
                            }
                            Err(e) => tally.errors.add(format!("{e:#}")),
                        }
                    }
                    (tally, cleanup)
                }
            }))
            .await;
        tally.elapsed = began.elapsed();
        for (t, c) in results {
            tally.first_echo.merge(&t.first_echo);
            tally.errors.merge(&t.errors);
            tally.connections += t.connections;
            cleanup.extend(c);
        }
        for removal in cleanup {
            let _ = removal.await;
        }
        self.quiesce().await;
        tally
    }
}

/// A TCP connection to 127.0.0.1:9000 in the network namespace of process `pid`, polled every
/// 100 µs until something accepts, for at most `bound`. Blocking (setns(2) moves the calling
/// thread, which is moved back before this returns).
fn connect_in_netns(pid: u32, bound: Duration) -> Result<std::net::TcpStream> {
    use nix::sched::{setns, CloneFlags};
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    use std::os::fd::AsRawFd;
    let own = std::fs::File::open("/proc/thread-self/ns/net")?;
    let theirs = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .with_context(|| format!("the network namespace of process {pid} (run as root)"))?;
    let deadline = Instant::now() + bound;
    loop {
        setns(&theirs, CloneFlags::CLONE_NEWNET).context("entering the container's namespace")?;
        let made = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        );
        setns(&own, CloneFlags::CLONE_NEWNET).context("returning to the host's namespace")?;
        let socket = made?;
        match connect(socket.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 9000)) {
            Ok(()) => return Ok(std::net::TcpStream::from(socket)),
            Err(err) if Instant::now() >= deadline => {
                return Err(anyhow!(
                    "nothing listens on port 9000 after {bound:?}: {err}"
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_micros(100)),
        }
    }
}

pub async fn run(tools: &Tools, opts: &Opts) -> Result<Vec<Value>> {
    let engine = bollard::Docker::connect_with_defaults()
        .context("the Docker engine (DOCKER_HOST, else /var/run/docker.sock)")?
        .negotiate_version()
        .await
        .context("the Docker engine does not answer (scripts/docker-engine.sh starts one)")?;
    engine
        .inspect_image(&opts.image)
        .await
        .with_context(|| format!("image {} is not on the engine", opts.image))?;
    let dir = temp_dir("scfsim-bench-docker-")?;
    let function = |name: &str, stock: u32| {
        format!(
            "[[functions]]\nname = {name:?}\npath = \"/{name}\"\nimage = {image:?}\n\
             container_stock = {stock}\nmax_instances = 100\nmemory_mb = 128\n\
             idle_timeout = \"60s\"\n\n",
            image = opts.image
        )
    };
    let functions = function("nostock", 0) + &function("stock", opts.stock);
    let scfsim = Scfsim::serve(tools, dir, Default::default(), 200, &functions)?;
    let bench = Bench {
        engine,
        scfsim,
        image: opts.image.clone(),
    };
    let mut results = Vec::new();
    for &concurrency in &opts.concurrency {
        for target in Target::ALL {
            let warm = bench.round(target, opts.warmup, concurrency).await;
            warm.errors.report_warmup(target.name());
        }
        let rounds = opts.rounds.max(1);
        let per_round = opts.connections.div_ceil(rounds).max(1);
        let mut tallies: Vec<Tally> = Target::ALL.iter().map(|_| Tally::default()).collect();
        let load_before = procfs::loadavg();
        for r in 0..rounds {
            let mut order: Vec<usize> = (0..Target::ALL.len()).collect();
            if r % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let t = bench.round(Target::ALL[i], per_round, concurrency).await;
                let total = &mut tallies[i];
                total.first_echo.merge(&t.first_echo);
                total.errors.merge(&t.errors);
                total.connections += t.connections;
                total.elapsed += t.elapsed;
            }
        }
        let rate = |t: &Tally| t.connections as f64 / t.elapsed.as_secs_f64().max(1e-9);
        let names: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
        let mut table = Comparison::new(&names, &tallies, Some(0), "vs floor");
        let none = |_: &Tally, _: &Tally| String::new();
        for (label, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
            table.latency_row(
                &format!("connect→first echo {label} (ms)"),
                |t| &t.first_echo,
                q,
            );
        }
        table.row(
            "connect→first echo max (ms)",
            &|t| fmt_ms(t.first_echo.max()),
            &none,
        );
        table.row("connections/s", &|t| fmt_rate(rate(t)), &|a, b| {
            fmt_ratio(Some(rate(a)), Some(rate(b)))
        });
        table.row("connections", &|t| t.connections.to_string(), &none);
        table.row("errors", &|t| t.errors.count.to_string(), &none);
        crate::stats::print_scenario(
            &format!(
                "docker: {} connections per target at concurrency {concurrency}, {rounds} \
                 interleaved rounds, image {}, stock {} (load average before: {load_before})",
                per_round * rounds,
                opts.image,
                opts.stock
            ),
            &procfs::loadavg(),
            &table.render(),
            Target::ALL
                .iter()
                .zip(&tallies)
                .map(|(t, tally)| (t.name(), &tally.errors)),
            &Map::new(),
        );
        let mut targets = Map::new();
        for (t, tally) in Target::ALL.iter().zip(&tallies) {
            targets.insert(
                t.name().into(),
                json!({
                    "connections": tally.connections,
                    "connections_per_s": rate(tally),
                    "first_echo": tally.first_echo.json_us(),
                    "errors": tally.errors.json(),
                }),
            );
        }
        let out = json!({
            "scenario": "docker",
            "image": opts.image,
            "stock": opts.stock,
            "concurrency": concurrency,
            "connections": per_round * rounds,
            "rounds": rounds,
            "targets": targets,
            "load_average_before": load_before,
            "load_average": procfs::loadavg(),
        });
        println!("{out}");
        results.push(out);
    }
    Ok(results)
}
