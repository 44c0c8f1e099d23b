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
