//! The admin API's access rules.

use scfsim_e2e::{Function, Options, Scfsim};

#[tokio::test]
async fn with_an_admin_token_every_endpoint_but_healthz_requires_it() {
    let scfsim = Scfsim::start_with(
        vec![Function::fixture("echo", &["echo"])],
        Options {
            gateway: vec![("admin_token".into(), "\"s3cret\"".into())],
            ..Options::default()
        },
    )
    .await;
    for path in [
        "/api/invocations",
        "/api/instances",
        "/api/functions",
        "/metrics",
        "/",
    ] {
        let (status, body) = scfsim.get_status(path).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body.contains("admin_token"), "{body}");
        let (status, _) = scfsim.get_status(&format!("{path}?token=wrong")).await;
        assert_eq!(status, 401, "{path}");
        let (status, _) = scfsim.get_status(&format!("{path}?token=s3cret")).await;
        assert_eq!(status, 200, "{path}");
    }
    assert_eq!(scfsim.get_status("/healthz").await.0, 200);
    let (head, _) = scfsim_e2e_raw_admin(&scfsim, "Authorization: Bearer s3cret\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

async fn scfsim_e2e_raw_admin(scfsim: &Scfsim, extra: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(scfsim.admin.trim_start_matches("http://"))
        .await
        .unwrap();
    tcp.write_all(
        format!("GET /api/invocations HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tcp.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_string(), body.to_string())
}

#[tokio::test]
async fn scfsim_invocations_lists_and_follows() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let scfsim = Scfsim::start(vec![Function::fixture("echo", &["echo"])]).await;
    let mut first = scfsim.connect("/echo").await;
    first.close(1000, "").await;
    scfsim.record(&first.request_id).await;

    let out = Command::new(scfsim_e2e::scfsim_bin())
        .args(["invocations", "--admin", &scfsim.admin])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("REQUEST_ID"), "{table}");
    assert!(
        table.contains(&first.request_id) && table.contains("client_closed"),
        "{table}"
    );

    let mut follow = Command::new(scfsim_e2e::scfsim_bin())
        .args([
            "invocations",
            "--admin",
            &scfsim.admin,
            "--json",
            "--follow",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The listing comes first; once it is printed, the stream is being read.
    let listed = rx.recv_timeout(scfsim_e2e::PATIENCE).unwrap();
    assert!(listed.contains(&first.request_id), "{listed}");
    let mut second = scfsim.connect("/echo").await;
    second.close(4000, "").await;
    let mut seen = false;
    while let Ok(line) = rx.recv_timeout(scfsim_e2e::PATIENCE) {
        let record: serde_json::Value = serde_json::from_str(&line).unwrap();
        if record["request_id"] == second.request_id.as_str() {
            assert_eq!(record["status_code"], 456);
            seen = true;
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(seen, "--follow printed the new invocation");
}
