//! `connect`: N new connections at concurrency C, each: handshake, one echo, close 1000.
//! scfsim (which starts an instance per connection) against the floor (the benchmark spawning
//! the same bootstrap itself and connecting as soon as it listens) and websocketd.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::client;
use crate::env::Env;
use crate::procfs;
use crate::servers::{self, free_port, localhost, spawn_fixture};
use crate::stats::{fmt_ms, fmt_rate, fmt_ratio, ratio, Comparison, Errors, Latency};

/// Size of the one echoed message (text: websocketd is line based).
const MESSAGE_BYTES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The benchmark spawns scfsim's bootstrap (`sh` exec'ing the fixture) and polls.
    Floor,
    /// The benchmark spawns the fixture binary itself (no `sh`) and polls.
    FloorExec,
    /// scfsim starts an instance per connection.
    Scfsim,
    /// websocketd forks `cat` per connection.
    Websocketd,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Floor => "floor",
            Target::FloorExec => "floor-exec",
            Target::Scfsim => "scfsim",
            Target::Websocketd => "websocketd",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Opts {
    /// Per target, over all rounds.
    pub connections: usize,
    pub concurrency: usize,
    pub rounds: usize,
    /// Unrecorded connections per target before the first round.
    pub warmup: usize,
    pub targets: Vec<Target>,
}

#[derive(Default)]
struct Tally {
    handshake: Latency,
    first_echo: Latency,
    errors: Errors,
    connections: u64,
    elapsed: Duration,
    server_cpu: Option<Duration>,
}

/// How one connection is made.
#[derive(Clone)]
enum Plan {
    Url(String),
    Spawn { program: PathBuf, args: Vec<String> },
}

struct One {
    handshake: Duration,
    first_echo: Duration,
    child: Option<tokio::process::Child>,
}

async fn one(plan: &Plan, msg: &Message) -> Result<One> {
    let (began, mut ws, child) = match plan {
        Plan::Url(url) => {
            let began = Instant::now();
            (began, client::connect(url).await?, None)
        }
        Plan::Spawn { program, args } => {
            let port = free_port()?;
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let began = Instant::now();
            let child = spawn_fixture(program, &args, port)?;
            let tcp = tokio::task::spawn_blocking(move || {
                servers::poll_connect(localhost(port), Duration::from_secs(10))
            })
            .await?
            .context("the fixture did not listen")?;
            tcp.set_nonblocking(true)?;
            let tcp = tokio::net::TcpStream::from_std(tcp)?;
            let ws = client::handshake(tcp, &format!("ws://127.0.0.1:{port}/")).await?;
            (began, ws, Some(child))
        }
    };
    let handshake = began.elapsed();
    client::echo(&mut ws, msg).await?;
    let first_echo = began.elapsed();
    client::close(&mut ws).await?;
    Ok(One {
        handshake,
        first_echo,
        child,
    })
}

fn plan(env: &Env, target: Target) -> Result<Plan> {
    Ok(match target {
        Target::Floor => Plan::Spawn {
            program: env.scfsim.bootstrap.clone(),
            args: Vec::new(),
        },
        Target::FloorExec => Plan::Spawn {
            program: env.tools.fixture.clone(),
            args: vec!["echo".into()],
        },
        Target::Scfsim => Plan::Url(env.scfsim.url()),
        Target::Websocketd => Plan::Url(
            env.websocketd
                .as_ref()
                .map_err(|why| anyhow::anyhow!("{why:#}"))?
                .url(),
        ),
    })
}

fn server_cpu(env: &Env, target: Target) -> Option<Duration> {
    match target {
        Target::Scfsim => Some(procfs::cpu_time(env.scfsim.pid())),
        Target::Websocketd => env
            .websocketd
            .as_ref()
            .ok()
            .map(|w| procfs::cpu_time(w.pid())),
        Target::Floor | Target::FloorExec => None,
    }
}

/// Waits until the target has nothing left running from this round.
async fn quiesce(env: &Env, target: Target, children: Vec<tokio::process::Child>) {
    servers::reap(children).await;
    match target {
        Target::Scfsim => {
            env.scfsim.quiesce().await;
        }
        Target::Websocketd => {
            if let Ok(w) = &env.websocketd {
                procfs::wait_childless(w.pid(), Duration::from_secs(10)).await;
            }
        }
        Target::Floor | Target::FloorExec => {}
    }
}

async fn round(env: &Env, target: Target, plan: &Plan, n: usize, concurrency: usize) -> Tally {
    let msg = client::payload(MESSAGE_BYTES, true);
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = server_cpu(env, target);
    let began = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let (plan, msg, next) = (plan.clone(), msg.clone(), next.clone());
        set.spawn(async move {
            let mut tally = Tally::default();
            let mut children = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                match one(&plan, &msg).await {
                    Ok(o) => {
                        tally.handshake.record(o.handshake);
                        tally.first_echo.record(o.first_echo);
                        tally.connections += 1;
                        children.extend(o.child);
                    }
                    Err(e) => tally.errors.add(format!("{e:#}")),
                }
            }
            (tally, children)
        });
    }
    let mut total = Tally::default();
    let mut children = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((t, c)) => {
                total.handshake.merge(&t.handshake);
                total.first_echo.merge(&t.first_echo);
                total.errors.merge(&t.errors);
                total.connections += t.connections;
                children.extend(c);
            }
            Err(e) => total.errors.add(format!("task: {e}")),
        }
    }
    total.elapsed = began.elapsed();
    total.server_cpu = match (cpu_before, server_cpu(env, target)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    quiesce(env, target, children).await;
    total
}

