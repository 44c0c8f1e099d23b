//! `echo`: M connections each sending K messages of S bytes, each send waiting for its echo.
//! The same fixture is reached directly, through scfsim and through nginx, in interleaved rounds.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Ws};
use crate::env::Env;
use crate::procfs;
use crate::servers::{self, free_port, localhost, spawn_fixture};
use crate::stats::{fmt_rate, fmt_ratio, fmt_us, ratio, secs, Comparison, Errors, Latency};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The fixture on a port of its own, started by the benchmark.
    Direct,
    /// The fixture as scfsim's instance.
    Scfsim,
    /// The fixture started by the benchmark, behind nginx.
    Nginx,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Scfsim => "scfsim",
            Target::Nginx => "nginx",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Opts {
    pub connections: usize,
    /// Per connection, over all rounds.
    pub messages: usize,
    pub size: usize,
    pub rounds: usize,
    /// Unrecorded messages per connection at the start of every round.
    pub warmup: usize,
    pub targets: Vec<Target>,
}

#[derive(Default)]
struct Tally {
    rtt: Latency,
    errors: Errors,
    messages: u64,
    elapsed: Duration,
    /// CPU time of the proxy (scfsim's process, nginx's workers) during the timed phases.
    proxy_cpu: Option<Duration>,
}

/// Connections of one round, and the fixtures the benchmark started for them.
struct Opened {
    conns: Vec<Ws>,
    children: Vec<tokio::process::Child>,
    errors: Errors,
}

async fn open_one(env: &Env, target: Target) -> Result<(Ws, Option<tokio::process::Child>)> {
    match target {
        Target::Scfsim => Ok((client::connect(&env.scfsim.url()).await?, None)),
        Target::Direct => {
            let port = free_port()?;
            let child = spawn_fixture(&env.tools.fixture, &["echo"], port)?;
            let tcp = tokio::task::spawn_blocking(move || {
                servers::poll_connect(localhost(port), Duration::from_secs(10))
            })
            .await?
            .context("the fixture did not listen")?;
            tcp.set_nonblocking(true)?;
            let tcp = tokio::net::TcpStream::from_std(tcp)?;
            let ws = client::handshake(tcp, &format!("ws://127.0.0.1:{port}/")).await?;
            Ok((ws, Some(child)))
        }
        Target::Nginx => {
            let nginx = env.nginx.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            let port = free_port()?;
            let child = spawn_fixture(&env.tools.fixture, &["echo"], port)?;
            servers::wait_listening(localhost(port), Duration::from_secs(10)).await?;
            let ws = client::connect(&nginx.url(port)).await?;
            Ok((ws, Some(child)))
        }
    }
}

async fn open(env: &Env, target: Target, n: usize) -> Opened {
    let mut opened = Opened {
        conns: Vec::with_capacity(n),
        children: Vec::new(),
        errors: Errors::default(),
    };
    // Sequentially: setup is not timed, and it keeps process starts from piling up.
    for _ in 0..n {
        match open_one(env, target).await {
            Ok((ws, child)) => {
                opened.conns.push(ws);
                opened.children.extend(child);
            }
            Err(e) => opened.errors.add(format!("connect: {e:#}")),
        }
    }
    opened
}

/// CPU time of the process that proxies for `target`.
fn proxy_cpu(env: &Env, target: Target) -> Option<Duration> {
    match target {
        Target::Direct => None,
        Target::Scfsim => Some(procfs::cpu_time(env.scfsim.pid())),
        Target::Nginx => env
            .nginx
            .as_ref()
            .ok()
            .map(|n| procfs::tree_cpu_time(n.pid())),
    }
}

async fn round(env: &Env, target: Target, opts: &Opts, per_conn: usize, msg: &Message) -> Tally {
    let mut tally = Tally::default();
    let opened = open(env, target, opts.connections).await;
    tally.errors.merge(&opened.errors);

    // Warm-up, untimed.
    let mut conns = Vec::with_capacity(opened.conns.len());
    for mut ws in opened.conns {
        let mut ok = true;
        for _ in 0..opts.warmup {
            if let Err(e) = client::echo(&mut ws, msg).await {
                tally.errors.add(format!("warm-up: {e:#}"));
                ok = false;
                break;
            }
        }
        if ok {
            conns.push(ws);
        }
    }

    let cpu_before = proxy_cpu(env, target);
    let began = Instant::now();
    let mut set = JoinSet::new();
    for mut ws in conns {
        let msg = msg.clone();
        set.spawn(async move {
            let mut rtt = Latency::default();
            let mut errors = Errors::default();
            for _ in 0..per_conn {
                let t = Instant::now();
                match client::echo(&mut ws, &msg).await {
                    Ok(()) => rtt.record(t.elapsed()),
                    Err(e) => {
                        errors.add(format!("echo: {e:#}"));
                        break;
                    }
                }
            }
            (ws, rtt, errors)
        });
    }
    let mut done = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((ws, rtt, errors)) => {
                tally.rtt.merge(&rtt);
                tally.errors.merge(&errors);
                done.push(ws);
            }
            Err(e) => tally.errors.add(format!("task: {e}")),
        }
    }
    tally.elapsed = began.elapsed();
    tally.proxy_cpu = match (cpu_before, proxy_cpu(env, target)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    tally.messages = tally.rtt.count();

    for mut ws in done {
        if let Err(e) = client::close(&mut ws).await {
            tally.errors.add(format!("close: {e:#}"));
        }
    }
    servers::reap(opened.children).await;
    if target == Target::Scfsim {
        env.scfsim.quiesce().await;
    }
    tally
}

