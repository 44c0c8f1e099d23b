//! Container instances against the real Docker engine: image functions (`image = "name:tag"`)
//! and code functions with `isolation = "docker"`.
//!
//! The images are built here, from the local base image `debian:bookworm-slim`
//! (scripts/docker-base-images.sh) with the fixture binary copied in, or by
//! scripts/docker-runtime-images.sh (the runtime image); no registry is needed. The engine is the
//! machine's (scripts/docker-engine.sh); every container these tests cause is labelled with its
//! scfsim's run and removed by it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use scfsim_e2e::{
    eventually, fixture_bin, output_text, refused, repo_root, require, Options, Scfsim, PATIENCE,
};
use tokio_tungstenite::tungstenite::Message;

#[path = "containers/second_engine.rs"]
mod second_engine;

/// The test image: the fixture (a multi-mode WebSocket server) on Debian's slim image, started
/// as `scfsim-fixture echo` unless the function's command or args say otherwise.
const FIXTURE_IMAGE: &str = "scfsim-e2e-fixture:latest";
const BASE_IMAGE: &str = "debian:bookworm-slim";
const RUNTIME_IMAGE: &str = "scfsim-runtime:bookworm";

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run docker")
}

fn require_engine() {
    require(
        "a running Docker engine",
        "docker",
        &["info", "--format", "{{.ServerVersion}}"],
        "scripts/docker-engine.sh",
    );
    require(
        "the base image debian:bookworm-slim",
        "docker",
        &["image", "inspect", BASE_IMAGE],
        "scripts/docker-base-images.sh",
    );
}

/// Builds the fixture image once per test binary (the fixture may have changed since the last
/// run; an image it replaces is removed).
fn fixture_image() -> &'static str {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if *built {
        return FIXTURE_IMAGE;
    }
    require_engine();
    let old = docker(&["image", "inspect", "-f", "{{.Id}}", FIXTURE_IMAGE]);
    let context = tempfile::tempdir().expect("build context");
    std::fs::copy(fixture_bin(), context.path().join("scfsim-fixture")).expect("copy fixture");
    std::fs::write(
        context.path().join("Dockerfile"),
        format!(
            "FROM {BASE_IMAGE}\n\
             COPY scfsim-fixture /usr/local/bin/scfsim-fixture\n\
             ENTRYPOINT [\"/usr/local/bin/scfsim-fixture\"]\n\
             CMD [\"echo\"]\n"
        ),
    )
    .expect("Dockerfile");
    let out = docker(&[
        "build",
        "--quiet",
        "--label",
        "io.scfsim.image=e2e",
        "--tag",
        FIXTURE_IMAGE,
        &context.path().display().to_string(),
    ]);
    assert!(out.status.success(), "docker build: {}", output_text(&out));
    let new = docker(&["image", "inspect", "-f", "{{.Id}}", FIXTURE_IMAGE]);
    if old.status.success() && old.stdout != new.stdout {
        let old_id = String::from_utf8_lossy(&old.stdout).trim().to_string();
        let _ = docker(&["image", "rm", &old_id]);
    }
    *built = true;
    FIXTURE_IMAGE
}

/// A TOML string.
fn quoted(s: &str) -> String {
    format!("{s:?}")
}

fn list(items: &[&str]) -> String {
    let items: Vec<String> = items.iter().map(|i| quoted(i)).collect();
    format!("[{}]", items.join(", "))
}

/// One `[[functions]]` table of an image function, plus raw settings.
fn image_function(name: &str, image: &str, settings: &[(&str, String)]) -> String {
    let mut table = format!(
        "[[functions]]\nname = {}\npath = {}\nimage = {}\n",
        quoted(name),
        quoted(&format!("/{name}")),
        quoted(image)
    );
    for (key, value) in settings {
        table.push_str(&format!("{key} = {value}\n"));
    }
    table
}

