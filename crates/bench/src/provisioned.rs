//! `provisioned`: connect→first echo through scfsim when a provisioned instance waits for the
//! connection (`provisioned_instances`), against a direct connection to a server that already
//! runs: the same fixture, started by the benchmark and listening before the clock starts.
//! Both clocks start at the client's TCP connect and stop when the first echo is back.
//!
//! Each connection is made only once its server is ready (scfsim's admin API lists a waiting
//! provisioned instance; the direct fixture accepts TCP), so that the figure is the handover's,
//! never a start's. Concurrency 1, interleaved rounds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use crate::client;
use crate::procfs;
use crate::servers::{self, free_port, localhost, spawn_fixture, Scfsim, ScfsimSettings, Tools};
use crate::stats::{Comparison, Errors, Latency};

/// Size of the one echoed message, as in `connect`.
const MESSAGE_BYTES: usize = 64;
/// Bound on waiting for a server to be ready; reached only when something is broken.
const READY_PATIENCE: Duration = Duration::from_secs(30);
/// Pause between a server being ready and the timed connection, the same for both targets:
/// the direct fixture is still turning away the readiness probe's empty connection.
const SETTLE: Duration = Duration::from_millis(5);

#[derive(Debug, Clone)]
pub struct Opts {
    /// Per target, over all rounds.
    pub connections: usize,
    pub rounds: usize,
    /// Unrecorded connections per target before the first round.
    pub warmup: usize,
    pub server: ServerKind,
}

/// The server behind both targets. The interpreted ones are what provisioning is for: their
/// interpreter start (~100 ms for Python with `websockets`) leaves the connection's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerKind {
    /// The multi-mode fixture (`scfsim-fixture echo`).
    Fixture,
    /// An echo server on Python's `websockets` library.
    Python,
    /// An echo server on Node.js's `ws` package (the one `examples/node-echo` uses).
    Node,
}

impl ServerKind {
    /// The JSON line's `server`.
    pub fn key(self) -> &'static str {
        match self {
            ServerKind::Fixture => "fixture",
            ServerKind::Python => "python",
            ServerKind::Node => "node",
        }
    }

    fn title(self) -> &'static str {
        match self {
            ServerKind::Fixture => "fixture",
            ServerKind::Python => "Python websockets",
            ServerKind::Node => "Node.js ws",
        }
    }
}

/// The Python server of `--python`: websockets' echo, on `FIXTURE_PORT` (as the benchmark
/// starts fixtures) or 9000 (as scfsim starts instances).
const PYTHON_ECHO: &str = "import asyncio, os
from websockets.asyncio.server import serve

async def echo(ws):
    async for message in ws:
        await ws.send(message)

async def main():
    port = int(os.environ.get('FIXTURE_PORT', '9000'))
    async with serve(echo, '0.0.0.0', port, compression=None):
        await asyncio.Future()

asyncio.run(main())
";

/// The Node.js server of `--server node`: `ws`'s echo, on `FIXTURE_PORT` or 9000 as above.
/// `WS_PACKAGE` is replaced by the absolute path of the `ws` package, so that the script runs
/// from a temporary directory (and inside an instance) without a `node_modules` of its own.
const NODE_ECHO: &str = "'use strict';
const { WebSocketServer } = require(WS_PACKAGE);
const port = Number(process.env.FIXTURE_PORT || 9000);
const wss = new WebSocketServer({ port, host: '0.0.0.0', perMessageDeflate: false });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});
process.on('SIGTERM', () => process.exit(0));
";

/// Where `examples/node-echo` keeps its `ws` package: found from the working directory (the
/// repository's root under `scripts/bench.sh`) or from this executable (`target/release/`).
fn ws_package() -> Result<PathBuf> {
    let rel = Path::new("examples/node-echo/node_modules/ws");
    let from_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join(rel)));
    std::iter::once(rel.to_path_buf())
        .chain(from_exe)
        .find(|p| p.join("package.json").is_file())
        .and_then(|p| p.canonicalize().ok())
        .context(
            "the `ws` package of examples/node-echo is missing (install it from the repository's \
             root: npm ci --prefix examples/node-echo)",
        )
}

