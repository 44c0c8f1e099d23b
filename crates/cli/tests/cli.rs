//! The command line's contract: exit codes and messages of `scfsim check`, usage errors.

use std::path::Path;
use std::process::{Command, Output};

fn scfsim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scfsim"))
}

/// `scfsim check --config <config>`.
fn check(config: &Path) -> Output {
    scfsim()
        .arg("check")
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn check_accepts_the_shipped_config() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/scfsim.toml");
    let out = check(Path::new(config));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
}

#[test]
fn check_names_the_file_the_field_and_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[[functions]]\nname = \"f\"\npath = \"/f\"\ncode_dir = \".\"\nidle_timeout = \"2s\"\n",
    )
    .unwrap();
    let out = check(&config);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("idle_timeout"), "{err}");
    assert!(err.contains("10s"), "{err}");
    assert!(err.contains("relaxed_limits"), "{err}");
}

#[test]
fn unknown_keys_and_missing_files_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("typo.toml");
    std::fs::write(&config, "[gateway]\nlisten_addr = \"127.0.0.1:1\"\n").unwrap();
    let out = check(&config);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen_addr"));

    let out = scfsim()
        .args(["serve", "--config", "/nonexistent/scfsim.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/scfsim.toml"));

    let out = scfsim().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn invocations_says_when_scfsim_is_not_running() {
    let out = scfsim()
        .args(["invocations", "--admin", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"));
}

#[test]
fn a_non_loopback_admin_listener_without_a_token_is_refused() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/scfsim.toml");
    let out = scfsim()
        .args(["serve", "--config", config, "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "0.0.0.0:0", "--data-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin_token"));
}