pub async fn run(env: &Env, opts: &Opts) -> Result<Value> {
    let mut skipped = Map::new();
    let mut targets = Vec::new();
    let mut plans = Vec::new();
    for t in &opts.targets {
        match plan(env, *t) {
            Ok(p) => {
                targets.push(*t);
                plans.push(p);
            }
            Err(why) => {
                skipped.insert(t.name().into(), json!(format!("{why:#}")));
            }
        }
    }
    let rounds = opts.rounds.max(1);
    let per_round = opts.connections.div_ceil(rounds).max(1);
    for (t, p) in targets.iter().zip(&plans) {
        if opts.warmup > 0 {
            let w = round(env, *t, p, opts.warmup, opts.concurrency).await;
            w.errors.report_warmup(t.name());
        }
    }
    let mut tallies: Vec<Tally> = targets.iter().map(|_| Tally::default()).collect();
    for r in 0..rounds {
        let order: Vec<usize> = if r % 2 == 0 {
            (0..targets.len()).collect()
        } else {
            (0..targets.len()).rev().collect()
        };
        for i in order {
            let t = round(env, targets[i], &plans[i], per_round, opts.concurrency).await;
            let total = &mut tallies[i];
            total.handshake.merge(&t.handshake);
            total.first_echo.merge(&t.first_echo);
            total.errors.merge(&t.errors);
            total.connections += t.connections;
            total.elapsed += t.elapsed;
            total.server_cpu = match (total.server_cpu, t.server_cpu) {
                (a, Some(b)) => Some(a.unwrap_or_default() + b),
                (a, None) => a,
            };
        }
    }

    let rate = |t: &Tally| t.connections as f64 / t.elapsed.as_secs_f64().max(1e-9);
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
    let mut json_targets = Map::new();
    for (t, tally) in targets.iter().zip(&tallies) {
        json_targets.insert(
            t.name().into(),
            json!({
                "connections": tally.connections,
                "seconds": tally.elapsed.as_secs_f64(),
                "connections_per_s": rate(tally),
                "handshake": tally.handshake.json_us(),
                "first_echo": tally.first_echo.json_us(),
                "server_cpu_ms_per_connection": tally.server_cpu
                    .map(|c| c.as_secs_f64() * 1e3 / tally.connections.max(1) as f64),
                "errors": tally.errors.json(),
            }),
        );
    }
    let compare = |reference: Target| {
        let mut out = Map::new();
        let Some(r) = targets.iter().position(|t| *t == reference) else {
            return out;
        };
        for (i, t) in targets.iter().enumerate().filter(|(i, _)| *i != r) {
            let (a, b) = (&tallies[i], &tallies[r]);
            let diff = |x: Option<Duration>, y: Option<Duration>| match (ms(x), ms(y)) {
                (Some(x), Some(y)) => Some(x - y),
                _ => None,
            };
            out.insert(
                t.name().into(),
                json!({
                    "connections_per_s_ratio": ratio(Some(rate(a)), Some(rate(b))),
                    "handshake_p50_diff_ms": diff(a.handshake.p50(), b.handshake.p50()),
                    "handshake_p99_diff_ms": diff(a.handshake.p99(), b.handshake.p99()),
                    "first_echo_p50_diff_ms": diff(a.first_echo.p50(), b.first_echo.p50()),
                    "first_echo_p99_diff_ms": diff(a.first_echo.p99(), b.first_echo.p99()),
                }),
            );
        }
        out
    };
    let vs_floor = compare(Target::Floor);
    let vs_floor_exec = compare(Target::FloorExec);
    let reference = targets.iter().position(|t| *t == Target::Floor);

    let names: Vec<&str> = targets.iter().map(|t| t.name()).collect();
    let mut table = Comparison::new(&names, &tallies, reference, "vs floor");
    let none = |_: &Tally, _: &Tally| String::new();
    table.row("connections/s", &|t| fmt_rate(rate(t)), &|a, b| {
        fmt_ratio(Some(rate(a)), Some(rate(b)))
    });
    table.latency_row("handshake p50 (ms)", |t| &t.handshake, 0.50);
    table.latency_row("handshake p99 (ms)", |t| &t.handshake, 0.99);
    table.latency_row("connect→first echo p50 (ms)", |t| &t.first_echo, 0.50);
    table.latency_row("connect→first echo p99 (ms)", |t| &t.first_echo, 0.99);
    table.row(
        "connect→first echo max (ms)",
        &|t| fmt_ms(t.first_echo.max()),
        &none,
    );
    table.row(
        "server CPU ms/connection",
        &|t| match t.server_cpu {
            Some(c) => format!("{:.2}", c.as_secs_f64() * 1e3 / t.connections.max(1) as f64),
            None => "–".into(),
        },
        &none,
    );
    table.row("connections", &|t| t.connections.to_string(), &none);
    table.row("errors", &|t| t.errors.count.to_string(), &none);

    crate::stats::print_scenario(
        &format!(
            "connect: {} connections per target at concurrency {}, {} interleaved rounds",
            per_round * rounds,
            opts.concurrency,
            rounds
        ),
        &procfs::loadavg(),
        &table.render(),
        targets
            .iter()
            .zip(&tallies)
            .map(|(t, tally)| (t.name(), &tally.errors)),
        &skipped,
    );
    let out = json!({
        "scenario": "connect",
        "connections": per_round * rounds,
        "concurrency": opts.concurrency,
        "rounds": rounds,
        "message_bytes": MESSAGE_BYTES,
        "targets": json_targets,
        "vs_floor": vs_floor,
        "vs_floor_exec": vs_floor_exec,
        "skipped": skipped,
        "load_average": procfs::loadavg(),
    });
    println!("{out}");
    Ok(out)
}
