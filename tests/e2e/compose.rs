//! The Docker path, end to end: the repository's docker-compose.yml and Dockerfile, built and
//! run by the real Compose (`docker compose`, else `docker-compose`) against the real engine,
//! driven by real WebSocket clients through the published ports, in one scenario:
//!
//! 1. `up --build`: the container becomes healthy; scfsim isolates instances with namespaces
//!    and enforces memory_mb with a cgroup per instance (its startup lines say so);
//! 2. `/echo`, `/python` and `/node` echo; the 101 carries the request id; the outcome (200) is
//!    read from the admin API with the compose file's token (`scfsim-local`);
//! 3. a function going over memory_mb ends with 434, its cgroup limit is memory_mb;
//! 4. 20 simultaneous connections to `/echo` are all served, each instance in a network
//!    namespace of its own (20 different ones, none the container's);
//! 5. `restart` keeps the records (the data volume);
//! 6. `stop` (SIGTERM) closes open connections with 1001 and records them (500,
//!    gateway_shutdown), read after `start`;
//! 7. `down -v` leaves no container, network, volume or process (the instance's) behind.
//!
//! The project has a name of its own and free host ports (SCFSIM_WS_PORT, SCFSIM_ADMIN_PORT),
//! so it runs beside anything else; the config is the repository's config/scfsim.toml plus one
//! function (the memory hog), served from a temporary directory (SCFSIM_CONFIG_DIR). Every
//! docker command is bounded; `down -v` also runs when the test fails (a drop guard), and the
//! image's tag is removed without its layers (the build cache stays for the next run).
//!
//! Needs the engine running and the base images present: scripts/docker-engine.sh, and where no
//! registry is reachable scripts/docker-build-here.sh (it also builds the image, so that the
//! `up --build` here finds every layer in the cache). Without them this test fails and says so.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures_util::future::join_all;
use scfsim_e2e::{repo_root, run_bounded, BoundedOutput, Client, PATIENCE};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The admin token docker-compose.yml sets when SCFSIM_ADMIN_TOKEN is not set.
const TOKEN: &str = "scfsim-local";
/// `up --build`: a cold build (cargo in the builder stage) takes about 9 minutes on a 2-core
/// machine; a warm one seconds. SCFSIM_E2E_COMPOSE_BUILD_TIMEOUT (seconds) overrides it.
const BUILD_BOUND: Duration = Duration::from_secs(2400);
/// Any other Compose or docker command.
const COMMAND_BOUND: Duration = Duration::from_secs(180);
/// From a started container to scfsim answering (and to "healthy": interval 10 s).
const READY_BOUND: Duration = Duration::from_secs(180);

/// The Compose command line: `docker compose` if the CLI has the plugin, else `docker-compose`.
/// Fails, naming the install commands, when neither exists or the engine does not answer.
fn compose_tool() -> Vec<String> {
    let answers = |program: &str, args: &[&str]| {
        run_bounded(Command::new(program).args(args), Duration::from_secs(30)).success()
    };
    let tool = if answers("docker", &["compose", "version"]) {
        vec!["docker".to_string(), "compose".to_string()]
    } else if answers("docker-compose", &["version"]) {
        vec!["docker-compose".to_string()]
    } else {
        panic!(
            "neither `docker compose` nor `docker-compose` runs here: install Compose \
             (`apt-get install docker-compose`, or Docker's docker-compose-plugin), \
             or run scripts/docker-engine.sh, which installs docker.io and docker-compose"
        );
    };
    let info = run_bounded(
        Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]),
        Duration::from_secs(30),
    );
    assert!(
        info.success(),
        "the Docker engine does not answer: start it with scripts/docker-engine.sh (installs \
         docker.io if missing, starts dockerd)\n{info}"
    );
    tool
}