/// The program and arguments of the server under test.
struct Server {
    program: PathBuf,
    args: Vec<String>,
    /// Keeps the Python script's directory.
    _dir: Option<tempfile::TempDir>,
    /// The fixture ends with its connection; the interpreted servers keep listening, so the
    /// benchmark stops them once their one connection is measured.
    ends_with_connection: bool,
}

impl Server {
    fn new(tools: &Tools, kind: ServerKind) -> Result<Server> {
        let (program, file, script) = match kind {
            ServerKind::Fixture => {
                return Ok(Server {
                    program: tools.fixture.clone(),
                    args: vec!["echo".into()],
                    _dir: None,
                    ends_with_connection: true,
                })
            }
            ServerKind::Python => {
                let program = servers::find_program("python3", &[])?;
                let check = std::process::Command::new(&program)
                    .args(["-c", "import websockets.asyncio.server"])
                    .output()
                    .context("running python3")?;
                anyhow::ensure!(
                    check.status.success(),
                    "python3's websockets library is missing (python3 -m pip install -r \
                     examples/python-echo/requirements.txt)"
                );
                (program, "echo.py", PYTHON_ECHO.to_string())
            }
            ServerKind::Node => {
                let program = servers::find_program("node", &[])
                    .context("Node.js is missing (apt-get install nodejs)")?;
                let ws = ws_package()?;
                let quoted = serde_json::to_string(&ws.display().to_string())?;
                (program, "echo.js", NODE_ECHO.replace("WS_PACKAGE", &quoted))
            }
        };
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(file);
        std::fs::write(&path, script)?;
        Ok(Server {
            program,
            args: vec![path.display().to_string()],
            _dir: Some(dir),
            ends_with_connection: false,
        })
    }

    fn command(&self) -> Vec<String> {
        std::iter::once(self.program.display().to_string())
            .chain(self.args.iter().cloned())
            .collect()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A fixture that already listens, reached without scfsim.
    Direct,
    /// scfsim with `provisioned_instances = 1`: the connection takes the waiting instance.
    Provisioned,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct (running server)",
            Target::Provisioned => "scfsim provisioned",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Provisioned => "scfsim_provisioned",
        }
    }
}

#[derive(Default)]
struct Tally {
    handshake: Latency,
    first_echo: Latency,
    errors: Errors,
    connections: u64,
}

