//! The processes a benchmark talks to: scfsim, nginx, websocketd, and fixtures started by the
//! benchmark itself. Each is stopped when its handle is dropped.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

/// Keep scfsim's and nginx's temporary directories (config, data, logs) for inspection.
pub static KEEP_DIRS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn temp_dir(prefix: &str) -> Result<TempDir> {
    let keep = KEEP_DIRS.load(std::sync::atomic::Ordering::Relaxed);
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .disable_cleanup(keep)
        .tempdir()?;
    if keep {
        eprintln!("scfsim-bench: keeping {}", dir.path().display());
    }
    Ok(dir)
}

/// Bound on waiting for a server to start listening.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// Where the benchmark finds its programs.
#[derive(Debug)]
pub struct Tools {
    pub scfsim: PathBuf,
    pub fixture: PathBuf,
    /// The error says why when not installed: that column is skipped.
    pub nginx: Result<PathBuf>,
    pub websocketd: Result<PathBuf>,
}

/// `name` on PATH or in one of `extra` directories.
pub fn find_program(name: &str, extra: &[&str]) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "`{name}` is not installed (apt-get install {name}, or scripts/bench.sh)"
            )
        })
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A directory next to this executable (target/release when built with `--release`).
pub fn own_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A TCP port that nothing listens on right now.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).context("binding port 0")?;
    Ok(listener.local_addr()?.port())
}

pub fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Polls a TCP connect to `addr` every 100 µs until it is accepted, for at most `bound`; the
/// connection is returned (blocking, each attempt too, so it may run on a blocking thread: it
/// never outlives `bound` by more than a moment).
pub fn poll_connect(addr: SocketAddr, bound: Duration) -> std::io::Result<std::net::TcpStream> {
    let deadline = Instant::now() + bound;
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match std::net::TcpStream::connect_timeout(&addr, left) {
            // Polling a port of the ephemeral range that nothing listens on yet can connect the
            // socket to itself (TCP simultaneous open, source port = destination port).
            Ok(s) if s.local_addr().ok() == s.peer_addr().ok() => drop(s),
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("nothing listens on {addr}"),
            ));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Waits until something accepts TCP connections on `addr` (async, 100 µs polls).
pub async fn wait_listening(addr: SocketAddr, bound: Duration) -> Result<()> {
    tokio::task::spawn_blocking(move || poll_connect(addr, bound).map(drop))
        .await?
        .with_context(|| format!("nothing listens on {addr}"))
}

