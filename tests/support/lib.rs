//! The one test harness of scfsim's end-to-end tests.
//!
//! [`Scfsim`] starts the real `scfsim` binary on port 0 with a generated config, reads its
//! `listening` lines, and talks to it as users do: a real WebSocket client ([`Client`]) on the
//! gateway, HTTP on the admin API. Functions are the multi-mode `scfsim-fixture` bootstrap
//! ([`Function::fixture`]), a bash script ([`Function::script`]) or an existing code directory
//! ([`Function::code_dir`]).
//!
//! Nothing here asserts on elapsed time: waits are bounded only so that a broken build fails
//! instead of hanging. Every wait has its bound here, and none can outlive it: a poll goes
//! through [`eventually`], a child process is killed when its wait gives up ([`stop_child`],
//! [`run`]), and no blocking call runs on tokio's blocking pool, which a test's runtime waits
//! for when it shuts down (so one stuck call there would hang the whole test binary).

pub mod browser;
pub mod procs;

pub use procs::children;

use std::fmt::Display;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use serde_json::json;

/// Bound on any single wait in a test; only reached when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Bound on building a function's code in a test (cargo, go, npm): minutes on a busy machine.
pub const BUILD_PATIENCE: Duration = Duration::from_secs(900);

/// Polls `check` until it answers `Ok`, for at most `patience` in all (a check that itself
/// hangs is cut off too); otherwise panics naming `what` and the last check's `Err`, which
/// says what was seen instead. Polls often at first, then every 100 ms.
pub async fn eventually<T, E, Fut>(what: &str, patience: Duration, check: impl FnMut() -> Fut) -> T
where
    E: Display,
    Fut: Future<Output = Result<T, E>>,
{
    poll(patience, check)
        .await
        .unwrap_or_else(|last| panic!("gave up waiting for {what} after {patience:?}; {last}"))
}

/// [`eventually`]'s loop: `Err` describes the last check when `patience` ran out.
async fn poll<T, E, Fut>(patience: Duration, mut check: impl FnMut() -> Fut) -> Result<T, String>
where
    E: Display,
    Fut: Future<Output = Result<T, E>>,
{
    let mut last = String::from("no check finished");
    let mut pause = Duration::from_millis(5);
    let polled = tokio::time::timeout(patience, async {
        loop {
            match check().await {
                Ok(value) => return value,
                Err(why) => last = format!("last check: {why}"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    })
    .await;
    polled.map_err(|_| last)
}

/// Stops a child process of a test: SIGTERM, up to `grace` for it to exit, then SIGKILL; it is
/// always reaped. Blocking but bounded, so that it also serves in `Drop`.
pub fn stop_child(child: &mut Child, grace: Duration) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    // SAFETY: kill(2) on our own, not yet reaped, child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(err) => panic!("waiting for child {}: {err}", child.id()),
        }
    }
    let _ = child.kill();
    // After SIGKILL the wait is bounded by the kernel, not by the child.
    child.wait().expect("reap the killed child")
}

/// Waits (bounded, without blocking the runtime) for a child that was asked to exit; kills it
/// and panics, naming `what`, if it does not exit within `patience`.
pub async fn exited(what: &str, child: &mut Child, patience: Duration) -> ExitStatus {
    let waited = poll(patience, || {
        let status = child.try_wait();
        async move {
            match status {
                Ok(Some(status)) => Ok(status),
                Ok(None) => Err("still running"),
                Err(_) => Err("try_wait failed"),
            }
        }
    })
    .await;
    match waited {
        Ok(status) => status,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {patience:?}: killed it")
        }
    }
}

/// Runs `cmd` to its end with stdin closed and its output captured, as `what` (for messages).
/// If it takes longer than `patience`, it and everything it started (its own process group)
/// are killed and the test fails: a stuck build fails the test instead of hanging the suite.
/// A command that cannot be started fails too, naming `install`, the command that installs it.
pub async fn run(
    what: &str,
    cmd: &mut tokio::process::Command,
    patience: Duration,
    install: &str,
) -> std::process::Output {
    let child = cmd
        .process_group(0)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("{what}: cannot start it ({err}); install it with `{install}`")
        });
    let pgid = child.id().expect("a child just spawned has a pid") as i32;
    match tokio::time::timeout(patience, child.wait_with_output()).await {
        Ok(out) => out.unwrap_or_else(|err| panic!("{what}: {err}")),
        Err(_) => {
            // SAFETY: killpg(2) on the process group this child leads.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
            panic!("{what} did not finish within {patience:?}: killed it")
        }
    }
}

