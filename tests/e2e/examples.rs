//! The example functions in examples/, through scfsim, also 20 at once. An example whose
//! runtime or library is missing is skipped with a visible message (`.ci/run` installs them).

use scfsim_e2e::{repo_root, Function, Scfsim};

fn available(what: &str, check: &[&str]) -> bool {
    let ok = std::process::Command::new(check[0])
        .args(&check[1..])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!(
            "SKIPPED: {what} is not installed here (`{}` failed)",
            check.join(" ")
        );
    }
    ok
}

async fn twenty_at_once(name: &str) {
    let scfsim = Scfsim::start(vec![Function::code_dir(
        name,
        repo_root().join("examples").join(name),
    )])
    .await;
    let path = format!("/{name}");
    let mut clients = futures_util::future::join_all((0..20).map(|_| scfsim.connect(&path))).await;
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
    if available("python3", &["python3", "--version"]) {
        twenty_at_once("echo").await;
    }
}

#[tokio::test]
async fn python_websockets_echo() {
    if available(
        "python3 websockets",
        &["python3", "-c", "import websockets"],
    ) {
        twenty_at_once("python-echo").await;
    }
}

#[tokio::test]
async fn node_ws_echo() {
    let ws = repo_root().join("examples/node-echo/node_modules/ws");
    if available("node", &["node", "--version"]) {
        if ws.exists() {
            twenty_at_once("node-echo").await;
        } else {
            eprintln!("SKIPPED: run `npm ci --prefix examples/node-echo` first");
        }
    }
}