/// scfsim serving this config text (written to a fresh directory), with `env` in its
/// environment.
async fn serve(config: &str, env: Vec<(String, String)>) -> (Scfsim, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("config dir");
    let path = dir.path().join("scfsim.toml");
    std::fs::write(&path, format!("relaxed_limits = true\n{config}")).expect("config");
    let scfsim = Scfsim::start_with(
        vec![],
        Options {
            config: Some(path),
            env,
            ..Options::default()
        },
    )
    .await;
    (scfsim, dir)
}

/// Ids of the containers (running or not) with this label.
fn containers_labelled(label: &str) -> Vec<String> {
    containers_filtered(&format!("label={label}"))
}

/// Ids of the containers (running or not) that `docker ps --filter FILTER` lists.
fn containers_filtered(filter: &str) -> Vec<String> {
    let out = docker(&["ps", "--all", "--quiet", "--no-trunc", "--filter", filter]);
    assert!(out.status.success(), "docker ps: {}", output_text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The container of a request: named `scfsim-REQUEST_ID` (a stocked container gets the name
/// when it starts; only one created for its request also has the request id as a label).
fn container_of(request_id: &str) -> Vec<String> {
    containers_filtered(&format!("name=scfsim-{request_id}"))
}

/// The HTTP status and body of an upgrade that scfsim refuses.
async fn refused_upgrade(scfsim: &Scfsim, path: &str) -> (u16, String) {
    match scfsim.connect_with(path, &[]).await {
        Ok(client) => panic!("{path}: upgraded (request {})", client.request_id),
        Err(err) => {
            let (http, _, body) = refused(err);
            (http, body)
        }
    }
}

#[tokio::test]
async fn an_image_function_echoes_text_and_binary_and_records_200() {
    let image = fixture_image();
    let (scfsim, _dir) = serve(&image_function("echo", image, &[]), vec![]).await;
    let mut client = scfsim.connect("/echo").await;
    client.send_text("hello").await;
    client.expect_text("hello").await;
    client.send_binary(vec![0, 1, 2, 255]).await;
    client.expect_binary(&[0, 1, 2, 255]).await;
    // One container, labelled with the request id and scfsim's run, with the platform's
    // conditions.
    let ids = container_of(&client.request_id);
    assert_eq!(ids.len(), 1, "{ids:?}");
    let inspect = docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} \
         {{.HostConfig.PidsLimit}} {{index .HostConfig.Tmpfs \"/tmp\"}} \
         {{index .Config.Labels \"io.scfsim.run\"}}",
        &ids[0],
    ]);
    let inspect = String::from_utf8_lossy(&inspect.stdout).to_string();
    let fields: Vec<&str> = inspect.split_whitespace().collect();
    assert_eq!(
        fields[..4],
        ["true", "134217728", "134217728", "1024"],
        "{inspect}"
    );
    assert!(fields[4].contains("size=512m"), "{inspect}");
    assert!(
        !fields.get(5).unwrap_or(&"").is_empty(),
        "no run label: {inspect}"
    );
    client.close(1000, "bye").await;
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 200, "{record:#}");
    assert_eq!(record["end_reason"], "client_closed", "{record:#}");
    assert_eq!(record["messages_in"], 2, "{record:#}");
    assert_eq!(record["messages_out"], 2, "{record:#}");
    // Its output is kept under the request id, and the container is gone.
    let lines = scfsim.log_lines(&client.request_id).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("fixture: listening on 0.0.0.0:9000")),
        "{lines:?}"
    );
    eventually("the container removed", PATIENCE, || async {
        let left = container_of(&client.request_id);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("still there: {left:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn twenty_image_instances_at_once() {
    let image = fixture_image();
    let (scfsim, _dir) = serve(&image_function("echo", image, &[]), vec![]).await;
    let clients = futures_util::future::join_all((0..20).map(|_| scfsim.connect("/echo"))).await;
    let mut clients = clients;
    for (i, client) in clients.iter_mut().enumerate() {
        client.send_text(&format!("message {i}")).await;
    }
    for (i, client) in clients.iter_mut().enumerate() {
        client.expect_text(&format!("message {i}")).await;
    }
    let mut ids: Vec<String> = clients
        .iter()
        .flat_map(|c| container_of(&c.request_id))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "one container each: {ids:?}");
    for client in &mut clients {
        client.close(1000, "").await;
    }
    for client in &clients {
        let record = scfsim.record(&client.request_id).await;
        assert_eq!(record["status_code"], 200, "{record:#}");
    }
}

#[tokio::test]
async fn a_missing_image_is_502_and_444_naming_it() {
    require_engine();
    let missing = "scfsim-e2e-no-such-image:never";
    let (scfsim, _dir) = serve(&image_function("gone", missing, &[]), vec![]).await;
    let (http, body) = refused_upgrade(&scfsim, "/gone").await;
    assert_eq!(http, 502, "{body}");
    assert!(body.contains(missing), "{body}");
    assert!(body.contains("444"), "{body}");
    let record = scfsim.last_record("gone").await;
    assert_eq!(record["status_code"], 444, "{record:#}");
    assert_eq!(record["end_reason"], "image_pull_failed", "{record:#}");
    let error = record["error"].as_str().unwrap_or_default();
    assert!(error.contains(missing), "{error}");
    assert!(
        error.contains("docker build -t"),
        "the fix is named: {error}"
    );
}

#[tokio::test]
async fn a_container_whose_command_exits_is_405_with_its_last_output() {
    let image = fixture_image();
    let command = list(&[
        "/bin/sh",
        "-c",
        "echo 'cannot open config.yaml' >&2; exit 3",
    ]);
    let config = image_function("quits", image, &[("command", command)]);
    let (scfsim, _dir) = serve(&config, vec![]).await;
    let (http, body) = refused_upgrade(&scfsim, "/quits").await;
    assert_eq!(http, 502, "{body}");
    let record = scfsim.last_record("quits").await;
    assert_eq!(record["status_code"], 405, "{record:#}");
    assert_eq!(record["end_reason"], "bootstrap_exited", "{record:#}");
    assert_eq!(record["instance_exit_code"], 3, "{record:#}");
    let error = record["error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot open config.yaml"), "{error}");
}

