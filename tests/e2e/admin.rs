//! The admin API's access rules.

use std::process::Stdio;

use scfsim_e2e::{Function, Options, Scfsim, PATIENCE};

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
    tokio::time::timeout(scfsim_e2e::PATIENCE, tcp.read_to_end(&mut buf))
        .await
        .expect("an answer within patience")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_string(), body.to_string())
}

#[tokio::test]
async fn scfsim_invocations_lists_and_follows() {
    use tokio::io::AsyncBufReadExt;
    use tokio::process::Command;
    let scfsim = Scfsim::start(vec![Function::fixture("echo", &["echo"])]).await;
    let mut first = scfsim.connect("/echo").await;
    first.close(1000, "").await;
    scfsim.record(&first.request_id).await;

    let out = scfsim_e2e::run(
        "scfsim invocations",
        Command::new(scfsim_e2e::scfsim_bin()).args(["invocations", "--admin", &scfsim.admin]),
        PATIENCE,
        "cargo build --bins",
    )
    .await;
    assert!(out.status.success(), "{}", scfsim_e2e::output_text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("REQUEST_ID"), "{table}");
    assert!(
        table.contains(&first.request_id) && table.contains("client_closed"),
        "{table}"
    );

    // Killed when dropped, whichever way the test ends.
    let mut follow = Command::new(scfsim_e2e::scfsim_bin())
        .args([
            "invocations",
            "--admin",
            &scfsim.admin,
            "--json",
            "--follow",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    // The listing comes first; once it is printed, the stream is being read.
    let listed = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("the listing within patience")
        .unwrap()
        .expect("a line");
    assert!(listed.contains(&first.request_id), "{listed}");
    let mut second = scfsim.connect("/echo").await;
    second.close(4000, "").await;
    let followed = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let record: serde_json::Value = serde_json::from_str(&line).unwrap();
            if record["request_id"] == second.request_id.as_str() {
                return record;
            }
        }
        panic!("--follow ended without printing the new invocation")
    })
    .await
    .expect("--follow printed the new invocation within patience");
    assert_eq!(followed["status_code"], 456);
}
