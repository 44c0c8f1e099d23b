//! The example functions in examples/, through scfsim: each one's own behaviour (echo, server
//! push, binary digests, a custom close code, Rust), the echoes also 20 at once, and
//! config/scfsim.toml itself, served as users serve it. An example whose runtime or library is
//! missing fails, naming the command that installs it (scripts/test-setup.sh installs them all).
//!
//! Nothing here asserts on elapsed time: waits are bounded only so that a broken build fails
//! instead of hanging.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use scfsim_e2e::{
    output_text, refused, repo_root, require, run, Client, Function, Options, Scfsim,
    BUILD_PATIENCE,
};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

fn python3() {
    require(
        "python3",
        "python3",
        &["--version"],
        "apt-get install python3",
    );
}

fn python_websockets() {
    require(
        "python3's websockets library",
        "python3",
        &["-c", "import websockets"],
        "python3 -m pip install -r examples/python-echo/requirements.txt",
    );
}

/// Node.js, and the example's dependencies installed from its lock file.
fn node_example(dir: &str) {
    require("node", "node", &["--version"], "apt-get install nodejs");
    assert!(
        example(dir).join("node_modules").exists(),
        "examples/{dir}/node_modules is missing: install it with `npm ci --prefix examples/{dir}` \
         (scripts/test-setup.sh installs everything the tests need)"
    );
}

fn example(dir: &str) -> PathBuf {
    repo_root().join("examples").join(dir)
}

async fn twenty_at_once(name: &str) {
    let scfsim = Scfsim::start(vec![Function::code_dir(name, example(name))]).await;
    twenty_at_once_on(&scfsim, &format!("/{name}")).await;
}

async fn twenty_at_once_on(scfsim: &Scfsim, path: &str) {
    let mut clients = futures_util::future::join_all((0..20).map(|_| scfsim.connect(path))).await;
    for (i, c) in clients.iter_mut().enumerate() {
        c.send_text(&format!("hello {i}")).await;
        c.send_binary(vec![i as u8; 3]).await;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.expect_text(&format!("hello {i}")).await;
        c.expect_binary(&[i as u8; 3]).await;
        c.close(1000, "").await;
    }
    for c in &clients {
        let record = scfsim.record(&c.request_id).await;
        assert_eq!(record["status_code"], 200, "{record:#}");
        assert_eq!(record["messages_out"], 2);
    }
    let logs = scfsim
        .get(&format!("/api/invocations/{}/logs", clients[0].request_id))
        .await;
    assert!(
        !logs["lines"].as_array().unwrap().is_empty(),
        "example logs captured"
    );
}

#[tokio::test]
async fn stdlib_python_echo() {
    python3();
    twenty_at_once("echo").await;
}

#[tokio::test]
async fn python_websockets_echo() {
    python_websockets();
    twenty_at_once("python-echo").await;
}

#[tokio::test]
async fn node_ws_echo() {
    node_example("node-echo");
    twenty_at_once("node-echo").await;
}

// ---- examples/push ----------------------------------------------------------------------------

/// Reads messages until the echo of `sent` and at least one well-formed tick have arrived (in
/// whatever order); ticks must count 1, 2, 3, ... Returns the number of ticks seen.
async fn expect_echo_and_tick(client: &mut Client, sent: &str) -> u64 {
    let (mut echoed, mut ticks) = (false, 0u64);
    // A tick comes every 2 s: 20 messages is far more than the echo and one tick need.
    for _ in 0..20 {
        match client.next_message().await {
            Message::Text(text) if text.as_str() == sent && !echoed => echoed = true,
            Message::Text(text) => {
                let tick: Value = serde_json::from_str(text.as_str())
                    .unwrap_or_else(|e| panic!("neither the echo nor a tick: {text:?} ({e})"));
                assert_eq!(tick["type"], "tick", "{tick}");
                ticks += 1;
                assert_eq!(tick["n"], ticks, "ticks count from 1: {tick}");
            }
            other => panic!("expected text from the push example, got {other:?}"),
        }
        if echoed && ticks > 0 {
            return ticks;
        }
    }
    panic!("20 messages without both the echo (seen: {echoed}) and a tick (seen: {ticks})");
}

#[tokio::test]
async fn push_echoes_and_pushes_ticks() {
    python_websockets();
    let scfsim = Scfsim::start(vec![Function::code_dir("push", example("push"))]).await;
    let mut client = scfsim.connect("/push").await;
    client.send_text("hello").await;
    let ticks = expect_echo_and_tick(&mut client, "hello").await;
    client.close(1000, "").await;
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 200, "{record:#}");
    assert_eq!(record["messages_in"], 1, "{record:#}");
    assert!(
        record["messages_out"].as_u64().unwrap() > ticks,
        "the echo and the ticks: {record:#}"
    );
}

