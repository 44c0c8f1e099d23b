//! `hold`: N simultaneous open connections through a fresh scfsim, each with its own instance;
//! memory of scfsim per connection and of the instances, and 0 errors.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::client::{self, Ws};
use crate::procfs::{self, MemGroup};
use crate::servers::{Scfsim, ScfsimSettings, Tools};
use crate::stats::{fmt_ms, fmt_rate, Errors, Latency, Table};

#[derive(Debug, Clone)]
pub struct Opts {
    pub connections: usize,
    /// Connections being opened at once.
    pub concurrency: usize,
}

/// Runs `f` on every connection, `concurrency` at a time; returns the connections that are
/// still good.
async fn on_each<F, Fut>(conns: Vec<Ws>, concurrency: usize, errors: &mut Errors, f: F) -> Vec<Ws>
where
    F: Fn(Ws) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Ws>> + Send,
{
    let mut out = Vec::with_capacity(conns.len());
    let mut set = JoinSet::new();
    for ws in conns {
        if set.len() >= concurrency {
            collect(set.join_next().await, &mut out, errors);
        }
        let f = f.clone();
        set.spawn(async move { f(ws).await });
    }
    while let Some(joined) = set.join_next().await {
        collect(Some(joined), &mut out, errors);
    }
    out
}

fn collect(
    joined: Option<Result<Result<Ws>, tokio::task::JoinError>>,
    out: &mut Vec<Ws>,
    errors: &mut Errors,
) {
    match joined {
        Some(Ok(Ok(ws))) => out.push(ws),
        Some(Ok(Err(e))) => errors.add(format!("{e:#}")),
        Some(Err(e)) => errors.add(format!("task: {e}")),
        None => {}
    }
}

