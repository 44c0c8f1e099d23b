//! `scfsim init` for every runtime, end to end: scaffold into a temp dir, install or build the
//! function's dependencies the way `next_steps` says, serve it with the real `scfsim` binary,
//! send "hello" and expect it back, close with 1000, and read the 200 record from the admin
//! API. A runtime whose toolchain or library is missing fails, naming the command that
//! installs it (scripts/test-setup.sh installs them all).
//!
//! Nothing here asserts on elapsed time: waits are bounded only so that a broken build fails
//! instead of hanging.

use std::path::Path;

use scfsim_e2e::{output_text, require, run, Options, Scfsim, BUILD_PATIENCE};
use scfsim_init::{scaffold, Runtime, Scaffolded};
use tempfile::TempDir;

/// Runs a build or install command in `dir`, bounded: (success, stdout + stderr).
async fn run_in(
    dir: &Path,
    cmd: &str,
    args: &[&str],
    env: &[(&str, &str)],
    install: &str,
) -> (bool, String) {
    let mut command = tokio::process::Command::new(cmd);
    command.args(args).current_dir(dir);
    for (k, v) in env {
        command.env(k, v);
    }
    let what = format!("`{cmd} {}` in {}", args.join(" "), dir.display());
    let out = run(&what, &mut command, BUILD_PATIENCE, install).await;
    (out.status.success(), output_text(&out))
}

/// The last lines of a tool's output, for a message.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A scaffolded function in its own temp dir.
struct Scaffold {
    tmp: TempDir,
    dir: std::path::PathBuf,
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

/// The function serves "hello" back through scfsim, and the invocation is recorded as a 200.
async fn echo_through_scfsim(f: &Scaffold) {
    let config = f.tmp.path().join("scfsim.toml");
    std::fs::write(
        &config,
        format!("relaxed_limits = true\n\n{}", f.done.config_block),
    )
    .expect("write config");
    let mut scfsim = Scfsim::start_with(
        vec![],
        Options {
            dir: Some(f.tmp.path().to_path_buf()),
            config: Some(config),
            ..Options::default()
        },
    )
    .await;
    let mut client = scfsim.connect(&format!("/{}", f.name)).await;
    client.send_text("hello").await;
    client.expect_text("hello").await;
    client.close(1000, "").await;

    let record = scfsim.record(&client.request_id).await;
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
    let lines = scfsim.log_lines(&client.request_id).await;
    assert!(
        lines.iter().any(|l| l.contains("text message, 5")),
        "the function's log shows the message: {lines:?}"
    );

    let status = scfsim.signal(libc::SIGTERM).await;
    assert!(
        status.success(),
        "scfsim exits 0 on SIGTERM, got {status}; log:\n{}",
        scfsim.log()
    );
}

#[tokio::test]
async fn python3_end_to_end() {
    require(
        "python3 with the websockets library",
        "python3",
        &["-c", "import websockets"],
        "python3 -m pip install websockets",
    );
    let f = scaffold_one(Runtime::Python3);
    // `websockets` is already importable, so the scaffold's install step is not needed.
    echo_through_scfsim(&f).await;
}

#[tokio::test]
async fn bash_end_to_end() {
    require(
        "python3 (the bash template's server.py)",
        "python3",
        &["--version"],
        "apt-get install python3",
    );
    let f = scaffold_one(Runtime::Bash);
    assert!(f.done.next_steps.is_empty(), "nothing to install");
    echo_through_scfsim(&f).await;
}

#[tokio::test]
async fn nodejs_end_to_end() {
    require("node", "node", &["--version"], "apt-get install nodejs");
    let f = scaffold_one(Runtime::Nodejs);
    assert_eq!(f.done.next_steps[1], "npm install");
    let (ok, out) = run_in(
        &f.dir,
        "npm",
        &["install", "--no-audit", "--no-fund", "--loglevel=error"],
        &[],
        "apt-get install npm",
    )
    .await;
    assert!(
        ok,
        "`npm install` of the nodejs template failed (the npm registry is reachable from here):\n{}",
        tail(&out)
    );
    echo_through_scfsim(&f).await;
}

#[tokio::test]
async fn rust_end_to_end() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let f = scaffold_one(Runtime::Rust);
    assert_eq!(f.done.next_steps[1], "cargo build --release");
    // Builds of every run share one target dir, so the dependencies are compiled once.
    let target = scfsim_e2e::target_dir()
        .parent()
        .expect("target/<profile> has a parent")
        .join("scfsim-init-templates");
    let target_str = target.display().to_string();
    let env = [("CARGO_TARGET_DIR", target_str.as_str())];
    let install = "rustup (https://rustup.rs)";
    // Offline first (the workspace's own build has the crates in the local cache), then online:
    // crates.io is reachable from here.
    let (mut ok, mut out) = run_in(
        &f.dir,
        &cargo,
        &["build", "--release", "--offline"],
        &env,
        install,
    )
    .await;
    if !ok {
        (ok, out) = run_in(&f.dir, &cargo, &["build", "--release"], &env, install).await;
    }
    assert!(
        ok,
        "`cargo build --release` of the rust template failed:\n{}",
        tail(&out)
    );
    // The scaffold's second step, `cp target/release/server server`, from the shared target dir.
    std::fs::copy(target.join("release/server"), f.dir.join("server")).expect("copy the binary");
    echo_through_scfsim(&f).await;
}

/// Where Debian's Go library packages put their sources (GOPATH layout).
const DEBIAN_GOPATH: &str = "/usr/share/gocode";

#[tokio::test]
async fn go_end_to_end() {
    require("go", "go", &["version"], "apt-get install golang-go");
    // The template's one dependency, github.com/gorilla/websocket, comes from Debian's package:
    // no Go module proxy is reachable from here. The build step itself is the scaffold's, run
    // in GOPATH mode over Debian's sources.
    let gorilla = Path::new(DEBIAN_GOPATH).join("src/github.com/gorilla/websocket");
    assert!(
        gorilla.join("server.go").is_file(),
        "{} is missing: install it with `apt-get install golang-github-gorilla-websocket-dev` \
         (scripts/test-setup.sh installs everything the tests need)",
        gorilla.display()
    );
    let f = scaffold_one(Runtime::Go);
    let build = &f.done.next_steps[1];
    assert_eq!(build, "CGO_ENABLED=0 go build -o server .");
    // Go's build cache under target/, so that it is there whatever HOME is (and cleaned with it).
    let cache = scfsim_e2e::target_dir()
        .parent()
        .expect("target/<profile> has a parent")
        .join("go-build-cache");
    let cache = cache.display().to_string();
    let (ok, out) = run_in(
        &f.dir,
        "sh",
        &["-c", build],
        &[
            ("GO111MODULE", "off"),
            ("GOPATH", DEBIAN_GOPATH),
            ("GOCACHE", cache.as_str()),
        ],
        "apt-get install golang-go",
    )
    .await;
    assert!(ok, "the go template does not build:\n{}", tail(&out));
    echo_through_scfsim(&f).await;
}