/// stdout then stderr of a finished command, as text (for failure messages).
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Fails the test unless `cmd args` runs and succeeds: a tool the tests need is missing, and
/// `install` is the command that installs it (scripts/test-setup.sh runs them all).
pub fn require(what: &str, cmd: &str, args: &[&str], install: &str) {
    let out = Command::new(cmd).args(args).stdin(Stdio::null()).output();
    match out {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "{what} is missing here (`{cmd} {}` failed: {}); install it with `{install}` \
             (scripts/test-setup.sh installs everything the tests need)",
            args.join(" "),
            output_text(&out).trim()
        ),
        Err(err) => panic!(
            "{what} is missing here (`{cmd}`: {err}); install it with `{install}` \
             (scripts/test-setup.sh installs everything the tests need)"
        ),
    }
}

/// `target/<profile>`, where the test executable's directory (`deps/`) is.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps")
        .to_path_buf()
}

fn built_binary(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// The `scfsim` binary under test.
pub fn scfsim_bin() -> PathBuf {
    built_binary("scfsim")
}

/// The multi-mode fixture bootstrap.
pub fn fixture_bin() -> PathBuf {
    built_binary("scfsim-fixture")
}

/// The repository root (for the examples).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

enum Code {
    Script(String),
    Dir(PathBuf),
}

/// One `[[functions]]` entry of the generated config.
pub struct Function {
    name: String,
    path: String,
    code: Code,
    settings: Vec<(String, String)>,
}

impl Function {
    /// The fixture in `mode` (e.g. `["close-after", "1", "4001", "bye"]`), served on `/<name>`.
    pub fn fixture(name: &str, mode: &[&str]) -> Function {
        let args: Vec<String> = mode.iter().map(|a| shell_quote(a)).collect();
        Function::script(
            name,
            &format!(
                "exec {} {}",
                shell_quote(&fixture_bin().display().to_string()),
                args.join(" ")
            ),
        )
    }

    /// A bash bootstrap with this body, served on `/<name>`.
    pub fn script(name: &str, body: &str) -> Function {
        Function {
            name: name.into(),
            path: format!("/{name}"),
            code: Code::Script(format!("#!/bin/bash\n{body}\n")),
            settings: Vec::new(),
        }
    }

    /// An existing code directory (e.g. an example), served on `/<name>`.
    pub fn code_dir(name: &str, dir: PathBuf) -> Function {
        Function {
            name: name.into(),
            path: format!("/{name}"),
            code: Code::Dir(dir),
            settings: Vec::new(),
        }
    }

    /// A raw TOML setting of this function, e.g. `.set("idle_timeout", "\"1s\"")`.
    pub fn set(mut self, key: &str, toml_value: &str) -> Function {
        self.settings.push((key.into(), toml_value.into()));
        self
    }

    pub fn path(mut self, path: &str) -> Function {
        self.path = path.into();
        self
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).expect("chown");
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path).expect("read dir") {
            chown_tree(&entry.expect("dir entry").path(), uid, gid);
        }
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// How long one test's scfsim may live. Past it, the test is stuck in a wait without a bound
/// of its own: [`Watchdog`] then kills scfsim, which ends every wait on it, and if the test is
/// still stuck after that, ends the test binary, so that a run fails instead of hanging.
pub const LIFETIME: Duration = Duration::from_secs(600);

/// Watches one [`Scfsim`] for [`LIFETIME`]; disarmed when dropped (with the `Scfsim`).
struct Watchdog {
    _disarm: std::sync::mpsc::Sender<()>,
    /// scfsim's pid while it is ours to kill (0 once reaped, so a reused pid is safe).
    pid: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl Watchdog {
    fn new(pid: u32) -> Watchdog {
        use std::sync::atomic::Ordering;
        use std::sync::mpsc::RecvTimeoutError;
        let (disarm, disarmed) = std::sync::mpsc::channel::<()>();
        let pid = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(pid));
        let watched = pid.clone();
        // libtest runs each test on a thread named after it.
        let test = std::thread::current()
            .name()
            .unwrap_or("a test")
            .to_string();
        std::thread::spawn(move || {
            if disarmed.recv_timeout(LIFETIME) != Err(RecvTimeoutError::Timeout) {
                return;
            }
            let pid = watched.swap(0, Ordering::SeqCst);
            eprintln!(
                "{test}: its scfsim (pid {pid}) is still running after {LIFETIME:?}: the test is \
                 stuck in an unbounded wait; killing scfsim to end it"
            );
            if pid != 0 {
                // SAFETY: kill(2) on scfsim's pid, which is not reaped yet (swapped to 0 then).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            if disarmed.recv_timeout(PATIENCE) == Err(RecvTimeoutError::Timeout) {
                eprintln!("{test}: still stuck {PATIENCE:?} after that: ending the test binary");
                std::process::exit(101);
            }
        });
        Watchdog {
            _disarm: disarm,
            pid,
        }
    }

    /// scfsim is about to be reaped: its pid is no longer ours to kill.
    fn reaped(&self) {
        self.pid.store(0, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A running `scfsim serve`, killed when dropped.
pub struct Scfsim {
    child: Option<Child>,
    watchdog: Watchdog,
    pub ws: String,
    /// `wss://IP:PORT` when started with `Options::tls`.
    pub wss: Option<String>,
    pub admin: String,
    pub dir: PathBuf,
    _tmp: Option<TempDir>,
    stderr: PathBuf,
}

/// How a test wants scfsim started.
#[derive(Default)]
pub struct Options {
    /// Extra environment for the scfsim process (to prove it does not leak into instances).
    pub env: Vec<(String, String)>,
    /// Reuse this directory (config and data) instead of a fresh one: a restart.
    pub dir: Option<PathBuf>,
    /// Extra raw TOML settings of `[gateway]`, e.g. `("max_total_instances", "5")`.
    pub gateway: Vec<(String, String)>,
    /// Raw TOML appended to the config, e.g. a `[runtimes]` table.
    pub extra_toml: String,
    /// Also serve wss:// on a free port (`Scfsim::wss`).
    pub tls: bool,
    /// The ws:// listen address instead of 127.0.0.1:0 (port 0 is still best).
    pub listen: Option<String>,
    /// Run scfsim as this user and group instead of root (its own copy of the binary, in `dir`,
    /// which is handed to that user).
    pub run_as: Option<(u32, u32)>,
    /// Serve this existing config file (e.g. the repository's own) instead of writing one;
    /// the functions passed to `start_with` are then ignored.
    pub config: Option<PathBuf>,
}

impl Scfsim {
    pub async fn start(functions: Vec<Function>) -> Scfsim {
        Scfsim::start_with(functions, Options::default()).await
    }

    pub async fn start_with(functions: Vec<Function>, options: Options) -> Scfsim {
        let (tmp, dir) = match options.dir {
            Some(dir) => (None, dir),
            None => {
                let tmp = tempfile::tempdir().expect("temp dir");
                let dir = tmp.path().to_path_buf();
                (Some(tmp), dir)
            }
        };
        let config = match &options.config {
            Some(config) => config.clone(),
            None => {
                if !functions.is_empty() {
                    write_config(&dir, &functions, &options.gateway, &options.extra_toml);
                }
                dir.join("scfsim.toml")
            }
        };
        let stderr = dir.join("scfsim.stderr");
        let stderr_file = std::fs::File::create(&stderr).expect("stderr file");
        let program = match options.run_as {
            Some((uid, gid)) => {
                // A checkout under a private directory would be out of that user's reach.
                let copy = dir.join("scfsim");
                std::fs::copy(scfsim_bin(), &copy).expect("copy scfsim");
                chown_tree(&dir, uid, gid);
                copy
            }
            None => scfsim_bin(),
        };
        let mut cmd = Command::new(program);
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .current_dir(&dir)
            // A test's own build settings are not the instances' business unless it says so.
            .env_remove("CARGO_TARGET_DIR")
            .arg("--listen")
            .arg(options.listen.as_deref().unwrap_or("127.0.0.1:0"))
            .args(["--admin-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(if options.tls {
                &["--tls-listen", "127.0.0.1:0"][..]
            } else {
                &[][..]
            })
            .env("RUST_LOG", "info,scfsim_gateway=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr_file);
        if let Some((uid, gid)) = options.run_as {
            use std::os::unix::process::CommandExt;
            // SAFETY: setgroups/setgid/setuid are raw system calls, safe between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn scfsim");
        let stdout = child.stdout.take().expect("piped stdout");
        // A plain thread, not tokio's blocking pool: if scfsim never says `ready`, the thread
        // ends when scfsim is killed below (its stdout closes) instead of holding the runtime.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let done = line == "ready";
                lines.push(line);
                if done {
                    break;
                }
            }
            let _ = tx.send(lines);
        });
        let lines = match tokio::time::timeout(PATIENCE, rx).await {
            Ok(Ok(lines)) => lines,
            Ok(Err(_)) => panic!("the reader of scfsim's stdout died"),
            Err(_) => {
                let status = stop_child(&mut child, Duration::ZERO);
                panic!(
                    "scfsim did not print `ready` within {PATIENCE:?} (killed: {status}); stderr:\n{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                )
            }
        };
        let addr = |prefix: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_else(|| {
                    panic!(
                        "no `{prefix}` line in {lines:?}; stderr: {}",
                        std::fs::read_to_string(&stderr).unwrap_or_default()
                    )
                })
                .to_string()
        };
        let ws = format!("ws://{}", addr("listening ws://"));
        let admin = format!("http://{}", addr("listening admin http://"));
        let wss = lines
            .iter()
            .find_map(|l| l.strip_prefix("listening wss://"))
            .map(|a| format!("wss://{a}"));
        Scfsim {
            watchdog: Watchdog::new(child.id()),
            child: Some(child),
            ws,
            wss,
            admin,
            dir,
            _tmp: tmp,
            stderr,
        }
    }

    /// A new scfsim on the config and data a stopped one left in `dir`.
    pub async fn reopen(dir: PathBuf) -> Scfsim {
        Scfsim::start_with(
            vec![],
            Options {
                dir: Some(dir),
                ..Options::default()
            },
        )
        .await
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// scfsim's own log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.ws)
    }

    /// Connects and expects the upgrade to succeed.
    pub async fn connect(&self, path: &str) -> Client {
        self.connect_with(path, &[])
            .await
            .unwrap_or_else(|err| panic!("connect {path}: {err}\nscfsim log:\n{}", self.log()))
    }

    /// Connects with extra request headers; the error carries a refused upgrade's response.
    pub async fn connect_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, WsError> {
        let mut req = self.url(path).into_client_request()?;
        for (k, v) in headers {
            req.headers_mut().append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                v.parse().expect("header value"),
            );
        }
        let (ws, response) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(req))
            .await
            .expect("handshake finished")?;
        let request_id = response
            .headers()
            .get("x-scf-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("101 carries X-Scf-Request-Id")
            .to_string();
        Ok(Client {
            ws,
            request_id,
            response,
        })
    }

    /// GET on the admin API, as JSON; panics on a non-200.
    pub async fn get(&self, path: &str) -> Value {
        let body = tokio::time::timeout(
            PATIENCE,
            scfsim_client::get(&format!("{}{path}", self.admin)),
        )
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no answer within {PATIENCE:?}"))
        .unwrap_or_else(|err| panic!("GET {path}: {err}"));
        serde_json::from_slice(&body).expect("admin API answers JSON")
    }

    /// GET on the admin API, returning the status and body whatever the status.
    pub async fn get_status(&self, path: &str) -> (u16, String) {
        self.admin_request("GET", path).await
    }

    /// Any bodiless request to the admin API: (status, body).
    pub async fn admin_request(&self, method: &str, path: &str) -> (u16, String) {
        let (head, body) = raw_http(
            self.admin.trim_start_matches("http://"),
            &format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        (status_of(&head), body)
    }

    /// Polls `check` as [`eventually`] does; a failure also shows scfsim's log.
    pub async fn eventually<T, E, Fut>(&self, what: &str, check: impl FnMut() -> Fut) -> T
    where
        E: Display,
        Fut: Future<Output = Result<T, E>>,
    {
        poll(PATIENCE, check).await.unwrap_or_else(|last| {
            panic!(
                "gave up waiting for {what} after {PATIENCE:?}; {last}\nscfsim log:\n{}",
                self.log()
            )
        })
    }

    /// The finished record of `request_id`: waits (bounded) until the invocation has ended.
    pub async fn record(&self, request_id: &str) -> Value {
        self.eventually(&format!("invocation {request_id} to finish"), || async {
            let (status, body) = self
                .get_status(&format!("/api/invocations/{request_id}"))
                .await;
            if status == 200 {
                let record: Value = serde_json::from_str(&body).expect("record JSON");
                if !record["status_code"].is_null() {
                    return Ok(record);
                }
            }
            Err(format!("answer {status} {body}"))
        })
        .await
    }

    /// The lines an invocation's instance printed, as the admin API keeps them.
    pub async fn log_lines(&self, request_id: &str) -> Vec<String> {
        let logs = self
            .get(&format!("/api/invocations/{request_id}/logs"))
            .await;
        logs["lines"]
            .as_array()
            .expect("logs carry `lines`")
            .iter()
            .map(|l| {
                l["line"]
                    .as_str()
                    .expect("each line is a string")
                    .to_string()
            })
            .collect()
    }

    /// The newest finished record of `function`, for invocations that never got a 101.
    pub async fn last_record(&self, function: &str) -> Value {
        self.eventually(&format!("a finished invocation of {function}"), || async {
            let list = self
                .get(&format!("/api/invocations?function={function}&limit=1"))
                .await;
            match list.as_array().and_then(|a| a.first()) {
                Some(record) if !record["status_code"].is_null() => Ok(record.clone()),
                _ => Err(format!("listed {list}")),
            }
        })
        .await
    }

    /// Sends `signal` to scfsim and waits (bounded) for it to exit.
    pub async fn signal(&mut self, signal: i32) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        self.watchdog.reaped();
        exited("scfsim", &mut child, PATIENCE).await
    }

    /// A raw HTTP request to the gateway port: (response head, body).
    pub async fn raw(&self, request: &str) -> (String, String) {
        raw_http(self.ws.trim_start_matches("ws://"), request).await
    }
}

impl Drop for Scfsim {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM so that scfsim stops its instances; SIGKILL is tested on purpose elsewhere.
            self.watchdog.reaped();
            stop_child(&mut child, PATIENCE);
        }
    }
}