/// Runs the scenario; prints the table and the JSON line; returns the JSON.
pub async fn run(env: &Env, opts: &Opts) -> Result<Value> {
    let mut skipped = Map::new();
    let targets: Vec<Target> = opts
        .targets
        .iter()
        .copied()
        .filter(|t| match (t, &env.nginx) {
            (Target::Nginx, Err(why)) => {
                skipped.insert("nginx".into(), json!(format!("{why:#}")));
                false
            }
            _ => true,
        })
        .collect();
    let rounds = opts.rounds.max(1);
    let per_conn = opts.messages.div_ceil(rounds).max(1);
    let msg = client::payload(opts.size, false);
    let mut tallies: Vec<Tally> = targets.iter().map(|_| Tally::default()).collect();
    for r in 0..rounds {
        let order: Vec<usize> = if r % 2 == 0 {
            (0..targets.len()).collect()
        } else {
            (0..targets.len()).rev().collect()
        };
        for i in order {
            let t = round(env, targets[i], opts, per_conn, &msg).await;
            let total = &mut tallies[i];
            total.rtt.merge(&t.rtt);
            total.errors.merge(&t.errors);
            total.messages += t.messages;
            total.elapsed += t.elapsed;
            total.proxy_cpu = match (total.proxy_cpu, t.proxy_cpu) {
                (a, Some(b)) => Some(a.unwrap_or_default() + b),
                (a, None) => a,
            };
        }
    }

    let rate = |t: &Tally| t.messages as f64 / t.elapsed.as_secs_f64().max(1e-9);
    let mut json_targets = Map::new();
    for (t, tally) in targets.iter().zip(&tallies) {
        json_targets.insert(
            t.name().into(),
            json!({
                "messages": tally.messages,
                "seconds": tally.elapsed.as_secs_f64(),
                "messages_per_s": rate(tally),
                "mib_per_s": rate(tally) * opts.size as f64 / (1024.0 * 1024.0),
                "rtt": tally.rtt.json_us(),
                "proxy_cpu_us_per_message": tally.proxy_cpu
                    .map(|c| c.as_secs_f64() * 1e6 / tally.messages.max(1) as f64),
                "errors": tally.errors.json(),
            }),
        );
    }
    let reference = targets.iter().position(|t| *t == Target::Direct);
    let mut ratios = Map::new();
    if let Some(r) = reference {
        for (i, t) in targets.iter().enumerate().filter(|(i, _)| *i != r) {
            let (a, b) = (&tallies[i], &tallies[r]);
            ratios.insert(
                format!("{}/direct", t.name()),
                json!({
                    "messages_per_s": ratio(Some(rate(a)), Some(rate(b))),
                    "rtt_p50": ratio(secs(a.rtt.p50()), secs(b.rtt.p50())),
                    "rtt_p99": ratio(secs(a.rtt.p99()), secs(b.rtt.p99())),
                }),
            );
        }
    }

    let names: Vec<&str> = targets.iter().map(|t| t.name()).collect();
    let mut table = Comparison::new(&names, &tallies, reference, "/ direct");
    let none = |_: &Tally, _: &Tally| String::new();
    table.row("messages/s", &|t| fmt_rate(rate(t)), &|a, b| {
        fmt_ratio(Some(rate(a)), Some(rate(b)))
    });
    table.row(
        "MiB/s",
        &|t| format!("{:.1}", rate(t) * opts.size as f64 / 1048576.0),
        &none,
    );
    table.row("RTT p50 (µs)", &|t| fmt_us(t.rtt.p50()), &|a, b| {
        fmt_ratio(secs(a.rtt.p50()), secs(b.rtt.p50()))
    });
    table.row("RTT p99 (µs)", &|t| fmt_us(t.rtt.p99()), &|a, b| {
        fmt_ratio(secs(a.rtt.p99()), secs(b.rtt.p99()))
    });
    table.row("RTT max (µs)", &|t| fmt_us(t.rtt.max()), &none);
    table.row(
        "proxy CPU µs/message",
        &|t| match t.proxy_cpu {
            Some(c) => format!("{:.1}", c.as_secs_f64() * 1e6 / t.messages.max(1) as f64),
            None => "–".into(),
        },
        &none,
    );
    table.row("messages", &|t| t.messages.to_string(), &none);
    table.row("errors", &|t| t.errors.count.to_string(), &none);

    crate::stats::print_scenario(
        &format!(
            "echo: {} B messages, {} connection(s) × {} messages, {} interleaved rounds",
            opts.size,
            opts.connections,
            per_conn * rounds,
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
        "scenario": "echo",
        "size": opts.size,
        "connections": opts.connections,
        "messages_per_connection": per_conn * rounds,
        "rounds": rounds,
        "targets": json_targets,
        "ratios": ratios,
        "skipped": skipped,
        "load_average": procfs::loadavg(),
    });
    println!("{out}");
    Ok(out)
}

/// Total errors over all targets of a scenario's JSON.
pub fn error_count(v: &Value) -> u64 {
    v["targets"]
        .as_object()
        .map(|m| {
            m.values()
                .map(|t| t["errors"]["count"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}
