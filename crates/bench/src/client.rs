//! The WebSocket client side: connect (TCP_NODELAY, like every server under test), echo, close.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Bound on one message round trip or one handshake; reached only when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The WebSocket handshake for `url` over an established TCP connection.
pub async fn handshake(tcp: TcpStream, url: &str) -> Result<Ws> {
    tcp.set_nodelay(true)?;
    let (ws, _resp) = tokio::time::timeout(
        PATIENCE,
        tokio_tungstenite::client_async_with_config(url, tcp, None),
    )
    .await
    .map_err(|_| anyhow!("handshake with {url} timed out"))?
    .map_err(|e| match e {
        WsError::Http(resp) => anyhow!(
            "handshake with {url}: HTTP {}: {}",
            resp.status(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
        ),
        e => anyhow!("handshake with {url}: {e}"),
    })?;
    Ok(ws)
}

/// TCP connect to the host:port of `url`, then the handshake.
pub async fn connect(url: &str) -> Result<Ws> {
    let hostport = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .with_context(|| format!("not a ws:// url: {url}"))?;
    let tcp = TcpStream::connect(hostport)
        .await
        .with_context(|| format!("connecting to {hostport}"))?;
    handshake(tcp, url).await
}

/// Sends `msg` and waits for the same message back. Ping/pong frames are skipped.
pub async fn echo(ws: &mut Ws, msg: &Message) -> Result<()> {
    tokio::time::timeout(PATIENCE, async {
        ws.send(msg.clone()).await.context("sending")?;
        loop {
            match ws.next().await {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    let (got, want) = (m.len(), msg.len());
                    if got != want {
                        bail!("echo of {want} bytes came back as {got} bytes");
                    }
                    return Ok(());
                }
                Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e).context("receiving"),
                None => bail!("connection ended while waiting for an echo"),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no echo within {PATIENCE:?}"))?
}

/// Closes with 1000 and waits for the server's close frame (or the end of the stream).
pub async fn close(ws: &mut Ws) -> Result<()> {
    tokio::time::timeout(PATIENCE, async {
        ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
        .await
        .context("sending close")?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Ok(_)) => continue,
                // The server may drop the TCP connection right after its close frame.
                Some(Err(_)) => return Ok(()),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("close handshake not finished within {PATIENCE:?}"))?
}

/// A message of `size` bytes: binary, or text for websocketd (which is line based).
pub fn payload(size: usize, text: bool) -> Message {
    if text {
        Message::text("x".repeat(size))
    } else {
        Message::binary((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
    }
}