fn write_config(dir: &Path, functions: &[Function], gateway: &[(String, String)], extra: &str) {
    let mut toml = String::from("relaxed_limits = true\n\n[gateway]\ndata_dir = \"data\"\n");
    for (k, v) in gateway {
        toml.push_str(&format!("{k} = {v}\n"));
    }
    toml.push('\n');
    for f in functions {
        let code_dir = match &f.code {
            Code::Dir(path) => path.clone(),
            Code::Script(body) => {
                let code_dir = dir.join("functions").join(&f.name);
                std::fs::create_dir_all(&code_dir).expect("code dir");
                let bootstrap = code_dir.join("scf_bootstrap");
                std::fs::write(&bootstrap, body).expect("write bootstrap");
                std::fs::set_permissions(&bootstrap, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod bootstrap");
                code_dir
            }
        };
        toml.push_str(&format!(
            "[[functions]]\nname = {:?}\npath = {:?}\ncode_dir = {:?}\n",
            f.name,
            f.path,
            code_dir.display().to_string()
        ));
        for (k, v) in &f.settings {
            toml.push_str(&format!("{k} = {v}\n"));
        }
        toml.push('\n');
    }
    toml.push_str(extra);
    std::fs::write(dir.join("scfsim.toml"), toml).expect("write config");
}

async fn raw_http(addr: &str, request: &str) -> (String, String) {
    let mut stream = tokio::time::timeout(PATIENCE, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect to {addr}: not within {PATIENCE:?}"))
        .unwrap_or_else(|err| panic!("connect to {addr}: {err}"));
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut buf = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut buf))
        .await
        .expect("response within patience")
        .expect("read response");
    let text = String::from_utf8_lossy(&buf).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) => (head.to_string(), body.to_string()),
        None => (text, String::new()),
    }
}