fn group_json(groups: &BTreeMap<String, MemGroup>) -> Value {
    groups
        .iter()
        .map(|(comm, g)| {
            (
                comm.clone(),
                json!({"processes": g.processes, "rss_kib": g.rss_kib, "pss_kib": g.pss_kib}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

pub async fn run(tools: &Tools, opts: &Opts) -> Result<Value> {
    let n = opts.connections;
    let settings = ScfsimSettings {
        max_instances: (n as u32 + 100).max(5000),
        ..ScfsimSettings::default()
    };
    let scfsim = Scfsim::start(tools, &settings)?;
    let pid = scfsim.pid();
    let url = scfsim.url();
    let msg = client::payload(64, false);
    let concurrency = opts.concurrency.max(1);

    // Warm-up: one-time allocations (runtime, record store, first instance) are not per
    // connection.
    let mut warm_errors = Errors::default();
    let mut warm = Vec::new();
    for _ in 0..16.min(n.max(1)) {
        match client::connect(&url).await {
            Ok(mut ws) => match client::echo(&mut ws, &msg).await {
                Ok(()) => warm.push(ws),
                Err(e) => warm_errors.add(format!("warm-up echo: {e:#}")),
            },
            Err(e) => warm_errors.add(format!("warm-up connect: {e:#}")),
        }
    }
    for mut ws in warm {
        let _ = client::close(&mut ws).await;
    }
    scfsim.quiesce().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = procfs::rss_kib(pid).unwrap_or(0);
    let fds_before = open_fds(pid).unwrap_or(0);
    let mem_before = procfs::mem_available_kib().unwrap_or(0);

    // Open all, each proven with one echo.
    let mut errors = Errors::default();
    let mut open_latency = Latency::default();
    let began = Instant::now();
    let mut conns = Vec::with_capacity(n);
    let mut set = JoinSet::new();
    for _ in 0..n {
        if set.len() >= concurrency {
            if let Some(j) = set.join_next().await {
                open_result(j, &mut conns, &mut open_latency, &mut errors);
            }
        }
        let (url, msg) = (url.clone(), msg.clone());
        set.spawn(async move {
            let t = Instant::now();
            let mut ws = client::connect(&url).await.context("connect")?;
            client::echo(&mut ws, &msg).await.context("first echo")?;
            Ok::<_, anyhow::Error>((ws, t.elapsed()))
        });
    }
    while let Some(j) = set.join_next().await {
        open_result(j, &mut conns, &mut open_latency, &mut errors);
    }
    let open_time = began.elapsed();
    let opened = conns.len();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_open = procfs::rss_kib(pid).unwrap_or(0);
    let fds_open = open_fds(pid).unwrap_or(0);
    let fd_limit = open_files_limit(pid);
    let mem_open = procfs::mem_available_kib().unwrap_or(0);
    let groups = procfs::descendant_memory(pid);
    let live_instances = procfs::child_count(pid);

    // Every connection still works.
    let msg2 = msg.clone();
    let conns = on_each(conns, 64, &mut errors, move |mut ws| {
        let msg = msg2.clone();
        async move {
            client::echo(&mut ws, &msg)
                .await
                .map(|_| ws)
                .context("second echo")
        }
    })
    .await;
    let still_open = conns.len();
    let rss_after_echo = procfs::rss_kib(pid).unwrap_or(0);

    let close_began = Instant::now();
    let closed = on_each(conns, 64, &mut errors, |mut ws| async move {
        client::close(&mut ws).await.map(|_| ws).context("close")
    })
    .await;
    drop(closed);
    let close_time = close_began.elapsed();
    let quiet = crate::procfs::wait_childless(pid, Duration::from_secs(120)).await;
    let drained = close_began.elapsed();
    let rss_end = procfs::rss_kib(pid).unwrap_or(0);
    let isolation = scfsim.isolation();
    drop(scfsim);

    let per_conn = |after: u64| (after as f64 - rss_before as f64) / opened.max(1) as f64;
    let sum = |f: fn(&MemGroup) -> u64| groups.values().map(f).sum::<u64>();
    let (inst_rss, inst_pss, inst_procs) =
        (sum(|g| g.rss_kib), sum(|g| g.pss_kib), sum(|g| g.processes));
    let per_instance = |kib: u64| kib as f64 / opened.max(1) as f64;
    let mem_drop = mem_before as f64 - mem_open as f64;

    let mut table = Table::new(["metric", "scfsim"]);
    table.row(["connections open at once".to_string(), opened.to_string()]);
    table.row([
        "instances (scfsim's children) while open".to_string(),
        live_instances.to_string(),
    ]);
    table.row(["errors".to_string(), errors.count.to_string()]);
    table.row([
        "time to open all (s)".to_string(),
        format!("{:.1}", open_time.as_secs_f64()),
    ]);
    table.row([
        "opened/s (concurrency ".to_string() + &concurrency.to_string() + ")",
        fmt_rate(opened as f64 / open_time.as_secs_f64().max(1e-9)),
    ]);
    table.row([
        "connect→first echo p50 / p99 (ms)".to_string(),
        format!(
            "{} / {}",
            fmt_ms(open_latency.p50()),
            fmt_ms(open_latency.p99())
        ),
    ]);
    table.row([
        "scfsim VmRSS before (MiB)".to_string(),
        format!("{:.1}", rss_before as f64 / 1024.0),
    ]);
    table.row([
        "scfsim VmRSS all open (MiB)".to_string(),
        format!("{:.1}", rss_open as f64 / 1024.0),
    ]);
    table.row([
        "scfsim RSS per open connection (KiB)".to_string(),
        format!("{:.1}", per_conn(rss_open)),
    ]);
    table.row([
        "… after one more echo on each (KiB)".to_string(),
        format!("{:.1}", per_conn(rss_after_echo)),
    ]);
    let fds_per_conn = (fds_open as f64 - fds_before as f64) / opened.max(1) as f64;
    table.row([
        "scfsim open descriptors per open connection".to_string(),
        format!("{fds_per_conn:.1}"),
    ]);
    table.row([
        "scfsim open files limit (connections it allows)".to_string(),
        match fd_limit {
            Some(limit) if fds_per_conn > 0.0 => format!(
                "{limit} ({:.0})",
                (limit as f64 - fds_before as f64) / fds_per_conn
            ),
            Some(limit) => limit.to_string(),
            None => "?".to_string(),
        },
    ]);
    table.row([
        "instance processes (keeper+init+fixture)".to_string(),
        inst_procs.to_string(),
    ]);
    table.row([
        "instances: RSS sum per instance (KiB)".to_string(),
        format!("{:.0}", per_instance(inst_rss)),
    ]);
    table.row([
        "instances: PSS sum per instance (KiB)".to_string(),
        format!("{:.0}", per_instance(inst_pss)),
    ]);
    for (comm, g) in &groups {
        table.row([
            format!("  {comm} ×{}: RSS / PSS per process (KiB)", g.processes),
            format!(
                "{:.0} / {:.0}",
                g.rss_kib as f64 / g.processes.max(1) as f64,
                g.pss_kib as f64 / g.processes.max(1) as f64
            ),
        ]);
    }
    table.row([
        "machine MemAvailable drop per connection (KiB)".to_string(),
        format!("{:.0}", mem_drop / opened.max(1) as f64),
    ]);
    table.row([
        "close all (s) / until no instance left (s)".to_string(),
        format!(
            "{:.1} / {:.1}{}",
            close_time.as_secs_f64(),
            drained.as_secs_f64(),
            if quiet { "" } else { " (not drained)" }
        ),
    ]);
    table.row([
        "scfsim VmRSS after all closed (MiB)".to_string(),
        format!("{:.1}", rss_end as f64 / 1024.0),
    ]);

    println!(
        "\n### hold: {n} simultaneous connections through scfsim, each with its own instance \
         (isolation: {isolation})\n"
    );
    println!("load average after: {}\n", procfs::loadavg());
    print!("{}", table.render());
    for e in warm_errors.first.iter().chain(&errors.first) {
        println!("  error: {e}");
    }
    let out = json!({
        "scenario": "hold",
        "connections": n,
        "opened": opened,
        "still_open_after_second_echo": still_open,
        "isolation": isolation,
        "live_instances": live_instances,
        "errors": errors.json(),
        "warmup_errors": warm_errors.json(),
        "open_seconds": open_time.as_secs_f64(),
        "open_latency": open_latency.json_us(),
        "scfsim_rss_kib": {
            "before": rss_before,
            "all_open": rss_open,
            "after_second_echo": rss_after_echo,
            "after_close": rss_end,
        },
        "scfsim_rss_kib_per_connection": per_conn(rss_open),
        "scfsim_fds": {"before": fds_before, "all_open": fds_open, "limit": fd_limit},
        "scfsim_fds_per_connection": fds_per_conn,
        "scfsim_rss_kib_per_connection_after_echo": per_conn(rss_after_echo),
        "instances": {
            "processes": inst_procs,
            "rss_kib_per_instance": per_instance(inst_rss),
            "pss_kib_per_instance": per_instance(inst_pss),
            "by_command": group_json(&groups),
        },
        "mem_available_drop_kib_per_connection": mem_drop / opened.max(1) as f64,
        "close_seconds": close_time.as_secs_f64(),
        "drain_seconds": drained.as_secs_f64(),
        "drained": quiet,
        "load_average": procfs::loadavg(),
    });
    println!("{out}");
    Ok(out)
}

/// How many descriptors `pid` has open.
fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// `pid`'s soft limit on open files (scfsim raises it to the hard limit it inherited): with
/// several descriptors per connection, what bounds how many connections it can hold.
fn open_files_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn open_result(
    joined: Result<Result<(Ws, Duration)>, tokio::task::JoinError>,
    conns: &mut Vec<Ws>,
    latency: &mut Latency,
    errors: &mut Errors,
) {
    match joined {
        Ok(Ok((ws, took))) => {
            latency.record(took);
            conns.push(ws);
        }
        Ok(Err(e)) => errors.add(format!("{e:#}")),
        Err(e) => errors.add(format!("task: {e}")),
    }
}
