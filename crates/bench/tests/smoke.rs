//! Smoke test of `scfsim-bench`: every scenario at tiny sizes against the real scfsim and the
//! real fixture, with the reference columns (nginx, websocketd) too. Asserts only that nothing
//! failed, nothing was skipped and that each scenario printed its JSON line; no figure is
//! checked (timing does not gate `cargo test`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

/// A binary next to the test executable's (`target/<profile>/deps/..`).
fn built(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo test --workspace` (or `cargo build -p scfsim -p scfsim-e2e` \
         first)",
        path.display()
    );
    path
}

/// Bound on one `scfsim-bench` run at tiny sizes; only reached when something is broken (the
/// benchmark is then killed, and the test fails instead of hanging).
const PATIENCE: Duration = Duration::from_secs(600);

async fn run(args: &[&str]) -> Vec<Value> {
    let bench = tokio::process::Command::new(env!("CARGO_BIN_EXE_scfsim-bench"))
        .arg("--scfsim")
        .arg(built("scfsim"))
        .arg("--fixture")
        .arg(built("scfsim-fixture"))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, bench)
        .await
        .unwrap_or_else(|_| panic!("scfsim-bench {args:?} did not finish within {PATIENCE:?}"))
        .expect("run scfsim-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scfsim-bench {args:?} failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(!lines.is_empty(), "no JSON line in:\n{stdout}");
    lines
}

fn errors(v: &Value) -> u64 {
    match v["scenario"].as_str() {
        Some("hold") => v["errors"]["count"].as_u64().unwrap_or(u64::MAX),
        _ => v["targets"]
            .as_object()
            .expect("targets")
            .values()
            .map(|t| t["errors"]["count"].as_u64().unwrap_or(u64::MAX))
            .sum(),
    }
}

/// nginx and websocketd, the reference columns, must be there: a column the benchmark skips
/// would pass here unchecked.
fn require_references() {
    for (name, path) in [
        ("nginx", "/usr/sbin/nginx"),
        ("websocketd", "/usr/bin/websocketd"),
    ] {
        assert!(
            Path::new(path).is_file(),
            "{name} is missing ({path}): install it with `apt-get install {name}` \
             (scripts/test-setup.sh installs everything the tests need)"
        );
    }
}

#[tokio::test]
async fn every_scenario_runs_at_tiny_sizes() {
    require_references();
    let echo = run(&[
        "echo", "-c", "2", "-n", "10", "-s", "64K", "--rounds", "2", "--warmup", "1",
    ])
    .await;
    let connect = run(&[
        "connect", "-n", "4", "-c", "2", "--rounds", "2", "--warmup", "1",
    ])
    .await;
    let hold = run(&["hold", "-n", "4", "-c", "2"]).await;
    let provisioned = run(&["provisioned", "-n", "4", "--rounds", "2", "--warmup", "1"]).await;

    let echo = &echo[0];
    assert_eq!(echo["scenario"], "echo");
    assert_eq!(errors(echo), 0, "{echo}");
    assert_eq!(echo["skipped"], serde_json::json!({}), "{echo}");
    for t in ["direct", "scfsim", "nginx"] {
        assert_eq!(echo["targets"][t]["messages"], 20, "{echo}");
    }

    let connect = &connect[0];
    assert_eq!(connect["scenario"], "connect");
    assert_eq!(errors(connect), 0, "{connect}");
    assert_eq!(connect["skipped"], serde_json::json!({}), "{connect}");
    for t in ["floor", "floor-exec", "scfsim", "websocketd"] {
        assert_eq!(connect["targets"][t]["connections"], 4, "{connect}");
    }

    let hold = &hold[0];
    assert_eq!(hold["scenario"], "hold");
    assert_eq!(errors(hold), 0, "{hold}");
    assert_eq!(hold["opened"], 4, "{hold}");
    assert_eq!(hold["live_instances"], 4, "{hold}");

    let provisioned = &provisioned[0];
    assert_eq!(provisioned["scenario"], "provisioned");
    assert_eq!(errors(provisioned), 0, "{provisioned}");
    for t in ["direct", "scfsim_provisioned"] {
        assert_eq!(provisioned["targets"][t]["connections"], 4, "{provisioned}");
    }
}