/// The status code of a response head.
pub fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"))
}

/// A refused upgrade's status and body.
pub fn refused(err: WsError) -> (u16, http::HeaderMap, String) {
    match err {
        WsError::Http(resp) => (
            resp.status().as_u16(),
            resp.headers().clone(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        other => panic!("expected an HTTP answer, got {other}"),
    }
}

/// A WebSocket client connected through scfsim.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub request_id: String,
    pub response: http::Response<Option<Vec<u8>>>,
}

impl Client {
    /// Sends a message (bounded: a peer that stops reading fails the test).
    pub async fn send(&mut self, msg: Message) {
        tokio::time::timeout(PATIENCE, self.ws.send(msg))
            .await
            .expect("the message sent within patience")
            .expect("send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send(Message::text(text)).await;
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.send(Message::binary(data)).await;
    }

    /// The next frame as the stream gives it (`None` once the connection ended), within
    /// [`PATIENCE`].
    pub async fn next_frame(&mut self) -> Option<Result<Message, WsError>> {
        tokio::time::timeout(PATIENCE, self.ws.next())
            .await
            .expect("a frame (or the end) within patience")
    }

    /// The next text or binary message (pings and pongs are skipped).
    pub async fn next_message(&mut self) -> Message {
        loop {
            let msg = self
                .next_frame()
                .await
                .expect("connection still open")
                .expect("a valid frame");
            if !matches!(msg, Message::Ping(_) | Message::Pong(_)) {
                return msg;
            }
        }
    }

    pub async fn expect_text(&mut self, expected: &str) {
        match self.next_message().await {
            Message::Text(t) => assert_eq!(t.as_str(), expected),
            other => panic!("expected text {expected:?}, got {other:?}"),
        }
    }

    pub async fn expect_binary(&mut self, expected: &[u8]) {
        match self.next_message().await {
            Message::Binary(b) => assert_eq!(&b[..], expected),
            other => panic!("expected binary, got {other:?}"),
        }
    }

    /// Reads until the peer's close frame; returns its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.next_message().await {
                Message::Close(Some(frame)) => {
                    return (frame.code.into(), frame.reason.to_string())
                }
                Message::Close(None) => return (1005, String::new()),
                _ => continue,
            }
        }
    }

    /// Starts the closing handshake and waits for the answer.
    pub async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        tokio::time::timeout(PATIENCE, self.ws.close(Some(frame)))
            .await
            .expect("the close frame sent within patience")
            .expect("send close");
        self.finish().await;
    }

    /// Reads (and drops) whatever still comes until the connection ends, for at most
    /// [`PATIENCE`] in all: after a close frame, this lets the closing handshake complete.
    pub async fn finish(&mut self) {
        let _ = tokio::time::timeout(PATIENCE, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// A network namespace of the test's own, joined to the host by a veth pair: a client in it
/// reaches scfsim over a link the test can cut, as a cable is pulled: no FIN, no RST, silence.
/// Uses 192.0.2.0/24 (TEST-NET-1, never routed); removed on drop.
pub struct TestNet {
    name: String,
    host_if: String,
    pub host_addr: std::net::Ipv4Addr,
}

impl TestNet {
    /// `tag` (0..64) keeps the tests of one binary apart.
    pub fn create(tag: u8) -> TestNet {
        let id = std::process::id() % 100_000;
        let name = format!("scfsim-test-{id}-{tag}");
        let host_if = format!("st{id}h{tag}");
        let peer_if = format!("st{id}c{tag}");
        let host_addr = std::net::Ipv4Addr::new(192, 0, 2, 4 * tag + 1);
        let peer_addr = std::net::Ipv4Addr::new(192, 0, 2, 4 * tag + 2);
        let net = TestNet {
            name: name.clone(),
            host_if: host_if.clone(),
            host_addr,
        };
        for args in [
            format!("netns add {name}"),
            format!("link add {host_if} type veth peer name {peer_if}"),
            format!("link set {peer_if} netns {name}"),
            format!("addr add {host_addr}/30 dev {host_if}"),
            format!("link set {host_if} up"),
            format!("-n {name} addr add {peer_addr}/30 dev {peer_if}"),
            format!("-n {name} link set {peer_if} up"),
            format!("-n {name} link set lo up"),
        ] {
            ip(&args).unwrap_or_else(|err| panic!("ip {args}: {err}"));
        }
        net
    }

    /// The namespace's own address (its end of the veth pair).
    pub fn peer_addr(&self) -> std::net::Ipv4Addr {
        let [a, b, c, d] = self.host_addr.octets();
        std::net::Ipv4Addr::new(a, b, c, d + 1)
    }

    /// Runs `f` on a thread inside the namespace: sockets it makes stay in it.
    fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    use std::os::fd::AsRawFd;
                    let ns = std::fs::File::open(&path).expect("netns file");
                    // SAFETY: setns on this (scoped) thread only, with a valid descriptor.
                    let joined = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(joined, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .expect("thread in the test namespace")
        })
    }

    /// A TCP connection made from inside the namespace.
    pub fn connect(&self, addr: std::net::SocketAddr) -> std::net::TcpStream {
        self.inside(|| std::net::TcpStream::connect_timeout(&addr, PATIENCE).expect("connect"))
    }

    /// A TCP listener inside the namespace, on its own address: a server "out there". Its
    /// `accept()` gives up after [`PATIENCE`] (SO_RCVTIMEO), and so do reads of the
    /// connections it accepts: a test blocked in either cannot hang the test binary.
    pub fn listen(&self) -> std::net::TcpListener {
        let addr = std::net::SocketAddr::from((self.peer_addr(), 0));
        let listener = self.inside(|| std::net::TcpListener::bind(addr).expect("bind"));
        socket2::SockRef::from(&listener)
            .set_read_timeout(Some(PATIENCE))
            .expect("SO_RCVTIMEO on the listener");
        listener
    }

    /// Cuts the link: both ends of the veth pair go, and with them every route between.
    pub fn pull_plug(&self) {
        ip(&format!("link del {}", self.host_if)).expect("ip link del");
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = ip(&format!("link del {}", self.host_if));
        let _ = ip(&format!("netns del {}", self.name));
    }
}