#[tokio::test]
async fn a_bad_command_is_445() {
    let image = fixture_image();
    let config = image_function("badcmd", image, &[("command", list(&["/no/such/server"]))]);
    let (scfsim, _dir) = serve(&config, vec![]).await;
    let (http, body) = refused_upgrade(&scfsim, "/badcmd").await;
    assert_eq!(http, 502, "{body}");
    let record = scfsim.last_record("badcmd").await;
    assert_eq!(record["status_code"], 445, "{record:#}");
    assert_eq!(record["end_reason"], "container_init_error", "{record:#}");
    let error = record["error"].as_str().unwrap_or_default();
    assert!(error.contains("/no/such/server"), "{error}");
}

#[tokio::test]
async fn an_image_that_never_listens_is_446() {
    let image = fixture_image();
    let config = image_function(
        "deaf",
        image,
        &[
            ("args", list(&["never-listen"])),
            ("init_timeout", quoted("2s")),
        ],
    );
    let (scfsim, _dir) = serve(&config, vec![]).await;
    let (http, body) = refused_upgrade(&scfsim, "/deaf").await;
    assert_eq!(http, 502, "{body}");
    let record = scfsim.last_record("deaf").await;
    assert_eq!(record["status_code"], 446, "{record:#}");
    assert_eq!(record["end_reason"], "not_listening", "{record:#}");
    // Its container is gone too.
    let ours = container_of(record["request_id"].as_str().unwrap_or("no request id"));
    assert!(ours.is_empty(), "left behind: {ours:?}");
}