/// Waits until `child` accepts TCP connections on `addr`; fails as soon as it exits.
async fn wait_child_listening(child: &mut Child, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + START_PATIENCE;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("it exited with {status}");
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("nothing listens on {addr} after {START_PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Kills `child` with SIGTERM, then SIGKILL if it has not exited within `grace`.
fn stop(child: &mut Child, grace: Duration) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Settings of the function that scfsim serves.
#[derive(Debug, Clone)]
pub struct ScfsimSettings {
    /// Per function and in total.
    pub max_instances: u32,
    pub idle_timeout: &'static str,
    /// The function's `provisioned_instances` (0: none, every connection starts its own).
    pub provisioned_instances: u32,
    /// What the bootstrap execs instead of the fixture (program and arguments).
    pub command: Option<Vec<String>>,
}

impl Default for ScfsimSettings {
    fn default() -> Self {
        ScfsimSettings {
            max_instances: 5000,
            idle_timeout: "300s",
            provisioned_instances: 0,
            command: None,
        }
    }
}

/// A running `scfsim serve` whose one function, `/echo`, is the fixture in echo mode.
pub struct Scfsim {
    child: Child,
    pub addr: SocketAddr,
    /// The admin API's address.
    pub admin: SocketAddr,
    /// The function's `scf_bootstrap`: `exec scfsim-fixture echo`.
    pub bootstrap: PathBuf,
    pub dir: TempDir,
}

impl Scfsim {
    pub fn start(tools: &Tools, settings: &ScfsimSettings) -> Result<Scfsim> {
        let dir = temp_dir("scfsim-bench-")?;
        let code_dir = dir.path().join("functions/echo");
        std::fs::create_dir_all(&code_dir)?;
        let command = match &settings.command {
            Some(command) => command.clone(),
            None => vec![tools.fixture.display().to_string(), "echo".into()],
        };
        let bootstrap = write_bootstrap(&code_dir, &command)?;
        let function = format!(
            "[[functions]]\n\
             name = \"echo\"\n\
             path = \"/echo\"\n\
             code_dir = {code_dir:?}\n\
             max_instances = {max}\n\
             idle_timeout = {idle:?}\n\
             execution_timeout = \"900s\"\n\
             provisioned_instances = {provisioned}\n",
            max = settings.max_instances,
            provisioned = settings.provisioned_instances,
            idle = settings.idle_timeout,
            code_dir = code_dir.display().to_string(),
        );
        Scfsim::serve(tools, dir, bootstrap, settings.max_instances, &function)
    }

    /// `scfsim serve` of these `[[functions]]` tables (`bootstrap` is only remembered).
    pub fn serve(
        tools: &Tools,
        dir: TempDir,
        bootstrap: PathBuf,
        max_total_instances: u32,
        functions: &str,
    ) -> Result<Scfsim> {
        let config = format!(
            "relaxed_limits = true\n\n\
             [gateway]\n\
             data_dir = \"data\"\n\
             max_total_instances = {max_total_instances}\n\n\
             [limits]\n\
             rate_limit_action = \"off\"\n\
             max_message_bytes = 262144\n\n\
             {functions}"
        );
        // A profiling run may compare settings (`[timeline] enabled = false`, say) without
        // changing what a plain run measures: scfsim's defaults, as users run it.
        let config = match std::env::var("SCFSIM_BENCH_EXTRA_CONFIG") {
            Ok(extra) => format!("{config}\n{extra}\n"),
            Err(_) => config,
        };
        let config_path = dir.path().join("scfsim.toml");
        std::fs::write(&config_path, config)?;
        let stderr = std::fs::File::create(dir.path().join("scfsim.stderr"))?;
        let mut cmd = Command::new(&tools.scfsim);
        // scfsim's default logging, as users run it, unless a profiling run asks for more.
        match std::env::var_os("SCFSIM_BENCH_RUST_LOG") {
            Some(filter) => cmd.env("RUST_LOG", filter),
            None => cmd.env_remove("RUST_LOG"),
        };
        let mut child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", tools.scfsim.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut head = Vec::new();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                let ready = line == "ready";
                head.push(line);
                if ready {
                    break;
                }
            }
            let _ = tx.send(head);
            // Keep draining so that scfsim never blocks on a full pipe.
            for _ in lines {}
        });
        let head = match rx.recv_timeout(START_PATIENCE) {
            Ok(head) if head.last().map(String::as_str) == Some("ready") => head,
            other => {
                stop(&mut child, Duration::from_secs(2));
                let log =
                    std::fs::read_to_string(dir.path().join("scfsim.stderr")).unwrap_or_default();
                bail!("scfsim did not print `ready` ({other:?}); its log:\n{log}");
            }
        };
        let find = |prefix: &str| -> Result<SocketAddr> {
            head.iter()
                .find_map(|l| l.strip_prefix(prefix))
                .with_context(|| format!("no `{prefix}` line in {head:?}"))?
                .parse()
                .context("listening address")
        };
        let addr = find("listening ws://")?;
        let admin = find("listening admin http://")?;
        Ok(Scfsim {
            child,
            addr,
            admin,
            bootstrap,
            dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("ws://{}/echo", self.addr)
    }

    /// Instance isolation as scfsim's log states it (namespaces or NONE).
    pub fn isolation(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("scfsim.stderr")).unwrap_or_default();
        if log.contains("instance isolation: namespaces") {
            "namespaces".into()
        } else if log.contains("instance isolation: NONE") {
            "none".into()
        } else {
            "unknown".into()
        }
    }

    /// `GET path` of the admin API, as JSON.
    pub async fn admin_get(&self, path: &str) -> Result<serde_json::Value> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(self.admin).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.admin
        );
        tcp.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        tokio::time::timeout(START_PATIENCE, tcp.read_to_end(&mut response))
            .await
            .context("the admin API did not answer")??;
        let response = String::from_utf8_lossy(&response);
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("an HTTP response without a body")?;
        anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
        serde_json::from_str(body).with_context(|| format!("GET {path}: not JSON: {body}"))
    }

    /// Waits until scfsim has no instance left (bounded).
    pub async fn quiesce(&self) -> bool {
        crate::procfs::wait_childless(self.pid(), Duration::from_secs(30)).await
    }
}

