//! wss:// with the certificate scfsim generates, and what a bad client or bad files get.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use scfsim_e2e::{Function, Options, Scfsim, PATIENCE};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

async fn tls_scfsim() -> Scfsim {
    Scfsim::start_with(
        vec![
            Function::fixture("echo", &["echo"]),
            Function::fixture("headers", &["headers"]),
        ],
        Options {
            tls: true,
            ..Options::default()
        },
    )
    .await
}

/// A TLS client that trusts only the certificate scfsim generated in its data_dir.
async fn connect_wss(
    scfsim: &Scfsim,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>> {
    let cert = scfsim.dir.join("data/tls/localhost-cert.pem");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let addr = scfsim
        .wss
        .as_ref()
        .expect("wss listener")
        .trim_start_matches("wss://");
    let connected = tokio::time::timeout(PATIENCE, async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake with the generated certificate");
        let req = format!("wss://localhost{path}")
            .into_client_request()
            .unwrap();
        tokio_tungstenite::client_async(req, tls).await.unwrap().0
    });
    connected.await.expect("connected over TLS within patience")
}

/// The next message, within patience.
async fn next_message<S>(ws: &mut S) -> Message
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("a message within patience")
        .expect("the connection is open")
        .expect("a valid frame")
}

#[tokio::test]
async fn a_client_trusting_the_generated_certificate_gets_its_echo() {
    let scfsim = tls_scfsim().await;
    let mut ws = connect_wss(&scfsim, "/echo").await;
    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("over tls"));
    ws.close(None).await.unwrap();

    let mut ws = connect_wss(&scfsim, "/headers").await;
    let Message::Text(text) = next_message(&mut ws).await else {
        panic!("expected the fixture's JSON");
    };
    let seen: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(seen["headers"]["x-client-proto"], "wss");
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_dropped_without_harming_others() {
    let scfsim = tls_scfsim().await;
    let mut ws = connect_wss(&scfsim, "/echo").await;
    let addr = scfsim
        .wss
        .as_ref()
        .unwrap()
        .trim_start_matches("wss://")
        .to_string();
    let mut plain = tokio::time::timeout(PATIENCE, TcpStream::connect(&addr))
        .await
        .expect("connect within patience")
        .unwrap();
    plain
        .write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // scfsim ends the connection (the TLS handshake fails); this read ends instead of hanging.
    let _ = tokio::time::timeout(PATIENCE, plain.read_to_end(&mut buf))
        .await
        .expect("the plain-HTTP connection is closed by scfsim");
    ws.send(Message::text("still fine")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("still fine"));
}

#[tokio::test]
async fn a_bad_certificate_file_is_a_startup_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let code = dir.path().join("code");
    std::fs::create_dir(&code).unwrap();
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    std::fs::write(
        dir.path().join("scfsim.toml"),
        "[gateway]\ntls_listen = \"127.0.0.1:0\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n\
         listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\
         [[functions]]\nname = \"f\"\npath = \"/f\"\ncode_dir = \"code\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(scfsim_e2e::scfsim_bin())
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("scfsim.toml"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cert.pem"), "{err}");
}
