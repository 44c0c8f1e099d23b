//! The one test harness of scfsim's end-to-end tests.
//!
//! [`Scfsim`] starts the real `scfsim` binary on port 0 with a generated config, reads its
//! `listening` lines, and talks to it as users do: a real WebSocket client ([`Client`]) on the
//! gateway, HTTP on the admin API. Functions are the multi-mode `scfsim-fixture` bootstrap
//! ([`Function::fixture`]), a bash script ([`Function::script`]) or an existing code directory
//! ([`Function::code_dir`]).
//!
//! Nothing here asserts on elapsed time: waits are bounded only so that a broken build fails
//! instead of hanging.

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

/// The `/proc/<pid>/stat` lines of the children of `pid`, zombies included.
pub fn children(pid: u32) -> Vec<String> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid ...
            let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            after.split_whitespace().nth(1) == Some(&pid.to_string())
        })
        .collect()
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

/// A running `scfsim serve`, killed when dropped.
pub struct Scfsim {
    child: Option<Child>,
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
        let lines = tokio::task::spawn_blocking(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let line = line.expect("scfsim stdout");
                let done = line == "ready";
                lines.push(line);
                if done {
                    break;
                }
            }
            lines
        });
        let lines = tokio::time::timeout(PATIENCE, lines)
            .await
            .expect("scfsim printed `ready`")
            .expect("reader thread");
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
        let body = scfsim::client::get(&format!("{}{path}", self.admin))
            .await
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

    /// The finished record of `request_id`: waits (bounded) until the invocation has ended.
    pub async fn record(&self, request_id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (status, body) = self
                .get_status(&format!("/api/invocations/{request_id}"))
                .await;
            if status == 200 {
                let record: Value = serde_json::from_str(&body).expect("record JSON");
                if !record["status_code"].is_null() {
                    return record;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "invocation {request_id} never finished (last answer {status} {body})\nscfsim log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let list = self
                .get(&format!("/api/invocations?function={function}&limit=1"))
                .await;
            if let Some(record) = list.as_array().and_then(|a| a.first()) {
                if !record["status_code"].is_null() {
                    return record.clone();
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no finished invocation of {function}\nscfsim log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` to scfsim and waits for it to exit.
    pub async fn signal(&mut self, signal: i32) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        tokio::task::spawn_blocking(move || child.wait().expect("wait for scfsim"))
            .await
            .expect("waiter")
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
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
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
    let mut stream = TcpStream::connect(addr).await.expect("connect");
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
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send text");
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws
            .send(Message::binary(data))
            .await
            .expect("send binary");
    }

    /// The next text or binary message (pings and pongs are skipped).
    pub async fn next_message(&mut self) -> Message {
        loop {
            let msg = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a message within patience")
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
        self.ws
            .close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            }))
            .await
            .expect("send close");
        while let Ok(Some(Ok(_))) = tokio::time::timeout(PATIENCE, self.ws.next()).await {}
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

    /// A TCP listener inside the namespace, on its own address: a server "out there".
    pub fn listen(&self) -> std::net::TcpListener {
        let addr = std::net::SocketAddr::from((self.peer_addr(), 0));
        self.inside(|| std::net::TcpListener::bind(addr).expect("bind"))
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
