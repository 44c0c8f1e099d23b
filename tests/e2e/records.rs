//! The record store through the real binary: records in `data_dir/scfsim.db` survive a SIGKILL
//! under load, an older scfsim's journal is imported, a full disk loses nothing and recovers,
//! and a second scfsim on the same data_dir is refused.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use scfsim_e2e::{Function, Options, Scfsim, PATIENCE};
use serde_json::Value;

/// Every record of `function` the admin API lists (fewer than 1000 in these tests).
async fn all_records(scfsim: &Scfsim, function: &str) -> Vec<Value> {
    let (status, body) = scfsim
        .get_status(&format!("/api/invocations?function={function}&limit=1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn ids(records: &[Value]) -> BTreeSet<String> {
    records
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits (bounded) until `check` holds for the admin API's answer to `path`.
async fn wait_for(scfsim: &Scfsim, path: &str, check: impl Fn(u16, &str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = scfsim.get_status(path).await;
        if check(status, &body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never matched; last: {status} {body}\nscfsim log:\n{}",
            scfsim.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigkill_under_40_concurrent_connections_loses_no_record() {
    const N: usize = 40;
    let mut scfsim = Scfsim::start(vec![Function::fixture("echo", &["echo"])]).await;
    let clients = futures_util::future::join_all((0..N).map(|_| async {
        let mut c = scfsim.connect("/echo").await;
        c.send_text("up").await;
        c.expect_text("up").await;
        c
    }))
    .await;
    let expected: BTreeSet<String> = clients.iter().map(|c| c.request_id.clone()).collect();
    assert_eq!(expected.len(), N);
    let dir = scfsim.dir.clone();
    let status = scfsim.signal(libc::SIGKILL).await;
    assert!(!status.success());
    drop(clients);

    let restarted = Scfsim::reopen(dir).await;
    let records = all_records(&restarted, "echo").await;
    assert_eq!(ids(&records), expected, "every connection has its record");
    for r in &records {
        assert_eq!(r["status_code"], 500, "{r:#}");
        assert_eq!(r["end_reason"], "gateway_crashed");
    }
}

#[tokio::test]
async fn an_old_journal_is_imported_once_and_kept_as_a_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("logs")).unwrap();
    let done = uuid::Uuid::new_v4();
    let running = uuid::Uuid::new_v4();
    let journal = format!(
        "{{\"event\":\"start\",\"invocation\":{{\"request_id\":\"{running}\",\"function\":\"echo\",\
         \"started_at\":\"2024-05-01T10:00:00Z\"}}}}\n\
         {{\"event\":\"end\",\"invocation\":{{\"request_id\":\"{done}\",\"function\":\"echo\",\
         \"status_code\":200,\"outcome\":\"success\",\"end_reason\":\"client_closed\",\
         \"close_code\":1000,\"close_reason\":\"\",\"closed_by\":\"client\",\
         \"started_at\":\"2024-05-01T10:00:01Z\",\"ended_at\":\"2024-05-01T10:00:02Z\",\
         \"duration_ms\":1000,\"messages_in\":2,\"messages_out\":2,\"bytes_in\":4,\"bytes_out\":4}}}}\n"
    );
    std::fs::write(data.join("invocations.jsonl"), journal).unwrap();
    std::fs::write(
        data.join("logs").join(format!("{done}.jsonl")),
        "{\"at\":\"2024-05-01T10:00:01Z\",\"stream\":\"stdout\",\"line\":\"hello from the past\"}\n",
    )
    .unwrap();

    let mut scfsim = Scfsim::start_with(
        vec![Function::fixture("echo", &["echo"])],
        Options {
            dir: Some(tmp.path().to_path_buf()),
            ..Options::default()
        },
    )
    .await;
    let record = scfsim.record(&done.to_string()).await;
    assert_eq!(record["status_code"], 200);
    assert_eq!(record["messages_in"], 2);
    let crashed = scfsim.record(&running.to_string()).await;
    assert_eq!(crashed["end_reason"], "gateway_crashed");
    assert_eq!(
        scfsim.log_lines(&done.to_string()).await,
        ["hello from the past"]
    );
    assert!(!data.join("invocations.jsonl").exists());
    assert!(data.join("invocations.jsonl.imported").exists());
    assert!(data.join("scfsim.db").exists());
    let metrics = wait_for(&scfsim, "/metrics", |s, _| s == 200).await;
    assert!(
        metrics.contains(
            r#"scfsim_invocations_total{function="echo",status_code="200",end_reason="client_closed"} 1"#
        ),
        "{metrics}"
    );

    // A restart reads the database, and imports nothing twice.
    assert!(scfsim.signal(libc::SIGTERM).await.success());
    let restarted = Scfsim::reopen(tmp.path().to_path_buf()).await;
    assert_eq!(all_records(&restarted, "echo").await.len(), 2);
    assert!(
        !restarted.log().contains("imported the invocation journal"),
        "{}",
        restarted.log()
    );
}

#[tokio::test]
async fn a_second_scfsim_on_the_same_data_dir_is_refused_with_advice() {
    let scfsim = Scfsim::start(vec![Function::fixture("echo", &["echo"])]).await;
    let out = std::process::Command::new(scfsim_e2e::scfsim_bin())
        .arg("serve")
        .arg("--config")
        .arg(scfsim.dir.join("scfsim.toml"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(scfsim.dir.join("data"))
        .output()
        .expect("run a second scfsim");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another scfsim"), "{stderr}");
    assert!(stderr.contains("--data-dir"), "{stderr}");
}

/// A tmpfs of `size` mounted on `path`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount(8)");
        assert!(
            status.success(),
            "mount a tmpfs (the e2e tests run as root)"
        );
        Tmpfs(path.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system of `dir` with one file, to the last byte it accepts.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let mut chunk = 1 << 16;
    while chunk > 0 {
        if file.write_all(&vec![0u8; chunk]).is_err() {
            chunk /= 2;
        }
    }
    path
}

#[tokio::test]
async fn a_full_disk_loses_no_record_and_writing_resumes_when_space_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Declared before scfsim: unmounted after scfsim is gone.
    let _tmpfs = Tmpfs::mount(&data, "4m");
    let mut scfsim = Scfsim::start_with(
        vec![Function::fixture("echo", &["echo"])],
        Options {
            dir: Some(tmp.path().to_path_buf()),
            ..Options::default()
        },
    )
    .await;
    let mut expected = BTreeSet::new();
    for _ in 0..5 {
        let mut c = scfsim.connect("/echo").await;
        c.send_text("before").await;
        c.expect_text("before").await;
        c.close(1000, "").await;
        scfsim.record(&c.request_id).await;
        expected.insert(c.request_id.clone());
    }
    assert_eq!(wait_for(&scfsim, "/healthz", |s, _| s == 200).await, "ok\n");

    let filler = fill(&data);
    // Connections are still served while records cannot be written.
    for i in 0..30 {
        let mut c = scfsim.connect("/echo").await;
        let text = format!("full {i}");
        c.send_text(&text).await;
        c.expect_text(&text).await;
        c.close(1000, "").await;
        let record = scfsim.record(&c.request_id).await;
        assert_eq!(record["status_code"], 200);
        expected.insert(c.request_id.clone());
    }
    let health = wait_for(&scfsim, "/healthz", |s, b| {
        s == 200 && b.starts_with("degraded")
    })
    .await;
    assert!(health.contains("No space left on device"), "{health}");
    let metrics = wait_for(&scfsim, "/metrics", |s, _| s == 200).await;
    assert!(metrics.contains("scfsim_store_degraded 1"), "{metrics}");
    assert!(
        !metrics.contains("scfsim_store_write_failures_total 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"scfsim_invocations_total{function="echo",status_code="200",end_reason="client_closed"} 35"#
        ),
        "records kept in memory are counted: {metrics}"
    );
    // Every record is queryable meanwhile.
    assert_eq!(ids(&all_records(&scfsim, "echo").await), expected);
    let log = scfsim.log();
    let said = log
        .lines()
        .filter(|l| l.contains("cannot write invocation records"))
        .collect::<Vec<_>>();
    assert_eq!(said.len(), 1, "said once:\n{log}");
    assert!(said[0].contains("No space left on device"), "{}", said[0]);
    assert!(said[0].contains("scfsim.db"), "names the file: {}", said[0]);

    std::fs::remove_file(filler).unwrap();
    assert_eq!(
        wait_for(&scfsim, "/healthz", |s, b| s == 200 && b == "ok\n").await,
        "ok\n"
    );
    assert!(
        scfsim.log().contains("writing invocation records again"),
        "{}",
        scfsim.log()
    );

    // On disk: a restart finds every record.
    assert!(scfsim.signal(libc::SIGTERM).await.success());
    let restarted = Scfsim::reopen(tmp.path().to_path_buf()).await;
    assert_eq!(ids(&all_records(&restarted, "echo").await), expected);
    drop(restarted);
}