/// One Compose project of this test's own; `down -v` when dropped.
struct Project {
    tool: Vec<String>,
    /// The compose file, relative to the repository's root.
    file: &'static str,
    name: String,
    root: PathBuf,
    ws_port: u16,
    admin_port: u16,
    config: tempfile::TempDir,
}

impl Project {
    fn new(tool: Vec<String>, file: &'static str, variant: Variant) -> Project {
        let name = format!(
            "scfsim-e2e-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let root = repo_root();
        let config = tempfile::tempdir().expect("temp config dir");
        write_config(config.path(), &root, variant);
        Project {
            tool,
            file,
            name,
            root,
            ws_port: scfsim_e2e::free_port(),
            admin_port: scfsim_e2e::free_port(),
            config,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.tool[0]);
        cmd.args(&self.tool[1..])
            .args(["-f", self.file, "-p", &self.name])
            .args(args)
            .current_dir(&self.root)
            .env("SCFSIM_WS_PORT", self.ws_port.to_string())
            .env("SCFSIM_ADMIN_PORT", self.admin_port.to_string())
            .env("SCFSIM_CONFIG_DIR", self.config.path())
            // The compose file's defaults for everything else.
            .env_remove("SCFSIM_ADMIN_TOKEN")
            .env_remove("SCFSIM_EXAMPLES_DIR")
            .env_remove("COMPOSE_FILE")
            .env_remove("COMPOSE_PROJECT_NAME");
        cmd
    }

    /// A Compose command, bounded; its output whatever the outcome.
    async fn run(&self, args: &[&str], limit: Duration) -> BoundedOutput {
        let mut cmd = self.command(args);
        tokio::task::spawn_blocking(move || run_bounded(&mut cmd, limit))
            .await
            .expect("command runner")
    }

    /// A Compose command that must succeed within `limit`.
    async fn ok(&self, args: &[&str], limit: Duration) -> BoundedOutput {
        let out = self.run(args, limit).await;
        if !out.success() {
            panic!(
                "`{} {}` failed\n{out}\ncontainer log:\n{}",
                self.tool.join(" "),
                args.join(" "),
                self.logs().await
            );
        }
        out
    }

    async fn logs(&self) -> String {
        let out = self
            .run(&["logs", "--no-color", "scfsim"], COMMAND_BOUND)
            .await;
        out.stdout + &out.stderr
    }

    async fn container(&self) -> String {
        let out = self.ok(&["ps", "-q", "scfsim"], COMMAND_BOUND).await;
        let id = out.stdout.trim().to_string();
        assert!(!id.is_empty(), "no scfsim container in {}", self.name);
        id
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// Waits until the admin API answers /healthz through the published port.
    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + READY_BOUND;
        while scfsim_client::get(&self.admin_url("/healthz"))
            .await
            .is_err()
        {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "scfsim in the container did not answer /healthz on 127.0.0.1:{} within \
                     {READY_BOUND:?}\ncontainer log:\n{}",
                    self.admin_port,
                    self.logs().await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the engine reports the compose file's healthcheck as passing.
    async fn wait_healthy(&self) {
        let id = self.container().await;
        let deadline = tokio::time::Instant::now() + READY_BOUND;
        loop {
            let out = docker(&["inspect", "-f", "{{.State.Health.Status}}", &id]).await;
            if out.stdout.trim() == "healthy" {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "the container never became healthy (last: {})\ncontainer log:\n{}",
                    out.stdout.trim(),
                    self.logs().await
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// GET on the admin API with the compose file's token, as JSON.
    async fn get(&self, path: &str) -> Result<Value, String> {
        let body = scfsim_client::get_with_token(&self.admin_url(path), Some(TOKEN))
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        serde_json::from_slice(&body).map_err(|e| format!("GET {path}: not JSON: {e}"))
    }

    /// The finished record of `request_id` (waits, bounded, until it has a status code).
    /// `/hog` goes over its 128 MB `memory_mb`: the client gets 1011, the record 434
    /// `memory_limit`, and the hog's log shows the limit it saw (its cgroup's or container's).
    async fn memory_hog_ends_with_434(&self) {
        let mut hog = self.connect("/hog").await;
        let (code, reason) = hog.expect_close().await;
        assert_eq!((code, reason.contains("memory")), (1011, true), "{reason}");
        let record = self.record(&hog.request_id).await;
        assert_eq!(record["status_code"], 434, "{record:#}");
        assert_eq!(record["end_reason"], "memory_limit", "{record:#}");
        let logs = self
            .get(&format!("/api/invocations/{}/logs", hog.request_id))
            .await
            .expect("the hog's log");
        let lines: Vec<&str> = logs["lines"]
            .as_array()
            .expect("lines")
            .iter()
            .filter_map(|l| l["line"].as_str())
            .collect();
        assert!(
            lines.contains(&format!("memory.limit={}", 128 * 1024 * 1024).as_str()),
            "the hog's memory limit is not its memory_mb: {lines:?}"
        );
    }

    async fn record(&self, request_id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let answer = self.get(&format!("/api/invocations/{request_id}")).await;
            if let Ok(record) = &answer {
                if !record["status_code"].is_null() {
                    return record.clone();
                }
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "invocation {request_id} never finished (last answer {answer:?})\n\
                     container log:\n{}",
                    self.logs().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Connects through the published gateway port; the upgrade must succeed.
    async fn connect(&self, path: &str) -> Client {
        let url = format!("ws://127.0.0.1:{}{path}", self.ws_port);
        let req = url.as_str().into_client_request().expect("request");
        let (ws, response) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(req))
            .await
            .unwrap_or_else(|_| panic!("{url}: no handshake answer within {PATIENCE:?}"))
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let request_id = response
            .headers()
            .get("x-scf-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{url}: the 101 has no X-Scf-Request-Id: {response:?}"))
            .to_string();
        Client {
            ws,
            request_id,
            response,
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        // Also on failure: nothing of this project stays behind. The image's tag goes, its
        // layers stay (--no-prune): they are the next build's cache.
        let out = run_bounded(
            &mut self.command(&["down", "-v", "--remove-orphans", "-t", "30"]),
            COMMAND_BOUND,
        );
        if !out.success() {
            eprintln!("compose down -v of {} failed:\n{out}", self.name);
        }
        for image in [
            format!("{}_scfsim", self.name),
            format!("{}-scfsim", self.name),
        ] {
            let _ = run_bounded(
                Command::new("docker").args(["image", "rm", "--no-prune", &image]),
                COMMAND_BOUND,
            );
        }
    }
}

/// A bounded `docker` command (the CLI on PATH).
async fn docker(args: &[&str]) -> BoundedOutput {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    tokio::task::spawn_blocking(move || run_bounded(&mut cmd, COMMAND_BOUND))
        .await
        .expect("command runner")
}

/// Which compose file's instances a config is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// docker-compose.yml: instances in namespaces and cgroups of scfsim's container.
    Namespaces,
    /// docker-compose.docker.yml: instances as sibling containers (scfsim-runtime:bookworm).
    Siblings,
}

/// The repository's config/scfsim.toml and one more function, `/hog`: it prints its memory
/// cgroup's limit, then allocates 400 MiB over its memory_mb of 128.
fn write_config(dir: &Path, root: &Path, variant: Variant) {
    let mut toml =
        std::fs::read_to_string(root.join("config/scfsim.toml")).expect("config/scfsim.toml");
    toml.push_str(
        "\n[[functions]]\nname = \"hog\"\npath = \"/hog\"\ncode_dir = \"functions/hog\"\n\
         memory_mb = 128\nidle_timeout = \"15s\"\n",
    );
    std::fs::write(dir.join("scfsim.toml"), toml).expect("write config");
    let hog = dir.join("functions/hog");
    std::fs::create_dir_all(&hog).expect("hog dir");
    // /proc/self/cgroup names the cgroup from the engine's root (/docker/<id>/scfsim-…); the
    // container sees its own cgroup as its root: the path from `/scfsim-` on.
    let bootstrap = r#"#!/bin/bash
p=$(grep ':memory:' /proc/self/cgroup | cut -d: -f3)
[ -n "$p" ] || p=$(grep '^0::' /proc/self/cgroup | cut -d: -f3)
p="${p#"${p%%/scfsim-*}"}"
if [ -f "/sys/fs/cgroup/memory$p/memory.limit_in_bytes" ]; then
    echo "memory.limit=$(cat "/sys/fs/cgroup/memory$p/memory.limit_in_bytes")"
else
    echo "memory.limit=$(cat "/sys/fs/cgroup$p/memory.max" 2>&1)"
fi
(sleep 0.5; exec python3 -c "a = b'x' * (400 * 1024 * 1024); import time; time.sleep(60)") &
cd /srv/scfsim/examples/echo && exec python3 server.py
"#;
    // In its own container, the hog's memory cgroup is the container's, and the echo server is
    // a copy in its code directory (only the code directory is mounted into it).
    let sibling_bootstrap = r#"#!/bin/bash
echo "memory.limit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)"
(sleep 0.5; exec python3 -c "a = b'x' * (400 * 1024 * 1024); import time; time.sleep(60)") &
exec python3 server.py
"#;
    let bootstrap = match variant {
        Variant::Namespaces => bootstrap,
        Variant::Siblings => {
            std::fs::copy(root.join("examples/echo/server.py"), hog.join("server.py"))
                .expect("copy the echo server");
            sibling_bootstrap
        }
    };
    let path = hog.join("scf_bootstrap");
    std::fs::write(&path, bootstrap).expect("write hog bootstrap");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// How long `up --build` may take: [`BUILD_BOUND`], or SCFSIM_E2E_COMPOSE_BUILD_TIMEOUT.
fn build_bound() -> Duration {
    std::env::var("SCFSIM_E2E_COMPOSE_BUILD_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(BUILD_BOUND)
}

/// Echo one text message, close 1000.
async fn echo_once(client: &mut Client, text: &str) {
    client.send_text(text).await;
    client.expect_text(text).await;
    client.close(1000, "").await;
}

/// (pid, start time in clock ticks) of every process in the container, as the host sees them,
/// with each one's pid in the container's own PID namespace (NSpid's second field).
async fn host_processes(container: &str) -> Vec<(u32, String, Option<u32>)> {
    let out = docker(&["top", container, "-eo", "pid"]).await;
    assert!(out.success(), "docker top\n{out}");
    out.stdout
        .lines()
        .filter_map(|l| l.trim().parse::<u32>().ok())
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let start = start_time(&stat);
            let ns_pid = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|p| p.parse().ok()));
            (pid, start, ns_pid)
        })
        .collect()
}

/// Field 22 of /proc/PID/stat (after the parenthesised command name, which may hold spaces).
fn start_time(stat: &str) -> String {
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_compose_up_serves_the_examples_and_down_leaves_nothing() {
    let tool = compose_tool();
    let project = Project::new(tool, "docker-compose.yml", Variant::Namespaces);
    let build_bound = build_bound();

    eprintln!(
        "compose: `{}` project {} (ws 127.0.0.1:{}, admin 127.0.0.1:{}): up --build",
        project.tool.join(" "),
        project.name,
        project.ws_port,
        project.admin_port
    );
    // 1. Up, built. A failing build names the base-image script: without a registry the FROM
    //    images must be made here first.
    let up = project.run(&["up", "--build", "-d"], build_bound).await;
    if !up.success() {
        panic!(
            "`{} up --build -d` failed. Where no image registry is reachable, run \
             scripts/docker-build-here.sh first (engine, base images, this machine's CA \
             bundle for the build).\n{up}\ncontainer log:\n{}",
            project.tool.join(" "),
            project.logs().await
        );
    }
    project.wait_ready().await;
    project.wait_healthy().await;
    let logs = project.logs().await;
    assert!(
        logs.contains("instance isolation: namespaces"),
        "scfsim in the container does not isolate instances with namespaces:\n{logs}"
    );
    assert!(
        logs.contains("instance limits: memory_mb, ") && !logs.contains("memory_mb watched"),
        "memory_mb is not enforced with cgroups in the container:\n{logs}"
    );

    eprintln!("compose: healthy; namespaces and cgroups in use; the examples");
    // 2. The examples, through the published port; outcomes from the admin API.
    assert!(
        scfsim_client::get(&project.admin_url("/api/invocations"))
            .await
            .is_err(),
        "the admin API answers without the compose file's token"
    );
    let mut first_ids = Vec::new();
    for path in ["/echo", "/python", "/node"] {
        let mut client = project.connect(path).await;
        echo_once(&mut client, &format!("hello {path}")).await;
        let record = project.record(&client.request_id).await;
        assert_eq!(record["status_code"], 200, "{path}: {record:#}");
        first_ids.push(client.request_id.clone());
    }

    eprintln!("compose: memory_mb");
    // 3. Over memory_mb: the instance's cgroup says 128 MiB, the OOM kill ends it with 434.
    project.memory_hog_ends_with_434().await;

    eprintln!("compose: 20 at once");
    // 4. 20 at once on /echo: all open together, each instance in its own network namespace.
    let mut clients = join_all((0..20).map(|_| project.connect("/echo"))).await;
    let instances = project.get("/api/instances").await.expect("instances");
    let pids: Vec<String> = instances
        .as_array()
        .expect("instances list")
        .iter()
        .filter(|i| i["function"] == "echo")
        .filter_map(|i| i["pid"].as_u64().map(|p| p.to_string()))
        .collect();
    assert_eq!(pids.len(), 20, "live /echo instances: {instances:#}");
    let container = project.container().await;
    let mut args = vec![
        "exec",
        &container,
        "sh",
        "-c",
        "for p in 1 \"$@\"; do readlink /proc/$p/ns/net; done",
        "sh",
    ];
    args.extend(pids.iter().map(String::as_str));
    let ns = docker(&args).await;
    assert!(ns.success(), "readlink the instances' namespaces\n{ns}");
    let mut lines = ns.stdout.lines();
    let container_ns = lines.next().expect("the container's own namespace");
    let instance_ns: HashSet<&str> = lines.collect();
    assert_eq!(instance_ns.len(), 20, "{}", ns.stdout);
    assert!(!instance_ns.contains(container_ns), "{}", ns.stdout);
    join_all(
        clients
            .iter_mut()
            .enumerate()
            .map(|(i, c)| async move { echo_once(c, &format!("twenty {i}")).await }),
    )
    .await;
    for client in &clients {
        let record = project.record(&client.request_id).await;
        assert_eq!(record["status_code"], 200, "{record:#}");
    }

    eprintln!("compose: restart");
    // 5. Restart: the records are still there (the data volume).
    project.ok(&["restart"], COMMAND_BOUND).await;
    project.wait_ready().await;
    for id in &first_ids {
        let record = project.record(id).await;
        assert_eq!(record["status_code"], 200, "after restart: {record:#}");
    }

    eprintln!("compose: stop with connections open, start");
    // 6. Stop (SIGTERM) with connections open: each closed with 1001 and recorded.
    let mut open = vec![
        project.connect("/echo").await,
        project.connect("/node").await,
    ];
    for client in &mut open {
        client.send_text("before stop").await;
        client.expect_text("before stop").await;
    }
    project.ok(&["stop"], COMMAND_BOUND).await;
    for client in &mut open {
        let (code, _) = client.expect_close().await;
        assert_eq!(code, 1001, "{}", client.request_id);
    }
    project.ok(&["start"], COMMAND_BOUND).await;
    project.wait_ready().await;
    for client in &open {
        let record = project.record(&client.request_id).await;
        assert_eq!(record["status_code"], 500, "{record:#}");
        assert_eq!(record["end_reason"], "gateway_shutdown", "{record:#}");
    }

    eprintln!("compose: down with an instance running");
    // 7. Down with an instance running: nothing stays, not its process either.
    let mut last = project.connect("/echo").await;
    last.send_text("before down").await;
    last.expect_text("before down").await;
    let instances = project.get("/api/instances").await.expect("instances");
    let live_pid = instances
        .as_array()
        .and_then(|a| a.first())
        .and_then(|i| i["pid"].as_u64())
        .unwrap_or_else(|| panic!("no live instance: {instances:#}")) as u32;
    let container = project.container().await;
    let processes = host_processes(&container).await;
    assert!(
        processes.iter().any(|(_, _, ns)| *ns == Some(live_pid)),
        "the instance (pid {live_pid} in the container) is not among the container's \
         processes: {processes:?}"
    );
    project
        .ok(
            &["down", "-v", "--remove-orphans", "-t", "30"],
            COMMAND_BOUND,
        )
        .await;
    let (code, _) = last.expect_close().await;
    assert_eq!(code, 1001);
    let label = format!("label=com.docker.compose.project={}", project.name);
    let name = format!("name={}", project.name);
    for (what, args) in [
        ("container", vec!["ps", "-aq", "--filter", &label]),
        ("container", vec!["ps", "-aq", "--filter", &name]),
        ("network", vec!["network", "ls", "-q", "--filter", &label]),
        ("network", vec!["network", "ls", "-q", "--filter", &name]),
        ("volume", vec!["volume", "ls", "-q", "--filter", &label]),
        ("volume", vec!["volume", "ls", "-q", "--filter", &name]),
    ] {
        let out = docker(&args).await;
        assert!(out.success(), "docker {}\n{out}", args.join(" "));
        assert_eq!(
            out.stdout.trim(),
            "",
            "a {what} of {} is left after down",
            project.name
        );
    }
    for (pid, start, _) in &processes {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || start_time(&stat) != *start,
            "process {pid} of the container is still running after down: {stat}"
        );
    }
}

/// Removes the sibling containers of one scfsim run when dropped (a failed test's leftovers;
/// a passing test has checked there are none).
struct SiblingsOf(String);

impl Drop for SiblingsOf {
    fn drop(&mut self) {
        let label = format!("label=io.scfsim.run={}", self.0);
        let listed = run_bounded(
            Command::new("docker").args(["ps", "-aq", "--filter", &label]),
            COMMAND_BOUND,
        );
        for id in listed.stdout.split_whitespace() {
            let _ = run_bounded(Command::new("docker").args(["rm", "-f", id]), COMMAND_BOUND);
        }
    }
}

/// docker-compose.docker.yml: scfsim without privileges, its instances sibling containers on
/// the host's engine through the mounted socket.
///
/// 1. `up --build`: healthy, with no added capability and no seccomp/AppArmor change, and
///    `isolation = "docker"` in force;
/// 2. `/echo` and `/python` echo (code from the mounted examples, mounted by the engine from
///    the host's path), each in a container of its own on the host's engine with memory_mb as
///    its limit; 200 from the admin API;
/// 3. over memory_mb: 434, the engine's limit seen inside;
/// 4. `down -v` with an instance running: 1001 to the client, and no container of scfsim's run
///    is left on the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_compose_without_privileges_runs_instances_as_sibling_containers() {
    let tool = compose_tool();
    let runtime = docker(&["image", "inspect", "scfsim-runtime:bookworm"]).await;
    assert!(
        runtime.success(),
        "the runtime image scfsim-runtime:bookworm is not on the engine: \
         scripts/docker-runtime-images.sh makes it\n{runtime}"
    );
    let project = Project::new(tool, "docker-compose.docker.yml", Variant::Siblings);
    eprintln!(
        "compose (siblings): `{}` project {} (ws 127.0.0.1:{}, admin 127.0.0.1:{}): up --build",
        project.tool.join(" "),
        project.name,
        project.ws_port,
        project.admin_port
    );
    let up = project.run(&["up", "--build", "-d"], build_bound()).await;
    if !up.success() {
        panic!(
            "`{} -f docker-compose.docker.yml up --build -d` failed. Where no image registry \
             is reachable, run scripts/docker-build-here.sh first.\n{up}\ncontainer log:\n{}",
            project.tool.join(" "),
            project.logs().await
        );
    }
    project.wait_ready().await;
    project.wait_healthy().await;

    // 1. No privileges.
    let container = project.container().await;
    let privileges = docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.Privileged}} {{json .HostConfig.CapAdd}} {{json .HostConfig.SecurityOpt}}",
        &container,
    ])
    .await;
    assert_eq!(
        privileges.stdout.trim(),
        "false null null",
        "scfsim's container has privileges\n{privileges}"
    );
    let logs = project.logs().await;
    assert!(
        logs.contains("instance isolation: docker") || logs.contains("container instances"),
        "scfsim in the container does not run instances as containers:\n{logs}"
    );
    let run = logs
        .split("containers: run ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `containers: run` line in the log:\n{logs}"))
        .to_string();
    let _siblings = SiblingsOf(run.clone());
    let run_label = format!("label=io.scfsim.run={run}");

    // 2. Echo, each instance a sibling container with the engine's memory limit.
    for path in ["/echo", "/python"] {
        let mut client = project.connect(path).await;
        client.send_text(&format!("hello {path}")).await;
        client.expect_text(&format!("hello {path}")).await;
        let label = format!("label=io.scfsim.request-id={}", client.request_id);
        let sibling = docker(&["ps", "-q", "--filter", &label, "--filter", &run_label]).await;
        let ids: Vec<&str> = sibling.stdout.split_whitespace().collect();
        assert_eq!(ids.len(), 1, "{path}: one sibling container\n{sibling}");
        if path == "/echo" {
            let memory = docker(&["inspect", "-f", "{{.HostConfig.Memory}}", ids[0]]).await;
            assert_eq!(
                memory.stdout.trim(),
                "134217728",
                "{path}: memory_mb\n{memory}"
            );
        }
        client.close(1000, "").await;
        let record = project.record(&client.request_id).await;
        assert_eq!(record["status_code"], 200, "{path}: {record:#}");
    }

    // 3. Over memory_mb: the engine's OOM kill, 434.
    eprintln!("compose (siblings): memory_mb");
    project.memory_hog_ends_with_434().await;

    // 4. Down with an instance running: no sibling left.
    eprintln!("compose (siblings): down with an instance running");
    let mut last = project.connect("/echo").await;
    last.send_text("before down").await;
    last.expect_text("before down").await;
    let running = docker(&["ps", "-q", "--filter", &run_label]).await;
    assert_eq!(
        running.stdout.split_whitespace().count(),
        1,
        "the open connection's sibling\n{running}"
    );
    project
        .ok(
            &["down", "-v", "--remove-orphans", "-t", "30"],
            COMMAND_BOUND,
        )
        .await;
    let (code, _) = last.expect_close().await;
    assert_eq!(code, 1001);
    let left = docker(&["ps", "-aq", "--filter", &run_label]).await;
    assert!(left.success(), "{left}");
    assert_eq!(
        left.stdout.trim(),
        "",
        "a sibling container of run {run} is left after down"
    );
    let label = format!("label=com.docker.compose.project={}", project.name);
    let project_containers = docker(&["ps", "-aq", "--filter", &label]).await;
    assert_eq!(project_containers.stdout.trim(), "", "{project_containers}");
}