#[tokio::test]
async fn going_over_memory_mb_in_a_container_is_434() {
    let image = fixture_image();
    // `tail` keeps a line without newline whole: 400 MB of zeros grow it past 128 MB.
    let command = list(&[
        "/bin/sh",
        "-c",
        "(sleep 0.5; head -c 400m /dev/zero | tail) & exec /usr/local/bin/scfsim-fixture echo",
    ]);
    let config = image_function(
        "hog",
        image,
        &[("command", command), ("memory_mb", "128".into())],
    );
    let (scfsim, _dir) = serve(&config, vec![]).await;
    let mut client = scfsim.connect("/hog").await;
    let (code, reason) = client.expect_close().await;
    assert_eq!(code, 1011, "{reason}");
    assert!(reason.contains("memory"), "{reason}");
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 434, "{record:#}");
    assert_eq!(record["end_reason"], "memory_limit", "{record:#}");
}

#[tokio::test]
async fn a_write_outside_tmp_fails_in_the_function_and_shows_in_its_log() {
    let image = fixture_image();
    let command = list(&[
        "/bin/sh",
        "-c",
        "echo data > /var/state.txt || echo 'write outside /tmp failed'; \
         echo data > /tmp/state.txt && echo 'write to /tmp ok'; \
         exec /usr/local/bin/scfsim-fixture echo",
    ]);
    let config = image_function("writer", image, &[("command", command)]);
    let (scfsim, _dir) = serve(&config, vec![]).await;
    let mut client = scfsim.connect("/writer").await;
    client.send_text("ping").await;
    client.expect_text("ping").await;
    client.close(1000, "").await;
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 200, "{record:#}");
    let lines = scfsim.log_lines(&client.request_id).await;
    assert!(
        lines.iter().any(|l| l.contains("Read-only file system")),
        "the engine's error in the log: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l == "write outside /tmp failed"),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l == "write to /tmp ok"), "{lines:?}");
}

#[tokio::test]
async fn after_sigkill_no_container_of_scfsim_is_left_running() {
    let image = fixture_image();
    let (mut scfsim, _dir) = serve(&image_function("echo", image, &[]), vec![]).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = scfsim.connect("/echo").await;
        client.send_text("up").await;
        client.expect_text("up").await;
        clients.push(client);
    }
    let ids: Vec<String> = clients
        .iter()
        .flat_map(|c| container_of(&c.request_id))
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    let killed = Instant::now();
    scfsim.signal(libc::SIGKILL).await;
    eventually(
        "scfsim's containers removed after its SIGKILL",
        PATIENCE,
        || async {
            let left: Vec<String> = clients
                .iter()
                .flat_map(|c| container_of(&c.request_id))
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still there: {left:?}"))
            }
        },
    )
    .await;
    // Not a timed assertion: how long they outlived scfsim, for the report.
    println!(
        "containers of the SIGKILLed scfsim were gone {:?} after the kill",
        killed.elapsed()
    );
}

/// This machine's id and scfsim's absolute data directory: the owner label of its containers.
fn owner_label(dir: &Path) -> String {
    let machine = std::fs::read_to_string("/etc/machine-id").expect("machine id");
    format!(
        "io.scfsim.owner={}:{}",
        machine.trim(),
        dir.join("data").display()
    )
}