impl Drop for Scfsim {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(10));
    }
}

/// The bootstrap scfsim runs, also spawned by the floor: `exec FIXTURE echo` (or `command`)
/// under `/bin/sh`.
fn write_bootstrap(code_dir: &Path, command: &[String]) -> Result<PathBuf> {
    let bootstrap = code_dir.join("scf_bootstrap");
    let quoted: Vec<String> = command
        .iter()
        .map(|word| format!("'{}'", word.replace('\'', r"'\''")))
        .collect();
    std::fs::write(
        &bootstrap,
        format!("#!/bin/sh\nexec {}\n", quoted.join(" ")),
    )?;
    std::fs::set_permissions(&bootstrap, std::fs::Permissions::from_mode(0o755))?;
    Ok(bootstrap)
}

/// nginx as a WebSocket reverse proxy: `/p/PORT` is proxied to `127.0.0.1:PORT`, so one nginx
/// fronts any number of one-connection fixtures.
pub struct Nginx {
    child: Child,
    pub port: u16,
    pub workers: &'static str,
    _dir: TempDir,
}

impl Nginx {
    pub async fn start(nginx: &Path) -> Result<Nginx> {
        let dir = temp_dir("scfsim-bench-nginx-")?;
        let port = free_port()?;
        let d = dir.path().display().to_string();
        let workers = "auto";
        let config = format!(
            r#"worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 20000;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    tcp_nodelay on;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location ~ ^/p/(\d+)$ {{
            proxy_pass http://127.0.0.1:$1;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
            proxy_busy_buffers_size 128k;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
    }}
}}
"#
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config)?;
        let child = Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", nginx.display()))?;
        let mut nginx = Nginx {
            child,
            port,
            workers,
            _dir: dir,
        };
        if let Err(e) = wait_child_listening(&mut nginx.child, localhost(port)).await {
            let log =
                std::fs::read_to_string(nginx._dir.path().join("error.log")).unwrap_or_default();
            bail!("nginx did not start listening ({e:#}); its error log: {log}");
        }
        Ok(nginx)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, fixture_port: u16) -> String {
        format!("ws://127.0.0.1:{}/p/{fixture_port}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(5));
    }
}

/// websocketd running `cat` per connection: each text message comes back as a line.
pub struct Websocketd {
    child: Child,
    pub port: u16,
}

impl Websocketd {
    pub async fn start(websocketd: &Path) -> Result<Websocketd> {
        let port = free_port()?;
        let child = Command::new(websocketd)
            .arg(format!("--port={port}"))
            .arg("--address=127.0.0.1")
            .arg("--loglevel=error")
            .arg("cat")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", websocketd.display()))?;
        let mut w = Websocketd { child, port };
        wait_child_listening(&mut w.child, localhost(port))
            .await
            .context("websocketd did not start listening")?;
        Ok(w)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Websocketd {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(5));
    }
}

/// A fixture (or its bootstrap) started by the benchmark on `port`.
pub fn spawn_fixture(program: &Path, args: &[&str], port: u16) -> Result<tokio::process::Child> {
    tokio::process::Command::new(program)
        .args(args)
        .env("FIXTURE_PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {}", program.display()))
}

/// Waits for fixtures to exit (they do once their connection has ended); kills stragglers.
pub async fn reap(children: Vec<tokio::process::Child>) {
    for mut child in children {
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}
