//! Provisioned instances (`provisioned_instances = N`): started ahead of demand, each handed
//! to exactly one connection and replaced, replaced when one dies while it waits, counted in
//! `max_instances`, and stopped with scfsim.

use std::collections::BTreeSet;

use scfsim_e2e::procs::{bootstraps_with, processes_with};
use scfsim_e2e::{eventually, Function, Scfsim, PATIENCE};
use serde_json::Value;

/// The fixture echoing, with a marker in its environment that finds its processes.
fn provisioned(name: &str, marker: &str, n: u32) -> Function {
    Function::fixture(name, &["echo"])
        .set("env", &format!("{{ SCFSIM_TEST_MARKER = {marker:?} }}"))
        .set("provisioned_instances", &n.to_string())
}

/// `/api/instances` entries of `function`.
async fn listed(scfsim: &Scfsim, function: &str) -> Vec<Value> {
    let all = scfsim.get("/api/instances").await;
    all.as_array()
        .expect("/api/instances is an array")
        .iter()
        .filter(|i| i["function"] == function)
        .cloned()
        .collect()
}

/// The pids of `function`'s provisioned instances waiting for a connection.
async fn waiting(scfsim: &Scfsim, function: &str) -> BTreeSet<u64> {
    listed(scfsim, function)
        .await
        .iter()
        .filter(|i| i["state"] == "provisioned")
        .map(|i| {
            assert!(
                i["request_id"].is_null(),
                "a waiting instance has no request: {i}"
            );
            i["pid"].as_u64().expect("a waiting instance has a pid")
        })
        .collect()
}

/// Waits until exactly `n` instances of `function` wait, none of them in `not`.
async fn until_waiting(
    scfsim: &Scfsim,
    function: &str,
    n: usize,
    not: &BTreeSet<u64>,
) -> BTreeSet<u64> {
    scfsim
        .eventually(
            &format!("{n} provisioned instances of {function}"),
            || async {
                let pids = waiting(scfsim, function).await;
                if pids.len() == n && pids.is_disjoint(not) {
                    Ok(pids)
                } else {
                    Err(format!("waiting: {pids:?} (not expected: {not:?})"))
                }
            },
        )
        .await
}

#[tokio::test]
async fn provisioned_instances_are_ready_before_any_client_and_each_serves_one_connection() {
    let marker = uuid::Uuid::new_v4().to_string();
    let scfsim = Scfsim::start(vec![
        provisioned("warm", &marker, 2),
        Function::fixture("cold", &["echo"]),
    ])
    .await;
    let ready = until_waiting(&scfsim, "warm", 2, &BTreeSet::new()).await;
    // Real processes, running before any client came: two bootstraps of this function.
    assert_eq!(
        bootstraps_with(&marker).len(),
        2,
        "{:?}",
        bootstraps_with(&marker)
    );
    for pid in &ready {
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "listed pid {pid} is not a process"
        );
    }
    // A waiting instance is not a connection: the functions view counts none.
    let functions = scfsim.get("/api/functions").await;
    let warm = functions
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "warm")
        .expect("warm listed")
        .clone();
    assert_eq!(warm["live_instances"], 0, "{warm}");
    let (_, metrics) = scfsim.get_status("/metrics").await;
    for line in [
        "scfsim_live_instances{function=\"warm\"} 2",
        "scfsim_live_connections{function=\"warm\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in:\n{metrics}"
        );
    }

    let mut a = scfsim.connect("/warm").await;
    let mut b = scfsim.connect("/warm").await;
    for c in [&mut a, &mut b] {
        c.send_text("hello").await;
        c.expect_text("hello").await;
    }
    let connected: Vec<Value> = listed(&scfsim, "warm")
        .await
        .into_iter()
        .filter(|i| i["state"] == "connected")
        .collect();
    assert_eq!(connected.len(), 2, "{connected:?}");
    a.close(1000, "").await;
    b.close(1000, "").await;
    let (ra, rb) = (
        scfsim.record(&a.request_id).await,
        scfsim.record(&b.request_id).await,
    );
    let used: BTreeSet<u64> = [&ra, &rb]
        .iter()
        .map(|r| {
            assert_eq!(r["status_code"], 200, "{r:#}");
            assert_eq!(r["provisioned"], true, "{r:#}");
            assert!(r["startup_ms"].is_u64(), "{r:#}");
            r["instance_pid"].as_u64().expect("pid")
        })
        .collect();
    // Each connection had an instance of its own, and those were the provisioned ones.
    assert_eq!(used.len(), 2, "{ra:#} {rb:#}");
    assert_eq!(used, ready);

    // Each was replaced: two new instances wait, none of them a used one.
    until_waiting(&scfsim, "warm", 2, &used).await;
    let mut c = scfsim.connect("/warm").await;
    c.send_text("again").await;
    c.expect_text("again").await;
    c.close(1000, "").await;
    let rc = scfsim.record(&c.request_id).await;
    assert_eq!(rc["provisioned"], true, "{rc:#}");
    assert!(
        !used.contains(&rc["instance_pid"].as_u64().unwrap()),
        "{rc:#}"
    );

    // A function without provisioned instances starts one per connection, as before.
    let mut d = scfsim.connect("/cold").await;
    d.send_text("cold").await;
    d.expect_text("cold").await;
    d.close(1000, "").await;
    let rd = scfsim.record(&d.request_id).await;
    assert_eq!(rd["provisioned"], false, "{rd:#}");
    assert!(waiting(&scfsim, "cold").await.is_empty());
}

