//! scfsim's own lifecycle: drain on SIGTERM, nothing left behind on SIGKILL, records that
//! survive a restart.

use scfsim_e2e::procs::{bootstraps_with, processes_with};
use scfsim_e2e::{eventually, Function, Scfsim, PATIENCE};

async fn wait_until_gone(marker: &str) {
    eventually("the instance processes to be gone", PATIENCE, || async {
        match processes_with(marker) {
            left if left.is_empty() => Ok(()),
            left => Err(format!("still running: {left:?}")),
        }
    })
    .await
}

/// The host's nftables tables of the `ip` family (scfsim's NAT is `ip scfsim_<pid>_<n>`).
fn nat_tables() -> Vec<String> {
    let out = std::process::Command::new("nft")
        .args(["list", "tables", "ip"])
        .output()
        .expect(
            "nft is missing: install it with `apt-get install nftables` \
             (scripts/test-setup.sh installs everything the tests need)",
        );
    assert!(
        out.status.success(),
        "nft list tables ip: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("table ip "))
        .map(str::to_string)
        .collect()
}

fn marked(name: &str, marker: &str, mode: &[&str]) -> Function {
    Function::fixture(name, mode).set("env", &format!("{{ SCFSIM_TEST_MARKER = {marker:?} }}"))
}

#[tokio::test]
async fn sigterm_drains_every_connection_with_1001_and_records_500() {
    let marker = uuid::Uuid::new_v4().to_string();
    let mut scfsim = Scfsim::start(vec![marked("echo", &marker, &["echo"])]).await;
    let mut a = scfsim.connect("/echo").await;
    let mut b = scfsim.connect("/echo").await;
    a.send_text("x").await;
    a.expect_text("x").await;
    assert_eq!(bootstraps_with(&marker).len(), 2);
    let dir = scfsim.dir.clone();
    let (status, closes) = tokio::join!(scfsim.signal(libc::SIGTERM), async {
        (a.expect_close().await, b.expect_close().await)
    });
    assert!(status.success(), "scfsim exited with {status}");
    assert_eq!(closes.0 .0, 1001);
    assert_eq!(closes.1 .0, 1001);
    wait_until_gone(&marker).await;

    // The records were written before scfsim exited: a new scfsim on the same data reads them.
    let restarted = Scfsim::reopen(dir).await;
    for id in [&a.request_id, &b.request_id] {
        let record = restarted.record(id).await;
        assert_eq!(record["status_code"], 500, "{record:#}");
        assert_eq!(record["end_reason"], "gateway_shutdown");
        assert_eq!(record["close_code"], 1001);
    }
    assert_eq!(
        restarted
            .get(&format!("/api/invocations/{}", a.request_id))
            .await["messages_in"],
        1
    );
}

#[tokio::test]
async fn sigkill_of_scfsim_leaves_no_instance_behind_and_the_restart_completes_the_records() {
    let marker = uuid::Uuid::new_v4().to_string();
    let mut scfsim = Scfsim::start(vec![
        marked("echo", &marker, &["echo"]),
        marked("daemon", &marker, &["fork-daemon"]),
    ])
    .await;
    let mut finished = scfsim.connect("/echo").await;
    finished.close(1000, "").await;
    scfsim.record(&finished.request_id).await;
    let mut open = Vec::new();
    for path in ["/echo", "/echo", "/daemon"] {
        let mut c = scfsim.connect(path).await;
        c.send_text("up").await;
        c.expect_text("up").await;
        open.push(c);
    }
    // Three bootstraps, and the daemonized grandchild that left the process group.
    assert!(
        bootstraps_with(&marker).len() >= 4,
        "{:?}",
        bootstraps_with(&marker)
    );
    let dir = scfsim.dir.clone();
    let nat_table = format!("scfsim_{}_0", scfsim.pid());
    assert!(nat_tables().contains(&nat_table), "{:?}", nat_tables());
    let status = scfsim.signal(libc::SIGKILL).await;
    assert!(!status.success());
    wait_until_gone(&marker).await;

    let restarted = Scfsim::reopen(dir).await;
    // The dead scfsim's NAT table is gone: the new one removed it at its start.
    assert!(!nat_tables().contains(&nat_table), "{:?}", nat_tables());
    let record = restarted.record(&finished.request_id).await;
    assert_eq!(record["status_code"], 200);
    for c in &open {
        let record = restarted.record(&c.request_id).await;
        assert_eq!(record["status_code"], 500, "{record:#}");
        assert_eq!(record["end_reason"], "gateway_crashed");
    }
}

#[tokio::test]
async fn stopping_an_instance_ends_its_forked_daemons() {
    let marker = uuid::Uuid::new_v4().to_string();
    let scfsim = Scfsim::start(vec![marked("daemon", &marker, &["fork-daemon"])]).await;
    let mut c = scfsim.connect("/daemon").await;
    c.send_text("x").await;
    c.expect_text("x").await;
    assert!(bootstraps_with(&marker).len() >= 2);
    c.close(1000, "").await;
    scfsim.record(&c.request_id).await;
    wait_until_gone(&marker).await;
}

const SILENT_LISTENER: &str = "exec python3 -c \"
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 9000)); s.listen()
c, _ = s.accept(); time.sleep(600)
\"";

