//! `scfsim-bench`: scfsim's data path and connection path, measured side by side with their
//! references on the same machine in interleaved rounds (A B A B …), so that noise cancels in
//! the ratios.
//!
//! - `echo`: the echo fixture reached directly, through scfsim, and through nginx.
//! - `connect`: a new connection (and instance) per client against the floor (the benchmark
//!   spawning the same bootstrap itself) and websocketd.
//! - `hold`: many simultaneous connections through scfsim; memory per connection.
//! - `docker`: connect → first echo to an image function through scfsim, with and without a
//!   stock of created containers, against the engine's own create + start + connect.
//! - `provisioned`: a connection taking a provisioned instance against a direct connection to
//!   a server that already runs.
//! - `suite`: all of them at standard sizes, then the goals of issue #15.
//!
//! Each scenario prints a markdown table and one JSON line (a line starting with `{`).

mod client;
mod connect;
mod docker;
mod echo;
mod env;
mod hold;
mod procfs;
mod provisioned;
mod servers;
mod stats;
mod suite;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::env::Env;
use crate::servers::{find_program, own_dir, Tools};

#[derive(Parser)]
#[command(
    name = "scfsim-bench",
    about = "Benchmarks scfsim against its references"
)]
struct Cli {
    /// The scfsim binary (default: next to this executable).
    #[arg(long, global = true)]
    scfsim: Option<PathBuf>,
    /// The multi-mode fixture, `scfsim-fixture` (default: next to this executable).
    #[arg(long, global = true)]
    fixture: Option<PathBuf>,
    /// nginx (default: on PATH or /usr/sbin).
    #[arg(long, global = true)]
    nginx: Option<PathBuf>,
    /// websocketd (default: on PATH).
    #[arg(long, global = true)]
    websocketd: Option<PathBuf>,
    /// Keep the temporary directories (scfsim's config, records and log; nginx's config).
    #[arg(long, global = true)]
    keep: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// M connections each sending K messages of S bytes, each send waiting for its echo.
    Echo {
        #[arg(long, short = 'c', default_value_t = 1)]
        connections: usize,
        /// Messages per connection, over all rounds.
        #[arg(long, short = 'n', default_value_t = 10_000)]
        messages: usize,
        /// Message size: bytes, or with a K/KiB or M/MiB suffix.
        #[arg(long, short = 's', default_value = "64", value_parser = parse_size)]
        size: usize,
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Unrecorded messages per connection at the start of each round.
        #[arg(long, default_value_t = 50)]
        warmup: usize,
        #[arg(long, value_delimiter = ',', default_value = "direct,scfsim,nginx")]
        targets: Vec<echo::Target>,
    },
    /// N new connections at concurrency C: handshake, one echo, close 1000.
    Connect {
        #[arg(long, short = 'n', default_value_t = 300)]
        connections: usize,
        #[arg(long, short = 'c', default_value_t = 1)]
        concurrency: usize,
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// Unrecorded connections per target before the first round.
        #[arg(long, default_value_t = 10)]
        warmup: usize,
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "floor,scfsim,floor-exec,websocketd"
        )]
        targets: Vec<connect::Target>,
    },
    /// N simultaneous connections through scfsim, each with its own instance; memory.
    Hold {
        #[arg(long, short = 'n', default_value_t = 5000)]
        connections: usize,
        /// Connections being opened at once.
        #[arg(long, short = 'c', default_value_t = 32)]
        concurrency: usize,
    },
    /// An image function (a new container per connection) through scfsim, without and with a
    /// stock of created containers, against the engine's floor (create + start the same image
    /// and connect to its port 9000). Needs the Docker engine and the image.
    Docker {
        /// An image whose server echoes on port 9000 (the e2e tests build
        /// scfsim-e2e-fixture:latest).
        #[arg(long, default_value = "scfsim-e2e-fixture:latest")]
        image: String,
        #[arg(long, short = 'n', default_value_t = 40)]
        connections: usize,
        #[arg(long, short = 'c', value_delimiter = ',', default_value = "1,8")]
        concurrency: Vec<usize>,
        #[arg(long, default_value_t = 4)]
        rounds: usize,
        #[arg(long, default_value_t = 4)]
        warmup: usize,
        /// `container_stock` of the stocked function.
        #[arg(long, default_value_t = 8)]
        stock: u32,
    },
    /// Connect→first echo with a provisioned instance waiting, against a direct connection to
    /// an already running server (concurrency 1).
    Provisioned {
        #[arg(long, short = 'n', default_value_t = 200)]
        connections: usize,
        #[arg(long, default_value_t = 4)]
        rounds: usize,
        /// Unrecorded connections per target before the first round.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// The echo server behind both targets.
        #[arg(long, value_enum, default_value = "fixture")]
        server: provisioned::ServerKind,
        /// Short for `--server python`.
        #[arg(long, conflicts_with = "server")]
        python: bool,
    },
    /// Every scenario at its standard size, then the goals.
    Suite {
        /// Tiny sizes (seconds in all): proves that everything runs.
        #[arg(long)]
        quick: bool,
    },
}

fn parse_size(s: &str) -> Result<usize> {
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("KiB").or_else(|| t.strip_suffix('K')) {
        (n, 1024)
    } else if let Some(n) = t.strip_suffix("MiB").or_else(|| t.strip_suffix('M')) {
        (n, 1024 * 1024)
    } else {
        (t.strip_suffix('B').unwrap_or(t), 1)
    };
    num.trim()
        .parse::<usize>()
        .map(|n| n * mult)
        .map_err(|_| anyhow::anyhow!("bad size {s:?} (e.g. 64, 64K, 64KiB)"))
}