fn ip(args: &str) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Server-sent events as a browser's EventSource reads them: `GET` over HTTP/1.1 (hyper
/// decodes the chunked body), events parsed by the `eventsource-stream` library. The tests'
/// only client of `/api/events`. Every read is bounded by [`PATIENCE`].
pub struct EventStream {
    /// The response head (status and headers), for checks of the stream's framing.
    pub head: http::response::Parts,
    events: std::pin::Pin<
        Box<
            dyn futures_util::Stream<
                    Item = Result<
                        eventsource_stream::Event,
                        eventsource_stream::EventStreamError<hyper::Error>,
                    >,
                > + Send,
        >,
    >,
}

impl EventStream {
    /// Opens `url` (e.g. `{admin}/api/events`). The head arrives once the server has
    /// subscribed: nothing that happens after `open` returns can be missed.
    pub async fn open(url: &str) -> EventStream {
        use eventsource_stream::Eventsource;
        use http_body_util::{BodyExt, Empty};
        let request = hyper::Request::get(url)
            .header(http::header::ACCEPT, "text/event-stream")
            .body(Empty::<bytes::Bytes>::new())
            .expect("event stream request");
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Empty<bytes::Bytes>>();
        let response = tokio::time::timeout(PATIENCE, client.request(request))
            .await
            .unwrap_or_else(|_| panic!("GET {url}: no answer within {PATIENCE:?}"))
            .unwrap_or_else(|err| panic!("GET {url}: {err}"));
        let (head, body) = response.into_parts();
        EventStream {
            head,
            events: Box::pin(body.into_data_stream().eventsource()),
        }
    }