// ---- examples/binary ---------------------------------------------------------------------------

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// SHA-256 test vectors (FIPS 180-2 examples, and the empty message).
const SHA256_VECTORS: &[(&[u8], &str)] = &[
    (
        b"abc",
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    ),
    (
        b"",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ),
    (
        b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
    ),
];

#[tokio::test]
async fn binary_answers_sha256_digests() {
    node_example("binary");
    let scfsim = Scfsim::start(vec![Function::code_dir("binary", example("binary"))]).await;
    let mut client = scfsim.connect("/binary").await;
    for (data, digest) in SHA256_VECTORS {
        client.send_binary(data.to_vec()).await;
        client.expect_binary(&hex(digest)).await;
    }
    // Text is a mistake the function explains, and the connection goes on.
    client.send_text("abc").await;
    match client.next_message().await {
        Message::Text(t) => assert!(t.as_str().starts_with("error:"), "{t:?}"),
        other => panic!("expected an error text, got {other:?}"),
    }
    client.send_binary(b"abc".to_vec()).await;
    client.expect_binary(&hex(SHA256_VECTORS[0].1)).await;
    client.close(1000, "").await;
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 200, "{record:#}");
    assert_eq!(record["messages_in"], 5, "{record:#}");
    assert_eq!(record["messages_out"], 5, "{record:#}");
}

// ---- examples/close-code -----------------------------------------------------------------------

#[tokio::test]
async fn close_code_is_4000_for_the_client_and_439_in_the_record() {
    python3();
    let scfsim = Scfsim::start(vec![Function::code_dir(
        "close-code",
        example("close-code"),
    )])
    .await;
    let mut client = scfsim.connect("/close-code").await;
    client.send_text("hello").await;
    client.expect_text("hello").await;
    assert_eq!(
        client.expect_close().await,
        (4000, "bye from the function".to_string())
    );
    client.finish().await;
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 439, "{record:#}");
    assert_eq!(record["end_reason"], "function_closed", "{record:#}");
    assert_eq!(record["close_code"], 4000, "{record:#}");
    assert_eq!(
        record["close_reason"], "bye from the function",
        "{record:#}"
    );
    assert_eq!(record["closed_by"], "function", "{record:#}");
}

// ---- examples/rust-echo ------------------------------------------------------------------------

/// `target/`, the workspace's target dir (the test executable is in `target/<profile>/deps`).
fn workspace_target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .expect("tests run from target/<profile>/deps")
        .to_path_buf()
}

/// Where the tests build examples/rust-echo (`CARGO_TARGET_DIR` of that build).
fn rust_echo_target_dir() -> PathBuf {
    workspace_target_dir().join("examples-rust-echo")
}

fn tail(out: &str) -> String {
    let lines: Vec<&str> = out.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Builds examples/rust-echo once per test run (bounded; a failure fails every test that needs
/// it) and returns its `CARGO_TARGET_DIR`.
async fn build_rust_echo() -> PathBuf {
    static BUILT: tokio::sync::OnceCell<Result<PathBuf, String>> =
        tokio::sync::OnceCell::const_new();
    let built = BUILT
        .get_or_init(|| async {
            let target = rust_echo_target_dir();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let manifest = example("rust-echo").join("Cargo.toml");
            let build = |extra: &'static [&'static str]| {
                let mut cmd = tokio::process::Command::new(&cargo);
                cmd.args(["build", "--release", "--locked", "--manifest-path"])
                    .arg(&manifest)
                    .args(extra)
                    .env("CARGO_TARGET_DIR", &target);
                cmd
            };
            let what = "`cargo build --release --manifest-path examples/rust-echo/Cargo.toml`";
            let install = "rustup (https://rustup.rs)";
            // Offline first (the workspace's own build has put the crates in the local cache),
            // then online: crates.io is reachable from here.
            let mut out = run(what, &mut build(&["--offline"]), BUILD_PATIENCE, install).await;
            if !out.status.success() {
                out = run(what, &mut build(&[]), BUILD_PATIENCE, install).await;
            }
            if out.status.success() {
                Ok(target)
            } else {
                Err(format!("{what} failed:\n{}", tail(&output_text(&out))))
            }
        })
        .await;
    built.clone().unwrap_or_else(|why| panic!("{why}"))
}

/// examples/rust-echo with its bootstrap pointed at the tests' build (`CARGO_TARGET_DIR`).
fn rust_echo_function(target: &Path) -> Function {
    Function::code_dir("rust-echo", example("rust-echo"))
        .path("/rust")
        .set(
            "env",
            &format!(
                "{{ CARGO_TARGET_DIR = {:?} }}",
                target.display().to_string()
            ),
        )
}

#[tokio::test]
async fn rust_echo() {
    let target = build_rust_echo().await;
    let scfsim = Scfsim::start(vec![rust_echo_function(&target)]).await;
    twenty_at_once_on(&scfsim, "/rust").await;
}

#[tokio::test]
async fn rust_echo_not_built_says_so() {
    let empty = tempfile::tempdir().expect("temp dir");
    let scfsim = Scfsim::start(vec![rust_echo_function(empty.path())]).await;
    let (status, _, body) = refused(
        scfsim
            .connect_with("/rust", &[])
            .await
            .err()
            .expect("no binary: the upgrade fails"),
    );
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("is not built yet"), "{body}");
    assert!(body.contains("cargo build --release"), "{body}");
    let record = scfsim.last_record("rust-echo").await;
    assert_eq!(record["status_code"], 405, "{record:#}");
}