/// Raises the soft open-file limit to the hard one: scfsim (our child) and the benchmark hold
/// several descriptors per connection.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = procfs::mem_total_kib().map_or("?".into(), |kib| {
        format!("{:.1} GiB", kib as f64 / 1048576.0)
    });
    let kernel = procfs::kernel_release().unwrap_or_default();
    format!("{cores} cores, {mem} memory, Linux {kernel}")
}

fn tools(cli: &Cli) -> Result<Tools> {
    let dir = own_dir();
    let pick = |given: &Option<PathBuf>, name: &str| -> Result<PathBuf> {
        let path = given.clone().unwrap_or_else(|| dir.join(name));
        anyhow::ensure!(
            path.is_file(),
            "{} not found: build it (`cargo build --release -p scfsim -p scfsim-e2e`) or pass \
             --{}",
            path.display(),
            if name == "scfsim" {
                "scfsim"
            } else {
                "fixture"
            }
        );
        Ok(path)
    };
    let given = |p: &Option<PathBuf>, name: &str, extra: &[&str]| match p {
        Some(p) if p.is_file() => Ok(p.clone()),
        Some(p) => Err(anyhow::anyhow!("{} does not exist", p.display())),
        None => find_program(name, extra),
    };
    Ok(Tools {
        scfsim: pick(&cli.scfsim, "scfsim")?,
        fixture: pick(&cli.fixture, "scfsim-fixture")?,
        nginx: given(&cli.nginx, "nginx", &["/usr/sbin", "/usr/local/sbin"]),
        websocketd: given(&cli.websocketd, "websocketd", &[]),
    })
}

async fn run(cli: Cli) -> Result<Vec<Value>> {
    servers::KEEP_DIRS.store(cli.keep, std::sync::atomic::Ordering::Relaxed);
    let nofile = raise_nofile();
    let tools = tools(&cli)?;
    println!("## scfsim-bench — {}", machine());
    println!("load average at start: {}", procfs::loadavg());
    println!(
        "scfsim {} | fixture {} | nginx {} | websocketd {} | open files {nofile}",
        tools.scfsim.display(),
        tools.fixture.display(),
        match &tools.nginx {
            Ok(p) => p.display().to_string(),
            Err(e) => format!("MISSING ({e:#})"),
        },
        match &tools.websocketd {
            Ok(p) => p.display().to_string(),
            Err(e) => format!("MISSING ({e:#})"),
        },
    );
    let results = match cli.command {
        Command::Echo {
            connections,
            messages,
            size,
            rounds,
            warmup,
            targets,
        } => {
            let nginx = targets.contains(&echo::Target::Nginx);
            let env = Env::start(tools, nginx, false).await?;
            let opts = echo::Opts {
                connections,
                messages,
                size,
                rounds,
                warmup,
                targets,
            };
            vec![echo::run(&env, &opts).await?]
        }
        Command::Connect {
            connections,
            concurrency,
            rounds,
            warmup,
            targets,
        } => {
            let websocketd = targets.contains(&connect::Target::Websocketd);
            let env = Env::start(tools, false, websocketd).await?;
            let opts = connect::Opts {
                connections,
                concurrency,
                rounds,
                warmup,
                targets,
            };
            vec![connect::run(&env, &opts).await?]
        }
        Command::Docker {
            image,
            connections,
            concurrency,
            rounds,
            warmup,
            stock,
        } => {
            docker::run(
                &tools,
                &docker::Opts {
                    image,
                    connections,
                    concurrency,
                    rounds,
                    warmup,
                    stock,
                },
            )
            .await?
        }
        Command::Hold {
            connections,
            concurrency,
        } => vec![
            hold::run(
                &tools,
                &hold::Opts {
                    connections,
                    concurrency,
                },
            )
            .await?,
        ],
        Command::Provisioned {
            connections,
            rounds,
            warmup,
            server,
            python,
        } => vec![
            provisioned::run(
                &tools,
                &provisioned::Opts {
                    connections,
                    rounds,
                    warmup,
                    server: if python {
                        provisioned::ServerKind::Python
                    } else {
                        server
                    },
                },
            )
            .await?,
        ],
        Command::Suite { quick } => {
            let env = Env::start(tools, true, true).await?;
            if let Ok(n) = &env.nginx {
                println!("nginx: worker_processes {}", n.workers);
            }
            println!("scfsim instance isolation: {}", env.scfsim.isolation());
            let plan = if quick {
                suite::Plan::quick()
            } else {
                suite::Plan::full()
            };
            suite::run(&env, &plan, !quick).await?
        }
    };
    println!("\nload average at end: {}", procfs::loadavg());
    Ok(results)
}

/// Errors of every scenario (the run fails if any connection failed).
fn total_errors(results: &[Value]) -> u64 {
    results
        .iter()
        .map(|v| match v["scenario"].as_str() {
            Some("hold") => {
                v["errors"]["count"].as_u64().unwrap_or(0)
                    + v["warmup_errors"]["count"].as_u64().unwrap_or(0)
            }
            Some("echo" | "connect" | "provisioned") => echo::error_count(v),
            _ => 0,
        })
        .sum()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime");
    let result = runtime.and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(results) => {
            let errors = total_errors(&results);
            if errors > 0 {
                eprintln!("scfsim-bench: {errors} connection error(s); see the tables");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("scfsim-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64").unwrap(), 64);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert!(parse_size("x").is_err());
    }
}
