//! `scfsim init` for every runtime, end to end: scaffold into a temp dir, install or build the
//! function's dependencies the way `next_steps` says (where this machine has the toolchain),
//! serve it with the real `scfsim` binary, send "hello" and expect it back, close with 1000, and
//! read the 200 record from the admin API. A runtime whose toolchain or library is missing is
//! skipped with a visible `SKIPPED:` line.
//!
//! Nothing here asserts on elapsed time: waits are bounded only so that a broken build fails
//! instead of hanging.

use std::path::Path;
use std::process::{Command, Stdio};

use scfsim_e2e::{Options, Scfsim};
use scfsim_init::{scaffold, Runtime, Scaffolded};
use tempfile::TempDir;

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
    let target = scfsim_e2e::target_dir()
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