// ---- config/scfsim.toml, served as it is ------------------------------------------------------

/// What the check of one function of config/scfsim.toml sends and expects.
#[derive(Clone, Copy)]
enum Check {
    /// Echoes text and binary.
    Echo,
    /// Echoes, and pushes ticks.
    Push,
    /// Answers binary with its SHA-256 digest.
    Digest,
    /// Echoes one message, then closes with 4000 (a 439).
    CloseCode,
}

#[tokio::test]
async fn config_serves_every_example() {
    let rust_target = build_rust_echo().await;
    python_websockets();
    node_example("node-echo");
    node_example("binary");
    // name -> (path, check)
    let expected: BTreeMap<&str, (&str, Check)> = BTreeMap::from([
        ("echo", ("/echo", Check::Echo)),
        ("python-echo", ("/python", Check::Echo)),
        ("node-echo", ("/node", Check::Echo)),
        ("push", ("/push", Check::Push)),
        ("binary", ("/binary", Check::Digest)),
        ("close-code", ("/close-code", Check::CloseCode)),
        ("rust-echo", ("/rust", Check::Echo)),
    ]);
    let served = Scfsim::start_with(
        vec![],
        Options {
            config: Some(repo_root().join("config/scfsim.toml")),
            // The config passes CARGO_TARGET_DIR on to instances: rust-echo's bootstrap finds
            // the tests' build there.
            env: vec![(
                "CARGO_TARGET_DIR".to_string(),
                rust_target.display().to_string(),
            )],
            ..Options::default()
        },
    )
    .await;
    let functions = served.get("/api/functions").await;
    let configured: BTreeMap<String, String> = functions
        .as_array()
        .expect("a list of functions")
        .iter()
        .map(|f| {
            (
                f["name"].as_str().expect("name").to_string(),
                f["path"].as_str().expect("path").to_string(),
            )
        })
        .collect();
    let wanted: BTreeMap<String, String> = expected
        .iter()
        .map(|(name, (path, _))| (name.to_string(), path.to_string()))
        .collect();
    assert_eq!(
        configured, wanted,
        "config/scfsim.toml's functions (left) are the ones this test checks (right): add a check \
         for a new one"
    );
    for (name, (path, check)) in expected {
        let mut client = served.connect(path).await;
        let status = match check {
            Check::Echo => {
                client.send_text("hello").await;
                client.expect_text("hello").await;
                client.send_binary(vec![0, 1, 255]).await;
                client.expect_binary(&[0, 1, 255]).await;
                client.close(1000, "").await;
                200
            }
            Check::Push => {
                client.send_text("hello").await;
                expect_echo_and_tick(&mut client, "hello").await;
                client.close(1000, "").await;
                200
            }
            Check::Digest => {
                let (data, digest) = SHA256_VECTORS[0];
                client.send_binary(data.to_vec()).await;
                client.expect_binary(&hex(digest)).await;
                client.close(1000, "").await;
                200
            }
            Check::CloseCode => {
                client.send_text("hello").await;
                client.expect_text("hello").await;
                assert_eq!(client.expect_close().await.0, 4000);
                client.finish().await;
                439
            }
        };
        let record = served.record(&client.request_id).await;
        assert_eq!(record["function"], name, "{record:#}");
        assert_eq!(record["status_code"], status, "{name}: {record:#}");
    }
}