    /// The next event: (name, JSON data). Comments (keep-alives) are not events.
    pub async fn next(&mut self) -> (String, Value) {
        let event = tokio::time::timeout(PATIENCE, self.events.next())
            .await
            .unwrap_or_else(|_| panic!("no event within {PATIENCE:?}"))
            .expect("the event stream ended")
            .unwrap_or_else(|err| panic!("a malformed event stream: {err}"));
        let data = serde_json::from_str(&event.data).unwrap_or_else(|err| {
            panic!(
                "event {}: data is not JSON ({err}): {}",
                event.event, event.data
            )
        });
        (event.event, data)
    }

    /// Reads (bounded) until the stream ends; panics on an event, or on a body that breaks off
    /// instead of ending (a chunked body's last chunk).
    pub async fn expect_end(&mut self) {
        match tokio::time::timeout(PATIENCE, self.events.next()).await {
            Err(_) => panic!("the event stream did not end within {PATIENCE:?}"),
            Ok(None) => {}
            Ok(Some(Ok(event))) => panic!("expected the end, got the event {event:?}"),
            Ok(Some(Err(err))) => panic!("the event stream broke off: {err}"),
        }
    }
}

// ---- scfsim test -------------------------------------------------------------------------------

/// Writes a config for `functions` into `dir` (as [`Scfsim::start`] does) with `top` (top-level
/// keys such as `time_scale = 100`) in place of `relaxed_limits = true`; returns its path.
pub fn write_config_file(dir: &Path, functions: &[Function], top: &str) -> PathBuf {
    write_config(dir, functions, &[], "");
    let path = dir.join("scfsim.toml");
    let text = std::fs::read_to_string(&path).expect("read config");
    let text = text.replacen("relaxed_limits = true\n", &format!("{top}\n"), 1);
    std::fs::write(&path, text).expect("write config");
    path
}