#[tokio::test]
async fn sigterm_during_the_instances_handshake_answers_503_and_records_shutdown() {
    let mut scfsim = Scfsim::start(vec![Function::script("mute", SILENT_LISTENER)]).await;
    let url = scfsim.url("/mute");
    let pending = tokio::spawn(async move { tokio_tungstenite::connect_async(url).await });
    // The record exists (running) once the invocation began; then the instance is listening
    // but mute.
    scfsim
        .eventually("the invocation to begin", || async {
            let list = scfsim.get("/api/invocations?function=mute").await;
            if list.as_array().unwrap().is_empty() {
                Err("no invocation listed")
            } else {
                Ok(())
            }
        })
        .await;
    let dir = scfsim.dir.clone();
    let log = scfsim.dir.join("scfsim.stderr");
    let status = scfsim.signal(libc::SIGTERM).await;
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    let answer = tokio::time::timeout(PATIENCE, pending)
        .await
        .expect("an answer to the pending upgrade within patience")
        .unwrap();
    let (http, _, _) = scfsim_e2e::refused(answer.expect_err("refused"));
    assert_eq!(http, 503);
    let restarted = Scfsim::reopen(dir).await;
    let record = restarted.last_record("mute").await;
    assert_eq!(record["end_reason"], "gateway_shutdown", "{record:#}");
}

#[tokio::test]
async fn a_client_that_leaves_during_the_start_frees_its_instance_at_once() {
    use tokio::io::AsyncWriteExt;
    let scfsim = Scfsim::start(vec![Function::fixture("slow", &["slow-listen", "20000"])]).await;
    let addr = scfsim.ws.trim_start_matches("ws://").to_string();
    let mut tcp = tokio::time::timeout(PATIENCE, tokio::net::TcpStream::connect(&addr))
        .await
        .expect("connect within patience")
        .unwrap();
    tcp.write_all(
        b"GET /slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    scfsim
        .eventually("the invocation to begin", || async {
            let list = scfsim.get("/api/invocations?function=slow").await;
            if list.as_array().unwrap().is_empty() {
                Err("no invocation listed")
            } else {
                Ok(())
            }
        })
        .await;
    drop(tcp);
    let record = scfsim.last_record("slow").await;
    assert_eq!(record["status_code"], 456, "{record:#}");
    assert_eq!(record["end_reason"], "client_dropped");
    // It ended before the instance listened (20 s from now), not after.
    assert!(record["startup_ms"].is_null(), "{record:#}");
}