/// Waits until scfsim lists a provisioned instance waiting for a connection.
async fn provisioned_ready(scfsim: &Scfsim) -> Result<()> {
    let deadline = Instant::now() + READY_PATIENCE;
    loop {
        let listed = scfsim.admin_get("/api/instances").await?;
        let waiting = listed
            .as_array()
            .is_some_and(|all| all.iter().any(|i| i["state"] == "provisioned"));
        if waiting {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("no provisioned instance waits after {READY_PATIENCE:?}: {listed}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One connection: make its server ready (untimed), then connect, echo once (timed), close.
async fn one(server: &Server, scfsim: &Scfsim, target: Target, tally: &mut Tally) -> Result<()> {
    let msg = client::payload(MESSAGE_BYTES, true);
    let (url, mut child) = match target {
        Target::Direct => {
            let port = free_port()?;
            let args: Vec<&str> = server.args.iter().map(String::as_str).collect();
            let child = spawn_fixture(&server.program, &args, port)?;
            servers::wait_listening(localhost(port), READY_PATIENCE).await?;
            (format!("ws://127.0.0.1:{port}/"), Some(child))
        }
        Target::Provisioned => {
            provisioned_ready(scfsim).await?;
            (scfsim.url(), None)
        }
    };
    tokio::time::sleep(SETTLE).await;
    let began = Instant::now();
    let mut ws = client::connect(&url).await?;
    let handshake = began.elapsed();
    client::echo(&mut ws, &msg).await?;
    let first_echo = began.elapsed();
    client::close(&mut ws).await?;
    tally.handshake.record(handshake);
    tally.first_echo.record(first_echo);
    tally.connections += 1;
    if let Some(child) = child.as_mut().filter(|_| !server.ends_with_connection) {
        let _ = child.start_kill();
    }
    servers::reap(child.into_iter().collect()).await;
    Ok(())
}

async fn round(server: &Server, scfsim: &Scfsim, target: Target, n: usize) -> Tally {
    let mut tally = Tally::default();
    for _ in 0..n {
        if let Err(e) = one(server, scfsim, target, &mut tally).await {
            tally.errors.add(format!("{e:#}"));
        }
    }
    tally
}

pub async fn run(tools: &Tools, opts: &Opts) -> Result<Value> {
    let server = Server::new(tools, opts.server)?;
    let scfsim = Scfsim::start(
        tools,
        &ScfsimSettings {
            provisioned_instances: 1,
            command: (opts.server != ServerKind::Fixture).then(|| server.command()),
            ..ScfsimSettings::default()
        },
    )
    .context("starting scfsim with a provisioned instance")?;
    let targets = [Target::Direct, Target::Provisioned];
    if opts.warmup > 0 {
        for t in targets {
            let w = round(&server, &scfsim, t, opts.warmup).await;
            w.errors.report_warmup(t.name());
        }
    }
    let rounds = opts.rounds.max(1);
    let per_round = opts.connections.div_ceil(rounds).max(1);
    let mut tallies: Vec<Tally> = targets.iter().map(|_| Tally::default()).collect();
    for r in 0..rounds {
        let order: Vec<usize> = if r % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
        for i in order {
            let t = round(&server, &scfsim, targets[i], per_round).await;
            let total = &mut tallies[i];
            total.handshake.merge(&t.handshake);
            total.first_echo.merge(&t.first_echo);
            total.errors.merge(&t.errors);
            total.connections += t.connections;
        }
    }
    let served = scfsim
        .admin_get("/api/invocations?limit=1")
        .await
        .ok()
        .and_then(|v| v.as_array().and_then(|a| a.first()).cloned());
    // The last invocation must have been served by a provisioned instance, or the figure
    // would be a start's.
    let provisioned = served.as_ref().map(|r| r["provisioned"] == true);
    if provisioned == Some(false) {
        tallies[1]
            .errors
            .add("scfsim's last record says provisioned = false");
    }

    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
    let diff = |a: Option<Duration>, b: Option<Duration>| match (ms(a), ms(b)) {
        (Some(a), Some(b)) => Some(a - b),
        _ => None,
    };
    let mut json_targets = Map::new();
    for (t, tally) in targets.iter().zip(&tallies) {
        json_targets.insert(
            t.key().into(),
            json!({
                "connections": tally.connections,
                "handshake": tally.handshake.json_us(),
                "first_echo": tally.first_echo.json_us(),
                "errors": tally.errors.json(),
            }),
        );
    }
    let (d, p) = (&tallies[0], &tallies[1]);
    let names: Vec<&str> = targets.iter().map(|t| t.name()).collect();
    let mut table = Comparison::new(&names, &tallies, Some(0), "vs direct");
    let none = |_: &Tally, _: &Tally| String::new();
    table.latency_row("handshake p50 (ms)", |t| &t.handshake, 0.50);
    table.latency_row("connect→first echo p50 (ms)", |t| &t.first_echo, 0.50);
    table.latency_row("connect→first echo p99 (ms)", |t| &t.first_echo, 0.99);
    table.row("connections", &|t| t.connections.to_string(), &none);
    table.row("errors", &|t| t.errors.count.to_string(), &none);
    crate::stats::print_scenario(
        &format!(
            "provisioned: {} connections per target at concurrency 1, {} interleaved rounds \
             ({})",
            per_round * rounds,
            rounds,
            opts.server.title()
        ),
        &procfs::loadavg(),
        &table.render(),
        targets
            .iter()
            .zip(&tallies)
            .map(|(t, tally)| (t.key(), &tally.errors)),
        &Map::new(),
    );
    let out = json!({
        "scenario": "provisioned",
        "server": opts.server.key(),
        "connections": per_round * rounds,
        "concurrency": 1,
        "rounds": rounds,
        "message_bytes": MESSAGE_BYTES,
        "targets": json_targets,
        "vs_direct": {
            "first_echo_p50_diff_ms": diff(p.first_echo.p50(), d.first_echo.p50()),
            "first_echo_p99_diff_ms": diff(p.first_echo.p99(), d.first_echo.p99()),
            "handshake_p50_diff_ms": diff(p.handshake.p50(), d.handshake.p50()),
        },
        "skipped": {},
        "load_average": procfs::loadavg(),
    });
    println!("{out}");
    Ok(out)
}