#[tokio::test]
async fn leftovers_of_an_earlier_run_are_removed_at_start_and_nothing_else() {
    let image = fixture_image();
    let dir = tempfile::tempdir().expect("dir");
    let dir_path = dir.path().canonicalize().expect("canonical dir");
    let owner = owner_label(&dir_path);
    let create = |labels: &[&str]| {
        let mut args = vec!["create"];
        for label in labels {
            args.push("--label");
            args.push(label);
        }
        args.push(image);
        let out = docker(&args);
        assert!(out.status.success(), "docker create: {}", output_text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // An earlier scfsim of this data directory, whose process is gone (pid 1 never started at
    // time 0).
    let leftover = create(&[&owner, "io.scfsim.process=1:0", "io.scfsim.run=earlier"]);
    // Another program's container, and one of a live scfsim-like owner (this test process).
    let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
    let start = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().nth(19).unwrap_or("0").to_string())
        .unwrap_or_default();
    let alive = format!("io.scfsim.process={}:{start}", std::process::id());
    let foreign = create(&["io.scfsim.e2e=foreign"]);
    let live = create(&[&owner, &alive, "io.scfsim.e2e=live"]);
    let _cleanup = Removed(vec![leftover.clone(), foreign.clone(), live.clone()]);
    let config = format!(
        "relaxed_limits = true\n{}",
        image_function("echo", image, &[])
    );
    std::fs::write(dir_path.join("scfsim.toml"), config).expect("config");
    let scfsim = Scfsim::start_with(
        vec![],
        Options {
            dir: Some(dir_path.clone()),
            config: Some(dir_path.join("scfsim.toml")),
            ..Options::default()
        },
    )
    .await;
    let exists = |id: &str| docker(&["inspect", id]).status.success();
    assert!(
        !exists(&leftover),
        "the earlier run's container was not removed"
    );
    assert!(exists(&foreign), "another program's container was removed");
    assert!(exists(&live), "a live owner's container was removed");
    assert!(
        scfsim.log().contains("removed 1 left behind"),
        "{}",
        scfsim.log()
    );
    drop(scfsim);
}

/// Containers a test made itself, removed when it ends (also when it fails).
struct Removed(Vec<String>);

impl Drop for Removed {
    fn drop(&mut self) {
        for id in &self.0 {
            let _ = docker(&["rm", "--force", id]);
        }
    }
}

/// A code directory holding the fixture and a bootstrap that starts it by a relative path, so
/// the same package runs natively and in a container.
fn fixture_package(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let code = dir.join("code");
    std::fs::create_dir_all(&code).expect("code dir");
    std::fs::copy(fixture_bin(), code.join("scfsim-fixture")).expect("copy fixture");
    let bootstrap = code.join("scf_bootstrap");
    std::fs::write(
        &bootstrap,
        "#!/bin/bash\n\
         echo data > ./state.txt 2>/dev/null && echo 'wrote the code directory' \
           || echo 'code directory is read-only'\n\
         echo \"cwd=$(pwd) root=$USER_CODE_ROOT\"\n\
         exec ./scfsim-fixture echo\n",
    )
    .expect("bootstrap");
    std::fs::set_permissions(&bootstrap, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    code
}

#[tokio::test]
async fn code_functions_run_unchanged_with_isolation_docker() {
    require_engine();
    require(
        "scfsim's runtime image",
        "docker",
        &["image", "inspect", RUNTIME_IMAGE],
        "scripts/docker-runtime-images.sh",
    );
    let dir = tempfile::tempdir().expect("dir");
    let package = fixture_package(dir.path());
    let examples = repo_root().join("examples");
    let code = |name: &str, code_dir: &Path| {
        format!(
            "[[functions]]\nname = {}\npath = {}\ncode_dir = {}\n",
            quoted(name),
            quoted(&format!("/{name}")),
            quoted(&code_dir.display().to_string())
        )
    };
    let config = format!(
        "[gateway]\nisolation = \"docker\"\n{}{}{}",
        code("fixture", &package),
        code("python", &examples.join("close-code")),
        code("node", &examples.join("node-echo")),
    );
    let (scfsim, _dir) = serve(&config, vec![]).await;
    // The fixture package: runs, cannot write its code directory, sees /var/user.
    let mut client = scfsim.connect("/fixture").await;
    client.send_text("hi").await;
    client.expect_text("hi").await;
    assert_eq!(container_of(&client.request_id).len(), 1);
    client.close(1000, "").await;
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 200, "{record:#}");
    let lines = scfsim.log_lines(&client.request_id).await;
    assert!(
        lines.iter().any(|l| l == "code directory is read-only"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l == "cwd=/var/user root=/var/user"),
        "{lines:?}"
    );
    assert!(!package.join("state.txt").exists());
    // The repository's examples, bootstraps as on the platform (/var/lang/node16,
    // /var/lang/python3), answering as they do natively.
    let mut client = scfsim.connect("/node").await;
    client.send_text("echo me").await;
    let reply = client.next_message().await;
    assert!(
        matches!(&reply, Message::Text(t) if t.contains("echo me")),
        "node: {reply:?}\n{}",
        scfsim.log()
    );
    client.close(1000, "").await;
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 200, "node: {record:#}");
    // close-code echoes once, then closes with 4000: 439, as natively.
    let mut client = scfsim.connect("/python").await;
    client.send_text("echo me").await;
    client.expect_text("echo me").await;
    let (code, reason) = client.expect_close().await;
    assert_eq!((code, reason.as_str()), (4000, "bye from the function"));
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 439, "python: {record:#}");
    assert_eq!(
        record["end_reason"], "function_closed",
        "python: {record:#}"
    );
}

