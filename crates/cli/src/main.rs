//! The `scfsim` command line.

#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use scfsim::Server;
use scfsim_pool::IsolationRequest;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "scfsim",
    version,
    about = "Run Tencent Cloud SCF WebSocket functions locally"
)]
struct Cli {
    /// Log format of scfsim's own log (stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum SendTo {
    Client,
    Function,
}

#[derive(Clone, Copy, ValueEnum)]
enum IsolationArg {
    Auto,
    Namespaces,
    None,
    Docker,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configured functions: one real instance per WebSocket connection.
    Serve {
        /// Config file.
        #[arg(long, default_value = "config/scfsim.toml")]
        config: PathBuf,
        /// ws:// listen address (overrides gateway.listen); port 0 picks a free port.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// wss:// listen address (overrides gateway.tls_listen).
        #[arg(long)]
        tls_listen: Option<SocketAddr>,
        /// Admin API listen address (overrides gateway.admin_listen).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Where records and logs are kept (overrides gateway.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// How instances are isolated (overrides gateway.isolation): own network, PID and mount
        /// namespaces (user namespaces too when not root), none, docker (a container per
        /// instance, on the engine DOCKER_HOST names), or auto (namespaces where possible).
        #[arg(long, value_enum)]
        isolation: Option<IsolationArg>,
        /// Serve this function in debug mode (as `debug = true` in its [[functions]] table):
        /// each instance's runtime waits for a debugger on a port of its own, and its init,
        /// idle and execution timers do not fire. Repeatable.
        #[arg(long = "debug", value_name = "NAME")]
        debug: Vec<String>,
    },
    /// Print a VS Code launch.json that attaches to the debugger of a debug-mode function's
    /// newest live instance (open a connection first: its instance waits for the debugger).
    DebugConfig {
        /// The function's name.
        name: String,
        #[arg(long, default_value = "http://127.0.0.1:9100")]
        admin: String,
        #[arg(long, env = "SCFSIM_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Inject a message into a live connection (POST /api/instances/{id}/send).
    Send {
        /// The instance's id (from /api/instances).
        id: String,
        /// Which side gets the message.
        #[arg(long, value_enum)]
        to: SendTo,
        /// A text message.
        #[arg(
            long,
            conflicts_with = "binary_base64",
            required_unless_present = "binary_base64"
        )]
        text: Option<String>,
        /// A binary message, base64-encoded.
        #[arg(long)]
        binary_base64: Option<String>,
        #[arg(long, default_value = "http://127.0.0.1:9100")]
        admin: String,
        #[arg(long, env = "SCFSIM_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Close a live connection (DELETE /api/instances/{id}): the client gets --code (default
    /// 1001) and --reason, the function 1001.
    Close {
        /// The instance's id (from /api/instances).
        id: String,
        /// The close code the client gets (1000-1003, 1007-1013, 3000-4999).
        #[arg(long)]
        code: Option<u16>,
        /// The close reason the client gets (with --code).
        #[arg(long, requires = "code")]
        reason: Option<String>,
        #[arg(long, default_value = "http://127.0.0.1:9100")]
        admin: String,
        #[arg(long, env = "SCFSIM_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Write the scenario file that a recorded connection was (from its frame timeline), to
    /// replay it with `scfsim test`: the client's messages as sends, the function's as
    /// expectations, the close and the outcome.
    Record {
        /// The invocation's request id (from /api/invocations).
        #[arg(required_unless_present = "last", conflicts_with_all = ["last", "function"])]
        request_id: Option<String>,
        /// The newest finished invocation of --function instead.
        #[arg(long, requires = "function")]
        last: bool,
        /// The function, with --last (a request id already names its function).
        #[arg(long)]
        function: Option<String>,
        /// Put the recorded pauses back (sleep steps before the client's actions).
        #[arg(long)]
        keep_timing: bool,
        /// Write to this file instead of stdout.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        /// Admin API of the scfsim that served the connection.
        #[arg(long, default_value = "http://127.0.0.1:9100")]
        admin: String,
        /// The admin API's token, if it has one.
        #[arg(long, env = "SCFSIM_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Validate a config file: exit 0 if valid, 2 with the field and what is allowed if not.
    Check {
        #[arg(long, default_value = "config/scfsim.toml")]
        config: PathBuf,
    },
    /// Scaffold a WebSocket function the platform accepts: scf_bootstrap, an echo server on
    /// port 9000, a dependency file; prints the config block to add.
    Init {
        /// Directory to create (must be empty or absent).
        dir: PathBuf,
        /// python3, nodejs, go, rust or bash.
        #[arg(long, default_value = "python3")]
        runtime: String,
        /// Function name (default: the directory's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// List recorded invocations, newest first.
    Invocations {
        /// Admin API of a running scfsim.
        #[arg(long, default_value = "http://127.0.0.1:9100")]
        admin: String,
        #[arg(long)]
        function: Option<String>,
        /// Only this function status code (e.g. 200, 439, 456).
        #[arg(long)]
        status: Option<u16>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Keep running and print each invocation as it ends.
        #[arg(long)]
        follow: bool,
        /// The admin API's token (gateway.admin_token), if it has one.
        #[arg(long, env = "SCFSIM_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Run scenario files (TOML) against the configured functions: exit 0 when all pass, 1 when
    /// any fails, 2 for a bad scenario file or config. Starts its own scfsim on free ports
    /// (data in a temporary directory) unless --url and --admin name a running one.
    Test {
        /// Config of the scfsim to start.
        #[arg(long, default_value = "config/scfsim.toml")]
        config: PathBuf,
        /// ws:// base of a running scfsim (e.g. ws://127.0.0.1:8080); needs --admin.
        #[arg(long, requires = "admin")]
        url: Option<String>,
        /// Admin API of that running scfsim (e.g. http://127.0.0.1:9100); needs --url.
        #[arg(long, requires = "url")]
        admin: Option<String>,
        /// Also write a JUnit XML report to this file.
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Print one JSON document (every scenario, every failure) instead of lines.
        #[arg(long)]
        json: bool,
        /// Run the idle and execution timers (and rate limits) N times faster (overrides
        /// time_scale in the config; not with --url).
        #[arg(long, value_name = "N", conflicts_with = "url")]
        time_scale: Option<f64>,
        /// The admin API's token, if it has one (with --url).
        #[arg(long, env = "SCFSIM_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Scenario files.
        #[arg(required = true, value_name = "SCENARIO")]
        scenarios: Vec<PathBuf>,
    },
}

/// Exit code 2: bad usage or config, as the interface promises.
struct UsageError(String);

impl UsageError {
    /// The error with its whole chain of causes: the user needs the root cause to fix it.
    fn from_error(err: &(dyn std::error::Error + 'static)) -> UsageError {
        UsageError(scfsim_gateway::ErrorChain(err).to_string())
    }
}

fn main() -> ExitCode {
    // Before anything else: scfsim execs itself as each instance's supervisor.
    scfsim_pool::run_supervisor_if_requested();
    let cli = Cli::parse();
    // `scfsim test` runs scfsim in-process: its per-connection log would bury the report.
    let quiet = matches!(cli.command, Command::Test { .. });
    // Its connections' failures (a start that fails, on purpose or not) are in the report.
    let filter = if quiet {
        "warn,scfsim_gateway::invocation=error"
    } else {
        "info"
    };
    init_tracing(cli.log_format, filter);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("scfsim: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(UsageError(msg))) => {
            eprintln!("scfsim: {msg}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("scfsim: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(command: Command) -> anyhow::Result<Result<(), UsageError>> {
    match command {
        Command::Check { config } => Ok(check(&config)),
        Command::Init { dir, runtime, name } => Ok(init(&dir, &runtime, name)),
        Command::Serve {
            config,
            listen,
            tls_listen,
            admin_listen,
            data_dir,
            isolation,
            debug,
        } => {
            let path = config;
            let mut config = match scfsim_config::load(&path) {
                Ok(config) => config,
                Err(err) => return Ok(Err(UsageError::from_error(&err))),
            };
            for name in &debug {
                let names: Vec<&str> = config.functions.iter().map(|f| f.name.as_str()).collect();
                let names = names.join(", ");
                match config.functions.iter_mut().find(|f| &f.name == name) {
                    Some(function) => function.debug = true,
                    None => {
                        return Ok(Err(UsageError(format!(
                            "--debug {name:?}: {} has no function of that name (it has: {names})",
                            path.display()
                        ))))
                    }
                }
            }
            let gw = &mut config.gateway;
            gw.listen = listen.unwrap_or(gw.listen);
            gw.tls_listen = tls_listen.or(gw.tls_listen);
            gw.admin_listen = admin_listen.unwrap_or(gw.admin_listen);
            gw.data_dir = data_dir.unwrap_or(gw.data_dir.clone());
            if !gw.admin_listen.ip().is_loopback() && gw.admin_token.is_none() {
                return Ok(Err(UsageError(format!(
                    "--admin-listen {} is not a loopback address: set gateway.admin_token in the config first",
                    gw.admin_listen
                ))));
            }
            serve(config, isolation).await.map(Ok)
        }
        Command::DebugConfig { name, admin, token } => {
            debug_config(&admin, token.as_deref(), &name).await.map(Ok)
        }
        Command::Record {
            request_id,
            last: _,
            function,
            keep_timing,
            output,
            admin,
            token,
        } => {
            let admin = admin.trim_end_matches('/');
            let token = token.as_deref();
            let id = match (request_id, function) {
                (Some(id), _) => id,
                (None, Some(function)) => last_finished(admin, token, &function).await?,
                (None, None) => unreachable!("clap requires a request id or --last --function"),
            };
            let timeline =
                scfsim_client::get_json(&format!("{admin}/api/invocations/{id}/frames"), token)
                    .await
                    .with_context(|| format!("cannot read the timeline of invocation {id}"))?;
            let record = scfsim_client::get_json(&format!("{admin}/api/invocations/{id}"), token)
                .await
                .with_context(|| format!("cannot read the record of invocation {id}"))?;
            let scenario =
                scfsim_scenario::record::scenario_from_timeline(&timeline, &record, keep_timing)?;
            match output {
                Some(path) => {
                    std::fs::write(&path, scenario)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    let shown = path.display();
                    eprintln!(
                        "scfsim: wrote invocation {id} to {shown} (replay it with: scfsim test {shown})"
                    );
                }
                None => print!("{scenario}"),
            }
            Ok(Ok(()))
        }
        Command::Send {
            id,
            to,
            text,
            binary_base64,
            admin,
            token,
        } => {
            let to = match to {
                SendTo::Client => "client",
                SendTo::Function => "function",
            };
            let body = match (text, binary_base64) {
                (Some(text), _) => serde_json::json!({ "to": to, "text": text }),
                (None, Some(b64)) => serde_json::json!({ "to": to, "binary_base64": b64 }),
                (None, None) => unreachable!("clap requires one of --text and --binary-base64"),
            };
            let url = format!("{}/api/instances/{id}/send", admin.trim_end_matches('/'));
            let answer = scfsim_client::call(
                hyper::Method::POST,
                &url,
                token.as_deref(),
                Some(body.to_string()),
            )
            .await?;
            println!("{}", String::from_utf8_lossy(&answer).trim_end());
            Ok(Ok(()))
        }
        Command::Close {
            id,
            code,
            reason,
            admin,
            token,
        } => {
            let mut url = format!("{}/api/instances/{id}", admin.trim_end_matches('/'));
            if let Some(code) = code {
                url.push_str(&format!("?code={code}"));
                if let Some(reason) = reason {
                    url.push_str(&format!("&reason={}", percent_encode(&reason)));
                }
            }
            let answer =
                scfsim_client::call(hyper::Method::DELETE, &url, token.as_deref(), None).await?;
            println!("{}", String::from_utf8_lossy(&answer).trim_end());
            Ok(Ok(()))
        }
        Command::Invocations {
            admin,
            function,
            status,
            limit,
            json,
            follow,
            token,
        } => {
            let filter = Filter { function, status };
            invocations(&admin, token.as_deref(), &filter, limit, json, follow)
                .await
                .map(Ok)
        }
        Command::Test {
            config,
            url,
            admin,
            junit,
            json,
            time_scale,
            token,
            scenarios,
        } => {
            let running = url.zip(admin).map(|(ws, admin)| scfsim_scenario::Target {
                ws,
                admin,
                admin_token: token,
            });
            let options = TestOptions {
                config,
                running,
                junit,
                json,
                time_scale,
            };
            test::run(&options, &scenarios).await
        }
    }
}

/// `scfsim test`'s options, as parsed.
struct TestOptions {
    config: PathBuf,
    /// A running scfsim (--url, --admin) instead of one started here.
    running: Option<scfsim_scenario::Target>,
    junit: Option<PathBuf>,
    json: bool,
    time_scale: Option<f64>,
}

mod test {
    //! `scfsim test`: load every scenario (a bad one is exit 2 before anything runs), start
    //! scfsim in-process on free ports unless a running one is named, run the scenarios one
    //! after the other, report, stop scfsim.

    use std::path::PathBuf;
    use std::time::Duration;

    use anyhow::Context;
    use scfsim::Server;
    use scfsim_scenario::{report, Scenario, Target};

    use super::{TestOptions, UsageError};

    /// How long the in-process scfsim may take to start (isolation setup included).
    const START_WITHIN: Duration = Duration::from_secs(60);
    /// How long it may take to drain when the scenarios are done.
    const STOP_WITHIN: Duration = Duration::from_secs(10);

    pub(super) async fn run(
        options: &TestOptions,
        files: &[PathBuf],
    ) -> anyhow::Result<Result<(), UsageError>> {
        let mut scenarios = Vec::with_capacity(files.len());
        for file in files {
            match scfsim_scenario::load(file) {
                Ok(s) => scenarios.push(s),
                Err(err) => return Ok(Err(UsageError::from_error(&err))),
            }
        }
        let (target, server) = match &options.running {
            Some(target) => (target.clone(), None),
            None => {
                let config = match prepare_config(options, &scenarios) {
                    Ok(config) => config,
                    Err(usage) => return Ok(Err(usage)),
                };
                let data = tempfile::Builder::new()
                    .prefix("scfsim-test-")
                    .tempdir()
                    .context("creating a temporary data directory")?;
                let mut config = config;
                config.gateway.data_dir = data.path().to_path_buf();
                let isolation = super::isolation_request(None, config.gateway.isolation);
                super::raise_open_file_limit();
                let server = tokio::time::timeout(
                    START_WITHIN,
                    Server::start(config, isolation, "/proc/self/exe".into()),
                )
                .await
                .map_err(|_| anyhow::anyhow!("scfsim did not start within {START_WITHIN:?}"))?
                .context("starting scfsim")?;
                let target = Target {
                    ws: format!("ws://{}", server.ws_addr),
                    admin: format!("http://{}", server.admin_addr),
                    admin_token: server_token(&server),
                };
                (target, Some((server, data)))
            }
        };
        let mut reports = Vec::with_capacity(scenarios.len());
        for scenario in &scenarios {
            let report = scfsim_scenario::run(scenario, &target).await;
            if !options.json {
                print!("{}", crate::colored(&report::human(&report)));
            }
            reports.push(report);
        }
        if let Some((server, data)) = server {
            if !server.shutdown(STOP_WITHIN).await {
                tracing::warn!("some connections did not finish within {STOP_WITHIN:?}");
            }
            drop(data);
        }
        if options.json {
            println!("{}", report::json(&reports));
        } else {
            println!("{}", report::summary(&reports));
        }
        if let Some(path) = &options.junit {
            std::fs::write(path, report::junit(&reports))
                .with_context(|| format!("writing the JUnit report {}", path.display()))?;
        }
        let failed = reports.iter().filter(|r| !r.passed()).count();
        if failed > 0 {
            anyhow::bail!("{failed} of {} scenario(s) failed", reports.len());
        }
        Ok(Ok(()))
    }

    /// The config to serve: as the file says, on free loopback ports, without wss://, with
    /// --time-scale applied; every scenario's path must reach a function.
    fn prepare_config(
        options: &TestOptions,
        scenarios: &[Scenario],
    ) -> Result<scfsim_config::Config, UsageError> {
        let mut config =
            scfsim_config::load(&options.config).map_err(|e| UsageError::from_error(&e))?;
        if let Some(n) = options.time_scale {
            let max = scfsim_config::Config::MAX_TIME_SCALE;
            if !(1.0..=max).contains(&n) {
                return Err(UsageError(format!(
                    "--time-scale {n}: must be a number from 1 (real time) to {max}"
                )));
            }
            config.time_scale = n;
        }
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        config.gateway.listen = loopback;
        config.gateway.admin_listen = loopback;
        config.gateway.tls_listen = None;
        // A scenario's [faults] reach the gateway in a request header, which it takes only
        // when told to; this scfsim is the test's own.
        if scenarios.iter().any(|s| s.faults.is_some()) {
            config.gateway.fault_headers = true;
        }
        for scenario in scenarios {
            let path = scenario.path.render(1);
            if config.route(&path).is_none() {
                return Err(UsageError(format!(
                    "{}: path: {path:?} reaches no function of {} (its paths: {})",
                    scenario.file.display(),
                    options.config.display(),
                    config
                        .functions
                        .iter()
                        .map(|f| f.path.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Ok(config)
    }

    fn server_token(server: &Server) -> Option<String> {
        server.gateway.config().gateway.admin_token.clone()
    }
}

/// The isolation to request: the flag if given, else the config's.
fn isolation_request(
    flag: Option<IsolationArg>,
    configured: scfsim_config::Isolation,
) -> IsolationRequest {
    use scfsim_config::Isolation as Configured;
    match (flag, configured) {
        (Some(IsolationArg::Auto), _) | (None, Configured::Auto) => IsolationRequest::Auto,
        (Some(IsolationArg::Namespaces), _) | (None, Configured::Namespaces) => {
            IsolationRequest::Namespaces
        }
        (Some(IsolationArg::None), _) | (None, Configured::None) => IsolationRequest::None,
        (Some(IsolationArg::Docker), _) | (None, Configured::Docker) => IsolationRequest::Docker,
    }
}

fn init(dir: &std::path::Path, runtime: &str, name: Option<String>) -> Result<(), UsageError> {
    let runtime: scfsim_init::Runtime = runtime.parse().map_err(|e| UsageError(format!("{e}")))?;
    let name = name
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .ok_or_else(|| UsageError(format!("{} has no name to use; pass --name", dir.display())))?;
    let made =
        scfsim_init::scaffold(dir, &name, runtime).map_err(|e| UsageError::from_error(&e))?;
    println!("created {} ({runtime}):", dir.display());
    for file in &made.files {
        println!("  {}", file.display());
    }
    if !made.next_steps.is_empty() {
        println!("\nnext:");
        for step in &made.next_steps {
            println!("  {step}");
        }
    }
    println!(
        "\nadd to your config (code_dir is relative to the config file):\n\n{}",
        made.config_block
    );
    Ok(())
}

fn check(path: &std::path::Path) -> Result<(), UsageError> {
    let config = scfsim_config::load(path).map_err(|err| UsageError::from_error(&err))?;
    for warning in config.warnings() {
        eprintln!("warning: {warning}");
    }
    println!(
        "{}: valid ({} function(s))",
        path.display(),
        config.functions.len()
    );
    Ok(())
}

async fn serve(
    config: scfsim_config::Config,
    isolation: Option<IsolationArg>,
) -> anyhow::Result<()> {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let isolation = isolation_request(isolation, config.gateway.isolation);
    let functions: Vec<String> = config
        .functions
        .iter()
        .map(|f| format!("{} -> {}", f.path, f.name))
        .collect();
    let open_files = raise_open_file_limit();
    // Before `ready`: a supervisor may send SIGTERM as soon as it reads that line.
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    // The running binary, even if a rebuild replaced the file since scfsim started.
    let server = Server::start(config, isolation, "/proc/self/exe".into()).await?;
    for line in &server.isolation {
        tracing::info!("{line}");
    }
    log_open_file_limit(open_files);
    tracing::info!(functions = ?functions, "serving");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening ws://{}", server.ws_addr)?;
        if let Some(wss) = server.wss_addr {
            writeln!(out, "listening wss://{wss}")?;
        }
        writeln!(out, "listening admin http://{}", server.admin_addr)?;
        writeln!(out, "ready")?;
        out.flush()?;
    }
    let which = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    tracing::info!("{which}: closing every connection and recording its outcome");
    if !server.shutdown(Duration::from_secs(30)).await {
        tracing::warn!("some connections did not finish within 30s");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The request id of the newest finished invocation of `function`.
async fn last_finished(admin: &str, token: Option<&str>, function: &str) -> anyhow::Result<String> {
    let url = format!(
        "{admin}/api/invocations?function={}&limit=100",
        percent_encode(function)
    );
    let records = scfsim_client::get_json(&url, token).await?;
    let newest = records
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| !r["status_code"].is_null())
        .and_then(|r| r["request_id"].as_str());
    if let Some(id) = newest {
        // Right after a client closed, its record may still be completing: say which one this is.
        let running = records
            .as_array()
            .and_then(|r| r.first())
            .filter(|r| r["status_code"].is_null())
            .and_then(|r| r["request_id"].as_str());
        if let Some(running) = running {
            eprintln!(
                "scfsim: recording {id}, the newest finished invocation of {function:?}; the newer \
                 {running} has not ended yet (record it by its id once it has)"
            );
        }
        return Ok(id.to_owned());
    }
    // A mistyped name and a function nobody has called yet look alike from the records: the
    // served functions tell them apart.
    let functions = scfsim_client::get_json(&format!("{admin}/api/functions"), token).await?;
    let names: Vec<&str> = functions
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["name"].as_str())
        .collect();
    if !names.contains(&function) {
        anyhow::bail!(
            "scfsim at {admin} serves no function {function:?} (it serves: {}); pass one of those to --function",
            names.join(", ")
        );
    }
    let any = if records.as_array().is_some_and(|r| !r.is_empty()) {
        "none of its newest 100 invocations has ended yet"
    } else {
        "it has no invocation yet"
    };
    anyhow::bail!("function {function:?} has no finished invocation to record: {any} (connect to it, close the connection, then record)")
}

/// A query value, percent-encoded (everything but unreserved characters).
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prints a launch.json for the newest live debug-mode instance of `name`.
async fn debug_config(admin: &str, token: Option<&str>, name: &str) -> anyhow::Result<()> {
    let url = format!("{}/api/instances", admin.trim_end_matches('/'));
    let body = scfsim_client::get_with_token(&url, token).await?;
    let instances: Vec<serde_json::Value> = serde_json::from_slice(&body)
        .context("the admin API answered something that is not a list of instances")?;
    // Oldest first: the last one is the newest.
    let Some(instance) = instances
        .iter()
        .rev()
        .find(|i| i["function"] == name && i["debug"].is_object())
    else {
        anyhow::bail!(
            "no live debug-mode instance of {name:?}: serve it with `--debug {name}` (or `debug = \
             true` in its [[functions]] table) and open a connection; its instance then waits \
             for the debugger"
        );
    };
    let launch = serde_json::json!({
        "version": "0.2.0",
        "configurations": [instance["debug"]["vscode"].clone()],
    });
    println!("{}", serde_json::to_string_pretty(&launch)?);
    Ok(())
}

/// Which invocations to show.
struct Filter {
    function: Option<String>,
    status: Option<u16>,
}

impl Filter {
    fn matches(&self, r: &serde_json::Value) -> bool {
        self.function.as_deref().is_none_or(|f| r["function"] == f)
            && self.status.is_none_or(|s| r["status_code"] == s)
    }
}

/// Descriptors scfsim holds per open connection with namespaces isolation (measured by
/// `scfsim-bench hold`): the client's and the instance's sockets, the instance's stdout and
/// stderr pipes, its pidfd, network namespace and two `cgroup.procs` files.
const FDS_PER_CONNECTION: u64 = 8;

/// The usual soft limit of 1024 would stop scfsim near 125 connections, far below the hard
/// limit it may use. Returns the limit in force afterwards.
fn raise_open_file_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
        tracing::warn!("could not raise the open-file limit above {soft}");
        return Some(soft);
    }
    Some(soft.max(hard))
}

/// What the open-files limit allows, said once at startup: past it a new connection fails with
/// "Too many open files", and the fix (the hard limit) is outside scfsim.
fn log_open_file_limit(limit: Option<u64>) {
    if let Some(limit) = limit.filter(|l| *l != nix::libc::RLIM_INFINITY) {
        tracing::info!(
            "open files: limit {limit}, room for about {} simultaneous connections \
             ({FDS_PER_CONNECTION} descriptors each); raise `ulimit -Hn` for more",
            limit.saturating_sub(64) / FDS_PER_CONNECTION
        );
    }
}

async fn invocations(
    admin: &str,
    token: Option<&str>,
    filter: &Filter,
    limit: usize,
    json: bool,
    follow: bool,
) -> anyhow::Result<()> {
    let admin = admin.trim_end_matches('/');
    // Subscribed before listing, so nothing that ends in between is missed.
    let mut events = match follow {
        true => {
            Some(scfsim_client::EventStream::open(&format!("{admin}/api/events"), token).await?)
        }
        false => None,
    };
    let mut url = format!("{admin}/api/invocations?limit={limit}");
    if let Some(f) = &filter.function {
        url.push_str(&format!("&function={f}"));
    }
    if let Some(s) = filter.status {
        url.push_str(&format!("&status_code={s}"));
    }
    let body = scfsim_client::get_with_token(&url, token).await?;
    let mut records: Vec<serde_json::Value> = serde_json::from_slice(&body)
        .context("the admin API answered something that is not a list of invocations")?;
    // Oldest first on screen, so that --follow continues downwards.
    records.reverse();
    if !json {
        println!(
            "{:<36}  {:<16}  {:>6}  {:<22}  {:>5}  {:>9}  STARTED",
            "REQUEST_ID", "FUNCTION", "STATUS", "END_REASON", "CLOSE", "DURATION"
        );
    }
    for r in &records {
        print_record(r, json);
    }
    let listed: std::collections::HashSet<&serde_json::Value> =
        records.iter().map(|r| &r["request_id"]).collect();
    if let Some(events) = events.as_mut() {
        while let Some((event, data)) = events.next_event().await? {
            if event != "ended" {
                continue;
            }
            if let Ok(r) = serde_json::from_str::<serde_json::Value>(&data) {
                if filter.matches(&r) && !listed.contains(&r["request_id"]) {
                    print_record(&r, json);
                }
            }
        }
    }
    Ok(())
}

fn print_record(r: &serde_json::Value, json: bool) {
    if json {
        println!("{r}");
        return;
    }
    let s = |k: &str| match &r[k] {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let duration = match r["duration_ms"].as_u64() {
        Some(ms) => format!("{ms}ms"),
        None => "running".into(),
    };
    println!(
        "{:<36}  {:<16}  {:>6}  {:<22}  {:>5}  {:>9}  {}",
        s("request_id"),
        s("function"),
        s("status_code"),
        s("end_reason"),
        s("close_code"),
        duration,
        s("started_at")
    );
}

/// The human report, with its verdicts and the expected/got lines in colour when stdout is a
/// terminal (and `NO_COLOR` is not set): a failure must stand out in a long CI log read live.
fn colored(text: &str) -> String {
    use std::io::IsTerminal as _;
    if !std::io::stdout().is_terminal() || std::env::var_os("NO_COLOR").is_some() {
        return text.to_owned();
    }
    const GREEN: &str = "\x1b[32m";
    const RED: &str = "\x1b[31m";
    const RESET: &str = "\x1b[0m";
    text.lines()
        .map(|line| {
            let trimmed = line.trim_start();
            let colour = if trimmed.starts_with("PASS ") || trimmed.starts_with("expected:") {
                Some(GREEN)
            } else if trimmed.starts_with("FAIL ") || trimmed.starts_with("got:") {
                Some(RED)
            } else {
                None
            };
            match colour {
                Some(c) => format!("{c}{line}{RESET}\n"),
                None => format!("{line}\n"),
            }
        })
        .collect()
}
