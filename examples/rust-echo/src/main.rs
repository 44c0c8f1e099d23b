//! WebSocket echo function for scfsim, on tokio and tokio-tungstenite.
//!
//! The platform starts one instance of this program per client connection; it must listen on
//! 0.0.0.0:9000. Everything printed to stdout is the function's log, one record per line.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind("0.0.0.0:9000").await?;
    println!("listening on 0.0.0.0:9000");
    // Stop cleanly on SIGTERM (how an instance is stopped).
    let mut sigterm = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = accepted?;
                tokio::spawn(handle(stream, peer));
            }
            _ = sigterm.recv() => {
                println!("stopping");
                return Ok(());
            }
        }
    }
}

async fn handle(stream: TcpStream, peer: SocketAddr) {
    let mut ws = match tokio_tungstenite::accept_async(stream).await {
        Ok(ws) => ws,
        Err(err) => {
            println!("handshake with {peer} failed: {err}");
            return;
        }
    };
    println!("connection from {peer}");
    // Pings are answered, and the client's close frame is echoed, by tungstenite itself.
    while let Some(message) = ws.next().await {
        let reply = match message {
            Ok(Message::Text(text)) => {
                println!("text message, {} bytes", text.len());
                Message::Text(text) // echo: replace with your function's logic
            }
            Ok(Message::Binary(data)) => {
                println!("binary message, {} bytes", data.len());
                Message::Binary(data)
            }
            Ok(Message::Close(frame)) => {
                match frame {
                    Some(frame) => println!(
                        "connection closed, code {} reason {:?}",
                        u16::from(frame.code),
                        frame.reason.as_str()
                    ),
                    None => println!("connection closed, no code"),
                }
                continue; // the stream ends once the close handshake is done
            }
            Ok(_) => continue, // ping / pong
            Err(err) => {
                println!("connection error: {err}");
                return;
            }
        };
        if let Err(err) = ws.send(reply).await {
            println!("send failed: {err}");
            return;
        }
    }
}
