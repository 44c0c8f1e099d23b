//! Every runtime end to end: scaffold into a temp dir, install or build the function's
//! dependencies the way `next_steps` says (where this machine has the toolchain), serve it with
//! the real `scfsim` binary, send "hello" and expect it back, close with 1000, and read the 200
//! record from the admin API. A runtime whose toolchain or library is missing is skipped with a
//! visible `SKIPPED:` line.
//!
//! Nothing here asserts on elapsed time: waits are bounded only so that a broken build fails
//! instead of hanging.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use scfsim_init::{scaffold, Runtime, Scaffolded};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// Bound on any single wait; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(60);

/// `target/<profile>`, where the test executable's directory (`deps/`) is.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps")
        .to_path_buf()
}

fn scfsim_bin() -> PathBuf {
    let path = profile_dir().join("scfsim");
    assert!(
        path.exists(),
        "{} is not built: run the tests with `cargo test --workspace` (or `cargo build -p scfsim` \
         first)",
        path.display()
    );
    path
}

/// Says why a test did nothing. Written to stderr directly, not with `eprintln!`, which the test
/// harness captures (and shows only for failures): a skip must be visible in every run.
fn skip(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {why}");
}

/// True if `cmd args` runs and succeeds.
fn succeeds(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs a build or install command in `dir` (off the async runtime): (success, stdout + stderr).
async fn run_in(dir: &Path, cmd: &str, args: &[&str], env: &[(&str, &Path)]) -> (bool, String) {
    let mut command = Command::new(cmd);
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let what = format!("{cmd} {}", args.join(" "));
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("runner thread")
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The last lines of a tool's output, for a message.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A scaffolded function in its own temp dir.
struct Scaffold {
    tmp: TempDir,
    dir: PathBuf,
    name: String,
    done: Scaffolded,
}

fn scaffold_one(runtime: Runtime) -> Scaffold {
    let tmp = tempfile::tempdir().expect("temp dir");
    let name = format!("hello-{runtime}");
    let dir = tmp.path().join(&name);
    let done = scaffold(&dir, &name, runtime).expect("scaffold");
    Scaffold {
        tmp,
        dir,
        name,
        done,
    }
}

/// A running `scfsim serve` on port 0; SIGKILLed if a test panics before `stop`.
struct Scfsim {
    child: Option<Child>,
    ws: String,
    admin: String,
    stderr: PathBuf,
}

impl Scfsim {
    /// Serves `config_block` with a config and data dir in `dir`.
    async fn start(dir: &Path, config_block: &str) -> Scfsim {
        let data = dir.join("data");
        let config = dir.join("scfsim.toml");
        std::fs::write(
            &config,
            format!(
                "relaxed_limits = true\n\n[gateway]\ndata_dir = {}\n\n{config_block}",
                toml_string(&data)
            ),
        )
        .expect("write config");
        let stderr = dir.join("scfsim.stderr");
        let mut child = Command::new(scfsim_bin())
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn scfsim");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut scfsim = Scfsim {
            child: Some(child),
            ws: String::new(),
            admin: String::new(),
            stderr,
        };
        let lines = tokio::task::spawn_blocking(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let ready = line == "ready";
                lines.push(line);
                if ready {
                    break;
                }
            }
            lines
        });
        let lines = tokio::time::timeout(PATIENCE, lines)
            .await
            .expect("scfsim printed `ready` in time")
            .expect("reader thread");
        let addr = |prefix: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(prefix))
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    panic!(
                        "no `{prefix}` line in {lines:?}; scfsim's log:\n{}",
                        scfsim.log()
                    )
                })
        };
        let ws = format!("ws://{}", addr("listening ws://"));
        let admin = addr("listening admin http://");
        scfsim.ws = ws;
        scfsim.admin = admin;
        scfsim
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// GET on the admin API: (status, body). A raw HTTP/1.1 request with `Connection: close`.
    async fn get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.admin)
            .await
            .expect("connect to the admin API");
        let request = format!("GET {path} HTTP/1.1\r\nHost: scfsim\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send request");
        let mut buf = Vec::new();
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut buf))
            .await
            .expect("admin answer in time")
            .expect("read admin answer");
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line in {head:?}"));
        (status, body.to_owned())
    }

    /// Polls `GET path` until `done` accepts the JSON answer.
    async fn poll(&self, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (status, body) = self.get(path).await;
            if status == 200 {
                let value: Value = serde_json::from_str(&body).expect("admin API answers JSON");
                if done(&value) {
                    return value;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: last answer to GET {path} was {status} {body}\nscfsim's log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, and the documented clean exit.
    async fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("waiter thread")
            .expect("wait for scfsim");
        assert!(
            status.success(),
            "scfsim exits 0 on SIGTERM, got {status}; log:\n{}",
            self.log()
        );
    }
}

impl Drop for Scfsim {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn toml_string(path: &Path) -> String {
    let s = path.to_str().expect("UTF-8 temp path");
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The function serves "hello" back through scfsim, and the invocation is recorded as a 200.
async fn echo_through_scfsim(f: &Scaffold) {
    let scfsim = Scfsim::start(f.tmp.path(), &f.done.config_block).await;
    let url = format!("{}/{}", scfsim.ws, f.name);
    let (mut ws, response) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(&url))
        .await
        .expect("handshake in time")
        .unwrap_or_else(|e| panic!("connect {url}: {e}\nscfsim's log:\n{}", scfsim.log()));
    let request_id = response
        .headers()
        .get("x-scf-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("the 101 carries X-Scf-Request-Id")
        .to_owned();

    ws.send(Message::text("hello")).await.expect("send hello");
    let echoed = tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("an answer in time");
    match echoed {
        Some(Ok(Message::Text(text))) => assert_eq!(text.as_str(), "hello"),
        other => panic!(
            "expected the text \"hello\" back, got {other:?}\nscfsim's log:\n{}",
            scfsim.log()
        ),
    }

    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
    .await
    .expect("send close");
    // Read until the close handshake is done.
    tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await
    .expect("close answered in time");

    let record = scfsim
        .poll(
            &format!("/api/invocations/{request_id}"),
            "the invocation finishes",
            |r| !r["status_code"].is_null(),
        )
        .await;
    assert_eq!(
        record["status_code"],
        200,
        "{record:#}\nscfsim's log:\n{}",
        scfsim.log()
    );
    assert_eq!(record["end_reason"], "client_closed", "{record:#}");
    assert_eq!(record["function"], f.name.as_str());
    assert_eq!(record["messages_in"], 1, "{record:#}");
    assert_eq!(record["messages_out"], 1, "{record:#}");

    // Every template logs each message to stdout: the function's log.
    scfsim
        .poll(
            &format!("/api/invocations/{request_id}/logs"),
            "the function's log shows the message",
            |logs| {
                logs["lines"].as_array().is_some_and(|lines| {
                    lines.iter().any(|l| {
                        l["line"]
                            .as_str()
                            .is_some_and(|s| s.contains("text message, 5"))
                    })
                })
            },
        )
        .await;

    scfsim.stop().await;
}

#[tokio::test]
async fn python3_end_to_end() {
    if !succeeds("python3", &["-c", "import websockets"]) {
        return skip(
            "python3 with the websockets library is not installed here \
             (`python3 -c 'import websockets'` failed): the python3 template was not run",
        );
    }
    let f = scaffold_one(Runtime::Python3);
    // `websockets` is already importable, so the scaffold's install step is not needed.
    echo_through_scfsim(&f).await;
}

#[tokio::test]
async fn bash_end_to_end() {
    if !succeeds("python3", &["--version"]) {
        return skip("python3 is not installed here: the bash template's server.py needs it");
    }
    let f = scaffold_one(Runtime::Bash);
    assert!(f.done.next_steps.is_empty(), "nothing to install");
    echo_through_scfsim(&f).await;
}

#[tokio::test]
async fn nodejs_end_to_end() {
    if !succeeds("node", &["--version"]) || !succeeds("npm", &["--version"]) {
        return skip("node or npm is not installed here: the nodejs template was not run");
    }
    let f = scaffold_one(Runtime::Nodejs);
    assert_eq!(f.done.next_steps[1], "npm install");
    let (ok, out) = run_in(
        &f.dir,
        "npm",
        &["install", "--no-audit", "--no-fund", "--loglevel=error"],
        &[],
    )
    .await;
    if !ok {
        // A dependency that does not exist is the template's fault; anything else (no registry)
        // is this machine's.
        assert!(
            !out.contains("E404") && !out.contains("ETARGET"),
            "npm install: the template names a package or version that does not exist:\n{}",
            tail(&out)
        );
        return skip(&format!(
            "`npm install` failed (is the npm registry reachable?):\n{}",
            tail(&out)
        ));
    }
    echo_through_scfsim(&f).await;
}

#[tokio::test]
async fn rust_end_to_end() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    if !succeeds(&cargo, &["--version"]) {
        return skip("cargo is not installed here: the rust template was not built or run");
    }
    let f = scaffold_one(Runtime::Rust);
    assert_eq!(f.done.next_steps[1], "cargo build --release");
    // Builds of every run share one target dir, so the dependencies are compiled once.
    let target = profile_dir()
        .parent()
        .expect("target/<profile> has a parent")
        .join("scfsim-init-templates");
    let env = [("CARGO_TARGET_DIR", target.as_path())];
    // Offline first (the workspace's own build has the crates in the local cache), then online.
    let (mut ok, mut out) =
        run_in(&f.dir, &cargo, &["build", "--release", "--offline"], &env).await;
    if !ok {
        (ok, out) = run_in(&f.dir, &cargo, &["build", "--release"], &env).await;
    }
    if !ok {
        assert!(
            !out.contains("error[E") && !out.contains("failed to parse manifest"),
            "the rust template does not compile:\n{}",
            tail(&out)
        );
        return skip(&format!(
            "`cargo build --release` of the rust template failed (are its crates downloadable?):\n{}",
            tail(&out)
        ));
    }
    // The scaffold's second step, `cp target/release/server server`, from the shared target dir.
    std::fs::copy(target.join("release/server"), f.dir.join("server")).expect("copy the binary");
    echo_through_scfsim(&f).await;
}

#[tokio::test]
async fn go_end_to_end() {
    if !succeeds("go", &["version"]) {
        return skip(
            "go is not installed here: the go template was generated but not built or run",
        );
    }
    let f = scaffold_one(Runtime::Go);
    let (ok, out) = run_in(&f.dir, "sh", &["-c", &f.done.next_steps[1]], &[]).await;
    if !ok {
        // No module proxy (no network) is this machine's problem; anything else, such as a
        // compile error, is the template's.
        let offline = [
            "dial tcp",
            "no such host",
            "i/o timeout",
            "connection refused",
            "GOPROXY",
        ]
        .iter()
        .any(|m| out.contains(m));
        assert!(offline, "the go template does not build:\n{}", tail(&out));
        return skip(&format!(
            "`go build` of the go template could not download its module (is the Go module \
             proxy reachable?):\n{}",
            tail(&out)
        ));
    }
    echo_through_scfsim(&f).await;
}