#[tokio::test]
async fn scfsim_check_accepts_image_functions_and_rejects_mixed_ones() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("scfsim.toml");
    let check = |text: &str| {
        std::fs::write(&path, text).expect("config");
        Command::new(scfsim_e2e::scfsim_bin())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("scfsim check")
    };
    let ok = check(&image_function(
        "img",
        "echo:1.0",
        &[
            ("command", list(&["/srv"])),
            ("args", list(&["--port", "9000"])),
        ],
    ));
    assert!(ok.status.success(), "{}", output_text(&ok));
    let mixed = check(&format!(
        "{}code_dir = \".\"\n",
        image_function("img", "echo:1.0", &[])
    ));
    assert_eq!(mixed.status.code(), Some(2), "{}", output_text(&mixed));
    assert!(
        output_text(&mixed).contains("functions.\"img\".code_dir"),
        "{}",
        output_text(&mixed)
    );
}

/// `DOCKER_HOST=tcp://` with TLS, as the Docker CLI reads it, against a second engine with
/// certificates made here: a client whose `ca.pem` is another CA's is refused when `serve`
/// starts (it sets the engine up then), naming `DOCKER_CERT_PATH`; with the right one an image
/// function echoes through the port the engine publishes, and its container, on that engine
/// only, is removed after.
#[tokio::test]
async fn the_tcp_engine_path_with_tls() {
    let image = fixture_image();
    let engine = second_engine::SecondEngine::start();
    let config = image_function("echo", image, &[]);

    // The wrong CA: scfsim serve ends at once with the reason.
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("scfsim.toml");
    std::fs::write(&path, &config).expect("config");
    let refused = scfsim_e2e::run_bounded(
        Command::new(scfsim_e2e::scfsim_bin())
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .envs(engine.env(&engine.wrong_ca_certs)),
        PATIENCE,
    );
    assert!(
        refused.status.is_some_and(|s| !s.success()),
        "serve with a wrong CA: {refused}"
    );
    // For the reader of the test's output: what a user sees.
    eprintln!("serve with a wrong CA:\n{}", refused.stderr);
    let wrong = engine.wrong_ca_certs.display().to_string();
    assert!(
        refused
            .stderr
            .contains(&format!("DOCKER_CERT_PATH={wrong}"))
            && refused.stderr.contains("TLS"),
        "the error names the certificates: {refused}"
    );

    engine.load(image);
    let (scfsim, _dir) = serve(&config, engine.env(&engine.client_certs)).await;
    assert!(
        scfsim.log().contains("port 9000 published on 127.0.0.1"),
        "{}",
        scfsim.log()
    );
    let mut client = scfsim.connect("/echo").await;
    client.send_text("over tcp and tls").await;
    client.expect_text("over tcp and tls").await;
    client.send_binary(vec![9, 0, 255]).await;
    client.expect_binary(&[9, 0, 255]).await;
    let label = format!("name=scfsim-{}", client.request_id);
    let remote = engine.containers_filtered(&label);
    assert_eq!(remote.len(), 1, "on the second engine: {remote:?}");
    assert!(
        container_of(&client.request_id).is_empty(),
        "nothing on the machine's engine"
    );
    let ports = engine.docker(&["port", &remote[0], "9000/tcp"]);
    assert!(
        ports.success() && !ports.stdout.trim().is_empty(),
        "port 9000 published: {ports}"
    );
    client.close(1000, "bye").await;
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 200, "{record:#}");
    assert_eq!(record["end_reason"], "client_closed", "{record:#}");
    assert_eq!(record["messages_in"], 2, "{record:#}");
    // Readiness came from the container's own sockets, not from the fallback that waits.
    assert!(!scfsim.log().contains("has no `cat`"), "{}", scfsim.log());
    eventually(
        "the container removed from the second engine",
        PATIENCE,
        || async {
            let left = engine.containers_filtered(&label);
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still there: {left:?}"))
            }
        },
    )
    .await;
    drop(scfsim);
    drop(engine);
}