#[tokio::test]
async fn a_provisioned_instance_that_dies_while_waiting_is_replaced_and_logged() {
    let marker = uuid::Uuid::new_v4().to_string();
    let scfsim = Scfsim::start(vec![provisioned("warm", &marker, 1)]).await;
    let first = until_waiting(&scfsim, "warm", 1, &BTreeSet::new()).await;
    let victims = bootstraps_with(&marker);
    assert_eq!(victims.len(), 1, "{victims:?}");
    // SAFETY: kill(2) on the bootstrap process this test's function runs.
    unsafe { libc::kill(victims[0] as i32, libc::SIGKILL) };

    let replaced = until_waiting(&scfsim, "warm", 1, &first).await;
    scfsim
        .eventually("the death to be logged", || async {
            let log = scfsim.log();
            match log
                .lines()
                .find(|l| l.contains("while it waited for a connection"))
            {
                Some(line) if line.contains("signal 9") && line.contains("listening") => Ok(()),
                Some(line) => Err(format!("logged without exit or output: {line}")),
                None => Err("not logged".to_string()),
            }
        })
        .await;

    // The replacement serves the next connection.
    let mut client = scfsim.connect("/warm").await;
    client.send_text("after").await;
    client.expect_text("after").await;
    client.close(1000, "").await;
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["provisioned"], true, "{record:#}");
    assert_eq!(
        BTreeSet::from([record["instance_pid"].as_u64().unwrap()]),
        replaced
    );
}

#[tokio::test]
async fn provisioned_instances_count_against_max_instances() {
    let marker = uuid::Uuid::new_v4().to_string();
    let scfsim = Scfsim::start(vec![
        provisioned("warm", &marker, 2).set("max_instances", "2")
    ])
    .await;
    until_waiting(&scfsim, "warm", 2, &BTreeSet::new()).await;
    let mut a = scfsim.connect("/warm").await;
    let mut b = scfsim.connect("/warm").await;
    a.send_text("a").await;
    a.expect_text("a").await;
    // Both slots serve connections: no replacement can start, and a third connection is over
    // the quota.
    assert!(waiting(&scfsim, "warm").await.is_empty());
    let err = scfsim
        .connect_with("/warm", &[])
        .await
        .err()
        .expect("refused");
    let (status, _, body) = scfsim_e2e::refused(err);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("max_instances = 2"), "{body}");
    assert!(
        bootstraps_with(&marker).len() <= 2,
        "{:?}",
        bootstraps_with(&marker)
    );

    // A slot freed goes to a replacement.
    a.close(1000, "").await;
    scfsim.record(&a.request_id).await;
    until_waiting(&scfsim, "warm", 1, &BTreeSet::new()).await;
    b.send_text("b").await;
    b.expect_text("b").await;
    b.close(1000, "").await;
    until_waiting(&scfsim, "warm", 2, &BTreeSet::new()).await;
}