/// What `scfsim test` did.
pub struct TestRun {
    /// The exit code (-1: killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl TestRun {
    /// stdout as the JSON document of `--json`.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|err| {
            panic!(
                "stdout of scfsim test --json is not JSON ({err}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs `scfsim test ARGS` in `cwd` to its end, bounded by `patience` (then killed, and the
/// test fails).
pub async fn scfsim_test(cwd: &Path, args: &[&str], patience: Duration) -> TestRun {
    let mut cmd = tokio::process::Command::new(scfsim_bin());
    cmd.arg("test").args(args).current_dir(cwd);
    let out = run("scfsim test", &mut cmd, patience, "cargo build -p scfsim").await;
    TestRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What [`run_bounded`] saw: the exit status (`None`: not started, or killed at the bound; the
/// reason is in `stderr` then) and the output.
#[derive(Debug)]
pub struct BoundedOutput {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl BoundedOutput {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

impl std::fmt::Display for BoundedOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(status) => writeln!(f, "exit: {status}")?,
            None => writeln!(f, "exit: none (not started, or killed at its time bound)")?,
        }
        // The ends of long outputs (a build's) are what says why it failed.
        let tail = |s: &str| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(60)..].join("\n")
        };
        writeln!(f, "stdout (end):\n{}", tail(&self.stdout))?;
        write!(f, "stderr (end):\n{}", tail(&self.stderr))
    }
}

/// Runs `cmd` (stdin closed, output kept) and waits for it at most `limit`; past that, kills
/// its whole process group (a Compose run's own children, e.g. `docker build`, too). Blocking:
/// call it from `spawn_blocking` in async code.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> BoundedOutput {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().expect("temp dir for a command's output");
    let out = std::fs::File::create(dir.path().join("stdout")).expect("stdout file");
    let err = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
    let mut child = match cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            return BoundedOutput {
                status: None,
                stdout: String::new(),
                stderr: format!("could not start {cmd:?}: {e}"),
            }
        }
    };
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        match child.try_wait().expect("wait for a command") {
            Some(status) => break Some(status),
            None if std::time::Instant::now() >= deadline => {
                // SAFETY: kill(2) on the process group this function made (pgid = child's pid).
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                let _ = std::fs::write(
                    dir.path().join("stderr.bound"),
                    format!("\nkilled after {limit:?}: {cmd:?}\n"),
                );
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let read = |name: &str| {
        String::from_utf8_lossy(&std::fs::read(dir.path().join(name)).unwrap_or_default())
            .into_owned()
    };
    BoundedOutput {
        status,
        stdout: read("stdout"),
        stderr: read("stderr") + &read("stderr.bound"),
    }
}

/// A free TCP port on 127.0.0.1 (free when this returns; for a program that cannot take 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}