/// The run id scfsim's startup log names (`containers: run RUN`).
fn run_of(scfsim: &Scfsim) -> String {
    let log = scfsim.log();
    log.split("containers: run ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `containers: run` line in the log:\n{log}"))
        .to_string()
}

/// `container_stock`: containers created ahead of demand (bounded by max_instances), taken by
/// a connection that only starts one, refilled after, and removed when scfsim stops.
#[tokio::test]
async fn a_stock_of_created_containers_is_taken_refilled_and_removed_at_shutdown() {
    let image = fixture_image();
    let config = image_function(
        "stocked",
        image,
        &[
            ("container_stock", "3".into()),
            ("max_instances", "2".into()),
        ],
    );
    let (scfsim, _dir) = serve(&config, vec![]).await;
    let run = format!("io.scfsim.run={}", run_of(&scfsim));
    let stock = || {
        let created = containers_filtered("status=created");
        let mut ours = containers_labelled(&run);
        ours.retain(|id| created.contains(id));
        ours.sort();
        ours
    };

    // The first connection's container is made for it; the stock fills behind it, to
    // max_instances (2), not container_stock (3).
    let mut first = scfsim.connect("/stocked").await;
    first.send_text("one").await;
    first.expect_text("one").await;
    let before: Vec<String> = eventually("the stock filled", PATIENCE, || async {
        let now = stock();
        if now.len() == 2 {
            Ok(now)
        } else {
            Err(format!("stock: {now:?}"))
        }
    })
    .await;
    first.close(1000, "").await;
    scfsim.record(&first.request_id).await;

    // The next connection starts one of them: a container that existed before it connected.
    let mut second = scfsim.connect("/stocked").await;
    second.send_text("two").await;
    second.expect_text("two").await;
    let used = container_of(&second.request_id);
    assert_eq!(used.len(), 1, "{used:?}");
    assert!(
        before.contains(&used[0]),
        "the connection's container {} was not in the stock {before:?}",
        used[0]
    );
    let state = docker(&["inspect", "-f", "{{.State.Status}}", &used[0]]);
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "running");

    // Refilled, never beyond max_instances.
    let after: Vec<String> = eventually("the stock refilled", PATIENCE, || async {
        let now = stock();
        assert!(now.len() <= 2, "stock beyond max_instances: {now:?}");
        if now.len() == 2 && !now.contains(&used[0]) {
            Ok(now)
        } else {
            Err(format!("stock: {now:?}"))
        }
    })
    .await;
    assert!(!after.contains(&used[0]));
    second.close(1000, "").await;
    let record = scfsim.record(&second.request_id).await;
    assert_eq!(record["status_code"], 200, "{record:#}");
    let lines = scfsim.log_lines(&second.request_id).await;
    assert!(
        lines.iter().any(|l| l.contains("fixture: listening")),
        "the stocked container's output is kept under the request id: {lines:?}"
    );

    // Stopping scfsim removes its stock with everything else.
    drop(scfsim);
    eventually("no container of the run left", PATIENCE, || async {
        let left = containers_labelled(&run);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("left: {left:?}"))
        }
    })
    .await;
}