#[tokio::test]
async fn timers_start_when_the_connection_is_handed_over() {
    let marker = uuid::Uuid::new_v4().to_string();
    // The tests' configs relax the platform's ranges: a 1 s idle timeout.
    let scfsim = Scfsim::start(vec![
        provisioned("warm", &marker, 1).set("idle_timeout", "\"1s\"")
    ])
    .await;
    until_waiting(&scfsim, "warm", 1, &BTreeSet::new()).await;
    // Waiting for longer than the idle timeout does not end the instance's first connection.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let mut client = scfsim.connect("/warm").await;
    client.send_text("still fresh").await;
    client.expect_text("still fresh").await;
    client.close(1000, "").await;
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 200, "{record:#}");
    assert_eq!(record["provisioned"], true, "{record:#}");
}

#[tokio::test]
async fn sigterm_stops_every_provisioned_instance() {
    let marker = uuid::Uuid::new_v4().to_string();
    let mut scfsim = Scfsim::start(vec![provisioned("warm", &marker, 3)]).await;
    until_waiting(&scfsim, "warm", 3, &BTreeSet::new()).await;
    assert!(processes_with(&marker).len() >= 3);
    let status = scfsim.signal(libc::SIGTERM).await;
    assert!(status.success(), "scfsim exited with {status}");
    eventually("the provisioned instances to be gone", PATIENCE, || async {
        match processes_with(&marker) {
            left if left.is_empty() => Ok(()),
            left => Err(format!("still running: {left:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn a_python_function_is_provisioned_like_a_native_one() {
    // The platform's Python bootstrap, unchanged: its interpreter's start leaves the
    // connection's path.
    let server = scfsim_e2e::repo_root().join("examples/echo/server.py");
    let scfsim = Scfsim::start(vec![Function::script(
        "py",
        &format!("/var/lang/python3/bin/python3 {}", server.display()),
    )
    .set("provisioned_instances", "1")])
    .await;
    let ready = until_waiting(&scfsim, "py", 1, &BTreeSet::new()).await;
    let mut client = scfsim.connect("/py").await;
    client.send_text("provisioned python").await;
    client.expect_text("provisioned python").await;
    client.close(1000, "").await;
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 200, "{record:#}");
    assert_eq!(record["provisioned"], true, "{record:#}");
    assert_eq!(
        BTreeSet::from([record["instance_pid"].as_u64().unwrap()]),
        ready
    );
    until_waiting(&scfsim, "py", 1, &ready).await;
}

#[tokio::test]
async fn a_server_that_closed_the_waiting_connection_still_gets_its_client() {
    scfsim_e2e::require(
        "python3's websockets library",
        "python3",
        &["-c", "import websockets"],
        "python3 -m pip install -r examples/python-echo/requirements.txt",
    );
    // websockets closes a connection that sends no handshake within open_timeout: here the
    // connection scfsim's readiness probe made, 1 s after the instance started.
    let script = "import asyncio\n\
                  from websockets.asyncio.server import serve\n\
                  async def echo(ws):\n    async for m in ws:\n        await ws.send(m)\n\
                  async def main():\n    async with serve(echo, '0.0.0.0', 9000, open_timeout=1):\n        print('listening', flush=True)\n        await asyncio.Future()\n\
                  asyncio.run(main())\n";
    let scfsim = Scfsim::start(vec![Function::script(
        "strict",
        &format!("exec python3 -c {}", shell_words(script)),
    )
    .set("provisioned_instances", "1")])
    .await;
    let ready = until_waiting(&scfsim, "strict", 1, &BTreeSet::new()).await;
    // Past the server's open_timeout: the first connection is closed by now.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let mut client = scfsim.connect("/strict").await;
    client.send_text("after the timeout").await;
    client.expect_text("after the timeout").await;
    client.close(1000, "").await;
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 200, "{record:#}");
    assert_eq!(record["provisioned"], true, "{record:#}");
    assert_eq!(
        BTreeSet::from([record["instance_pid"].as_u64().unwrap()]),
        ready
    );
}

/// `s` as one single-quoted shell word.
fn shell_words(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
